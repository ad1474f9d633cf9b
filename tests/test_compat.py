"""The reference-compatible ``build_intermediate_model`` and its layer selection."""

import json

import pytest
import torch
from tiny import ids, make_pair, save_pair

import boomerang as B
from boomerang.compat import reference_plan


def reference_layers(kept, n, k, first):
    """The layer sequence the reference code builds (a transcription of its get_layer_cutoffs + patching)."""
    keep, small = [], []
    if first:
        for i, layer in enumerate(kept[:-1]):
            if kept[i + 1] - layer > 1:
                keep.append(layer)
                small.append(i)
        if k >= len(small):
            return [("teacher", j) for j in range(n)]
        s_idx, t_idx = small[k], keep[k]
        return [("teacher", j) for j in range(t_idx)] + [("student", i) for i in range(s_idx, len(kept))]
    for i, layer in enumerate(kept[1:]):
        if layer - kept[i] > 1:
            keep.append(layer)
            small.append(i + 1)
    if k + 1 > len(small):
        return [("teacher", j) for j in range(n)]
    s_idx, t_idx = small[-(k + 1)], keep[-(k + 1)]
    return [("student", i) for i in range(s_idx)] + [("teacher", j) for j in range(t_idx, n)]


LAYOUTS = {
    "qwen3-8b": B.LayerMap.every(36),
    "pythia": B.LayerMap.every(32),
    "llama-3.2-3b": B.LayerMap.every(28, keep_first=2, keep_last=1),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("first", [False, True])
def test_reference_layer_selection(layout, first):
    lm = LAYOUTS[layout]
    for k in range(lm.n_student + 2):
        plan = reference_plan(lm, k, first)
        assert [tuple(s) for s in plan.sources] == reference_layers(list(lm.kept), lm.n_teacher, k, first), k


def test_reference_counting_spot_checks():
    qwen = LAYOUTS["qwen3-8b"]
    # k=0 from the end: the trailing single-layer blocks (teacher layers 34, 35) are already the teacher's
    p0 = reference_plan(qwen, 0)
    assert list(p0.patched) == [17, 18] and p0.n_layers == 19
    # k=1 adds the first multi-layer block from the end: student 16 -> teacher 32, 33
    assert list(reference_plan(qwen, 1).patched) == [16, 17, 18]
    assert reference_plan(qwen, 17).n_layers == 36  # the documented maximum is the teacher
    assert reference_plan(qwen, 16).n_layers == 35
    # first-k: k counts multi-layer blocks; the embedding is the teacher's even at k=0
    f0 = reference_plan(qwen, 0, True)
    assert f0.patched == () and f0.embed_source == "teacher" and f0.head_source == "student"
    llama = LAYOUTS["llama-3.2-3b"]
    assert list(reference_plan(llama, 0, True).patched) == [0]  # the leading single-layer block comes along
    assert list(reference_plan(llama, 1, True).patched) == [0, 1]
    assert reference_plan(llama, 13, True).n_layers == 28


def test_clean_and_reference_counting_differ_as_documented():
    qwen = LAYOUTS["qwen3-8b"]
    clean = B.make_plan(qwen, num_patched=2, order=B.resolve_order("last", qwen))
    assert list(clean.patched) == list(reference_plan(qwen, 0).patched)  # same model, different K


@pytest.mark.parametrize("first", [False, True])
def test_build_intermediate_model_from_local_dirs(tmp_path, first):
    teacher, student, lm = make_pair("qwen3", n_layers=8, kept=(0, 2, 4, 6, 7), tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm, sidecar_only=True)
    assert (
        "boomerang" not in json.loads((s_dir / "config.json").read_text())
        or json.loads((s_dir / "config.json").read_text())["boomerang"] is None
    )
    model, tok = B.build_intermediate_model(str(t_dir), str(s_dir), 1, first, dtype=torch.float32)
    assert tok.padding_side == "left" and tok.pad_token is not None
    plan = reference_plan(lm, 1, first)
    assert model.config.boomerang["teacher_layers"] == plan.teacher_layers
    expected = B.build(teacher, student, plan)
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected(x).logits)
    # the reference's tied-embedding bug is fixed: save -> reload is exact
    model.save_pretrained(tmp_path / "out")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)


def test_hub_ids_fail_clearly_when_offline():
    with pytest.raises(B.BoomerangError, match="Hugging Face Hub"):
        B.build_intermediate_model("Qwen/Qwen3-8B-Base", "Harvard-DCML/boomerang-qwen3-4.9B", 2)
