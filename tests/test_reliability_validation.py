"""Issue 13, defect classes 1, 2, 5, 6 and 7: every bad input is refused up front (exit 2, a message naming the
problem and the fix, no model loaded, nothing written), never with a traceback or a silent exit 0."""

from __future__ import annotations

import json
import time

import pytest
from reliability_kit import M, invoke, make_kit, no_temp_left

import boomerang.io.loading as loading


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("kit"))


@pytest.fixture
def loads(monkeypatch):
    """Every model load, recorded (the real loader still runs)."""
    calls: list[str] = []
    real = loading.load_model

    def recording(spec, **kw):
        calls.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(loading, "load_model", recording)
    return calls


def _fill(argv: list[str], kit, out) -> list[str]:
    t, s = kit.pair("llama")
    qt, qs = kit.pair("qwen3")
    subs = {"{T}": t, "{S}": s, "{QT}": qt, "{QS}": qs, "{D}": kit.corpus, "{BAD}": kit.root / "bad"}
    subs |= {"{O}": out, "{R}": kit.root / "recipe.yaml"}
    filled = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, str(v))
        filled.append(a)
    return filled


# (argv, a fragment of the message); each must exit 2 before any model loads and write nothing
REFUSED = {
    # class 1: tracebacks
    "gguf convert": (["convert", "{BAD}/bad.gguf", "--out", "{O}"], "cannot read the GGUF file"),
    "gguf build": (
        ["build", "--teacher", "{BAD}/bad.gguf", "--student", "{S}", "-k", "1", "--out", "{O}"],
        "cannot read the GGUF file",
    ),
    "bad sidecar": (
        ["build", "--teacher", "{T}", "--student", "{BAD}/bad_sidecar", "-k", "1", "--out", "{O}"],
        "student_config.json is not valid JSON",
    ),
    "calibration 0": (
        [
            "init",
            "--teacher",
            "{T}",
            "--out",
            "{O}",
            "--strategy",
            "similarity",
            "--data",
            "{D}",
            "--calibration-texts",
            "0",
        ],
        "--calibration-texts must be at least 1",
    ),
    # class 2: silent acceptances
    "stride 0": (["eval", "{T}", "--data", "{D}", "--stride", "0"], "--stride must be at least 1"),
    "batch 0": (["eval", "{T}", "--data", "{D}", "--batch-size", "0"], "--batch-size must be at least 1"),
    "sweep batch 0": (
        [
            "sweep",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "--data",
            "{D}",
            "--out",
            "{O}",
            "--batch-size",
            "0",
        ],
        "--batch-size must be at least 1",
    ),
    "order texts 0": (
        [
            "order",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "--data",
            "{D}",
            "--out",
            "{O}",
            "--calibration-texts",
            "0",
        ],
        "--calibration-texts must be at least 1",
    ),
    "patch-layers 1,,2": (
        ["build", "--teacher", "{T}", "--student", "{S}", "--patch-layers", "1,,2", "--out", "{O}"],
        "empty item",
    ),
    "patch-layers empty": (
        ["build", "--teacher", "{T}", "--student", "{S}", "--patch-layers", "", "--out", "{O}"],
        "--patch-layers is empty",
    ),
    "init layers 0,,3": (["init", "--teacher", "{T}", "--layers", "0,,3", "--out", "{O}"], "empty item"),
    "family sizes 0,,2": (
        ["family", "--teacher", "{T}", "--student", "{S}", "--sizes", "0,,2", "--out", "{O}"],
        "empty item",
    ),
    "prune layers 0,,3": (["prune", "--teacher", "{T}", "--layers", "0,,3", "--out", "{O}"], "empty item"),
    "reversed range": (["prune", "--teacher", "{T}", "--layers", "3-1", "--out", "{O}"], "runs backwards"),
    "duplicates": (["init", "--teacher", "{T}", "--layers", "0,2,2", "--out", "{O}"], "more than once"),
    "negative": (
        ["family", "--teacher", "{T}", "--student", "{S}", "--sizes", "-1", "--out", "{O}"],
        "is negative",
    ),
    "--layers vs own map": (
        ["build", "--teacher", "{T}", "--student", "{S}", "--layers", "0,1,2,3,4", "-k", "1", "--out", "{O}"],
        "carries its own layer map",
    ),
    "--layers vs own map (sweep)": (
        [
            "sweep",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "--data",
            "{D}",
            "--out",
            "{O}",
            "--layers",
            "0,1,2,3,4",
        ],
        "carries its own layer map",
    ),
    "two maps": (
        ["family", "--teacher", "{T}", "--student", "{BAD}/two_maps", "--out", "{O}"],
        "two layer maps that disagree",
    ),
    "keep-first 9": (["init", "--teacher", "{T}", "--keep-first", "9", "--out", "{O}"], "give 1..8"),
    "whole teacher": (
        ["init", "--teacher", "{T}", "--every", "1", "--out", "{O}"],
        "the student would be the teacher",
    ),
    # class 5: validation after heavy work
    "prune -n 0": (
        ["prune", "--teacher", "{T}", "-n", "0", "--out", "{O}"],
        "--num-layers must be at least 1",
    ),
    "prune -n 9": (
        ["prune", "--teacher", "{T}", "-n", "9", "--out", "{O}"],
        "--num-layers 9 is out of range",
    ),
    "size 20": (
        [
            "init",
            "--teacher",
            "{T}",
            "--strategy",
            "similarity",
            "--data",
            "{D}",
            "--size",
            "20",
            "--out",
            "{O}",
        ],
        "--size 20 is out of range",
    ),
    "size 0": (
        [
            "init",
            "--teacher",
            "{T}",
            "--strategy",
            "similarity",
            "--data",
            "{D}",
            "--size",
            "0",
            "--out",
            "{O}",
        ],
        "--size must be at least 1",
    ),
    "sweep order [4,3,": (
        [
            "sweep",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "--data",
            "{D}",
            "--out",
            "{O}",
            "--order",
            "[4,3,",
        ],
        "is not valid JSON",
    ),
    "num-patched 6": (
        ["build", "--teacher", "{T}", "--student", "{S}", "-k", "6", "--out", "{O}"],
        "--num-patched 6 is out of range",
    ),
    "short order file": (
        [
            "build",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "-k",
            "1",
            "--order",
            "{BAD}/short_order.json",
            "--out",
            "{O}",
        ],
        "is for 3 student layers, but this student has 5",
    ),
    "analyze order": (
        [
            "analyze",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "--data",
            "{D}",
            "--out",
            "{O}",
            "--orders",
            "last,{BAD}/truncated_order.json",
        ],
        "is not valid JSON",
    ),
    "prune laco option on naive": (
        ["prune", "--teacher", "{T}", "-n", "4", "--threshold", "0.5", "--out", "{O}"],
        "apply only to --method laco",
    ),
    "laco threshold nan": (
        [
            "prune",
            "--teacher",
            "{T}",
            "--method",
            "laco",
            "-n",
            "4",
            "--data",
            "{D}",
            "--threshold",
            "nan",
            "--out",
            "{O}",
        ],
        "--threshold must be a number",
    ),
    "build --data without a data order": (
        ["build", "--teacher", "{T}", "--student", "{S}", "-k", "1", "--data", "{D}", "--out", "{O}"],
        "--data is read only by the data-driven orders",
    ),
    # class 6: messages with a fix
    "order object": (
        [
            "family",
            "--teacher",
            "{T}",
            "--student",
            "{S}",
            "--order",
            "{BAD}/object_order.json",
            "--out",
            "{O}",
        ],
        "is not a valid patch order",
    ),
    "truncated weights": (["info", "{BAD}/truncated"], "download it again, or save the checkpoint again"),
    "text-field on plain text": (
        ["eval", "{T}", "--data", "{D}", "--text-field", "body"],
        "drop --text-field",
    ),
    "recipe key twice": (["distill", "{R}", "steps=0", "--steps", "1", "--dry-run"], "is set twice"),
    "binary data": (
        ["eval", "{T}", "--data", "{T}/model.safetensors"],
        "is not a text file",
    ),
    "recipe dir": (["distill", "{BAD}/"], "is a directory"),
    "mistyped path": (
        ["build", "--teacher", "{BAD}/teachr", "--student", "{S}", "-k", "1", "--out", "{O}"],
        "no such local directory",
    ),
    "existing out": (
        ["build", "--teacher", "{T}", "--student", "{S}", "-k", "1", "--out", "{BAD}"],
        "pass --force (force=True in Python)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_input_is_refused_up_front(kit, loads, tmp_path, case):
    argv, fragment = REFUSED[case]
    out = tmp_path / "out"
    r = invoke(_fill(argv, kit, out))
    assert not r.crashed, r.traceback
    assert r.code == 2 and r.explained, (r.code, r.out, r.err)
    assert fragment in " ".join(r.err.split()), r.err
    assert "Traceback" not in r.err and "pydantic" not in r.err.lower() and "force=True)" not in r.err
    assert loads == []  # refused before any model loaded
    assert not out.exists() and no_temp_left(tmp_path)


def test_missing_tokenizer_names_the_fix(kit, loads, tmp_path):
    t, _s = kit.pair("llama")
    r = invoke(["eval", str(kit.path("no_tokenizer")), "--data", str(kit.corpus), "--max-tokens", "16"])
    assert r.code == 2 and "has no tokenizer" in r.err and "--tokenizer" in r.err
    r = invoke(["prune", "--teacher", str(kit.path("no_tokenizer")), "-n", "4", "--out", str(tmp_path / "p")])
    assert r.code == 2 and "has no tokenizer" in r.err
    assert loads == []
    # with --tokenizer it works
    argv = ["eval", str(kit.path("no_tokenizer")), "--data", str(kit.corpus), "--max-tokens", "16"]
    assert invoke([*argv, "--tokenizer", str(t)]).code == 0


def test_order_file_holding_a_bare_list_is_accepted(kit, tmp_path):
    """Class 1: ``[4,3,2,1,0]`` in a file works for build (and inline for build, as for sweep)."""
    t, s = kit.pair("llama")
    order = kit.path("list_order.json")
    for spec, out in ((str(order), tmp_path / "a"), ("[4,3,2,1,0]", tmp_path / "b")):
        argv = [
            "build",
            "--teacher",
            str(t),
            "--student",
            str(s),
            "-k",
            "2",
            "--order",
            spec,
            "--out",
            str(out),
        ]
        r = invoke(argv)
        assert r.code == 0, r.err
        assert json.loads((out / "config.json").read_text())["boomerang"]["patched_student_layers"] == [3, 4]


def test_analyze_accepts_a_bare_list_order_file(kit, tmp_path):
    t, s = kit.pair("llama")
    argv = ["analyze", "--teacher", str(t), "--student", str(s), "--data", str(kit.corpus), "--out"]
    argv += [str(tmp_path / "an"), "--orders", f"last,{kit.path('list_order.json')}"]
    argv += ["--calibration-texts", "2", "--calibration-length", "16"]
    r = invoke(argv)
    assert r.code == 0, r.err
    members = json.loads((tmp_path / "an" / "members.json").read_text())
    assert len(members["orders"]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["init", "--teacher", "{T}", "--out", "{BAD}/data.txt/sub"],
        ["build", "--teacher", "{T}", "--student", "{S}", "-k", "1", "--out", "/sys/boomerang-x"],
        ["family", "--teacher", "{T}", "--student", "{S}", "--out", "/proc/boomerang-x"],
        ["eval", "{T}", "--data", "{D}", "--json", "/sys/x.json"],
        ["order", "--teacher", "{T}", "--student", "{S}", "--data", "{D}", "--out", "{BAD}/data.txt/o.json"],
        ["analyze", "--teacher", "{T}", "--student", "{S}", "--data", "{D}", "--out", "/sys/boomerang-x"],
        ["sweep", "--teacher", "{T}", "--student", "{S}", "--data", "{D}", "--out", "{BAD}/data.txt/s"],
        ["prune", "--teacher", "{T}", "-n", "4", "--out", "/sys/boomerang-x"],
        ["convert", "{BAD}/bad.gguf", "--out", "/sys/boomerang-x"],
        ["distill", "{R}", "--out", "/sys/boomerang-x"],
    ],
    ids=lambda a: a[0],
)
def test_unwritable_output_fails_before_any_work(kit, loads, argv):
    """Class 1 and 5: an --out under a file or on /sys, /proc is refused before anything loads."""
    r = invoke(_fill(argv, kit, None))
    assert not r.crashed, r.traceback
    assert r.code == 2 and "cannot write" in r.err, r.err
    assert "choose another output path" in " ".join(r.err.split())
    assert loads == []


def test_mistyped_relative_path_is_not_tried_on_the_hub(kit, monkeypatch):
    """A relative path whose first part is a local folder, or any path while the Hub is offline, fails at once."""
    from huggingface_hub import constants

    monkeypatch.chdir(kit.root)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    r = invoke(["info", "llama/studnet"])  # llama/ exists here: meant as a local path
    assert r.code == 2 and "no such local directory" in r.err and "llama/student" in r.err
    assert time.perf_counter() - started < 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke(["info", "someorg/somemodel"])
    assert r.code == 2 and "no such local directory" in r.err and "Hub is offline" in r.err


def test_remote_code_is_dropped_from_written_configs(kit, tmp_path):
    """Class 7: ``auto_map`` never reaches an output config.json (the code it names is not shipped)."""
    import shutil

    t, s = kit.pair("llama")
    t2, s2 = tmp_path / "t", tmp_path / "s"
    shutil.copytree(t, t2)
    shutil.copytree(s, s2)
    for d in (t2, s2):
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "someone/evil--modeling_evil.Evil"}
        (d / "config.json").write_text(json.dumps(cfg))
    runs = {
        "build": ["build", "--teacher", str(t2), "--student", str(s2), "-k", "1"],
        "build-mem": ["build", "--teacher", str(t2), "--student", str(s2), "-k", "1", "--no-stream"],
        "init": ["init", "--teacher", str(t2)],
        "prune": ["prune", "--teacher", str(t2), "-n", "4"],
    }
    for name, argv in runs.items():
        r = invoke([*argv, "--out", str(tmp_path / name)])
        assert r.code == 0, (name, r.err)
        assert "auto_map" not in json.loads((tmp_path / name / "config.json").read_text()), name
    r = invoke(
        ["family", "--teacher", str(t2), "--student", str(s2), "--sizes", "1", "--out", str(tmp_path / "f")]
    )
    assert r.code == 0, r.err
    for cfg in (tmp_path / "f").glob("*/config.json"):
        assert "auto_map" not in json.loads(cfg.read_text())


def test_info_checks_the_weights(kit):
    t, _ = kit.pair("llama")
    assert invoke(["info", str(t)]).code == 0
    r = invoke(["info", str(kit.path("truncated"))])
    assert r.code == 2 and "not a valid safetensors file" in r.err


def test_student_size_limits_are_exact(kit, tmp_path):
    """The bounds in the messages are the real ones: the largest valid value works."""
    t, s = kit.pair("llama")
    assert (
        invoke(
            ["build", "--teacher", str(t), "--student", str(s), "-k", str(M), "--out", str(tmp_path / "a")]
        ).code
        == 0
    )
    assert invoke(["prune", "--teacher", str(t), "-n", "8", "--out", str(tmp_path / "b")]).code == 0
    assert (
        invoke(
            [
                "init",
                "--teacher",
                str(t),
                "--keep-first",
                "7",
                "--keep-last",
                "0",
                "--out",
                str(tmp_path / "c"),
            ]
        ).code
        == 0
    )
