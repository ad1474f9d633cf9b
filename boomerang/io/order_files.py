"""Patch-order files: reading and writing a ``PatchOrder`` as JSON (``order.json`` of a family, saved orders).

The orders themselves are pure data (``boomerang.core.plan``); data-driven orders are computed in
``boomerang.analysis.orders``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..core.layermap import LayerMap
from ..core.plan import BUILTIN_ORDERS, DATA_ORDERS, PatchOrder, as_order
from ..errors import BoomerangError
from .atomic import atomic_write_text


def load_order(path: str | Path) -> PatchOrder:
    """Read an order written by ``save_order`` (or found in a family's ``order.json``)."""
    try:
        return PatchOrder.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise BoomerangError(f"cannot read patch order from {path}: {e}") from None


def save_order(order: PatchOrder, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(order.to_json(), indent=2) + "\n")


def static_order(order: str | PatchOrder | Sequence[int], layer_map: LayerMap) -> PatchOrder:
    """An order that needs no data: a built-in name, a saved order's JSON file, a sequence or a PatchOrder.

    Data-driven order names raise a clear error here; ``boomerang.analysis.orders.resolve_order`` computes them.
    """
    named = isinstance(order, str) and (order in BUILTIN_ORDERS or order in DATA_ORDERS)
    if isinstance(order, str) and not named and (order.endswith(".json") or Path(order).is_file()):
        return as_order(load_order(order), layer_map.n_student)
    return as_order(order, layer_map.n_student)
