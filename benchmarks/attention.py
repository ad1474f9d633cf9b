"""Causal attention at the training step's shape on this CPU: torch's SDPA kernel against the alternatives (issue 23).

SmolLM2-135M's attention at the demo's micro-batch: 2 sequences × 512 tokens, 9 query heads over 3 key/value heads
of 64. Forward and backward of one layer's attention, each way, in fp32 and bf16:

* ``sdpa``: ``F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``, what transformers calls;
* ``math``: the same attention written with two matmuls, a mask and a softmax in fp32;
* ``compiled sdpa`` / ``compiled math``: each under ``torch.compile`` (inductor's CPU backend; compile excluded);
* ``ours``: ``boomerang.train.attention`` (``train.attention: matmul``), as transformers calls it: the matmul
  attention with a hand-written backward that keeps only the bf16 probabilities (in fp32 it hands over to SDPA).

Medians over ``--repeats`` timed calls after warm-up; effective GFLOP/s counts the causal half of the two products.

    python benchmarks/attention.py                    # -> benchmarks/results/attention.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS / "attention.json")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from boomerang.train.precision import machine

    torch.set_num_threads(args.threads)
    b, h, kv, n, d = args.batch, args.heads, args.kv_heads, args.seq_len, args.head_dim
    masked = torch.ones(n, n, dtype=torch.bool).triu(1)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def plain(q, k, v):
        k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
        s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(d))
        p = torch.softmax(s.masked_fill(masked, float("-inf")).float(), -1).to(q.dtype)
        return p @ v

    from boomerang.train.attention import matmul_attention

    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = (
        True,
        h // kv,
    )  # what transformers' attention modules carry

    def ours(q, k, v):
        return matmul_attention(module, q, k, v, None)[0]  # [B, T, H, D], as transformers' SDPA path returns

    ways = {
        "sdpa": sdpa,
        "math": plain,
        "compiled sdpa": torch.compile(sdpa),
        "compiled math": torch.compile(plain),
        "ours": ours,
    }
    flops = 2 * 2 * b * h * n * n * d / 2  # QK^T and PV, causal half
    rows: dict[str, dict] = {}
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_()
        k = torch.randn(b, kv, n, d, generator=g).to(dtype).requires_grad_()
        v = torch.randn(b, kv, n, d, generator=g).to(dtype).requires_grad_()
        with torch.no_grad():
            ref = sdpa(q, k, v).float()
        for name, fn in ways.items():
            for _ in range(3):  # warm-up (and compilation)
                fn(q, k, v).sum().backward()
            fwd, bwd = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = fn(q, k, v)
                t1 = time.perf_counter()
                out.sum().backward()
                bwd.append(time.perf_counter() - t1)
                fwd.append(t1 - t0)
            f, bw = statistics.median(fwd), statistics.median(bwd)
            out = fn(q, k, v).detach().float()  # with autograd on: ours hands no-grad calls to SDPA
            if out.shape != ref.shape:
                out = out.transpose(1, 2)
            err = float((out - ref).abs().max())
            if name == "sdpa":  # the first way: every other is timed against it
                t_sdpa = f + bw
            rows[f"{name}@{'bf16' if dtype == torch.bfloat16 else 'fp32'}"] = {
                "forward_ms": round(f * 1e3, 2),
                "backward_ms": round(bw * 1e3, 2),
                "forward_gflops": round(flops / f / 1e9, 1),
                "x_sdpa": round(t_sdpa / (f + bw), 3),
                "max_abs_diff_vs_sdpa": err,
            }
    for key, row in rows.items():
        print(
            f"{key:22s} forward {row['forward_ms']:6.2f} ms ({row['forward_gflops']:5.1f} GFLOP/s)  "
            f"backward {row['backward_ms']:6.2f} ms  speed vs sdpa {row['x_sdpa']:.2f}x",
            flush=True,
        )
    result = {"machine": machine(), "config": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
