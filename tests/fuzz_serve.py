"""A fuzzer for `boomerang serve` (issue 26, section 6): generated requests against a live server (the CLI in its own
process, on 127.0.0.1) serving a tiny family, each judged against an oracle that knows which requests are invalid
and which field makes them so.

Every request must end in a 2xx with a well-formed answer (only for requests the oracle accepts) or a 4xx whose
error names the field. Counted:

* 5xx: any server error; tracebacks: ``Traceback`` in the server's output; hangs: no answer within the timeout,
  or a cancelled request still in flight afterwards;
* silent acceptances: a 2xx for a request the oracle calls invalid; unexplained refusals: a 4xx for a valid
  request, a 4xx of another status than expected, or an error that does not name the field;
* long echoes: an error body over 600 bytes (errors quote at most a short prefix of what the client sent);
* malformed answers: a 2xx whose body or stream is not what OpenAI's shapes promise;
* memory: the server's RSS after a warm-up and at the end (bounded: it may not grow by more than 150 MiB).

``tests/test_fuzz_serve.py`` runs a short fuzz in the test suite; the full run (at least 1,000 requests)::

    nice -n 19 .venv/bin/python tests/fuzz_serve.py --n 1000 --seed 0 --json fuzz-serve.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import httpx
import psutil
from serve_kit import CliServer, make_family

CONTEXT = 128  # the fuzzed family's context: valid requests below stay well inside it
VOCAB = 96
BODY_KB = 64  # the server's --max-body-kb
SHORT = 600  # the longest error body allowed
MEMORY_BOUND_MB = 150
WORDS = [f"w{i}" for i in range(4, VOCAB)]
NULLABLE = {
    "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "user",
    "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "echo", "best_of", "suffix",
    "max_completion_tokens", "tools", "tool_choice", "response_format", "top_logprobs",
}  # fmt: skip


class Big:
    """An integer too long for Python to print (over 4,300 digits), written into the JSON as it is."""

    def __init__(self, digits: str) -> None:
        self.digits = digits


def dumps(body: Any) -> str:
    """``json.dumps`` that writes ``Big`` integers digit by digit."""
    bigs: list[str] = []

    def default(o: Any) -> str:
        if isinstance(o, Big):
            bigs.append(o.digits)
            return f"__big{len(bigs) - 1}__"
        raise TypeError(type(o).__name__)

    text = json.dumps(body, default=default)
    for i, digits in enumerate(bigs):
        text = text.replace(f'"__big{i}__"', digits, 1)
    return text


@dataclass
class Case:
    """One generated request and what the oracle expects of it."""

    category: str
    method: str = "POST"
    path: str = "/v1/completions"
    body: Any = None  # a dict (sent as JSON), bytes (sent as they are) or None
    status: set[int] = field(default_factory=lambda: {200})  # acceptable statuses
    field: str | None = None  # the field an error must name
    raw: Callable[[str], Any] | None = None  # a socket-level exchange instead of an HTTP request
    stream: bool = False

    @property
    def valid(self) -> bool:
        return bool(self.status & {200})

    def refuse(self, fld: str | None, *status: int) -> Case:
        self.field, self.status = fld, set(status or (400,))
        return self

    def describe(self) -> str:
        body = self.body if not isinstance(self.body, bytes) else self.body[:200]
        text = body if isinstance(body, (str, bytes)) else dumps(body)
        return f"{self.category}: {self.method} {self.path} {str(text)[:300]}"


class Gen:
    """Request generators: each returns a ``Case``."""

    def __init__(self, rng: random.Random, params: list[int]):
        self.rng = rng
        self.params = params  # the members' parameter counts, k0..kM

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def words(self, lo: int = 1, hi: int = 12) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi)))

    def model(self) -> str:
        r = self.rng
        m = len(self.params) - 1
        return r.choice(
            [
                f"k{r.randint(0, m)}",
                "teacher",
                "student",
                f"K{r.randint(0, m)}",
                f" k{r.randint(0, m)} ",
                f"max-params:{r.randint(min(self.params), 10**12)}",
                f"max-params:{math.ceil(max(self.params) / 1e3)}K",
                "max-params:" + "9" * r.randint(20, 50),
            ]
        )

    def sampling(self, body: dict) -> None:
        r = self.rng
        if self.chance(0.7):
            body["max_tokens"] = r.randint(1, 16)
        if self.chance(0.5):
            body["temperature"] = r.choice([0, 0.0, 1, r.uniform(1e-4, 2), 1e-4, 2])
        if self.chance(0.3):
            body["top_p"] = r.choice([1, r.uniform(1e-9, 1), 1e-9])
        if self.chance(0.3):
            body["seed"] = r.choice([0, r.randint(-(2**63), 2**63 - 1), 2**63 - 1, -(2**63)])
        if self.chance(0.3):
            stops = [self.rng.choice(WORDS) for _ in range(r.randint(0, 4))]
            body["stop"] = stops[0] if len(stops) == 1 and self.chance(0.5) else stops
        if self.chance(0.15):
            body["stop"] = "x" * 256
        if self.chance(0.1):
            body["ignore_eos"] = True
        if self.chance(0.1):
            body["user"] = self.words()
        if self.chance(0.1):
            body[r.choice(["frequency_penalty", "presence_penalty"])] = 0
        if self.chance(0.05):
            body["n"] = 1
        if self.chance(0.05):
            body["logprobs"] = r.choice([None, False, 0])
        if self.chance(0.35):
            body["stream"] = True
            if self.chance(0.5):
                body["stream_options"] = {"include_usage": self.chance(0.5)}

    def completion(self) -> Case:
        r = self.rng
        prompt: Any = self.words()
        roll = r.random()
        if roll < 0.15:
            prompt = [r.randint(0, VOCAB - 1) for _ in range(r.randint(0, 12))]
        elif roll < 0.25:
            prompt = [prompt] if self.chance(0.5) else [[r.randint(0, VOCAB - 1) for _ in range(5)]]
        elif roll < 0.3:
            prompt = ""
        body = {"model": self.model(), "prompt": prompt}
        self.sampling(body)
        return Case("valid completion", body=body, stream=bool(body.get("stream")))

    def chat(self) -> Case:
        r = self.rng
        messages: list[dict[str, Any]] = []
        for _ in range(r.randint(1, 4)):
            content: Any = self.words(1, 6)
            if self.chance(0.2):
                content = [{"type": "text", "text": self.words(1, 3)} for _ in range(r.randint(1, 3))]
            message = {"role": r.choice(["system", "developer", "user", "assistant"]), "content": content}
            if self.chance(0.1):
                message["name"] = "someone"
            messages.append(message)
        body = {"model": self.model(), "messages": messages}
        self.sampling(body)
        if self.chance(0.2):
            body.pop("max_tokens", None)  # the chat default: the rest of the context
            body["max_completion_tokens"] = r.randint(1, 16)
        if self.chance(0.05):
            body["response_format"] = {"type": "text"}
        return Case("valid chat", path="/v1/chat/completions", body=body, stream=bool(body.get("stream")))

    def valid(self) -> Case:
        return self.chat() if self.chance(0.4) else self.completion()

    # ---- invalid requests: a valid one with one thing wrong ------------------------------------------------------
    def bad_value(self) -> Case:
        """A field set to a value of the wrong type or out of its range."""
        case = self.valid()
        body = case.body
        r = self.rng
        huge = Big("9" * r.randint(21, 6000)) if self.chance(0.5) else 2 ** r.randint(64, 200)
        pools: dict[str, list[Any]] = {
            "max_tokens": ["5", True, 5.0, 0, -1, 2**31, huge, [], {}, CONTEXT * 2],
            "temperature": ["0.5", True, -0.1, 2.0001, 1e-300, 5e-5, 5e-324, [], 10**400],
            "top_p": [0, -1, 1.5, 1e-320, "1", False],
            "seed": [2**63, -(2**63) - 1, 10**30, huge, 1.5, "7", True],
            "n": [0, -1, 2, 2**40, "1", 1.0],
            "stream": ["true", 1, 0, "yes", []],
            "stop": [["a"] * 5, "y" * 257, [1], [None], {"a": 1}, 5],
            "ignore_eos": [None, "false", 1],
            "stream_options": [{"include_usage": 1}, {"x": True}, "yes", []],
            "user": [5, [], {}],
            "frequency_penalty": [0.5, "0", True, 1e999],
            "logit_bias": [{"5": 1.0}, {"5": "x"}, 3],
            "logprobs": [True, 1, 5, "x"],
            "model": [None, 4, [], "", "k999", "k" + "9" * r.randint(100, 6000), "max-params:0", "max-params:abc",
                      "max-params:" + "9" * r.randint(60, 5000), "k\u0663", "\u212a2", "auto", "gpt-4", "m" * 65,
                      "k1\x00", "k-1", "max-params:-5"],
        }  # fmt: skip
        name = r.choice(sorted(pools))
        value = r.choice(pools[name])
        body[name] = value
        if name == "max_tokens" and case.path.endswith("chat/completions"):
            body.pop("max_completion_tokens", None)
        if name == "stream" or name == "stream_options":
            case.stream = False
        case.category = f"bad {name}"
        # a well-formed name of no member is a 404 (as OpenAI answers it), a malformed one a 400
        return case.refuse(name, *((400, 404) if name == "model" else (400,)))

    def bad_prompt(self) -> Case:
        r = self.rng
        body: dict[str, Any] = {"model": self.model(), "max_tokens": 4}
        prompt = r.choice(
            [
                [5, -1],
                [5, VOCAB],
                [2**40],
                [5, 2**70],
                [[5], [6]],
                ["w5", "w6"],
                [5, "w6"],
                [True],
                {"a": 1},
                None,
                5,
                "w5 " * (CONTEXT + r.randint(0, 50)),
                "\ud800",
                [[[5]]],
            ]
        )
        body["prompt"] = prompt
        return Case("bad prompt", body=body).refuse("prompt")

    def bad_messages(self) -> Case:
        r = self.rng
        body: dict[str, Any] = {"model": self.model(), "max_tokens": 4}
        good = {"role": "user", "content": "w5"}
        body["messages"] = r.choice(
            [
                [],
                [{"role": "robot", "content": "w5"}],
                [{"role": "user"}],
                [{"role": "user", "content": 5}],
                [{"role": "user", "content": [{"type": "image", "text": "x"}]}],
                [{"role": "user", "content": [{"type": "text"}]}],
                [good | {"extra": 1}],
                [good, "w5"],
                "w5",
                None,
                [{"role": "user", "content": "w5 " * (CONTEXT + 10)}],
                [{"role": ["user"], "content": "w5"}],
            ]
        )
        return Case("bad messages", path="/v1/chat/completions", body=body).refuse("messages")

    def unknown_or_unsupported(self) -> Case:
        case = self.valid()
        r = self.rng
        choices = [
            ("temprature", 1),
            ("x" * r.randint(1, 20000), 1),
            ("tools", [{"type": "function"}]),
            ("echo", True),
            ("suffix", "x"),
            ("best_of", 2),
            ("response_format", {"type": "json_object"}),
            ("top_logprobs", 3),
            ("tool_choice", "auto"),
        ]
        name, value = r.choice(choices)
        if case.path.endswith("/completions") and not case.path.endswith("chat/completions"):
            if name in ("tools", "response_format", "top_logprobs", "tool_choice"):
                name = "temprature"  # chat-only fields are unknown to /v1/completions: same outcome, simpler oracle
        elif name in ("echo", "suffix", "best_of"):
            name = "temprature"
        case.body[name] = value
        case.category = "unknown or unsupported field"
        return case.refuse(name[:20])  # an error quotes a long name's prefix only

    def deep(self) -> Case:
        case = self.valid()
        depth = self.rng.choice([33, 40, 200, 5000, 20000])
        name = self.rng.choice(["prompt", "logit_bias", "stop", "user", "messages"])
        text = dumps(case.body)[:-1] + f', "{name}": ' + "[" * depth + "]" * depth + "}"
        return Case("deep nesting", path=case.path, body=text.encode()).refuse(name)

    def non_finite(self) -> Case:
        case = self.valid()
        name = self.rng.choice(["temperature", "top_p", "frequency_penalty", "presence_penalty"])
        literal = self.rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
        text = dumps(case.body)[:-1] + f', "{name}": {literal}' + "}"
        return Case("non-finite number", path=case.path, body=text.encode()).refuse(name)

    def malformed(self) -> Case:
        r = self.rng
        body = r.choice(
            [
                b"",
                b"{",
                b'{"model": "k1", "prompt": ',
                b"[1, 2]",
                b'"text"',
                b"42",
                b"null",
                b"\xff\xfe{}",
                b"\xef\xbb\xbf{}",
                b'{"model": "k1", "prompt": "\xc3\x28"}',
                bytes(r.randrange(256) for _ in range(r.randint(1, 200))),
                b'{"model": "k1", "prompt": "w5", }',
                b"{'model': 'k1'}",
            ]
        )
        path = r.choice(["/v1/completions", "/v1/chat/completions"])
        return Case("malformed body", path=path, body=body).refuse(None)

    def oversize(self) -> Case:
        r = self.rng
        limit = BODY_KB * 1024
        roll = r.random()
        if roll < 0.4:
            case = self.completion()
            case.body.pop("stream", None)
            case.body.pop("stream_options", None)
            case.stream = False
            pad = limit - len(dumps(case.body | {"user": ""})) - r.randint(0, 100)
            case.body["user"] = "u" * pad  # just under the limit: served
            case.category = "body near the limit"
            return case
        if roll < 0.7:
            body = json.dumps({"model": "k1", "prompt": "w5 " * (limit // 3 + r.randint(1, 1000))}).encode()
            return Case("body over the limit", body=body).refuse(None, 413)
        size = r.choice([limit + 1, 10 * limit, 10**12])
        return Case("declared length over the limit", raw=lambda url: lie_about_length(url, size)).refuse(
            None, 413
        )

    def http(self) -> Case:
        r = self.rng
        name = r.choice(
            ["k1", "teacher", "k" + "9" * 5000, "k%D9%A3", "auto", "max-params:1", "%00", "k" * 300]
        )
        choice = r.choice(
            [
                ("GET", "/v1/completions", {405}),
                ("PUT", "/v1/chat/completions", {405}),
                ("GET", "/v1/embeddings", {404}),
                ("GET", "/" + "p" * r.randint(1, 6000), {404}),
                ("GET", "/health", {200}),
                ("GET", "/v1/models", {200}),
                ("GET", f"/v1/models/{name}", {200} if name in ("k1", "teacher") else {400, 404}),
                ("GET", "/", {200}),
                ("GET", "/static/playground.js", {200}),
                ("GET", "/static/../server.py", {404}),
            ]
        )
        method, path, status = choice
        case = Case("http", method=method, path=path, status=status)
        return case if status == {200} else case.refuse(None, *status)

    def raw_http(self) -> Case:
        """Bytes that are not (valid) HTTP: uvicorn answers 400 (or closes the connection), the server goes on. A
        long header is valid HTTP: served, or refused by h11's size limit."""
        r = self.rng
        big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * r.randint(20000, 200000) + b"\r\n\r\n"
        data, status = r.choice(
            [
                (big, (200, 400, 431, -1)),
                (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(r.randrange(256) for _ in range(100)), (400, -1)),
                (b"GET\r\n\r\n", (400,)),
                (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345", (400,)),
                (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", (400,)),
                (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", (400,)),
                (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", (400, -1)),
            ]
        )  # fmt: skip
        return Case("not HTTP", raw=lambda url: send_bytes(url, data)).refuse(None, *status)

    def disconnect(self) -> Case:
        """A long request whose client goes away: streamed or not, or in the middle of sending its body."""
        streamed = self.chance(0.5)
        body = {"model": "k0", "prompt": "w5", "max_tokens": 120, "ignore_eos": True, "stream": streamed}
        mid_body = self.chance(0.3)
        return Case("disconnect", raw=lambda url: disconnect(url, body, mid_body), status={0})


GENERATORS: dict[str, tuple[float, str]] = {
    "valid": (0.28, "valid"),
    "bad_value": (0.25, "bad_value"),
    "bad_prompt": (0.06, "bad_prompt"),
    "bad_messages": (0.06, "bad_messages"),
    "unknown_or_unsupported": (0.07, "unknown_or_unsupported"),
    "deep": (0.05, "deep"),
    "non_finite": (0.05, "non_finite"),
    "malformed": (0.06, "malformed"),
    "oversize": (0.05, "oversize"),
    "http": (0.05, "http"),
    "disconnect": (0.02, "disconnect"),
    "raw_http": (0.02, "raw_http"),
}


def _split(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


def lie_about_length(url: str, size: int) -> int:
    """Declare a body of ``size`` bytes, send 1 KB of it, and read the answer's status."""
    with socket.create_connection(_split(url), timeout=120) as s:
        head = (
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        s.sendall(head.encode() + b"{" * 1024)
        answer = s.recv(4096)
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else -1


def send_bytes(url: str, data: bytes) -> int:
    """Send ``data`` as it is; the status of the answer, or -1 if the server closed the connection without one."""
    with socket.create_connection(_split(url), timeout=120) as s:
        try:
            s.sendall(data)
            answer = s.recv(4096)
        except ConnectionError:
            return -1
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else -1


def disconnect(url: str, body: dict, mid_body: bool) -> int:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(_split(url), timeout=120) as s:
        s.sendall(head + (data[: len(data) // 2] if mid_body else data))
        time.sleep(0.05)
    return 0


@dataclass
class Report:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    silent_acceptances: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    long_echoes: list[str] = field(default_factory=list)
    malformed_answers: list[str] = field(default_factory=list)
    tracebacks: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    shutdown: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "5xx": len(self.server_errors),
            "tracebacks": self.tracebacks,
            "hangs": len(self.hangs),
            "silent_acceptances": len(self.silent_acceptances),
            "unexplained_refusals": len(self.unexplained),
            "long_echoes": len(self.long_echoes),
            "malformed_answers": len(self.malformed_answers),
            "statuses": dict(sorted(self.statuses.items())),
            "by_category": dict(self.by_category.most_common()),
            "rss_mb": self.rss_mb,
            "seconds": round(self.seconds, 1),
            "shutdown": self.shutdown,
        }

    def problems(self) -> dict[str, Any]:
        keys = (
            "server_errors",
            "hangs",
            "silent_acceptances",
            "unexplained",
            "long_echoes",
            "malformed_answers",
        )
        found = {k: getattr(self, k)[:5] for k in keys if getattr(self, k)}
        if self.tracebacks:
            found["tracebacks"] = self.tracebacks
        growth = self.rss_mb.get("growth", 0.0)
        if growth > MEMORY_BOUND_MB:
            found["memory"] = self.rss_mb
        if self.shutdown != "exit 0, stopped":
            found["shutdown"] = self.shutdown
        return found


def check_answer(case: Case, response: httpx.Response, lines: list[str] | None, report: Report, lock) -> None:
    status = response.status_code
    what = case.describe()
    with lock:
        report.statuses[status] += 1
        if status >= 500:
            report.server_errors.append(f"{status} {what} -> {response.text[:300]}")
            return
        if status in case.status and status < 300:
            if case.method == "POST" and not well_formed(case, response, lines):
                report.malformed_answers.append(f"{what} -> {(lines or [response.text])[-3:]}")
            return
        if status < 300:
            report.silent_acceptances.append(f"{status} {what}")
            return
        if len(response.content) > SHORT:
            report.long_echoes.append(f"{len(response.content)} bytes: {what}")
        if status not in case.status:
            report.unexplained.append(
                f"{status} (expected {sorted(case.status)}) {what} -> {response.text[:300]}"
            )
            return
        if status == 405 or (status == 404 and case.field is None):
            return
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            report.unexplained.append(
                f"{status} without an OpenAI error body: {what} -> {response.text[:200]}"
            )
            return
        message = error.get("message") or ""
        named = case.field is None or error.get("param") == case.field or case.field in message
        if not message or not named:
            report.unexplained.append(f"{status} not naming {case.field!r}: {what} -> {message[:300]}")


def well_formed(case: Case, response: httpx.Response, lines: list[str] | None) -> bool:
    chat = case.path.endswith("chat/completions")
    if lines is not None:
        if not lines or lines[-1] != "data: [DONE]":
            return False
        events = [json.loads(line[6:]) for line in lines[:-1]]
        finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        return len(finishes) == 1 and finishes[0] in ("stop", "length") and "error" not in json.dumps(events)
    body = response.json()
    choice = body["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    limit = case.body.get("max_tokens") or case.body.get("max_completion_tokens") or CONTEXT
    return (
        isinstance(text, str)
        and choice["finish_reason"] in ("stop", "length")
        and body["usage"]["completion_tokens"] <= limit
        and re.fullmatch(r"k\d+", body["model"]) is not None
    )


def send(
    client: httpx.Client, url: str, case: Case, timeout: float
) -> tuple[httpx.Response, list[str] | None]:
    base = url.removesuffix("/v1")
    headers = {"content-type": "application/json"}
    content = case.body if isinstance(case.body, bytes) else None if case.body is None else dumps(case.body)
    if case.stream:
        with client.stream(
            case.method, base + case.path, content=content, headers=headers, timeout=timeout
        ) as r:
            if r.status_code != 200:
                r.read()
                return r, None
            return r, [line for line in r.iter_lines() if line]
    return client.request(
        case.method, base + case.path, content=content, headers=headers, timeout=timeout
    ), None


def fuzz(n: int, seed: int, root: Path, timeout: float = 120.0, workers: int = 4, log=print) -> Report:
    """Start a server on a tiny family under ``root``, send ``n`` generated requests, stop it; the report."""
    rng = random.Random(seed)
    t_dir, s_dir = make_family(root / "family", context=CONTEXT)
    report = Report()
    lock = threading.Lock()
    t0 = time.monotonic()
    with CliServer(t_dir, s_dir, "--max-body-kb", str(BODY_KB), "--shutdown-grace", "2") as server:
        url = server.url
        members = httpx.get(url + "/models", timeout=60).json()["data"]
        gen = Gen(rng, [m["parameters"] for m in members])
        names, weights = zip(*((k, w) for k, (w, _) in GENERATORS.items()), strict=True)
        cases = []
        for _ in range(n):
            kind = rng.choices(names, weights)[0]
            cases.append(getattr(gen, GENERATORS[kind][1])())
        proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
        local = threading.local()

        def one(case: Case) -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client()
            try:
                if case.raw is not None:
                    status = case.raw(url)
                    with lock:
                        report.statuses[status] += 1
                        if status not in case.status:
                            report.unexplained.append(
                                f"{status} (expected {sorted(case.status)}) {case.category}"
                            )
                else:
                    response, lines = send(client, url, case, timeout)
                    check_answer(case, response, lines, report, lock)
            except httpx.TimeoutException:
                with lock:
                    report.hangs.append(case.describe())
            except (httpx.TransportError, OSError) as e:
                with lock:
                    report.server_errors.append(
                        f"connection failed ({type(e).__name__}: {e}): {case.describe()}"
                    )
            with lock:
                report.requests += 1
                report.by_category[case.category] += 1
                if report.requests % 100 == 0:
                    log(
                        f"{report.requests} requests, {len(report.server_errors)} 5xx, {len(report.hangs)} hangs"
                    )

        warm = min(50, n)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, cases[:warm]))
            report.rss_mb["after_warmup"] = proc.memory_info().rss / 2**20
            peak = report.rss_mb["after_warmup"]
            for i in range(warm, n, 100):
                list(pool.map(one, cases[i : i + 100]))
                peak = max(peak, proc.memory_info().rss / 2**20)
        report.rss_mb["peak"] = peak
        report.rss_mb["end"] = proc.memory_info().rss / 2**20
        report.rss_mb["growth"] = round(report.rss_mb["end"] - report.rss_mb["after_warmup"], 1)
        # every cancelled or finished request has left the engine
        deadline = time.monotonic() + timeout
        while httpx.get(url.removesuffix("/v1") + "/health", timeout=60).json()["in_flight"]:
            if time.monotonic() > deadline:
                report.hangs.append("requests still in flight after the fuzz")
                break
            time.sleep(0.1)
        server.signal(signal.SIGTERM)
        code = server.wait(120)
        out = server.output()
        report.tracebacks = out.count("Traceback")
        report.shutdown = (
            "exit 0, stopped" if code == 0 and out.rstrip().endswith("stopped") else f"exit {code}"
        )
    report.seconds = time.monotonic() - t0
    report.rss_mb = {k: round(v, 1) for k, v in report.rss_mb.items()}
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as hung")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = fuzz(args.n, args.seed, Path(tmp), args.timeout, args.workers)
    out = {"summary": report.summary(), "problems": report.problems()}
    text = json.dumps(out, indent=1, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
