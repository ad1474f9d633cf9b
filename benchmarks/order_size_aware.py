"""Benchmark: the demo's ``size-aware`` order search, before and after its two speed-ups.

On the real SmolLM2-135M-Instruct teacher with the demo's 16-layer init (layers 0, 1, 2, 5, 8, 10, 13, 15, 16, 19,
20, 23, 24, 27, 28, 29; its weights perturbed by 0.2% noise to stand in for distillation, so that no single-layer
block ties with its teacher layer), in bf16, on the demo's calibration (4 of 16 blocks of 256 training tokens):

  before: every model's KL from its log-softmax and ``kl_div`` against the teacher's cached log-probabilities (the
          previous ``PatchEvaluator.score``, kept here as ``DirectKL``), and the local search's candidates run from
          the student's or the teacher's states (``rebase=False``);
  after:  the KL as ``logsumexp(z) - p.z + sum p log p`` (``analysis.teacher_kl``), and candidates run from the states
          of the set they are one move from (the defaults).

Reported: wall time of the whole search per variant (alternating, ``--repeats`` each, median), the layer and head
evaluations, whether both chose the same members, and the largest difference of their KLs (float32 summation
order). Then one model's score alone, alternating, ``--head-repeats`` times.

    python benchmarks/order_size_aware.py      # -> results/order_size_aware.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "train"
LAYERS = (0, 1, 2, 5, 8, 10, 13, 15, 16, 19, 20, 23, 24, 27, 28, 29)


def setup():
    from boomerang.analysis.orders import subsample
    from boomerang.core.layermap import LayerMap
    from boomerang.data.blocks import calibration_ids
    from boomerang.io.loading import load_model, load_tokenizer
    from boomerang.io.offline import offline_teacher
    from boomerang.train.initialise import init_student

    path = offline_teacher()
    teacher = load_model(path, dtype="bfloat16").eval()
    lm = LayerMap.from_kept(LAYERS, 30)
    student = init_student(teacher, lm).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.002 * float(p.float().std()))
    ids = subsample(calibration_ids(TRAIN, load_tokenizer(path), n=16, length=256), 4)
    return teacher, student, lm, ids


def direct_kl_evaluator():
    """``PatchEvaluator`` scoring KL as it did before ``teacher_kl``: log-softmax of the model, ``kl_div``."""
    from boomerang.analysis.orders import PatchEvaluator

    class DirectKL(PatchEvaluator):
        def _reference(self, cache_bytes: int) -> None:
            from boomerang.core.spans import run_span

            super()._reference(cache_bytes)
            with torch.no_grad():
                self._logp = [
                    torch.log_softmax(run_span(self.models["teacher"], b, until="logits").float(), dim=-1)
                    for b in self.batches
                ]

        def score(self, head, states, *, depth=None) -> float:
            self.counts["heads"] += 1
            self.counts["full_layers"] += depth or 0
            total = 0.0
            with torch.no_grad():
                for k, (b, h) in enumerate(zip(self.batches, states, strict=True)):
                    logq = self._head_logprobs(head, b, h)
                    kl = torch.nn.functional.kl_div(logq, self._logp[k], log_target=True, reduction="sum")
                    total += float(kl.double())
            return total / self.tokens

    return DirectKL


def search(teacher, student, lm, ids, fast: bool) -> dict:
    from boomerang.analysis.orders import PatchEvaluator, size_search

    t0 = time.perf_counter()
    ev = (PatchEvaluator if fast else direct_kl_evaluator())(teacher, student, lm, ids)
    subsets, kl, info = size_search(ev, tied=True, rebase=fast)
    return {
        "seconds": time.perf_counter() - t0,
        "subsets": [list(s) for s in subsets],
        "kl": kl,
        "models_scored": info["models_scored"],
        **{f"{k}_evaluations": v for k, v in ev.counts.items()},
    }


def head_times(teacher, student, lm, ids, repeats: int) -> dict:
    from boomerang.analysis.orders import PatchEvaluator

    evs = {
        "before": direct_kl_evaluator()(teacher, student, lm, ids),
        "after": PatchEvaluator(teacher, student, lm, ids),
    }
    states = evs["after"].states((2, 3))[-1]
    times: dict[str, list[float]] = {k: [] for k in evs}
    for _ in range(repeats):
        for name, ev in evs.items():
            t = time.perf_counter()
            ev.score("student", states)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "median_s": med, "speedup": med["before"] / med["after"]}


def main() -> None:
    from boomerang.train.precision import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="whole searches per variant (alternating)")
    ap.add_argument("--head-repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS / "order_size_aware.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher, student, lm, ids = setup()
    head = head_times(teacher, student, lm, ids, args.head_repeats)
    print("one score:", head["median_s"], flush=True)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name in ("before", "after"):
            runs[name].append(search(teacher, student, lm, ids, fast=name == "after"))
            print(name, f"{runs[name][-1]['seconds']:.1f} s", flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    b, a = runs["before"][0], runs["after"][0]
    result = {
        "machine": {**machine(), "threads": torch.get_num_threads(), "python": platform.python_version()},
        "setup": {"layers": list(LAYERS), "calibration": list(ids.shape), "dtype": "bfloat16"},
        "search_median_s": med,
        "search_speedup": med["before"] / med["after"],
        "same_members": b["subsets"] == a["subsets"],
        "max_kl_difference": max(abs(x - y) for x, y in zip(b["kl"], a["kl"], strict=True)),
        "runs": runs,
        "head": head,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
