"""The one place where a patch-order spec becomes a ``PatchOrder``.

A spec is what users give (``OrderSpec``): nothing (the order the student records, else ``last``), a built-in
name (``last``, ``first``), a data-driven name (``similarity``, ``greedy-kl``, ``shortest-path``, ``optimal``,
``size-aware``: computed on calibration data by ``boomerang.analysis.orders``), a JSON order file, an inline JSON
list (``"[3,2,1,0]"``), a sequence of student layers, or a ``PatchOrder``. ``build``, ``family``, ``sweep``,
``serve``, ``prune``, ``info``, ``Family`` and ``patch`` all resolve through ``resolve_order``.

This module imports neither torch nor transformers (the streamed ``build`` stays torch-free); only a data-driven
order loads the search.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.plan import BUILTIN_ORDERS, DATA_ORDERS, OrderSpec, PatchOrder, is_data_order
from ..errors import BoomerangError
from ..io.order_files import load_order, parse_order_text

if TYPE_CHECKING:
    from ..core.layermap import LayerMap
    from ..hints import Calibration, Config, Model


def resolve_order(
    spec: OrderSpec | None,
    layer_map: LayerMap,
    *,
    config: Config | None = None,
    teacher: Model | None = None,
    student: Model | None = None,
    calibration: Calibration | None = None,
    **search: Any,
) -> PatchOrder:
    """The ``PatchOrder`` a spec names, for the student of ``layer_map``.

    ``None`` is the order the student's ``config`` records (else ``last``). A data-driven name needs ``teacher``,
    ``student`` and ``calibration`` token ids; ``search`` passes options on to ``compute_order``.
    """
    m = layer_map.n_student
    if spec is None:
        return PatchOrder.builtin("last", m) if config is None else PatchOrder.recorded(config, m)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, PatchOrder):
        return spec.check_fits(m)
    if is_data_order(spec):
        if teacher is None or student is None or calibration is None:
            PatchOrder.builtin(str(spec), m)  # raises: the order needs calibration data
        from .orders import compute_order

        return compute_order(str(spec), teacher, student, layer_map, calibration, **search)
    if isinstance(spec, str):
        return _named(spec, m)
    if isinstance(spec, Sequence):
        return PatchOrder.from_sequence("custom", spec, m)
    raise BoomerangError(f"a patch order is a name, a JSON file, or a list of student layers; got {spec!r}")


def check_order(spec: OrderSpec | None, layer_map: LayerMap, *, config: Config | None = None) -> None:
    """Fail now, before any model is loaded, if ``spec`` cannot be an order of this student (data-driven names
    pass: they are computed later)."""
    if not is_data_order(spec):
        resolve_order(spec, layer_map, config=config)


def check_order_data(spec: OrderSpec | None, data: object) -> None:
    """Calibration data is read only by the data-driven orders: refuse it with any other."""
    if data is not None and not is_data_order(spec):
        raise BoomerangError(
            f"--data is read only by the data-driven orders ({', '.join(DATA_ORDERS)}); drop --data, or choose "
            "one of them with --order"
        )


def _named(spec: str, m: int) -> PatchOrder:
    """A built-in name, an inline JSON list, or a JSON order file."""
    if spec in BUILTIN_ORDERS:
        return PatchOrder.builtin(spec, m)
    if spec.lstrip().startswith("["):
        return parse_order_text(spec, f"the order {spec!r}").check_fits(m)
    if spec.endswith(".json") or Path(spec).is_file():
        return load_order(spec).check_fits(m)
    return PatchOrder.builtin(spec, m)  # raises: an unknown name
