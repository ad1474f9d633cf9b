"""``boomerang init`` (student initialisation) and ``boomerang distill`` (the distillation trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ..errors import BoomerangError
from . import validate
from .common import Dtype, Trust, console, parse_ints

if TYPE_CHECKING:
    from ..train.recipe import Recipe

# Heavy modules (torch, transformers) are imported inside the commands so that `boomerang --help` is instant.


# ``boomerang init``'s options, declared once so that its signature stays short.
Teacher = Annotated[
    str, typer.Option(help="Teacher checkpoint (directory, .gguf, Hub id, or smollm2-offline).")
]
InitOut = Annotated[Path, typer.Option(help="Output directory for the student (written atomically).")]
StrategyOpt = Annotated[
    str | None,
    typer.Option(
        help="every (default), layers, random (the paper's random-init baseline), similarity, or "
        "shortgpt (the layers ShortGPT keeps; --max-block caps how many teacher layers one student layer "
        "stands for)."
    ),
]
Every = Annotated[int, typer.Option(help="Keep every n-th teacher layer (every/random).")]
KeepFirst = Annotated[int, typer.Option("--keep-first", help="Always keep the first n layers.")]
KeepLast = Annotated[int, typer.Option("--keep-last", help="Always keep the last n layers.")]
KeptLayers = Annotated[
    str | None, typer.Option(help="Explicit kept teacher layers, e.g. 0,2,4,5 (implies --strategy layers).")
]
Size = Annotated[
    int | None,
    typer.Option(help="Student layers for --strategy similarity/shortgpt (default: as many as every)."),
]
MaxBlock = Annotated[
    int | None, typer.Option("--max-block", help="shortgpt: the longest teacher block per student layer.")
]
Isolate = Annotated[
    int,
    typer.Option(
        help="shortgpt: give the first N layers ShortGPT drops a 2-layer block each (the members 1..N layers "
        "short of the teacher then start as ShortGPT's)."
    ),
]
CalibrationData = Annotated[
    str | None,
    typer.Option(
        help="Calibration texts for --strategy similarity/shortgpt: file, folder, .jsonl or hf:NAME."
    ),
]
CalibrationTexts = Annotated[
    int, typer.Option("--calibration-texts", help="Calibration blocks for similarity/shortgpt.")
]
CalibrationLength = Annotated[
    int | None,
    typer.Option(
        "--calibration-length", help="Tokens per calibration block (default 256, or the model's context)."
    ),
]
PatchOrder = Annotated[
    str | None,
    typer.Option("--patch-order", help="Record the intended patch order (last or first) in the config."),
]
InitSeed = Annotated[int, typer.Option(help="Seed for --strategy random and calibration sampling.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")]


def init(
    teacher: Teacher,
    out: InitOut,
    strategy: StrategyOpt = None,
    every: Every = 2,
    keep_first: KeepFirst = 1,
    keep_last: KeepLast = 2,
    layers: KeptLayers = None,
    size: Size = None,
    max_block: MaxBlock = None,
    isolate: Isolate = 0,
    data: CalibrationData = None,
    calibration_texts: CalibrationTexts = 128,
    calibration_length: CalibrationLength = None,
    patch_order: PatchOrder = None,
    seed: InitSeed = 0,
    dtype: Dtype = "auto",
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Initialise a student from a teacher's layers and write it as a checkpoint carrying its layer map."""
    from ..train.init_plan import init_section, plan_init

    validate.output_dir(out, force)
    validate.seed(seed)
    ini = init_section(
        strategy,
        layers=parse_ints(layers, "--layers"),
        data=data,
        size=size,
        every=every,
        keep_first=keep_first,
        keep_last=keep_last,
        max_block=max_block,
        isolate=isolate,
        calibration_texts=calibration_texts,
        calibration_length=calibration_length,
        seed=seed,
    )
    validate.text_source(data)
    validate.model_source(teacher, "--teacher")
    validate.tokenizer_source(teacher, "--teacher")
    plan = plan_init(teacher, ini, patch_order=patch_order, trust_remote_code=trust_remote_code)

    from transformers.utils import logging as hf_logging

    from ..train.initialise import write_student

    hf_logging.disable_progress_bar()
    student = write_student(plan, out, dtype=dtype, force=force, report=console.print)
    _print_student(student, out, plan.init.strategy)


def _print_student(student: Any, out: Path, strat: str) -> None:
    """The written student's blocks (with each block's similarity, for a measured init) and its size."""
    from ..core.layermap import LayerMap
    from ..core.params import count_params

    student_map = LayerMap.from_config(student.config)
    assert student_map is not None
    info = student.config.boomerang["init"]
    table = Table(title=f"{out}: {student_map.describe()}")
    for col in ("student layer", "teacher layer", "block", "aligned with"):
        table.add_column(col, justify="right")
    sims = info.get("block_similarity")
    if sims:
        table.add_column("first↔last similarity", justify="right")
    for i in range(student_map.n_student):
        b = student_map.block(i)
        row = [str(i), str(student_map.kept[i]), f"[{b.start}, {b.stop})", str(student_map.target(i))]
        if sims:
            row.append(f"{sims[i]:.3f}")
        table.add_row(*row)
    console.print(table)
    if sims:
        console.print(f"min block similarity (first↔last layer output): {info['min_block_similarity']:.4f}")
    c = count_params(student)
    note = " (weights randomly re-initialised)" if strat == "random" else ""
    console.print(
        f"[green]wrote[/] {out}: strategy {strat}{note}, {student_map.n_student} layers, "
        f"{c.trainable / 1e6:.1f}M trainable parameters"
    )


# ``boomerang distill``'s arguments and options.
RecipeArg = Annotated[
    Path,
    typer.Argument(help="Recipe: a YAML file, or a packaged recipe by name (smollm2-cpu, qwen3-8b, ...)."),
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Recipe overrides as key=value, e.g. train.steps=20 loss.kl=0 lr=1e-4. Loss and student knobs: "
        "ce= kl= temperature= cos= align_embeddings= align_final=raw|normed|both freeze_embeddings= "
        "freeze_head= freeze_final_norm= untie_head= gradient_checkpointing= (see docs/training.md)."
    ),
]
RunOut = Annotated[Path | None, typer.Option(help="Run directory (default: the recipe's out, or runs/NAME).")]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue from the latest checkpoint in OUT (or start if none).")
]
RestartRun = Annotated[bool, typer.Option("--force", help="Delete an existing run in OUT and start over.")]
Steps = Annotated[int | None, typer.Option(help="Optimizer steps (train.steps).")]
MaxTokens = Annotated[
    int | None, typer.Option("--max-tokens", help="Stop after this many tokens (train.max_tokens).")
]
RecipeTeacher = Annotated[str | None, typer.Option(help="Teacher (overrides the recipe's).")]
RecipeStudent = Annotated[
    str | None, typer.Option(help="Initialised student checkpoint (else init: is used).")
]
TrainSeed = Annotated[int | None, typer.Option(help="Seed (train.seed).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate the recipe, print it resolved, and exit.")]
Gpus = Annotated[
    int | None,
    typer.Option(
        help="With --dry-run: plan per-GPU memory on N GPUs (DDP, FSDP, checkpointing); no weights."
    ),
]
GpuMemory = Annotated[
    str, typer.Option("--gpu-memory", help="With --gpus: memory of one GPU, e.g. 80GB, 79.6GiB.")
]


def distill(
    recipe: RecipeArg,
    overrides: Overrides = None,
    out: RunOut = None,
    resume: Resume = False,
    force: RestartRun = False,
    steps: Steps = None,
    max_tokens: MaxTokens = None,
    teacher: RecipeTeacher = None,
    student: RecipeStudent = None,
    seed: TrainSeed = None,
    dry_run: DryRun = False,
    gpus: Gpus = None,
    gpu_memory: GpuMemory = "80GB",
) -> None:
    """Distil a student from its teacher (paper Eq. 1) as a recipe describes."""
    from ..train.recipe import load_recipe, merge_overrides

    named = {"train.steps": steps, "train.max_tokens": max_tokens, "teacher": teacher, "student": student}
    extra = merge_overrides(overrides, {**named, "train.seed": seed})
    if resume and force:
        raise BoomerangError("give --resume or --force, not both")
    validate.positive(steps=steps, max_tokens=max_tokens)
    validate.seed(seed)
    validate.recipe_file(recipe)
    validate.positive(gpus=gpus)
    if gpus is not None and not dry_run:
        raise BoomerangError("--gpus plans memory without training: add --dry-run")
    capacity = None
    if gpus is not None:
        from ..train.memory import parse_memory

        capacity = parse_memory(gpu_memory)
    r = load_recipe(recipe, extra)
    run = r.run_dir(out)  # the trainer's own rule for the run directory
    validate.run_dir(run)  # its place must be writable, dead runs' temporaries go
    if dry_run:
        _dry_run(r, gpus, capacity)
        return
    _check_inputs(r)
    _train(r, run, out=out, resume=resume, force=force)


def _train(r: Recipe, run: Path, *, out: Path | None, resume: bool, force: bool) -> None:
    """Train, telling an interrupted run how to go on from its last checkpoint."""
    from .. import interrupts
    from ..io.snapshot import unheld
    from ..train.trainer import distill as run_distill

    interrupts.resume_hint(
        f"the run in {run} keeps its checkpoints (checkpoint.every={r.checkpoint.every}); run the same command "
        "again with --resume to continue from the last one (instead of --force)"
    )
    with unheld():  # training keeps what it loaded: a later rewrite of the inputs does not concern it
        run_distill(r, out=out, resume=resume, force=force)


def _dry_run(r: Recipe, gpus: int | None, capacity: float | None) -> None:
    """Print the resolved recipe and the precision it would train in, or (with --gpus) the memory plan."""
    if gpus is not None:
        from ..train.memory import plan_recipe

        _print_memory_plan(r, plan_recipe(r, gpus, capacity))
        return
    from ..train.precision import choose_precision

    console.print(r.to_yaml(), highlight=False, markup=False)
    chosen = choose_precision(r.train.precision)
    console.print(
        f"# train.precision: {r.train.precision} -> {chosen.name} ({chosen.reason})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _check_inputs(r: object) -> None:
    """The recipe's models and texts, checked before any model loads: local checkpoints agree with their own
    configs, texts exist and are text, and token lengths fit the teacher's positions."""
    from ..io.checkpoints import OFFLINE_ALIAS
    from ..train.recipe import MEASURED

    validate.model_source(r.teacher, "teacher")  # type: ignore[attr-defined]
    if r.student:  # type: ignore[attr-defined]
        validate.model_source(r.student, "student")  # type: ignore[attr-defined]
        validate.student_freezes(r)
    d, ini = r.data, r.init  # type: ignore[attr-defined]
    for source, key in (
        (d.train, "data.train"),
        (d.eval, "data.eval"),
        (ini.calibration, "init.calibration"),
    ):
        validate.text_source(source, key, d.text_field)
    teacher = r.teacher  # type: ignore[attr-defined]
    if teacher == OFFLINE_ALIAS or Path(teacher).expanduser().is_dir():  # configs of local teachers only
        validate.within_context("data.seq_len", d.seq_len, teacher)
        explicit = "calibration_length" in ini.model_fields_set
        if explicit and ini.strategy in MEASURED and not r.student:  # type: ignore[attr-defined]
            validate.within_context("init.calibration_length", ini.calibration_length, teacher)


def _print_memory_plan(recipe: object, rp: object) -> None:
    """The per-GPU memory table of ``boomerang distill --dry-run --gpus N``."""
    from ..train.memory import COMPONENTS, STRATEGY_NAMES, GiB, strategy_verdict

    plans = rp.plans  # type: ignore[attr-defined]
    t, s, run = rp.teacher, rp.student, rp.run  # type: ignore[attr-defined]
    gib = lambda b: f"{b / GiB:.2f}"  # noqa: E731
    cap = plans[0].capacity
    console.print(
        f"memory plan for {recipe.name} on {plans[0].gpus} GPU(s) of {cap / 1e9:.1f} GB ({cap / GiB:.1f} GiB; "  # type: ignore[attr-defined]
        f"{plans[0].usable / GiB:.1f} GiB usable after a reserve for the CUDA context and fragmentation)",
        highlight=False,
    )
    guessed = " (unknown model type: read as a Llama-like decoder)" if t.guessed else ""
    console.print(
        f"teacher {recipe.teacher}: {t.model_type}{guessed}, {t.layers} layers, {t.params / 1e9:.2f}B parameters; "  # type: ignore[attr-defined]
        f"student {s.layers} layers, {s.params / 1e9:.2f}B; {'bf16' if run.bf16 else 'fp32'}; micro-batch "
        f"{run.micro_batch} × {run.seq_len} tokens; loss chunks of {run.chunk_tokens} tokens; "
        f"{run.n_pairs} aligned states",
        highlight=False,
    )
    table = Table(title="per-GPU memory (GiB)")
    table.add_column("component")
    for p in plans:
        table.add_column(STRATEGY_NAMES[p.strategy], justify="right")
    for name, _ in COMPONENTS:
        table.add_row(name, *[gib(p.components[name]) for p in plans])
    table.add_row("total", *[gib(p.total) for p in plans], style="bold")
    table.add_row("fits", *["yes" if p.fits else "[red]no[/]" for p in plans])
    console.print(table)
    for line in strategy_verdict(recipe, plans):
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(distill)
