"""The generation engine: one thread runs every forward pass, taking turns among the requests in flight.

Members share their tensors, and a forward pass of one member uses modules that other members hold too (the
embedding, the head, shared layers). Rather than reason about which of transformers' modules are safe to run from
several threads at once, the engine runs all model code on a single thread. Each request (a ``Job``) keeps its own
KV cache; the thread gives every job in flight one step in turn (the prompt's prefill, then one token per step),
so a long generation does not hold up a short one and concurrent requests to different members interleave
token by token. Torch still uses its intra-op threads inside each step.

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

from .members import MemberSet
from .sampling import Sampling, next_token
from .text import TextStream, Tokens

log = logging.getLogger("boomerang.serve")

Event = tuple[Any, ...]
Sink = Callable[[Event], None]
Observer = Callable[[int, str, int, float], None]  # (K, "prefill" | "decode", tokens, seconds)

_ids = itertools.count()


@dataclass
class Job:
    """One request inside the engine: member ``k``, the prompt's token ids, how to sample, and where events go."""

    k: int
    prompt: list[int]
    sampling: Sampling
    sink: Sink
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    # the engine's state
    cache: Any = None
    tokens: list[int] = field(default_factory=list)
    stream: TextStream | None = None
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """Stop generating (the client went away); the engine drops the job at its next turn."""
        self.cancelled = True

    def usage(self) -> dict[str, int]:
        n = len(self.tokens)
        return {
            "prompt_tokens": len(self.prompt),
            "completion_tokens": n,
            "total_tokens": len(self.prompt) + n,
        }


class Engine:
    """Runs jobs on one background thread (see the module docstring)."""

    def __init__(self, members: MemberSet, tokens: Tokens, observer: Observer | None = None) -> None:
        self.members = members
        self.tokens = tokens
        self.observer = observer
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._active: list[Job] = []
        self._in_flight: dict[int, int] = {}  # job id -> K, for every job submitted and not finished
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.peak_active = 0  # the most jobs that have taken turns together

    # ---- control -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="boomerang-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the step in progress, fail the jobs still in flight, and end the thread."""
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
        self._inbox.put(job)
        return job

    def load(self) -> list[int]:
        """The member (K) of every job submitted and not yet finished."""
        with self._lock:
            return list(self._in_flight.values())

    def warm(self, ks: list[int], timeout: float = 600.0) -> None:
        """Build members ``ks`` and run each for one token (blocks until done)."""
        prompt = [self.tokens.bos_id if self.tokens.bos_id is not None else 0]
        self.run_all(
            [(k, prompt, Sampling(max_tokens=1, temperature=0.0, ignore_eos=True)) for k in ks], timeout
        )

    def run_all(self, work: list[tuple[int, list[int], Sampling]], timeout: float = 600.0) -> list[Event]:
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
            self.submit(Job(k, prompt, sampling, sink_for(i)))
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
            for job in list(self._active):
                self._step(job)

    def _shutdown(self) -> None:
        pending = self._active
        while True:
            try:
                job = self._inbox.get(block=False)
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            self._finish(job, ("error", "the server is shutting down"))

    def _finish(self, job: Job, event: Event | None) -> None:
        if job in self._active:
            self._active.remove(job)
        with self._lock:
            self._in_flight.pop(job.id, None)
        job.cache = None  # free the KV cache now
        if event is not None:
            try:
                job.sink(event)
            except Exception:  # a sink must not stop the engine
                log.exception("event sink of job %d failed", job.id)

    def _step(self, job: Job) -> None:
        if job.cancelled:
            self._finish(job, None)
            return
        prefill = job.cache is None
        t0 = time.perf_counter()
        try:
            event = self._advance(job)
        except Exception as e:  # one failing request must not take the others (or the thread) down
            log.exception("generation failed for job %d", job.id)
            self._finish(job, ("error", f"generation failed: {type(e).__name__}: {e}"))
            return
        if (
            self.observer is not None
        ):  # the whole step: forward pass, sampling, detokenizing, sending the text
            n = len(job.prompt) if prefill else 1
            self.observer(job.k, "prefill" if prefill else "decode", n, time.perf_counter() - t0)
        if event is not None:
            self._finish(job, event)

    def _advance(self, job: Job) -> Event | None:
        """One step of ``job`` and its text; the final event once it is done."""
        token = self._forward(job)
        s = job.sampling
        job.tokens.append(token)
        assert job.stream is not None
        if token in self.tokens.eos_ids and not s.ignore_eos:
            self._emit(job, job.stream.flush())
            return ("done", "stop", job.usage())
        delta, stopped = job.stream.add(token)
        self._emit(job, delta)
        if stopped:
            return ("done", "stop", job.usage())
        if len(job.tokens) >= s.max_tokens:
            self._emit(job, job.stream.flush())
            return ("done", "length", job.usage())
        return None

    def _emit(self, job: Job, delta: str) -> None:
        if delta:
            try:
                job.sink(("text", delta))
            except Exception:
                log.exception("event sink of job %d failed", job.id)
                job.cancel()

    def _forward(self, job: Job) -> int:
        """One step of ``job``: the whole prompt at first, then its last token; returns the next token."""
        model = self.members.model(job.k)
        prefill = job.cache is None
        if prefill:
            job.stream = TextStream(self.tokens, job.sampling.stop)
            job.generator = job.sampling.generator()
            inputs = torch.tensor([job.prompt], dtype=torch.long)
        else:
            inputs = torch.tensor([[job.tokens[-1]]], dtype=torch.long)
        with torch.inference_mode():
            out = model(input_ids=inputs.to(model.device), past_key_values=job.cache, use_cache=True)
            token = next_token(out.logits[0, -1], job.sampling, job.generator)
        job.cache = out.past_key_values
        return token
