"""The OpenAI-compatible wire format: request bodies (validated, with errors that name the field) and the JSON
of responses, stream chunks and errors."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP = 4  # as OpenAI


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- requests ------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    """Fields shared by both endpoints. Unknown fields are refused, so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    ignore_eos: bool = False  # an extension (as in vLLM): generate max_tokens tokens whatever the model says
    speculative: bool | None = None  # an extension: draft with a smaller member (None: the server's default)
    # accepted only at their neutral values (``unsupported``)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(
                400, f"stop: at most {MAX_STOP} stop strings are allowed, got {len(stops)}", param="stop"
            )
        return tuple(stops)

    def unsupported(self) -> list[str]:
        bad = [f for f in ("frequency_penalty", "presence_penalty") if getattr(self, f) not in (None, 0, 0.0)]
        bad += [f for f in ("logit_bias",) if getattr(self, f)]
        if self.logprobs not in (None, False, 0):
            bad.append("logprobs")
        if self.n not in (None, 1):
            bad.append("n")
        return bad


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        bad += [f for f in ("echo", "suffix") if getattr(self, f)]
        if self.best_of not in (None, 1):
            bad.append("best_of")
        return bad

    def single_prompt(self) -> str | list[int]:
        """The one prompt (a string or token ids): a batch of several prompts is refused."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise APIError(
                    400, f"prompt: this server takes one prompt per request, got {len(p)}", param="prompt"
                )
            p = p[0]
        return p  # type: ignore[return-value]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        bad += [f for f in ("tools", "tool_choice", "top_logprobs") if getattr(self, f)]
        if self.response_format and self.response_format.get("type") != "text":
            bad.append("response_format")
        return bad

    def limit(self) -> int | None:
        a, b = self.max_tokens, self.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise APIError(
                400, "give max_tokens or max_completion_tokens, not two different values", param="max_tokens"
            )
        return self.max_completion_tokens or self.max_tokens


def parse(kind: Literal["completion", "chat"], raw: bytes) -> CompletionRequest | ChatRequest:
    """A validated request from the raw body, or an ``APIError`` (400) that names the problem."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"malformed JSON in the request body: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    cls = CompletionRequest if kind == "completion" else ChatRequest
    try:
        request = cls.model_validate(body)
    except ValidationError as e:
        raise APIError(400, _describe(e), param=_first_param(e)) from None
    bad = request.unsupported()
    if bad:
        raise APIError(
            400,
            f"{', '.join(bad)}: not supported by this server (supported: model, prompt/messages, max_tokens, "
            "temperature, top_p, stop, seed, stream, stream_options, n=1, ignore_eos, speculative)",
            param=bad[0],
        )
    return request


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unrecognized request argument")
        elif err["type"] == "missing":
            parts.append(f"{loc}: missing (required)")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def _first_param(e: ValidationError) -> str | None:
    errors = e.errors()
    return str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None


# ---- responses -----------------------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def completion(rid: str, created: int, model: str, text: str, finish: str, usage: dict[str, int]) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def chat(rid: str, created: int, model: str, text: str, finish: str, usage: dict[str, int]) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, str], finish: str | None) -> dict:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(kind: str, rid: str, created: int, model: str, usage: dict[str, int]) -> dict:
    """The last chunk of a stream that asked for ``stream_options.include_usage``: no choices, the usage."""
    obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
