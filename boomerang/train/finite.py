"""Never save a student that is not finite: the check before every checkpoint and the final save, and a message
naming the step, the likely cause and the last good checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import BoomerangError
from .checkpointing import RunState
from .run_dir import list_checkpoints

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..train.recipe import Recipe


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding NaN or infinity (this process's shards under FSDP)."""
    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 DTensor: its shard
            if local.is_floating_point() and local.numel() and not bool(torch.isfinite(local).all()):
                bad.append(name)
    return bad


def check_finite(
    model: nn.Module, *, acc: Accelerator, state: RunState, recipe: Recipe, out: Path, when: str
) -> None:
    """Raise (on every process alike) if any weight of ``model`` is not finite; ``when`` says what is not done."""
    bad = nonfinite_parameters(model)
    count = len(bad)
    if acc is not None and acc.num_processes > 1:
        count = int(acc.reduce(torch.tensor(count, device=acc.device), "sum"))
    if count == 0:
        return
    example = f", e.g. {bad[0]}" if bad else ""
    raise BoomerangError(
        f"the student's weights are not finite after step {state.step} (NaN or infinity in {count} tensors"
        f"{example}); {when}. {likely_cause(state, recipe)} {_kept(out)}"
    )


def last_update(state: RunState) -> int | None:
    """The last step whose update was applied (not skipped), as far as the recent history tells."""
    done = [int(h["step"]) for h in state.history if not h.get("skipped")]
    return done[-1] if done else None


def likely_cause(state: RunState, recipe: Recipe) -> str:
    step = last_update(state)
    if state.step == 0 or (step is None and state.skipped >= state.step):
        source = f"the student checkpoint {recipe.student}" if recipe.student else "the initialised student"
        return (
            f"No update was applied, so {source} was not finite to begin with: check or re-create it "
            "(boomerang init)."
        )
    at = f"the update of step {step}" if step is not None else "an update"
    return (
        f"The likely cause is {at}: a learning rate too high for this model (optim.lr={recipe.optim.lr:g}) "
        "or data that makes the loss overflow. Lower optim.lr (or raise optim.warmup_ratio) and start again "
        "(--force)."
    )


def _kept(out: Path) -> str:
    ckpts = list_checkpoints(out)
    if not ckpts:
        return "Nothing was saved (the run has no checkpoint)."
    return f"Nothing newer was saved; the last good checkpoint, {ckpts[-1]}, is kept."
