"""``boomerang info`` / ``build`` end to end, including every bad-input path."""

import pytest
import torch
from tiny import ids, make_pair, make_student, make_teacher, save_pair
from transformers import AutoModelForCausalLM

import boomerang as B
from boomerang.cli.app import run


@pytest.fixture
def dirs(tmp_path):
    teacher, student, lm = make_pair("llama", tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    return tmp_path, t_dir, s_dir, teacher, student, lm


def _no_temp_left(parent):
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def test_build_writes_a_loadable_model(dirs):
    tmp, t_dir, s_dir, teacher, student, lm = dirs
    out = tmp / "k2"
    assert (
        run(
            [
                "build",
                "--teacher",
                str(t_dir),
                "--student",
                str(s_dir),
                "--num-patched",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = B.patch(teacher, student, lm, num_patched=2)
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected(x).logits)
    assert model.config.boomerang["patched_student_layers"] == [2, 3]
    assert _no_temp_left(tmp)


def test_build_refuses_to_overwrite_without_force(dirs, capsys):
    tmp, t_dir, s_dir, *_ = dirs
    out = tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [
        "build",
        "--teacher",
        str(t_dir),
        "--student",
        str(s_dir),
        "--patch-layers",
        "1",
        "--out",
        str(out),
    ]
    assert run(args) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert run([*args, "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-patched", "9"], "out of range"),
        (["--patch-layers", "1,9"], "do not exist"),
        (["--patch-layers", "x"], "cannot read --patch-layers"),
        (["--num-patched", "1", "--patch-layers", "1"], "exactly one"),
        (["--num-patched", "1", "--order", "middle"], "unknown patch order"),
        (["--num-patched", "1", "--dtype", "fp8"], "unknown dtype"),
    ],
)
def test_build_bad_input(dirs, capsys, extra, message):
    tmp, t_dir, s_dir, *_ = dirs
    out = tmp / "out"
    code = run(["build", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and _no_temp_left(tmp)


def test_build_rejects_mismatched_models(tmp_path, capsys):
    lm = B.LayerMap.from_kept([0, 2, 4, 5], 6)
    teacher = make_teacher("llama")
    for name, other, message in [
        ("hidden", make_student(make_teacher("llama", hidden_size=64), lm), "hidden_size"),
        ("vocab", make_student(make_teacher("llama", vocab_size=80), lm), "vocab_size"),
        ("arch", make_student(make_teacher("qwen3"), lm), "different architectures"),
    ]:
        t_dir, s_dir = save_pair(tmp_path / name, teacher, other, lm)
        out = tmp_path / name / "out"
        code = run(["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "1", "--out", str(out)])
        assert code == 2 and message in capsys.readouterr().err
        assert not out.exists()


def test_build_missing_inputs(tmp_path, capsys):
    code = run(
        [
            "build",
            "--teacher",
            str(tmp_path / "nope"),
            "--student",
            str(tmp_path / "no"),
            "-k",
            "1",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_failed_load_leaves_no_partial_output(dirs, capsys):
    tmp, t_dir, s_dir, *_ = dirs
    weights = s_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # corrupt
    out = tmp / "out"
    assert run(["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "1", "--out", str(out)]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    assert not out.exists() and _no_temp_left(tmp)


def test_info_refuses_a_teacher_the_layer_map_does_not_fit(dirs, tmp_path, capsys):
    _tmp, _t_dir, s_dir, *_ = dirs
    other = tmp_path / "eight-layers"
    make_teacher("llama", n_layers=8).save_pretrained(other)  # the student's map is for a 6-layer teacher
    assert run(["info", str(s_dir), "--teacher", str(other)]) == 2
    err = capsys.readouterr().err
    assert "does not fit this pair" in err and "the teacher has 8 layers" in err


def test_student_without_layer_map_needs_layers(tmp_path, capsys):
    teacher, student, _lm = make_pair("llama")
    student.config.boomerang = None
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    base = ["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "1"]
    assert run([*base, "--out", str(tmp_path / "a")]) == 2
    assert "--layers" in capsys.readouterr().err
    assert run([*base, "--out", str(tmp_path / "b"), "--layers", "0,2,4,5"]) == 0


def test_info_on_student_and_teacher(dirs, capsys):
    _tmp, t_dir, s_dir, *_ = dirs
    assert run(["info", str(s_dir), "--teacher", str(t_dir)]) == 0
    out = capsys.readouterr().out
    assert "student blocks" in out and "family (last order)" in out and "[0, 2)" in out
    assert "distinct sizes" in out
    sizes = out.split("distinct sizes")[1].split("family (")[0]
    lines = [
        ln for ln in sizes.splitlines() if ln.strip().startswith("│") and ln.split("│")[1].strip().isdigit()
    ]
    assert [int(ln.split("│")[1]) for ln in lines] == list(range(4, 7))  # kept (0, 2, 4, 5) of 6 layers
    assert run(["info", str(t_dir)]) == 0
    assert "not a boomerang student" in capsys.readouterr().out
    assert run(["info", str(s_dir), "--order", "first"]) == 0
    assert "pass --teacher for exact counts" in capsys.readouterr().out.replace("\n", " ")
