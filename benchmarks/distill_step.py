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

    python benchmarks/distill_step.py            # writes benchmarks/results/distill_step.json
    python benchmarks/distill_step.py --precisions fp32,bf16 --variants baseline,ours --steps 5 \
        --out benchmarks/results/distill_step-bf16.json     # fp32 vs bf16: speed, % of matmul peak, loss drift
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

PRECISIONS = ("", "fp32", "bf16")
VARIANTS = {
    "baseline": "straightforward: full logits, output_hidden_states, KLDiv(batchmean) over all positions",
    "before": "the trainer step of an earlier commit (--before REF), run from a git worktree of it",
    "ours": "boomerang trainer step: fused chunked CE/KL from hidden states, hooks",
    "ours-bf16_copies": "ours under autocast instead of bf16 working copies of the student (train.bf16_copies: false)",
    "ours-head_buffers": "ours with the head loss allocating its logits buffers afresh on every call",
    "ours-keep_freed": "ours with glibc's default malloc settings (freed activations go back to the OS)",
    "ours+freeze_embeddings": "ours with the (tied) embedding/LM-head matrix frozen",
    "ours+teacher_cache": "ours with the teacher's outputs precomputed (upper bound of a teacher-output cache)",
    "ours+compile": "ours with torch.compile on every layer's forward (compile time excluded)",
    "ours+checkpointing": "ours with gradient checkpointing of the student's layers",
    "ours-lean_mlp": "ours without the lean gated MLP (autograd keeps all four MLP activations)",
    "ours+mixed": "ours with the mixed-context term (loss.mixed=1, members drawn by size): the demo's step",
    "ours+mixed+compile": "the demo's step with torch.compile on every layer's forward (compile time excluded)",
    "ours-matmul_attention": "ours with SDPA's attention kernel in the training passes (train.attention: sdpa)",
    "ours+mixed-matmul_attention": "the demo's step with SDPA's attention kernel (train.attention: sdpa)",
}
DEFAULT_VARIANTS = ["baseline", "ours", "ours+checkpointing", "ours-lean_mlp"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_flops(s_cfg, t_cfg, batch: int, seq: int, n_student: int) -> float:
    """Matmul FLOPs of one step: student forward + backward (3×) and teacher forward (1×), each 2 FLOPs per
    multiply-add over its linear layers, LM head and attention scores/values (causal: half of L² is skipped by
    nobody here, so full L² is counted, as the kernels compute it)."""

    def per_token_forward(cfg, layers: int) -> float:
        d, inter = cfg.hidden_size, cfg.intermediate_size
        heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
        hd = getattr(cfg, "head_dim", None) or d // heads
        attn_proj = d * heads * hd * 2 + d * kv * hd * 2  # q, o and k, v
        mlp = 3 * d * inter
        scores = 2 * seq * heads * hd  # q·k and p·v per token
        return 2 * (layers * (attn_proj + mlp + scores) + d * cfg.vocab_size)

    tokens = batch * seq
    return tokens * (
        3 * per_token_forward(s_cfg, n_student) + per_token_forward(t_cfg, t_cfg.num_hidden_layers)
    )


def matmul_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of the best of a few step-shaped matmuls, fp32 and bf16, medians of 5 (this machine, now)."""
    import torch

    torch.set_num_threads(threads)
    shapes = [(1024, 576, 1536), (1024, 1536, 576), (512, 576, 49152), (2048, 576, 576)]
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for m, k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                a @ b
                ts.append(time.perf_counter() - t0)
            best = max(best, 2 * m * k * n / statistics.median(ts) / 1e9)
        out[name] = round(best, 1)
    return out


# ---- child: one variant, one process ------------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from boomerang.train.recipe import parse_recipe
    from boomerang.train.trainer import Distiller

    torch.set_num_threads(args.threads)
    variant, _, precision = args.child.partition("@")
    before = variant == "before"
    if variant == "ours-head_buffers":
        from boomerang.train.losses import HeadBuffers

        HeadBuffers.get = lambda self, name, shape, dtype, device: torch.empty(
            shape, dtype=dtype, device=device
        )
    if variant == "ours-keep_freed":
        import boomerang.train.trainer as trainer_module

        trainer_module.keep_freed_memory = lambda: False
    train = {
        "precision": precision or "fp32",
        "batch_size": args.batch,
        "micro_batch_size": args.batch,
        "steps": 1000,
        "threads": args.threads,
        "freeze_embeddings": variant == "ours+freeze_embeddings",
        "compile": variant.endswith("+compile"),
        "gradient_checkpointing": variant == "ours+checkpointing",
        "lean_mlp": variant != "ours-lean_mlp",
    }
    if not before:
        train["bf16_copies"] = variant != "ours-bf16_copies"
        train["attention"] = "sdpa" if variant.endswith("-matmul_attention") else "auto"
    raw = {
        "name": "bench",
        "teacher": args.teacher,
        "data": {"train": args.data, "seq_len": args.seq_len},
        "loss": {
            "align_embeddings": True,
            "align_final": "normed",
            "chunk_tokens": args.chunk,
            **({"mixed": 1.0, "mixed_draw": "size"} if "+mixed" in variant else {}),
        },
        "train": train,
        "eval": {"blocks": 0},
        "checkpoint": {"every": 0},
        "log": {"progress": False, "tensorboard": False},
        "optim": {"warmup_ratio": 0.0},  # every step trains (HF's warm-up starts at lr 0)
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
        losses = [first["loss"]]
        for _ in range(args.warmup - 1):
            losses.append(step()["loss"])
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            losses.append(step()["loss"])
            times.append(time.perf_counter() - t0)
        flops = step_flops(
            d.student.config, d.teacher.config, args.batch, args.seq_len, d.layer_map.n_student
        )
    tokens = args.batch * args.seq_len
    return {
        "variant": args.child,
        "precision": d.precision,
        "flops_per_step": flops,
        "losses": losses,
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
        with d.acc.autocast():  # bf16 runs: the same autocast as ours
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
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"any of {', '.join(VARIANTS)}; VARIANT@bf16 or @fp32 runs it in that precision only",
    )
    p.add_argument(
        "--precisions", default="fp32", help="fp32, bf16 or both (fp32,bf16): each variant runs in each"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_step.json"))
    p.add_argument(
        "--before", default="507920b", help="git ref of the 'before' variant (the step before issue 23)"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [
        v for v in variants if v.partition("@")[0] not in VARIANTS or v.partition("@")[2] not in PRECISIONS
    ]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}, optionally @fp32 or @bf16")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if precisions != ["fp32"]:  # variant@precision; a variant that names its precision runs in that one only
        variants = [
            v for p in precisions for v in dict.fromkeys(v if "@" in v else f"{v}@{p}" for v in variants)
        ]
        variants = list(dict.fromkeys(variants))
    peak = matmul_peak(args.threads)
    print(f"matmul peak on {args.threads} threads: {peak} GFLOP/s", flush=True)
    before_tree = None
    if any(v.partition("@")[0] == "before" for v in variants):
        before_tree = Path(tempfile.mkdtemp(prefix="boomerang-before-")) / "tree"
        repo = Path(__file__).resolve().parents[1]
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(before_tree), args.before],
                       check=True)  # fmt: skip
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    common = [
        "--teacher", args.teacher, "--data", args.data, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
        "--chunk", str(args.chunk), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(args.threads),
    ]  # fmt: skip
    for r in range(args.repeats):
        for v in variants:  # interleaved, so slow drifts in machine load hit every variant alike
            cmd = [sys.executable, __file__, "--child", v, *common]
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            if v.partition("@")[0] == "before":
                env["PYTHONPATH"] = str(before_tree)
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
        prec = runs[v][0].get("precision", "fp32")
        step_s = statistics.median(t for x in runs[v] for t in x["step_s"])
        achieved = runs[v][0]["flops_per_step"] / step_s / 1e9
        summary[v] = {
            "what": VARIANTS[v.partition("@")[0]] + (f" ({prec})" if "@" in v else ""),
            "precision": prec,
            "gflops": round(achieved, 1),
            "fraction_of_matmul_peak": round(achieved / peak[prec], 3),
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
    for v in variants:
        name, _, prec = v.partition("@")
        base_key = "baseline" + (f"@{prec}" if prec else "")
        if name == "baseline" or base_key not in summary:
            continue
        base, s = summary[base_key], summary[v]
        ratios[v] = {
            "throughput_x": round(s["tokens_per_s"] / base["tokens_per_s"], 3),
            "peak_rss_x": round(s["peak_rss_mb"] / base["peak_rss_mb"], 3),
            "step_peak_x": round(s["step_peak_mb"] / max(base["step_peak_mb"], 1e-9), 3),
            "loss_abs_diff": abs(s["first_loss"]["loss"] - base["first_loss"]["loss"]),
        }
    levers = {}  # what each lever buys on top of our step in the same precision
    for v in variants:
        name, _, prec = v.partition("@")
        ours_key = "ours" + (f"@{prec}" if prec else "")
        if name.startswith(("ours+", "ours-")) and ours_key in summary:
            ours = summary[ours_key]
            levers[v] = {
                "throughput_x": round(summary[v]["tokens_per_s"] / ours["tokens_per_s"], 3),
                "peak_rss_x": round(summary[v]["peak_rss_mb"] / ours["peak_rss_mb"], 3),
            }
    across = {}  # each variant in bf16 against itself in fp32: speed and the loss after every step
    for v in variants:
        name, _, prec = v.partition("@")
        if prec and prec != "fp32" and f"{name}@fp32" in summary:
            a, b = runs[f"{name}@fp32"][0]["losses"], runs[v][0]["losses"]
            rel = [abs(y - x) / abs(x) for x, y in zip(a, b, strict=True)]
            across[v] = {
                "throughput_x": round(
                    summary[v]["tokens_per_s"] / summary[f"{name}@fp32"]["tokens_per_s"], 3
                ),
                "peak_rss_x": round(summary[v]["peak_rss_mb"] / summary[f"{name}@fp32"]["peak_rss_mb"], 3),
                "steps": len(a),
                "loss_rel_diff_last": round(rel[-1], 5),
                "loss_rel_diff_max": round(max(rel), 5),
            }
    vs_before = {}  # every variant against the step before issue 23, in the same precision and against its fp32
    for v in variants:
        name, _, prec = v.partition("@")
        key = "before" + (f"@{prec}" if prec else "")
        if key in summary and name != "before":
            vs_before[v] = round(summary[v]["tokens_per_s"] / summary[key]["tokens_per_s"], 3)
    for ref in ("before@fp32", "ours@fp32"):
        if ref in summary:
            vs_before[f"vs {ref}"] = {
                v: round(summary[v]["tokens_per_s"] / summary[ref]["tokens_per_s"], 3) for v in variants
            }
    if before_tree is not None:
        subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "worktree", "remove", "--force",
                        str(before_tree)], check=False)  # fmt: skip
    if "baseline@fp32" in summary:
        across["vs plain fp32 step"] = {
            v: round(summary[v]["tokens_per_s"] / summary["baseline@fp32"]["tokens_per_s"], 3)
            for v in variants
        }
    result = {
        "benchmark": "distill_step",
        "matmul_peak_gflops": peak,
        "bf16_vs_fp32": across,
        "config": {k: getattr(args, k) for k in ("teacher", "data", "batch", "seq_len", "chunk", "steps", "warmup",
                                                  "repeats", "threads", "precisions")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "summary": summary,
        "ratios_vs_baseline": ratios,
        "levers_vs_ours": levers,
        "vs_before": vs_before,
        "runs": runs,
    }  # fmt: skip
    import torch

    from boomerang.train.precision import machine

    result["machine"].update(torch=torch.__version__, **{k: v for k, v in machine().items() if k != "torch"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "summary": summary,
                "ratios_vs_baseline": ratios,
                "levers_vs_ours": levers,
                "bf16_vs_fp32": across,
                "vs_before": vs_before,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
