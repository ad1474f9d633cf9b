"""Patch plans: which student layers are replaced by their teacher blocks, and in which order sizes grow.

``PatchPlan`` is the single description of one intermediate model. Everything that builds models (in-memory
``patch``, the streaming writer, ``Family``) consumes it, so all of them agree on what "K patched layers" means.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..errors import BoomerangError
from .layermap import CONFIG_KEY, LayerMap, first_error

if TYPE_CHECKING:
    from ..hints import Config

Who = Literal["teacher", "student"]
Source = tuple[Who, int]  # (model, layer index in that model)


BUILTIN_ORDERS = ("last", "first")
# need calibration data: see boomerang.analysis.orders
DATA_ORDERS = ("similarity", "greedy-kl", "shortest-path", "optimal", "size-aware")


DEFAULT_ORDER = "last"  # for students that record no patch order


class PatchOrder(BaseModel):
    """The family's members, smallest first: for each one, the set of student layers patched.

    Most orders have one member per K = 0..M, member K patching K student layers. Orders built from a sequence
    (``last``, ``first``, ``similarity``, ``greedy-kl``) are nested: member K+1 adds one layer to member K. Per-size
    searches (``optimal``, ``shortest-path``) need not be nested, so subsets are stored per member.

    An order ``by_size`` (``size-aware``) has one member per distinct size instead: member k is the best member
    of the k-th smallest layer count, patching any number of layers (single-layer blocks change no size, so
    several K share a size). ``student_layers`` then gives M.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    subsets: tuple[tuple[int, ...], ...]
    info: dict[str, Any] = {}
    by_size: bool = False
    student_layers: int | None = None

    @field_validator("subsets", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        return tuple(tuple(sorted(int(x) for x in s)) for s in v)

    @model_validator(mode="after")
    def _check(self) -> PatchOrder:
        m = self.n_student
        if self.by_size:
            if self.student_layers is None:
                raise ValueError(f"order {self.name!r} is by size: give student_layers (M)")
            if not self.subsets or len(set(self.subsets)) != len(self.subsets):
                raise ValueError(f"order {self.name!r}: its members must be distinct patched sets")
        elif self.student_layers is not None and self.student_layers != len(self.subsets) - 1:
            raise ValueError(
                f"order {self.name!r}: {len(self.subsets)} members, one per K = 0..M, but student_layers is "
                f"{self.student_layers}"
            )
        for k, s in enumerate(self.subsets):
            if len(set(s)) != len(s) or any(not 0 <= i < m for i in s):
                raise ValueError(
                    f"order {self.name!r}: member {k} must patch distinct layers of 0..{m - 1}, got {s}"
                )
            if not self.by_size and len(s) != k:
                raise ValueError(
                    f"order {self.name!r}: size {k} must patch {k} distinct layers of 0..{m - 1}, got {s}"
                )
        return self

    @property
    def n_student(self) -> int:
        return self.student_layers if self.student_layers is not None else len(self.subsets) - 1

    @property
    def n_members(self) -> int:
        """How many members the order names (M + 1, or the number of distinct sizes for an order by size)."""
        return len(self.subsets)

    @classmethod
    def from_sequence(cls, name: str, sequence: Sequence[int], n_student: int, **info: object) -> PatchOrder:
        seq = [int(i) for i in sequence]
        if sorted(seq) != list(range(n_student)):
            raise BoomerangError(
                f"patch order {seq} must list every student layer 0..{n_student - 1} exactly once"
            )
        return cls(name=name, subsets=[seq[:k] for k in range(n_student + 1)], info={"sequence": seq, **info})

    @classmethod
    def builtin(cls, name: str, n_student: int) -> PatchOrder:
        """``last`` patches the last K student layers; ``first`` the first K."""
        if name == "last":
            return cls.from_sequence("last", range(n_student - 1, -1, -1), n_student)
        if name == "first":
            return cls.from_sequence("first", range(n_student), n_student)
        if name in DATA_ORDERS:
            raise BoomerangError(
                f"order {name!r} is computed from calibration data; build it with boomerang.compute_order(...) "
                "or pass --data on the command line"
            )
        raise BoomerangError(
            f"unknown patch order {name!r}; known orders: {', '.join(BUILTIN_ORDERS + DATA_ORDERS)}"
        )

    @classmethod
    def recorded(cls, config: Config, n_student: int) -> PatchOrder:
        """The order a student's config records, else ``last`` (the default of every command and API)."""
        return cls.builtin(recorded_order_name(config), n_student)

    def check_fits(self, n_student: int) -> PatchOrder:
        """This order, if it is for ``n_student`` student layers; else a clear error."""
        if self.n_student != n_student:
            raise BoomerangError(
                f"the patch order {self.name!r} is for {self.n_student} student layers, but this student has "
                f"{n_student}; give an order of its layers 0..{n_student - 1}, e.g. "
                f"{list(range(n_student - 1, -1, -1))}"
            )
        return self

    @property
    def sequence(self) -> list[int] | None:
        """The order in which layers are added, if the order is nested (one member per K)."""
        if self.by_size:
            return None
        seq: list[int] = []
        for a, b in zip(self.subsets, self.subsets[1:], strict=False):
            extra = set(b) - set(a)
            if len(extra) != 1 or not set(a) <= set(b):
                return None
            seq.append(extra.pop())
        return seq

    def patched(self, k: int) -> tuple[int, ...]:
        if not 0 <= k < self.n_members:
            if self.by_size:
                raise BoomerangError(
                    f"member {k} is out of range: order {self.name!r} has {self.n_members} sizes "
                    f"(0..{self.n_members - 1})"
                )
            raise BoomerangError(
                f"num_patched={k} is out of range: the student has {self.n_student} layers (0..{self.n_student})"
            )
        return self.subsets[k]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "subsets": [list(s) for s in self.subsets],
            "info": self.info,
        }
        if self.by_size:
            out.update(by_size=True, student_layers=self.student_layers)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PatchOrder:
        return cls(
            name=data["name"],
            subsets=data["subsets"],
            info=data.get("info", {}),
            by_size=bool(data.get("by_size", False)),
            student_layers=data.get("student_layers"),
        )


# What users give for an order: a name, a JSON order file, an inline JSON list, a sequence of student layers, or
# a PatchOrder; boomerang.resolve_order turns any of them into a PatchOrder.
OrderSpec = str | os.PathLike | PatchOrder | Sequence[int]


def recorded_order_name(config: Config) -> str:
    """The name of the patch order a student's config records (``boomerang.patch_order``, written by ``init`` from
    the recipe's ``patch_order``), else ``last``. ``config`` is a model config or a ``config.json`` dict."""
    section = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
    order = section.get("patch_order") if isinstance(section, dict) else None
    return order if order in BUILTIN_ORDERS else DEFAULT_ORDER


def is_data_order(spec: object) -> bool:
    """Whether an order spec names an order computed from calibration data (see boomerang.analysis.orders)."""
    return isinstance(spec, str) and spec in DATA_ORDERS


class PatchPlan(BaseModel):
    """One intermediate model: the student with the listed layers replaced by their teacher blocks."""

    model_config = ConfigDict(frozen=True)

    layer_map: LayerMap
    patched: tuple[int, ...]
    order: str | None = None
    # Reference-compatibility only: force the embedding's source (the reference's first-k patching always
    # takes the teacher's embedding, even when no layer is patched).
    embed_override: Who | None = None

    @field_validator("patched", mode="before")
    @classmethod
    def _sorted(cls, v: Any) -> Any:
        return tuple(sorted(int(x) for x in v))

    @model_validator(mode="after")
    def _check(self) -> PatchPlan:
        m = self.layer_map.n_student
        bad = [i for i in self.patched if not 0 <= i < m]
        if bad:
            raise ValueError(f"student layers {bad} do not exist: the student has layers 0..{m - 1}")
        if len(set(self.patched)) != len(self.patched):
            raise ValueError(f"patched layers {list(self.patched)} contain duplicates")
        return self

    @property
    def num_patched(self) -> int:
        return len(self.patched)

    @property
    def sources(self) -> list[Source]:
        """For every layer of the result: the model and layer index it comes from."""
        out: list[Source] = []
        patched = set(self.patched)
        for i in range(self.layer_map.n_student):
            if i in patched:
                out.extend(("teacher", j) for j in self.layer_map.block(i))
            else:
                out.append(("student", i))
        return out

    @property
    def teacher_layers(self) -> list[int]:
        """For every layer of the result, the teacher layer it is (or was initialised from)."""
        return [j if who == "teacher" else self.layer_map.kept[j] for who, j in self.sources]

    @property
    def embed_source(self) -> Who:
        if self.embed_override is not None:
            return self.embed_override
        return "teacher" if 0 in self.patched else "student"

    @property
    def head_source(self) -> Who:
        return "teacher" if self.layer_map.n_student - 1 in self.patched else "student"

    @property
    def n_layers(self) -> int:
        return len(self.sources)

    def provenance(self) -> dict[str, Any]:
        """The ``boomerang`` config section of a built model."""
        d: dict[str, Any] = {
            "role": "intermediate",
            "layer_map": self.layer_map.to_json(),
            "num_patched": self.num_patched,
            "patched_student_layers": list(self.patched),
            "order": self.order,
            "layer_sources": [[who, j] for who, j in self.sources],
            "teacher_layers": self.teacher_layers,
            "embedding_from": self.embed_source,
            "head_from": self.head_source,
        }
        if self.embed_override is not None:
            d["embedding_override"] = self.embed_override
        return d


def make_plan(
    layer_map: LayerMap,
    *,
    num_patched: int | None = None,
    order: PatchOrder | None = None,
    patched: Iterable[int] | None = None,
) -> PatchPlan:
    """A plan from either an explicit set ``patched`` or a count ``num_patched`` under ``order`` (default ``last``;
    ``boomerang.resolve_order`` makes an order from a name, file or list)."""
    if (num_patched is None) == (patched is None):
        raise BoomerangError(
            "give exactly one of num_patched (with an order) or an explicit set of patched layers"
        )
    if patched is not None:
        return _plan(layer_map, [int(i) for i in patched], None)
    m = layer_map.n_student
    patch_order = PatchOrder.builtin("last", m) if order is None else order.check_fits(m)
    # patch_order.patched checks the range of num_patched
    return _plan(layer_map, patch_order.patched(num_patched), patch_order.name)


def _plan(layer_map: LayerMap, patched: Sequence[int], order: str | None) -> PatchPlan:
    """A PatchPlan, its validators' first complaint (layers that do not exist, duplicates) as a BoomerangError."""
    try:
        return PatchPlan(layer_map=layer_map, patched=patched, order=order)
    except ValidationError as e:
        raise BoomerangError(first_error(e)) from None


# ---- the reference implementation's counting (dcml-lab/boomerang-distillation) -------------------------------


def reference_patched(layer_map: LayerMap, k: int, patch_first: bool) -> list[int]:
    """Student layers the reference ``build_intermediate_model`` replaces for ``num_layers_to_patch=k``.

    The reference counts only student layers whose block holds two or more teacher layers. Patching from the
    end, the trailing single-layer blocks are always taken from the teacher together with the multi-layer
    blocks; patching from the start, the leading single-layer blocks before the k-th multi-layer block are.
    When ``k`` exceeds the number of multi-layer blocks the reference returns the teacher: every layer.
    """
    kept, m = layer_map.kept, layer_map.n_student
    if k < 0:
        raise BoomerangError(f"num_layers_to_patch must be >= 0, got {k}")
    if patch_first:
        # student layers i < M-1 whose block [l_i, l_{i+1}) has 2+ layers (the last block is never counted)
        multi = [i for i in range(m - 1) if kept[i + 1] - kept[i] > 1]
        return list(range(m)) if k >= len(multi) else list(range(multi[k]))
    # student layers j >= 1 whose preceding block has 2+ layers; patching keeps student layers [:j]
    multi = [i + 1 for i in range(m - 1) if kept[i + 1] - kept[i] > 1]
    return list(range(m)) if k + 1 > len(multi) else list(range(multi[-(k + 1)], m))


def reference_plan(
    layer_map: LayerMap, num_layers_to_patch: int, patch_first_k_layers: bool = False
) -> PatchPlan:
    """The plan the reference ``build_intermediate_model`` builds for these arguments (``boomerang.compat``)."""
    patched = reference_patched(layer_map, num_layers_to_patch, patch_first_k_layers)
    whole_teacher = len(patched) == layer_map.n_student
    return PatchPlan(
        layer_map=layer_map,
        patched=patched,
        order="reference-first" if patch_first_k_layers else "reference-last",
        embed_override="teacher" if patch_first_k_layers and not whole_teacher else None,
    )
