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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..core.arch import get_arch
from ..core.hooks import capture, layer_list
from ..core.layermap import LayerMap
from ..core.spans import feed_input
from .mixed import Draw as MixedDraw

if TYPE_CHECKING:
    from torch.autograd.function import FunctionCtx

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
    ctx: float = Field(
        0.0,
        ge=0,
        description="λ_ctx per student layer: the teacher-context term. Each student layer also runs on the "
        "teacher's hidden state entering its block and is pulled towards the teacher's state at the block's end "
        "(1 − cos), as it must work when patching puts it among teacher layers; 0 = off.",
    )
    ctx_mse: float = Field(
        0.0,
        ge=0,
        description="Weight per student layer of the teacher-context term's squared error relative to the block's "
        "update, ‖h_S − h_T‖² / ‖h_T − h_in‖² (1 for a layer that does nothing, 0 for an exact one); 0 = off.",
    )
    mixed: float = Field(
        0.0,
        ge=0,
        description="Weight of the mixed-context term: per micro-batch, the CE and KL (weighted as above) of one "
        "family member drawn at random, its student layers among teacher blocks (one process only); 0 = off.",
    )
    mixed_draw: MixedDraw = Field(
        "count",
        description="How the mixed-context term draws its member: 'count' = K student layers patched, K uniform in "
        "1..M−1; 'size' = the member's layer count uniform over the family's sizes strictly between the student's "
        "and the teacher's, then a member of that size uniformly (so members one layer short of the teacher are "
        "drawn as often as any other size).",
    )
    chunk_tokens: int = Field(512, ge=1, description="Tokens per chunk of the CE/KL computation.")

    @model_validator(mode="after")
    def _some_term(self) -> LossConfig:
        if self.ce == 0 and self.kl == 0 and self.cos == 0 and self.ctx == 0 and self.ctx_mse == 0:
            raise ValueError("every loss term is switched off (ce = kl = cos = ctx = 0); enable at least one")
        return self

    @property
    def uses_ctx(self) -> bool:
        return self.ctx > 0 or self.ctx_mse > 0

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
    CE and KL share the student's log-softmax, so at most three ``[C, V]`` buffers exist. The CE sum is measured
    even at weight 0 (``ce_scale`` only weighs its gradient): the logs and validation perplexity need it.
    """
    kl_sum = z.new_zeros((), dtype=torch.float64)
    ce_on = ce_scale > 0
    kl_on = zt is not None and kl_scale > 0
    lab = labels.clamp(min=0)[:, None]
    valid = (labels >= 0).to(z.dtype)
    ce_w = valid * ce_scale  # per-row weights
    kl_w = real.to(z.dtype) * (kl_scale / tau)
    logq1 = z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))  # student log-probabilities at τ = 1
    ce_sum = -(logq1.gather(1, lab).squeeze(1) * valid).sum(dtype=torch.float64)
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
            logq = logq1 / tau
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
                g.add_(logq1.exp_().mul_(ce_w[:, None]))
        g.sub_(p.mul_(kl_w[:, None]))
    else:
        g = logq1.exp_().mul_(ce_w[:, None])
    if ce_on:
        g.scatter_add_(1, lab, -ce_w[:, None])
    return ce_sum, kl_sum, g


def _ranges(n: int, chunk: int):
    return ((s, min(s + chunk, n)) for s in range(0, n, chunk))


ROWS = 8  # rows of a chunk whose fp32 softmax work is done at once: [ROWS, vocab] buffers stay in cache


class HeadBuffers:
    """Buffers the head loss reuses from call to call (the logits chunks and the compute-dtype head weight).

    A ``[chunk × vocab]`` logits buffer is tens to hundreds of MB: allocated afresh on every call, it comes back
    from the OS as new pages, and on a CPU the page faults cost more than the matmul that fills it (measured:
    2.3× on a SmolLM2 head). A training loop passes the same ``HeadBuffers`` to every call.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """An uninitialised ``shape`` tensor, a view of a buffer kept under ``name`` (grown when needed)."""
        key = (name, dtype, device)
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def cast(self, name: str, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``w`` in ``dtype`` (``w`` itself if it is already), in the buffer kept under ``name``."""
        if w.dtype == dtype:
            return w.detach()
        return self.get(name, tuple(w.shape), dtype, w.device).copy_(w.detach())


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
        ctx: FunctionCtx,
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
        buffers: HeadBuffers | None,
    ):
        bufs = buffers or HeadBuffers()
        dev = h_s.device
        grad_h = torch.empty_like(h_s) if need_h else None
        # grad_w is handed to autograd, which may keep it as the weight's .grad: always a tensor of its own
        grad_w = torch.empty(w_s.shape, dtype=torch.float32, device=dev) if need_w else None
        ce_sum = h_s.new_zeros((), dtype=torch.float64)
        kl_sum = h_s.new_zeros((), dtype=torch.float64)
        want = need_h or need_w
        with torch.autocast(h_s.device.type, enabled=False):
            hc, wc = h_s.detach().to(cdt), bufs.cast("w", w_s, cdt)
            wt = w_t.detach() if w_t is not None else None
            for a, b in _ranges(h_s.shape[0], chunk):
                z = torch.mm(hc[a:b], wc.T, out=bufs.get("z", (b - a, wc.shape[0]), cdt, dev))
                zt = None
                if h_t is not None:
                    assert wt is not None
                    zt = torch.mm(h_t[a:b], wt.T, out=bufs.get("zt", (b - a, wt.shape[0]), wt.dtype, dev))
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
                        if grad_h.dtype == z.dtype:
                            torch.mm(z, wc, out=grad_h[a:b])
                        else:  # fp32 hidden states under autocast
                            grad_h[a:b] = z @ wc
                    if grad_w is not None:
                        if z.dtype == torch.float32:
                            grad_w.addmm_(z.T, hc[a:b], beta=float(a > 0))  # beta 0: the first chunk writes
                        else:  # bf16 matmul (no mixed-dtype addmm on CPU), then one fp32 accumulation
                            gw = torch.mm(z.T, hc[a:b], out=bufs.get("gw", tuple(wc.shape), cdt, dev))
                            if a > 0:
                                grad_w += gw
                            else:
                                grad_w.copy_(gw)
                del z, zt
        loss = (ce_sum * ce_scale + kl_sum * kl_scale).to(torch.float32)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.w_dtype = w_s.dtype
        ctx.mark_non_differentiable(ce_sum, kl_sum)
        return loss, ce_sum, kl_sum

    @staticmethod
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor, *_: torch.Tensor):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        one = grad_loss.numel() == 1 and float(grad_loss) == 1.0  # the usual case: no [V, d] copy
        grad_h = grad_w = None
        if ctx.has[0]:
            gh = saved.pop(0)
            grad_h = gh if one else gh * grad_loss.to(gh.dtype)
        if ctx.has[1]:
            gw = saved.pop(0)
            grad_w = (gw if one else gw * grad_loss).to(ctx.w_dtype)
        return grad_h, grad_w, *([None] * 12)


class _LogitsLoss(torch.autograd.Function):
    """CE + KL from full logits (for models whose head is not a plain linear map), chunked."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
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
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor, *_: torch.Tensor):  # type: ignore[override]
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
    buffers: HeadBuffers | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_scale·ΣCE + kl_scale·ΣKL, ΣCE, ΣKL)`` from flat final hidden states ``[T, d]`` and bias-free heads.

    The student logits are ``h_s @ w_s.T``, the teacher's ``h_t @ w_t.T``. ``labels`` is ``[T]`` (IGNORE where
    there is none), ``real`` is ``[T]`` bool (rows counted by the KL). KL is KL(p_T ‖ p_S) at temperature τ.
    ``buffers``: reused from call to call (a training loop passes the same one); default: fresh ones.
    """
    if h_t is not None and w_t is not None:
        h_t = h_t.to(w_t.dtype)
    else:
        h_t = w_t = None
    # no gradient work under no_grad (validation), nor when both terms are off (a cosine-only loss)
    grad = torch.is_grad_enabled() and (ce_scale > 0 or (h_t is not None and kl_scale > 0))
    need_h, need_w = grad and h_s.requires_grad, grad and w_s.requires_grad
    cdt = compute_dtype(h_s)
    return _HeadLoss.apply(  # type: ignore[return-value]
        h_s, w_s, h_t, w_t, labels, real, ce_scale, kl_scale, tau, chunk, need_h, need_w, cdt, buffers
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


class _CosineDistanceSum(torch.autograd.Function):
    """Σ_rows w·(1 − cos(a, b)) with a hand-written backward: two scaled adds over ``[T, d]``.

    Row dot products and norms are taken in fp32 (cosines near 1 need it: in bf16, 1 − cos would keep about one
    significant digit). autograd's own ``cosine_similarity`` backward makes about ten ``[T, d]`` passes.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        acc = torch.promote_types(a.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        a32, b32 = a.detach().to(acc), b.detach().to(acc)
        dot = (a32 * b32).sum(-1)
        na = a32.norm(dim=-1).clamp_min(1e-8)
        nb = b32.norm(dim=-1).clamp_min(1e-8)
        cos = dot / (na * nb)
        ctx.save_for_backward(a, b, cos, na, nb, w.to(acc))
        ctx.needs = (a.requires_grad, b.requires_grad)
        return ((1.0 - cos) * w).sum()

    @staticmethod
    def backward(ctx: FunctionCtx, g: torch.Tensor):  # type: ignore[override]
        a, b, cos, na, nb, w = ctx.saved_tensors
        gw = -(g * w)  # d/dcos of the sum
        grads: list[torch.Tensor | None] = [None, None, None]
        # d cos / d a = b / (|a||b|) − cos · a / |a|²   (and symmetrically for b)
        for i, (x, y, nx, ny) in enumerate(((a, b, na, nb), (b, a, nb, na))):
            if ctx.needs[i]:
                c1 = (gw / (nx * ny))[:, None]
                c2 = (gw * cos / (nx * nx))[:, None]
                grads[i] = (y.to(c1.dtype) * c1 - x.to(c1.dtype) * c2).to(x.dtype)
        return grads[0], grads[1], None


def update_error_sum(
    h_s: torch.Tensor, h_t: torch.Tensor, h_in: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Σ over real tokens of ‖h_s − h_t‖² / ‖h_t − h_in‖²: the squared error of a block's output relative to the
    size of the update the block makes to the residual stream (``h_in`` → ``h_t``); inputs ``[T, d]``, in fp32.

    Output cosines are close to 1 whatever a block does (the residual stream changes little per block), so
    1 − cos and ‖h_s − h_t‖² / ‖h_t‖² weigh a block's work weakly; this measures it against the work itself: 1
    for a block that does nothing, 0 for an exact one."""
    t, x = h_t.detach().float(), h_in.detach().float()
    err = (h_s.float() - t).pow(2).sum(-1) / (t - x).pow(2).sum(-1).clamp_min(1e-12)
    return (err * real.to(err.dtype)).sum()


def cosine_distance_sum(h_s: torch.Tensor, h_t: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Σ over real tokens of (1 − cos(h_s, h_t)); inputs ``[T, d]``, computed in fp32."""
    return _CosineDistanceSum.apply(h_s, h_t, real)  # type: ignore[no-any-return]


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
        # teacher context: student layer i runs on the teacher's state entering block i ("in:0" or the output of
        # teacher layer l_i - 1) and is compared with the teacher's state at the block's end
        self.ctx_pairs: list[tuple[str, str]] = []
        if config.uses_ctx:
            for i in range(m):
                first = layer_map.kept[i]
                self.ctx_pairs.append(
                    ("in:0" if first == 0 else f"out:{first - 1}", f"out:{layer_map.target(i)}")
                )
        self.buffers = HeadBuffers()

    @property
    def needs_teacher(self) -> bool:
        return self.config.kl > 0 or bool(self.pairs) or bool(self.ctx_pairs)

    def keys(self, side: int) -> list[str]:
        """State keys to capture on the student (side 0) or teacher (side 1)."""
        keys = {p[side] for p in self.pairs}
        if side == 1:
            keys |= {k for pair in self.ctx_pairs for k in pair}
        return sorted(keys)

    def member_loss(self) -> DistillLoss | None:
        """The mixed-context term's loss: CE and KL of a family member, scaled by ``mixed`` (None when off)."""
        c = self.config
        if c.mixed == 0 or (c.ce == 0 and c.kl == 0):
            return None
        cfg = LossConfig(
            ce=c.mixed * c.ce,
            kl=c.mixed * c.kl,
            temperature=c.temperature,
            cos=0,
            chunk_tokens=c.chunk_tokens,
        )
        return DistillLoss(cfg, self.layer_map)

    def ctx_inputs(self, teacher: ModelOutputs | None) -> dict[int, torch.Tensor] | None:
        """The teacher's states entering each student layer's block, for the teacher-context pass (or None)."""
        if not self.ctx_pairs or teacher is None:
            return None
        return {i: teacher.states[src].detach() for i, (src, _) in enumerate(self.ctx_pairs)}

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
            lm_loss, ce_sum, kl_sum = head_ce_kl(
                h_s, student.head_weight, labels, real, h_t=h_t, w_t=w_t, buffers=self.buffers, **common
            )
        else:
            assert student.logits is not None
            z_s = student.logits.reshape(-1, student.logits.shape[-1])
            z_t = None
            if use_kl:
                assert teacher is not None and teacher.logits is not None
                z_t = teacher.logits.reshape(-1, teacher.logits.shape[-1])
            lm_loss, ce_sum, kl_sum = logits_ce_kl(z_s, labels, real, z_t=z_t, **common)
        loss = lm_loss
        cos_sum = torch.zeros((), dtype=torch.float32, device=lm_loss.device)
        if self.pairs and teacher is not None:
            for s_key, t_key in self.pairs:
                hs, ht = student.states[s_key], teacher.states[t_key]
                cos_sum = cos_sum + cosine_distance_sum(
                    hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1]), real
                )
            loss = loss + cos_sum * (self.cos_weight / max(n_tok, 1))
        ctx_cos = torch.zeros((), dtype=torch.float32, device=lm_loss.device)
        ctx_mse = torch.zeros((), dtype=torch.float32, device=lm_loss.device)
        if self.ctx_pairs and teacher is not None and "ctx:0" in student.states:
            for i, (src, t_key) in enumerate(self.ctx_pairs):
                hs, ht, hi = student.states[f"ctx:{i}"], teacher.states[t_key], teacher.states[src]
                hs, ht, hi = (h.reshape(-1, h.shape[-1]) for h in (hs, ht, hi))
                if cfg.ctx > 0:
                    ctx_cos = ctx_cos + cosine_distance_sum(hs, ht, real)
                if cfg.ctx_mse > 0:
                    ctx_mse = ctx_mse + update_error_sum(hs, ht, hi, real)
            loss = loss + (ctx_cos * cfg.ctx + ctx_mse * cfg.ctx_mse) / max(n_tok, 1)
        b_ce, b_tok = token_counts(input_ids, attention_mask)
        sums = {
            "ce": float(ce_sum),
            "kl": float(kl_sum),
            "cos": float(cos_sum.detach()),
            "ctx": float(ctx_cos.detach()),
            "ctx_mse": float(ctx_mse.detach()),
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
        out = {"loss": loss, "ce": ce, "kl": kl, "cos": cos}
        if self.ctx_pairs:
            ctx, mse = sums.get("ctx", 0.0) / n_tok, sums.get("ctx_mse", 0.0) / n_tok
            out["loss"] += cfg.ctx * ctx + cfg.ctx_mse * mse
            out["ctx"], out["ctx_mse"] = ctx, mse
        if cfg.mixed > 0 and "mixed_ce" in sums:
            m_ce, m_kl = sums["mixed_ce"] / n_ce, sums.get("mixed_kl", 0.0) / n_tok
            out["loss"] += cfg.mixed * (cfg.ce * m_ce + cfg.kl * cfg.temperature**2 * m_kl)
            out["mixed_ce"], out["mixed_kl"] = m_ce, m_kl
        return out


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


def context_outputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    inputs: dict[int, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Every layer ``i`` run on ``inputs[i]`` instead of the previous layer's output: ``{"ctx:i": output}``.

    One pass of the model's own forward (masks, position embeddings) with each layer's input replaced by a
    pre-hook, so no layer's output feeds the next: gradients reach each layer's weights only, never the embedding,
    the final norm or the head.
    """
    layers = layer_list(model)
    handles = [
        layers[i].register_forward_pre_hook(feed_input(h), with_kwargs=True) for i, h in inputs.items()
    ]
    try:
        with capture(model, outputs=sorted(inputs)) as got:
            model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)  # type: ignore[operator]
    finally:
        for h in handles:
            h.remove()
    return {f"ctx:{i}": got["out"][i] for i in inputs}


def model_outputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keys: list[str],
    *,
    mode: Literal["head", "logits"] = "head",
    ctx: dict[int, torch.Tensor] | None = None,
) -> ModelOutputs:
    """One forward pass capturing the states named by ``keys`` ("out:i", "in:0", "norm") with hooks.

    In "head" mode only the trunk runs (no logits); the final normed hidden state and the head weight are returned
    for ``head_ce_kl``. In "logits" mode the full model runs and its logits are returned. ``ctx`` (layer -> the
    teacher's state entering its block) adds the teacher-context pass's outputs as ``ctx:i`` states.
    """
    outs = sorted(int(k[4:]) for k in keys if k.startswith("out:"))
    ins = [0] if "in:0" in keys else []
    norm_out: dict[str, torch.Tensor] = {}
    handle = None
    if "norm" in keys and mode == "logits":
        norm_name = get_arch(model.config).final_norm  # type: ignore[union-attr]
        if norm_name is None:
            raise ValueError(f"{model.config.model_type} has no final norm to align")  # type: ignore[union-attr]

        def hook(_m: nn.Module, _a: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
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
    if ctx:
        result.states.update(context_outputs(model, input_ids, attention_mask, ctx))
    return result
