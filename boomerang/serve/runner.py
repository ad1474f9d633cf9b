"""Running one member: batched forward passes over per-sequence caches (``boomerang.serve.kv``), and the two
tricks speculative decoding inside a family uses when draft and target share their first layers: capturing the
draft's hidden states after the shared layers, and running the target from there (``inject``), so that the target
neither recomputes those layers nor keeps a second copy of their KV cache. On a CPU in reduced precision the
decoding passes compute their matrix products row by row (``row_products``), so a row's logits do not depend on
the rows beside it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..core.arch import get_arch
from . import kv

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


def layer_list(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's transformer blocks (where the architecture adapter says they are)."""
    return model.get_submodule(get_arch(model.config).layers)  # type: ignore[return-value]


def _storage(module: torch.nn.Module) -> list[tuple[int, tuple[int, ...]]]:
    return [(t.data_ptr(), tuple(t.shape)) for t in (*module.parameters(), *module.buffers())]


def shared_layers(a: PreTrainedModel, b: PreTrainedModel) -> int:
    """How many leading layers ``a`` and ``b`` share (the same tensors, behind the same token embedding).

    Such layers compute the same hidden states and the same keys and values in both models for the same tokens.
    """
    if type(a) is not type(b):
        return 0
    ea, eb = a.get_input_embeddings(), b.get_input_embeddings()
    if ea is None or eb is None or _storage(ea) != _storage(eb):
        return 0
    n = 0
    for la, lb in zip(layer_list(a), layer_list(b), strict=False):
        attn_a, attn_b = (getattr(layer, "self_attn", None) for layer in (la, lb))
        window = [getattr(x, "sliding_window", None) for x in (attn_a, attn_b)]
        if _storage(la) != _storage(lb) or window[0] != window[1]:
            break
        n += 1
    return n


_onednn_lock = threading.Lock()
_onednn_passes = 0  # engine passes in progress with oneDNN off
_onednn_before = True  # the setting before the first of them


def row_products(model: PreTrainedModel) -> bool:
    """Whether the engine's decoding passes compute matrix products row by row with PyTorch's own kernels rather
    than oneDNN's: on a CPU in bf16 or fp16. There oneDNN computes a one-row product with another kernel (a gemv)
    than a product of several rows, which rounds differently, so a greedy text could change with the company its
    request decodes in; PyTorch's own kernels compute every row of a product as its one-row kernel does (a dot
    product per output, accumulated in fp32), bit for bit, and that kernel streams the weights about 2× faster
    than oneDNN's on an AMD Zen 4 CPU (``benchmarks/decode_rows.py``). Prefills (one prompt, many rows) keep
    oneDNN."""
    return kv.reduced_on_cpu(model.device, model.dtype)


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """oneDNN off for CPU matrix products inside the block (a process-wide setting: nested and concurrent blocks
    keep it off until the last one ends, which restores it)."""
    global _onednn_passes, _onednn_before
    with _onednn_lock:
        if not _onednn_passes:
            _onednn_before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _onednn_passes += 1
    try:
        yield
    finally:
        with _onednn_lock:
            _onednn_passes -= 1
            if not _onednn_passes:
                torch.backends.mkldnn.enabled = _onednn_before


class Runner:
    """One member's model, run by the engine (one thread)."""

    def __init__(self, model: PreTrainedModel) -> None:
        kv.enable(model)
        self.model = model
        self.layers = layer_list(model)
        self.n_layers = len(self.layers)
        self.device = model.device
        self.rowwise = row_products(model)  # decoding passes: products row by row (see ``row_products``)
        self._mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self.device)  # skips mask building

    def cache(self, hint: int = 0) -> kv.SeqCache:
        return kv.SeqCache(self.n_layers, hint)

    @torch.inference_mode()
    def forward(
        self,
        rows: Sequence[kv.SeqCache],
        tokens: Sequence[Sequence[int]],
        *,
        last_only: bool = False,
        exact: bool = True,
    ) -> torch.Tensor:
        """Logits ``[rows, positions, vocab]`` (float32, on the CPU) for ``tokens`` (the same count per row) after each row's
        cached positions; the caches take the new positions. ``last_only``: the last position's logits only.
        ``exact=False``: the logits need not round as a decoding step's would (a draft catching up on several
        tokens), so a pass of several tokens may use oneDNN's faster several-row products."""
        step = kv.Step(rows, len(tokens[0]))
        ids = torch.tensor([list(t) for t in tokens], dtype=torch.long, device=self.device)
        several = step.new_tokens > 1
        prefill = several and not any(step.starts)
        rowwise = self.rowwise and not prefill and (exact or not several)
        with _without_onednn() if rowwise else contextlib.nullcontext():
            out = self.model(
                input_ids=ids,
                position_ids=step.position_ids(self.device),
                past_key_values=step,
                attention_mask=self._mask,
                use_cache=True,
                logits_to_keep=1 if last_only else 0,
                boomerang_step=step,
            )
        step.done()
        return out.logits.float().cpu()

    def step_after(self, prompts: Sequence[Sequence[int]], token: int, *, batched: bool) -> torch.Tensor:
        """Logits ``[rows, 1, vocab]`` of one decoding step (``token``) after each prompt in a fresh cache: every row
        alone or all in one batch (the exactness check behind batching: both must be equal)."""
        caches = [self.cache(max(map(len, prompts)) + 1) for _ in prompts]
        for c, p in zip(caches, prompts, strict=True):
            self.forward([c], [p], last_only=True)
        if batched:
            return self.forward(caches, [[token]] * len(prompts))
        return torch.cat([self.forward([c], [[token]]) for c in caches])

    @contextlib.contextmanager
    def capture(self, n_shared: int) -> Iterator[list[torch.Tensor]]:
        """Collect the hidden states entering layer ``n_shared`` in every forward pass inside the block."""
        seen: list[torch.Tensor] = []
        if n_shared <= 0:
            yield seen
            return

        def hook(module: nn.Module, args: object, output: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
            seen.append(output[0] if isinstance(output, tuple) else output)

        handle = self.layers[n_shared - 1].register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()

    @contextlib.contextmanager
    def inject(self, n_shared: int, hidden: torch.Tensor | None) -> Iterator[None]:
        """Inside the block, the first ``n_shared`` layers do no work: the hidden states entering layer
        ``n_shared`` are ``hidden`` (captured from a model that shares those layers), and their KV cache is the
        one that model filled (a cache made with ``SeqCache.sharing``)."""
        if n_shared <= 0 or hidden is None:
            yield
            return
        stubbed = self.layers[:n_shared]

        def stub(*args: object, **kwargs: object) -> torch.Tensor:
            return hidden

        for layer in stubbed:
            layer.forward = stub  # an instance attribute: nn.Module.__call__ finds it first
        try:
            yield
        finally:
            for layer in stubbed:
                del layer.forward
