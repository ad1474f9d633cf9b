"""Issue 26, sections 3 and 4: students in every documented format, and checkpoints that contradict themselves.

A student whose layer map is only in ``student_config.json`` (the published students' format) or only in its
config's ``boomerang`` section works in every command that takes a student, distillation included (it used to
crash at the save). A config that says more or fewer layers than the weights hold, or sizes the tensors do not
have, is refused by every loader with a message naming both numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_kit import invoke, make_kit, no_temp_left
from tiny import DECODERS, make_pair, save_pair, tiny_config

import boomerang.io.loading as loading
from boomerang.core.arch import get_arch
from boomerang.core.params import meta_model
from boomerang.core.shapes import bias_shape, saved_shapes
from boomerang.errors import BoomerangError
from boomerang.io.consistency import check_checkpoint, check_files, check_layers, check_saved_shapes
from boomerang.io.safetensors_files import read_tensors
from boomerang.io.sidecar import read_layer_map


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _edit(src: Path, dst: Path, *, config=None, sidecar: bool = True) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if config is not None:
        config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    if not sidecar:
        (dst / "student_config.json").unlink()
    return dst


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = make_kit(tmp_path_factory.mktemp("kit"), archs=("llama",))
    _t, s = kit.pair("llama")
    v = kit.root / "variants"
    _edit(s, v / "sidecar", config=lambda c: c.pop("boomerang"))  # the published students' format
    _edit(s, v / "config", sidecar=False)  # the config section only

    def layers(n, kept):
        def edit(c):
            c["num_hidden_layers"] = n
            c["boomerang"]["layer_map"]["kept"] = kept

        return edit

    _edit(s, v / "three", config=layers(3, [0, 2, 4]), sidecar=False)  # 3 layers said, 5 held
    _edit(s, v / "seven", config=layers(7, [0, 1, 2, 3, 4, 6, 7]), sidecar=False)  # 7 said, 5 held
    _edit(s, v / "wide", config=lambda c: c.update(intermediate_size=128))  # MLPs of 64 held
    return kit


@pytest.fixture
def loads(monkeypatch):
    calls: list[str] = []
    real = loading.load_model

    def recording(spec, **kw):
        calls.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(loading, "load_model", recording)
    return calls


def _commands(kit, student: Path, out: Path) -> dict[str, tuple[list[str], Path | None]]:
    """Every command that takes a student: (argv, the output it must write)."""
    t, _ = kit.pair("llama")
    d = str(kit.corpus)
    cal = ["--calibration-texts", "2", "--calibration-length", "16"]
    s, o = str(student), str(out)
    return {
        "info": (["info", s, "--teacher", str(t)], None),
        "build": (["build", "--teacher", str(t), "--student", s, "-k", "2", "--out", o], out / "config.json"),
        "build --no-stream": (
            ["build", "--teacher", str(t), "--student", s, "-k", "2", "--no-stream", "--out", o],
            out / "config.json",
        ),
        "family": (
            ["family", "--teacher", str(t), "--student", s, "--sizes", "0,2", "--out", o],
            out / "family.json",
        ),
        "family --no-stream": (
            ["family", "--teacher", str(t), "--student", s, "--sizes", "1", "--no-stream", "--out", o],
            out / "family.json",
        ),
        "sweep": (
            [
                *("sweep", "--teacher", str(t), "--student", s, "--data", d, "--sizes", "0,5"),
                *("--baselines", "naive", "--max-tokens", "32", "--context", "16", "--out", o),
            ],
            out / "results.json",
        ),
        "analyze": (
            [
                "analyze",
                "--teacher",
                str(t),
                "--student",
                s,
                "--data",
                d,
                "--orders",
                "last",
                *cal,
                "--out",
                o,
            ],
            out / "summary.json",
        ),
        "order": (
            ["order", "--teacher", str(t), "--student", s, "--data", d, *cal, "--out", o + ".json"],
            None,
        ),
        "prune --student": (
            ["prune", "--teacher", str(t), "--student", s, "-n", "6", "--out", o],
            out / "config.json",
        ),
        "eval": (["eval", s, "--data", d, "--max-tokens", "32", "--context", "16"], None),
        "distill": (["distill", str(kit.root / "recipe.yaml"), f"student={s}", "--out", o], out / "student"),
    }


COMMANDS = [
    "info",
    "build",
    "build --no-stream",
    "family",
    "family --no-stream",
    "sweep",
    "analyze",
    "order",
    "prune --student",
    "eval",
    "distill",
]


# ---- section 3: both formats, end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["sidecar", "config"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_a_student_in_either_format(kit, tmp_path, fmt, command):
    student = kit.root / "variants" / fmt
    argv, output = _commands(kit, student, tmp_path / "out")[command]
    r = invoke(argv)
    assert r.code == 0 and not r.crashed, (r.err[-2000:], r.traceback)
    assert output is None or output.exists()


@pytest.mark.parametrize("fmt", ["sidecar", "config"])
def test_a_student_in_either_format_distils_saves_and_loads_back(kit, tmp_path, fmt):
    student = kit.root / "variants" / fmt
    out = tmp_path / "run"
    r = invoke(["distill", str(kit.root / "recipe.yaml"), f"student={student}", "--out", str(out)])
    assert r.code == 0, (r.err, r.traceback)
    saved = out / "student"
    cfg = json.loads((saved / "config.json").read_text())
    section = cfg["boomerang"]
    # the saved student carries its map in both places, and records the run
    assert section["role"] == "student" and section["layer_map"] == {"kept": [0, 2, 4, 6, 7], "n_teacher": 8}
    assert section["distill"]["steps"] == 2
    assert read_layer_map(saved) == read_layer_map(student)
    assert json.loads((saved / "student_config.json").read_text())["copied_teacher_layers"] == [0, 2, 4, 6, 7]
    model = loading.load_model(saved)
    assert len(model.model.layers) == 5 and all(torch.isfinite(p).all() for p in model.parameters())
    # and the distilled student is itself a student every command takes
    t, _ = kit.pair("llama")
    r = invoke(
        ["build", "--teacher", str(t), "--student", str(saved), "-k", "1", "--out", str(tmp_path / "b")]
    )
    assert r.code == 0, r.err


# ---- section 4: checkpoints that contradict themselves --------------------------------------------------------

CONTRADICTIONS = {
    "three": ("says 3 layers", "hold 5 (layers 0..4)"),
    "seven": ("says 7 layers", "hold 5 (layers 0..4)"),
    "wide": ("[32, 64]", "implies [32, 128]"),
}


@pytest.mark.parametrize("variant", sorted(CONTRADICTIONS))
@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_that_contradicts_itself_is_refused_by_every_command(
    kit, loads, tmp_path, variant, command
):
    student = kit.root / "variants" / variant
    out = tmp_path / "out"
    argv, _ = _commands(kit, student, out)[command]
    r = invoke(argv)
    assert r.code == 2 and not r.crashed, (r.err[-2000:], r.traceback)
    msg = " ".join(r.err.split())
    for fragment in CONTRADICTIONS[variant]:
        assert fragment in msg, msg
    assert "contradicts itself" in msg
    assert loads == []  # refused before any model loaded
    assert not out.exists() and not Path(str(out) + ".json").exists() and no_temp_left(tmp_path)


@pytest.mark.parametrize("variant", sorted(CONTRADICTIONS))
def test_the_shared_loaders_refuse_it_too(kit, variant):
    """What serve, Family and the library load through: load_model and both stream builders."""
    from boomerang.family import Family
    from boomerang.io.fastbuild import FastBuilder
    from boomerang.io.stream import StreamBuilder

    t, _ = kit.pair("llama")
    student = kit.root / "variants" / variant
    first, second = CONTRADICTIONS[variant]
    for load in (
        lambda: loading.load_model(student),
        lambda: StreamBuilder(t, student),
        lambda: FastBuilder.create(t, student),
        lambda: Family(t, student),
    ):
        with pytest.raises(BoomerangError) as e:
            load()
        msg = " ".join(str(e.value).split())
        assert first in msg and second in msg, msg


def test_info_and_build_no_longer_drop_trained_layers(kit, tmp_path):
    """The issue's example: a config of 3 layers over weights of 5 used to be accepted by both."""
    t, _ = kit.pair("llama")
    three = kit.root / "variants" / "three"
    assert invoke(["info", str(three)]).code == 2
    r = invoke(
        ["build", "--teacher", str(t), "--student", str(three), "-k", "1", "--out", str(tmp_path / "o")]
    )
    assert r.code == 2 and "says 3 layers" in r.err and not (tmp_path / "o").exists()


def test_prune_checks_a_given_student_against_the_teacher(kit, tmp_path):
    t, s = kit.pair("llama")
    teacher, student, lm = make_pair("qwen3", n_layers=8, kept=(0, 2, 4, 6, 7), tie=True)
    _qt, qs = save_pair(tmp_path / "qwen", teacher, student, lm)
    r = invoke(["prune", "--teacher", str(t), "--student", str(qs), "-n", "6", "--out", str(tmp_path / "a")])
    assert r.code == 2 and "different architectures" in r.err, r.err
    # a student of another teacher: its map is for 8 teacher layers, this teacher has 6
    other = tmp_path / "six"
    _edit(t, other, config=lambda c: c.update(num_hidden_layers=6), sidecar=True)
    from safetensors.torch import load_file, save_file

    w = load_file(str(other / "model.safetensors"))
    save_file({k: v for k, v in w.items() if not k.startswith(("model.layers.6.", "model.layers.7."))},
              str(other / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    r = invoke(
        ["prune", "--teacher", str(other), "--student", str(s), "-n", "6", "--out", str(tmp_path / "b")]
    )
    assert r.code == 2 and "does not fit" in " ".join(r.err.split()), r.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- the class: any contradiction, found from the headers alone and from a weightless model ----------------------


@pytest.fixture(scope="module")
def student_files(kit):
    _t, s = kit.pair("llama")
    entries, _ = read_tensors(s)
    return s, json.loads((s / "config.json").read_text()), entries


FIELDS = {
    "num_hidden_layers": [1, 2, 3, 4, 6, 8, 12],
    "intermediate_size": [32, 63, 128],
    "hidden_size": [16, 64],
    "num_key_value_heads": [1, 4],
    "num_attention_heads": [2, 8],
    "head_dim": [4, 16],
    "vocab_size": [95, 200],
}


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_any_contradiction_is_found_with_and_without_torch(student_files, field, data):
    from transformers import AutoConfig

    path, config, entries = student_files
    value = data.draw(st.sampled_from(FIELDS[field]))
    changed = {**config, field: value}
    if field == "num_hidden_layers":
        changed.pop("boomerang")
    with pytest.raises(BoomerangError) as fast:
        check_layers(path, changed, entries)
        check_saved_shapes(path, changed, entries)
    cfg = AutoConfig.for_model(**{k: v for k, v in changed.items() if k != "model_type"}, model_type="llama")
    with pytest.raises(BoomerangError) as full:
        check_checkpoint(path, cfg, entries)
    for e in (fast, full):
        msg = str(e.value)
        assert "contradicts itself" in msg
        if field == "num_hidden_layers":
            assert f"says {value} layers" in msg and "hold 5" in msg


def test_a_consistent_checkpoint_passes(student_files):
    from transformers import AutoConfig

    path, config, entries = student_files
    check_layers(path, config, entries)
    check_saved_shapes(path, config, entries)
    check_checkpoint(path, AutoConfig.from_pretrained(path), entries)
    check_files(path)


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("tie", [True, False])
def test_the_torch_free_shapes_are_transformers_own(arch, tie):
    cfg = tiny_config(arch, 3, tie, **({"attention_bias": True} if arch in ("llama", "qwen3") else {}))
    a = get_arch(cfg)
    shapes = saved_shapes(cfg.to_dict(), a)
    assert shapes is not None
    seen = 0
    for name, tensor in meta_model(cfg).state_dict().items():
        prefix = a.layers + "."
        inner = name[len(prefix) :].partition(".")[2] if name.startswith(prefix) else name
        module, _, leaf = inner.rpartition(".")
        weight = shapes.get(f"{module}.weight")
        if weight is None or leaf not in ("weight", "bias"):
            continue
        want = weight if leaf == "weight" else bias_shape(weight, a.model_type)
        assert tuple(tensor.shape) == want, (name, tuple(tensor.shape), want)
        seen += 1
    assert seen >= 8
