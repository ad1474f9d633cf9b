"""The teacher-output cache: runs that see the same batches reuse the first run's teacher outputs, bit-exactly."""

import json

import pytest
import torch
from tiny import tiny_recipe, tiny_run_setup

from boomerang.errors import BoomerangError
from boomerang.train.recipe import parse_recipe
from boomerang.train.trainer import Distiller

LOSS = {"align_embeddings": True, "align_final": "normed"}  # in:0, every block end and the normed state


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory.mktemp("cache"))


def _run(root, out, steps=4, precision="fp32", **sections):
    sections.setdefault("loss", LOSS)
    train = {"steps": steps, "precision": precision, **sections.pop("train", {})}
    d = Distiller(parse_recipe(tiny_recipe(root, train=train, **sections)), out=out)
    d.setup()
    d.teacher_calls = 0
    real = d._teacher

    def counted(ids, mask):
        d.teacher_calls += 1
        return real(ids, mask)

    d._teacher = counted
    losses = [d.train_step()["loss"] for _ in range(steps)]
    return d, losses


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_reading_run_equals_the_writing_run_and_one_without_cache(root, tmp_path, precision):
    cache = str(tmp_path / "cache")
    plain, l0 = _run(root, tmp_path / "plain", precision=precision)
    writer, l1 = _run(root, tmp_path / "w", precision=precision, train={"teacher_cache": cache})
    reader, l2 = _run(root, tmp_path / "r", precision=precision, train={"teacher_cache": cache})
    assert l0 == l1 == l2  # bit-exact
    assert writer.teacher_calls == plain.teacher_calls == 4 * 4 and reader.teacher_calls == 0
    assert reader.tcache.hits == 4 and not reader.tcache.writable
    assert len(list((tmp_path / "cache").glob("step-*.safetensors"))) == 4
    for a, b in zip(plain.student.parameters(), reader.student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_ablation_without_the_cosine_term_reads_the_same_cache(root, tmp_path):
    cache = str(tmp_path / "cache")
    _run(root, tmp_path / "w", train={"teacher_cache": cache})
    _, plain = _run(root, tmp_path / "p", loss={**LOSS, "cos": 0})
    reader, cached = _run(root, tmp_path / "r", loss={**LOSS, "cos": 0}, train={"teacher_cache": cache})
    assert cached == plain and reader.teacher_calls == 0


def test_a_cache_lacking_states_is_not_used(root, tmp_path):
    cache = str(tmp_path / "cache")
    _run(root, tmp_path / "w", loss={**LOSS, "cos": 0}, train={"teacher_cache": cache})  # hidden states only
    _, plain = _run(root, tmp_path / "p")
    reader, got = _run(root, tmp_path / "r", train={"teacher_cache": cache})
    assert got == plain and reader.teacher_calls == 16 and not reader.tcache.usable


def test_other_batches_are_refused(root, tmp_path):
    cache = str(tmp_path / "cache")
    _run(root, tmp_path / "w", steps=1, train={"teacher_cache": cache})
    with pytest.raises(BoomerangError, match=r"other batches or another teacher \(differs in seed\)"):
        _run(root, tmp_path / "r", steps=1, train={"teacher_cache": cache, "seed": 1})
    meta = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert meta["batch_size"] == 8 and "norm" in meta["keys"] and "in:0" in meta["keys"]


def test_the_summary_says_what_the_cache_did(root, tmp_path):
    from boomerang.train.trainer import distill

    cache = str(tmp_path / "cache")
    recipe = tiny_recipe(root, loss=LOSS, train={"steps": 2, "precision": "fp32", "teacher_cache": cache})
    first = distill(parse_recipe(recipe), out=tmp_path / "a")
    second = distill(parse_recipe(recipe), out=tmp_path / "b")
    assert first["teacher_cache"] == {"dir": cache, "read_steps": 0, "wrote": True}
    assert second["teacher_cache"] == {"dir": cache, "read_steps": 2, "wrote": False}
    assert first["train"] == second["train"]
