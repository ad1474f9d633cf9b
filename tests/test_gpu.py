"""Checks that need a CUDA GPU (marker ``gpu``; skipped without one, so CI stays green on CPUs).

Run them where a GPU is: ``pytest -m gpu tests/test_gpu.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import tiny_recipe, tiny_run_setup

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROOT = Path(__file__).resolve().parents[1]


def test_bf16_step_on_gpu_trains_and_its_peak_is_within_the_plan(tmp_path):
    from boomerang.train import memory as M
    from boomerang.train.recipe import parse_recipe
    from boomerang.train.trainer import Distiller

    root = tiny_run_setup(tmp_path, tie=False, hidden_size=256, intermediate_size=704, vocab_size=96)
    raw = tiny_recipe(root, train={"steps": 20, "precision": "bf16", "batch_size": 8, "micro_batch_size": 4})
    raw["data"]["seq_len"] = 64
    recipe = parse_recipe(raw)
    d = Distiller(recipe, out=tmp_path / "run")
    d.setup()
    assert d.precision == "bf16" and next(d.student.parameters()).dtype == torch.float32
    first = d.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    for _ in range(5):
        last = d.train_step()
    step_peak = torch.cuda.max_memory_allocated() - start
    assert last["loss"] < first["loss"]
    plan = M.plan_recipe(recipe, 1)
    est = next(p for p in plan.plans if p.strategy == "ddp").components
    want = sum(
        est[k] for k in ("working copies", "gradients", "activations", "teacher outputs", "loss buffers")
    )
    # the plan is meant to be conservative and close: within a factor 1.5 either way on a tiny model
    assert want / 1.5 <= step_peak <= want * 1.5, (step_peak, want, est)


def test_gpu_benchmark_runs_on_a_tiny_pair(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_distill.py"), "--tiny", "--out", str(out),
           "--variants", "plain,ours", "--steps", "2", "--repeats", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    pair = json.loads(out.read_text())["pairs"][0]
    s = pair["summary"]
    assert s["ours"]["loss"]["loss"] == pytest.approx(s["plain"]["loss"]["loss"], rel=2e-2)
    assert s["ours"]["peak_gib"] > 0
    assert s["ours"]["mfu"] is None or s["ours"]["mfu"] > 0  # None: the GPU is not in the peak table


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_fsdp_on_two_gpus_matches_one(tmp_path):
    root = tiny_run_setup(tmp_path)
    recipe = tmp_path / "r.yaml"
    raw = tiny_recipe(root, train={"steps": 4, "strategy": "fsdp", "precision": "bf16"}, eval={"blocks": 4})
    recipe.write_text(yaml.safe_dump(raw))
    exe = str(Path(sys.executable).with_name("boomerang"))
    one, two = tmp_path / "one", tmp_path / "two"
    for cmd in (
        [exe, "distill", str(recipe), "--out", str(one)],
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", exe, "distill",
         str(recipe), "--out", str(two)],
    ):  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = (json.loads((o / "summary.json").read_text()) for o in (one, two))
    assert (
        b["sharding"]["parameters"]["teacher"]["per_rank"][0]
        <= b["sharding"]["parameters"]["teacher"]["total"] / 2 + 64
    )
    assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=2e-2)
