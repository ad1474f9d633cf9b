"""The end of a run: the final student (a standard HF checkpoint that records its distillation) and the summary
(``OUT/summary.json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ..core.layermap import student_section
from ..io.atomic import atomic_write_text
from .checkpointing import RunState
from .initialise import save_student
from .models import RunModels
from .recipe import Recipe
from .run_dir import RunDir

if TYPE_CHECKING:
    from ..hints import Tokenizer


def save_final_student(
    model: nn.Module,
    student_dir: Path,
    *,
    recipe: Recipe,
    state: RunState,
    models: RunModels,
    tokenizer: Tokenizer,
) -> None:
    """Record the run in the student's ``boomerang`` config section, undo the training-only switches (gradient
    checkpointing, lean MLPs, the training attention, no KV cache) and save it in the teacher checkpoint's dtype."""
    # a student whose layer map is only in student_config.json (the published format) has no section yet
    section = dict(getattr(model.config, "boomerang", None) or {})
    if section.get("role") != "student" or "layer_map" not in section:
        section = {**student_section(models.layer_map, recipe.teacher), **section, "role": "student"}
        section["layer_map"] = models.layer_map.to_json()
    section["distill"] = {
        "recipe": recipe.name,
        "steps": state.step,
        "tokens": state.tokens,
        "val_ppl": state.last_eval["ppl"] if state.last_eval else None,
    }
    model.config.boomerang = section
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    models.undo_lean()
    models.undo_attention()
    model.config.use_cache = True
    save_student(model.to(models.save_dtype), student_dir, tokenizer=tokenizer, force=True)


def run_summary(
    state: RunState,
    *,
    out: Path,
    student_dir: Path,
    eval_slice: Mapping[str, object] | None,
    world: int,
    shards: Mapping[str, object] | None,
    precision: str,
) -> dict[str, Any]:
    """The run's summary: length, speed, the last steps' loss terms, validation, sharding and precision."""
    s = state
    recent = [h for h in s.history[-10:] if not h.get("skipped")]
    return {
        "out": str(out),
        "student": str(student_dir),
        "steps": s.step,
        "tokens": s.tokens,
        "seconds": round(s.elapsed, 1),
        "tokens_per_s": round(s.tokens / max(s.elapsed, 1e-9), 1),
        "skipped_steps": s.skipped,
        "train": {
            k: round(float(np.mean([h[k] for h in recent])), 5)
            for k in ("loss", "ce", "kl", "cos", "ctx", "ctx_mse")
            if recent and k in recent[0]
        }
        if recent
        else None,
        "val_student": s.last_eval,
        "val_teacher": s.teacher_eval,
        "val_slice": eval_slice,
        "world_size": world,
        "sharding": {"strategy": "fsdp", "parameters": shards} if shards else None,
        "precision": precision,
    }


def write_summary(out: Path, summary: Mapping[str, object]) -> None:
    atomic_write_text(RunDir(out).summary, json.dumps(summary, indent=2) + "\n")
