"""Benchmark: the memory plan (``boomerang.train.memory``) against measured peaks of real trainer steps on a CPU.

Each configuration runs ``Distiller.train_step`` in its own process, fp32, one thread, with two micro-batches per
step (so gradients are held while the second one runs, as the plan assumes), and with glibc told to return every
large allocation at once (``MALLOC_MMAP_THRESHOLD_``), so that the resident set follows the live tensors. Measured:

- **weights**: resident memory added by ``Distiller.setup`` (teacher + student; data and tokenizer are small);
- **optimizer**: resident memory added by the first step (AdamW's moments appear then);
- **activations**: the bytes autograd saves during the student's forward passes (``saved_tensors_hooks``,
  storages counted once, parameters excluded), the larger micro-batch;
- **loss buffers**: the profiler's allocation peak inside the loss call above the allocations at its start;
- **step peak**: the profiler's allocation peak over one whole step above the allocations at its start (what the
  step adds to weights and optimizer state), and the same from the resident set (peak RSS, reset before the step);
- **total**: peak RSS minus the resident set of the process before the models were loaded.

Each is compared with the plan's number for the same recipe on one device (DDP column, or DDP + checkpointing):
``error = (estimate − measured) / measured``.

    flock /tmp/boomerang-heavy.lock python benchmarks/memory_plan.py            # → benchmarks/results/memory_plan.json
    python benchmarks/memory_plan.py --configs tiny                               # the small one only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    # a small random Llama (saved with a word-level tokenizer), and the real SmolLM2-135M teacher
    "tiny": {"teacher": None, "seq_len": 128, "micro_batch": 4},
    "smollm2": {"teacher": "smollm2-offline", "seq_len": 512, "micro_batch": 2},
}
TINY = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=8, vocab_size=4096, tie_word_embeddings=True, max_position_embeddings=1024)  # fmt: skip
VARIANTS = {"plain": {}, "checkpointing": {"gradient_checkpointing": True}}


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss() -> float:
    return status_kib("VmRSS") * 1024.0


def peak_rss() -> float:
    return status_kib("VmHWM") * 1024.0


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


# ---- child: one configuration, one process ----------------------------------------------------------------------


def tiny_teacher(root: Path) -> tuple[str, str]:
    """A saved random Llama with a word-level tokenizer, and a corpus of its words."""
    import random

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", bos_token_id=1, eos_token_id=2, pad_token_id=0, **TINY)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "teacher")
    words = {
        "<pad>": 0,
        "<s>": 1,
        "</s>": 2,
        "<unk>": 3,
        **{f"w{i}": i for i in range(4, TINY["vocab_size"])},
    }
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(root / "teacher")
    rng = random.Random(0)
    (root / "train").mkdir()
    for i in range(20):
        text = " ".join(f"w{rng.randrange(4, TINY['vocab_size'])}" for _ in range(2000))
        (root / "train" / f"doc{i}.txt").write_text(text)
    return str(root / "teacher"), str(root / "train")


class SavedBytes:
    """Bytes autograd saves while ``active`` (storages counted once, parameters excluded)."""

    def __init__(self, torch: Any, params: set[int]):
        self.torch, self.params, self.active = torch, params, False
        self.seen: dict[int, int] = {}

    def pack(self, t: Any) -> Any:
        if self.active:
            s = t.untyped_storage()
            if s.data_ptr() not in self.params:
                self.seen[s.data_ptr()] = s.nbytes()
        return t

    def take(self) -> float:
        n = float(sum(self.seen.values()))
        self.seen.clear()
        return n


def alloc_trace(prof: Any) -> list[tuple[int, int]]:
    return sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from boomerang.train import memory as M
    from boomerang.train.recipe import parse_recipe
    from boomerang.train.trainer import Distiller

    torch.set_num_threads(1)
    spec = CONFIGS[args.child]
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    if spec["teacher"] is None:
        teacher, data = tiny_teacher(root)
    else:
        teacher, data = spec["teacher"], args.data
    raw = {
        "name": f"memory-{args.child}",
        "teacher": teacher,
        "data": {"train": data, "seq_len": spec["seq_len"], "cache_dir": str(root / "cache")},
        "loss": {"align_embeddings": True, "align_final": "normed", "chunk_tokens": args.chunk},
        "train": {"batch_size": 2 * spec["micro_batch"], "micro_batch_size": spec["micro_batch"], "steps": 100,
                  "precision": "fp32", "threads": 1, **VARIANTS[args.variant]},
        "eval": {"blocks": 0},
        "checkpoint": {"every": 0},
        "log": {"progress": False, "tensorboard": False},
    }  # fmt: skip
    recipe = parse_recipe(raw)
    gc.collect()
    rss0 = rss()
    d = Distiller(recipe, out=root / "run")
    d.setup()
    gc.collect()
    rss1 = rss()
    d.step_data = d.train_data.take(recipe.train.batch_size)
    d.train_data.take = lambda n: d.step_data  # the same batch every step
    d.train_step()
    gc.collect()
    rss2 = rss()

    # activations and loss buffers of one more step, phase by phase
    params = {
        p.untyped_storage().data_ptr() for p in list(d.student.parameters()) + list(d.teacher.parameters())
    }
    saved = SavedBytes(torch, params)
    marks: dict[str, list[float]] = {"student": [], "loss": []}
    loss_fn = d.loss_fn

    class Probe:  # stands in for the loss function: times its call and splits saved tensors by phase
        pairs, cos_weight = loss_fn.pairs, loss_fn.cos_weight

        def __call__(self, *a: Any, **kw: Any) -> Any:
            marks["student"].append(saved.take())
            with record_function("boomerang::loss"):
                out = loss_fn(*a, **kw)
            marks["loss"].append(saved.take())
            saved.active = False
            return out

        def summarise(self, sums: Any) -> Any:
            return loss_fn.summarise(sums)

        def keys(self, side: int) -> Any:
            return loss_fn.keys(side)

    teacher_fwd = d._teacher

    def teacher_then_student(ids: Any, mask: Any) -> Any:
        out = teacher_fwd(ids, mask)
        saved.active = True  # the student's forward comes next
        return out

    d.loss_fn, d._teacher = Probe(), teacher_then_student
    gc.collect()
    reset_peak_rss()
    rss_step0 = rss()
    hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t)
    with hooks, profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        d.train_step()
    step_peak_rss = peak_rss() - rss_step0
    total_peak_rss = peak_rss() - rss0
    # allocation peaks from the profiler's memory events
    trace = alloc_trace(prof)
    cur = peak = 0
    for _, n in trace:
        cur += n
        peak = max(peak, cur)
    loss_peaks = []
    for ev in prof.profiler.kineto_results.events():
        if ev.name() == "boomerang::loss":
            a, b = ev.start_ns(), ev.end_ns()
            base = sum(n for t, n in trace if t < a)
            c = p = base
            for t, n in trace:
                if a <= t <= b:
                    c += n
                    p = max(p, c)
            loss_peaks.append(p - base)
    d.loss_fn, d._teacher = loss_fn, teacher_fwd

    rp = M.plan_recipe(recipe, 1)
    strategy = "ddp+ac" if recipe.train.gradient_checkpointing else "ddp"
    run = M.recipe_run(recipe, rp.student.layers, bf16=False)
    plan = M.plan(rp.teacher, rp.student, run, 1, strategy)
    est = plan.components
    step_keys = ("working copies", "gradients", "activations", "teacher outputs", "loss buffers")
    measured = {
        "weights": rss1 - rss0,
        "optimizer": rss2 - rss1,
        "activations": max(marks["student"]),
        "loss buffers": max(loss_peaks),
        "step peak (allocations)": float(peak),
        "step peak (RSS)": step_peak_rss,
        "total (RSS)": total_peak_rss,
    }
    estimate = {
        "weights": est["teacher weights"] + est["student weights"],
        "optimizer": est["optimizer"],
        "activations": plan.parts["activations.saved"],  # saved during the forward (no recompute, no cosine)
        "loss buffers": plan.parts["loss.kept"]
        + plan.parts["loss.chunks"]
        + plan.parts["activations.cosine"],
        "step peak (allocations)": sum(est[k] for k in step_keys),
        "step peak (RSS)": sum(est[k] for k in step_keys),
        "total (RSS)": plan.total,
    }
    return {
        "config": args.child,
        "variant": args.variant,
        "strategy": strategy,
        "teacher": teacher if spec["teacher"] else "random llama " + json.dumps(TINY),
        "student_layers": rp.student.layers,
        "tokens_per_micro_batch": run.tokens,
        "measured_bytes": measured,
        "estimated_bytes": estimate,
        "error": {k: round((estimate[k] - measured[k]) / measured[k], 4) for k in measured},
        "plan_components": est,
        "loss_saved_bytes": max(marks["loss"]),
    }


# ---- parent ------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {', '.join(CONFIGS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "corpora" / "validation"))
    p.add_argument("--chunk", type=int, default=512, help="loss.chunk_tokens")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_plan.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="plain", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    results = []
    for c in [x.strip() for x in args.configs.split(",") if x.strip()]:
        for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", c, "--variant", v, "--data", args.data, "--chunk",
                   str(args.chunk)]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
            if res.returncode or line is None:
                sys.exit(f"{c}/{v} failed:\n{res.stderr[-4000:]}")
            out = json.loads(line[len("RESULT ") :])
            results.append(out)
            print(f"{c}/{v} ({time.perf_counter() - t0:.0f} s)")
            for k, m in out["measured_bytes"].items():
                e = out["estimated_bytes"][k]
                print(
                    f"  {k:26s} measured {m / 2**20:9.1f} MiB  estimate {e / 2**20:9.1f} MiB  {out['error'][k]:+.1%}"
                )
    import torch

    result = {
        "benchmark": "memory_plan",
        "what": "estimate = boomerang.train.memory's plan (1 device); error = (estimate - measured) / measured",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
