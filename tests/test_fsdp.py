"""FSDP2 on CPU: two gloo processes shard teacher and student (``train.strategy: fsdp``) and train exactly like one
process; checkpoints are the unsharded format and resume exactly; bf16 under sharding tracks one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_distributed import _boomerang, _curve
from tiny import make_teacher, tiny_recipe, tiny_run_setup

from boomerang.train import sharding

LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=ENV, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _evals(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("model") == "student"]


@pytest.mark.distributed
def test_fsdp_two_processes_match_one_process_and_resume_exactly(tmp_path):
    root = tiny_run_setup(tmp_path)  # tied embeddings: embedding, final norm and head share one FSDP unit
    recipe = tmp_path / "r.yaml"
    raw = tiny_recipe(
        root, train={"steps": 4, "strategy": "fsdp"}, eval={"every": 2, "blocks": 4}, checkpoint={"every": 2}
    )
    recipe.write_text(yaml.safe_dump(raw))
    one, two = tmp_path / "one", tmp_path / "two"
    # one process: strategy fsdp has no effect
    _run([_boomerang(), "distill", str(recipe), "--out", str(one)])
    res = _run([*LAUNCH, _boomerang(), "distill", str(recipe), "--out", str(two)])
    assert "sharding  FSDP2 over 2 processes" in res.stdout

    # each rank holds half of each model's parameters (measured from the local shards)
    shards = json.loads((two / "summary.json").read_text())["sharding"]["parameters"]
    assert json.loads((one / "summary.json").read_text())["sharding"] is None
    for name in ("teacher", "student"):
        per_rank, total = shards[name]["per_rank"], shards[name]["total"]
        assert len(per_rank) == 2 and sum(per_rank) == total
        assert max(per_rank) <= total / 2 + 64  # dim-0 chunks: at most a row more than an even split

    # the same losses, validation and final weights as one process
    assert _curve(one) == pytest.approx(_curve(two), abs=1e-5) and len(_curve(two)) == 4
    assert _evals(one) == pytest.approx(_evals(two), abs=1e-5) and len(_evals(two)) == 2
    wa, wb = (load_file(str(o / "student" / "model.safetensors")) for o in (one, two))
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)

    # the checkpoint is the unsharded format: the same files and tensor names as a one-process run's
    ckpt = two / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.json",
        "rng.safetensors",
        "scheduler.json",
        "state.json",
    ]
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert {k.split(".", 1)[1] for k in opt} == {"exp_avg", "exp_avg_sq", "step"}
    # one state per trained parameter (head tied)
    assert len({k.split(".", 1)[0] for k in opt}) == len(wa) - 0

    # resuming the sharded run from step 2 ends with the same weights and curve
    res = _run([*LAUNCH, _boomerang(), "distill", str(recipe), "--out", str(two), "--resume"])
    assert "resumed   from" in res.stdout
    wc = load_file(str(two / "student" / "model.safetensors"))
    for k in wb:
        torch.testing.assert_close(wb[k], wc[k], atol=1e-6, rtol=1e-6)
    assert _curve(two) == pytest.approx(_curve(one), abs=1e-5)


@pytest.mark.distributed
def test_fsdp_bf16_tracks_one_process_and_the_student_loads_in_both_dtypes(tmp_path):
    from boomerang.io.loading import load_model

    root = tiny_run_setup(tmp_path, tie=False)  # untied: the embedding and the head are separate units
    recipe = tmp_path / "r.yaml"
    raw = tiny_recipe(root, train={"steps": 6, "strategy": "fsdp", "precision": "bf16"}, eval={"blocks": 4})
    recipe.write_text(yaml.safe_dump(raw))
    one, two = tmp_path / "one", tmp_path / "two"
    _run([_boomerang(), "distill", str(recipe), "--out", str(one)])
    _run([*LAUNCH, _boomerang(), "distill", str(recipe), "--out", str(two)])
    a, b = _curve(one), _curve(two)
    assert len(a) == len(b) == 6
    # bf16 autocast (one process) and FSDP's bf16 parameters round differently; the curves agree to 1%
    assert b == pytest.approx(a, rel=1e-2)
    assert b[-1] < b[0]  # and it trains
    assert _evals(two) == pytest.approx(_evals(one), rel=1e-2)
    ids = torch.randint(4, 90, (2, 12))
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(str(two / "student"), dtype=dtype)
        assert next(model.parameters()).dtype == dtype
        with torch.no_grad():
            logits[dtype] = model(ids).logits.float()
        assert torch.isfinite(logits[dtype]).all()
    torch.testing.assert_close(logits[torch.bfloat16], logits[torch.float32], atol=0.1, rtol=0.05)


# ---- in one process --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_units_put_each_parameter_in_one_unit(tie):
    model = make_teacher("llama", 4, tie=tie)
    layers, embed, head = sharding.units(model)
    assert len(layers) == 4
    out = model.get_output_embeddings()
    assert out in head and model.model.norm in head
    if tie:  # the shared matrix lives with the head
        assert model.get_input_embeddings() in head and not embed
    else:
        assert embed == [model.get_input_embeddings()]
    unit_params = [
        {id(p) for m in unit for p in m.parameters()} for unit in [*([x] for x in layers), embed, head]
    ]
    everything = set().union(*unit_params)
    assert sum(len(u) for u in unit_params) == len(everything)  # no parameter in two units
    assert everything == {id(p) for p in model.parameters()}


def test_fsdp_is_used_only_when_asked_and_with_several_processes():
    assert sharding.wanted("fsdp", False, 2)
    assert sharding.wanted("auto", True, 4)
    assert not sharding.wanted("auto", False, 4)
    assert not sharding.wanted("ddp", True, 4)
    assert not sharding.wanted("fsdp", True, 1)
