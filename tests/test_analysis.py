"""Layer-similarity analysis: matrices, member curves, plots and the `boomerang analyze` command."""

import json

import pytest
import torch
from tiny import ids, make_pair, make_student, make_teacher, save_pair

import boomerang as B
import boomerang.analysis.orders
from boomerang.analysis.analyze import analyze, members, student_teacher, teacher_self
from boomerang.cli.app import run
from boomerang.core.params import family_table
from boomerang.errors import BoomerangError


def _final_cos(teacher, model, x):
    with torch.no_grad():
        a = teacher(x, output_hidden_states=True, use_cache=False).hidden_states[-1]
        b = model(x, output_hidden_states=True, use_cache=False).hidden_states[-1]
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_similarity_matrix_shape_and_diagonal(arch):
    teacher, student, _lm = make_pair(arch, 6, kept=(0, 2, 4, 5))
    x = ids(3, 10)
    st = student_teacher(student, teacher, x, batch_size=2)
    assert st.shape == (4, 6)
    # the student's layer 0 output vs each teacher layer output, by hand from output_hidden_states
    with torch.no_grad():
        s_h = student(x, output_hidden_states=True, use_cache=False).hidden_states
        t_h = teacher(x, output_hidden_states=True, use_cache=False).hidden_states
    for j in range(5):  # hidden_states[j + 1] is layer j's output (the last entry is after the final norm)
        ref = torch.nn.functional.cosine_similarity(s_h[1], t_h[j + 1], dim=-1).mean()
        assert float(st[0, j]) == pytest.approx(float(ref), abs=1e-5)
    # a student that is exactly the teacher: diagonal 1
    same = make_student(teacher, B.LayerMap.from_kept(range(6), 6), scale=0.0)
    sim = student_teacher(same, teacher, x)
    assert torch.allclose(torch.diagonal(sim), torch.ones(6), atol=1e-5)
    tt = teacher_self(teacher, x)
    assert tt.shape == (6, 6) and torch.allclose(tt, tt.T, atol=1e-6)
    assert torch.allclose(torch.diagonal(tt), torch.ones(6), atol=1e-5)
    assert torch.allclose(tt, sim, atol=1e-5)


def test_member_curves_match_direct_computation():
    teacher, student, lm = make_pair("qwen2", 8, kept=(0, 2, 4, 6, 7))
    x = ids(3, 10)
    curves = members(teacher, student, lm, x, ("last", "first", "greedy-kl"), kl=True, batch_size=2)
    assert set(curves) == {"last", "first", "greedy-kl"}
    for name in ("last", "first"):
        row = curves[name]
        assert row["num_layers"] == [
            r["layers"] for r in family_table(teacher.config, student.config, lm, B.resolve_order(name, lm))
        ]
        for k in range(lm.n_student + 1):
            model = B.patch(teacher, student, lm, num_patched=k, order=name)
            assert row["cosine"][k] == pytest.approx(_final_cos(teacher, model, x), abs=1e-5)
        assert row["cosine"][-1] == pytest.approx(1.0, abs=1e-5) and row["kl"][-1] == pytest.approx(
            0.0, abs=1e-6
        )
    assert curves["greedy-kl"]["kl"] == pytest.approx(curves["greedy-kl"]["order"]["info"]["kl"], abs=1e-9)
    # greedy-kl is at least as good as last and first at every size (size 1: it saw both candidates)
    assert curves["greedy-kl"]["kl"][1] <= min(curves["last"]["kl"][1], curves["first"]["kl"][1]) + 1e-9


def test_analyze_writes_everything_atomically(tmp_path):
    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    x = ids(3, 10)
    out = tmp_path / "analysis"
    summary = analyze(teacher, student, lm, x, out, orders=("last", "first", "similarity"))
    names = {p.name for p in out.iterdir()}
    assert {
        "similarity.json",
        "similarity.png",
        "teacher_similarity.json",
        "teacher_similarity.png",
        "members.json",
        "members.png",
        "summary.json",
        "orders",
    } <= names
    for png in ("similarity.png", "teacher_similarity.png", "members.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sim = json.loads((out / "similarity.json").read_text())
    assert len(sim["matrix"]) == 4 and len(sim["matrix"][0]) == 6
    assert sim["block_start"] == [0, 2, 4, 5] and sim["block_end"] == [1, 3, 4, 5]
    assert len(json.loads((out / "teacher_similarity.json").read_text())["matrix"]) == 6
    order = B.PatchOrder.from_json(json.loads((out / "orders" / "similarity.json").read_text()))
    assert order.name == "similarity" and order.info["calibration"]["texts"] == 3
    direct = B.analysis.orders.compute_order("similarity", teacher, student, lm, x)
    assert order.sequence == direct.sequence
    assert order.info["layer_similarity"] == pytest.approx(direct.info["layer_similarity"], abs=1e-6)
    assert (
        summary["orders"]["last"]["cosine"]
        == json.loads((out / "members.json").read_text())["orders"]["last"]["cosine"]
    )
    with pytest.raises(BoomerangError, match="already exists"):
        analyze(teacher, student, lm, x, out)
    # a failure part-way leaves nothing behind
    bad = tmp_path / "bad"
    with pytest.raises(BoomerangError):
        analyze(teacher, student, lm, x, bad, orders=("last", "sideways"))
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_analyze_rejects_a_mismatched_pair():
    _teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    with pytest.raises(BoomerangError, match="layer map"):
        analyze(make_teacher("llama", 8), student, lm, ids(), "/nonexistent/never-written")


def test_cli_analyze(tmp_path):
    teacher, student, _lm = make_pair("gpt_neox", 6, kept=(0, 2, 4, 5))
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "corpus.txt"
    data.write_text(" ".join(f"w{int(i)}" for i in torch.randint(4, 96, (2000,), generator=g)))
    out = tmp_path / "an"
    args = [
        "analyze",
        "--teacher",
        str(t_dir),
        "--student",
        str(s_dir),
        "--out",
        str(out),
        "--calibration-texts",
        "3",
        "--calibration-length",
        "16",
    ]
    assert run(args) == 2  # no --data
    assert not out.exists()
    assert run([*args, "--data", str(data), "--orders", "last,first", "--kl"]) == 0
    assert (out / "members_kl.png").exists()
    assert run([*args, "--data", str(data)]) == 2  # exists
    assert run([*args, "--data", str(data), "--orders", " ", "--force"]) == 2
    assert run([*args, "--data", str(data), "--student-layers", "0,2,4", "--force"]) == 2  # wrong map


def test_one_pass_matrices_equal_separate_ones():
    from boomerang.core.similarity import similarity_matrices

    teacher, student, _ = make_pair("qwen3", 6, kept=(0, 2, 4, 5))
    x = ids(3, 10)
    st, tt = similarity_matrices(student, x, teacher, batch_size=2)
    assert torch.allclose(st, student_teacher(student, teacher, x), atol=1e-6)
    assert torch.allclose(tt, teacher_self(teacher, x), atol=1e-6)
