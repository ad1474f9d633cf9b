"""Evaluating a sweep group by group: a group's models batch by batch with prefix reuse (each shared prefix of
layers runs once per batch), progress saved as it goes, then lm-eval on the models while they are built."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..core.hooks import layer_list
from ..core.params import count_params
from ..errors import BoomerangError
from ..evaluate.lmeval import LMEval, TaskOptions, prepare_builtin
from ..evaluate.perplexity import ScoreBatch, batch_nll
from ..evaluate.reuse import Scored, schedule, score
from .sweep_plan import Unit
from .sweep_state import SweepState

if TYPE_CHECKING:
    from ..evaluate.perplexity import Source
    from ..hints import Model, Tokenizer

OnBatch = Callable[[str, int, int], None]  # (group, batches done, batches in group)


class SweepProgress:
    """A rich progress bar (or nothing): current group, batch and model."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    @contextlib.contextmanager
    def running(self) -> Iterator[SweepProgress]:
        if not self.enabled:
            yield self
            return

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as bar:
            self._bar = bar
            yield self
            self._bar = None

    def start(self, description: str, total: int, done: int = 0) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(description, total=total, completed=done)

    def update(self, description: str, advance: int = 0) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=description, advance=advance)

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message, highlight=False)


def describe_model(model: Model) -> dict[str, Any]:
    """Layer count, parameter counts and (for pruned baselines) the teacher layers kept."""
    section = getattr(model.config, "boomerang", None)
    kept = section.get("teacher_layers") if isinstance(section, dict) else None
    return {"layers": len(layer_list(model)), **count_params(model).as_dict(), "teacher_layers": kept}


def make_lm_eval(
    task_names: list[str],
    task_paths: Sequence[str | Path],
    task_defaults: bool | None,
    tasks: TaskOptions,
    data: Source | None,
    partial: Path,
) -> LMEval:
    """lm-eval for the sweep's tasks; the built-in tasks' files are written under ``partial/tasks``."""
    lm_eval_runner = LMEval(
        task_names,
        include_path=task_paths,
        batch_size=tasks.batch_size,
        limit=tasks.limit,
        num_fewshot=tasks.num_fewshot,
        needs_defaults=task_defaults,
    )
    task_data = tasks.data if tasks.data is not None else data
    lm_eval_runner.add_include_path(
        prepare_builtin(task_names, task_data, partial / "tasks", **tasks.builtin)
    )
    return lm_eval_runner


class GroupEvaluator:
    """Evaluates groups of units on the sweep's batches, resuming from and saving to ``state``."""

    def __init__(
        self,
        state: SweepState,
        batches: list[ScoreBatch],
        *,
        reuse: bool,
        progress: SweepProgress,
        checkpoint_seconds: float,
        on_batch: OnBatch | None = None,
        lm_eval_runner: LMEval | None = None,
        tokenizer: Tokenizer | None = None,
        task_names: Sequence[str] = (),
    ):
        self.state, self.batches, self.reuse, self.progress = state, batches, reuse, progress
        self.checkpoint_seconds, self.on_batch = checkpoint_seconds, on_batch
        self.lm_eval_runner, self.tokenizer, self.task_names = lm_eval_runner, tokenizer, task_names

    def _build(self, units: list[Unit]) -> list[Scored]:
        """The group's models; a unit that cannot be built is recorded as failed and skipped."""
        st = self.state
        models = []
        for u in units:
            try:
                model = u.build()
            except BoomerangError as e:
                st.failed[u.name] = str(e)
                self.progress.log(f"[yellow]skipped {u.name}[/]: {e}")
                continue
            models.append(Scored(u.name, model, u.key))
            st.models[u.name] = describe_model(model)
        return models

    def run(self, group: str, units: list[Unit]) -> None:
        """Score every pending batch of ``group`` (saving at most every ``checkpoint_seconds``), then lm-eval."""
        st, batches = self.state, self.batches
        g = st.group(group)
        pending = [u for u in units if u.name not in st.failed]
        if g["done"] and all(u.name in st.lm_eval for u in pending if self.task_names):
            return
        models = self._build(pending)
        if not models:
            g["done"] = True
            st.save()
            return
        steps = schedule([s.key for s in models]) if self.reuse else None
        distinct = sum(1 for s in steps if s.alias_of is None) if steps else len(models)
        acc = {s.name: st.unit(s.name) for s in models}
        start = len(batches) if g["done"] else g["next_batch"]
        self.progress.start(f"{group}", total=len(batches) * distinct, done=start * distinct)
        last_save = time.monotonic()
        t0 = time.perf_counter()
        try:
            for i in range(start, len(batches)):
                batch = batches[i]

                def show(j: int, i: int = i) -> None:
                    self.progress.update(
                        f"{group} · batch {i + 1}/{len(batches)} · {models[j].name}", advance=1
                    )

                nll = score(
                    models,
                    lambda mdl, b=batch: batch_nll(mdl, b),
                    reuse=self.reuse,
                    steps=steps,
                    on_model=show,
                )
                for s, v in zip(models, nll, strict=True):
                    acc[s.name]["nll"] += float(v.double().sum())
                    acc[s.name]["count"] += int(v.numel())
                g["next_batch"] = i + 1
                if time.monotonic() - last_save >= self.checkpoint_seconds:
                    g["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    st.save()
                    last_save = time.monotonic()
                if self.on_batch is not None:
                    self.on_batch(group, i + 1, len(batches))
            g["done"] = True
        finally:
            g["seconds"] += time.perf_counter() - t0
            st.save()
        # lm-eval on the models while they are built (pruned baselines are expensive to rebuild)
        for s in models:
            self.lm_eval(s.name, s.model)

    def lm_eval(self, name: str, model: Model) -> None:
        """lm-eval's results for one model, once (saved at once: it is the slow part)."""
        if not self.task_names or name in self.state.lm_eval:
            return
        self.progress.log(f"lm-eval {', '.join(self.task_names)} on {name}")
        self.state.lm_eval[name] = self.lm_eval_runner.run(model, self.tokenizer)
        self.state.save()
