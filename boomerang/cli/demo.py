"""``boomerang demo``: the whole pipeline on the real SmolLM2-135M teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console


def demo(
    out: Annotated[Path, typer.Option(help="Run directory; a rerun resumes unfinished stages.")] = Path(
        "runs/demo"
    ),
    tokens: Annotated[
        int, typer.Option(help="Distillation tokens (about 60 tokens/s on 2 CPU cores).")
    ] = 100_000,
    orders: Annotated[
        str, typer.Option(help="Patch orders to sweep: last, first, similarity, greedy-kl, optimal.")
    ] = "last,first,greedy-kl",
    baselines: Annotated[
        str, typer.Option(help="Baselines beside the first order (naive, shortgpt, laco).")
    ] = "naive",
    eval_tokens: Annotated[int, typer.Option("--eval-tokens", help="Validation tokens per member.")] = 4096,
    recipe: Annotated[
        Path | None, typer.Option(help="Distillation recipe (default recipes/smollm2-cpu.yaml).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Recipe overrides key=value, e.g. loss.cos=0.5.")
    ] = None,
) -> None:
    """Distil SmolLM2-135M's every-other-layer student, sweep its family in several patch orders, report."""
    from ..pipelines.demo import run_demo

    text = run_demo(
        out,
        recipe=recipe,
        tokens=tokens,
        orders=[o.strip() for o in orders.split(",") if o.strip()],
        baselines=[b.strip() for b in baselines.split(",") if b.strip()],
        eval_tokens=eval_tokens,
        overrides=overrides or (),
    )
    console.print(text, markup=False, highlight=False)
    console.print(f"\n[green]report[/] {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
