"""Latency-budget routing: a request for ``auto`` gets the largest member whose estimated latency, under the
load in flight when it arrives, stays within ``--max-latency-ms``.

The estimate follows the engine's schedule (``boomerang.serve.engine``): in every round each member with requests
in flight takes one batched step, so each token of a new request waits for one step of every *other* member in
flight (requests on its own member share its step). For member K, with a prompt of P tokens, ``max_tokens`` = N
and requests in flight on members J:

    latency(K) = P * prefill(K) + others + (N - 1) * (decode(K) + others),   others = sum of decode(j), j in set(J) - {K}

``decode(K)`` (seconds per batched step) and ``prefill(K)`` (seconds per prompt token) are running averages of the
engine's own measured steps (forward pass, sampling, detokenizing and handing over the text; a step of more
requests costs a little more, and the average follows the batch sizes the member actually sees). Speculative
rounds are not part of these averages: the estimate is that of plain decoding. A member not measured yet is
estimated by a least-squares line in parameter count through the members that were (``calibrate`` measures the
student, a middle member and the teacher at start). The estimate is conservative: it assumes every member in
flight keeps running for the whole request and that the request generates all N tokens. If no member fits, the
smallest one is used (the request is served, late).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .members import MemberSet
from .sampling import Sampling

if TYPE_CHECKING:
    from .engine import Engine

ALPHA = 0.2  # weight of a new measurement in the running averages


@dataclass(frozen=True)
class Decision:
    k: int
    estimate_ms: float
    fits: bool
    load: int


class Router:
    """Chooses the member of ``auto`` requests; ``observe`` is the engine's timing callback."""

    def __init__(self, members: MemberSet, max_latency_ms: float, load: Callable[[], list[int]]) -> None:
        self.members = members
        self.budget = max_latency_ms / 1000.0
        self.load = load
        self._decode: dict[int, float] = {}  # seconds per decoding step
        self._prefill: dict[int, float] = {}  # seconds per prompt token
        self._lock = threading.Lock()
        self.chosen: Counter[int] = Counter()

    # ---- measurements --------------------------------------------------------------------------------------
    def observe(self, k: int, kind: str, tokens: int, seconds: float) -> None:
        if kind not in ("prefill", "decode"):
            return
        table, value = (
            (self._prefill, seconds / max(tokens, 1)) if kind == "prefill" else (self._decode, seconds)
        )
        with self._lock:
            old = table.get(k)
            table[k] = value if old is None else old + ALPHA * (value - old)

    def reset(self) -> None:
        with self._lock:
            self._decode.clear()
            self._prefill.clear()

    def calibrate(self, engine: Engine, prompt_tokens: int = 32, steps: int = 8) -> None:
        """Measure a few members (student, middle, teacher) on the engine, after one warm-up pass."""
        m = self.members.m
        ks = sorted({0, m // 2, m})
        if self.members.context is not None:
            prompt_tokens = max(1, min(prompt_tokens, self.members.context - steps - 1))
        prompt = [self.members.family.teacher.config.vocab_size // 2] * prompt_tokens
        sampling = Sampling(max_tokens=steps, temperature=0.0, ignore_eos=True)
        run_all = engine.run_all
        for k in ks:  # warm-up: builds the members, first-call overheads
            run_all([(k, prompt[:4], Sampling(max_tokens=2, temperature=0.0, ignore_eos=True))])
        self.reset()
        for k in ks:  # one at a time, so that no step waits for another job
            run_all([(k, prompt, sampling)])

    def _cost(self, table: dict[int, float], k: int) -> float:
        if k in table:
            return table[k]
        points = [(float(self.members.params(j)), v) for j, v in table.items()]
        x = float(self.members.params(k))
        if not points:
            return 0.0
        xs = [p for p, _ in points]
        if max(xs) == min(xs):
            return sum(v * x / p for p, v in points) / len(points)
        n = len(points)
        mx, my = sum(xs) / n, sum(v for _, v in points) / n
        slope = sum((p - mx) * (v - my) for p, v in points) / sum((p - mx) ** 2 for p in xs)
        return max(0.0, my + max(slope, 0.0) * (x - mx))

    def decode_cost(self, k: int) -> float:
        with self._lock:
            return self._cost(self._decode, k)

    def prefill_cost(self, k: int) -> float:
        with self._lock:
            return self._cost(self._prefill, k)

    @property
    def measured(self) -> bool:
        with self._lock:
            return bool(self._decode)

    # ---- decisions -----------------------------------------------------------------------------------------
    def estimate(self, k: int, prompt_tokens: int, max_tokens: int, load: list[int]) -> float:
        """Estimated seconds from arrival to the last token of a request on member K (see the module docstring)."""
        others = sum(self.decode_cost(j) for j in set(load) - {k})
        first = prompt_tokens * self.prefill_cost(k) + others
        return first + (max_tokens - 1) * (self.decode_cost(k) + others)

    def choose(self, prompt_tokens: int, max_tokens: int) -> Decision:
        """The largest member that fits the budget now, else the smallest member."""
        load = self.load()
        ranked = sorted(range(self.members.m + 1), key=lambda k: (self.members.params(k), k), reverse=True)
        for k in ranked:
            est = self.estimate(k, prompt_tokens, max_tokens, load)
            if est <= self.budget:
                break
        else:
            k = ranked[-1]
            est = self.estimate(k, prompt_tokens, max_tokens, load)
        self.chosen[k] += 1
        return Decision(k=k, estimate_ms=est * 1000.0, fits=est <= self.budget, load=len(load))

    def snapshot(self) -> dict[str, object]:
        """Measured costs and decisions so far (for /health)."""
        with self._lock:
            decode = {self.members.name(k): round(v * 1000, 3) for k, v in sorted(self._decode.items())}
            prefill = {self.members.name(k): round(v * 1000, 4) for k, v in sorted(self._prefill.items())}
        return {
            "max_latency_ms": self.budget * 1000.0,
            "decode_ms_per_token": decode,
            "prefill_ms_per_prompt_token": prefill,
            "chosen": {self.members.name(k): n for k, n in sorted(self.chosen.items())},
        }
