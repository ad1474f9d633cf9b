"""Forward hooks that capture layer inputs/outputs at exactly the layers needed (no output_hidden_states)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .arch import get_arch


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's ModuleList of transformer blocks."""
    return model.get_submodule(get_arch(model.config).layers)


def _first_tensor(x: object) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x  # type: ignore[return-value]


@contextlib.contextmanager
def capture(
    model: nn.Module,
    outputs: Iterable[int] = (),
    inputs: Iterable[int] = (),
    *,
    detach: bool = False,
) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
    """Record the hidden-state outputs (and/or inputs) of the given layers during forward passes.

    Yields ``{"out": {i: tensor}, "in": {i: tensor}}``, refreshed on every forward. Negative indices count from
    the end. Tensors keep their autograd graph unless ``detach``.
    """
    layers = layer_list(model)
    n = len(layers)
    got: dict[str, dict[int, torch.Tensor]] = {"out": {}, "in": {}}
    handles = []

    def out_hook(i: int):
        def hook(_m, _args, output):
            t = _first_tensor(output)
            got["out"][i] = t.detach() if detach else t

        return hook

    def in_hook(i: int):
        def hook(_m, args, kwargs):
            t = args[0] if args else kwargs["hidden_states"]
            got["in"][i] = t.detach() if detach else t

        return hook

    try:
        for i in outputs:
            handles.append(layers[i % n].register_forward_hook(out_hook(i)))
        for i in inputs:
            handles.append(layers[i % n].register_forward_pre_hook(in_hook(i), with_kwargs=True))
        yield got
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (after the last layer of interest)."""


@contextlib.contextmanager
def stop_after(model: nn.Module, layer: int) -> Iterator[None]:
    """Abort the forward pass right after ``layer``; catch ``StopForward`` around the call."""

    def hook(_m, _a, _o):
        raise StopForward

    handle = layer_list(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
