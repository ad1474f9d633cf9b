"""bf16 working copies of the student's weights, with fp32 master weights for the optimizer.

Under autocast every forward pass casts each fp32 weight to bf16 again, and the residual stream stays in fp32
(the embedding's output is fp32), so every linear layer also casts its input. A ``WorkingCopy`` instead holds a
bf16 copy of the student's layers that the forward and backward passes run on; the optimizer updates the fp32
masters, and ``sync`` copies them into the working copy (rounded to nearest) after each step. Gradients arrive
in bf16 and are added into the masters' fp32 gradients after each backward pass (``drain_grads``).

The input and output embeddings are not copied: the working copy shares the masters' fp32 matrices, so token
gradients are accumulated in fp32 (a frequent token collects thousands of contributions per batch) and the fused
head loss casts the head once per step. A pre-hook casts the first layer's input to bf16, so the whole residual
stream is bf16, as in the teacher.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..core.hooks import layer_list


class WorkingCopy:
    """A bf16 copy of ``master`` for the forward/backward passes; ``master`` keeps the fp32 weights."""

    def __init__(self, master: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.master, self.dtype = master, dtype
        shared: dict[int, Any] = {}
        for emb in (master.get_input_embeddings(), master.get_output_embeddings()):  # type: ignore[operator]
            for p in emb.parameters() if emb is not None else ():
                shared[id(p)] = p  # deepcopy's memo: the copy holds these very parameters
        self.model: nn.Module = copy.deepcopy(master, memo=dict(shared))
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        for (_, mp), (_, wp) in zip(master.named_parameters(), self.model.named_parameters(), strict=True):
            if mp is wp:
                continue
            wp.data = mp.data.to(dtype)
            self.pairs.append((mp, wp))
        self._hook = layer_list(self.model)[0].register_forward_pre_hook(self._cast_input, with_kwargs=True)

    def _cast_input(self, _m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            args = (args[0].to(self.dtype), *args[1:])
        elif "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].to(self.dtype)}
        return args, kwargs

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the masters into the working copy (after every optimizer step and after loading)."""
        for mp, wp in self.pairs:
            wp.copy_(mp)

    @torch.no_grad()
    def drain_grads(self) -> None:
        """Add the working copy's bf16 gradients into the masters' fp32 gradients, and clear them."""
        for mp, wp in self.pairs:
            if wp.grad is None:
                continue
            if mp.grad is None:
                mp.grad = wp.grad.to(mp.dtype)
            else:
                mp.grad += wp.grad
            wp.grad = None

    def numel(self) -> int:
        """Elements held in the working dtype (the copies' extra memory, in elements)."""
        return sum(wp.numel() for _, wp in self.pairs)
