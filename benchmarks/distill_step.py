"""Benchmark: one distillation training step, ours vs a straightforward implementation of the same loss.

The straightforward step computes Eq. 1 the way the reference code does: full-vocabulary logits for student and
teacher, ``KLDivLoss(batchmean)`` over all positions, ``output_hidden_states=True`` on both models and the
cosine terms on the returned hidden states. Ours is ``boomerang.train.trainer.Distiller.train_step``: fused chunked
CE/KL from the final hidden states (no full logits), hooks at exactly the aligned layers.

Both run on the SmolLM2-135M teacher and its every-other-layer student (16 of 30 layers), with the same
batch, sequence length, initial weights, AdamW settings and data (packed blocks, so neither pads), and with the
loss configured identically (embedding output + M−1 layer outputs + final normed state aligned, as in the
reference code). Each variant and repeat runs in its own subprocess so that peak RSS is clean; medians over
repeats are reported. Levers (the lean MLP, checkpointing, frozen embeddings, torch.compile, a teacher-output cache)
are measured the same way.

    flock /work/heavy.lock python benchmarks/distill_step.py            # writes benchmarks/results/distill_step.json
    python benchmarks/distill_step.py --teacher DIR --data DIR --seq-len 16 --batch 2   # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "baseline": "straightforward: full logits, output_hidden_states, KLDiv(batchmean) over all positions",
    "ours": "boomerang trainer step: fused chunked CE/KL from hidden states, hooks",
    "ours+freeze_embeddings": "ours with the (tied) embedding/LM-head matrix frozen",
    "ours+teacher_cache": "ours with the teacher's outputs precomputed (upper bound of a teacher-output cache)",
    "ours+compile": "ours with torch.compile on every layer's forward (compile time excluded)",
    "ours+checkpointing": "ours with gradient checkpointing of the student's layers",
    "ours-lean_mlp": "ours without the lean gated MLP (autograd keeps all four MLP activations)",
}
DEFAULT_VARIANTS = ["baseline", "ours", "ours+checkpointing", "ours-lean_mlp"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- child: one variant, one process ------------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from boomerang.train.recipe import parse_recipe
    from boomerang.train.trainer import Distiller

    torch.set_num_threads(args.threads)
    variant = args.child
    train = {
        "batch_size": args.batch,
        "micro_batch_size": args.batch,
        "steps": 1000,
        "threads": args.threads,
        "freeze_embeddings": variant == "ours+freeze_embeddings",
        "compile": variant == "ours+compile",
        "gradient_checkpointing": variant == "ours+checkpointing",
        "lean_mlp": variant != "ours-lean_mlp",
    }
    raw = {
        "name": "bench",
        "teacher": args.teacher,
        "data": {"train": args.data, "seq_len": args.seq_len},
        "loss": {"align_embeddings": True, "align_final": "normed", "chunk_tokens": args.chunk},
        "train": train,
        "eval": {"blocks": 0},
        "checkpoint": {"every": 0},
        "log": {"progress": False, "tensorboard": False},
    }
    with tempfile.TemporaryDirectory() as tmp:
        d = Distiller(parse_recipe(raw), out=Path(tmp) / "run")
        d.setup()
        step = d.train_step
        if variant == "baseline":
            step = _baseline_step(d, F, torch)
        elif variant == "ours+teacher_cache":
            fixed = d.train_data.take(args.batch)
            d.train_data.take = lambda n: fixed  # the same batch every step ...
            cached = {}
            real = d._teacher

            def from_cache(ids, mask):  # ... so its teacher outputs come from the cache after step 1
                key = (ids.data_ptr(), tuple(ids.shape))
                if key not in cached:
                    cached[key] = real(ids, mask)
                return cached[key]

            d._teacher = from_cache
        setup_rss = rss_mb()
        t0 = time.perf_counter()
        first = step()
        first_s = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            step()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    tokens = args.batch * args.seq_len
    return {
        "variant": variant,
        "tokens_per_step": tokens,
        "step_s": times,
        "tokens_per_s": tokens / statistics.median(times),
        "first_step_s": first_s,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak_rss_mb(),
        "first_loss": {k: first[k] for k in ("loss", "ce", "kl", "cos")},
    }


def _baseline_step(d, F, torch):
    """The straightforward step, on the Distiller's own models, optimizer, schedule and data."""
    student, teacher, lm = d.student, d.teacher, d.layer_map
    cfg = d.recipe.loss
    m, tau = lm.n_student, cfg.temperature
    w_cos = cfg.cos_weight(m)
    # hidden_states[0] = embedding output, [i+1] = output of layer i, [-1] = after the final norm
    pairs = [(0, 0)] + [(i + 1, lm.target(i) + 1) for i in range(m - 1)] + [(-1, -1)]
    params = d.params

    def step():
        batch = d.train_data.take(d.recipe.train.batch_size)
        ids = batch.input_ids
        s = student(input_ids=ids, output_hidden_states=True, use_cache=False)
        with torch.no_grad():
            t = teacher(input_ids=ids, output_hidden_states=True, use_cache=False)
        v = s.logits.shape[-1]
        ce = F.cross_entropy(s.logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))
        kl = F.kl_div(
            F.log_softmax(s.logits.reshape(-1, v) / tau, -1),
            F.softmax(t.logits.reshape(-1, v) / tau, -1),
            reduction="batchmean",
        ) * (tau**2)
        cos = sum(
            (1 - F.cosine_similarity(s.hidden_states[a], t.hidden_states[b], dim=-1)).mean() for a, b in pairs
        )
        loss = cfg.ce * ce + cfg.kl * kl + w_cos * cos
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, d.recipe.optim.max_grad_norm)
        d.optimizer.step()
        d.scheduler.step()
        d.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "ce": ce.item(), "kl": kl.item(), "cos": float(cos)}

    return step


# ---- parent: every variant × repeats, each in a fresh process -----------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-offline")
    p.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/corpora/validation")
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--chunk", type=int, default=512, help="tokens per CE/KL chunk (ours)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_step.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    common = [
        "--teacher", args.teacher, "--data", args.data, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
        "--chunk", str(args.chunk), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(args.threads),
    ]  # fmt: skip
    for r in range(args.repeats):
        for v in variants:  # interleaved, so slow drifts in machine load hit every variant alike
            cmd = [sys.executable, __file__, "--child", v, *common]
            res = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            )
            line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
            if res.returncode or line is None:
                sys.exit(f"{v} failed:\n{res.stderr[-4000:]}")
            out = json.loads(line[len("RESULT ") :])
            runs[v].append(out)
            print(
                f"repeat {r + 1}/{args.repeats} {v:24s} {out['tokens_per_s']:8.1f} tok/s  "
                f"peak {out['peak_rss_mb']:7.0f} MB  loss {out['first_loss']['loss']:.6f}",
                flush=True,
            )

    def med(v: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[v])

    summary = {}
    for v in variants:
        summary[v] = {
            "what": VARIANTS[v],
            "tokens_per_s": round(med(v, "tokens_per_s"), 2),
            "peak_rss_mb": round(med(v, "peak_rss_mb"), 1),
            "setup_rss_mb": round(med(v, "setup_rss_mb"), 1),
            "step_peak_mb": round(
                statistics.median(x["peak_rss_mb"] - x["setup_rss_mb"] for x in runs[v]), 1
            ),
            "first_step_s": round(med(v, "first_step_s"), 2),
            "first_loss": runs[v][0]["first_loss"],
        }
    ratios = {}
    if "baseline" in summary:
        base = summary["baseline"]
        for v in variants:
            if v == "baseline":
                continue
            s = summary[v]
            ratios[v] = {
                "throughput_x": round(s["tokens_per_s"] / base["tokens_per_s"], 3),
                "peak_rss_x": round(s["peak_rss_mb"] / base["peak_rss_mb"], 3),
                "step_peak_x": round(s["step_peak_mb"] / max(base["step_peak_mb"], 1e-9), 3),
                "loss_abs_diff": abs(s["first_loss"]["loss"] - base["first_loss"]["loss"]),
            }
    levers = {}
    if "ours" in summary:  # what each lever buys on top of our step
        ours = summary["ours"]
        for v in variants:
            if v.startswith(("ours+", "ours-")):
                levers[v] = {
                    "throughput_x": round(summary[v]["tokens_per_s"] / ours["tokens_per_s"], 3),
                    "peak_rss_x": round(summary[v]["peak_rss_mb"] / ours["peak_rss_mb"], 3),
                }
    result = {
        "benchmark": "distill_step",
        "config": {k: getattr(args, k) for k in ("teacher", "data", "batch", "seq_len", "chunk", "steps", "warmup",
                                                  "repeats", "threads")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "summary": summary,
        "ratios_vs_baseline": ratios,
        "levers_vs_ours": levers,
        "runs": runs,
    }  # fmt: skip
    import torch

    result["machine"]["torch"] = torch.__version__
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "ratios_vs_baseline": ratios, "levers_vs_ours": levers}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
