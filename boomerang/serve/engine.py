"""The generation engine: one thread runs every forward pass, batching the requests in flight (continuous batching).

Members share their tensors, and a forward pass of one member uses modules over tensors that other members use
too. Rather than reason about which of transformers' modules are safe to run from several threads at once, the
engine runs all model code on a single thread, in rounds:

1. requests that arrived since the last round join: each prompt is prefilled alone (its first token comes out);
2. the requests decoding on the same member take one step together: one batched forward pass, one new token
   per request (at most ``max_batch`` requests per pass);
3. each speculative request takes one round of drafting and verification (``boomerang.serve.speculative``).

A request joins and leaves the batch between steps: finished and cancelled requests drop out, new ones join
after their prefill. Each request keeps its own KV cache and runs its own sampling, stop strings and limits, and
its attention runs over its own cache only (``boomerang.serve.kv``), so its tokens do not depend on which
requests share its steps (in bf16 on oneDNN, bit for bit; in fp32 up to the rounding of matrix products, whose
kernels sum in a different order for a different number of rows).

Jobs report through a ``sink`` callable, called on the engine thread with one event at a time:
``("text", delta)``, then ``("done", finish_reason, usage)`` or ``("error", message)``.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .kv import SeqCache
from .members import MemberSet
from .sampling import Sampling, draw, next_token, probabilities
from .speculative import SpecState, SpecStats, accept_greedy, accept_sampled
from .text import TextStream, Tokens

log = logging.getLogger("boomerang.serve")

Event = tuple[Any, ...]
Sink = Callable[[Event], None]
# (K, "prefill" | "decode" | "speculative", tokens, seconds)
Observer = Callable[[int, str, int, float], None]

MAX_BATCH = 16  # requests of one member per forward pass
MAX_GAMMA = 8  # the most tokens a draft proposes per round
GAMMA = 4  # γ of a new pair, and the fixed γ of seeded sampled requests
FIRST_CAPACITY = 256  # completion positions a request's cache holds before it first grows

_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request inside the engine: member ``k``, the prompt's token ids, how to sample, and where events go.
    ``speculative``: decode with a smaller member as draft (when the engine has one for ``k``)."""

    k: int
    prompt: list[int]
    sampling: Sampling
    sink: Sink
    speculative: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    # the engine's state
    cache: SeqCache | None = None
    tokens: list[int] = field(default_factory=list)
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    spec: SpecState | None = None
    done: bool = False

    def cancel(self) -> None:
        """Stop generating (the client went away); the engine drops the job before its next step."""
        self.cancelled = True

    def usage(self) -> dict[str, int]:
        n = len(self.tokens)
        return {
            "prompt_tokens": len(self.prompt),
            "completion_tokens": n,
            "total_tokens": len(self.prompt) + n,
        }


@dataclass
class MemberStats:
    """Counters of one member (``/v1/models``, ``/metrics``)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0  # batched forward passes
    decode_rows: int = 0  # requests over those passes (their mean batch size = rows / steps)
    max_batch: int = 0

    def summary(self) -> dict[str, Any]:
        mean = round(self.decode_rows / self.decode_steps, 3) if self.decode_steps else None
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "decode_steps": self.decode_steps,
            "mean_batch": mean,
            "max_batch": self.max_batch,
        }


class Engine:
    """Runs jobs on one background thread (see the module docstring).

    ``max_batch``: requests of one member per forward pass (1: no batching). ``draft``: the member (K) that
    drafts for speculative jobs on larger members (None: speculative jobs decode plainly). ``max_gamma``: the
    most tokens a draft proposes per round; ``gamma``: γ where it does not adapt (seeded sampled jobs, and every
    job when ``adaptive`` is off).
    """

    def __init__(
        self,
        members: MemberSet,
        tokens: Tokens,
        observer: Observer | None = None,
        *,
        max_batch: int = MAX_BATCH,
        draft: int | None = 0,
        max_gamma: int = MAX_GAMMA,
        gamma: int = GAMMA,
        adaptive: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 1 <= gamma <= max_gamma:
            raise ValueError(f"gamma must be between 1 and max_gamma ({max_gamma}), got {gamma}")
        self.members = members
        self.tokens = tokens
        self.observer = observer
        self.max_batch = max_batch
        self.draft = draft
        self.max_gamma = max_gamma
        self.gamma = gamma
        self.adaptive = adaptive
        self.spec = SpecStats()
        self._stats: dict[int, MemberStats] = {}
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._active: list[Job] = []
        self._in_flight: dict[int, int] = {}  # job id -> K, for every job submitted and not finished
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.peak_active = 0  # the most jobs in flight together
        self.peak_batch = 0  # the most jobs in one forward pass
        self.kv_bytes = 0  # the KV caches of the jobs in flight, at the last round
        self.peak_kv_bytes = 0

    # ---- control -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="boomerang-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the round in progress, fail the jobs still in flight, and end the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(None)
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (any thread); its events go to ``job.sink`` on the engine thread."""
        if not self.running:
            raise RuntimeError("the engine is not running")
        with self._lock:
            self._in_flight[job.id] = job.k
            stats = self._stats.setdefault(job.k, MemberStats())
            stats.requests += 1
            stats.prompt_tokens += len(job.prompt)
        self._inbox.put(job)
        return job

    def load(self) -> list[int]:
        """The member (K) of every job submitted and not yet finished."""
        with self._lock:
            return list(self._in_flight.values())

    def stats(self, k: int) -> dict[str, Any]:
        with self._lock:
            return (self._stats.get(k) or MemberStats()).summary()

    def speculates(self, k: int) -> bool:
        """Whether a speculative job on member K has a draft (a smaller member) here."""
        return self.draft is not None and self.draft < k

    def warm(self, ks: list[int], timeout: float = 600.0) -> None:
        """Build members ``ks`` and run each for one token (blocks until done)."""
        prompt = [self.tokens.bos_id if self.tokens.bos_id is not None else 0]
        self.run_all(
            [(k, prompt, Sampling(max_tokens=1, temperature=0.0, ignore_eos=True)) for k in ks], timeout
        )

    def run_all(
        self,
        work: list[tuple[int, list[int], Sampling]],
        timeout: float = 600.0,
        *,
        speculative: bool = False,
    ) -> list[Event]:
        """Run ``(K, prompt ids, sampling)`` jobs concurrently and wait; returns each job's last event."""
        done = threading.Semaphore(0)
        last: list[Event] = [("error", "timed out")] * len(work)

        def sink_for(i: int) -> Sink:
            def sink(event: Event) -> None:
                if event[0] != "text":
                    last[i] = event
                    done.release()

            return sink

        for i, (k, prompt, sampling) in enumerate(work):
            self.submit(Job(k, prompt, sampling, sink_for(i), speculative=speculative))
        deadline = time.monotonic() + timeout
        for _ in work:
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        return last

    # ---- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                block = not self._active
                while True:
                    job = self._inbox.get(block=block)
                    if job is None:
                        self._shutdown()
                        return
                    self._active.append(job)
                    block = False
            except queue.Empty:
                pass
            self.peak_active = max(self.peak_active, len(self._active))
            self._round()
            self._measure_kv()

    def _round(self) -> None:
        for job in [j for j in self._active if j.cancelled]:
            self._finish(job, None)
        fresh = [j for j in self._active if j.cache is None]
        for job in fresh:
            self._guarded(job, self._prefill)
        groups: dict[int, list[Job]] = {}
        spec: list[Job] = []
        for job in self._active:
            if job in fresh or job.done or job.cancelled:
                continue
            if job.spec is not None:
                spec.append(job)
            else:
                groups.setdefault(job.k, []).append(job)
        for k, jobs in groups.items():
            for i in range(0, len(jobs), self.max_batch):
                self._decode(k, jobs[i : i + self.max_batch])
        for job in spec:
            if not job.cancelled:
                self._guarded(job, self._speculate)

    def _measure_kv(self) -> None:
        slots = {}
        for job in self._active:
            for cache in (job.cache, job.spec.cache if job.spec is not None else None):
                if isinstance(cache, SeqCache):
                    slots.update((id(slot), slot) for slot in cache.slots)
        self.kv_bytes = sum(slot.nbytes() for slot in slots.values())
        self.peak_kv_bytes = max(self.peak_kv_bytes, self.kv_bytes)

    def _shutdown(self) -> None:
        pending = self._active
        while True:
            try:
                job = self._inbox.get(block=False)
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in list(pending):
            self._finish(job, ("error", "the server is shutting down"))

    def _finish(self, job: Job, event: Event | None) -> None:
        if job in self._active:
            self._active.remove(job)
        with self._lock:
            self._in_flight.pop(job.id, None)
        job.cache = None  # free the KV caches now
        job.spec = None
        try:
            if event is not None:
                job.sink(event)
        except Exception:  # a sink must not stop the engine
            log.exception("event sink of job %d failed", job.id)
        finally:
            job.done = True  # only after the final event: a watcher of `done` then has every event

    def _guarded(self, job: Job, step: Callable[[Job], None]) -> None:
        """Run one step of ``job``; a failure ends that job only, not the others or the thread."""
        try:
            step(job)
        except Exception as e:
            log.exception("generation failed for job %d", job.id)
            self._finish(job, ("error", f"generation failed: {type(e).__name__}: {e}"))

    def _observe(self, k: int, kind: str, tokens: int, seconds: float) -> None:
        if self.observer is not None:
            self.observer(k, kind, tokens, seconds)

    def _count(self, k: int, completion: int = 0, rows: int = 0) -> None:
        with self._lock:
            stats = self._stats.setdefault(k, MemberStats())
            stats.completion_tokens += completion
            if rows:
                stats.decode_steps += 1
                stats.decode_rows += rows
                stats.max_batch = max(stats.max_batch, rows)

    # ---- tokens out ----------------------------------------------------------------------------------------
    def _take(self, job: Job, token: int) -> bool:
        """Add one generated token to ``job`` and send its text; True (and the final event sent) when it is done."""
        s = job.sampling
        job.tokens.append(token)
        self._count(job.k, completion=1)
        assert job.stream is not None
        if token in self.tokens.eos_ids and not s.ignore_eos:
            self._emit(job, job.stream.flush())
            self._finish(job, ("done", "stop", job.usage()))
            return True
        delta, stopped = job.stream.add(token)
        self._emit(job, delta)
        if stopped:
            self._finish(job, ("done", "stop", job.usage()))
            return True
        if len(job.tokens) >= s.max_tokens:
            self._emit(job, job.stream.flush())
            self._finish(job, ("done", "length", job.usage()))
            return True
        return False

    def _emit(self, job: Job, delta: str) -> None:
        if delta:
            try:
                job.sink(("text", delta))
            except Exception:
                log.exception("event sink of job %d failed", job.id)
                job.cancel()

    # ---- steps ---------------------------------------------------------------------------------------------
    def _prefill(self, job: Job) -> None:
        """The whole prompt of a new job, alone; its first token."""
        runner = self.members.runner(job.k)
        job.stream = TextStream(self.tokens, job.sampling.stop)
        job.generator = job.sampling.generator()
        hint = len(job.prompt) + min(job.sampling.max_tokens, FIRST_CAPACITY) + self.max_gamma + 1
        t0 = time.perf_counter()
        if job.speculative and self.speculates(job.k):
            logits = self._prefill_speculative(job, hint)
        else:
            job.cache = runner.cache(hint)
            logits = runner.forward([job.cache], [job.prompt], last_only=True)[0, -1]
        token = next_token(logits, job.sampling, job.generator)
        self._observe(job.k, "prefill", len(job.prompt), time.perf_counter() - t0)
        self._take(job, token)

    def _decode(self, k: int, jobs: list[Job]) -> None:
        """One step of ``jobs`` (all on member K) in one forward pass: one new token each."""
        runner = self.members.runner(k)
        t0 = time.perf_counter()
        try:
            logits = runner.forward([j.cache for j in jobs], [[j.tokens[-1]] for j in jobs])[:, -1]  # type: ignore[misc]
        except Exception:
            # find the failing job: one at a time (a failed pass leaves the caches' lengths as they were)
            for job in jobs:
                self._guarded(job, self._decode_one)
            return
        self.peak_batch = max(self.peak_batch, len(jobs))
        self._count(k, rows=len(jobs))
        for b, job in enumerate(jobs):
            self._take(job, next_token(logits[b], job.sampling, job.generator))
        self._observe(k, "decode", len(jobs), time.perf_counter() - t0)

    def _decode_one(self, job: Job) -> None:
        runner = self.members.runner(job.k)
        logits = runner.forward([job.cache], [[job.tokens[-1]]])[0, -1]  # type: ignore[list-item]
        self._count(job.k, rows=1)
        self._take(job, next_token(logits, job.sampling, job.generator))

    # ---- speculative decoding ------------------------------------------------------------------------------
    def _prefill_speculative(self, job: Job, hint: int) -> torch.Tensor:
        """Prefill the draft, then the target (from the draft's hidden states after the layers they share)."""
        assert self.draft is not None
        d, k = self.draft, job.k
        drun, trun = self.members.runner(d), self.members.runner(k)
        shared = self.members.shared_layers(d, k)
        pair = self.spec.pair(d, k, shared)
        s = job.sampling
        # a seeded sampled request keeps γ: it repeats
        adaptive = self.adaptive and (s.greedy or s.seed is None)
        state = SpecState(d, shared, pair, self.gamma, adaptive)
        state.cache = drun.cache(hint)
        job.cache = SeqCache.sharing(state.cache, shared, trun.n_layers, hint) if shared else trun.cache(hint)
        with drun.capture(shared) as seen:
            drun.forward([state.cache], [job.prompt], last_only=True)
        with trun.inject(shared, seen[0] if seen else None):
            logits = trun.forward([job.cache], [job.prompt], last_only=True)[0, -1]
        job.spec = state
        return logits

    def _speculate(self, job: Job) -> None:
        """One round: the draft proposes γ tokens, the target checks them in one pass; 1..γ+1 tokens out."""
        state, cache = job.spec, job.cache
        assert state is not None and cache is not None
        dcache = state.cache
        assert isinstance(dcache, SeqCache)
        s, shared = job.sampling, state.shared_layers
        drun, trun = self.members.runner(state.draft), self.members.runner(job.k)
        committed = job.prompt + job.tokens
        remaining = s.max_tokens - len(job.tokens)
        gamma = min(state.next_gamma(self.max_gamma), remaining - 1)
        t0 = time.perf_counter()
        drafts: list[int] = []
        draft_probs: list[torch.Tensor] = []
        feed = committed[dcache.length :]
        steps = gamma + (1 if shared else 0)  # with shared layers the draft also runs its last token
        step_s: list[float] = []  # the draft's one-token steps (not its catching up on skipped tokens)
        with drun.capture(shared) as seen:
            for i in range(steps):
                ts = time.perf_counter()
                # the draft's logits only propose tokens, unless the target reads its shared layers' states
                logits = drun.forward([dcache], [feed], last_only=True, exact=bool(shared))[0, -1]
                if len(feed) == 1:
                    step_s.append(time.perf_counter() - ts)
                if i == gamma:
                    break
                if s.greedy:
                    token = int(logits.argmax())
                else:
                    q = probabilities(logits, s)
                    token = draw(q, job.generator)
                    draft_probs.append(q)
                drafts.append(token)
                feed = [token]
        t1 = time.perf_counter()
        hidden = torch.cat(seen, dim=1) if shared else None
        with trun.inject(shared, hidden):
            logits = trun.forward([cache], [committed[cache.length :] + drafts])[0]
        t2 = time.perf_counter()
        if s.greedy:
            n, token = accept_greedy(drafts, logits)
        else:
            n, token = accept_sampled(drafts, draft_probs, logits, s, job.generator)
        kept = len(committed) + n  # positions both caches keep: everything before the new last token
        cache.crop(kept)
        dcache.crop(kept)
        state.accepted += n
        state.rejected += int(n < len(drafts))
        state.pair.record(len(drafts), n, n + 1, sum(step_s) / len(step_s) if step_s else 0.0, t2 - t1)
        self._count(job.k, rows=1)
        self._observe(job.k, "speculative", n + 1, t2 - t0)
        for t in [*drafts[:n], token]:
            if self._take(job, t):
                break
