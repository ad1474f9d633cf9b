"""What a run reports: ``metrics.jsonl`` (+ TensorBoard), the progress bar, the plan, validations and the summary
table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .. import ui
from ..core.params import count_params
from ..errors import BoomerangError
from ..io.atomic import atomic_write_text
from .models import RunModels
from .recipe import Recipe
from .run_data import RunData
from .run_dir import RunDir

if TYPE_CHECKING:
    from .losses import LossConfig


class MetricsLog:
    """One JSON record per logged step and per validation in ``OUT/metrics.jsonl``, mirrored to TensorBoard."""

    def __init__(self, out: Path, *, main: bool):
        self.run = RunDir(out)
        self.path = self.run.metrics
        self.out, self.main, self.writer = out, main, None

    def open(self, *, resumed_at: int | None, recipe_yaml: str, tensorboard: bool | None) -> None:
        """Start (or, resuming at step ``resumed_at``, continue) the log; writes ``OUT/recipe.yaml``."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None and self.path.is_file():  # drop records after the checkpoint
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resumed_at
            ]
            atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        elif resumed_at is None:
            self.path.unlink(missing_ok=True)
        atomic_write_text(self.run.recipe, recipe_yaml)
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=(resumed_at or 0) + 1)
            except ImportError:
                if tensorboard:
                    raise BoomerangError("log.tensorboard is on but tensorboard is not installed") from None

    def write(self, record: Mapping[str, object]) -> None:
        if not self.main:
            return
        record = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    self.writer.add_scalar(prefix + k, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(*, enabled: bool) -> Any:
    """The training progress bar: steps, loss terms, tokens/s and ETA (on stderr)."""
    return Progress(
        TextColumn("[bold]distill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[terms]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=ui.err_console,
        disable=not enabled,
    )


def loss_extras(loss: LossConfig) -> list[tuple[str, float]]:
    """The optional loss terms that are on, as (name, weight): teacher-context and mixed-context."""
    mixed = "mixed" if loss.mixed_draw == "count" else f"mixed-by-{loss.mixed_draw}"
    named = (("ctx", "ctx"), ("ctx-mse", "ctx_mse"), (mixed, "mixed"))
    return [(name, float(getattr(loss, key, 0.0) or 0.0)) for name, key in named if getattr(loss, key, 0.0)]


def plan_lines(
    recipe: Recipe,
    models: RunModels,
    data: RunData,
    *,
    trainable: int,
    world: int,
    accum: int,
    precision: str,
    warmup: int,
    out: Path,
    shards: Mapping[str, object] | None,
    resumed: tuple[Path, int] | None,
) -> list[str]:
    """The run's plan, printed before the first step: models, loss, data, schedule, output (and sharding, resume)."""
    r, m, layer_map = recipe, models, models.layer_map
    c = count_params(m.student)
    lines = [
        f"teacher   {m.teacher_path} ({layer_map.n_teacher} layers)",
        f"student   {layer_map.n_student} layers, kept {list(layer_map.kept)}; {trainable / 1e6:.1f}M of "
        f"{c.trainable / 1e6:.1f}M parameters trained"
        + (f"; frozen: {', '.join(m.frozen)}" if m.frozen else ""),
        f"loss      ce {r.loss.ce} + kl {r.loss.kl} (τ={r.loss.temperature}) + cos {m.loss_fn.cos_weight:.4g} × "
        f"{len(m.loss_fn.pairs)} pairs"
        + "".join(f" + {name} {w:g}" for name, w in loss_extras(r.loss))
        + f"; {'fused head' if m.mode == 'head' else 'full logits'}, chunks of {r.loss.chunk_tokens} tokens",
        f"data      {data.description}; seq_len {r.data.seq_len}"
        + (
            f"; validation: the first {len(data.eval_blocks)} blocks ({data.eval_blocks.n_tokens:,} tokens) "
            f"of {data.eval_slice['source']}"  # type: ignore[index]
            if data.eval_blocks is not None
            else ""
        ),
        f"schedule  {data.total_steps} steps × {r.train.batch_size} sequences (≈{data.tokens_per_step:,.0f} "
        f"tokens/step, {data.total_steps * data.tokens_per_step / 1e6:.2f}M total); {world} process(es) × "
        f"{r.train.micro_batch_size} × {accum} accumulation; {precision}; {m.attention} attention; lr {r.optim.lr} "
        f"{r.optim.schedule}, warm-up {warmup}",
        f"output    {out}",
    ]
    if shards:
        t, st = shards["teacher"], shards["student"]
        lines.append(
            f"sharding  FSDP2 over {world} processes: rank 0 holds {t['per_rank'][0] / 1e6:.2f}M of the "
            f"teacher's {t['total'] / 1e6:.2f}M parameters, {st['per_rank'][0] / 1e6:.2f}M of the student's "
            f"{st['total'] / 1e6:.2f}M"
        )
    if resumed is not None:
        lines.append(f"resumed   from {resumed[0]} (step {resumed[1]})")
    return lines


def validation_line(step: int, student: dict[str, float], teacher: dict[str, float] | None) -> str:
    """One validation's report: the student's loss and perplexity (and the teacher's perplexity)."""
    ref = f" (teacher {teacher['ppl']:.2f})" if teacher else ""
    return f"step {step}: validation loss {student['loss']:.4f}, ppl {student['ppl']:.2f}{ref}"


def print_lines(lines: list[str]) -> None:
    ui.console.print("\n".join(lines), highlight=False)


def print_summary(summary: Mapping[str, object]) -> None:
    t = Table(title="distillation summary", show_header=False)
    t.add_row("steps / tokens", f"{summary['steps']} / {summary['tokens']:,}")
    t.add_row("time", f"{summary['seconds']:.0f} s ({summary['tokens_per_s']:,.0f} tokens/s)")
    if summary.get("precision"):
        t.add_row("precision", summary["precision"])
    if summary["train"]:
        t.add_row("train (last 10 steps)", ", ".join(f"{k} {v:.4f}" for k, v in summary["train"].items()))
    if summary["val_student"]:
        v = summary["val_student"]
        t.add_row("validation (student)", f"loss {v['loss']:.4f}, ce {v['ce']:.4f}, ppl {v['ppl']:.2f}")
    if summary["val_teacher"]:
        t.add_row("validation (teacher)", f"ppl {summary['val_teacher']['ppl']:.2f}")
    t.add_row("skipped steps", str(summary["skipped_steps"]))
    t.add_row("student", summary["student"])
    ui.console.print(t)
