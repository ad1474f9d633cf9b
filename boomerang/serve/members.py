"""The members a server offers and the names a request picks them by.

A request's ``model`` names one member of the family: ``teacher`` (K = M), ``student`` (K = 0), ``kN`` (K = N
patched student layers, e.g. ``k6``), or a parameter budget ``max-params:120M`` (the largest member with at most
that many parameters). ``auto`` is resolved by the router (``boomerang.serve.router``), not here.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from .runner import Runner, shared_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..core.plan import PatchOrder
    from ..family import Family
    from ..hints import Config

AUTO = "auto"
BUDGET_PREFIX = "max-params:"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbg]?)\s*$", re.IGNORECASE)
_K = re.compile(r"^k(\d+)$")


class UnknownMember(BoomerangError):
    """A ``model`` name that names no member (the server answers 404, as OpenAI does)."""


def parse_count(text: str) -> int:
    """``"120M"`` -> 120_000_000; also ``"1.5B"``, ``"900k"`` and plain integers."""
    m = _COUNT.match(text)
    if not m:
        raise BoomerangError(
            f"cannot read the parameter budget {text!r}: write a number with an optional K, M or B suffix, "
            "e.g. max-params:120M"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def context_length(config: Config) -> int | None:
    """The longest sequence (prompt + completion) the model's positions allow, if its config says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class MemberSet:
    """Every member of ``family`` under one patch ``order``: names, parameter counts, and lazily built models.

    Members are built on first use (``Family.member``: milliseconds, no new tensors) and then kept. Only the
    engine's thread calls ``model``; the lock makes it safe for other callers too.
    """

    def __init__(self, family: Family, order: PatchOrder) -> None:
        self.family = family
        self.order = order
        self.rows = family.table(order)  # K, patched, layers, trainable, inference
        self.m = family.n_student
        self.context = context_length(family.teacher.config)
        self._built: set[int] = set()
        self._runners: dict[int, Runner] = {}
        self._shared: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    # ---- names ---------------------------------------------------------------------------------------------
    @staticmethod
    def name(k: int) -> str:
        return f"k{k}"

    def aliases(self, k: int) -> list[str]:
        return [a for a, kk in (("student", 0), ("teacher", self.m)) if kk == k]

    def params(self, k: int) -> int:
        """The member's parameter count (distinct tensors, a tied embedding once: what model cards quote)."""
        return int(self.rows[k]["trainable"])

    def resolve(self, name: str) -> int:
        """The K a member name stands for (``auto`` is the router's: it is an unknown name here)."""
        key = name.strip().lower()
        if key == "teacher":
            return self.m
        if key == "student":
            return 0
        if key.startswith(BUDGET_PREFIX):
            return self.largest_within(parse_count(key[len(BUDGET_PREFIX) :]))
        m = _K.match(key)
        if m:
            k = int(m.group(1))
            if k <= self.m:
                return k
            raise UnknownMember(
                f"the model `{name}` does not exist: this family has members k0..k{self.m} "
                f"(the student has {self.m} layers)"
            )
        hint = "" if key != AUTO else " (`auto` needs the server to be started with --max-latency-ms)"
        raise UnknownMember(
            f"the model `{name}` does not exist{hint}: use teacher, student, k0..k{self.m}, or "
            "max-params:N (e.g. max-params:120M); GET /v1/models lists the members"
        )

    def largest_within(self, budget: int) -> int:
        """The largest member (most parameters, then most teacher layers) with at most ``budget`` parameters."""
        fits = [k for k in range(self.m + 1) if self.params(k) <= budget]
        if not fits:
            smallest = min(range(self.m + 1), key=self.params)
            raise BoomerangError(
                f"no member has at most {budget:,} parameters: the smallest, {self.name(smallest)}, has "
                f"{self.params(smallest):,}; raise the max-params budget"
            )
        return max(fits, key=lambda k: (self.params(k), k))

    # ---- models --------------------------------------------------------------------------------------------
    def model(self, k: int) -> PreTrainedModel:
        """Member K, built on first use and kept; it shares every tensor with the teacher and the student."""
        with self._lock:
            model = self.family.member(k, order=self.order)
            self._built.add(k)
        return model

    def runner(self, k: int) -> Runner:
        """Member K as the engine runs it (``boomerang.serve.runner``)."""
        runner = self._runners.get(k)
        if runner is None:
            runner = self._runners[k] = Runner(self.model(k))
        return runner

    def shared_layers(self, a: int, b: int) -> int:
        """How many leading layers members ``a`` and ``b`` share (the same tensors, the same embedding)."""
        key = (min(a, b), max(a, b))
        if key not in self._shared:
            self._shared[key] = shared_layers(self.model(a), self.model(b))
        return self._shared[key]

    def built(self, k: int) -> bool:
        return k in self._built

    def describe(self, k: int) -> dict[str, Any]:
        """The ``/v1/models`` entry of member K (OpenAI's fields, then the family's)."""
        row = self.rows[k]
        return {
            "id": self.name(k),
            "object": "model",
            "created": 0,
            "owned_by": "boomerang",
            "aliases": self.aliases(k),
            "k": k,
            "layers": row["layers"],
            "patched_student_layers": row["patched"],
            "parameters": int(row["trainable"]),
            "inference_parameters": int(row["inference"]),
            "order": self.order.name,
            "context_length": self.context,
            "built": self.built(k),
        }
