"""What a perplexity number depends on, without torch (the CLI takes its option defaults from here).

``EvalSpec``: the metric, the exact slice of text, the windows and the special tokens. ``EvalSpec()`` is the
default evaluation; ``spec.resolved(config)`` fills what depends on the model (metric, context, stride, batch size)
and validates it. ``boomerang.evaluate.perplexity`` scores a resolved spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..core.arch import ARCHS, ENCODER_TYPES
from ..core.configs import max_positions
from ..errors import BoomerangError

if TYPE_CHECKING:
    from ..hints import Config

TOKEN_PPL = "ppl"
PSEUDO_PPL = "pppl"
METRIC_LABELS = {
    TOKEN_PPL: "token perplexity (boomerang: per token, sliding window)",
    PSEUDO_PPL: "pseudo-perplexity (boomerang: masked LM, each token masked in turn)",
}


def is_encoder(config: Config) -> bool:
    """True for masked LMs (BERT family), whether or not boomerang can patch them."""
    mt = getattr(config, "model_type", None)
    return mt in ENCODER_TYPES or (mt in ARCHS and ARCHS[mt].encoder)


def default_metric(config: Config) -> str:
    return PSEUDO_PPL if is_encoder(config) else TOKEN_PPL


def check_window(context: int, stride: int, max_positions: int | None) -> None:
    """A causal window: ``2 <= context <= max_positions`` and ``1 <= stride < context``."""
    if context < 2:
        raise BoomerangError(f"--context must be at least 2 tokens, got {context}")
    if not 1 <= stride < context:
        raise BoomerangError(
            f"--stride must be between 1 and context-1 = {context - 1} (each window scores `stride` new tokens "
            f"with at least context-stride tokens of left context); got {stride}"
        )
    if max_positions is not None and context > max_positions:
        raise BoomerangError(f"--context {context} exceeds the model's {max_positions} positions")


@dataclass(frozen=True)
class EvalSpec:
    """Everything that decides the batches (and so the number): the slice, the windowing and special tokens.

    ``metric``: ``ppl``, ``pppl`` or ``auto`` (by model). ``context``: window length in tokens (None: min(1024,
    model positions), 512 for pppl); ``stride``: new tokens scored per window (None: context/2). The slice:
    skip ``offset`` tokens, then take at most ``max_tokens`` tokens of at most ``max_docs`` documents (the
    ``text_field`` of .jsonl / hf: sources). ``add_bos`` / ``add_eos``: put BOS before / EOS after each document.
    ``batch_size``: windows (ppl, default 4) or masked copies (pppl, 64) per forward pass.
    """

    metric: str = "auto"
    context: int | None = None
    stride: int | None = None
    offset: int = 0
    max_tokens: int | None = None
    max_docs: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    batch_size: int | None = None
    text_field: str = "text"

    def resolved(self, config: Config) -> EvalSpec:
        """Fill defaults from the model config and validate (before any heavy work)."""
        metric = default_metric(config) if self.metric == "auto" else self.metric
        if metric not in (TOKEN_PPL, PSEUDO_PPL):
            raise BoomerangError(f"unknown metric {self.metric!r}; use ppl, pppl or auto")
        encoder = is_encoder(config)
        if metric == TOKEN_PPL and encoder:
            raise BoomerangError(
                f"{config.model_type} is a masked LM: token perplexity needs a causal LM; use --metric pppl"
            )
        if metric == PSEUDO_PPL and not encoder:
            raise BoomerangError(
                f"{config.model_type} is a causal LM: pseudo-perplexity needs a masked LM (BERT)"
            )
        limit = max_positions(config)
        context = self.context or min(1024 if metric == TOKEN_PPL else 512, limit or 1024)
        stride = self.stride or max(1, context // 2)
        if metric == TOKEN_PPL:
            check_window(context, stride, limit)
        elif limit is not None and context > limit:
            raise BoomerangError(f"--context {context} exceeds the model's {limit} positions")
        batch = self.batch_size or (4 if metric == TOKEN_PPL else 64)
        if batch < 1:
            raise BoomerangError(f"--batch-size must be >= 1, got {batch}")
        return EvalSpec(
            metric, context, stride if metric == TOKEN_PPL else None, self.offset, self.max_tokens,
            self.max_docs, self.add_bos, self.add_eos, batch, self.text_field,
        )  # fmt: skip

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        if self.metric == PSEUDO_PPL:
            for k in ("stride", "add_bos", "add_eos"):
                d.pop(k)
        return d
