"""Validation during a run: the loss terms and perplexity of the student (or the CE of the teacher alone) on the
held-out blocks, each process scoring its share and the sums reduced over processes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.layermap import LayerMap
from . import sharding
from .losses import DistillLoss, LossConfig, LossOutput, token_counts
from .models import LossForward

if TYPE_CHECKING:
    from accelerate import Accelerator


def reduce_sums(acc: Accelerator, sums: dict[str, float]) -> dict[str, float]:
    """``sums`` added over every process (as float64; one process: unchanged)."""
    keys = sorted(sums)
    if acc.num_processes == 1:
        return sums
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=acc.device)
    t = acc.reduce(t, reduction="sum")
    return dict(zip(keys, t.tolist(), strict=True))


@dataclass
class Validator:
    """Scores the validation blocks with the run's models, accelerator and loss."""

    blocks: Any  # data.blocks.TokenBlocks
    batch_size: int
    acc: Any  # accelerate.Accelerator
    fsdp: bool
    teacher: nn.Module
    student: nn.Module
    t_mod: nn.Module | None  # the teacher's loss forward (None: CE only, no teacher forward)
    s_mod: nn.Module  # the student's loss forward as prepared (DDP-wrapped or sharded)
    loss_fn: DistillLoss
    layer_map: LayerMap
    mode: str  # "head" or "logits"
    chunk_tokens: int

    def _release_teacher(self) -> None:
        if self.fsdp and self.t_mod is not None:
            sharding.release(self.teacher)

    @torch.no_grad()
    def __call__(self, model: nn.Module | None = None) -> dict[str, float]:
        """Loss terms and perplexity (the student, or ``model`` alone for CE)."""
        acc, blocks, world = self.acc, self.blocks, self.acc.num_processes
        # FSDP forwards are collective: every process must run the same number of them
        usable = len(blocks) - len(blocks) % world if self.fsdp else len(blocks)
        mine = list(range(acc.process_index, usable, world))
        t_mod = self.t_mod
        if model is not None and t_mod is None:
            t_mod = LossForward(model.to(acc.device), [], self.mode)
        sums = {"ce": 0.0, "kl": 0.0, "cos": 0.0, "ctx": 0.0, "ctx_mse": 0.0, "n_ce": 0.0, "n_tok": 0.0}
        student = self.s_mod if self.fsdp else acc.unwrap_model(self.s_mod)  # no DDP buffer syncs
        ce_only = DistillLoss(LossConfig(kl=0, cos=0, chunk_tokens=self.chunk_tokens), self.layer_map)
        was_training = student.training
        student.eval()
        try:
            for i in range(0, len(mine), self.batch_size):
                b = blocks.batch(mine[i : i + self.batch_size]).to(acc.device)
                n_ce, n_tok = token_counts(b.input_ids, b.attention_mask)
                lo: LossOutput
                if model is not None:  # CE of the teacher alone
                    with acc.autocast():
                        o = t_mod(b.input_ids, b.attention_mask)  # type: ignore[misc]
                        lo = ce_only(o, None, b.input_ids, b.attention_mask, n_ce=n_ce, n_tok=n_tok)
                else:
                    t_out = None
                    if self.t_mod is not None:
                        with acc.autocast():
                            t_out = self.t_mod(b.input_ids, b.attention_mask)
                    s_out = student(b.input_ids, b.attention_mask, self.loss_fn.ctx_inputs(t_out))
                    with acc.autocast():
                        lo = self.loss_fn(s_out, t_out, b.input_ids, b.attention_mask, n_ce=n_ce, n_tok=n_tok)
                self._release_teacher()
                for k, v in lo.sums.items():
                    sums[k] = sums.get(k, 0.0) + v
        finally:
            student.train(was_training)
            if self.fsdp:  # no backward follows to reshard the student's head
                sharding.release(self.student)
        sums = reduce_sums(acc, sums)
        terms = self.loss_fn.summarise(sums) if model is None else {"ce": sums["ce"] / max(sums["n_ce"], 1)}
        terms["ppl"] = math.exp(min(terms["ce"], 50.0))
        terms["tokens"] = sums["n_tok"]
        return terms
