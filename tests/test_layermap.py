import json

import pytest

from boomerang import BoomerangError, LayerMap, read_layer_map, write_sidecar
from boomerang.core.layermap import PRESETS, student_section


def test_every_matches_paper_students():
    qwen = LayerMap.every(36)
    assert list(qwen.kept) == [*range(0, 35, 2), 35] and qwen.n_student == 19
    pythia = LayerMap.every(32)
    assert list(pythia.kept) == [*range(0, 31, 2), 31] and pythia.n_student == 17
    llama = LayerMap.every(28, keep_first=2, keep_last=1)
    assert list(llama.kept) == [0, 1, *range(3, 28, 2)] and llama.n_student == 15


def test_blocks_and_targets():
    lm = LayerMap.from_kept([0, 2, 4, 5], 6)
    assert [list(b) for b in lm.blocks] == [[0, 1], [2, 3], [4], [5]]
    assert lm.targets == [1, 3, 4, 5]
    assert lm.pruned == (1, 3)
    assert LayerMap.from_kept([0, 3]).n_teacher == 4  # default N = max(kept) + 1
    assert LayerMap.from_kept([0, 3], 8).block(1) == range(3, 8)


@pytest.mark.parametrize(
    "kept, n, message",
    [
        ([], 6, "empty"),
        ([0, 7], 6, "out of range"),
        ([0, 4, 2], 6, "not sorted"),
        ([0, 2, 2], 6, "duplicated"),
        ([1, 3], 6, "must be 0"),
        ([0, -1], 6, "out of range"),
    ],
)
def test_invalid_maps_are_rejected_clearly(kept, n, message):
    with pytest.raises(BoomerangError, match=message):
        LayerMap.from_kept(kept, n)


def test_student_index_errors():
    with pytest.raises(BoomerangError, match="does not exist"):
        LayerMap.from_kept([0, 2], 4).block(2)


def test_reference_sidecar_roundtrip(tmp_path):
    lm = LayerMap.every(36)
    ref = lm.to_reference()
    assert ref["copied_teacher_layers"] == list(lm.kept)
    assert ref["pruned_teacher_layers"] == list(range(1, 34, 2))
    assert LayerMap.from_reference(ref) == lm
    write_sidecar(tmp_path, lm)
    assert read_layer_map(tmp_path) == lm


def test_reference_sidecar_errors():
    with pytest.raises(BoomerangError, match="copied_teacher_layers"):
        LayerMap.from_reference({"pruned": [1]})
    with pytest.raises(BoomerangError, match="both copied and pruned"):
        LayerMap.from_reference({"copied_teacher_layers": [0, 1], "pruned_teacher_layers": [1]})
    with pytest.raises(BoomerangError, match="exactly once"):
        LayerMap.from_reference({"copied_teacher_layers": [0, 2], "pruned_teacher_layers": [3]})


def test_config_section_and_sidecar_must_agree(tmp_path):
    """Issue 13: a student_config.json contradicting the config's boomerang section is refused, not ignored."""
    lm = LayerMap.from_kept([0, 2, 4, 5], 6)
    (tmp_path / "config.json").write_text(json.dumps({"boomerang": student_section(lm)}))
    write_sidecar(tmp_path, lm)
    assert read_layer_map(tmp_path) == lm
    write_sidecar(tmp_path, LayerMap.from_kept([0, 3], 6))
    with pytest.raises(BoomerangError, match="two layer maps that disagree"):
        read_layer_map(tmp_path)
    assert read_layer_map(tmp_path / "nowhere", allow_hub=False) is None


def test_presets():
    assert list(PRESETS["distilbert"].kept) == [0, 2, 4, 7, 9, 11]
    assert LayerMap.preset("distilgpt2").n_teacher == 12
    with pytest.raises(BoomerangError, match="distilbert"):
        LayerMap.preset("nope")


def test_every_argument_errors():
    with pytest.raises(BoomerangError, match="keep_first"):
        LayerMap.every(10, keep_first=0)
