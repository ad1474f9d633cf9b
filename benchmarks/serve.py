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
import contextlib
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
from concurrent.futures import ThreadPoolExecutor
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
        cmd += ["--dtype", served_dtype(args), "--device", args.device, "--log-level", "warning", *extra]
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


def timed_request(
    client: Any,
    model: str,
    prompt: list[int],
    tokens: int,
    *,
    ignore_eos: bool = True,
    speculative: bool | None = None,
) -> dict:
    """One streamed greedy request: latency, time to first token, tokens, text, the member that answered."""
    t0 = time.perf_counter()
    first = None
    usage = None
    member = None
    extra: dict[str, Any] = {"ignore_eos": ignore_eos}
    if speculative is not None:
        extra["speculative"] = speculative
    parts = []
    for chunk in client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    ):
        member = chunk.model
        if chunk.choices and chunk.choices[0].text:
            parts.append(chunk.choices[0].text)
            if first is None:
                first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    n = usage.completion_tokens if usage else 0
    first = first or end
    return {
        "model": member,
        "text": "".join(parts),
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
    # batching on: a burst of concurrent requests on every member at once (each member's requests in one batch)
    burst = [info.id for info in models for _ in range(max(args.clients))]
    with ThreadPoolExecutor(len(burst)) as pool:
        list(pool.map(lambda name: timed_request(client, name, prompt, args.tokens), burst))
    health = server.health()
    memory |= {
        "all_warm_batched_peak_mb": server.peak_mb(),
        "batched_requests": len(burst),
        "peak_batch": health["peak_batch"],
        "peak_kv_cache_mb": round(health["peak_kv_cache_bytes"] / 2**20, 1),
    }
    memory["ratio_all_warm_batched_vs_pair_warm"] = round(
        memory["all_warm_batched_peak_mb"] / memory["pair_warm_peak_mb"], 4
    )
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


# ---- side by side: llama.cpp, batching, speculative decoding, exactness -------------------------------------------

QUESTIONS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain photosynthesis in simple terms.",
    "Give three tips for learning a new language.",
    "What causes the seasons on Earth?",
    "Describe a cat to someone who has never seen one.",
    "How do I boil an egg?",
    "Why is the sky blue?",
)
GGUF_TYPES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}


def chat_prompts(teacher: str, n: int) -> list[list[int]]:
    """``n`` chat prompts (the teacher's template, the assistant's turn opened) as token ids."""
    import boomerang as B

    tok = B.load_tokenizer(teacher)
    prompts = []
    for q in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]:
        if not getattr(tok, "chat_template", None):  # a tokenizer without one (tiny test models): the text
            prompts.append(list(tok(q)["input_ids"]))
            continue
        ids = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        prompts.append(list(ids["input_ids"]))
    return prompts


def served_dtype(args: argparse.Namespace) -> str:
    """The dtype ``boomerang serve --dtype args.dtype`` runs in here (auto: as the server chooses; once)."""
    if getattr(args, "served_dtype", None) is None:
        from boomerang.serve.options import choose

        args.served_dtype = (
            args.dtype if args.dtype != "auto" else choose("auto", args.device).dtype or "float32"
        )
    return args.served_dtype


class LlamaServer:
    """One GGUF file served by llama.cpp through llama-cpp-python, behind the same OpenAI-style HTTP endpoint
    (``/v1/completions``, streamed) as ``boomerang serve``, in its own process (``child_llama``)."""

    def __init__(self, gguf: str, args: argparse.Namespace, n_ctx: int) -> None:
        self.port = _free_port()
        cmd = [sys.executable, __file__, "--child", "llama", "--member", gguf, "--port", str(self.port)]
        cmd += ["--threads", str(args.threads), "--n-ctx", str(n_ctx)]
        self.proc = subprocess.Popen(cmd, env=_env(args.threads), stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    __enter__ = Server.__enter__
    __exit__ = Server.__exit__
    client = Server.client


def child_llama(gguf: str, port: int, threads: int, n_ctx: int) -> None:
    """Serve ``gguf`` with llama-cpp-python: one request at a time (as llama-cpp-python's own server does: its
    ``Llama`` object decodes one sequence), greedy, streamed as OpenAI's completion chunks."""
    import llama_cpp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    llm = llama_cpp.Llama(
        model_path=gguf,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
        logits_all=False,
    )
    eos = llm.token_eos()
    lock = threading.Lock()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": gguf})

    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        prompt, tokens, ignore_eos = body["prompt"], int(body["max_tokens"]), bool(body.get("ignore_eos"))

        def events():
            count = [0]

            def processor(ids: Any, scores: Any) -> Any:  # called once per generated token
                count[0] += 1
                if ignore_eos:
                    scores[eos] = -float("inf")
                return scores

            with lock:
                # forget the previous prompt: llama-cpp-python reuses the longest prefix it shares with the last
                # one (a repeated prompt would be prefilled as one token), and boomerang serve caches no prefixes
                llm.reset()
                for chunk in llm.create_completion(
                    prompt=prompt,
                    max_tokens=tokens,
                    temperature=0.0,
                    stream=True,
                    logits_processor=llama_cpp.LogitsProcessorList([processor]),
                ):
                    chunk["model"] = "llama.cpp"
                    yield f"data: {json.dumps(chunk)}\n\n"
            # the processor may run once more than tokens are returned (33 calls for 32 tokens of multi-byte text
            # were seen): the completion has at most max_tokens tokens
            n = min(count[0], tokens)
            usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
            last = {"id": "x", "object": "text_completion", "created": 0, "model": "llama.cpp", "choices": []}
            yield f"data: {json.dumps(last | {'usage': usage})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[Route("/health", health), Route("/v1/completions", completions, methods=["POST"])]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def single_client(client: Any, model: str, prompt: list[int], args: argparse.Namespace) -> dict:
    """One warm-up, then ``--repeats`` requests one at a time: medians of tokens/s, TTFT and latency."""
    timed_request(client, model, prompt, args.tokens)
    return summarise([timed_request(client, model, prompt, args.tokens) for _ in range(args.repeats)], args)


def summarise(runs: list[dict], args: argparse.Namespace) -> dict:
    """Medians of tokens/s, TTFT and latency over single-client requests."""
    assert all(r["tokens"] == args.tokens for r in runs), runs
    return {
        "tokens_per_s": _median([r["tokens_per_s"] for r in runs]),
        "decode_tokens_per_s": _median([r["decode_tokens_per_s"] for r in runs]),
        "ttft_ms": _median([r["ttft_ms"] for r in runs]),
        "latency_ms": _median([r["latency_ms"] for r in runs]),
    }


def closed_loop(client: Any, model: str, prompt: list[int], clients: int, args: argparse.Namespace) -> dict:
    """``clients`` clients, each sending ``--load-requests`` requests back to back: aggregate tokens/s, latency."""
    results: list[dict] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker() -> None:
        start.wait()
        for _ in range(args.load_requests):
            r = timed_request(client, model, prompt, args.tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [r["latency_ms"] for r in results]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2),
        "latency_ms_p50": _percentile(lat, 0.5),
        "latency_ms_p95": _percentile(lat, 0.95),
        "ttft_ms_p50": _percentile([r["ttft_ms"] for r in results], 0.5),
    }


def gguf_files(teacher: str, student: str, ks: list[int], args: argparse.Namespace) -> dict[int, str] | str:
    """Member K -> its GGUF file (``--gguf K=FILE``, else exported here); a string says why there are none."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama_cpp is not importable: pip install llama-cpp-python (building it from source is fine)"
    given = dict(item.split("=", 1) for item in args.gguf)
    if given:
        missing = [k for k in ks if f"k{k}" not in given]
        if missing:
            return f"--gguf gives no file for {', '.join(f'k{k}' for k in missing)}"
        return {k: given[f"k{k}"] for k in ks}
    try:
        from boomerang.io.gguf_export import export_gguf
    except ImportError:
        return "this boomerang has no GGUF exporter (boomerang.io.gguf_export): pass --gguf kN=FILE for each member"
    import boomerang as B

    fam_dir = Path(args.workdir) / "family"  # every member, if the memory part wrote them
    if not (fam_dir / "family.json").is_file():
        fam_dir = Path(args.workdir) / f"family-{'-'.join(f'k{k}' for k in ks)}"
        if not (fam_dir / "family.json").is_file():
            B.export_family(teacher, student, fam_dir, order=args.order, sizes=ks, force=True)
    rows = {row["K"]: row for row in json.loads((fam_dir / "family.json").read_text())["members"]}
    files = {}
    for k in ks:
        out = Path(args.workdir) / "gguf" / f"k{k}.{args.gguf_type}.gguf"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            export_gguf(fam_dir / rows[k]["dir"], out, type=args.gguf_type)
        files[k] = str(out)
    return files


def side_by_side(teacher: str, student: str, prompt: list[int], m: int, args: argparse.Namespace) -> dict:
    """Part 4: the same members, prompt, new tokens and threads, served by boomerang and by llama.cpp. The two
    servers take turns request by request (the order alternating between repeats), and closed loop by closed loop,
    so that the machine's drift over the run falls on both alike."""
    ks = sorted({0, m // 2, m})
    load_k = m
    out: dict[str, Any] = {"members": [f"k{k}" for k in ks], "load_member": f"k{load_k}", "interleaved": True}
    files = gguf_files(teacher, student, ks, args)
    n_ctx = len(prompt) + args.tokens + 16
    single: dict[str, dict[str, dict]] = {"boomerang": {}, "llama.cpp": {}}
    load: dict[str, list[dict]] = {"boomerang": [], "llama.cpp": []}

    def report(name: str, k: int, row: dict) -> None:
        if "clients" in row:
            print(
                f"  {name} k{k} x{row['clients']}: {row['tokens_per_s']:.1f} tok/s, p50 {row['latency_ms_p50']:.0f} ms, "
                f"p95 {row['latency_ms_p95']:.0f} ms",
                flush=True,
            )
        else:
            print(f"  {name} k{k}: {row['tokens_per_s']:.1f} tok/s, ttft {row['ttft_ms']:.0f} ms", flush=True)

    with Server(teacher, student, args, "--max-batch", str(args.max_batch)) as server:
        ours = server.client()
        for k in ks:
            with contextlib.ExitStack() as stack:
                clients = {"boomerang": ours}
                if not isinstance(files, str):
                    clients["llama.cpp"] = stack.enter_context(LlamaServer(files[k], args, n_ctx)).client()
                names = list(clients)
                runs: dict[str, list[dict]] = {name: [] for name in names}
                for name in names:
                    timed_request(clients[name], f"k{k}", prompt, args.tokens)  # warm-up
                for i in range(args.repeats):
                    for name in names[::-1] if i % 2 else names:
                        runs[name].append(timed_request(clients[name], f"k{k}", prompt, args.tokens))
                for name in names:
                    single[name][f"k{k}"] = summarise(runs[name], args)
                    report(name, k, single[name][f"k{k}"])
                if k == load_k:
                    for i, c in enumerate(args.clients):
                        for name in names[::-1] if i % 2 else names:
                            load[name].append(closed_loop(clients[name], f"k{k}", prompt, c, args))
                            report(name, k, load[name][-1])
        health = server.health()
    out["boomerang"] = {
        "dtype": served_dtype(args),
        "max_batch": args.max_batch,
        "single_client": single["boomerang"],
        "load": load["boomerang"],
        "peak_batch": health["peak_batch"],
    }
    if isinstance(files, str):
        print(f"  llama.cpp: skipped ({files})", flush=True)
        out["llama.cpp"] = {"skipped": files}
        return out
    from importlib.metadata import version

    out["llama.cpp"] = {
        "gguf_type": args.gguf_type,
        "files": {f"k{k}": f for k, f in files.items()},
        "llama_cpp_python": version("llama_cpp_python"),
        "single_client": single["llama.cpp"],
        "load": load["llama.cpp"],
    }
    b, ll = out["boomerang"], out["llama.cpp"]
    out["ratios"] = {
        "single_client_vs_llama_cpp": {
            k: round(b["single_client"][k]["tokens_per_s"] / v["tokens_per_s"], 3)
            for k, v in ll["single_client"].items()
        },
        "load_vs_llama_cpp": {
            str(x["clients"]): round(x["tokens_per_s"] / y["tokens_per_s"], 3)
            for x, y in zip(b["load"], ll["load"], strict=True)
        },
        "boomerang_load_vs_single": {
            str(x["clients"]): round(x["tokens_per_s"] / b["load"][0]["tokens_per_s"], 3) for x in b["load"]
        },
    }
    return out


def speculative(teacher: str, student: str, args: argparse.Namespace, m: int) -> dict:
    """Part 5: greedy speculative decoding against plain decoding, on chat prompts: the same text, tokens/s, and
    the acceptance rate the server reports (the teacher, and the middle member)."""
    prompts = chat_prompts(teacher, args.spec_prompts)
    out: dict[str, Any] = {"draft": args.draft, "gamma": args.gamma or "adaptive", "prompts": len(prompts)}
    out["max_tokens"] = args.tokens
    extra = ["--draft", args.draft, "--max-gamma", str(args.max_gamma)]
    extra += ["--gamma", str(args.gamma)] if args.gamma else []
    with Server(teacher, student, args, *extra) as server:
        client = server.client()
        for k in sorted({m // 2, m}):
            name = f"k{k}"
            for p in prompts[:1]:  # warm-up
                timed_request(client, name, p, 4, ignore_eos=False)
                timed_request(client, name, p, 4, ignore_eos=False, speculative=True)
            plain, spec = [], []
            for p in prompts:
                plain.append(timed_request(client, name, p, args.tokens, ignore_eos=False, speculative=False))
                spec.append(timed_request(client, name, p, args.tokens, ignore_eos=False, speculative=True))
            stats = client.models.retrieve(name).model_extra["speculative"]
            tokens_plain = sum(r["tokens"] for r in plain)
            tokens_spec = sum(r["tokens"] for r in spec)
            row = {
                "same_text": sum(a["text"] == b["text"] for a, b in zip(plain, spec, strict=True)),
                "plain_tokens_per_s": round(tokens_plain / sum(r["latency_ms"] for r in plain) * 1000, 2),
                "speculative_tokens_per_s": round(tokens_spec / sum(r["latency_ms"] for r in spec) * 1000, 2),
                "server": stats[0] if stats else None,
            }
            row["speedup"] = round(row["speculative_tokens_per_s"] / row["plain_tokens_per_s"], 3)
            out[name] = row
            print(
                f"  {name} drafted by {args.draft}: {row['same_text']}/{len(prompts)} texts equal, "
                f"{row['plain_tokens_per_s']:.1f} -> {row['speculative_tokens_per_s']:.1f} tok/s "
                f"({row['speedup']:.2f}x), acceptance {stats[0]['acceptance_rate'] if stats else None}",
                flush=True,
            )
    return out


def exactness(teacher: str, student: str, args: argparse.Namespace) -> dict:
    """Part 6 (in this process, no HTTP): greedy token ids of chat prompts, for the teacher and the middle member,
    alone against batched and against speculative, in each dtype; and the teacher's bf16 text against fp32."""
    import statistics as st

    import torch

    import boomerang as B
    from boomerang.serve.engine import Job
    from boomerang.serve.sampling import Sampling
    from boomerang.serve.service import Service

    prompts = chat_prompts(teacher, args.spec_prompts)
    greedy = Sampling(max_tokens=args.exact_tokens, temperature=0.0, ignore_eos=True)

    def generate(service: Service, k: int, batch: list[list[int]], spec: bool = False) -> list[list[int]]:
        jobs = [service.engine.submit(Job(k, p, greedy, lambda ev: None, speculative=spec)) for p in batch]
        while not all(j.done for j in jobs):
            time.sleep(0.01)
        return [list(j.tokens) for j in jobs]

    def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
        firsts = [
            next((i for i, (x, y) in enumerate(zip(u, v, strict=True)) if x != y), len(u))
            for u, v in zip(a, b, strict=True)
        ]
        return {
            "identical": sum(f == len(u) for f, u in zip(firsts, a, strict=True)),
            "of": len(a),
            "first_difference": firsts,
        }

    out: dict[str, Any] = {"prompts": len(prompts), "new_tokens": args.exact_tokens, "draft": args.draft}
    teacher_ids = {}
    for dtype in ("float32", "bfloat16"):
        family = B.Family(teacher, student, dtype=dtype)
        if args.device != "cpu":
            family.to(args.device)
        service = Service(family, order=args.order, draft=args.draft)
        torch.set_num_threads(args.threads)
        service.start()
        m = service.members.m
        for k in sorted({m // 2, m}):
            alone = [generate(service, k, [p])[0] for p in prompts]
            batched = generate(service, k, prompts)
            spec = [generate(service, k, [p], spec=True)[0] for p in prompts]
            out[f"{dtype} k{k}"] = {
                "batched": agreement(alone, batched),
                "speculative": agreement(alone, spec),
            }
            print(
                f"  {dtype} k{k}: batched {out[f'{dtype} k{k}']['batched']['identical']}/{len(prompts)}, speculative {out[f'{dtype} k{k}']['speculative']['identical']}/{len(prompts)} identical to alone",
                flush=True,
            )
            if k == m:
                teacher_ids[dtype] = alone
        service.stop()
    prec = agreement(teacher_ids["float32"], teacher_ids["bfloat16"])
    prec["median_first_difference"] = st.median(prec["first_difference"])
    out["bf16_vs_fp32_teacher"] = prec
    print(
        f"  teacher bf16 vs fp32: {prec['identical']}/{len(prompts)} identical for {args.exact_tokens} tokens; first differences at {prec['first_difference']}",
        flush=True,
    )
    return out


def ensure_student(teacher: str, work: Path) -> str:
    """The every-other-layer student of ``teacher``, initialised (not distilled) once under ``work``."""
    import boomerang as B

    out = work / "student"
    if not (out / "config.json").is_file():
        t = B.load_model(teacher)
        B.save_student(B.init_student(t), out, tokenizer=B.load_tokenizer(teacher), force=True)
    return str(out)


PARTS = ("members", "memory", "routing", "speed", "speculative", "exactness")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument("--student", help="student checkpoint (default: initialise the every-other-layer one)")
    ap.add_argument("--order", default="last", help="last, first or a saved order (.json)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run, of {','.join(PARTS)}")
    ap.add_argument("--dtype", default="auto", help="the servers' --dtype (auto: as boomerang serve chooses)")
    ap.add_argument("--device", default="cpu", help="the servers' --device (llama.cpp runs on the CPU)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch (and llama.cpp) threads of every process")
    ap.add_argument("--levels", default="1,2,4,8", help="concurrency levels of the routing load test")
    ap.add_argument("--clients", default="1,4,8", help="concurrency levels of the side-by-side load test")
    ap.add_argument("--load-requests", type=int, default=3, help="requests per client in the load tests")
    ap.add_argument("--max-batch", type=int, default=16, help="boomerang serve --max-batch in the speed part")
    ap.add_argument("--max-latency-ms", type=float, help="routing budget (default: 2x the teacher's latency)")
    ap.add_argument("--no-copies", action="store_true", help="skip the deep-copies process")
    ap.add_argument(
        "--gguf", action="append", default=[], metavar="kN=FILE", help="llama.cpp's file for member kN"
    )
    ap.add_argument("--gguf-type", help="GGUF type to export (default: the servers' dtype: bf16, f32 or f16)")
    ap.add_argument("--draft", default="student", help="the draft of the speculative parts")
    ap.add_argument("--max-gamma", type=int, default=8)
    ap.add_argument("--gamma", type=int, help="a fixed γ for the speculative part (default: it adapts)")
    ap.add_argument(
        "--spec-prompts", type=int, default=8, help="chat prompts of the speculative and exactness parts"
    )
    ap.add_argument(
        "--exact-tokens", type=int, default=48, help="new tokens per prompt in the exactness part"
    )
    ap.add_argument("--quick", action="store_true", help="a smoke test: 1 repeat, 8 tokens, levels 1,2")
    ap.add_argument("--workdir", default="/tmp/boomerang-bench-serve")
    ap.add_argument("--results", help="JSON output (default: results/serve.json; with --quick, in --workdir)")
    ap.add_argument("--child", choices=["member", "copies", "llama"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--member", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-ctx", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "llama":
        child_llama(args.member, args.port, args.threads, args.n_ctx)
        return
    if args.child:
        prompt = json.loads(args.prompt)
        if args.child == "member":
            data = child_member(args.member, prompt, args.tokens, args.threads)
        else:
            data = child_copies(args.teacher, args.student, args.order, prompt, args.tokens, args.threads)
        Path(args.child_out).write_text(json.dumps(data))
        return

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown --parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if "memory" in parts and "members" not in parts:
        raise SystemExit("--parts memory needs members (the same server process measures both)")
    if args.quick:
        args.repeats, args.tokens, args.prompt_tokens, args.load_requests = 1, 8, 16, 2
        args.levels, args.clients, args.spec_prompts, args.exact_tokens = "1,2", "1,2", 2, 8
    args.levels = [int(x) for x in str(args.levels).split(",")]
    args.clients = [int(x) for x in str(args.clients).split(",")]
    bad = [g for g in args.gguf if "=" not in g or not g.split("=", 1)[0].startswith("k")]
    if bad:
        raise SystemExit(f"--gguf takes kN=FILE, got {bad[0]!r}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    everything = set(parts) == set(PARTS)
    name = "serve.json" if everything else f"serve-{'-'.join(parts)}.json"
    results_path = Path(args.results) if args.results else (work if args.quick else RESULTS) / name
    if args.quick and not args.results:
        results_path = results_path.with_name(results_path.stem + "-quick.json")

    import torch

    import boomerang as B
    from boomerang.io.loading import load_config

    torch.set_num_threads(args.threads)
    teacher = args.teacher
    student = args.student or ensure_student(teacher, work)
    vocab = int(load_config(teacher).vocab_size)
    m = int(getattr(load_config(student), "num_hidden_layers", 0) or load_config(student).n_layer)
    prompt = prompt_ids(vocab, args.prompt_tokens)
    args.gguf_type = args.gguf_type or GGUF_TYPES.get(served_dtype(args), "f16")
    t_start = time.perf_counter()
    result: dict[str, Any] = {}

    members: list[dict] = []
    if "members" in parts:
        print("1-2. per member, and the server's memory", flush=True)
        with Server(teacher, student, args) as server:
            members, memory = per_member(server, prompt, args)
        result["members"] = members
        print(
            f"  peak RSS: start {memory['startup_peak_mb']:.0f} MB, teacher+student served "
            f"{memory['pair_warm_peak_mb']:.0f} MB, all {len(members)} members served "
            f"{memory['all_warm_peak_mb']:.0f} MB ({memory['ratio_all_warm_vs_pair_warm']:.3f}x), and with "
            f"{memory['batched_requests']} requests in batches {memory['all_warm_batched_peak_mb']:.0f} MB "
            f"({memory['ratio_all_warm_batched_vs_pair_warm']:.3f}x)",
            flush=True,
        )
        if "memory" in parts:
            print("2. one process per member", flush=True)
            memory["one_process_per_member"] = separate_processes(teacher, student, prompt, args)
            memory["one_process_per_member"]["ratio_vs_served"] = round(
                memory["one_process_per_member"]["sum_peak_mb"] / memory["all_warm_peak_mb"], 3
            )
            if not args.no_copies:
                print("2. deep copies", flush=True)
                params = ["--teacher", teacher, "--student", student, "--order", args.order]
                copies = run_child(args, "copies", *params, "--prompt", json.dumps(prompt))
                copies["ratio_vs_served"] = round(copies["peak_mb"] / memory["all_warm_peak_mb"], 3)
                memory["deep_copies"] = copies
        result["memory"] = memory
    if "routing" in parts:
        teacher_latency = next((r["latency_ms"] for r in members if "teacher" in r["aliases"]), None)
        if teacher_latency is None and args.max_latency_ms is None:
            raise SystemExit("--parts routing without members needs --max-latency-ms")
        budget = args.max_latency_ms or 2 * teacher_latency
        print(f"3. routing under load (budget {budget:.0f} ms)", flush=True)
        result["routing"] = routing(teacher, student, prompt, budget, args)
    if "speed" in parts:
        print(f"4. side by side with llama.cpp ({served_dtype(args)}, GGUF {args.gguf_type})", flush=True)
        result["speed"] = side_by_side(teacher, student, prompt, m, args)
    if "speculative" in parts:
        print(f"5. speculative decoding (draft {args.draft})", flush=True)
        result["speculative"] = speculative(teacher, student, args, m)
    if "exactness" in parts:
        print("6. exactness: batched and speculative against alone; bf16 against fp32", flush=True)
        result["exactness"] = exactness(teacher, student, args)

    from importlib.metadata import version

    from boomerang.train.precision import machine

    result = {
        "benchmark": "serve",
        "parts": parts,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            **machine(),
        },
        "versions": {p: version(p) for p in ("torch", "transformers", "starlette", "uvicorn", "openai")},
        "teacher": teacher,
        "student": args.student or f"{student} (initialised, not distilled)",
        "order": args.order,
        "dtype": served_dtype(args),
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.tokens,
        "repeats": args.repeats,
        **result,
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
