"""Per-sequence KV caches and the attention that reads them: how the engine batches sequences of different lengths.

Each request keeps its own cache (``SeqCache``): for every layer a buffer of keys and values that grows by
doubling (a static cache in all but name: no reallocation per token). A forward pass of the engine (a ``Step``)
runs several sequences as the rows of one batch, each row with its own position and its own number of tokens in
the cache. Transformers' modules do all the work (projections, norms, rotary embeddings, MLPs, the head) on the
whole batch; only attention, which is where the rows differ, runs per row, through the attention function
registered here as ``ATTENTION`` (transformers' ``AttentionInterface``):

- the layer's ``past_key_values.update`` (``Step.update``) writes each row's new keys and values into its cache;
- the attention function attends each row's queries to that row's own keys, with no padding and no mask, so a
  row's attention is the same computation whether it runs alone or beside other rows. A decoding row (one new
  token) is one call; a verifying row (several new tokens after a cached prefix, as in speculative decoding)
  attends one query at a time, so that each of its positions is computed as a decoding step would compute it;
  a prefill (an empty cache) is one causal call.

Attention this small runs on one CPU thread (waking the thread pool for every row and layer costs more than it
saves). Sliding-window layers attend to the last ``sliding_window`` keys. Two caches may share their first layers'
buffers (``SeqCache.sharing``): a speculative draft and its target that share leading layers share their KV too.

A member runs with ``ATTENTION`` once ``enable`` set it; without a ``Step`` (any ordinary call of the model, e.g.
``generate``) the function is transformers' own SDPA attention with transformers' own masks, so the model behaves
exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

if TYPE_CHECKING:
    from ..hints import Model

ATTENTION = "boomerang_rows"
MIN_CAPACITY = 64  # positions a fresh cache holds before its first growth
SINGLE_THREAD_WORK = 1 << 20  # below this many query-key products per layer, attention runs on one thread


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True

    AttentionInterface.register(ATTENTION, row_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # ordinary calls build the masks SDPA would get


class Slot:
    """One layer's keys and values of one sequence: ``[1, kv_heads, capacity, head_dim]`` buffers, ``n`` filled."""

    __slots__ = ("k", "n", "v")

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n = 0

    def write(self, at: int, k: torch.Tensor, v: torch.Tensor, hint: int) -> None:
        """Store ``k``/``v`` (``[1, heads, q, dim]``) at positions ``at..at+q-1``; keeps positions before ``at``."""
        end = at + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            cap = max(MIN_CAPACITY, hint, end, 2 * (self.k.shape[2] if self.k is not None else 0))
            nk = k.new_empty((1, k.shape[1], cap, k.shape[3]))
            nv = v.new_empty((1, v.shape[1], cap, v.shape[3]))
            if self.k is not None and at:
                nk[:, :, :at] = self.k[:, :, :at]
                nv[:, :, :at] = self.v[:, :, :at]  # type: ignore[index]
            self.k, self.v = nk, nv
        self.k[:, :, at:end] = k
        self.v[:, :, at:end] = v  # type: ignore[index]
        self.n = end

    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


class SeqCache:
    """The KV cache of one sequence on one member: a ``Slot`` per layer and the number of cached positions."""

    def __init__(self, n_layers: int, hint: int = 0, shared: Sequence[Slot] = ()) -> None:
        self.slots = [*shared, *(Slot() for _ in range(n_layers - len(shared)))]
        self.hint = hint  # the capacity to allocate at first (the prompt plus some of the completion)
        self.length = 0  # positions whose keys and values every layer run by this cache's model holds

    @classmethod
    def sharing(cls, other: SeqCache, n_shared: int, n_layers: int, hint: int = 0) -> SeqCache:
        """A cache whose first ``n_shared`` layers are ``other``'s (the same buffers, not copies)."""
        return cls(n_layers, hint, other.slots[:n_shared])

    def crop(self, n: int) -> None:
        """Forget positions from ``n`` on (rejected speculative tokens)."""
        self.length = min(self.length, n)
        for s in self.slots:
            s.n = min(s.n, n)


class Step:
    """One forward pass over ``rows`` (sequence caches), each with ``q`` new tokens after its cached ones.

    Passed to the model twice: as ``past_key_values`` (transformers calls ``update`` in every attention layer)
    and as the ``boomerang_step`` keyword, which transformers hands on to the attention function.
    """

    def __init__(self, rows: Sequence[SeqCache], new_tokens: int) -> None:
        self.rows = list(rows)
        self.new_tokens = new_tokens  # tokens each row takes in this step
        self.starts = [r.length for r in self.rows]

    # the parts of transformers' Cache interface that models call with a cache in hand
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object):
        for b, row in enumerate(self.rows):
            row.slots[layer_idx].write(self.starts[b], key[b : b + 1], value[b : b + 1], row.hint)
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.starts) if self.starts else 0

    def done(self) -> None:
        """The forward pass finished: every row's cache now holds its new tokens."""
        for b, row in enumerate(self.rows):
            row.length = self.starts[b] + self.new_tokens

    def position_ids(self, device: torch.device | str) -> torch.Tensor:
        return torch.tensor([[s + j for j in range(self.new_tokens)] for s in self.starts], device=device)


def enable(model: Model) -> None:
    """Make ``model`` use ``ATTENTION`` (it behaves as with SDPA outside the engine)."""
    _register()
    if getattr(model.config, "_attn_implementation", None) != ATTENTION:
        model.set_attn_implementation(ATTENTION)


def row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    boomerang_step: Step | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention per row of a ``Step`` (see the module docstring); transformers' SDPA attention without one."""
    if boomerang_step is None:
        if sliding_window is not None:
            kwargs["sliding_window"] = sliding_window
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("attention logit soft-capping is not supported by the serving engine")
    step = boomerang_step
    threads = torch.get_num_threads()
    work = (
        query.shape[1]
        * query.shape[3]
        * sum(step.new_tokens * (start + step.new_tokens) for start in step.starts)
    )
    single = query.device.type == "cpu" and threads > 1 and work < SINGLE_THREAD_WORK
    if single:  # small per-row calls: waking the thread pool for each costs more than it saves
        torch.set_num_threads(1)
    try:
        out = _rows(step, module.layer_idx, query, scaling, sliding_window or None)  # type: ignore[arg-type]
    finally:
        if single:
            torch.set_num_threads(threads)
    return out.transpose(1, 2).contiguous(), None


def reduced_on_cpu(device: torch.device, dtype: torch.dtype) -> bool:
    """bf16 or fp16 on a CPU: where the engine's decoding passes use other kernels than the defaults (here one
    query's attention, and ``runner.row_products``)."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def _one_query(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None, gqa: bool
) -> torch.Tensor:
    """One query position's attention to its keys. On a CPU, SDPA's bf16 and fp16 kernels take 3-6× longer for one
    query than its fp32 one does with the casts (0.1-0.3 ms against 30-70 µs per call, SmolLM2's shapes, 80-300
    keys), so reduced precision is computed in fp32 there (more exact, too)."""
    if reduced_on_cpu(q.device, q.dtype):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scaling, enable_gqa=gqa)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=gqa)


def _rows(
    step: Step, layer: int, query: torch.Tensor, scaling: float | None, window: int | None
) -> torch.Tensor:
    """The attention output ``[rows, heads, q, head_dim]`` of every row of ``step`` at ``layer``."""
    gqa = query.shape[1] != step.rows[0].slots[layer].k.shape[1]  # type: ignore[union-attr]
    q = step.new_tokens
    outs = []
    for b, row in enumerate(step.rows):
        slot = row.slots[layer]
        start = step.starts[b]
        keys, values = slot.k, slot.v
        assert keys is not None and values is not None
        qb = query[b : b + 1]
        if q == 1 or start > 0:  # decoding, or verifying: every position as a decoding step computes it
            parts = []
            for j in range(q):
                end = start + j + 1
                lo = max(0, end - window) if window else 0
                parts.append(
                    _one_query(qb[:, :, j : j + 1], keys[:, :, lo:end], values[:, :, lo:end], scaling, gqa)
                )
            outs.append(parts[0] if q == 1 else torch.cat(parts, dim=2))
        else:  # a prefill: one causal pass (banded when the window is shorter than the prompt)
            k, v = keys[:, :, :q], values[:, :, :q]  # type: ignore[index]
            if window is None or window >= q:
                outs.append(
                    F.scaled_dot_product_attention(qb, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
                )
            else:
                i = torch.arange(q, device=query.device)
                band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
                outs.append(
                    F.scaled_dot_product_attention(qb, k, v, attn_mask=band, scale=scaling, enable_gqa=gqa)
                )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
