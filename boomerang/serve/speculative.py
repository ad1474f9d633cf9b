"""Speculative decoding inside a family: a smaller member drafts γ tokens, the requested member verifies them in
one forward pass.

- **Acceptance.** Greedy: a drafted token stands while it is the target's own argmax; at the first that is not,
  the target's argmax replaces it, so the text is the target's greedy text. Sampled: the standard rule
  (Leviathan et al. 2023, Chen et al. 2023): draft token ``d`` drawn from ``q`` stands with probability
  ``min(1, p(d) / q(d))``; the first that does not is replaced by a draw from ``max(0, p - q)`` (normalised), and
  after γ accepted tokens one more is drawn from ``p``. Each emitted token then follows the target's distribution
  ``p`` (after temperature and top-p). All draws use the request's own generator, so a seeded request repeats.
- **γ adapts.** With acceptance rate α (each drafted token stands with probability α), a round of γ drafted
  tokens yields ``(1 - α^(γ+1)) / (1 - α)`` tokens and costs ``γ·c + 1 + γ·g`` plain target steps, where ``c`` is
  a draft step's time over a plain step's and ``g`` what each verified draft adds to the verification (about 0
  where a several-row product costs what a one-row one does, as on GPUs; about 0.4 on a CPU whose decoding
  products run row by row). γ is the value in ``1..max_gamma`` that maximises tokens per cost, from the request's
  own acceptance so far (starting from the pair's running rate) and the pair's measured ``c`` and ``g`` (a pair's
  first round is a plain step, which measures the unit); when no γ beats plain decoding (one token per step), the
  round is a plain step, and after ``PROBE_EVERY`` plain rounds one round drafts one token to keep measuring
  (then after twice as many each time speculation still does not pay, up to ``MAX_PROBE_EVERY``: a probe costs
  the draft's catching up on the tokens it skipped). A seeded sampled request keeps γ fixed (the server's
  default), so that its random draws, and its text, repeat.
- **Shared layers.** Where draft and target share their first ``s`` layers (members of a family patched in the
  ``last`` order), the target's cache takes the draft's buffers for those layers and its verification starts
  from the hidden states the draft computed there (``boomerang.serve.runner``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .sampling import Sampling, draw, probabilities

PRIOR_TOKENS = 4.0  # weight of the pair's running acceptance rate in a request's own estimate, in tokens
# while speculation does not pay, a round drafts one token after this many plain ones (doubling up to the max)
PROBE_EVERY = 8
MAX_PROBE_EVERY = 64
ALPHA0 = 0.6  # acceptance rate assumed before a pair has been measured
EMA = 0.1  # weight of one round in the pair's running averages


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens one round yields (accepted drafts plus the target's own) when each draft stands with ``alpha``."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def best_gamma(
    alpha: float, cost_ratio: float, max_gamma: int, extra_draft_steps: int = 0, verify_growth: float = 0.0
) -> int:
    """The γ in ``1..max_gamma`` with the most tokens per unit of time (a plain step costs 1, a draft step
    ``cost_ratio``, verifying γ drafts ``1 + γ·verify_growth``; ``extra_draft_steps``: draft steps a round needs
    besides the γ drafting ones); 0 when none beats plain decoding (one token per unit)."""
    alpha = min(max(alpha, 0.0), 0.999)

    def rate(g: int) -> float:
        return expected_tokens(alpha, g) / ((g + extra_draft_steps) * cost_ratio + 1.0 + g * verify_growth)

    best = max(range(1, max_gamma + 1), key=rate)
    return best if rate(best) > 1.0 else 0


def accept_greedy(drafts: list[int], target_logits: torch.Tensor) -> tuple[int, int]:
    """(accepted drafts, the target's next token) for greedy decoding; ``target_logits`` ``[γ+1, vocab]``."""
    best = target_logits.argmax(-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return n, int(best[n])


def accept_sampled(
    drafts: list[int],
    draft_probs: list[torch.Tensor],
    target_logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """(accepted drafts, the next token) under the standard accept/reject rule (see the module docstring)."""
    p = probabilities(target_logits, sampling)
    for i, (d, q) in enumerate(zip(drafts, draft_probs, strict=True)):
        u = float(torch.rand((), generator=generator))
        if u * float(q[d]) < float(p[i, d]):  # u < p/q, without dividing by a tiny q
            continue
        residual = (p[i] - q).clamp_(min=0.0)
        return i, draw(residual if float(residual.sum()) > 0 else p[i], generator)
    return len(drafts), draw(p[len(drafts)], generator)


@dataclass
class PairStats:
    """Running measurements of one (draft, target) pair, and its totals (reported by ``/v1/models``)."""

    draft: int
    target: int
    shared_layers: int
    alpha: float = ALPHA0
    draft_s: float | None = None  # seconds per draft step
    plain_s: float | None = None  # seconds per plain step of the target (a round without drafts)
    verify_growth: float | None = None  # what each verified draft adds to a verification, in plain steps
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    emitted: int = 0

    def cost_ratio(self) -> float:
        """A draft step's time over a plain step's (0.5 until both are measured)."""
        if self.draft_s is None or not self.plain_s:
            return 0.5
        return self.draft_s / self.plain_s

    def record(self, proposed: int, accepted: int, emitted: int, draft_s: float, verify_s: float) -> None:
        self.rounds += 1
        self.proposed += proposed
        self.accepted += accepted
        self.emitted += emitted
        if proposed:
            self.alpha += EMA * (accepted / proposed - self.alpha)
            if draft_s > 0:
                self.draft_s = _ema(self.draft_s, draft_s)
            if self.plain_s:
                self.verify_growth = max(
                    0.0, _ema(self.verify_growth, (verify_s / self.plain_s - 1.0) / proposed)
                )
        else:
            self.plain_s = _ema(self.plain_s, verify_s)

    def summary(self) -> dict[str, object]:
        return {
            "draft": f"k{self.draft}",
            "shared_layers": self.shared_layers,
            "rounds": self.rounds,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.proposed, 4) if self.proposed else None,
            "tokens_per_round": round(self.emitted / self.rounds, 3) if self.rounds else None,
            "draft_to_verify_cost": round(self.cost_ratio(), 4) if self.draft_s is not None else None,
            "verify_growth": round(self.verify_growth, 4) if self.verify_growth is not None else None,
        }


def _ema(old: float | None, new: float) -> float:
    return new if old is None else old + EMA * (new - old)


class SpecStats:
    """Every pair's ``PairStats`` (written by the engine thread, read by the HTTP side)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[int, int], PairStats] = {}
        self._lock = threading.Lock()

    def pair(self, draft: int, target: int, shared_layers: int) -> PairStats:
        with self._lock:
            stats = self._pairs.get((draft, target))
            if stats is None:
                stats = self._pairs[(draft, target)] = PairStats(draft, target, shared_layers)
            return stats

    def for_target(self, target: int) -> list[dict[str, object]]:
        with self._lock:
            return [s.summary() for (_, t), s in sorted(self._pairs.items()) if t == target]


@dataclass
class SpecState:
    """A speculative request's state: the draft's cache and the request's own acceptance so far."""

    draft: int
    shared_layers: int
    pair: PairStats
    gamma: int
    adaptive: bool
    cache: object = None  # the draft's SeqCache
    accepted: int = 0
    rejected: int = 0
    plain_rounds: int = 0  # plain rounds since the last one that drafted
    probe_every: int = PROBE_EVERY

    def alpha(self) -> float:
        prior = PRIOR_TOKENS
        return (self.accepted + prior * self.pair.alpha) / (self.accepted + self.rejected + prior)

    def next_gamma(self, max_gamma: int) -> int:
        """γ for the next round (0: a plain decoding step)."""
        if self.adaptive:
            if self.pair.plain_s is None:
                return 0  # a plain step first: the unit the costs are measured in
            extra = 1 if self.shared_layers else 0
            pair = self.pair
            self.gamma = best_gamma(
                self.alpha(), pair.cost_ratio(), max_gamma, extra, pair.verify_growth or 0.0
            )
            if self.gamma:
                self.plain_rounds, self.probe_every = 0, PROBE_EVERY
            else:
                self.plain_rounds += 1
                if self.plain_rounds >= self.probe_every:
                    self.plain_rounds, self.probe_every = 0, min(2 * self.probe_every, MAX_PROBE_EVERY)
                    return 1
        return self.gamma
