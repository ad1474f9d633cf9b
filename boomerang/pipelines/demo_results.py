"""What the demo measured, as the report reads it: students, ablations, sweeps keyed by (student, order).

The demo (``pipelines.demo``) fills a ``DemoResults``; the report (``pipelines.demo_report``) only reads one. Neither
knows the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ablation:
    """A student distilled on the main run's budget with one thing changed, and the order its family is swept in."""

    name: str
    what: str
    overrides: tuple[str, ...] = ()  # recipe overrides on top of the main run's
    random_init: bool = False  # start from random weights with the main student's layer map
    order: str = (
        "fixed"  # "fixed": the recipe's patch order; "primary": the demo's first order (computed anew)
    )


ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        # a random-init student trains every weight: frozen random embeddings would be no baseline at all
        Ablation(
            "random",
            "random-init student, same budget",
            (
                "train.freeze_embeddings=false",
                "train.freeze_head=false",
                "train.freeze_final_norm=false",
                "train.freeze_layers=[]",
            ),
            random_init=True,
        ),
        Ablation("nocos", "no cosine term (loss.cos=0), same budget", ("loss.cos=0",)),
        Ablation(
            "nomixed", "no mixed-context term (loss.mixed=0), same budget", ("loss.mixed=0",), order="primary"
        ),
    )
}


@dataclass(frozen=True)
class Curve:
    """One swept family: whose student, in which order."""

    student: str  # "main" or an ablation's name
    order: str

    @property
    def tag(self) -> str:
        """Its folder and key: ``main-size-aware``."""
        return f"{self.student}-{self.order}"


@dataclass
class Student:
    name: str
    what: str
    summary: dict[str, Any]  # the run's summary (``RunDir.read_summary``)
    run_dir: str  # its ``RunDir`` path


@dataclass
class TextResult:
    label: str
    source: str
    kind: str  # what it is, in words
    sweeps: dict[Curve, dict[str, Any]]  # each sweep's results.json


@dataclass
class DemoResults:
    """Everything the report shows, nothing it has to look up."""

    teacher: str
    recipe: str
    recipe_notes: str | None
    init: str  # the init in words
    kept: list[int]
    primary: str  # the order the claims (a)-(c) are checked in
    fixed: str  # the recipe's fixed order (the ablations' families)
    baselines: list[str]
    context: int
    stride: int
    students: dict[str, Student]
    texts: list[TextResult]
    analysis: dict[str, Any]
    orders: dict[str, str]
    eval_dtype: str
    eval_dtype_check: dict[str, Any] | None
    machine: dict[str, Any]
    wall_s: float
    runs: int  # runs that built this folder's results
    this_run_s: float
    timings: dict[str, float]
    history: list[dict[str, float]]
    settings: dict[str, Any]
    corpus: dict[str, str]
    command: str
    extra: dict[str, Any] = field(default_factory=dict)
