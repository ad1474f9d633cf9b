"""Benchmark: serving a whole family from one process (``boomerang serve``).

The family is the real SmolLM2-135M-Instruct teacher (``smollm2-offline``) and a student: ``--student DIR``, or by
default the paper's every-other-layer student initialised from the teacher (``boomerang.init_student``, not
distilled: throughput and memory do not depend on the weights' values). Every request is greedy, with a fixed
token-id prompt (``--prompt-tokens``) and exactly ``--tokens`` new tokens (``ignore_eos``), sent with the official
``openai`` client over HTTP on 127.0.0.1.

1. **Per member** (one ``boomerang serve`` process, no routing): for every member, one warm-up request, then
   ``--repeats`` streamed requests, one at a time: latency, time to first token, tokens/s (completion tokens over
   latency) and decode tokens/s (after the first token). Medians over repeats.
2. **Memory** (the same server process, its own ``VmHWM`` peak RSS from /proc): after start-up (teacher and
   student loaded), after serving the teacher and the student (the baseline: what serving those two costs), and
   after serving every member (all members warm). Compared with
   - one process per member: each member written to disk (``export_family``), then each loaded and run with the
     same request in its own process (importing the server stack too); the sum of their peak RSS;
   - deep copies: one process that loads teacher and student and holds every member as a deep copy
     (``boomerang.patch(copy=True)``), each run once.
3. **Routing under load** (a second server with ``--max-latency-ms``, default twice the teacher's median latency
   from part 1): for each concurrency level, that many clients each send ``--load-requests`` requests back to back
   (closed loop), first naming ``auto``, then ``teacher``: latency percentiles, the share of requests within the
   budget, aggregate tokens/s, and which members ``auto`` chose.

Run it on an otherwise idle machine (it starts several processes; each uses ``--threads`` torch threads):

    python benchmarks/serve.py                                   # -> benchmarks/results/serve.json
    python benchmarks/serve.py --teacher T --student S --quick   # smoke test: few repeats, small load
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CLI = "from boomerang.cli.app import main; main()"


# ---- helpers ---------------------------------------------------------------------------------------------------


def _status_mb(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else float("nan")


def _env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


class Server:
    """``boomerang serve`` in its own process."""

    def __init__(self, teacher: str, student: str, args: argparse.Namespace, *extra: str) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-c", CLI, "serve", "--teacher", teacher, "--student", student]
        cmd += ["--order", args.order, "--port", str(self.port), "--threads", str(args.threads)]
        cmd += ["--log-level", "warning", *extra]
        self.proc = subprocess.Popen(cmd, env=_env(args.threads), stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"boomerang serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).json()["status"] == "ok":
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit("boomerang serve did not start in 10 minutes")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=30).json()

    def peak_mb(self) -> float:
        return round(_status_mb("VmHWM", self.proc.pid), 1)

    def rss_mb(self) -> float:
        return round(_status_mb("VmRSS", self.proc.pid), 1)

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=3600)


def prompt_ids(vocab: int, n: int) -> list[int]:
    """A fixed prompt of ``n`` ordinary token ids (no specials at the ends of the vocabulary)."""
    import random

    rng = random.Random(0)
    return [rng.randrange(10, max(11, vocab - 10)) for _ in range(n)]


def timed_request(client: Any, model: str, prompt: list[int], tokens: int) -> dict:
    """One streamed greedy request: latency, time to first token, tokens, the member that answered."""
    t0 = time.perf_counter()
    first = None
    usage = None
    member = None
    for chunk in client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ):
        member = chunk.model
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    n = usage.completion_tokens if usage else 0
    first = first or end
    return {
        "model": member,
        "latency_ms": (end - t0) * 1000,
        "ttft_ms": (first - t0) * 1000,
        "tokens": n,
        "tokens_per_s": n / (end - t0),
        "decode_tokens_per_s": (n - 1) / (end - first) if n > 1 and end > first else float("nan"),
    }


# ---- children: one member per process, deep copies ---------------------------------------------------------------


def child_member(directory: str, prompt: list[int], tokens: int, threads: int) -> dict:
    """Load one member from disk with the server stack imported, run the benchmark request, report peak RSS."""
    import starlette.applications  # noqa: F401 (the server stack a one-member server would import)
    import torch
    import uvicorn  # noqa: F401

    import boomerang as B

    torch.set_num_threads(threads)
    model = B.load_model(directory)
    with torch.inference_mode():
        model.generate(
            torch.tensor([prompt]),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return {"peak_mb": round(_status_mb("VmHWM"), 1)}


def child_copies(
    teacher: str, student: str, order: str, prompt: list[int], tokens: int, threads: int
) -> dict:
    """Teacher, student and every member as a deep copy, each run once; peak RSS."""
    import starlette.applications  # noqa: F401 (the server stack, as in the served process)
    import torch
    import uvicorn  # noqa: F401

    import boomerang as B

    torch.set_num_threads(threads)
    t, s = B.load_model(teacher), B.load_model(student)
    family = B.Family(t, s)
    po = family.order(order)
    held = []
    with torch.inference_mode():
        for k in family.sizes:
            m = B.patch(t, s, family.layer_map, num_patched=k, order=po, copy=True)
            m.generate(
                torch.tensor([prompt]),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
            held.append(m)
    return {"peak_mb": round(_status_mb("VmHWM"), 1), "members": len(held)}


def run_child(args: argparse.Namespace, kind: str, *params: str) -> dict:
    out = Path(args.workdir) / f"child-{kind}-{os.getpid()}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out), *params]
    cmd += ["--threads", str(args.threads), "--tokens", str(args.tokens)]
    code = subprocess.call(cmd, env=_env(args.threads))
    if code:
        raise SystemExit(f"child {kind} failed with exit code {code}")
    data = json.loads(out.read_text())
    out.unlink()
    return data


# ---- the parts ------------------------------------------------------------------------------------------------


def per_member(server: Server, prompt: list[int], args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Part 1 and 2 (served): every member's speed, and the server's memory along the way."""
    client = server.client()
    models = client.models.list().data
    m = len(models) - 1
    memory = {"startup_peak_mb": server.peak_mb(), "startup_rss_mb": server.rss_mb()}
    for name in ("student", "teacher"):  # the baseline: serving only the two models the family is made of
        for _ in range(2):
            timed_request(client, name, prompt, args.tokens)
    memory |= {"pair_warm_peak_mb": server.peak_mb(), "pair_warm_rss_mb": server.rss_mb()}
    rows = []
    for info in models:
        timed_request(client, info.id, prompt, args.tokens)  # warm-up (builds the member)
        runs = [timed_request(client, info.id, prompt, args.tokens) for _ in range(args.repeats)]
        assert all(r["model"] == info.id and r["tokens"] == args.tokens for r in runs), runs
        extra = info.model_extra
        rows.append(
            {
                "model": info.id,
                "aliases": extra["aliases"],
                "layers": extra["layers"],
                "parameters": extra["parameters"],
                "latency_ms": _median([r["latency_ms"] for r in runs]),
                "ttft_ms": _median([r["ttft_ms"] for r in runs]),
                "tokens_per_s": _median([r["tokens_per_s"] for r in runs]),
                "decode_tokens_per_s": _median([r["decode_tokens_per_s"] for r in runs]),
            }
        )
        print(
            f"  {info.id:>4} {extra['layers']:>3} layers  {rows[-1]['tokens_per_s']:8.1f} tok/s  "
            f"latency {rows[-1]['latency_ms']:8.1f} ms  ttft {rows[-1]['ttft_ms']:7.1f} ms",
            flush=True,
        )
    built = server.health()["built"]
    assert len(built) == m + 1, built
    memory |= {"all_warm_peak_mb": server.peak_mb(), "all_warm_rss_mb": server.rss_mb()}
    memory["ratio_all_warm_vs_pair_warm"] = round(memory["all_warm_peak_mb"] / memory["pair_warm_peak_mb"], 4)
    memory["ratio_all_warm_vs_startup"] = round(memory["all_warm_peak_mb"] / memory["startup_peak_mb"], 4)
    return rows, memory


def separate_processes(teacher: str, student: str, prompt: list[int], args: argparse.Namespace) -> dict:
    """Part 2: every member in its own process (written to disk first)."""
    import boomerang as B

    fam_dir = Path(args.workdir) / "family"
    if not (fam_dir / "family.json").is_file():
        B.export_family(teacher, student, fam_dir, order=args.order, force=True)
    manifest = json.loads((fam_dir / "family.json").read_text())
    peaks = {}
    for row in manifest["members"]:
        data = run_child(
            args, "member", "--member", str(fam_dir / row["dir"]), "--prompt", json.dumps(prompt)
        )
        peaks[f"k{row['K']}"] = data["peak_mb"]
        print(f"  k{row['K']} alone: {data['peak_mb']:.0f} MB", flush=True)
    rows = manifest["members"]
    return {
        "per_member_peak_mb": peaks,
        "sum_peak_mb": round(sum(peaks.values()), 1),
        "teacher_plus_student_weights_mb": round(
            (rows[0]["weights_bytes"] + rows[-1]["weights_bytes"]) / 2**20, 1
        ),
        "sum_member_weights_mb": round(sum(r["weights_bytes"] for r in rows) / 2**20, 1),
    }


def routing(
    teacher: str, student: str, prompt: list[int], budget_ms: float, args: argparse.Namespace
) -> dict:
    """Part 3: closed-loop load at each concurrency level, `auto` against always the teacher."""
    levels = []
    with Server(teacher, student, args, "--max-latency-ms", f"{budget_ms:.1f}") as server:
        client = server.client()
        for info in client.models.list().data:  # build every member and warm the HTTP path first
            timed_request(client, info.id, prompt, 2)
        for c in args.levels:
            level: dict = {"concurrency": c}
            for model in ("auto", "teacher"):
                results: list[dict] = []
                lock = threading.Lock()

                def worker(
                    model: str = model, results: list[dict] = results, lock: threading.Lock = lock
                ) -> None:
                    for _ in range(args.load_requests):
                        r = timed_request(client, model, prompt, args.tokens)
                        with lock:
                            results.append(r)

                t0 = time.perf_counter()
                threads = [threading.Thread(target=worker) for _ in range(c)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                lat = [r["latency_ms"] for r in results]
                chosen: dict[str, int] = {}
                for r in results:
                    chosen[r["model"]] = chosen.get(r["model"], 0) + 1
                level[model] = {
                    "requests": len(results),
                    "latency_ms_p50": _percentile(lat, 0.5),
                    "latency_ms_p90": _percentile(lat, 0.9),
                    "latency_ms_max": round(max(lat), 3),
                    "within_budget": round(sum(x <= budget_ms for x in lat) / len(lat), 3),
                    "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2),
                    "members": dict(sorted(chosen.items(), key=lambda kv: int(kv[0][1:]))),
                }
                print(
                    f"  c={c:<3} {model:>7}: p50 {level[model]['latency_ms_p50']:8.1f} ms, "
                    f"p90 {level[model]['latency_ms_p90']:8.1f} ms, within budget {level[model]['within_budget']:.0%}, "
                    f"{level[model]['tokens_per_s']:.1f} tok/s, members {level[model]['members']}",
                    flush=True,
                )
            levels.append(level)
        snapshot = server.health()["routing"]
    return {"max_latency_ms": round(budget_ms, 1), "levels": levels, "router": snapshot}


def ensure_student(teacher: str, work: Path) -> str:
    """The every-other-layer student of ``teacher``, initialised (not distilled) once under ``work``."""
    import boomerang as B

    out = work / "student"
    if not (out / "config.json").is_file():
        t = B.load_model(teacher)
        B.save_student(B.init_student(t), out, tokenizer=B.load_tokenizer(teacher), force=True)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument("--student", help="student checkpoint (default: initialise the every-other-layer one)")
    ap.add_argument("--order", default="last", help="last, first or a saved order (.json)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every process")
    ap.add_argument("--levels", default="1,2,4,8", help="concurrency levels of the routing load test")
    ap.add_argument("--load-requests", type=int, default=3, help="requests per client in the load test")
    ap.add_argument("--max-latency-ms", type=float, help="routing budget (default: 2x the teacher's latency)")
    ap.add_argument("--no-copies", action="store_true", help="skip the deep-copies process")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 1 repeat, 8 tokens, levels 1,2")
    ap.add_argument("--workdir", default="/tmp/boomerang-bench-serve")
    ap.add_argument("--results", help="JSON output (default: results/serve.json; with --quick, in --workdir)")
    ap.add_argument("--child", choices=["member", "copies"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--member", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        prompt = json.loads(args.prompt)
        if args.child == "member":
            data = child_member(args.member, prompt, args.tokens, args.threads)
        else:
            data = child_copies(args.teacher, args.student, args.order, prompt, args.tokens, args.threads)
        Path(args.child_out).write_text(json.dumps(data))
        return

    if args.quick:
        args.repeats, args.tokens, args.prompt_tokens, args.load_requests = 1, 8, 16, 2
        args.levels = "1,2"
    args.levels = [int(x) for x in str(args.levels).split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results_path = (
        Path(args.results)
        if args.results
        else (work / "serve-quick.json" if args.quick else RESULTS / "serve.json")
    )

    import torch

    import boomerang as B
    from boomerang.io.loading import load_config

    torch.set_num_threads(args.threads)
    teacher = args.teacher
    student = args.student or ensure_student(teacher, work)
    vocab = int(load_config(teacher).vocab_size)
    prompt = prompt_ids(vocab, args.prompt_tokens)
    t_start = time.perf_counter()

    print("1-2. per member, and the server's memory", flush=True)
    with Server(teacher, student, args) as server:
        members, memory = per_member(server, prompt, args)
    print(
        f"  peak RSS: start {memory['startup_peak_mb']:.0f} MB, teacher+student served {memory['pair_warm_peak_mb']:.0f} "
        f"MB, all {len(members)} members served {memory['all_warm_peak_mb']:.0f} MB "
        f"({memory['ratio_all_warm_vs_pair_warm']:.3f}x)",
        flush=True,
    )
    print("2. one process per member", flush=True)
    memory["one_process_per_member"] = separate_processes(teacher, student, prompt, args)
    memory["one_process_per_member"]["ratio_vs_served"] = round(
        memory["one_process_per_member"]["sum_peak_mb"] / memory["all_warm_peak_mb"], 3
    )
    if not args.no_copies:
        print("2. deep copies", flush=True)
        copies = run_child(
            args,
            "copies",
            "--teacher",
            teacher,
            "--student",
            student,
            "--order",
            args.order,
            "--prompt",
            json.dumps(prompt),
        )
        copies["ratio_vs_served"] = round(copies["peak_mb"] / memory["all_warm_peak_mb"], 3)
        memory["deep_copies"] = copies
    teacher_latency = next(r["latency_ms"] for r in members if "teacher" in r["aliases"])
    budget = args.max_latency_ms or 2 * teacher_latency
    print(f"3. routing under load (budget {budget:.0f} ms)", flush=True)
    route = routing(teacher, student, prompt, budget, args)

    from importlib.metadata import version

    result = {
        "benchmark": "serve",
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {p: version(p) for p in ("torch", "transformers", "starlette", "uvicorn", "openai")},
        "teacher": teacher,
        "student": args.student or f"{student} (initialised, not distilled)",
        "order": args.order,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.tokens,
        "repeats": args.repeats,
        "members": members,
        "memory": memory,
        "routing": route,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "boomerang": B.__version__,
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = results_path.with_name(f".{results_path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(results_path)
    print(f"wrote {results_path} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
