"""What both stream builders share (``StreamBuilder`` in ``stream``, ``FastBuilder`` in ``fastbuild``).

A builder writes family members straight from the teacher's and the student's checkpoint files: it plans a member,
sizes it, checks the free space and writes config, weights and tokenizer into a directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.layermap import LayerMap
from ..core.params import ParamCount
from ..core.plan import PatchOrder, PatchPlan, make_plan
from ..errors import BoomerangError
from .checkpoints import check_free_space
from .safetensors_files import DEFAULT_SHARD_SIZE, Convert, OutTensor, ProgressFn, write_weights


class Builder:
    """What both stream builders share: plans, sizes and the free-space check."""

    layer_map: LayerMap | None
    teacher: Any  # the teacher checkpoint: ``path``, ``config`` and its held ``snapshot``
    student: (
        Any  # the student checkpoint: its ``config`` (a model config or a config.json dict), ``snapshot``
    )

    def plan(
        self,
        num_patched: int | None = None,
        *,
        order: PatchOrder | None = None,
        patched: Iterable[int] | None = None,
    ) -> PatchPlan:
        """A member's plan; ``order`` defaults to the order the student's config records, else ``last``."""
        if self.layer_map is None:
            raise BoomerangError(
                "the student carries no layer map (no 'boomerang' config section and no student_config.json); "
                "pass layer_map=LayerMap.from_kept([...]) or --layers"
            )
        if order is None and patched is None:
            order = PatchOrder.recorded(self.student.config, self.layer_map.n_student)
        return make_plan(self.layer_map, num_patched=num_patched, order=order, patched=patched)

    def nbytes(self, plan: PatchPlan) -> int:
        """Bytes of weights the member takes on disk (headers and tokenizer not included)."""
        raise NotImplementedError

    def params(self, plan: PatchPlan) -> ParamCount:
        """The member's parameter counts."""
        raise NotImplementedError

    def write(
        self,
        plan: PatchPlan,
        directory: str | os.PathLike,
        *,
        max_shard_size: int | str = DEFAULT_SHARD_SIZE,
        tokenizer: bool = True,
        progress: ProgressFn | None = None,
    ) -> int:
        """Write the member into an existing (empty) directory; returns the bytes of weights written."""
        directory = Path(directory)
        tensors, total_parameters = self._write_configs(plan, directory)
        write_weights(
            directory,
            tensors,
            max_shard_size=max_shard_size,
            total_parameters=total_parameters,
            progress=progress,
            convert=self._convert,
        )
        if tokenizer:
            self._write_tokenizer(directory)
        self.verify()  # every pass read one version of both checkpoints, or the member is not kept
        return sum(t.nbytes for t in tensors)

    def verify(self) -> None:
        """Stop (``ChangedWhileRead``) if the teacher's or the student's files changed since they were opened."""
        for ckpt in (self.teacher, self.student):
            ckpt.snapshot.verify()

    # what each builder does its own way
    _convert: Convert | None = None  # for tensors whose dtype changes

    def _write_configs(self, plan: PatchPlan, directory: Path) -> tuple[list[OutTensor], int]:
        """Write config.json (and generation_config.json); returns the tensors and the parameter count."""
        raise NotImplementedError

    def _write_tokenizer(self, directory: Path) -> None:
        raise NotImplementedError

    def check_space(self, plan: PatchPlan, out: str | os.PathLike) -> None:
        """Refuse, before writing anything, if ``out``'s file system cannot hold the member."""
        check_free_space(
            out,
            self.nbytes(plan) + (1 << 20),
            "the model",
            "Write a smaller dtype (--dtype bfloat16) or choose another --out.",
        )
