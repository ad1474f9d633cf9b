"""Patch-order files: reading and writing a ``PatchOrder`` as JSON (``order.json`` of a family, saved orders).

The orders themselves are pure data (``boomerang.core.plan``); data-driven orders are computed in
``boomerang.analysis.orders``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.plan import PatchOrder
from ..errors import BoomerangError
from .atomic import atomic_write_text

ORDER_HELP = (
    "an order is a JSON list of student layers in the order they are patched, e.g. [3, 2, 1, 0], or an order "
    "saved by `boomerang order` / a family's order.json"
)


def order_from_json(data: object, where: str) -> PatchOrder:
    """A ``PatchOrder`` from parsed JSON: a bare list of student layers, or a saved order object."""
    if isinstance(data, list):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in data):
            raise BoomerangError(f"{where}: the list must hold student layer numbers only; {ORDER_HELP}")
        if not data:
            raise BoomerangError(f"{where}: the list is empty; {ORDER_HELP}")
        if sorted(data) != list(range(len(data))):
            raise BoomerangError(
                f"{where}: {data} must list every student layer 0..{len(data) - 1} exactly once; {ORDER_HELP}"
            )
        return PatchOrder.from_sequence("custom", data, len(data))
    if not isinstance(data, dict) or not isinstance(data.get("subsets"), list):
        raise BoomerangError(f"{where} is not a patch order; {ORDER_HELP}")
    try:
        return PatchOrder.from_json({"name": "custom", **data})
    except (ValueError, TypeError, OverflowError) as e:
        raise BoomerangError(
            f"{where} is not a valid patch order ({_first_error(e)}); {ORDER_HELP}"
        ) from None


def parse_order_text(text: str, where: str) -> PatchOrder:
    """A ``PatchOrder`` from JSON text (a file's content, or ``[3,2,1,0]`` given inline)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        why = (
            f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        )
        raise BoomerangError(f"{where} is not valid JSON ({why}); {ORDER_HELP}") from None
    return order_from_json(data, where)


def load_order(path: str | Path) -> PatchOrder:
    """Read an order written by ``save_order`` (or a family's ``order.json``, or a bare JSON list of layers)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BoomerangError(
            f"cannot read patch order from {path}: {getattr(e, 'strerror', None) or e}"
        ) from None
    return parse_order_text(text, f"patch order file {path}")


def save_order(order: PatchOrder, path: str | Path, *, force: bool = True) -> None:
    """Write ``order`` as JSON (atomically; without ``force``, never over an existing file)."""
    atomic_write_text(path, json.dumps(order.to_json(), indent=2) + "\n", force=force)


def _first_error(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        for err in errs():
            msg = str(err.get("ctx", {}).get("error") or err.get("msg", ""))
            return msg.removeprefix("Value error, ")
    return str(e)
