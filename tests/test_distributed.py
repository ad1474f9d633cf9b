"""Two CPU processes (gloo) with the same global batch give the same training as one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import tiny_recipe, tiny_run_setup

pytestmark = pytest.mark.distributed


def _boomerang() -> str:
    exe = Path(sys.executable).with_name("boomerang")
    return str(exe) if exe.is_file() else shutil.which("boomerang")  # type: ignore[return-value]


def _curve(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "kind" not in r]


def test_two_gloo_processes_match_one_process(tmp_path):
    root = tiny_run_setup(tmp_path)
    recipe = tmp_path / "r.yaml"
    # 8 sequences per step: 1 process × 2 × 4 accumulation vs 2 processes × 2 × 2 accumulation
    raw = tiny_recipe(root, train={"steps": 4}, eval={"every": 2, "blocks": 4}, checkpoint={"every": 2})
    recipe.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [_boomerang(), "distill", str(recipe), "--out", str(one)], check=True, env=env, timeout=300
    )
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run(
        [*launch, _boomerang(), "distill", str(recipe), "--out", str(two)],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es) × 2 × 2 accumulation" in res.stdout.replace("\n", " ")
    a, b = _curve(one), _curve(two)
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, abs=1e-5)
    evals = [
        [json.loads(x)["loss"] for x in (o / "metrics.jsonl").read_text().splitlines() if "student" in x]
        for o in (one, two)
    ]
    assert evals[0] == pytest.approx(evals[1], abs=1e-5) and len(evals[0]) == 2
    wa, wb = (
        load_file(str(one / "student" / "model.safetensors")),
        load_file(str(two / "student" / "model.safetensors")),
    )
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    # one checkpoint at step 2, written once by the main process
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step-0000002"]
    # resuming the two-process run from its step-2 checkpoint reproduces the same final weights
    res = subprocess.run(
        [*launch, _boomerang(), "distill", str(recipe), "--out", str(two), "--resume"],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed   from" in res.stdout
    wc = load_file(str(two / "student" / "model.safetensors"))
    for k in wb:
        torch.testing.assert_close(wb[k], wc[k], atol=1e-6, rtol=1e-6)
    assert _curve(two) == pytest.approx(b, abs=1e-6)
