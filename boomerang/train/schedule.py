"""The learning-rate schedule: transformers' warm-up schedules, stepped once per optimizer step.

As in the reference code (HF ``Trainer``), the warm-up starts at lr 0 on the first step and reaches the peak after
``warmup`` steps; cosine then decays to ``min_lr_ratio`` × lr by the last step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from ..errors import BoomerangError


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Warm-up steps for a run of ``total_steps`` optimizer steps (rounded up, as HF does)."""
    return math.ceil(warmup_ratio * total_steps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, *, warmup: int, total: int, min_lr_ratio: float = 0.0
) -> Any:
    """``cosine`` (to ``min_lr_ratio`` × lr), ``linear`` (to 0) or ``constant``, each after a linear warm-up."""
    if schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total, min_lr_rate=min_lr_ratio
        )
    if min_lr_ratio:
        raise BoomerangError(
            f"optim.min_lr_ratio={min_lr_ratio} applies to the cosine schedule only; set it to 0 for "
            f"optim.schedule={schedule!r}, or use schedule: cosine"
        )
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    raise BoomerangError(f"unknown optim.schedule {schedule!r}; use cosine, linear or constant")
