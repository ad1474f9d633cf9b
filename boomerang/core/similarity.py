"""Mean per-token cosine similarity between layer outputs, accumulated batch by batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..interrupts import check
from .hooks import capture, layer_list


def _normed_outputs(model: nn.Module, ids: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """``[len(layers), tokens, hidden]`` unit-norm float32 outputs of ``layers`` for one batch."""
    check()
    with torch.no_grad(), capture(model, outputs=layers, detach=True) as got:
        model(input_ids=ids, use_cache=False) if getattr(model.config, "is_decoder", True) else model(
            input_ids=ids
        )
    hs = torch.stack([got["out"][i].reshape(-1, got["out"][i].shape[-1]).float() for i in layers])
    return torch.nn.functional.normalize(hs, dim=-1)


def similarity_matrix(
    a: nn.Module,
    ids: torch.Tensor,
    b: nn.Module | None = None,
    *,
    batch_size: int = 8,
    a_layers: Sequence[int] | None = None,
    b_layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """``S[i, j]`` = mean over tokens of cos(output of layer i of ``a``, output of layer j of ``b``).

    With ``b`` omitted this is ``a``'s self-similarity. ``ids`` is ``[n, length]`` (e.g. calibration blocks).
    """
    a_layers = list(range(len(layer_list(a)))) if a_layers is None else list(a_layers)
    if b is not None:
        b_layers = list(range(len(layer_list(b)))) if b_layers is None else list(b_layers)
    total = torch.zeros(len(a_layers), len(b_layers if b is not None else a_layers), dtype=torch.float64)
    tokens = 0
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size]
        ha = _normed_outputs(a, batch, a_layers)
        hb = ha if b is None else _normed_outputs(b, batch, b_layers)  # type: ignore[arg-type]
        total += torch.einsum("itd,jtd->ij", ha, hb).double()
        tokens += ha.shape[1]
    return (total / tokens).float()


def similarity_matrices(
    a: nn.Module, ids: torch.Tensor, b: nn.Module, *, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(similarity_matrix(a, ids, b), similarity_matrix(b, ids))`` with one forward pass of each model."""
    na, nb = len(layer_list(a)), len(layer_list(b))
    cross = torch.zeros(na, nb, dtype=torch.float64)
    own = torch.zeros(nb, nb, dtype=torch.float64)
    tokens = 0
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size]
        ha = _normed_outputs(a, batch, range(na))
        hb = _normed_outputs(b, batch, range(nb))
        cross += torch.einsum("itd,jtd->ij", ha, hb).double()
        own += torch.einsum("itd,jtd->ij", hb, hb).double()
        tokens += ha.shape[1]
    return (cross / tokens).float(), (own / tokens).float()
