"""Issue 26, section 2: no number that makes no sense is accepted, and no student that is not finite is saved.

Every float of a recipe or a ``key=value`` override refuses infinity and NaN (``1e400`` reads as infinity);
integers beyond what the code can use are refused with the valid range; the schema is strict about types and
refuses a YAML key given twice; the trainer never saves non-finite weights."""

from __future__ import annotations

import json
import os
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from reliability_kit import invoke, make_kit, no_temp_left

import boomerang.io.loading as loading
from boomerang.errors import BoomerangError
from boomerang.train.recipe import Recipe, load_recipe, parse_recipe
from boomerang.train.trainer import list_checkpoints

MINIMAL = {"teacher": "t", "data": {"train": "corpus/"}}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()  # train.threads must not leak into other tests
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("kit"), archs=("llama",))


@pytest.fixture
def loads(monkeypatch):
    calls: list[str] = []
    real = loading.load_model

    def recording(spec, **kw):
        calls.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(loading, "load_model", recording)
    return calls


def _refused(overrides, data=None) -> str:
    with pytest.raises(BoomerangError) as e:
        parse_recipe(dict(data or MINIMAL), list(overrides))
    return " ".join(str(e.value).split())


# ---- the schema's own fields, found from its annotations (so new fields are covered too) ----------------------


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, typing.Any]:
    out = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaves(ann, f"{prefix}{name}."))
        else:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            out[prefix + name] = args[0] if len(args) == 1 else ann
    return out


LEAVES = _leaves(Recipe)
FLOATS = sorted(k for k, a in LEAVES.items() if a is float)
INTS = sorted(k for k, a in LEAVES.items() if a is int)
BOOLS = sorted(k for k, a in LEAVES.items() if a is bool)


def test_the_schema_has_fields_of_each_kind():
    assert {"optim.lr", "optim.eps", "optim.weight_decay", "loss.temperature", "loss.kl"} <= set(FLOATS)
    assert {"train.steps", "train.batch_size", "train.seed", "train.threads", "data.seq_len"} <= set(INTS)
    assert {"train.compile", "data.packing"} <= set(BOOLS)


NON_FINITE = ["inf", "-inf", ".inf", "-.inf", ".nan", "nan", "1e400", "-1e999", "1E309"]


@settings(max_examples=120, deadline=None)
@given(key=st.sampled_from(FLOATS), value=st.sampled_from(NON_FINITE))
def test_every_float_refuses_infinity_and_nan(key, value):
    msg = _refused([f"{key}={value}"])
    assert key in msg and ("finite" in msg or "number" in msg), msg


@settings(max_examples=120, deadline=None)
@given(key=st.sampled_from(INTS), value=st.sampled_from(["'3'", "'1'", "true", "false", "3.0", "1e3", "[1]"]))
def test_every_integer_refuses_other_types(key, value):
    assert key in _refused([f"{key}={value}"])


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(INTS), value=st.sampled_from([2**63, 10**20, 2**64 + 1]))
def test_every_integer_refuses_numbers_beyond_use(key, value):
    msg = _refused([f"{key}={value}"])
    assert key in msg and ("give at most" in msg or "CPUs" in msg), msg


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(BOOLS), value=st.sampled_from(["1", "0", "'yes'", "'true'", "2.5"]))
def test_every_switch_refuses_other_types(key, value):
    assert key in _refused([f"{key}={value}"])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["optim.lr=inf"], "optim.lr: must be a finite number"),
        (["lr=1e400"], "1e400 is beyond the largest number"),
        (["optim.weight_decay=-.inf"], "optim.weight_decay: must be a finite number"),
        (["optim.eps=1e999"], "optim.eps: must be a finite number"),
        (["loss.temperature=.nan"], "loss.temperature: must be a finite number"),
        (["optim.betas=[0.9, 1e400]"], "optim.betas[1]: must be a finite number"),
        (["train.steps='3'"], "train.steps: must be an integer, got the text '3' (write 3 without quotes)"),
        (["train.steps=true"], "train.steps: must be an integer, got true"),
        (["train.seed=4294967296"], "train.seed: 4294967296 is too large; give at most 4294967295"),
        (["train.batch_size=100000000000000000000"], "give at most 2147483647"),
        ([f"train.threads={(os.cpu_count() or 1) + 1}"], f"give 1..{os.cpu_count()}"),
        (["train.compile=1"], "train.compile: must be true or false"),
    ],
)
def test_the_issue_examples(overrides, fragment):
    assert fragment in _refused(overrides)


def test_good_values_still_pass():
    r = parse_recipe(dict(MINIMAL), ["lr=1e-4", "train.seed=4294967295", "train.max_tokens=1000000000000"])
    assert r.optim.lr == 1e-4 and r.train.seed == 2**32 - 1 and r.train.max_tokens == 10**12
    assert parse_recipe({**MINIMAL, "optim": {"lr": "3e-4"}}).optim.lr == 3e-4  # YAML 1.1 reads 3e-4 as text


def test_a_yaml_key_given_twice_is_refused(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("teacher: t\ndata:\n  train: c\ntrain:\n  steps: 3\n  batch_size: 2\n  steps: 5\n")
    with pytest.raises(BoomerangError, match=r"key 'steps' is given twice \(lines 5 and 7\); keep one"):
        load_recipe(f)
    f.write_text("teacher: t\nteacher: u\ndata:\n  train: c\n")
    with pytest.raises(BoomerangError, match="key 'teacher' is given twice"):
        load_recipe(f)
    with pytest.raises(BoomerangError, match="given twice"):
        parse_recipe(dict(MINIMAL), ["train={steps: 1, steps: 2}"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (bytes(range(256)) * 8, "is not a text file"),
        (b"teacher: t\n\xff\xfe data\n", "is not UTF-8 text"),
    ],
)
def test_a_binary_recipe_gets_a_clear_error(tmp_path, content, fragment):
    f = tmp_path / "recipe.yaml"
    f.write_bytes(content)
    r = invoke(["distill", str(f), "--dry-run"])
    assert r.code == 2 and fragment in r.err and "Traceback" not in r.err, r.err


# ---- through the CLI: refused before any model loads, nothing written -------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=1e400",
        "loss.kl=nan",
        "train.seed=4294967296",
        "train.batch_size=100000000000000000000",
        f"train.threads={(os.cpu_count() or 1) + 1}",
        "train.steps=true",
    ],
)
def test_distill_refuses_before_loading(kit, loads, tmp_path, override):
    out = tmp_path / "run"
    r = invoke(["distill", str(kit.root / "recipe.yaml"), override, "--out", str(out)])
    assert r.code == 2 and r.explained and "Traceback" not in r.err, (r.code, r.err, r.traceback)
    assert override.split("=")[0] in r.err
    assert loads == [] and not out.exists()
    r = invoke(["distill", str(kit.root / "recipe.yaml"), "--seed", "4294967296", "--out", str(out)])
    assert r.code == 2 and "0..4294967295" in r.err


# ---- the trainer never saves a student that is not finite --------------------------------------------------------


def test_a_non_finite_update_is_never_saved_and_the_last_good_checkpoint_is_kept(kit, tmp_path):
    out = tmp_path / "run"
    # warm-up from lr 0: step 1 changes nothing (a good checkpoint), step 2's lr of 5e299 makes the weights inf
    argv = ["distill", str(kit.root / "recipe.yaml"), "--out", str(out), "train.steps=3", "optim.lr=1e300"]
    r = invoke([*argv, "optim.warmup_ratio=0.5", "checkpoint.every=1"])
    assert r.code == 2 and not r.crashed, (r.err, r.traceback)
    msg = " ".join(r.err.split())
    assert "not finite after step 2" in msg and "the update of step 2" in msg and "optim.lr=1e+300" in msg
    assert "step-0000001, is kept" in msg
    assert [p.name for p in list_checkpoints(out)] == ["step-0000001"]
    assert not (out / "student").exists() and no_temp_left(out) and no_temp_left(out / "checkpoints")
    # the kept checkpoint is finite
    from safetensors.torch import load_file

    weights = load_file(str(out / "checkpoints" / "step-0000001" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_student_that_is_not_finite_is_refused_before_training(kit, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _t, s = kit.pair("llama")
    bad = tmp_path / "nan_student"
    shutil.copytree(s, bad)
    weights = load_file(str(bad / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name][0, 0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "run"
    r = invoke(["distill", str(kit.root / "recipe.yaml"), f"student={bad}", "--out", str(out)])
    assert r.code == 2 and not r.crashed, (r.err, r.traceback)
    msg = " ".join(r.err.split())
    assert "training did not start" in msg and f"the student checkpoint {bad}" in msg
    assert not (out / "student").exists()


def test_the_summary_of_a_finite_run_is_unchanged(kit, tmp_path):
    out = tmp_path / "run"
    r = invoke(["distill", str(kit.root / "recipe.yaml"), "--out", str(out), "checkpoint.every=1"])
    assert r.code == 0, r.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and (out / "student" / "model.safetensors").is_file()
