"""Benchmark: does ``boomerang serve --dtype auto`` decode as fast as the dtype it chooses, given explicitly?

``--dtype auto`` measures a bf16 and an fp32 matrix product at start-up (``boomerang.serve.options.choose``). Run on
the main thread, before the engine's thread existed, that measurement left the server decoding at 0.74x the speed
of the same server started with ``--dtype bfloat16`` on a 2-core AMD EPYC (Zen 4; ``results/serve_probe-before.json``,
measured with that code); it now runs on a thread of its own. Two servers (the SmolLM2-135M teacher and a student initialised from it) are up at once, one with ``--dtype
auto`` and one with the dtype auto chooses; single-client streamed greedy requests on the teacher alternate
between them (which goes first alternates too), so both meet the same machine. Medians over ``--repeats`` pairs.

    python benchmarks/serve_probe.py                # -> benchmarks/results/serve_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import Server, ensure_student, prompt_ids, served_dtype, timed_request

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument("--student", help="student checkpoint (default: initialise the every-other-layer one)")
    ap.add_argument("--order", default="first")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/boomerang-bench-serve")
    ap.add_argument("--results", default=str(RESULTS / "serve_probe.json"))
    args = ap.parse_args()
    args.dtype, args.device = "auto", "cpu"

    import torch

    from boomerang.io.loading import load_config
    from boomerang.train.precision import machine

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    student = args.student or ensure_student(args.teacher, work)
    prompt = prompt_ids(int(load_config(args.teacher).vocab_size), args.prompt_tokens)
    explicit = served_dtype(args)  # what auto chooses here
    runs: dict[str, list[float]] = {"auto": [], explicit: []}
    t0 = time.perf_counter()
    # Server passes --dtype EXPLICIT; a second --dtype on the command line wins (click takes the last)
    with (
        Server(args.teacher, student, args, "--dtype", "auto") as auto,
        Server(args.teacher, student, args) as fixed,
    ):
        clients = {"auto": auto.client(), explicit: fixed.client()}
        for c in clients.values():
            timed_request(c, "teacher", prompt, args.tokens)  # warm-up
        for r in range(args.repeats):
            for label in list(clients) if r % 2 == 0 else list(clients)[::-1]:
                runs[label].append(
                    timed_request(clients[label], "teacher", prompt, args.tokens)["tokens_per_s"]
                )
    a, b = statistics.median(runs["auto"]), statistics.median(runs[explicit])
    result = {
        "benchmark": "serve_probe",
        "machine": machine(),
        "command": " ".join(["python benchmarks/serve_probe.py", *sys.argv[1:]]),
        "teacher": args.teacher,
        "student": student,
        "order": args.order,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "auto_chooses": explicit,
        "tokens_per_s": {"--dtype auto": runs["auto"], f"--dtype {explicit}": runs[explicit]},
        "median_tokens_per_s": {"--dtype auto": round(a, 2), f"--dtype {explicit}": round(b, 2)},
        "auto_over_explicit": round(a / b, 3),
        "pair_ratios": [round(x / y, 3) for x, y in zip(runs["auto"], runs[explicit], strict=True)],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(f"teacher, one client: --dtype auto {a:.1f} tok/s, --dtype {explicit} {b:.1f} tok/s ({a / b:.3f}x)")
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
