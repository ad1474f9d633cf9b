"""The serving engine's decoding kernels on a CPU in bf16 (issue 24): same logits in any company, and their speed.

A decoding pass's matrix products run row by row with PyTorch's own kernels (``boomerang.serve.runner.row_products``)
and one query's attention in fp32 (``boomerang.serve.kv``). This compares, on the teacher through the engine's
``Runner``, three ways of running a decoding pass:

* ``before``: oneDNN's products with a lone row computed as two (what the engine did until this benchmark's
  change: two rows take oneDNN's several-row kernel, which rounds as any number of rows does) and bf16 SDPA;
* ``rows, bf16 attention``: the products row by row, attention as before;
* ``now``: the products row by row and one query's attention in fp32 (the engine today).

For each: exactness (the logits of one decoding step of 8 prompts, each alone against all 8 in one batch,
bitwise) and speed (ms per token of single-row greedy decoding, a 64-token prompt and 32 new tokens; ms per
decoding step of 2, 4 and 8 rows), the modes interleaved in one process, medians over ``--repeats``.

    python benchmarks/decode_rows.py            # -> benchmarks/results/decode_rows.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("before", "rows, bf16 attention", "now")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode_rows.json")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from boomerang.io.loading import load_model
    from boomerang.serve import kv
    from boomerang.serve import runner as R
    from boomerang.train.precision import machine

    torch.set_num_threads(args.threads)
    model = load_model(args.teacher, dtype=args.dtype)
    run = R.Runner(model)
    products = [m for m in model.modules() if type(m) is torch.nn.Linear]
    fp32_query = kv._one_query

    def bf16_query(q, k, v, scaling, gqa):  # SDPA in the model's dtype, as before
        return F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=gqa)

    def two_rows(self, x):  # the earlier engine's lone row: two identical rows, the first kept
        forward = type(self).forward
        if x.dim() > 1 and x.shape[:-1].numel() == 1:
            return forward(self, torch.cat((x, x)))[:1]
        return forward(self, x)

    def mode(name: str) -> None:
        run.rowwise = name != "before"
        kv._one_query = fp32_query if name == "now" else bf16_query
        for m in products:
            if name == "before":
                m.forward = types.MethodType(two_rows, m)
            else:
                vars(m).pop("forward", None)

    prompts = [list(range(100 + 7 * i, 140 + 9 * i)) for i in range(8)]

    def exact() -> dict:
        alone, batched = run.step_after(prompts, 5, batched=False), run.step_after(prompts, 5, batched=True)
        rows = [bool(torch.equal(alone[i], batched[i])) for i in range(len(prompts))]
        return {
            "rows_identical": sum(rows),
            "of": len(rows),
            "max_abs_diff": float((alone - batched).abs().max()),
        }

    prompt = list(range(100, 164))

    def decode(n: int) -> float:
        c = run.cache(len(prompt) + n + 1)
        tok = int(run.forward([c], [prompt], last_only=True)[0, -1].argmax())
        t0 = time.perf_counter()
        for _ in range(n):
            tok = int(run.forward([c], [[tok]])[0, -1].argmax())
        return (time.perf_counter() - t0) / n

    def batch_step(rows: int, n: int = 8) -> float:
        caches = [run.cache(len(p) + n + 1) for p in prompts[:rows]]
        toks = [
            int(run.forward([c], [p], last_only=True)[0, -1].argmax())
            for c, p in zip(caches, prompts, strict=False)
        ]
        t0 = time.perf_counter()
        for _ in range(n):
            toks = [int(t) for t in run.forward(caches, [[t] for t in toks])[:, -1].argmax(-1)]
        return (time.perf_counter() - t0) / n

    result: dict = {"machine": machine(), "config": {k: str(v) for k, v in vars(args).items()}}
    for name in MODES:
        mode(name)
        result[f"exactness ({name})"] = exact()
        decode(8)  # warm-up
    shapes = ["1 row (decode)", "2 rows", "4 rows", "8 rows"]
    times = {(m, s): [] for m in MODES for s in shapes}
    for i in range(args.repeats):
        for name in MODES if i % 2 else MODES[::-1]:
            mode(name)
            times[(name, shapes[0])].append(decode(args.tokens))
            for s in shapes[1:]:
                times[(name, s)].append(batch_step(int(s.split()[0])))
    mode("now")
    ms = {m: {s: round(statistics.median(times[(m, s)]) * 1e3, 2) for s in shapes} for m in MODES}
    result["ms_per_step"] = ms
    result["all_ms_per_step"] = {f"{m} / {s}": [round(t * 1e3, 2) for t in v] for (m, s), v in times.items()}
    result["speed_vs_before"] = {
        m: {s: round(ms["before"][s] / ms[m][s], 3) for s in shapes} for m in MODES[1:]
    }
    for name in MODES:
        e = result[f"exactness ({name})"]
        print(
            f"{name}: {e['rows_identical']}/{e['of']} rows identical alone and batched "
            f"(max |diff| {e['max_abs_diff']:.3g}); ms per step "
            + ", ".join(f"{s} {ms[name][s]:.1f}" for s in shapes)
        )
    for name, speed in result["speed_vs_before"].items():
        print(f"{name} vs before: " + ", ".join(f"{s} {v:.2f}x" for s, v in speed.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
