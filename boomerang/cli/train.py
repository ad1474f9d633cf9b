"""``boomerang init`` (student initialisation) and ``boomerang distill`` (the distillation trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import BoomerangError
from ..io.atomic import check_writable
from .common import Dtype, Trust, console, parse_ints

# Heavy modules (torch, transformers) are imported inside the commands so that `boomerang --help` is instant.


def init(
    teacher: Annotated[
        str, typer.Option(help="Teacher checkpoint (directory, .gguf, Hub id, or smollm2-offline).")
    ],
    out: Annotated[Path, typer.Option(help="Output directory for the student (written atomically).")],
    strategy: Annotated[
        str | None,
        typer.Option(
            help="every (default), layers, random (the paper's random-init baseline) or similarity."
        ),
    ] = None,
    every: Annotated[int, typer.Option(help="Keep every n-th teacher layer (every/random).")] = 2,
    keep_first: Annotated[int, typer.Option("--keep-first", help="Always keep the first n layers.")] = 1,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Always keep the last n layers.")] = 2,
    layers: Annotated[
        str | None,
        typer.Option(help="Explicit kept teacher layers, e.g. 0,2,4,5 (implies --strategy layers)."),
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Student layers for --strategy similarity (default: as many as every).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Calibration texts for --strategy similarity: file, folder, .jsonl or hf:NAME."),
    ] = None,
    calibration_texts: Annotated[
        int, typer.Option("--calibration-texts", help="Calibration blocks for similarity.")
    ] = 128,
    calibration_length: Annotated[
        int, typer.Option("--calibration-length", help="Tokens per calibration block.")
    ] = 256,
    patch_order: Annotated[
        str | None,
        typer.Option("--patch-order", help="Record the intended patch order (last or first) in the config."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for --strategy random and calibration sampling.")] = 0,
    dtype: Dtype = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    trust_remote_code: Trust = False,
) -> None:
    """Initialise a student from a teacher's layers and write it as a checkpoint carrying its layer map."""
    check_writable(out, force=force)
    kept = parse_ints(layers, "--layers")
    strat = strategy or ("layers" if kept else "every")
    from ..train.initialise import STRATEGIES

    if strat not in STRATEGIES:
        raise BoomerangError(f"unknown --strategy {strat!r}; use one of: {', '.join(STRATEGIES)}")
    if kept and strat != "layers":
        raise BoomerangError(f"--layers cannot be combined with --strategy {strat}")
    if strat == "similarity" and data is None:
        raise BoomerangError("--strategy similarity needs calibration texts: pass --data PATH")
    if strat != "similarity" and (size is not None or data is not None):
        raise BoomerangError("--size and --data only apply to --strategy similarity")
    if patch_order is not None and patch_order not in ("last", "first"):
        raise BoomerangError(f"--patch-order must be last or first, not {patch_order!r}")

    from transformers.utils import logging as hf_logging

    from ..core.arch import n_layers
    from ..core.layermap import LayerMap
    from ..core.params import count_params
    from ..data.blocks import calibration_ids
    from ..io.loading import load_model, load_tokenizer
    from ..train.initialise import init_student, save_student
    from ..train.recipe import resolve_model_spec

    hf_logging.disable_progress_bar()
    teacher_path = resolve_model_spec(teacher)
    t = load_model(teacher_path, dtype=dtype, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(teacher_path, trust_remote_code=trust_remote_code)
    n = n_layers(t.config)
    calib = None
    if strat == "similarity":
        if size is None:
            size = LayerMap.every(n, every=every, keep_first=keep_first, keep_last=keep_last).n_student
        calib = calibration_ids(data, tok, n=calibration_texts, length=calibration_length, seed=seed)
        console.print(f"measuring teacher layer similarity on {calib.shape[0]}×{calib.shape[1]} tokens…")
    spec = kept if strat == "layers" else strat
    student = init_student(
        t,
        spec,
        every=every,
        keep_first=keep_first,
        keep_last=keep_last,
        size=size,
        calibration=calib,
        seed=seed,
        teacher_name=teacher,
        patch_order=patch_order,
    )
    save_student(student, out, tokenizer=tok, force=force)
    lm = LayerMap.from_config(student.config)
    assert lm is not None
    info = student.config.boomerang["init"]
    table = Table(title=f"{out}: {lm.describe()}")
    for col in ("student layer", "teacher layer", "block", "aligned with"):
        table.add_column(col, justify="right")
    sims = info.get("block_similarity")
    if sims:
        table.add_column("first↔last similarity", justify="right")
    for i in range(lm.n_student):
        b = lm.block(i)
        row = [str(i), str(lm.kept[i]), f"[{b.start}, {b.stop})", str(lm.target(i))]
        if sims:
            row.append(f"{sims[i]:.3f}")
        table.add_row(*row)
    console.print(table)
    if sims:
        console.print(f"min block similarity (first↔last layer output): {info['min_block_similarity']:.4f}")
    c = count_params(student)
    note = " (weights randomly re-initialised)" if strat == "random" else ""
    console.print(
        f"[green]wrote[/] {out}: strategy {strat}{note}, {lm.n_student} layers, "
        f"{c.trainable / 1e6:.1f}M trainable parameters"
    )


def distill(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe: a YAML file, or a packaged recipe by name (smollm2-cpu, qwen3-8b, ...)."
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Recipe overrides as key=value, e.g. train.steps=20 loss.kl=0 lr=1e-4. Loss and student knobs: "
            "ce= kl= temperature= cos= align_embeddings= align_final=raw|normed|both freeze_embeddings= "
            "freeze_head= freeze_final_norm= untie_head= gradient_checkpointing= (see docs/training.md)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: the recipe's out, or runs/NAME).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in OUT (or start if none).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Delete an existing run in OUT and start over.")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (train.steps).")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Stop after this many tokens (train.max_tokens).")
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="Teacher (overrides the recipe's).")] = None,
    student: Annotated[
        str | None, typer.Option(help="Initialised student checkpoint (else init: is used).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (train.seed).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate the recipe, print it resolved, and exit.")
    ] = False,
) -> None:
    """Distil a student from its teacher (paper Eq. 1) as a recipe describes."""
    from ..train.recipe import load_recipe

    extra = list(overrides or [])
    for key, value in (
        ("train.steps", steps),
        ("train.max_tokens", max_tokens),
        ("teacher", teacher),
        ("student", student),
        ("train.seed", seed),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    r = load_recipe(recipe, extra)
    if resume and force:
        raise BoomerangError("give --resume or --force, not both")
    if dry_run:
        console.print(r.to_yaml(), highlight=False, markup=False)
        return
    from ..train.trainer import distill as run_distill

    run_distill(r, out=out, resume=resume, force=force)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(distill)
