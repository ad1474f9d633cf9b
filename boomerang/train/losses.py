"""The distillation loss (paper Eq. 1): CE + λ_KL·τ²·KL(p_T ‖ p_S) + λ_cos·Σ_pairs (1 − cos(h_S, h_T)).

Every term is computed as a *sum over real tokens* and divided by a token count supplied by the caller, so that
with gradient accumulation and several processes the loss is the mean over all tokens of the global batch:

- CE over positions that have a next-token label (the next position is real, not padding);
- KL and cosine over all real (``attention_mask == 1``) positions.

CE and KL never materialise full ``[tokens × vocab]`` tensors: logits are produced chunk by chunk (from the final
hidden state and the LM head, or from given logits), and the gradient with respect to each chunk is computed in
the forward pass, so only ``chunk_tokens × vocab`` fp32 buffers exist at any time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..core.arch import get_arch
from ..core.hooks import capture
from ..core.layermap import LayerMap

IGNORE = -100


class LossConfig(BaseModel):
    """Weights and switches of the three terms (defaults: the paper's Table 2)."""

    model_config = ConfigDict(extra="forbid")

    ce: float = Field(1.0, ge=0, description="Weight of the next-token cross-entropy (0 switches it off).")
    kl: float = Field(0.1, ge=0, description="λ_KL: weight of KL(teacher ‖ student) (0 switches it off).")
    temperature: float = Field(1.0, gt=0, description="τ: softmax temperature of the KL term (scaled by τ²).")
    cos: float | None = Field(
        None, ge=0, description="λ_cos per aligned pair; null means 2/(M+1) for an M-layer student; 0 = off."
    )
    align_embeddings: bool = Field(
        False, description="Also align the embedding output (input of layer 0) with the teacher's."
    )
    align_final: Literal["raw", "normed", "both"] = Field(
        "raw",
        description="Align the last student layer by its raw output (Eq. 1), by the final-norm output "
        "(the reference code), or both.",
    )
    chunk_tokens: int = Field(512, ge=1, description="Tokens per chunk of the CE/KL computation.")

    @model_validator(mode="after")
    def _some_term(self) -> LossConfig:
        if self.ce == 0 and self.kl == 0 and self.cos == 0:
            raise ValueError("every loss term is switched off (ce = kl = cos = 0); enable at least one")
        return self

    def cos_weight(self, n_student: int) -> float:
        return 2.0 / (n_student + 1) if self.cos is None else float(self.cos)


# ---- token bookkeeping --------------------------------------------------------------------------------------


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``labels[b, t] = input_ids[b, t+1]`` where both positions are real, else IGNORE (-100)."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        ok = attention_mask.bool()
        valid = torch.zeros_like(ok)
        valid[:, :-1] = ok[:, :-1] & ok[:, 1:]
        labels[~valid] = IGNORE
    return labels


def token_counts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[int, int]:
    """(positions with a label, real positions) of one micro-batch."""
    if attention_mask is None:
        b, n = input_ids.shape
        return b * (n - 1), b * n
    m = attention_mask.bool()
    return int((m[:, :-1] & m[:, 1:]).sum()), int(m.sum())


# ---- CE and KL on one chunk of logits -----------------------------------------------------------------------


def _chunk_terms(
    z: torch.Tensor,
    zt: torch.Tensor | None,
    labels: torch.Tensor,
    real: torch.Tensor,
    ce_scale: float,
    kl_scale: float,
    tau: float,
    want_grad: bool,
    own_zt: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CE sum, KL sum and d(ce_scale·CE + kl_scale·KL)/dz for one chunk of logits ``[C, V]``.

    ``z`` must be a fresh fp32 tensor (it is overwritten); ``zt`` is overwritten only if ``own_zt``. At τ = 1
    CE and KL share the student's log-softmax, so at most three ``[C, V]`` buffers exist.
    """
    zero = z.new_zeros((), dtype=torch.float64)
    ce_sum, kl_sum = zero, zero
    ce_on = ce_scale > 0
    kl_on = zt is not None and kl_scale > 0
    lab = labels.clamp(min=0)[:, None]
    ce_w = (labels >= 0).to(z.dtype) * ce_scale  # per-row weights
    kl_w = real.to(z.dtype) * (kl_scale / tau)
    logq1 = None  # student log-probabilities at τ = 1
    if ce_on or (kl_on and tau == 1):
        logq1 = z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))
        if ce_on:
            ce_sum = -(logq1.gather(1, lab).squeeze(1) * ce_w).sum(dtype=torch.float64) / ce_scale
    logq = p = None
    if kl_on:
        assert zt is not None
        if zt.dtype != torch.float32 or not own_zt:
            zt = zt.to(torch.float32, copy=True)
        logp = zt.div_(tau) if tau != 1 else zt
        logp -= torch.logsumexp(logp, dim=-1, keepdim=True)
        p = logp.exp()
        logp.clamp_(min=-1e4)  # where p underflows to 0 (or the logit is -inf), p·log p must be 0, not nan
        if tau == 1:
            logq = logq1
        else:
            logq = (logq1 if logq1 is not None else z) / tau
            logq -= torch.logsumexp(logq, dim=-1, keepdim=True)
        kl_rows = logp.sub_(logq).mul_(p).sum(-1)  # Σ p (log p − log q)
        kl_sum = (kl_rows * real).sum(dtype=torch.float64)
        del logp
    if not want_grad or not (ce_on or kl_on):
        return ce_sum, kl_sum, None
    # d/dz: ce_w·(softmax(z) − onehot) + kl_w·(softmax(z/τ) − p)   [kl_w carries 1/τ]
    if kl_on:
        assert logq is not None and p is not None
        q = logq.exp_()
        if tau == 1:
            g = q.mul_((ce_w + kl_w)[:, None])
        else:
            g = q.mul_(kl_w[:, None])
            if ce_on:
                assert logq1 is not None
                g.add_(logq1.exp_().mul_(ce_w[:, None]))
        g.sub_(p.mul_(kl_w[:, None]))
    else:
        assert logq1 is not None
        g = logq1.exp_().mul_(ce_w[:, None])
    if ce_on:
        g.scatter_add_(1, lab, -ce_w[:, None])
    return ce_sum, kl_sum, g


def _ranges(n: int, chunk: int):
    return ((s, min(s + chunk, n)) for s in range(0, n, chunk))


ROWS = 8  # rows of a chunk whose fp32 softmax work is done at once: [ROWS, vocab] buffers stay in cache


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype for ``t``'s device: autocast's if it is on there, else ``t``'s own."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


class _HeadLoss(torch.autograd.Function):
    """CE + KL from final hidden states and LM heads, chunked; gradients are computed in the forward pass.

    Per chunk of ``chunk`` tokens the logits are one matmul in the compute dtype (bf16 under autocast); the
    softmax work runs in fp32 on ``ROWS`` rows at a time, so its buffers stay in cache, and writes the gradient
    with respect to the logits back into the logits buffer, which then feeds the two gradient matmuls.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h_s: torch.Tensor,
        w_s: torch.Tensor,
        h_t: torch.Tensor | None,
        w_t: torch.Tensor | None,
        labels: torch.Tensor,
        real: torch.Tensor,
        ce_scale: float,
        kl_scale: float,
        tau: float,
        chunk: int,
        need_h: bool,
        need_w: bool,
        cdt: torch.dtype,
    ):
        grad_h = torch.empty_like(h_s) if need_h else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_w else None
        ce_sum = h_s.new_zeros((), dtype=torch.float64)
        kl_sum = h_s.new_zeros((), dtype=torch.float64)
        want = need_h or need_w
        with torch.autocast(h_s.device.type, enabled=False):
            hc, wc = h_s.to(cdt), w_s.to(cdt)
            for a, b in _ranges(h_s.shape[0], chunk):
                z = hc[a:b] @ wc.T
                zt = (h_t[a:b] @ w_t.T) if h_t is not None else None  # type: ignore[union-attr]
                own_zt = zt is not None and zt.dtype == torch.float32
                for r, s in _ranges(b - a, ROWS):
                    rows = z[r:s]
                    zr = rows if rows.dtype == torch.float32 else rows.float()
                    zt_r = zt[r:s] if zt is not None else None
                    c, k, g = _chunk_terms(
                        zr,
                        zt_r,
                        labels[a + r : a + s],
                        real[a + r : a + s],
                        ce_scale,
                        kl_scale,
                        tau,
                        want,
                        own_zt,
                    )
                    ce_sum += c
                    kl_sum += k
                    if g is not None and g.data_ptr() != rows.data_ptr():
                        rows.copy_(g)  # z now holds d(loss)/d(logits) for these rows
                if want:
                    if grad_h is not None:
                        grad_h[a:b] = z @ wc
                    if grad_w is not None:
                        grad_w += z.T @ hc[a:b]
                del z, zt
        loss = (ce_sum * ce_scale + kl_sum * kl_scale).to(torch.float32)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.w_dtype = w_s.dtype
        ctx.mark_non_differentiable(ce_sum, kl_sum)
        return loss, ce_sum, kl_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        one = grad_loss.numel() == 1 and float(grad_loss) == 1.0  # the usual case: no [V, d] copy
        grad_h = grad_w = None
        if ctx.has[0]:
            gh = saved.pop(0)
            grad_h = gh if one else gh * grad_loss.to(gh.dtype)
        if ctx.has[1]:
            gw = saved.pop(0)
            grad_w = (gw if one else gw * grad_loss).to(ctx.w_dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None, None, None, None, None


class _LogitsLoss(torch.autograd.Function):
    """CE + KL from full logits (for models whose head is not a plain linear map), chunked."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z_s: torch.Tensor,
        z_t: torch.Tensor | None,
        labels: torch.Tensor,
        real: torch.Tensor,
        ce_scale: float,
        kl_scale: float,
        tau: float,
        chunk: int,
    ):
        grad = torch.zeros_like(z_s)
        ce_sum = z_s.new_zeros((), dtype=torch.float64)
        kl_sum = z_s.new_zeros((), dtype=torch.float64)
        for a, b in _ranges(z_s.shape[0], chunk):
            zt = z_t[a:b] if z_t is not None else None
            z = z_s[a:b].to(torch.float32, copy=True)
            c, k, g = _chunk_terms(z, zt, labels[a:b], real[a:b], ce_scale, kl_scale, tau, True, False)
            ce_sum += c
            kl_sum += k
            if g is not None:
                grad[a:b] = g
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(ce_sum, kl_sum)
        return (ce_sum * ce_scale + kl_sum * kl_scale).to(torch.float32), ce_sum, kl_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None, None, None, None


def head_ce_kl(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    *,
    h_t: torch.Tensor | None = None,
    w_t: torch.Tensor | None = None,
    ce_scale: float = 1.0,
    kl_scale: float = 0.0,
    tau: float = 1.0,
    chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_scale·ΣCE + kl_scale·ΣKL, ΣCE, ΣKL)`` from flat final hidden states ``[T, d]`` and bias-free heads.

    The student logits are ``h_s @ w_s.T``, the teacher's ``h_t @ w_t.T``. ``labels`` is ``[T]`` (IGNORE where
    there is none), ``real`` is ``[T]`` bool (rows counted by the KL). KL is KL(p_T ‖ p_S) at temperature τ.
    """
    if h_t is not None and w_t is not None:
        h_t = h_t.to(w_t.dtype)
    else:
        h_t = w_t = None
    need_h, need_w = h_s.requires_grad, w_s.requires_grad
    cdt = compute_dtype(h_s)
    return _HeadLoss.apply(  # type: ignore[return-value]
        h_s, w_s, h_t, w_t, labels, real, ce_scale, kl_scale, tau, chunk, need_h, need_w, cdt
    )  # type: ignore[return-value]


def logits_ce_kl(
    z_s: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    *,
    z_t: torch.Tensor | None = None,
    ce_scale: float = 1.0,
    kl_scale: float = 0.0,
    tau: float = 1.0,
    chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like ``head_ce_kl`` but from flat logits ``[T, V]``."""
    return _LogitsLoss.apply(z_s, z_t, labels, real, ce_scale, kl_scale, tau, chunk)  # type: ignore[return-value]


def cosine_distance_sum(h_s: torch.Tensor, h_t: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Σ over real tokens of (1 − cos(h_s, h_t)); inputs ``[T, d]``, computed in fp32."""
    cos = F.cosine_similarity(h_s.float(), h_t.float(), dim=-1, eps=1e-8)
    return ((1.0 - cos) * real.to(cos.dtype)).sum()


# ---- the whole loss -----------------------------------------------------------------------------------------


@dataclass
class ModelOutputs:
    """What one forward pass yields for the loss: final normed hidden state or logits, and aligned states."""

    hidden: torch.Tensor | None = None  # [B, L, d] after the final norm (head mode)
    logits: torch.Tensor | None = None  # [B, L, V] (logits mode)
    states: dict[str, torch.Tensor] = field(default_factory=dict)  # pair key -> [B, L, d]
    head_weight: torch.Tensor | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor  # scaled so that summing over micro-batches and processes gives the global mean
    sums: dict[str, float]  # raw sums of this micro-batch: ce, kl, cos (over pairs), n_ce, n_tok


class DistillLoss:
    """Eq. 1 for one student/teacher pair: which states to capture, and the loss from captured outputs."""

    def __init__(self, config: LossConfig, layer_map: LayerMap):
        self.config = config
        self.layer_map = layer_map
        m = layer_map.n_student
        self.cos_weight = config.cos_weight(m) if config.cos != 0 else 0.0
        pairs: list[tuple[str, str]] = []  # (student key, teacher key); keys: "out:i", "in:0", "norm"
        if self.cos_weight > 0:
            if config.align_embeddings:
                pairs.append(("in:0", "in:0"))
            last = m - 1
            for i in range(m):
                if i < last or config.align_final in ("raw", "both"):
                    pairs.append((f"out:{i}", f"out:{layer_map.target(i)}"))
            if config.align_final in ("normed", "both"):
                pairs.append(("norm", "norm"))
        self.pairs = pairs

    @property
    def needs_teacher(self) -> bool:
        return self.config.kl > 0 or bool(self.pairs)

    def keys(self, side: int) -> list[str]:
        """State keys to capture on the student (side 0) or teacher (side 1)."""
        return sorted({p[side] for p in self.pairs})

    def __call__(
        self,
        student: ModelOutputs,
        teacher: ModelOutputs | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        n_ce: int,
        n_tok: int,
        scale: float = 1.0,
    ) -> LossOutput:
        """The loss of one micro-batch, normalised by the *global* counts ``n_ce`` and ``n_tok``.

        ``scale`` multiplies the returned loss (e.g. the world size, to undo DDP's gradient averaging).
        """
        cfg = self.config
        labels = next_token_labels(input_ids, attention_mask).reshape(-1)
        real = (
            attention_mask.reshape(-1).bool()
            if attention_mask is not None
            else torch.ones_like(labels, dtype=torch.bool)
        )
        ce_scale = cfg.ce / max(n_ce, 1)
        use_kl = cfg.kl > 0 and teacher is not None
        kl_scale = cfg.kl * cfg.temperature**2 / max(n_tok, 1) if use_kl else 0.0
        common = dict(ce_scale=ce_scale, kl_scale=kl_scale, tau=cfg.temperature, chunk=cfg.chunk_tokens)
        if student.hidden is not None:
            h_s = student.hidden.reshape(-1, student.hidden.shape[-1])
            h_t = w_t = None
            if use_kl:
                assert teacher is not None and teacher.hidden is not None
                h_t, w_t = teacher.hidden.reshape(-1, teacher.hidden.shape[-1]), teacher.head_weight
            assert student.head_weight is not None
            lm, ce_sum, kl_sum = head_ce_kl(
                h_s, student.head_weight, labels, real, h_t=h_t, w_t=w_t, **common
            )
        else:
            assert student.logits is not None
            z_s = student.logits.reshape(-1, student.logits.shape[-1])
            z_t = None
            if use_kl:
                assert teacher is not None and teacher.logits is not None
                z_t = teacher.logits.reshape(-1, teacher.logits.shape[-1])
            lm, ce_sum, kl_sum = logits_ce_kl(z_s, labels, real, z_t=z_t, **common)
        loss = lm
        cos_sum = torch.zeros((), dtype=torch.float32, device=lm.device)
        if self.pairs and teacher is not None:
            for s_key, t_key in self.pairs:
                hs, ht = student.states[s_key], teacher.states[t_key]
                cos_sum = cos_sum + cosine_distance_sum(
                    hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1]), real
                )
            loss = loss + cos_sum * (self.cos_weight / max(n_tok, 1))
        b_ce, b_tok = token_counts(input_ids, attention_mask)
        sums = {
            "ce": float(ce_sum),
            "kl": float(kl_sum),
            "cos": float(cos_sum.detach()),
            "n_ce": float(b_ce),
            "n_tok": float(b_tok),
        }
        return LossOutput(loss=loss * scale, sums=sums)

    def summarise(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Per-token means of each term and the total loss, from sums accumulated over a global batch."""
        cfg = self.config
        n_ce, n_tok = max(sums["n_ce"], 1.0), max(sums["n_tok"], 1.0)
        ce, kl, cos = sums["ce"] / n_ce, sums["kl"] / n_tok, sums["cos"] / n_tok
        loss = cfg.ce * ce + (cfg.kl * cfg.temperature**2 * kl if cfg.kl > 0 else 0.0) + self.cos_weight * cos
        return {"loss": loss, "ce": ce, "kl": kl, "cos": cos}


# ---- forward passes that yield what the loss needs ------------------------------------------------------------


def head_mode_problem(model: nn.Module) -> str | None:
    """Why the fused head path cannot be used for ``model`` (None if it can)."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        return "its LM head is not a linear layer"
    if head.bias is not None:
        return "its LM head has a bias"
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(model.config, key, None):
            return f"its config sets {key}"
    return None


def model_outputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keys: list[str],
    *,
    mode: Literal["head", "logits"] = "head",
) -> ModelOutputs:
    """One forward pass capturing the states named by ``keys`` ("out:i", "in:0", "norm") with hooks.

    In "head" mode only the trunk runs (no logits); the final normed hidden state and the head weight are returned
    for ``head_ce_kl``. In "logits" mode the full model runs and its logits are returned.
    """
    outs = sorted(int(k[4:]) for k in keys if k.startswith("out:"))
    ins = [0] if "in:0" in keys else []
    norm_out: dict[str, torch.Tensor] = {}
    handle = None
    if "norm" in keys and mode == "logits":
        norm_name = get_arch(model.config).final_norm  # type: ignore[union-attr]
        if norm_name is None:
            raise ValueError(f"{model.config.model_type} has no final norm to align")  # type: ignore[union-attr]

        def hook(_m: nn.Module, _a: Any, o: torch.Tensor) -> None:
            norm_out["norm"] = o

        handle = model.get_submodule(norm_name).register_forward_hook(hook)
    try:
        with capture(model, outputs=outs, inputs=ins) as got:
            kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            if mode == "head":
                hidden = model.base_model(**kw).last_hidden_state  # type: ignore[operator]
                result = ModelOutputs(hidden=hidden, head_weight=model.get_output_embeddings().weight)  # type: ignore[operator]
                if "norm" in keys:
                    norm_out["norm"] = hidden
            else:
                result = ModelOutputs(logits=model(**kw).logits)
    finally:
        if handle is not None:
            handle.remove()
    result.states = {f"out:{i}": got["out"][i] for i in outs}
    if ins:
        result.states["in:0"] = got["in"][0]
    result.states.update(norm_out)
    return result
