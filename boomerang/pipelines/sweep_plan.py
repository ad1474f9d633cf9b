"""What a sweep evaluates: the patch order (resolved once, saved for resuming), the calibration blocks, and the
evaluation units (distinct models: rows of equal models share one) with the result rows that point at them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..analysis.baselines import prune_to
from ..analysis.orders import default_texts
from ..core.patching import assemble
from ..core.plan import DATA_ORDERS, PatchOrder, PatchPlan
from ..data.blocks import calibration_ids
from ..errors import BoomerangError
from ..evaluate.reuse import Key, layers_key, plan_key
from ..io.order_files import load_order, save_order

if TYPE_CHECKING:
    from ..analysis.baselines import BaselineCache
    from ..core.layermap import LayerMap
    from ..family import Family, OrderSpec
    from ..hints import Model


@dataclass
class Unit:
    """One distinct model to evaluate (rows of equal models share a unit)."""

    name: str
    key: Key | None  # None: opaque (a pruned baseline), evaluated on its own
    build: Callable[[], Model]
    group: str


@dataclass
class Row:
    method: str
    K: int
    unit: str
    plan: Any = None  # PatchPlan for members and plan-shaped baselines
    role: str = ""


class Calibration:
    """The calibration blocks (data-driven orders, pruned baselines), tokenised when first needed."""

    def __init__(self, source: Any, tokenizer: Any, *, n: int, length: int):
        self.source, self.tokenizer, self.n, self.length = source, tokenizer, n, length
        self._ids: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        if self._ids is None:
            self._ids = calibration_ids(self.source, self.tokenizer, n=self.n, length=self.length)
        return self._ids


def sweep_order(partial: Path, order_spec: OrderSpec, family: Family, calibration: Calibration) -> PatchOrder:
    """The sweep's PatchOrder: the one saved in ``partial`` when resuming, else resolved by ``family.order`` (the
    one resolver, ``analysis.resolve.resolve_order``) and saved there."""
    saved, saved_spec = partial / "order.json", partial / "order_spec.json"
    spec_text = json.dumps(order_spec if isinstance(order_spec, str) else str(order_spec))
    if saved.is_file() and saved_spec.is_file():
        if saved_spec.read_text() == spec_text:
            return load_order(saved)
        raise BoomerangError(
            f"{partial} holds an interrupted sweep with a different patch order; pass --restart to discard "
            "it (or rerun with the same arguments to resume it)"
        )
    spec = order_spec
    if isinstance(spec, str) and spec.startswith("["):
        try:
            spec = [int(i) for i in json.loads(spec)]
        except (ValueError, TypeError):
            raise BoomerangError(
                f"cannot read the order {spec!r}: give a JSON list such as [3,2,1,0]"
            ) from None

    ids = None
    if isinstance(spec, str) and spec in DATA_ORDERS:
        ids = calibration()[: default_texts(spec)] if spec == "similarity" else calibration()
    order = family.order(spec, calibration=ids)
    partial.mkdir(parents=True, exist_ok=True)
    save_order(order, saved)
    saved_spec.write_text(spec_text)
    return order


def plan_rows(
    layer_map: LayerMap,
    order: PatchOrder,
    sizes: Sequence[int],
    baselines: Sequence[str],
    *,
    family: Family,
    teacher: Model,
    random: Family,
    pruned: Callable[[str, int], Model],
    pruned_layers: Callable[[str, int], Sequence[int] | None] = lambda _method, _n: None,
) -> tuple[list[Row], dict[str, Unit]]:
    """The rows (every member and baseline at every size) and the distinct units they need.

    ``pruned(method, n_layers)`` builds a pruned baseline; ``pruned_layers(method, n_layers)`` names the teacher
    layers it keeps when it is a plain choice of them (ShortGPT; None for LaCo, which merges): such a baseline is
    keyed like a naive one, so it shares its prefix of teacher layers with the other models (and is one unit with
    an equal naive model). ``random`` is the random-init student's Family.
    """
    rows: list[Row] = []
    units: dict[str, Unit] = {}
    by_key: dict[Any, str] = {}
    m, n_teacher = layer_map.n_student, layer_map.n_teacher

    def unit(name: str, key: Key | None, build: Callable[[], Model], group: str = "family") -> str:
        if key is not None and key in by_key:
            return by_key[key]
        units[name] = Unit(name, key, build, group)
        if key is not None:
            by_key[key] = name
        return name

    plans = {
        k: PatchPlan(layer_map=layer_map, patched=order.patched(k), order=order.name)
        for k in sizes
        if k < order.n_members
    }
    for k, plan in plans.items():
        role = "student" if not plan.patched else "teacher" if plan.num_patched == m else ""
        name = unit(f"boomerang K={k}", plan_key(plan), lambda p=plan: family.member(plan=p))
        rows.append(Row("boomerang", k, name, plan, role))
    for method in baselines:
        for k, plan in plans.items():
            if method == "naive":
                layers = plan.teacher_layers
                name = unit(
                    f"naive K={k}",
                    layers_key("teacher", layers),
                    lambda ls=layers: assemble(
                        {"teacher": teacher}, [("teacher", j) for j in ls], "teacher", "teacher", section=None
                    ),
                )
            elif method == "random-student":
                name = unit(
                    f"random-student K={k}",
                    plan_key(plan, {"student": "random-student"}),
                    lambda p=plan: random.member(plan=p),
                )
            elif plan.n_layers >= n_teacher:  # pruning nothing: the teacher
                name = unit("teacher", layers_key("teacher", range(n_teacher)), lambda: teacher)
            else:
                n = plan.n_layers
                kept = pruned_layers(method, n)
                key = None if kept is None else layers_key("teacher", kept)
                name = unit(
                    f"{method} {n} layers",
                    key,
                    lambda meth=method, n=n: pruned(meth, n),
                    "family" if key is not None else f"{method}-{n}",
                )
            rows.append(Row(method, k, name, plan if method in ("naive", "random-student") else None))
    return rows, units


def groups(units: dict[str, Unit]) -> dict[str, list[Unit]]:
    """Units by evaluation group (in order): the keyed models together, each opaque pruned baseline alone."""
    out: dict[str, list[Unit]] = {}
    for u in units.values():
        out.setdefault(u.group, []).append(u)
    return out


def pruned_baseline(
    teacher: Model,
    method: str,
    n_layers: int,
    calibration: torch.Tensor,
    params: dict,
    *,
    cache: BaselineCache | None = None,
) -> Any:
    """``method`` (shortgpt, laco) applied to the teacher down to ``n_layers`` layers (measurements shared with
    other sizes through ``cache``)."""
    return prune_to(
        teacher, method, num_layers=n_layers, calibration=calibration, cache=cache, **params
    ).eval()
