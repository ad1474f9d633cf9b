"""A student saved in bf16 beside its fp32 teacher (e.g. distilled with train.precision=bf16 elsewhere): every
command that loads both works with --dtype auto, which loads the pair in one common dtype (the wider, fp32)."""

import json

import pytest
import torch
from tiny import ids, make_pair, save_pair
from transformers import AutoModelForCausalLM

import boomerang as B
from boomerang.cli.app import run
from boomerang.io.loading import load_pair, pair_dtype


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    teacher, student, lm = make_pair("llama", tie=True)
    t_dir, s_dir = save_pair(tmp, teacher, student.to(torch.bfloat16), lm)
    data = tmp / "text.txt"
    data.write_text(" ".join(f"w{i % 50}" for i in range(3000)))
    return tmp, t_dir, s_dir, data, lm


def test_the_pair_is_mixed(pair):
    _, t_dir, s_dir, *_ = pair
    assert json.loads((t_dir / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((s_dir / "config.json").read_text())["dtype"] == "bfloat16"


def test_pair_dtype_rules(pair):
    _, t_dir, s_dir, *_ = pair
    t, s = B.load_model(t_dir), B.load_model(s_dir)
    assert pair_dtype(t.config, s.config) == torch.float32  # the wider
    assert pair_dtype(t.config, t.config) is None  # agree: keep the stored dtype
    assert pair_dtype(t.config, s.config, "bf16") == torch.bfloat16  # explicit wins
    lt, ls = load_pair(t_dir, s_dir)
    assert lt.dtype == ls.dtype == torch.float32


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "-k", "2", "--out", "{out}"],
        ["build", "-k", "2", "--no-stream", "--out", "{out}"],
        ["family", "--out", "{out}"],
        [
            "sweep",
            "--data",
            "{data}",
            "--max-tokens",
            "256",
            "--context",
            "64",
            "--stride",
            "32",
            "--out",
            "{out}",
        ],
        [
            "analyze",
            "--data",
            "{data}",
            "--calibration-texts",
            "2",
            "--calibration-length",
            "32",
            "--out",
            "{out}",
        ],
        [
            "order",
            "--order",
            "greedy-kl",
            "--data",
            "{data}",
            "--calibration-texts",
            "2",
            "--out",
            "{out}.json",
        ],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_every_pair_command_accepts_a_bf16_student(pair, tmp_path, argv, capsys):
    _, t_dir, s_dir, data, _ = pair
    out = tmp_path / "out"
    args = [a.format(out=out, data=data) for a in argv]
    code = run([args[0], "--teacher", str(t_dir), "--student", str(s_dir), *args[1:]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "same dtype" not in err


def test_built_member_equals_the_patch_in_fp32(pair, tmp_path):
    _, t_dir, s_dir, _, lm = pair
    out = tmp_path / "k2"
    assert run(["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "2", "--out", str(out)]) == 0
    built = AutoModelForCausalLM.from_pretrained(out).eval()
    t, s = load_pair(t_dir, s_dir)
    expected = B.patch(t, s, lm, num_patched=2)
    x = ids()
    with torch.no_grad():
        assert torch.equal(built(x).logits, expected(x).logits)


def test_info_and_eval_on_a_bf16_student(pair, capsys):
    _, _, s_dir, data, _ = pair
    assert run(["info", str(s_dir)]) == 0
    assert run(["eval", str(s_dir), "--data", str(data), "--max-tokens", "128", "--context", "64"]) == 0
