"""Where the distillation step's time goes, by phase and by kind of operator (issue 23).

The step of ``benchmarks/distill_step.py`` (SmolLM2-135M teacher, its 16-layer student, one micro-batch) is split
into phases: the teacher's forward, the student's forward, the mixed-context member's forward (with ``--loss
'{"mixed": 1.0, "mixed_draw": "size"}'``, the demo's step), the loss (the fused CE/KL head computes its gradients
in its forward; the member's loss included), the backward pass (the member's included), and the optimizer
(clipping, AdamW, the bf16 copies' sync). Two measurements:

* wall seconds per phase, timed without a profiler (medians over ``--steps`` steps after a warm-up);
* within each phase, the share of operator time that is matrix products (``mm``/``addmm``/``bmm``/``linear``),
  attention (SDPA's kernels, or every operator inside the matmul attention of ``boomerang/train/attention.py``,
  its matmuls included), and everything else, from ``torch.profiler`` over one step (the profiler slows small
  operators down, so only these shares are taken from it, never absolute times).

    python benchmarks/profile_step.py --precision bf16 --batch 8      # -> results/profile_step-bf16.json
    python benchmarks/profile_step.py --precision bf16 --batch 2 --loss '{"mixed": 1.0, "mixed_draw": "size"}'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul")
ATTENTION = "attention: matmul"
PHASES = ("teacher forward", "student forward", "member forward", "loss", "backward", "optimizer")


def category(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/corpora/validation")
    )
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--train", default="{}", help="extra train settings, JSON (e.g. '{\"compile\": true}')")
    ap.add_argument("--loss", default="{}", help="extra loss settings, JSON (e.g. '{\"mixed\": 1.0}')")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from boomerang.train import attention
    from boomerang.train.precision import machine
    from boomerang.train.recipe import parse_recipe
    from boomerang.train.trainer import Distiller

    torch.set_num_threads(args.threads)
    train = {"precision": args.precision, "batch_size": args.batch, "micro_batch_size": args.batch}
    raw = {
        "name": "profile",
        "teacher": args.teacher,
        "data": {"train": args.data, "seq_len": args.seq_len},
        "loss": {"align_embeddings": True, "align_final": "normed", **json.loads(args.loss)},
        "train": {**train, "steps": 1000, "threads": args.threads, **json.loads(args.train)},
        "eval": {"blocks": 0},
        "checkpoint": {"every": 0},
        "log": {"progress": False, "tensorboard": False},
        "optim": {"warmup_ratio": 0.0},
    }
    wall: dict[str, list[float]] = defaultdict(list)
    current: list[str] = []

    def phase(name: str, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            current.append(name)
            try:
                with record_function(f"phase: {name}"):
                    return fn(*a, **k)
            finally:
                current.pop()
                wall[name].append(time.perf_counter() - t0)

        return run

    with tempfile.TemporaryDirectory() as tmp:
        d = Distiller(parse_recipe(raw), out=Path(tmp) / "run")
        d.setup()
        d._teacher = phase("teacher forward", d._teacher)
        d.s_mod.forward = phase("student forward", d.s_mod.forward)
        d.loss_fn.__class__.__call__ = phase("loss", d.loss_fn.__class__.__call__)  # the member's loss too
        if d.models.mixed is not None:  # the mixed-context term (--loss '{"mixed": 1}'): its member's trunk
            draw = d.models.mixed.member

            def member(plan):
                m = draw(plan)
                m.base_model.forward = phase("member forward", m.base_model.forward)
                return m

            d.models.mixed.member = member
        d.acc.backward = phase("backward", d.acc.backward)
        step_opt, clip = d.optimizer.step, d.acc.clip_grad_norm_
        d.optimizer.step = phase("optimizer", step_opt)
        d.acc.clip_grad_norm_ = phase("optimizer", clip)
        if d.models.working is not None:
            d.models.working.sync = phase("optimizer", d.models.working.sync)
            d.models.working.drain_grads = phase("optimizer", d.models.working.drain_grads)
        apply = attention.MatmulAttention.apply

        def matmul_attention(*a):
            with record_function(ATTENTION):
                return apply(*a)

        attention.MatmulAttention.apply = matmul_attention  # its backward is the profiler's own node
        d.train_step()
        d.train_step()
        wall.clear()
        steps = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            d.train_step()
            steps.append(time.perf_counter() - t0)
        per_phase = {k: sum(v) / args.steps for k, v in wall.items()}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            d.train_step()

    shares: dict[str, dict[str, float]] = {p: defaultdict(float) for p in PHASES}
    for ev in prof.events():
        if ev.name.startswith("phase: ") or (ev.cpu_parent is None and not ev.name.startswith("aten::")):
            continue
        node, where, in_attention = ev, None, False
        while node is not None:
            in_attention |= node.name == ATTENTION or "MatmulAttentionBackward" in node.name
            if node.name.startswith("phase: "):
                where = node.name.removeprefix("phase: ")
                break
            node = node.cpu_parent
        if where is None:
            continue
        shares[where]["attention" if in_attention else category(ev.name)] += ev.self_cpu_time_total
    step = statistics.median(steps)
    result = {
        "machine": machine(),
        "config": vars(args) | {"out": str(args.out)},
        "step_s": step,
        "tokens_per_s": args.batch * args.seq_len / step,
        "phases": {},
    }
    print(f"{args.precision}, batch {args.batch}: step {step:.3f} s, {result['tokens_per_s']:.0f} tokens/s")
    for p in PHASES:
        total = sum(shares[p].values()) or 1.0
        frac = {k: round(shares[p][k] / total, 3) for k in ("matmul", "attention", "other")}
        secs = per_phase.get(p, 0.0)
        result["phases"][p] = {"seconds": round(secs, 4), "share_of_step": round(secs / step, 3), **frac}
        print(
            f"  {p:16s} {secs:6.3f} s  {secs / step:5.1%} of the step   matmul {frac['matmul']:.0%}  "
            f"attention {frac['attention']:.0%}  other {frac['other']:.0%}"
        )
    other = step - sum(per_phase.values())
    result["unattributed_s"] = round(other, 4)
    out = args.out or RESULTS / f"profile_step-{args.precision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
