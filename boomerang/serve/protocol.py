"""The OpenAI-compatible wire format: request bodies (validated, with errors that name the field) and the JSON
of responses, stream chunks and errors.

A body is refused (400, naming the field) before it reaches the model when it is not plain data the code can
compute with: JSON nested deeper than ``MAX_DEPTH``, integers of more than ``MAX_INT_DIGITS`` digits, ``NaN`` or
infinite numbers (``1e400``), strings with lone surrogates, a value of the wrong type (``"5"`` or ``true`` is not
an integer: the schemas are strict), or a number outside its range. Error messages quote at most a short prefix of
what the client sent (``clip``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_BODY_BYTES = 1 << 20  # the default request body limit (1 MiB: a full 8K-token context is ~40 KB of text)
MAX_STOP = 4  # as OpenAI
MAX_STOP_CHARS = 256  # bounds the per-token hold-back check (quadratic in a stop string's length)
MAX_MODEL_CHARS = 64  # the longest member name is max-params:<number>
MAX_DEPTH = 32  # a valid request nests 5 levels (body, messages, message, content, part)
MAX_INT_DIGITS = 20  # beyond 64 bits: no field can use it
# 0 is greedy; a positive temperature this small already is, and far smaller ones overflow logits / T in float32
MIN_TEMPERATURE = 1e-4
MIN_TOP_P = 1e-9  # smaller ones underflow in float32 (at 1e-9 only the most likely token is kept anyway)
MAX_TOKENS = 2**31 - 1
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as OpenAI's and torch's generators take
CLIP = 40  # characters of client text an error message quotes
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def clip(text: object, n: int = CLIP) -> str:
    """``text`` as an error message may quote it: at most ``n`` characters, then how long it was."""
    s = text if isinstance(text, str) else repr(text)
    s = s if len(s) <= n else f"{s[:n]}… ({len(s):,} characters)"
    return s.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate, shown escaped


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


def check_model_name(name: str, param: str = "model") -> str:
    """A member name as a request may give it: printable ASCII, at most ``MAX_MODEL_CHARS`` characters."""
    if not name.isascii() or not name.isprintable() or len(name) > MAX_MODEL_CHARS:
        raise APIError(
            400,
            f"{param}: {clip(name)} is not a member name: names are printable ASCII of at most {MAX_MODEL_CHARS} "
            "characters (teacher, student, k0..kM, max-params:N); GET /v1/models lists them",
            param=param,
        )
    return name


# ---- requests ------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Request(BaseModel):
    """Fields shared by both endpoints. Unknown fields are refused, so a typo is not silently ignored."""

    model_config = _STRICT

    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    user: str | None = None
    ignore_eos: bool = False  # an extension (as in vLLM): generate max_tokens tokens whatever the model says
    speculative: bool | None = None  # an extension: draft with a smaller member (None: the server's default)
    # accepted only at their neutral values (``unsupported``)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    def check(self) -> None:
        """Ranges that pydantic's bounds cannot say; ``APIError`` (400) naming the field."""
        check_model_name(self.model)
        if self.temperature is not None and 0 < self.temperature < MIN_TEMPERATURE:
            raise APIError(
                400,
                f"temperature: {self.temperature:g} is too close to 0 to compute with: use 0 for greedy decoding "
                f"or a value of at least {MIN_TEMPERATURE:g}",
                param="temperature",
            )
        if self.top_p is not None and self.top_p < MIN_TOP_P:
            raise APIError(
                400,
                f"top_p: {self.top_p:g} is too small to compute with: use at least {MIN_TOP_P:g} (any value that "
                "small keeps only the most likely token) or temperature 0",
                param="top_p",
            )
        self.stops()

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(
                400, f"stop: at most {MAX_STOP} stop strings are allowed, got {len(stops)}", param="stop"
            )
        long = [s for s in stops if len(s) > MAX_STOP_CHARS]
        if long:
            raise APIError(
                400,
                f"stop: a stop string has at most {MAX_STOP_CHARS} characters, got one of {len(long[0]):,}",
                param="stop",
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
    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
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
    """A validated request from the raw body, or an ``APIError`` (400) that names the problem (and the field)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(
            400,
            f"the request body is not UTF-8: byte {raw[e.start]:#04x} at offset {e.start}; send UTF-8 JSON",
        ) from None
    deep = _too_deep(text)
    if deep is not None:
        raise APIError(
            400,
            f"{deep}: JSON nested more than {MAX_DEPTH} levels deep; a request needs at most 5",
            param=None if deep == "body" else deep,
        )
    try:
        body = json.loads(text, parse_int=_integer)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"malformed JSON in the request body: {clip(str(e), 120)}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_kind(body)}")
    for key, value in body.items():
        if not _valid_unicode(key) or not _valid_unicode(value):
            raise APIError(
                400,
                f"{clip(key)}: a string holds a lone surrogate (such as \\ud800), which is not Unicode text; "
                "send valid UTF-16 pairs",
                param=clip(key),
            )
    cls = CompletionRequest if kind == "completion" else ChatRequest
    try:
        request = cls.model_validate(body)
    except ValidationError as e:
        raise APIError(400, _describe(e), param=_first_param(e)) from None
    request.check()
    bad = request.unsupported()
    if bad:
        raise APIError(
            400,
            f"{', '.join(bad)}: not supported by this server (supported: model, prompt/messages, max_tokens, "
            "temperature, top_p, stop, seed, stream, stream_options, n=1, ignore_eos, speculative)",
            param=bad[0],
        )
    return request


class _Huge:
    """A JSON integer of more than ``MAX_INT_DIGITS`` digits, kept unconverted (Python refuses to convert those of
    over 4,300 digits, and no field can use one): every integer field refuses it, naming the field."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits:,} digits>"


def _integer(digits: str) -> int | _Huge:
    return int(digits) if len(digits) <= MAX_INT_DIGITS + 1 else _Huge(digits)


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _too_deep(text: str) -> str | None:
    """The top-level field under which ``text`` nests JSON deeper than ``MAX_DEPTH`` ("body" if none), else None.

    A scan of the raw text, so that the parser never recurses that deep."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth, key = 0, None
    for m in _TOKENS.finditer(text):
        token = m.group()
        if token[0] == '"':
            if depth == 1:
                key = token
        elif token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                if key is None:
                    return "body"
                try:
                    return clip(json.loads(key))
                except ValueError:
                    return clip(key)
        else:
            depth -= 1
    return None


def _valid_unicode(value: Any) -> bool:
    """Whether every string in ``value`` (keys too) encodes as UTF-8 (no lone surrogates)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if isinstance(value, _Huge):
        return repr(value)[1:-1]
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return (
            "a number" if value == value and abs(value) != float("inf") else f"{value} (not a finite number)"
        )
    for t, name in ((str, "a string"), (list, "a list"), (dict, "an object")):
        if isinstance(value, t):
            return name
    return "null" if value is None else type(value).__name__


# union members as pydantic names them in an error's location, and what the field takes
_UNION_TAGS = {"str", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]"}
_EXPECTED = {
    "prompt": "a string, a list of token ids, or a list holding one string or one list of token ids",
    "stop": "a string or a list of strings",
    "content": 'a string or a list of {"type": "text", "text": ...} parts',
}


def _describe(e: ValidationError) -> str:
    """One short line per wrong field (at most 5), quoting at most a prefix of what the client sent."""
    groups: dict[tuple[str, ...], list[Any]] = {}
    for err in e.errors():
        loc = [clip(str(p), 24) for p in err["loc"]]
        cut = next((i for i, p in enumerate(loc) if p in _UNION_TAGS), len(loc))
        groups.setdefault(tuple(loc[:cut]), []).append(err)
    parts = []
    for loc, errs in list(groups.items())[:5]:
        where = ".".join(loc) or "body"
        err = errs[0]
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unrecognized request argument")
        elif err["type"] == "missing":
            parts.append(f"{where}: missing (required)")
        elif len(errs) > 1 and loc and loc[-1] in _EXPECTED:
            parts.append(f"{where}: must be {_EXPECTED[loc[-1]]}")
        elif err["type"].endswith("_type") or err["type"] in ("finite_number", "literal_error"):
            parts.append(f"{where}: {err['msg']}, got {_kind(err.get('input'))}")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


def _first_param(e: ValidationError) -> str | None:
    errors = e.errors()
    return clip(str(errors[0]["loc"][0])) if errors and errors[0]["loc"] else None


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


def sse(data: Mapping[str, object] | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
