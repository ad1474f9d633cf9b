"""Run a span of a model's layers on given hidden states, through the model's own forward.

Searches over patch orders and pruning baselines evaluate many models that share most of their computation. They
cache hidden states at layer boundaries and re-run only the layers that changed. Running "layers ``start`` to
``stop`` of a model on a cached hidden state" needs each architecture's masks, position embeddings and per-layer
attention types, so instead of re-implementing them we drive the model's own forward:

* layers before ``start`` are skipped: their ``forward`` is temporarily replaced by a pass-through;
* the cached state is injected as the output of the (skipped) layer ``start - 1`` (or the input of layer 0);
* the pass ends early (``StopForward``) after layer ``stop - 1``, after the final norm, or runs on to the logits.

The embedding lookup and mask construction still run (cheap); no skipped layer does any arithmetic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from ..interrupts import check
from .arch import get_arch
from .hooks import StopForward, layer_list

Until = Literal["layers", "norm", "logits"]


def _passthrough(hidden_states: torch.Tensor, *_args: object, **_kwargs: object) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def skipping(layers: nn.ModuleList, indices: range) -> Iterator[None]:
    """Make the given layers identities (their hooks still fire) for the duration of the block."""
    done = []
    try:
        for i in indices:
            layers[i].forward = _passthrough  # instance attribute shadows the class method
            done.append(layers[i])
        yield
    finally:
        for layer in done:
            del layer.forward


def feed_input(hidden: torch.Tensor, *, clone: bool = False):
    """A forward pre-hook (``with_kwargs=True``) that replaces a layer's input hidden states with ``hidden``."""

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = hidden.clone() if clone else hidden
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    return hook


def shared_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items ``a`` and ``b`` share: two models whose layers agree that far have the same hidden
    state there."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def forward_ids(model: nn.Module, ids: torch.Tensor) -> object:
    """The model's forward on token ids, without a KV cache."""
    check()  # a Ctrl-C stops a search between passes, even if its first KeyboardInterrupt was swallowed
    if get_arch(model.config).encoder:
        return model(input_ids=ids)
    return model(input_ids=ids, use_cache=False)


def run_span(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    start: int = 0,
    stop: int | None = None,
    hidden: torch.Tensor | None = None,
    until: Until = "layers",
) -> torch.Tensor:
    """Run layers ``[start, stop)`` of ``model`` on ``hidden`` (the input of layer ``start``).

    ``hidden=None`` starts from the model's own embedding output (then ``start`` must be 0). When ``stop`` is the
    last layer (the default), ``until`` says what to return: the last layer's output (``"layers"``), the output of
    the final norm (``"norm"``; the last layer's output for architectures without one) or the logits. Otherwise the
    output of layer ``stop - 1`` is returned. ``start == stop`` runs no layer at all (only the head, if asked).
    Call under ``torch.no_grad()`` unless gradients are wanted; the model should be in eval mode.
    """
    check()
    layers = layer_list(model)
    n = len(layers)
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise ValueError(f"bad span [{start}, {stop}) for a model with {n} layers")
    if hidden is None and start != 0:
        raise ValueError("a span that does not start at layer 0 needs the hidden state entering it")
    arch = get_arch(model.config)
    to_end = stop == n
    if to_end and until == "norm" and arch.final_norm is None:
        until = "layers"
    if hidden is not None and start == stop and (not to_end or until == "layers"):
        return hidden

    got: dict[str, torch.Tensor] = {}
    handles = []

    def inject_out(_m: nn.Module, _a: object, _o: object) -> torch.Tensor:
        return hidden  # type: ignore[return-value]

    def stop_hook(_m: nn.Module, _a: object, output: object) -> None:
        got["h"] = output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[assignment,index]
        raise StopForward

    try:
        if hidden is not None:
            if start > 0:
                handles.append(layers[start - 1].register_forward_hook(inject_out))
            else:
                handles.append(layers[0].register_forward_pre_hook(feed_input(hidden), with_kwargs=True))
        if not to_end or until == "layers":
            if stop > 0:
                handles.append(layers[stop - 1].register_forward_hook(stop_hook))
        elif until == "norm":
            handles.append(model.get_submodule(arch.final_norm).register_forward_hook(stop_hook))  # type: ignore[arg-type]
        with skipping(layers, range(start)):
            try:
                out = forward_ids(model, ids)
            except StopForward:
                return got["h"]
    finally:
        for h in handles:
            h.remove()
    if until == "logits":
        return out.logits  # type: ignore[attr-defined]
    raise RuntimeError("internal: the forward pass did not stop where expected")


def embedding_output(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The hidden state entering layer 0 (embeddings, positions, scaling and dropout as the model applies them)."""
    got: dict[str, torch.Tensor] = {}

    def grab(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        got["h"] = args[0] if args else kwargs["hidden_states"]
        raise StopForward

    handle = layer_list(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        forward_ids(model, ids)
    except StopForward:
        return got["h"]
    finally:
        handle.remove()
    raise RuntimeError("internal: the forward pass never reached layer 0")
