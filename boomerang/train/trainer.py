"""The distillation trainer (stage 2) on Hugging Face Accelerate: setup, the step, validation and the loop.

One process on CPU or GPU, or several through ``accelerate launch`` / ``torchrun`` (DDP; FSDP shards the
teacher as well). The teacher is frozen (eval mode, no gradients, no optimizer state). Every optimizer step
consumes ``train.batch_size`` blocks in a seeded order; each process takes its share of micro-batches, and the
loss is normalised by the token counts of the whole global batch, so any split into processes and gradient
accumulation steps gives the same update.

The parts live beside it: ``run_dir`` (fresh, resumed or refused), ``precision`` (fp32 or bf16), ``models``
(teacher, student, loss forwards), ``run_data`` (blocks and the run's length), ``schedule`` (the LR schedule),
``validation``, ``checkpointing``, ``reporting`` and ``finish`` (the final student and the summary).

The run directory's files are named in one place, ``run_dir.RunDir``.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from torch import nn
from transformers.utils import logging as hf_logging

from .. import ui
from ..core.allocator import keep_freed_memory
from ..errors import BoomerangError
from . import sharding
from .checkpointing import Checkpointer, RunState
from .finish import run_summary, save_final_student, write_summary
from .finite import check_finite
from .losses import ModelOutputs, model_outputs, token_counts
from .models import compile_layers, optimizer_groups, prepare_models
from .precision import choose_precision
from .recipe import Recipe
from .reporting import MetricsLog, plan_lines, print_lines, print_summary, progress_bar, validation_line
from .run_data import prepare_data
from .run_dir import STATE, RunDir, check_resumable, list_checkpoints, resume_point, started_precision
from .schedule import make_scheduler, warmup_steps
from .teacher_cache import TeacherCache, cache_fingerprint
from .validation import Validator, reduce_sums

__all__ = ["PAUSE_ENV", "STATE", "Distiller", "distill", "list_checkpoints"]

PAUSE_ENV = "BOOMERANG_TEST_PAUSE_AFTER_STEP"  # tests: stop (and wait to be killed) after this step


class Distiller:
    """Sets up teacher, student, data, loss and optimizer from a recipe, and runs the training loop."""

    def __init__(
        self, recipe: Recipe, *, out: str | Path | None = None, resume: bool = False, force: bool = False
    ):
        self.recipe = recipe
        self.out = recipe.run_dir(out)
        self.resume, self.force = resume, force

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        hf_logging.disable_progress_bar()
        r = self.recipe
        if r.train.threads:
            torch.set_num_threads(r.train.threads)
        started = started_precision(self.out) if self.resume else None
        self.precision_choice = choose_precision(r.train.precision, started=started)
        self.precision = precision = self.precision_choice.name
        AcceleratorState._reset_state()  # a process may run several recipes (the distributed state is kept)
        # several processes without GPUs: accelerate only picks the gloo (MULTI_CPU) path when told cpu=True
        cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        self.acc = acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=cpu)
        if acc.device.type == "cpu":
            keep_freed_memory()  # no page faults for activations freed and re-allocated every step
        self.main = acc.is_main_process
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.fsdp = sharding.wanted(
            r.train.strategy, acc.distributed_type == DistributedType.FSDP, self.world
        )
        per_step = r.train.micro_batch_size * self.world
        if r.train.batch_size % per_step:
            raise BoomerangError(
                f"train.batch_size ({r.train.batch_size}) must be a multiple of micro_batch_size × processes "
                f"({r.train.micro_batch_size} × {self.world})"
            )
        self.accum = r.train.batch_size // per_step

        decision: tuple[str | None, str | None] = (None, None)  # (checkpoint to resume, error)
        if self.main:  # the main process decides; every process raises the same error, none waits forever
            try:
                ckpt = resume_point(self.out, resume=self.resume, force=self.force)
                decision = (str(ckpt) if ckpt else None, None)
            except BoomerangError as e:
                decision = (None, str(e))
        resume_from, error = self._broadcast(decision)
        if error:
            raise BoomerangError(error)
        self.resume_from = Path(resume_from) if resume_from else None
        if self.resume and self.resume_from is not None:
            check_resumable(self.out, self.recipe)
        if self.main and not self.resume and self.out.exists() and self.force:
            shutil.rmtree(self.out)
        acc.wait_for_everyone()
        set_seed(r.train.seed)

        m = prepare_models(
            r,
            bf16=precision == "bf16",
            fsdp=self.fsdp,
            note=self._note,
            world=self.world,
            cpu=self.acc.device.type == "cpu",
        )
        self.models = m
        self._check_finite(m.student, "training did not start")
        self.teacher, self.student, self.tokenizer = m.teacher, m.student, m.tokenizer
        self.teacher_path, self.layer_map, self.loss_fn, self.mode = (
            m.teacher_path,
            m.layer_map,
            m.loss_fn,
            m.mode,
        )
        self.frozen, self.s_fwd, self.t_fwd = m.frozen, m.s_fwd, m.t_fwd
        self.data = data = prepare_data(r, self.tokenizer, acc)
        self.train_data, self.eval_blocks, self.eval_slice = (
            data.train_data,
            data.eval_blocks,
            data.eval_slice,
        )
        self.data_desc, self.total_steps, self.tokens_per_step = (
            data.description,
            data.total_steps,
            data.tokens_per_step,
        )
        self._setup_training()

    def _broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _setup_training(self) -> None:
        o, acc = self.recipe.optim, self.acc
        self.shards: dict[str, Any] | None = None
        if self.fsdp:  # shard first: the optimizer must hold the shards
            self.s_mod, self.t_mod = sharding.shard_models(
                self.s_fwd, self.t_fwd, bf16=self.precision == "bf16", device=acc.device
            )
            self.shards = sharding.shard_counts({"teacher": self.teacher, "student": self.student})
        groups = optimizer_groups(self.student, o.weight_decay)
        if not any(g["params"] for g in groups):
            raise BoomerangError("every student parameter is frozen; nothing to train")
        # the fused kernel is one pass over the parameters (3.5x faster than the default on CPU)
        fused = all(
            p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in self.student.parameters()
        )
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused or None)
        self.warmup = warmup_steps(o.warmup_ratio, self.total_steps)
        sched = make_scheduler(
            opt, o.schedule, warmup=self.warmup, total=self.total_steps, min_lr_ratio=o.min_lr_ratio
        )
        self.scheduler = (
            sched  # stepped once per optimizer step by us (accelerate's wrapper steps per process)
        )
        if self.fsdp:
            self.optimizer = opt
        else:
            self.s_mod, self.optimizer = acc.prepare(self.s_fwd, opt)
            # the frozen teacher is simply placed (no gradients: never DDP-wrapped)
            self.t_mod = self.t_fwd.to(acc.device) if self.t_fwd is not None else None
        if self.recipe.train.compile:
            compile_layers(self.models.trained)
            compile_layers(self.teacher)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.tcache = self._teacher_cache()
        self.state = RunState(precision=self.precision)
        self.checkpointer = Checkpointer(self.out, acc, fsdp=self.fsdp, keep=self.recipe.checkpoint.keep)
        self.log = MetricsLog(self.out, main=self.main)

    def _teacher_cache(self) -> TeacherCache | None:
        where = self.recipe.train.teacher_cache
        if not where or self.t_fwd is None:
            return None
        why = None  # the cache only saves time, so a run it cannot serve goes on without it
        if self.world > 1:
            why = "it works in one process"
        elif self.mode != "head":
            why = "it stores hidden states for the fused head loss, which this pair cannot use"
        if why:
            self._note(f"train.teacher_cache is not used: {why}")
            return None
        meta = cache_fingerprint(
            self.recipe,
            teacher_path=str(self.teacher_path),
            precision=self.precision,
            keys=self.loss_fn.keys(1),
        )
        cache = TeacherCache(where, meta)
        if not cache.usable:
            self._note(f"teacher cache {where} lacks states this loss needs; the teacher runs as usual")
        return cache

    def _note(self, msg: str) -> None:
        if getattr(self, "main", True):
            ui.err_console.print(f"[dim]{msg}[/]", highlight=False)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _check_finite(self, model: nn.Module, when: str) -> None:
        state = getattr(self, "state", None) or RunState()  # none yet while setting up
        check_finite(model, acc=self.acc, state=state, recipe=self.recipe, out=self.out, when=when)

    def _save_checkpoint(self) -> None:
        self._check_finite(self.student, "this checkpoint was not saved")
        self.checkpointer.save(self.student, self.s_mod, self.optimizer, self.scheduler, self.state)

    def _load_checkpoint(self, path: Path) -> None:
        self.checkpointer.load(path, self.student, self.optimizer, self.scheduler, self.state)
        self.state.precision = self.precision  # what setup kept (older checkpoints record none)
        if self.models.working is not None:
            self.models.working.sync()
        self.train_data.seek(self.state.data_position)

    # -- steps ------------------------------------------------------------------------------------------------------
    def _micro_batches(self, batch: Any) -> Iterator[Any]:
        mb = self.recipe.train.micro_batch_size
        for a in range(self.accum):
            start = (a * self.world + self.rank) * mb
            yield batch.slice(start, start + mb).to(self.acc.device)

    def _teacher(self, ids: torch.Tensor, mask: torch.Tensor | None) -> ModelOutputs | None:
        if self.t_mod is None:
            return None
        with torch.no_grad(), self.acc.autocast():
            return self.t_mod(ids, mask)

    def _release_teacher(self) -> None:
        """FSDP: reshard the teacher's head, gathered by its forward for the loss."""
        if self.fsdp and self.t_mod is not None:
            sharding.release(self.teacher)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over one global batch; returns its record."""
        acc, r = self.acc, self.recipe
        batch = self.train_data.take(r.train.batch_size)  # identical on every process
        n_ce, n_tok = token_counts(batch.input_ids, batch.attention_mask)
        sums = {"ce": 0.0, "kl": 0.0, "cos": 0.0, "ctx": 0.0, "ctx_mse": 0.0, "n_ce": 0.0, "n_tok": 0.0}
        micro = list(self._micro_batches(batch))
        step = self.state.step + 1
        cached = self.tcache.load(step) if self.tcache is not None else None
        fresh: dict[int, ModelOutputs] = {}
        for a, mb in enumerate(micro):
            last = a == len(micro) - 1
            # FSDP reduce-scatters every micro-batch, so accumulated gradients stay sharded
            with contextlib.nullcontext() if last or self.fsdp else acc.no_sync(self.s_mod):
                mask = mb.attention_mask
                if cached is not None:  # the teacher's outputs for this very batch, from an earlier run
                    t_out = cached[a]
                    t_out.head_weight = self.teacher.get_output_embeddings().weight
                else:
                    t_out = self._teacher(mb.input_ids, mask)
                    if self.tcache is not None and self.tcache.writable and t_out is not None:
                        fresh[a] = t_out
                s_out = self.s_mod(mb.input_ids, mask, self.loss_fn.ctx_inputs(t_out))
                with acc.autocast():
                    out = self.loss_fn(
                        s_out, t_out, mb.input_ids, mask, n_ce=n_ce, n_tok=n_tok, scale=self.world
                    )
                self._release_teacher()
                acc.backward(out.loss)
                if self.models.mixed is not None and t_out is not None:
                    self._mixed_step(step, a, mb.input_ids, mask, t_out, out.sums, n_ce, n_tok)
            # the bf16 working copy's gradients go into the fp32 masters' after each backward pass; with DDP
            # only after the last one, which all-reduces what the micro-batches accumulated
            if self.models.working is not None and (last or self.world == 1):
                self.models.working.drain_grads()
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0.0) + v
            del s_out, t_out, out
        if fresh:
            self.tcache.save(step, fresh)  # type: ignore[union-attr]
        sums = reduce_sums(self.acc, sums)
        terms = self.loss_fn.summarise(sums)
        max_norm = r.optim.max_grad_norm or float("inf")
        grad_norm = float("nan")
        ok = all(math.isfinite(v) for v in terms.values())
        if ok:
            if self.fsdp:
                grad_norm = sharding.clip_grad_norm_(self.params, max_norm)
            else:
                grad_norm = float(acc.clip_grad_norm_(self.params, max_norm))
            ok = math.isfinite(grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if ok:
            self.optimizer.step()
            if self.models.working is not None:
                self.models.working.sync()
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.data_position = self.train_data.position
        self.state.tokens += int(sums["n_tok"])
        rec: dict[str, Any] = {"step": self.state.step, **{k: round(v, 6) for k, v in terms.items()}}
        rec.update(
            lr=lr, grad_norm=round(grad_norm, 6), tokens=self.state.tokens, step_tokens=int(sums["n_tok"])
        )
        if not ok:
            self.state.skipped += 1
            rec["skipped"] = True
        return rec

    def _mixed_step(
        self,
        step: int,
        micro: int,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        t_out: ModelOutputs,
        sums: dict[str, float],
        n_ce: int,
        n_tok: int,
    ) -> None:
        """The mixed-context term: forward and backward of one random family member; its sums go into ``sums``."""
        mixed, member_loss = self.models.mixed, self.models.member_loss
        assert mixed is not None and member_loss is not None
        member = mixed.member(mixed.draw(step, micro))
        with self.acc.autocast():
            m_out = model_outputs(member, ids, mask, [], mode=self.mode)  # type: ignore[arg-type]
            lo = member_loss(m_out, t_out, ids, mask, n_ce=n_ce, n_tok=n_tok)
        self.acc.backward(lo.loss)
        sums["mixed_ce"] = lo.sums["ce"]
        sums["mixed_kl"] = lo.sums["kl"]

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Loss terms and perplexity on the validation blocks (the student, or ``model`` alone for CE)."""
        assert self.eval_blocks is not None
        r = self.recipe
        return Validator(
            self.eval_blocks,
            batch_size=r.eval.batch_size or r.train.micro_batch_size,
            acc=self.acc,
            fsdp=self.fsdp,
            teacher=self.teacher,
            student=self.student,
            t_mod=self.t_mod,
            s_mod=self.s_mod,
            loss_fn=self.loss_fn,
            layer_map=self.layer_map,
            mode=self.mode,
            chunk_tokens=r.loss.chunk_tokens,
        )(model)

    # -- the loop -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.setup()
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        self.log.open(
            resumed_at=self.state.step if self.resume_from is not None else None,
            recipe_yaml=self.recipe.to_yaml(),
            tensorboard=self.recipe.log.tensorboard,
        )
        self._print_plan()
        s, r = self.state, self.recipe
        if self.eval_blocks is not None and r.eval.teacher and s.teacher_eval is None:
            s.teacher_eval = self.evaluate(self.teacher)
            self.log.write({"step": s.step, "kind": "eval", "model": "teacher", **s.teacher_eval})
        pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)
        progress = progress_bar(enabled=self.main and r.log.progress)
        window: list[tuple[float, int]] = []
        with progress:
            task = progress.add_task("distill", total=self.total_steps, completed=s.step, terms="", speed="")
            while s.step < self.total_steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                dt = time.perf_counter() - t0
                s.elapsed += dt
                window = [*window[-19:], (dt, rec.pop("step_tokens"))]
                tok_s = sum(w[1] for w in window) / max(sum(w[0] for w in window), 1e-9)
                rec.update(tok_s=round(tok_s, 2), elapsed=round(s.elapsed, 2))
                s.history = [*s.history[-49:], rec]
                if rec.get("skipped"):
                    self._note(
                        f"step {s.step}: non-finite loss or gradient; update skipped ({s.skipped} so far, "
                        f"abort after {r.train.max_nonfinite})"
                    )
                    self.log.write(rec)
                    self._check_finite(self.student, "training stopped")
                    if s.skipped > r.train.max_nonfinite:
                        raise BoomerangError(
                            f"aborting at step {s.step}: {s.skipped} steps had a non-finite loss or gradient "
                            f"(train.max_nonfinite={r.train.max_nonfinite}). Lower optim.lr, check the data, or use "
                            f"--resume from the last checkpoint in {RunDir(self.out).checkpoints}."
                        )
                elif s.step % r.log.every == 0 or s.step == self.total_steps:
                    self.log.write(rec)
                terms = " ".join(
                    f"{k} {rec[k]:.4g}" for k in ("loss", "ce", "kl", "cos", "ctx") if rec.get(k) is not None
                )
                progress.update(task, completed=s.step, terms=terms, speed=f"{tok_s:,.0f} tok/s")
                if self.eval_blocks is not None and r.eval.every and s.step % r.eval.every == 0:
                    self._validate(progress)
                if r.checkpoint.every and s.step % r.checkpoint.every == 0 and s.step < self.total_steps:
                    self._save_checkpoint()
                if pause_at and s.step == pause_at:
                    self._pause()
        if self.eval_blocks is not None and (not r.eval.every or s.step % r.eval.every):
            self._validate(None)
        return self._finish()

    def _validate(self, progress: Any) -> None:
        s = self.state
        s.last_eval = self.evaluate()
        self.log.write({"step": s.step, "kind": "eval", "model": "student", **s.last_eval})
        if self.main:
            msg = validation_line(s.step, s.last_eval, s.teacher_eval)
            if progress is not None:
                progress.console.print(msg, highlight=False)
            else:
                print_lines([msg])

    def _pause(self) -> None:
        """Test hook: announce and wait to be killed."""
        if self.main:
            (self.out / ".paused").write_text(str(self.state.step))
        while True:
            time.sleep(1)

    def _print_plan(self) -> None:
        if self.main:
            resumed = (self.resume_from, self.state.step) if self.resume_from is not None else None
            lines = plan_lines(
                self.recipe,
                self.models,
                self.data,
                trainable=sum(p.numel() for p in self.params),
                world=self.world,
                accum=self.accum,
                precision=f"{self.precision} ({self.precision_choice.reason})",
                warmup=self.warmup,
                out=self.out,
                shards=self.shards,
                resumed=resumed,
            )
            print_lines(lines)

    def _finish(self) -> dict[str, Any]:
        """Save the final student and the summary (on the main process); returns the summary."""
        acc = self.acc
        acc.wait_for_everyone()
        self._check_finite(self.student, "the student was not saved")
        # FSDP: gathering the full weights is collective (rank 0 gets them)
        state_dict = sharding.full_model_state(self.student) if self.fsdp else None
        summary: dict[str, Any] = {}
        if self.main:
            model = sharding.plain_copy(self.student, state_dict) if self.fsdp else self.student
            student_dir = RunDir(self.out).student
            save_final_student(
                model,
                student_dir,
                recipe=self.recipe,
                state=self.state,
                models=self.models,
                tokenizer=self.tokenizer,
            )
            summary = run_summary(
                self.state,
                out=self.out,
                student_dir=student_dir,
                eval_slice=self.eval_slice,
                world=self.world,
                shards=self.shards,
                precision=f"{self.precision} ({self.precision_choice.reason})",
            )
            # steps whose teacher outputs came from the cache / were written to it
            if self.tcache is not None:
                summary["teacher_cache"] = {
                    "dir": str(self.tcache.dir),
                    "read_steps": self.tcache.hits,
                    "wrote": self.tcache.writable,
                }
            write_summary(self.out, summary)
            self.log.close()
            print_summary(summary)
        acc.wait_for_everyone()
        return summary


def distill(
    recipe: Recipe, *, out: str | Path | None = None, resume: bool = False, force: bool = False
) -> dict:
    """Run a recipe; returns the summary (written to OUT/summary.json as well)."""
    threads = torch.get_num_threads()
    try:
        return Distiller(recipe, out=out, resume=resume, force=force).run()
    finally:
        torch.set_num_threads(threads)  # train.threads applies to the run only
