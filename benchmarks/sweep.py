"""Benchmark: evaluating a whole family with prefix reuse versus member by member.

The real SmolLM2-135M-Instruct teacher (30 layers) and its every-other-layer student (``LayerMap.every(30)``: 16
layers, built with ``assemble`` and not distilled; distillation does not change the cost) form a family of 17
members, K = 0..16. In one run, and on the same batch (a slice of the validation text, Pride and Prejudice), the
whole family is scored the way ``boomerang sweep`` scores it (``boomerang.evaluate.reuse.score`` over
``boomerang.evaluate.perplexity.batch_nll``):

  * separately: every member runs its own forward pass;
  * shared:     each distinct prefix of layers runs once and later members start from its cached output.

Repeats alternate the two ways; the JSON holds all timings, their medians and the ratio shared / separately
(medians; minima are recorded too). Every member's per-token NLL must be bit-identical both ways (checked with
``torch.equal``). The default is one thread: on a shared machine a 2-thread OpenMP run slows down many-fold (and
unevenly) whenever another process competes for a core; the ratio, not the absolute speed, is what is measured.

The best ratio any implementation could reach is the unavoidable work over the work done separately, counted in
layer evaluations plus LM-head evaluations, the head weighted by its FLOPs relative to one layer:
``(layers_shared + heads * w) / (layers_separately + heads * w)`` with
``w = head FLOPs / layer FLOPs`` (matrix multiplications; the head runs on the scored positions only, a layer on
every position; attention counted causally). Because a big head GEMM runs faster per FLOP than a layer's small
operations, the JSON also gives the bound with the head weighted by its measured *time* relative to a layer
(``head_over_layer_time``: the head with its log-softmax/NLL, and a layer as (teacher forward - head) / 30).

    python benchmarks/sweep.py        # writes benchmarks/results/sweep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
VALIDATION = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "validation")


def flops(config, batch) -> dict[str, float]:
    """Matmul FLOPs of one decoder layer and of one LM-head evaluation on ``batch``."""
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // heads
    b, length = batch.input_ids.shape
    linear = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * inter  # q, k, v, o, gate/up/down
    # + QK^T and AV (causal)
    layer = 2 * linear * b * length + 2 * 2 * heads * d * b * length * (length + 1) / 2
    head = 2 * h * vocab * batch.targets.numel()
    return {"layer": layer, "head": head, "head_over_layer": head / layer}


def head_time(teacher, batch, repeats: int) -> dict[str, float]:
    """Median seconds of the LM head (+ log-softmax NLL) on the scored positions, and of one layer."""
    import torch.nn.functional as F

    from boomerang.core.hooks import capture

    with torch.no_grad():
        with capture(teacher, outputs=[-1], detach=True) as got:
            teacher(input_ids=batch.input_ids, use_cache=False)
        h = teacher.model.norm(got["out"][-1])[:, batch.positions]
        heads, fulls = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            logits = teacher.lm_head(h)
            F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
            heads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            teacher(input_ids=batch.input_ids, use_cache=False, logits_to_keep=batch.positions)
            fulls.append(time.perf_counter() - t0)
    head, full = statistics.median(heads), statistics.median(fulls)
    layer = (full - head) / teacher.config.num_hidden_layers
    return {
        "head_seconds": head,
        "teacher_forward_seconds": full,
        "layer_seconds": layer,
        "head_over_layer_time": head / layer,
    }


def run(args: argparse.Namespace) -> dict:
    import boomerang as B
    from boomerang.core.layermap import student_section
    from boomerang.evaluate.perplexity import EvalSpec, batch_nll, prepare
    from boomerang.evaluate.reuse import Scored, plan_key, schedule, score, work
    from boomerang.family import Family

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    path = B.offline_teacher()
    teacher = B.load_model(path, dtype="float32")
    tok = B.load_tokenizer(path)
    lm = B.LayerMap.every(teacher.config.num_hidden_layers)
    student = B.assemble(
        {"teacher": teacher}, [("teacher", j) for j in lm.kept], "teacher", "teacher",
        section=student_section(lm), copy=True,
    ).eval()  # fmt: skip
    spec = EvalSpec(context=args.tokens, stride=args.tokens - 1, max_tokens=args.tokens, offset=args.offset)
    spec = spec.resolved(teacher.config)
    docs, batches = prepare(VALIDATION, tok, spec)
    assert len(batches) == 1, "one batch: a single window"
    batch = batches[0]
    fl = flops(teacher.config, batch)
    fam = Family(teacher, student, lm, tokenizer=tok)
    report = {
        "teacher": str(path),
        "student": f"LayerMap.every(30): kept {list(lm.kept)} (undistilled copy of the teacher layers)",
        "slice": {"document": docs[0].name, "offset": docs[0].offset, "tokens": len(docs[0].ids)},
        "batch": list(batch.input_ids.shape),
        "scored_tokens": batch.targets.numel(),
        "flops": fl,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "orders": {},
    }
    fn = lambda model: batch_nll(model, batch)  # noqa: E731
    report["measured"] = measured = head_time(teacher, batch, args.repeats)
    for order in args.orders:
        po = fam.order(order)
        models = []
        for k in range(lm.n_student + 1):
            plan = fam.plan(k, order=po)
            models.append(Scored(f"K={k}", fam.member(plan=plan), plan_key(plan)))
        keys = [m.key for m in models]
        counts = work(keys, [len(k[1]) for k in keys])

        def bound_for(w: float, c: dict = counts) -> float:
            return (c["layers_shared"] + c["heads_shared"] * w) / (
                c["layers_separately"] + c["heads_separately"] * w
            )

        bound = bound_for(fl["head_over_layer"])
        time_bound = bound_for(measured["head_over_layer_time"])
        steps = schedule(keys)
        score(models[:1], fn, reuse=False)  # warm-up
        times: dict[str, list[float]] = {"separately": [], "shared": []}
        identical = True
        for r in range(args.repeats):
            ways = ("separately", "shared") if r % 2 == 0 else ("shared", "separately")
            out = {}
            for way in ways:
                t0 = time.perf_counter()
                out[way] = score(models, fn, reuse=way == "shared", steps=steps)
                times[way].append(time.perf_counter() - t0)
            identical &= all(torch.equal(a, b) for a, b in zip(out["shared"], out["separately"], strict=True))
            print(
                f"{order} repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["shared"] / med["separately"]
        report["orders"][order] = {
            "members": len(models),
            "work": counts,
            "bound": bound,
            "bound_time_weighted": time_bound,
            "seconds": times,
            "median_seconds": med,
            "min_seconds": {k: min(v) for k, v in times.items()},
            "ratio": ratio,
            "ratio_of_minima": min(times["shared"]) / min(times["separately"]),
            "ratio_over_bound": ratio / bound,
            "within_5_percent": ratio <= 1.05 * bound,
            "identical": identical,
        }
        print(
            f"{order}: shared/separately = {ratio:.3f} (bound {bound:.3f}, {ratio / bound:.3f}x the bound; "
            f"time-weighted bound {time_bound:.3f}); "
            f"identical results: {identical}",
            flush=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128, help="window length = slice length (one window)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--offset", type=int, default=0, help="token offset into the validation text")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--orders", nargs="+", default=["last", "first"])
    p.add_argument("--out", type=Path, default=RESULTS / "sweep.json")
    args = p.parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
