"""What a run reports: ``metrics.jsonl`` (+ TensorBoard), the progress bar, the plan and the summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import BoomerangError
from ..io.atomic import atomic_write_text


class MetricsLog:
    """One JSON record per logged step and per validation in ``OUT/metrics.jsonl``, mirrored to TensorBoard."""

    def __init__(self, out: Path, *, main: bool):
        self.path = out / "metrics.jsonl"
        self.out, self.main, self.tb = out, main, None

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
        atomic_write_text(self.out / "recipe.yaml", recipe_yaml)
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=(resumed_at or 0) + 1)
            except ImportError:
                if tensorboard:
                    raise BoomerangError("log.tensorboard is on but tensorboard is not installed") from None

    def write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        record = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    self.tb.add_scalar(prefix + k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_bar(*, enabled: bool) -> Any:
    """The training progress bar: steps, loss terms, tokens/s and ETA (on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..ui import err_console

    return Progress(
        TextColumn("[bold]distill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[terms]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=err_console,
        disable=not enabled,
    )


def print_lines(lines: list[str]) -> None:
    from ..ui import console

    console.print("\n".join(lines), highlight=False)


def print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from ..ui import console

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
    console.print(t)
