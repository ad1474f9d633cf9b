"""A lone decoding row computed as two (``boomerang.serve.runner.pads_lone_rows``): same text in any company, and
its speed (issue 24).

On a CPU in bf16, a matrix product of one row takes another oneDNN kernel than one of several, and rounds
differently; a request's greedy text could then change with the requests it is batched with, or when speculative
decoding verifies several of its tokens at once. The serving engine's linear layers therefore compute a lone row
as two identical (contiguous) rows. This measures, on the teacher through the engine's ``Runner``:

* exactness: the logits of one decoding step of 4 prompts, each alone against all 4 in one batch (bitwise), with
  and without the two-row product;
* speed: single-row greedy decoding (a 64-token prompt, 32 new tokens), ms per token, with and without, the two
  interleaved in one process, medians over ``--repeats``.

    python benchmarks/decode_rows.py            # -> benchmarks/results/decode_rows.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode_rows.json")
    args = ap.parse_args()

    import torch

    from boomerang.io.loading import load_model
    from boomerang.serve import runner as R
    from boomerang.train.precision import machine

    torch.set_num_threads(args.threads)
    model = load_model(args.teacher, dtype=args.dtype)
    run = R.Runner(model)
    products = [m for m in model.modules() if R._rowwise(m)]

    def two_rows(on: bool) -> None:
        if on:
            R._pad_lone_rows(model)  # wraps only what is not wrapped yet
        else:
            for m in products:
                vars(m).pop("forward", None)  # back to the class's own one-row product

    prompts = [list(range(100 + 7 * i, 140 + 9 * i)) for i in range(4)]

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

    result: dict = {"machine": machine(), "config": {k: str(v) for k, v in vars(args).items()}}
    times: dict[str, list[float]] = {"one row": [], "two rows": []}
    for on in (False, True):
        two_rows(on)
        result[f"exactness ({'two rows' if on else 'one row'})"] = exact()
        decode(8)  # warm-up
    for i in range(args.repeats):
        for on in (False, True) if i % 2 else (True, False):
            two_rows(on)
            times["two rows" if on else "one row"].append(decode(args.tokens))
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result["ms_per_token"] = {k: round(v, 2) for k, v in ms.items()}
    result["all_ms_per_token"] = {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()}
    result["speed_two_rows_vs_one"] = round(ms["one row"] / ms["two rows"], 3)
    for k in ("exactness (one row)", "exactness (two rows)"):
        e = result[k]
        print(
            f"{k}: {e['rows_identical']}/{e['of']} rows identical alone and batched (max |diff| {e['max_abs_diff']:.3g})"
        )
    print(
        f"decode: one row {ms['one row']:.2f} ms/token, two rows {ms['two rows']:.2f} ms/token "
        f"(speed {result['speed_two_rows_vs_one']:.3f}x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
