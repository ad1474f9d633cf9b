"""Training data: blocks (packed or padded), seeded resumable order, streaming, token cache."""

import os

import pytest
import torch
from tiny import tiny_corpus, tiny_tokenizer

from boomerang.data import (
    Batch,
    ShuffledBlocks,
    StreamingBlocks,
    docs_to_blocks,
    pack,
    read_texts,
    tokenize,
    tokenized_docs,
)
from boomerang.errors import BoomerangError


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def corpus(tmp_path):
    return tiny_corpus(tmp_path / "corpus", 12, words=(5, 40))


def test_packed_blocks_equal_pack(corpus, tok):
    docs = list(tokenize(read_texts(corpus), tok))
    blocks = docs_to_blocks(docs, 8, 2)
    assert blocks.ids.tolist() == list(pack(docs, 8, 2)) and blocks.mask is None
    assert blocks.n_tokens == blocks.ids.numel() and blocks.ids.dtype == torch.int32


def test_padded_blocks_truncate_and_mask():
    b = docs_to_blocks([[5, 6, 7], [8] * 10, []], 5, 2, packing=False, pad=0)
    assert b.ids.tolist() == [[5, 6, 7, 2, 0], [8] * 5, [2, 0, 0, 0, 0]]
    assert b.mask.tolist() == [[1, 1, 1, 1, 0], [1] * 5, [1, 0, 0, 0, 0]]
    batch = b.batch([2, 0])
    assert batch.input_ids.dtype == torch.long and batch.n_tokens == 5
    assert batch.slice(1, 2).input_ids.tolist() == [[5, 6, 7, 2, 0]]


def test_seeded_order_covers_every_block_and_resumes_exactly():
    blocks = docs_to_blocks([list(range(4, 4 + 40))], 4, 2)  # 10 blocks
    a, b, c = (ShuffledBlocks(blocks, seed=s) for s in (0, 0, 1))
    first = a.indices(0, 10)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert sorted(a.indices(10, 10)) == list(range(10)) and a.indices(10, 10) != first  # reshuffled per epoch
    assert b.indices(0, 25) == a.indices(0, 25) and c.indices(0, 10) != first
    seq = [a.take(3).input_ids for _ in range(6)]
    b.seek(9)
    assert all(torch.equal(b.take(3).input_ids, x) for x in seq[3:])
    assert a.position == 18 and a.epoch == pytest.approx(1.8)
    with pytest.raises(BoomerangError, match="shorter than one sequence"):
        ShuffledBlocks(docs_to_blocks([[5, 6]], 8, 2))


@pytest.mark.parametrize("packing", [True, False])
def test_streaming_is_deterministic_and_resumable(corpus, tok, packing):
    def make():
        return StreamingBlocks(corpus, tok, 8, seed=3, buffer=5, packing=packing)

    a, b = make(), make()
    seq = [a.take(4) for _ in range(5)]
    b.seek(8)
    for x in seq[2:]:
        y = b.take(4)
        assert torch.equal(x.input_ids, y.input_ids)
        assert (x.attention_mask is None) == packing
    # one pass yields every block exactly once (the buffer only reorders)
    docs = list(tokenize(read_texts(corpus), tok))
    expect = docs_to_blocks(docs, 8, 2, packing=packing, pad=0)
    stream = make()
    got = stream.take(len(expect)).input_ids
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expect.ids.long().tolist()))
    assert got.tolist() != expect.ids.tolist()  # shuffled


def test_streaming_skips_documents(corpus, tok):
    docs = list(tokenize(read_texts(corpus), tok))
    s = StreamingBlocks(corpus, tok, 4, buffer=1, skip_docs=2, packing=False)
    assert s.take(1).input_ids[0].tolist()[:3] == docs[2][:3]


def test_token_cache(corpus, tok, tmp_path):
    cache = tmp_path / "cache"
    plain = tokenized_docs(corpus, tok, use_cache=False)
    first = tokenized_docs(corpus, tok, cache_dir=cache)
    files = list(cache.glob("*.safetensors"))
    assert first == plain and len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    assert tokenized_docs(corpus, tok, cache_dir=cache) == plain
    assert files[0].stat().st_mtime_ns == mtime  # served from the cache
    doc = sorted(corpus.iterdir())[0]
    doc.write_text("w5 w6 w7")
    os.utime(doc, ns=(1, 1))
    changed = tokenized_docs(corpus, tok, cache_dir=cache)
    assert changed[0] == [5, 6, 7] and len(list(cache.glob("*.safetensors"))) == 2
    for f in cache.glob("*.safetensors"):
        f.write_bytes(b"corrupt")
    assert tokenized_docs(corpus, tok, cache_dir=cache) == changed  # rebuilt, not crashed
    assert tokenized_docs(["w9 w10"], tok, cache_dir=cache) == [[9, 10]]  # lists are never cached


def test_batch_helpers():
    b = Batch(torch.ones(4, 3, dtype=torch.long), torch.tensor([[1, 1, 0]] * 4))
    assert len(b) == 4 and b.n_tokens == 8 and len(b.slice(1, 3)) == 2


def test_jsonl_sources_use_the_text_field(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "w4 w5", "id": 1}\n\n{"body": "w6", "id": 2}\n')
    assert list(read_texts(rows, text_field="body")) == ["w4 w5", "w6"]
    with pytest.raises(BoomerangError, match="has no 'text' field"):
        list(read_texts(rows))


def test_hugging_face_datasets_are_streamed(tmp_path):
    """``hf:NAME[@SPLIT]`` goes through datasets.load_dataset(streaming=True); a local dataset folder, offline."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("".join(f'{{"text": "w{i} w{i + 1}"}}\n' for i in range(4, 9)))
    assert list(read_texts(f"hf:{ds}")) == [f"w{i} w{i + 1}" for i in range(4, 9)]
    assert list(read_texts(f"hf:{ds}@train", limit=2)) == ["w4 w5", "w5 w6"]
    with pytest.raises(BoomerangError, match="no 'body' column"):
        list(read_texts(f"hf:{ds}", text_field="body"))
    with pytest.raises(BoomerangError, match="could not open Hugging Face dataset"):
        list(read_texts(f"hf:{tmp_path / 'missing'}"))
