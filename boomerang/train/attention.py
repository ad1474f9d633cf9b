"""Causal attention for training on a CPU in bf16: two matmuls and a softmax, faster than SDPA's CPU kernel.

torch's SDPA CPU kernel runs the demo's causal attention (2 × 9 heads × 512 tokens × 64) at about 60 GFLOP/s in
bf16, its backward pass no faster than in fp32 (``benchmarks/attention.py``). Written as matrix products, the
backward pass runs on oneDNN's bf16 matmuls. ``MatmulAttention`` keeps only the bf16 probabilities for the
backward pass (``[batch, heads, T, T]``: 9.4 MB per layer at the demo's shape) and computes the gradients by hand:

    dV = Pᵀ dO,   dS = P ⊙ (dP − rowsum(P ⊙ dP)) with dP = dO Vᵀ,   dQ = s · dS K,   dK = s · dSᵀ Q

Grouped-query heads are never expanded: the queries of the heads sharing one key/value head are stacked as
``[batch, kv_heads, group × T, dim]``, so one matmul per key/value head serves the whole group (and dK, dV sum over
the group by the same matmul).

One difference from SDPA's kernel: the scores ``s·Q Kᵀ`` are rounded to bf16 before the softmax (SDPA keeps them
in fp32; no CPU matmul takes bf16 and returns fp32). Measured in docs/training.md ("Precision").

Registered with transformers' ``AttentionInterface`` as ``ATTENTION``. It takes over only the calls it computes
as SDPA would and where it pays: causal self-attention with no mask, dropout, soft-capping or sliding window,
autograd on, on a CPU, in bf16 (or under bf16 autocast); every other call (validation, the frozen teacher's
forward, padded batches, fp32) goes to transformers' SDPA path unchanged. ``train.attention`` picks it (``auto``:
on a CPU in bf16).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

ATTENTION = "boomerang_matmul"

_registered = False


def register() -> str:
    """Register ``ATTENTION`` (and the mask SDPA would get) with transformers; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, matmul_attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
        _registered = True
    return ATTENTION


def use(model: nn.Module) -> None:
    """Run ``model``'s attention through ``ATTENTION`` (its layers share the config, so members do too)."""
    model.set_attn_implementation(register())  # type: ignore[operator]


@functools.lru_cache(maxsize=8)
def _mask(t: int, group: int, device: torch.device) -> torch.Tensor:
    """``[group × t, t]``: True above the diagonal of each query block (the future)."""
    return torch.ones(t, t, dtype=torch.bool, device=device).triu(1).repeat(group, 1)


class MatmulAttention(torch.autograd.Function):
    """Causal attention ``softmax(s·Q Kᵀ + mask) V`` with q ``[B, KV, G·T, D]``, k and v ``[B, KV, T, D]``."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        t = k.shape[2]
        # a power-of-two scale (head_dim 4, 16, 64, 256) is exact on the queries: one pass over [.., T, D]
        # instead of the [.., T, T] scores; any other would add a rounding of the queries in bf16
        early = math.frexp(scale)[0] == 0.5
        qs = q * scale if early else q
        s = torch.matmul(qs, k.transpose(-1, -2))
        if not early:
            s.mul_(scale)
        s.masked_fill_(_mask(t, q.shape[2] // t, q.device), float("-inf"))
        p = torch.softmax(s, dim=-1)  # the CPU kernel accumulates in fp32 and rounds once
        del s
        o = torch.matmul(p, v)
        ctx.save_for_backward(qs, k, v, p)
        ctx.scale, ctx.early = scale, early
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor):  # type: ignore[override]
        with torch.autocast("cpu", enabled=False):
            return MatmulAttention._backward(ctx, do)

    @staticmethod
    def _backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        qs, k, v, p = ctx.saved_tensors
        do = do.to(p.dtype).contiguous()
        dv = torch.matmul(p.transpose(-1, -2), do)
        dp = torch.matmul(do, v.transpose(-1, -2))
        # dS = P ⊙ (dP − rowsum(P ⊙ dP)): softmax's own backward kernel (one pass, fp32 sums for bf16; 6x
        # faster on the demo's shape than the same formula written with rowsum(dO ⊙ O) and four elementwise ops)
        ds = torch.ops.aten._softmax_backward_data(dp, p, -1, p.dtype)
        del dp
        dq = torch.matmul(ds, k).mul_(ctx.scale)
        dk = torch.matmul(ds.transpose(-1, -2), qs)
        if not ctx.early:
            dk.mul_(ctx.scale)
        return dq, dk, dv, None


def compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype SDPA would compute this call in: autocast's on a CPU where it is on (transformers' rotary
    embedding hands it fp32 queries and keys), else the queries' own."""
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return query.dtype


def takes(query: torch.Tensor, key: torch.Tensor, attention_mask: Any, dropout: float, kw: dict) -> bool:
    """Whether ``MatmulAttention`` computes this call as SDPA would (and is worth it)."""
    return (
        query.device.type == "cpu"
        and compute_dtype(query) == torch.bfloat16
        and torch.is_grad_enabled()
        and attention_mask is None
        and not dropout
        and query.shape[2] == key.shape[2] > 1
        and kw.get("is_causal", True) is not False
        and kw.get("softcap") is None
        and kw.get("sliding_window") is None
        and kw.get("position_bias") is None
        and not kw.get("output_attentions", False)
    )


def matmul_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: q ``[B, H, T, D]``, k/v ``[B, KV, T, D]`` → ``([B, T, H, D], None)``."""
    if not (getattr(module, "is_causal", True) and takes(query, key, attention_mask, dropout, kwargs)):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, h, t, d = query.shape
    kv = key.shape[1]
    scale = scaling if scaling is not None else d**-0.5
    # autocast's casts, made here: its dispatch never sees this function's matmuls as SDPA
    bf16 = torch.bfloat16
    q = query.to(bf16).reshape(b, kv, (h // kv) * t, d)  # heads h = g·(h/kv) + r share key/value head g
    with torch.autocast("cpu", enabled=False):
        o = MatmulAttention.apply(q, key.to(bf16).contiguous(), value.to(bf16).contiguous(), scale)
    return o.view(b, h, t, d).transpose(1, 2).contiguous(), None
