"""The HTTP-free core of a server: a family's members, the engine and the router, turning validated requests
into engine jobs (``Service.prepare`` and ``Service.submit``) and answering the informational endpoints.

Requests are validated and tokenized on the caller's thread (the server's thread pool); the generation runs on
the engine's thread (``boomerang.serve.engine``). ``boomerang.serve.server.FamilyServer`` puts it behind HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import BoomerangError
from .engine import GAMMA, MAX_BATCH, MAX_GAMMA, Engine, Job, Sink
from .members import AUTO, MemberSet, UnknownMember
from .options import check_engine_options
from .protocol import APIError, ChatRequest, CompletionRequest, clip
from .router import Decision, Router
from .sampling import Sampling
from .text import NoChatTemplate, Tokens

if TYPE_CHECKING:
    from ..core.plan import PatchOrder
    from ..family import Family

Kind = Literal["completion", "chat"]
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 1024  # the chat default when the model's context length is unknown (else: the rest of it)


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    kind: Kind
    k: int
    prompt: list[int]
    sampling: Sampling
    stream: bool
    include_usage: bool
    decision: Decision | None = None
    speculative: bool = False


class Service:
    """Every member of ``family`` (under ``order``), ready to take requests; see the module docstring.

    ``max_latency_ms`` enables ``auto`` (``boomerang.serve.router``); ``chat_template`` (Jinja text) replaces
    the tokenizer's own. ``max_batch``: requests of one member per forward pass (1: no batching).
    ``speculative``: requests decode speculatively unless they say otherwise; ``draft``: the member that drafts
    (a name such as ``student`` or ``k2``; the student by default); ``max_gamma``: the most tokens it drafts per
    round; ``gamma``: a fixed number of tokens it drafts per round (default: γ adapts to the acceptance rate).
    """

    def __init__(
        self,
        family: Family,
        *,
        order: str | PatchOrder | None = None,
        max_latency_ms: float | None = None,
        chat_template: str | None = None,
        max_batch: int = MAX_BATCH,
        speculative: bool = False,
        draft: str = "student",
        max_gamma: int = MAX_GAMMA,
        gamma: int | None = None,
    ) -> None:
        if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
            raise BoomerangError(f"--max-latency-ms must be a positive number, got {max_latency_ms}")
        check_engine_options(max_batch, max_gamma, gamma)
        self.family = family
        self.members = MemberSet(family, family.order(order))
        self.tokens = Tokens(family.tokenizer, chat_template)
        self.tokens.add_eos(getattr(getattr(family.teacher, "generation_config", None), "eos_token_id", None))
        self.vocab = int(family.teacher.config.vocab_size)
        self.router: Router | None = None
        self.speculative = speculative
        try:
            draft_k = self.members.resolve(draft)
        except BoomerangError as e:
            raise BoomerangError(f"--draft: {e}") from None
        if draft_k >= self.members.m:
            raise BoomerangError(
                f"--draft {draft} is the teacher: the draft must be a smaller member (e.g. student or "
                f"k{max(0, self.members.m // 2)})"
            )
        self.engine = Engine(
            self.members,
            self.tokens,
            max_batch=max_batch,
            draft=draft_k,
            max_gamma=max_gamma,
            gamma=gamma or min(GAMMA, max_gamma),
            adaptive=gamma is None,
        )
        if max_latency_ms is not None:
            self.router = Router(self.members, max_latency_ms, self.engine.load)
            self.engine.observer = self.router.observe

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self, calibrate: bool = True) -> None:
        """Start the engine thread (and measure a few members for the router, once)."""
        if self.engine.running:
            return
        self.engine.start()
        if calibrate and self.router is not None and not self.router.measured:
            self.router.calibrate(self.engine)

    def stop(self) -> None:
        self.engine.stop()

    # ---- requests ------------------------------------------------------------------------------------------
    def prepare(self, kind: Kind, request: CompletionRequest | ChatRequest) -> Prepared:
        """Member, prompt ids and sampling of a validated request; ``APIError`` (4xx) for what cannot be served."""
        name = request.model.strip().lower()
        auto = name == AUTO and self.router is not None
        k = -1 if auto else self._member(request.model)
        if isinstance(request, ChatRequest):
            prompt = self._chat_prompt(request)
            limit = request.limit()
        else:
            prompt = self._completion_prompt(request)
            limit = request.max_tokens if request.max_tokens is not None else COMPLETION_MAX_TOKENS
        context = self.members.context
        where = "messages" if kind == "chat" else "prompt"
        if context is not None and len(prompt) >= context:
            raise APIError(
                400,
                f"this model's maximum context length is {context} tokens, but the {where} alone has "
                f"{len(prompt)} tokens: shorten it",
                param=where,
                code="context_length_exceeded",
            )
        if limit is None:
            limit = context - len(prompt) if context is not None else CHAT_MAX_TOKENS
        if context is not None and len(prompt) + limit > context:
            raise APIError(
                400,
                f"this model's maximum context length is {context} tokens, but the request asks for "
                f"{len(prompt) + limit} ({len(prompt)} in the {where} + {limit} max_tokens): lower max_tokens "
                f"to at most {context - len(prompt)} or shorten the {where}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        sampling = Sampling(
            max_tokens=limit,
            temperature=1.0 if request.temperature is None else float(request.temperature),
            top_p=1.0 if request.top_p is None else float(request.top_p),
            seed=request.seed,
            stop=request.stops(),
            ignore_eos=request.ignore_eos,
        )
        decision = None
        if auto:
            assert self.router is not None
            decision = self.router.choose(len(prompt), limit)
            k = decision.k
        stream = bool(request.stream)
        usage = bool(stream and request.stream_options and request.stream_options.include_usage)
        speculative = self.speculative if request.speculative is None else request.speculative
        return Prepared(kind, k, prompt, sampling, stream, usage, decision, speculative)

    def _member(self, model: str) -> int:
        try:
            return self.members.resolve(model)
        except UnknownMember as e:
            raise APIError(404, str(e), param="model", code="model_not_found") from None
        except BoomerangError as e:
            raise APIError(400, str(e), param="model") from None

    def _completion_prompt(self, request: CompletionRequest) -> list[int]:
        prompt = request.single_prompt()
        if isinstance(prompt, str):
            ids = self.tokens.encode(prompt)
        else:
            bad = [i for i in prompt if not 0 <= i < self.vocab]
            if bad:
                raise APIError(
                    400,
                    f"prompt: token ids {bad[:5]} are outside the vocabulary (0..{self.vocab - 1})",
                    param="prompt",
                )
            ids = list(prompt)
        if not ids:
            if self.tokens.bos_id is None:
                raise APIError(
                    400, "prompt: the prompt is empty and the tokenizer has no BOS token", param="prompt"
                )
            ids = [int(self.tokens.bos_id)]
        return ids

    def _chat_prompt(self, request: ChatRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            return self.tokens.chat(messages)
        except NoChatTemplate as e:
            raise APIError(400, str(e), param="messages") from None
        except Exception as e:  # the template itself refused the messages (e.g. roles out of order)
            raise APIError(
                400, f"messages: the chat template cannot render them: {clip(str(e), 200)}", param="messages"
            ) from None

    def submit(self, prepared: Prepared, sink: Sink) -> Job:
        if not self.engine.running:
            raise APIError(503, "the server is not running (starting or shutting down)", type="server_error")
        job = Job(prepared.k, prepared.prompt, prepared.sampling, sink, speculative=prepared.speculative)
        return self.engine.submit(job)

    # ---- information ---------------------------------------------------------------------------------------
    def describe(self, k: int) -> dict[str, Any]:
        """Member K's ``/v1/models`` entry with what the engine measured: requests, tokens, batch sizes, and
        speculative decoding on it (per draft: acceptance rate, tokens per round)."""
        info = self.members.describe(k)
        info["stats"] = self.engine.stats(k)
        info["speculative"] = self.engine.spec.for_target(k)
        return info

    def model_list(self) -> list[dict[str, Any]]:
        data = [self.describe(k) for k in range(self.members.m + 1)]
        if self.router is not None:
            data.append(
                {
                    "id": AUTO,
                    "object": "model",
                    "created": 0,
                    "owned_by": "boomerang",
                    "routing": f"the largest member that answers within {self.router.budget * 1000:g} ms "
                    "under the current load",
                }
            )
        return data

    def model_info(self, name: str) -> dict[str, Any]:
        if self.router is not None and name.strip().lower() == AUTO:
            return self.model_list()[-1]
        return self.describe(self._member(name))

    def health(self) -> dict[str, Any]:
        built = [self.members.name(k) for k in range(self.members.m + 1) if self.members.built(k)]
        return {
            "status": "ok" if self.engine.running else "stopped",
            "members": self.members.m + 1,
            "built": built,
            "in_flight": len(self.engine.load()),
            "peak_in_flight": self.engine.peak_active,
            "peak_batch": self.engine.peak_batch,
            "kv_cache_bytes": self.engine.kv_bytes,
            "peak_kv_cache_bytes": self.engine.peak_kv_bytes,
            "max_batch": self.engine.max_batch,
            "speculative": {"default": self.speculative, "draft": self.members.name(self.engine.draft or 0)},
            "order": self.members.order.name,
            "routing": self.router.snapshot() if self.router is not None else None,
        }

    def metrics(self) -> str:
        """Counters in Prometheus' text format (``GET /metrics``)."""
        lines = []

        def metric(name: str, kind: str, help: str, rows: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP boomerang_{name} {help}", f"# TYPE boomerang_{name} {kind}"])
            lines.extend(f"boomerang_{name}{{{labels}}} {value:g}" for labels, value in rows)

        ks = range(self.members.m + 1)
        stats = {k: self.engine.stats(k) for k in ks}
        member = self.members.name
        for key, kind, help in (
            ("requests", "counter", "Requests submitted per member."),
            ("prompt_tokens", "counter", "Prompt tokens per member."),
            ("completion_tokens", "counter", "Generated tokens per member."),
            ("decode_steps", "counter", "Decoding forward passes per member (batched or speculative)."),
        ):
            metric(f"{key}_total", kind, help, [(f'member="{member(k)}"', stats[k][key]) for k in ks])
        metric(
            "mean_batch",
            "gauge",
            "Mean requests per decoding pass, per member.",
            [(f'member="{member(k)}"', stats[k]["mean_batch"]) for k in ks if stats[k]["mean_batch"]],
        )
        pairs = [(k, p) for k in ks for p in self.engine.spec.for_target(k)]
        for key, help in (
            ("proposed", "Draft tokens proposed."),
            ("accepted", "Draft tokens accepted."),
            ("rounds", "Speculative rounds."),
        ):
            metric(
                f"speculative_{key}_total",
                "counter",
                help,
                [(f'member="{member(k)}",draft="{p["draft"]}"', p[key]) for k, p in pairs],  # type: ignore[misc]
            )
        metric(
            "speculative_acceptance_rate",
            "gauge",
            "Accepted over proposed draft tokens.",
            [
                (f'member="{member(k)}",draft="{p["draft"]}"', p["acceptance_rate"])
                for k, p in pairs
                if p["proposed"]
            ],
        )  # type: ignore[misc]
        metric("in_flight", "gauge", "Requests in flight.", [("", len(self.engine.load()))])
        return "\n".join(lines) + "\n"
