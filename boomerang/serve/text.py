"""Text in and out: the tokenizer behind one lock, chat templates, and turning generated tokens into text deltas
that stop at stop strings."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import BoomerangError


class NoChatTemplate(BoomerangError):
    """The tokenizer has no chat template, so /v1/chat/completions cannot render messages."""


class Tokens:
    """The family's tokenizer, shared by the request handlers (encoding) and the engine thread (decoding).

    A fast tokenizer's settings are Rust state that an encode call may change, so every call holds a lock.
    Requests are encoded on a copy of the tokenizer under a lock of its own, so that a long prompt (a second to
    tokenize) never holds up the engine's decoding.
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        if tokenizer is None:
            raise BoomerangError(
                "the family has no tokenizer: serve a teacher checkpoint that has tokenizer files, or pass "
                "tokenizer=... to boomerang.Family"
            )
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self._lock = threading.Lock()
        self._encoder, self._encoding = copy.deepcopy(tokenizer), threading.Lock()
        ids = {getattr(tokenizer, "eos_token_id", None)}
        self.eos_ids = {int(i) for i in ids if i is not None}
        self.bos_id: int | None = getattr(tokenizer, "bos_token_id", None)

    def add_eos(self, ids: int | Sequence[int] | None) -> None:
        """Also stop at these tokens (a model's ``generation_config.eos_token_id``)."""
        if ids is None:
            return
        self.eos_ids.update(int(i) for i in ([ids] if isinstance(ids, int) else ids))

    def encode(self, text: str) -> list[int]:
        with self._encoding:
            return list(self._encoder(text, add_special_tokens=True)["input_ids"])

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of ``messages`` rendered by the chat template, ending with the assistant's turn."""
        if not self.chat_template:
            raise NoChatTemplate(
                "this model's tokenizer has no chat template, so chat messages cannot be rendered: use "
                "/v1/completions, or start the server with --chat-template FILE"
            )
        with self._encoding:
            text = self._encoder.apply_chat_template(
                messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
            )
            return list(self._encoder(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` might be the start of a stop string (or of a character)."""
    hold = 0
    if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: the next token completes it
        hold = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if stop.startswith(text[-n:]):
                hold = n
                break
    return hold


class TextStream:
    """The text of one request's generated tokens, released as deltas.

    Each delta is text that no later token can change: text that might still turn out to begin a stop string is
    held back until it does not (or is released by ``flush`` at the end). When a stop string appears, the text
    ends just before it.
    """

    def __init__(self, tokens: Tokens, stop: Sequence[str] = ()) -> None:
        self.tokens = tokens
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0

    def add(self, token: int) -> tuple[str, bool]:
        """Add one token; returns ``(delta, stopped)``."""
        self.ids.append(token)
        self.text = self.tokens.decode(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self.flush(), True
        end = len(self.text) - _held_back(self.text, self.stop)
        delta = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta, False

    def flush(self) -> str:
        """Everything not yet released."""
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        return delta
