"""Patch orders: the built-in ``last``/``first``, saved orders (JSON), and data-driven orders.

``resolve_order`` is the one entry point used by ``build``, ``family``, ``sweep`` and the Python API.
Data-driven orders (``similarity``, ``greedy-kl``, ``optimal``) are computed from calibration data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BoomerangError
from .layermap import LayerMap
from .plan import BUILTIN_ORDERS, DATA_ORDERS, PatchOrder, as_order


def load_order(path: str | Path) -> PatchOrder:
    """Read an order written by ``save_order`` (or found in a family's ``order.json``)."""
    try:
        return PatchOrder.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise BoomerangError(f"cannot read patch order from {path}: {e}") from None


def save_order(order: PatchOrder, path: str | Path) -> None:
    from .atomic import atomic_write_text

    atomic_write_text(path, json.dumps(order.to_json(), indent=2) + "\n")


def resolve_order(
    order: str | PatchOrder | Sequence[int],
    layer_map: LayerMap,
    *,
    teacher: Any = None,
    student: Any = None,
    calibration: Any = None,
    **options: Any,
) -> PatchOrder:
    """A ``PatchOrder`` from a name, a JSON file path, a sequence of student layers, or a PatchOrder."""
    named = isinstance(order, str) and (order in BUILTIN_ORDERS or order in DATA_ORDERS)
    if isinstance(order, str) and not named and (order.endswith(".json") or Path(order).is_file()):
        return as_order(load_order(order), layer_map.n_student)
    if isinstance(order, str) and order in DATA_ORDERS:
        return compute_order(order, teacher, student, layer_map, calibration, **options)
    return as_order(order, layer_map.n_student)


def compute_order(
    name: str, teacher: Any, student: Any, layer_map: LayerMap, calibration: Any, **options: Any
) -> PatchOrder:
    """Compute a data-driven order on calibration token ids ``[n, length]``."""
    if teacher is None or student is None or calibration is None:
        raise BoomerangError(f"order {name!r} needs the teacher, the student and calibration data (--data)")
    raise BoomerangError(f"order {name!r} is not implemented yet")
