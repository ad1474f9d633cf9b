"""The run directory before training: start fresh, resume from its last checkpoint, or refuse (another directory,
an existing run without --resume or --force, a recipe that changed in what a resumed run depends on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BoomerangError
from .checkpointing import list_checkpoints
from .recipe import Recipe

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


def resume_point(out: Path, *, resume: bool, force: bool) -> Path | None:
    """Check OUT; returns the checkpoint to resume from, if any."""
    is_run = (out / "recipe.yaml").is_file()
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
                f"{out} exists and is not a boomerang run directory (no recipe.yaml); refusing to delete it"
            )
    return None


def check_resumable(out: Path, recipe: Recipe) -> None:
    """The recipe equals the one OUT was started with, except in ``RESUME_FREE`` keys."""
    import yaml

    saved_file = out / "recipe.yaml"
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
