"""Issue 26, section 5: text data.

A .jsonl text field that is not a string is refused with the file, the line and the type (it used to be scored as
Python's ``str()`` of the value); a symbolic link loop gives the same clear error in every command; a binary file
as a recipe or a chat template gets a clear error; calibration longer than the model's context is refused like
``eval --context``; an error about held-out documents names the real cause."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_kit import invoke, make_kit, no_temp_left

import boomerang.io.loading as loading
from boomerang.data.corpora import read_texts
from boomerang.data.textfiles import text_value
from boomerang.errors import BoomerangError
from boomerang.io.textfile import read_text_file


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = make_kit(tmp_path_factory.mktemp("kit"), archs=("llama",))
    loops = kit.root / "loops"
    loops.mkdir()
    os.symlink("b", loops / "a")  # a -> b -> a
    os.symlink("a", loops / "b")
    inside = loops / "folder"
    inside.mkdir()
    for f in kit.corpus.iterdir():
        (inside / f.name).write_text(f.read_text())
    os.symlink("self.txt", inside / "self.txt")  # a document name that loops
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


def _data_commands(kit, data: str, out) -> dict[str, list[str]]:
    """Every command that reads text, with ``data`` where the text goes."""
    t, s = (str(p) for p in kit.pair("llama"))
    cal = ["--calibration-texts", "2", "--calibration-length", "16"]
    o = str(out)
    return {
        "eval": ["eval", t, "--data", data, "--max-tokens", "32"],
        "eval --task-data": ["eval", t, "--tasks", "boomerang_cloze", "--task-data", data, "--limit", "2"],
        "init": [
            "init",
            "--teacher",
            t,
            "--strategy",
            "similarity",
            "--size",
            "3",
            "--data",
            data,
            *cal,
            "--out",
            o,
        ],
        "prune": [
            "prune",
            "--teacher",
            t,
            "--method",
            "shortgpt",
            "-n",
            "4",
            "--data",
            data,
            *cal,
            "--out",
            o,
        ],
        "analyze": ["analyze", "--teacher", t, "--student", s, "--data", data, *cal, "--out", o],
        "order": ["order", "--teacher", t, "--student", s, "--data", data, *cal, "--out", o + ".json"],
        "build": [
            "build",
            "--teacher",
            t,
            "--student",
            s,
            "-k",
            "1",
            "--order",
            "greedy-kl",
            "--data",
            data,
            "--out",
            o,
        ],
        "family": [
            "family",
            "--teacher",
            t,
            "--student",
            s,
            "--order",
            "greedy-kl",
            "--data",
            data,
            "--out",
            o,
        ],
        "sweep": ["sweep", "--teacher", t, "--student", s, "--data", data, "--out", o],
        "sweep --calibration": [
            *("sweep", "--teacher", t, "--student", s, "--data", str(kit.corpus)),
            *("--calibration", data, "--baselines", "shortgpt", "--out", o),
        ],
        "distill data.train": ["distill", str(kit.root / "recipe.yaml"), f"data.train={data}", "--out", o],
        "distill data.eval": ["distill", str(kit.root / "recipe.yaml"), f"data.eval={data}", "--out", o],
        "demo": ["demo", "--teacher", t, "--data", data, "--out", o],
    }


COMMANDS = [
    "eval",
    "eval --task-data",
    "init",
    "prune",
    "analyze",
    "order",
    "build",
    "family",
    "sweep",
    "sweep --calibration",
    "distill data.train",
    "distill data.eval",
    "demo",
]


# ---- .jsonl text fields that are not strings --------------------------------------------------------------------

NOT_TEXT = {"5": "a number", "1.5": "a number", "null": "null", "true": "a boolean", "[1, 2]": "a list",
            '{"a": 1}': "an object"}  # fmt: skip


@pytest.mark.parametrize("value", sorted(NOT_TEXT))
@pytest.mark.parametrize("command", ["eval", "init", "prune", "sweep", "distill data.train"])
def test_a_jsonl_text_that_is_not_a_string_is_refused_up_front(kit, loads, tmp_path, value, command):
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "w4 w5 w6 w7"}) + "\n" + f'{{"text": {value}}}\n')
    r = invoke(_data_commands(kit, str(data), tmp_path / "out")[command])
    assert r.code == 2 and not r.crashed, (r.err, r.traceback)
    msg = " ".join(r.err.split())
    assert f"{data}:2" in msg and NOT_TEXT[value] in msg and "not text" in msg, msg
    assert loads == [] and not (tmp_path / "out").exists()


def test_a_bad_line_past_the_probe_is_refused_when_read(kit, tmp_path):
    """The first 64 KiB are checked before any model loads; a later line when it is read, naming its line."""
    data = tmp_path / "big.jsonl"
    good = json.dumps({"text": "w4 w5 w6 w7 " * 20}) + "\n"
    n = 70_000 // len(good) + 1
    data.write_text(good * n + '{"text": [3]}\n')
    t, _ = kit.pair("llama")
    r = invoke(["eval", str(t), "--data", str(data)])
    assert r.code == 2 and f"{data}:{n + 1}" in r.err and "a list" in r.err, r.err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(value=JSON)
def test_only_strings_are_text(value):
    if isinstance(value, str):
        assert text_value(value, "x", "text") == value
        return
    with pytest.raises(BoomerangError, match="not text"):
        text_value(value, "x", "text")


@settings(max_examples=40, deadline=None)
@given(values=st.lists(JSON, min_size=1, max_size=6))
def test_reading_a_jsonl_file_keeps_strings_and_refuses_the_rest(tmp_path_factory, values):
    f = tmp_path_factory.mktemp("j") / "d.jsonl"
    f.write_text("".join(json.dumps({"text": v}) + "\n" for v in values))
    first_bad = next((i for i, v in enumerate(values, 1) if not isinstance(v, str)), None)
    if first_bad is None:
        assert list(read_texts(str(f))) == values
    else:
        with pytest.raises(BoomerangError, match=f"d.jsonl:{first_bad}: "):
            list(read_texts(str(f)))


# ---- symbolic link loops: the same clear error in every command ------------------------------------------------------


@pytest.mark.parametrize("where", ["the path itself", "a document in a folder"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_symlink_loop_as_data_gets_the_same_clear_error_everywhere(kit, loads, tmp_path, command, where):
    data = kit.root / "loops" / ("a" if where == "the path itself" else "folder")
    out = tmp_path / "out"
    r = invoke(_data_commands(kit, str(data), out)[command])
    assert r.code == 2 and not r.crashed, (r.err[-1500:], r.traceback)
    msg = " ".join(r.err.split())
    assert "is a symbolic link loop" in msg and "Traceback" not in r.err, msg
    assert loads == [] and not out.exists() and no_temp_left(tmp_path)


def test_a_symlink_loop_as_a_model_or_a_recipe(kit, tmp_path):
    loop = str(kit.root / "loops" / "a")
    t = str(kit.pair("llama")[0])
    for argv in (
        ["info", loop],
        ["build", "--teacher", t, "--student", loop, "-k", "1", "--out", str(tmp_path / "o")],
        ["eval", loop, "--data", str(kit.corpus)],
        ["distill", loop, "--dry-run"],
    ):
        r = invoke(argv)
        assert r.code == 2 and not r.crashed and "symbolic link loop" in " ".join(r.err.split()), (
            argv,
            r.err,
        )


# ---- binary files where text is expected ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(bytes(range(256)), "is not a text file"), (b"{{ messages }}\xff\xfe", "is not UTF-8 text")],
)
def test_a_binary_chat_template_or_recipe_gets_a_clear_error(tmp_path, content, fragment):
    f = tmp_path / "template.jinja"
    f.write_bytes(content)
    with pytest.raises(BoomerangError, match=fragment):
        read_text_file(f, "--chat-template", "give a Jinja template file")
    f.write_text("{{ messages }}")
    assert read_text_file(f, "--chat-template", "give a Jinja template file") == "{{ messages }}"


# ---- token lengths beyond the model's context -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["init", "--strategy", "similarity", "--size", "3", "--calibration-length", "129"],
            "--calibration-length 129",
        ),
        (
            ["prune", "--method", "shortgpt", "-n", "4", "--calibration-length", "500"],
            "--calibration-length 500",
        ),
        (["analyze", "--calibration-length", "200"], "--calibration-length 200"),
        (["order", "--calibration-length", "200"], "--calibration-length 200"),
        (["distill", "data.seq_len=4096"], "data.seq_len 4096"),
        (
            [
                "distill",
                "init.strategy=similarity",
                "init.layers=null",
                "init.size=3",
                "init.calibration_length=256",
            ],
            "init.calibration_length 256",
        ),
        (["eval", "--context", "500"], "--context 500"),
    ],
)
def test_lengths_beyond_the_models_positions_are_refused_before_loading(kit, loads, tmp_path, argv, fragment):
    t, s = (str(p) for p in kit.pair("llama"))
    out = tmp_path / "out"
    command, rest = argv[0], argv[1:]
    full = {
        "init": ["init", "--teacher", t, "--data", str(kit.corpus), "--out", str(out)],
        "prune": ["prune", "--teacher", t, "--data", str(kit.corpus), "--out", str(out)],
        "analyze": ["analyze", "--teacher", t, "--student", s, "--data", str(kit.corpus), "--out", str(out)],
        "order": [
            "order",
            "--teacher",
            t,
            "--student",
            s,
            "--data",
            str(kit.corpus),
            "--out",
            str(out) + ".json",
        ],
        "distill": ["distill", str(kit.root / "recipe.yaml"), "--out", str(out)],
        "eval": ["eval", t, "--data", str(kit.corpus)],
    }[command] + rest
    r = invoke(full)
    assert r.code == 2 and not r.crashed, (r.err, r.traceback)
    msg = " ".join(r.err.split())
    assert fragment in msg and "exceeds the model's 128 positions" in msg, msg
    assert loads == [] and not out.exists()


# ---- held-out documents ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["data.heldout_docs=12"], ["data.heldout_docs=12 leaves no training documents", "has 12"]),
        (["data.heldout_docs=1000"], ["data.heldout_docs=1000 leaves no training documents"]),
        (
            ["data.heldout_docs=5", "data.skip_docs=7"],
            ["data.heldout_docs=5 + data.skip_docs=7 leaves no training"],
        ),
        (["data.heldout_docs=1", "data.seq_len=128"], ["the held-out 1 document", "fewer than one sequence"]),
        (
            ["data.skip_docs=11", "data.seq_len=128"],
            ["after data.skip_docs=11", "fewer than data.seq_len=128"],
        ),
    ],
)
def test_errors_about_held_out_documents_name_the_real_cause(kit, tmp_path, overrides, fragments):
    out = tmp_path / "run"
    r = invoke(["distill", str(kit.root / "recipe.yaml"), "data.eval=null", *overrides, "--out", str(out)])
    assert r.code == 2 and not r.crashed, (r.err, r.traceback)
    msg = " ".join(r.err.split())
    for fragment in fragments:
        assert fragment in msg, msg
    assert "shorter than one sequence (seq_len)" not in msg  # the old message, which blamed the wrong thing
