"""A training run's directory: the files the trainer writes there (``RunDir``, the one place they are named), and
the directory before training: start fresh, resume from its last checkpoint, or refuse (another directory, an
existing run without --resume or --force, a recipe that changed in what a resumed run depends on). Nothing here
imports torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError

if TYPE_CHECKING:
    from .recipe import Recipe

STATE = "state.json"  # each checkpoint's training state; a checkpoint directory holding it is complete


@dataclass(frozen=True)
class RunDir:
    """A run directory and its files, as ``boomerang.train.trainer`` lays them out::

    recipe.yaml       the resolved recipe (a directory holding one is a run)
    metrics.jsonl     one record per logged step and per validation
    checkpoints/      the training state, ``step-N`` each
    student/          the final student: a standard HF checkpoint with its layer map
    summary.json      the run's summary, written when it finishes
    tensorboard/      the metrics as TensorBoard events (when tensorboard is installed)
    """

    path: Path

    RECIPE = "recipe.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    STUDENT = "student"
    SUMMARY = "summary.json"
    TENSORBOARD = "tensorboard"
    RECORDS = (RECIPE, SUMMARY)  # the small files that tell what a run was and what it gave

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def recipe(self) -> Path:
        return self.path / self.RECIPE

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def student(self) -> Path:
        return self.path / self.STUDENT

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def checkpoint(self, step: int) -> Path:
        """Where the checkpoint of step ``step`` lives."""
        return self.checkpoints / f"step-{step:07d}"

    def is_run(self) -> bool:
        """Whether a run was started here (it wrote its recipe)."""
        return self.recipe.is_file()

    def has_student(self) -> bool:
        """Whether the run finished and saved its final student."""
        return (self.student / "config.json").is_file()

    def read_summary(self) -> dict[str, Any]:
        """The run's summary, or ``{}`` before it has one."""
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged records, oldest first (``[]`` before the first)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(x) for x in self.metrics.read_text().splitlines() if x.strip()]


RESUME_FREE = {  # recipe keys a resumed run may change
    "out",
    "checkpoint",
    "log",
    "eval",
    "train.max_nonfinite",
    "train.threads",
    "train.strategy",
    "train.teacher_cache",  # cached teacher outputs are bit-identical to computed ones
    "name",
}


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first."""
    d = RunDir(out).checkpoints
    if not d.is_dir():
        return []
    done = [p for p in d.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def started_precision(out: Path) -> str | None:
    """The precision OUT's newest checkpoint records (None: no checkpoint, or one from before it was recorded)."""
    done = list_checkpoints(out)
    return json.loads((done[-1] / STATE).read_text()).get("precision") if done else None


def resume_point(out: Path, *, resume: bool, force: bool) -> Path | None:
    """Check OUT; returns the checkpoint to resume from, if any."""
    is_run = RunDir(out).is_run()
    if out.exists() and not out.is_dir():
        raise BoomerangError(f"{out} exists and is not a directory")
    if resume:
        ckpts = list_checkpoints(out)
        if ckpts:
            return ckpts[-1]
        if out.exists() and any(out.iterdir()) and not is_run:
            raise BoomerangError(f"{out} is not a boomerang run directory; nothing to resume there")
        return None
    if out.exists() and any(out.iterdir()):
        if not force:
            raise BoomerangError(
                f"{out} already exists; pass --resume to continue that run or --force to start over"
            )
        if not is_run:
            raise BoomerangError(
                f"{out} exists and is not a boomerang run directory (no {RunDir.RECIPE}); refusing to delete it"
            )
    return None


def check_resumable(out: Path, recipe: Recipe) -> None:
    """The recipe equals the one OUT was started with, except in ``RESUME_FREE`` keys."""
    import yaml

    saved_file = RunDir(out).recipe
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text())
    now = recipe.model_dump(mode="json")
    diffs = [k for k in _diff(saved, now) if not any(k == f or k.startswith(f + ".") for f in RESUME_FREE)]
    if diffs:
        raise BoomerangError(
            f"cannot resume {out}: the recipe differs from the one it was started with in "
            f"{', '.join(diffs)}. Use the same settings, or start a new run (--force or another --out)."
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
