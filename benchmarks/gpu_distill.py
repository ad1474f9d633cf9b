"""Benchmark: one bf16 distillation step on a GPU at the paper's scale, ours against a plain step and Liger's loss.

Random-weight pairs shaped like the paper's models (no downloads): Qwen3-1.7B → 15 layers and Qwen3-8B → 19
layers (every other layer plus the last two). A pair whose student, optimizer state and teacher do not fit on one
GPU is shortened: the teacher keeps as many of its layers as ``boomerang.train.memory`` says fit (the plain step's
plan, the larger one), and the student is initialised from it the same way. Sequences of 2048 tokens, bf16.

Variants, on the same models, optimizer and batch, in one process (each one's peak is
``torch.cuda.max_memory_allocated`` after a reset; weights, optimizer state and gradients are included):

- ``plain``: the straightforward step the reference code takes: full-vocabulary logits for both models,
  ``KLDivLoss(batchmean)``, ``output_hidden_states=True`` and the cosine terms on the returned states, under bf16
  autocast with fp32 master weights (the same loss as ours);
- ``ours``: ``Distiller.train_step`` (fused chunked CE/KL from the final hidden states, hooks at the aligned layers,
  the lean gated MLP), ``precision: bf16``;
- ``ours+ac``: ours with activation checkpointing;
- ``liger``: ours with CE + KL computed by Liger Kernel's fused linear JSD loss (``liger-kernel``, the ``gpu``
  extra; skipped if it is not installed, or if no ``beta`` of it gives the forward KL we train with).

Reported per variant: tokens/s (median over timed steps), MFU against the GPU's dense bf16 peak (looked up by
device name, ``--peak-tflops`` overrides; model FLOPs: 6 × student + 2 × teacher matmul parameters per token, both
heads, causal attention), peak memory, and each as a ratio to ``plain``. The issue's goal: ours ≥ 1× the plain
step's throughput at ≤ 0.5× its peak memory, and ≥ 40% MFU for the Qwen3-1.7B pair on an H100.

    python benchmarks/gpu_distill.py                               # both pairs → benchmarks/results/gpu_distill.json
    python benchmarks/gpu_distill.py --pairs qwen3-1.7b --batch 8  # one pair, 8 × 2048 tokens per step
    python benchmarks/gpu_distill.py --device cpu --tiny           # smoke run of the whole script on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QWEN3_1_7B = {
    "model_type": "qwen3",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000,
}
QWEN3_8B = {
    **QWEN3_1_7B,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "tie_word_embeddings": False,
}
TINY = {
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}
PAIRS = {"qwen3-1.7b": QWEN3_1_7B, "qwen3-8b": QWEN3_8B, "tiny": TINY}
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched against torch.cuda.get_device_name() in this order
PEAK_TFLOPS = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 6000 Ada", 364.0),
]
VARIANTS = ("plain", "ours", "ours+ac", "liger")


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


# ---- a random-weight pair on disk ----------------------------------------------------------------------------


def write_tokenizer(directory: Path, vocab: int) -> None:
    """A word-level tokenizer over ``w0 … w{vocab-1}`` (the models' vocabulary stays the config's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab)}}
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(directory)


def write_corpus(directory: Path, tokens: int, vocab: int, seed: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_doc = 4000
    for i in range(max(1, tokens // per_doc + 1)):
        words = " ".join(f"w{rng.randrange(4, vocab)}" for _ in range(per_doc))
        (directory / f"doc{i:04d}.txt").write_text(words)


def write_teacher(directory: Path, config: dict[str, Any], layers: int, device: str) -> None:
    """A random-weight bf16 teacher with ``layers`` layers, initialised on ``device`` and saved."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {k: v for k, v in config.items() if k != "model_type"}
    kw.update(num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = AutoConfig.for_model(config["model_type"], **kw)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def fitting_layers(config: dict[str, Any], args: argparse.Namespace, capacity: float) -> int:
    """The most teacher layers (≤ the model's) whose pair fits a single GPU in the plain step's plan."""
    from boomerang.core.layermap import LayerMap
    from boomerang.train import memory as M

    full = M.ModelShape.from_config(config)
    for n in range(full.layers, 3, -1):
        t = full.with_layers(n)
        m = LayerMap.every(n).n_student
        run = M.RunShape(
            args.batch, args.seq_len, bf16=args.device == "cuda", n_pairs=m + 1, teacher_states=m
        )
        plain = M.RunShape(**{**run.__dict__, "fused_loss": False})
        worst = max(M.plan(t, t.with_layers(m), r, 1, "ddp", capacity).total for r in (run, plain))
        if worst <= M.usable_memory(capacity):
            return n
    raise SystemExit(f"not even 4 layers of this model fit in {capacity / 2**30:.0f} GiB")


# ---- the steps -------------------------------------------------------------------------------------------------


def matmul_flops_per_token(model: Any, seq_len: int) -> float:
    """Forward FLOPs per token: 2 × the parameters of every linear map and the head, plus causal attention."""
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Linear")
    heads, head_dim = (
        cfg.num_attention_heads,
        getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
    )
    attn = 2 * cfg.num_hidden_layers * heads * head_dim * seq_len  # QKᵀ and PV, 2·2 FLOPs, half the positions
    return 2 * linear + attn


def plain_step(d: Any, torch: Any, device: str):
    """The straightforward step, on the Distiller's own models, optimizer, schedule and batch."""
    import torch.nn.functional as F

    student, teacher, lm = d.student, d.teacher, d.layer_map
    cfg = d.recipe.loss
    m, tau = lm.n_student, cfg.temperature
    w_cos = cfg.cos_weight(m)
    pairs = [(0, 0)] + [(i + 1, lm.target(i) + 1) for i in range(m - 1)] + [(-1, -1)]
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=d.precision == "bf16")

    def step() -> dict[str, float]:
        ids = d.train_data.take(d.recipe.train.batch_size).input_ids.to(device)
        with autocast:
            s = student(input_ids=ids, output_hidden_states=True, use_cache=False)
            with torch.no_grad():
                t = teacher(input_ids=ids, output_hidden_states=True, use_cache=False)
            v = s.logits.shape[-1]
            ce = F.cross_entropy(s.logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))
            kl = F.kl_div(
                F.log_softmax(s.logits.reshape(-1, v).float() / tau, -1),
                F.softmax(t.logits.reshape(-1, v).float() / tau, -1),
                reduction="batchmean",
            ) * (tau**2)
            cos = sum(
                (
                    1 - F.cosine_similarity(s.hidden_states[a].float(), t.hidden_states[b].float(), dim=-1)
                ).mean()
                for a, b in pairs
            )
            loss = cfg.ce * ce + cfg.kl * kl + w_cos * cos
        loss.backward()
        torch.nn.utils.clip_grad_norm_(d.params, d.recipe.optim.max_grad_norm)
        d.optimizer.step()
        d.scheduler.step()
        d.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "ce": ce.item(), "kl": kl.item(), "cos": float(cos)}

    return step


def liger_loss(torch: Any, device: str) -> tuple[Any, float] | str:
    """Liger's fused linear JSD loss set to the forward KL(teacher ‖ student), or why it cannot be."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError as e:
        return f"liger-kernel is not installed ({e}); pip install 'boomerang-distill[gpu]'"
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)
    h_s, h_t = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    w_s, w_t = torch.randn(50, 32, generator=g), torch.randn(50, 32, generator=g)
    labels = torch.randint(0, 50, (64,), generator=g)
    want = F.kl_div(F.log_softmax(h_s @ w_s.T, -1), F.log_softmax(h_t @ w_t.T, -1), reduction="batchmean",
                    log_target=True)  # fmt: skip
    for beta in (0.0, 1.0):  # Liger changed which end is the forward KL between versions
        fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, compiled=False)
        args = [x.to(device) for x in (h_s, w_s, h_t, w_t, labels)]
        try:
            got = fn(*args, None, None)
        except Exception as e:  # any failure means: not usable here
            return f"LigerFusedLinearJSDLoss failed on {device}: {type(e).__name__}: {e}"
        if abs(float(got) - float(want)) < 1e-3 * max(1.0, float(want)):
            return LigerFusedLinearJSDLoss, beta
    return "no beta of LigerFusedLinearJSDLoss gives the forward KL(teacher ‖ student)"


class LigerTerms:
    """CE + λ_KL·KL by Liger's fused linear JSD loss, plus our cosine terms: a stand-in for ``d.loss_fn``."""

    def __init__(self, d: Any, cls: Any, beta: float, torch: Any):
        from boomerang.train.losses import LossOutput, cosine_distance_sum, next_token_labels

        cfg = d.recipe.loss
        self.torch, self.inner, self.out_cls = torch, d.loss_fn, LossOutput
        self.cos, self.labels_of = cosine_distance_sum, next_token_labels
        ratio = cfg.kl * cfg.temperature**2 / cfg.ce
        self.fn = cls(weight_hard_loss=cfg.ce, weight_soft_loss=cfg.ce * ratio, beta=beta,
                      temperature=cfg.temperature)  # fmt: skip

    def __call__(self, s, t, ids, mask, *, n_ce, n_tok, scale=1.0):
        h_s = s.hidden.reshape(-1, s.hidden.shape[-1])
        h_t = t.hidden.reshape(-1, t.hidden.shape[-1]).to(h_s.dtype)
        labels = self.labels_of(ids, mask).reshape(-1)
        loss = self.fn(h_s, s.head_weight, h_t, t.head_weight.to(s.head_weight.dtype), labels, None, None)
        real = self.torch.ones_like(labels, dtype=self.torch.bool)
        cos = sum(self.cos(s.states[a].reshape(h_s.shape), t.states[b].reshape(h_s.shape), real)
                  for a, b in self.inner.pairs)  # fmt: skip
        total = loss + cos * (self.inner.cos_weight / n_tok)
        sums = {
            "ce": float(loss) * n_ce,
            "kl": 0.0,
            "cos": float(cos),
            "n_ce": float(n_ce),
            "n_tok": float(n_tok),
        }
        return self.out_cls(loss=total * scale, sums=sums)

    def summarise(self, sums):
        return self.inner.summarise(sums)


def timed(step, torch: Any, device: str, warmup: int, steps: int) -> dict[str, Any]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    for _ in range(warmup):
        rec = step()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        rec = step()
        sync()
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"step_s": times, "loss": {k: rec.get(k) for k in ("loss", "ce", "kl", "cos")}}
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["start_gib"] = start / 2**30
    return out


def run_pair(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from boomerang.train.recipe import parse_recipe
    from boomerang.train.trainer import Distiller

    device = args.device
    config = PAIRS[name]
    capacity = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 64 * 2**30
    layers = args.teacher_layers or fitting_layers(config, args, capacity)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_teacher(root / "teacher", config, layers, device)
        words = min(1000, config["vocab_size"])
        write_tokenizer(root / "teacher", words)
        write_corpus(root / "train", args.batch * args.seq_len * 2, words)
        made_s = time.perf_counter() - t0
        raw = {
            "name": f"gpu-{name}",
            "teacher": str(root / "teacher"),
            "data": {"train": str(root / "train"), "seq_len": args.seq_len, "cache_dir": str(root / "cache")},
            "loss": {"align_embeddings": True, "align_final": "normed", "chunk_tokens": args.chunk},
            "optim": {"lr": 1e-9, "warmup_ratio": 0.0},  # steps barely move the weights: losses stay comparable
            "train": {"batch_size": args.batch, "micro_batch_size": args.batch, "steps": 10**6,
                      "precision": "bf16" if device == "cuda" else "fp32", "threads": args.threads},
            "eval": {"blocks": 0},
            "checkpoint": {"every": 0},
            "log": {"progress": False, "tensorboard": False},
        }  # fmt: skip
        d = Distiller(parse_recipe(raw), out=root / "run")
        d.setup()
        fixed = d.train_data.take(args.batch)
        d.train_data.take = lambda n: fixed  # one batch for every step of every variant
        lm = d.layer_map
        flops = (
            args.batch
            * args.seq_len
            * (
                3 * matmul_flops_per_token(d.student, args.seq_len)
                + matmul_flops_per_token(d.teacher, args.seq_len)
            )
        )
        gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
        peak = args.peak_tflops or (peak_tflops(gpu) if device == "cuda" else None)
        steps: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for v in args.variants:
            if v == "plain":
                steps[v] = plain_step(d, torch, device)
            elif v in ("ours", "ours+ac"):
                steps[v] = d.train_step
            elif v == "liger":
                got = liger_loss(torch, device)
                if isinstance(got, str):
                    skipped[v] = got
                else:
                    terms = LigerTerms(d, got[0], got[1], torch)

                    def liger_step(terms=terms):
                        own, d.loss_fn = d.loss_fn, terms
                        try:
                            return d.train_step()
                        finally:
                            d.loss_fn = own

                    steps[v] = liger_step
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in steps}
        for r in range(args.repeats):  # interleaved, so drifts hit every variant alike
            for v, step in steps.items():
                ac = v == "ours+ac"
                if ac:
                    d.student.gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False}
                    )
                try:
                    res = timed(step, torch, device, args.warmup, args.steps)
                except torch.cuda.OutOfMemoryError as e:
                    res = {"oom": str(e).splitlines()[0]}
                    d.optimizer.zero_grad(set_to_none=True)
                finally:
                    if ac:
                        d.student.gradient_checkpointing_disable()
                runs[v].append(res)
                print(f"{name} repeat {r + 1} {v:8s} {summary_line(res, args, flops, peak)}", flush=True)
        summary = {v: summarise(rs, args, flops, peak) for v, rs in runs.items()}
        base = summary.get("plain", {})
        for v, s in summary.items():
            if v != "plain" and base.get("tokens_per_s") and s.get("tokens_per_s"):
                s["throughput_x_plain"] = round(s["tokens_per_s"] / base["tokens_per_s"], 3)
                if base.get("peak_gib") and s.get("peak_gib"):
                    s["peak_x_plain"] = round(s["peak_gib"] / base["peak_gib"], 3)
        ours = summary.get("ours", {})
        goal = None
        if base.get("tokens_per_s") and ours.get("tokens_per_s") and ours.get("peak_x_plain") is not None:
            goal = {
                "throughput_ge_plain": ours["throughput_x_plain"] >= 1.0,
                "peak_le_half_plain": ours["peak_x_plain"] <= 0.5,
                "mfu_ge_40pct": (ours.get("mfu") or 0) >= 0.40 if name == "qwen3-1.7b" else None,
            }
        return {
            "pair": name,
            "device": gpu,
            "peak_bf16_tflops": peak,
            "teacher_layers": layers,
            "teacher_layers_full": config["num_hidden_layers"],
            "student_layers": lm.n_student,
            "student_kept": list(lm.kept),
            "tokens_per_step": args.batch * args.seq_len,
            "model_flops_per_step": flops,
            "setup_s": round(made_s, 1),
            "summary": summary,
            "skipped": skipped,
            "goal": goal,
            "runs": runs,
        }


def summarise(rs: list[dict[str, Any]], args: argparse.Namespace, flops: float, peak: float | None) -> dict:
    ok = [r for r in rs if "step_s" in r]
    if not ok:
        return {"oom": rs[0].get("oom")}
    times = [t for r in ok for t in r["step_s"]]
    med = statistics.median(times)
    out: dict[str, Any] = {
        "tokens_per_s": round(args.batch * args.seq_len / med, 1),
        "step_s": round(med, 4),
        "mfu": round(flops / med / (peak * 1e12), 4) if peak else None,
        "loss": ok[-1]["loss"],
    }
    if "peak_gib" in ok[0]:
        out["peak_gib"] = round(statistics.median(r["peak_gib"] for r in ok), 3)
        out["start_gib"] = round(statistics.median(r["start_gib"] for r in ok), 3)
    return out


def summary_line(res: dict[str, Any], args: argparse.Namespace, flops: float, peak: float | None) -> str:
    if "oom" in res:
        return f"out of memory ({res['oom'][:80]})"
    s = summarise([res], args, flops, peak)
    mfu = f"  MFU {s['mfu']:.1%}" if s.get("mfu") else ""
    mem = f"  peak {s['peak_gib']:.2f} GiB" if "peak_gib" in s else ""
    return f"{s['tokens_per_s']:10.1f} tok/s{mfu}{mem}  loss {s['loss']['loss']:.5f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="qwen3-1.7b,qwen3-8b", help=f"any of {', '.join(PAIRS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="the tiny pair at sequence 64 (a smoke run)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (one micro-batch)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=4096, help="loss.chunk_tokens for ours")
    p.add_argument("--teacher-layers", type=int, help="teacher depth (default: as many as fit)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: by device name)")
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--tmp", help="where the random teacher is written (default: the system temp dir)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_distill.json"))
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device; run with --device cpu --tiny for a smoke run")
    if args.tiny:
        args.pairs, args.seq_len, args.batch, args.chunk = "tiny", 64, 2, 64
        if args.out == p.get_default("out"):
            args.out = str(Path(args.out).with_name("gpu_distill-tiny.json"))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    pairs = [x.strip() for x in args.pairs.split(",") if x.strip()]
    bad = [x for x in pairs if x not in PAIRS] + [v for v in args.variants if v not in VARIANTS]
    if bad:
        sys.exit(f"unknown pairs/variants {bad}; pairs: {list(PAIRS)}, variants: {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    results = []
    for name in pairs:
        results.append(run_pair(name, args))
        print(json.dumps({k: results[-1][k] for k in ("pair", "teacher_layers", "summary", "skipped", "goal")},
                         indent=2), flush=True)  # fmt: skip
    result = {
        "benchmark": "gpu_distill",
        "config": {k: getattr(args, k) for k in ("device", "batch", "seq_len", "chunk", "warmup", "steps",
                                                  "repeats", "variants")},
        "machine": {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda},
        "pairs": results,
    }  # fmt: skip
    with contextlib.suppress(ImportError):
        from importlib.metadata import version

        import liger_kernel  # noqa: F401

        result["machine"]["liger_kernel"] = version("liger-kernel")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
