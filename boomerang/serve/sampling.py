"""Choosing the next token: greedy (temperature 0), or sampling with temperature and nucleus (top-p) cut-off from
a per-request seeded generator."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How one request generates: at most ``max_tokens`` new tokens, ending early at an end-of-sequence token
    (unless ``ignore_eos``) or at any of the ``stop`` strings (which the returned text leaves out)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self) -> torch.Generator | None:
        """The request's own random stream (seeded by ``seed``, else at random); None when greedy."""
        if self.greedy:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else random.getrandbits(63))
        return g


def probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution a sampled request draws from: softmax of ``logits / temperature`` ``[..., vocab]``, cut to
    the nucleus (the most likely tokens whose mass reaches ``top_p``; the top token is always kept)."""
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= sampling.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from ``probs`` ``[vocab]`` (need not be normalised)."""
    return int(torch.multinomial(probs, 1, generator=generator))


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from the last position's ``logits`` ``[vocab]``."""
    if sampling.greedy:
        return int(logits.argmax())
    return draw(probabilities(logits, sampling), generator)
