"""Shard sizes and shard splitting: our parser against huggingface_hub's public splitting (what save_pretrained uses)."""

import pytest
import torch
from huggingface_hub import split_state_dict_into_shards_factory, split_torch_state_dict_into_shards
from safetensors.torch import save_file

from boomerang.errors import BoomerangError
from boomerang.io.safetensors_files import OutTensor, parse_shard_size, read_header, write_weights

SIZES = ["5GB", "500MB", "16KB", " 100kb ", "1.5KB", "0.25MB", "2TB", "3 GB"]


def _split(sizes: dict[str, int], limit: int | str):
    return split_state_dict_into_shards_factory(
        sizes,
        get_storage_size=lambda n: n,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=limit,
    )


@pytest.mark.parametrize("text", SIZES)
def test_shard_size_is_read_as_huggingface_hub_reads_it(text):
    """Two tensors filling exactly our limit share one shard under the hub's own reading of the string, and one
    byte more splits them: the two readings agree to the byte (this fails if huggingface_hub changes its rule)."""
    n = parse_shard_size(text)
    assert n > 0
    assert not _split({"a": n // 2, "b": n - n // 2}, text).is_sharded
    assert _split({"a": n // 2, "b": n - n // 2 + 1}, text).is_sharded


@pytest.mark.parametrize("bad", ["big", "5XB", "GB", "-1GB", "0KB", "nanMB", "infGB", "", 0, -5, True])
def test_bad_shard_sizes_are_refused(bad):
    with pytest.raises(BoomerangError, match="max-shard-size"):
        parse_shard_size(bad)


def test_write_weights_shards_as_save_pretrained_does(tmp_path):
    """Our writer and transformers' splitter (huggingface_hub.split_torch_state_dict_into_shards) put the same
    tensors in the same files."""
    state = {f"layer{i}.weight": torch.zeros(100 * (i + 1), dtype=torch.float32) for i in range(6)}
    raw = tmp_path / "raw.safetensors"
    save_file(state, raw)
    header = read_header(raw)
    tensors = [OutTensor(name=k, ref=header[k], dtype="F32") for k in state]
    for limit in ("2KB", "1.2KB", "50GB"):
        out = tmp_path / limit
        out.mkdir()
        files = write_weights(out, tensors, max_shard_size=limit, total_parameters=2100)
        ref = split_torch_state_dict_into_shards(state, max_shard_size=limit)
        assert files == list(ref.filename_to_tensors)
        assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == sorted(files)
        assert {k: f for f in files for k in read_header(out / f)} == ref.tensor_to_filename
        assert ref.is_sharded == (limit != "50GB")
