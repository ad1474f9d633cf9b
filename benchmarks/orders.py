"""Benchmark: the cost of the greedy-kl (KLPatch) and optimal patch-order searches.

On the real SmolLM2-135M-Instruct teacher (30 layers) with an every-other-layer student initialised from it
(``LayerMap.every(30)``: 16 layers, no distillation), on calibration blocks from the validation corpus:

  (a) naive greedy: every candidate model is built with ``boomerang.patch`` and run whole (embedding, all its
      layers, head), and its KL to the cached teacher log-probabilities is computed;
  (b) cached greedy: ``compute_order("greedy-kl")``, which caches the current model's hidden states at every
      block boundary and runs only the candidate's block, the blocks after it, and the head.

Both must choose the same sequence. Wall time per repeat (median reported), and the layer/head evaluation counts
(exact, from the evaluator; for (a) counted from the candidates' depths). Then ``compute_order("optimal")`` on a
smaller student (``LayerMap.every(30, every=4)``: 9 layers, 512 subsets) measures the exhaustive search and how far
the greedy order is from the optimum at each size.

    python benchmarks/orders.py           # writes benchmarks/results/orders.json
    python benchmarks/orders.py --tiny                           # a seconds-long check on a random tiny model
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
VALIDATION = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "validation"


def naive_greedy(teacher, student, lm, ids, batch_size):
    """KLPatch with full-model evaluations: the baseline the cached search is measured against."""
    import boomerang as B
    from boomerang.analysis.orders import batches

    parts = batches(ids, batch_size)
    with torch.no_grad():
        ref = [torch.log_softmax(teacher(b, use_cache=False).logits.float(), -1) for b in parts]

    def kl(model):
        total = 0.0
        with torch.no_grad():
            for b, lp in zip(parts, ref, strict=True):
                lq = torch.log_softmax(model(b, use_cache=False).logits.float(), -1)
                total += float(torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="sum").double())
        return total / ids.numel()

    m = lm.n_student
    patched: list[int] = []
    layers = heads = 0
    values = [kl(B.patch(teacher, student, lm, []))]
    for _ in range(m):
        best = None
        for i in range(m):
            if i in patched:
                continue
            model = B.patch(teacher, student, lm, [*patched, i])
            layers += model.config.num_hidden_layers
            heads += 1
            v = kl(model)
            if best is None or v < best[0]:
                best = (v, i)
        patched.append(best[1])
        values.append(best[0])
    return patched, values, {"layer_evaluations": layers, "head_evaluations": heads}


def setup(tiny: bool, texts: int, length: int):
    import boomerang as B
    from boomerang.core.layermap import student_section
    from boomerang.data import calibration_ids

    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import make_teacher

        teacher = make_teacher("llama", 12)
        ids = torch.randint(4, 96, (texts, length), generator=torch.Generator().manual_seed(0))
    else:
        path = B.offline_teacher()
        teacher = B.load_model(path, dtype="float32")
        ids = calibration_ids(str(VALIDATION), B.load_tokenizer(path), n=texts, length=length, seed=0)
    n = teacher.config.num_hidden_layers

    def student_of(lm):
        s = B.assemble(
            {"teacher": teacher},
            [("teacher", j) for j in lm.kept],
            "teacher",
            "teacher",
            section=student_section(lm),
            copy=True,
        )
        return s.eval()

    return teacher, ids, n, student_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="random 12-layer tiny teacher (quick check)")
    ap.add_argument("--texts", type=int, default=4, help="calibration blocks")
    ap.add_argument("--length", type=int, default=128, help="tokens per block")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import boomerang as B
    from boomerang.analysis.orders import compute_order

    teacher, ids, n, student_of = setup(args.tiny, args.texts, args.length)
    lm = B.LayerMap.every(n)
    student = student_of(lm)
    result = {
        "setup": {
            "teacher": "tiny random llama, 12 layers"
            if args.tiny
            else "SmolLM2-135M-Instruct (30 layers, float32)",
            "student": f"LayerMap.every({n}): {lm.n_student} layers {list(lm.kept)}, teacher layers copied, no distillation",
            "calibration": f"{args.texts} blocks x {args.length} tokens"
            + ("" if args.tiny else " from corpora/validation (seed 0)"),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        }
    }
    times = {"naive": [], "cached": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        seq_n, kl_n, counts_n = naive_greedy(teacher, student, lm, ids, args.batch_size)
        times["naive"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        po = compute_order("greedy-kl", teacher, student, lm, ids, batch_size=args.batch_size)
        times["cached"].append(time.perf_counter() - t0)
        print(f"repeat {r}: naive {times['naive'][-1]:.1f}s cached {times['cached'][-1]:.1f}s", flush=True)
    same = po.sequence == seq_n
    max_diff = max(abs(a - b) for a, b in zip(po.info["kl"], kl_n, strict=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    result["greedy"] = {
        "same_sequence": same,
        "max_kl_difference": max_diff,
        "sequence": po.sequence,
        "kl": po.info["kl"],
        "seconds": times,
        "median_seconds": med,
        "speedup_cached_vs_naive": med["naive"] / med["cached"],
        "naive_counts": counts_n,
        "cached_counts": po.info["evaluations"],
    }
    print(json.dumps(result["greedy"], indent=1), flush=True)

    small = B.LayerMap.every(n, every=4)
    s_small = student_of(small)
    t0 = time.perf_counter()
    opt = compute_order("optimal", teacher, s_small, small, ids, batch_size=args.batch_size, max_layers=16)
    t_opt = time.perf_counter() - t0
    t0 = time.perf_counter()
    greedy_small = compute_order("greedy-kl", teacher, s_small, small, ids, batch_size=args.batch_size)
    t_greedy = time.perf_counter() - t0
    result["optimal"] = {
        "student": f"LayerMap.every({n}, every=4): {small.n_student} layers {list(small.kept)}",
        "seconds": t_opt,
        "greedy_seconds": t_greedy,
        "subsets": [list(s) for s in opt.subsets],
        "kl": opt.info["kl"],
        "greedy_sequence": greedy_small.sequence,
        "greedy_kl": greedy_small.info["kl"],
        "greedy_gap": opt.info["greedy_gap"],
        "greedy_equals_optimal_sizes": sum(abs(g) < 1e-9 for g in opt.info["greedy_gap"]),
        "counts": opt.info["evaluations"],
        "last_order_kl": None,
    }
    from boomerang.analysis.orders import order_scores

    result["optimal"]["last_order_kl"] = order_scores(
        teacher, s_small, small, "last", ids, batch_size=args.batch_size
    )
    result["optimal"]["first_order_kl"] = order_scores(
        teacher, s_small, small, "first", ids, batch_size=args.batch_size
    )
    print(json.dumps(result["optimal"], indent=1), flush=True)
    out = args.out or RESULTS / ("orders_tiny.json" if args.tiny else "orders.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
