"""`boomerang demo` end to end on the real SmolLM2-135M teacher, at a tiny budget."""

from __future__ import annotations

import json

import pytest

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
