"""``boomerang prune``, ``boomerang analyze`` and ``boomerang order``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ..errors import BoomerangError
from . import validate
from .common import Dtype, Trust, console, err_console, parse_ints, resolve_layer_map

if TYPE_CHECKING:
    from ..analysis.prune import PrunedCheckpoint
    from ..core.layermap import LayerMap
    from ..core.plan import PatchOrder

# Heavy modules (torch, transformers) are imported inside the commands so that `boomerang --help` is instant.

Force = Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")]
Teacher = Annotated[str, typer.Option(help="Teacher checkpoint (directory, .gguf or Hub id).")]
Data = Annotated[
    str | None,
    typer.Option(help="Calibration text: a text file, a folder, a .jsonl file or hf:NAME (a Hub dataset)."),
]
Texts = Annotated[
    int | None,
    typer.Option("--calibration-texts", help="Number of calibration blocks (see the command's help)."),
]
Length = Annotated[int | None, typer.Option("--calibration-length", help="Tokens per calibration block.")]
Seed = Annotated[int, typer.Option(help="Seed for drawing calibration blocks.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Calibration blocks per forward pass.")]
StudentLayers = Annotated[
    str | None,
    typer.Option("--student-layers", help="Student's kept teacher layers, if it carries no layer map."),
]


def _calibration(data: str | None, tokenizer: Any, n: int, length: int, seed: int, what: str) -> Any:
    from ..data.blocks import calibration_ids

    if data is None:
        raise BoomerangError(
            f"{what} needs calibration text: pass --data PATH (a text file, folder or .jsonl)"
        )
    if n < 1 or length < 2:
        raise BoomerangError("--calibration-texts must be >= 1 and --calibration-length >= 2")
    return calibration_ids(data, tokenizer, n=n, length=length, seed=seed)


@contextlib.contextmanager
def _status(text: str) -> Iterator[Any]:
    with err_console.status(text) as st:
        yield lambda msg: st.update(msg)


def _check_teacher(teacher: str, trust: bool, calibration_length: int | None) -> None:
    """The teacher's files, tokenizer and positions (for --calibration-length), checked before any weights load."""
    validate.model_source(teacher, "--teacher")
    validate.tokenizer_source(teacher, "--teacher")
    validate.within_context("--calibration-length", calibration_length, teacher, trust)


def _student_map(teacher: str, student: str, trust: bool, student_layers: str | None) -> LayerMap:
    """The student's layer map (--student-layers, else its own), checked against the teacher's config."""
    from ..core.arch import n_layers
    from ..core.configs import check_compatible
    from ..io.loading import load_config

    validate.model_source(student, "--student")
    tcfg = load_config(teacher, trust_remote_code=trust)
    scfg = load_config(student, trust_remote_code=trust)
    check_compatible(tcfg, scfg)  # the student must be one of this teacher's, as for build and family
    student_map = resolve_layer_map(
        student, scfg, layers=student_layers, n_teacher=n_layers(tcfg), option="--student-layers"
    )
    student_map.check_fits(n_layers(tcfg), n_layers(scfg))
    return student_map


def _check_pair(
    teacher: str,
    student: str,
    trust: bool,
    student_layers: str | None,
    orders: Sequence[str] = (),
    calibration_length: int | None = None,
) -> LayerMap:
    """The pair's configs and layer map (and the orders' fit), checked before any weights load."""
    from ..analysis.resolve import check_order

    _check_teacher(teacher, trust, calibration_length)
    student_map = _student_map(teacher, student, trust, student_layers)
    for o in orders:
        check_order(o, student_map)
    return student_map


def prune(
    teacher: Teacher,
    out: Annotated[
        Path, typer.Option(help="Output directory for the pruned checkpoint (written atomically).")
    ],
    method: Annotated[str, typer.Option(help="naive, shortgpt or laco.")] = "naive",
    num_layers: Annotated[
        int | None, typer.Option("--num-layers", "-n", help="Target number of layers.")
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="naive: the teacher layers to keep, e.g. 0,2,4-6 (instead of --num-layers)."),
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(help="naive: keep the teacher layers of this student's family member of the same size."),
    ] = None,
    student_layers: StudentLayers = None,
    order: Annotated[
        str, typer.Option(help="naive with --student: the family's patch order (or order JSON).")
    ] = "last",
    data: Data = None,
    calibration_texts: Texts = None,
    calibration_length: Length = None,
    seed: Seed = 0,
    batch_size: BatchSize = 8,
    recompute: Annotated[
        bool,
        typer.Option("--recompute", help="shortgpt: re-measure BI on the pruned model after every removal."),
    ] = False,
    merge_layers: Annotated[
        int | None, typer.Option("--merge-layers", "-C", help="laco: layers per merge (C).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", "-T", help="laco: similarity threshold (T).")
    ] = None,
    lowest: Annotated[int, typer.Option(help="laco: lowest layer to merge into (L).")] = 0,
    highest: Annotated[int | None, typer.Option(help="laco: highest layer (H); default N-1.")] = None,
    interval: Annotated[int, typer.Option(help="laco: minimum step after a merge (I).")] = 1,
    dtype: Dtype = "auto",
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Prune the teacher to fewer layers with a baseline method and write a standard checkpoint.

    shortgpt calibrates on 128 blocks of 256 tokens by default; laco on 8 blocks of 128 tokens (LaCo's own code
    used 5 short sentences). laco without -C/-T sweeps C in 3..6 and T from 0.95 down to 0.45 and keeps the
    largest result with at most --num-layers layers.
    """
    from ..analysis.prune import CalibrationText, prune_checkpoint

    validate.output_dir(out, force)
    keep = parse_ints(layers, "--layers")
    validate.positive(num_layers=num_layers, calibration_texts=calibration_texts, batch_size=batch_size)
    validate.positive(interval=interval)
    validate.at_least(2, calibration_length=calibration_length, merge_layers=merge_layers)
    validate.at_least(0, lowest=lowest, highest=highest)
    validate.real("threshold", threshold, -1.0, 1.0)
    validate.seed(seed)
    validate.only_with(student is not None, "with --student", student_layers=student_layers is not None)
    validate.text_source(data)
    _check_teacher(teacher, trust_remote_code, calibration_length)
    validate.order_option(order, data=False)
    student_map = (
        None if student is None else _student_map(teacher, student, trust_remote_code, student_layers)
    )
    laco = {"merge_layers": merge_layers, "threshold": threshold, "lowest": lowest, "highest": highest}
    with _status(f"{method}: pruning") as status:
        pruned = prune_checkpoint(
            teacher,
            out,
            method,
            num_layers=num_layers,
            layers=keep,
            layer_map=student_map,
            order=order,
            calibration=CalibrationText(data, calibration_texts, calibration_length, seed),
            batch_size=batch_size,
            dtype=dtype,
            force=force,
            trust_remote_code=trust_remote_code,
            status=status,
            recompute=recompute,
            interval=interval,
            **laco,
        )
    _print_pruned(out, pruned)


def _print_pruned(out: Path, pruned: PrunedCheckpoint) -> None:
    """What was written: the layers kept and the parameters, and what ShortGPT removed or LaCo merged."""
    section, method = pruned.section, pruned.method
    console.print(
        f"[green]wrote[/] {out}: {method}, {section['num_layers']} of {section['n_teacher']} layers "
        f"(teacher layers {section['teacher_layers']}), {pruned.counts.trainable / 1e6:.1f}M parameters"
    )
    if method == "laco":
        console.print(
            f"LaCo: merged groups {[g for g in section['merged_groups'] if len(g) > 1]}, "
            f"C={section['parameters']['merge_layers']}, T={section['parameters']['threshold']}, "
            f"similarity {section['similarity']:.4f}"
        )
    if method == "shortgpt":
        console.print(f"ShortGPT: removed (in order) {section['removed']}")


def analyze(
    teacher: Teacher,
    student: Annotated[str, typer.Option(help="Distilled student checkpoint.")],
    out: Annotated[Path, typer.Option(help="Output directory (written atomically).")],
    data: Data = None,
    orders: Annotated[
        str,
        typer.Option(
            help="Patch orders for the member curve, comma-separated: last, first, similarity, greedy-kl, "
            "shortest-path, optimal or order JSON files."
        ),
    ] = "last,first",
    kl: Annotated[
        bool, typer.Option("--kl", help="Also record KL(teacher || member) for every member.")
    ] = False,
    student_layers: StudentLayers = None,
    calibration_texts: Texts = None,
    calibration_length: Length = None,
    seed: Seed = 0,
    batch_size: BatchSize = 8,
    dtype: Dtype = "auto",
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Layer-similarity analysis: student x teacher and teacher x teacher matrices (JSON + heatmaps) and the
    last-layer similarity of every family member to the teacher per patch order. Calibrates on 8 blocks of
    256 tokens by default (cost grows linearly; see docs/analysis.md)."""
    from ..analysis.analyze import analyze as run_analysis
    from ..analysis.orders import ANALYSIS_TEXTS
    from ..io.loading import load_pair, load_tokenizer

    validate.output_dir(out, force)
    names = validate.names(orders, "--orders")
    for name in names:
        validate.order_option(name, "--orders")
    validate.positive(calibration_texts=calibration_texts, batch_size=batch_size)
    validate.at_least(2, calibration_length=calibration_length)
    validate.seed(seed)
    if data is None:
        raise BoomerangError(
            "analyze needs calibration text: pass --data PATH (a text file, folder or .jsonl)"
        )
    validate.text_source(data)
    student_map = _check_pair(teacher, student, trust_remote_code, student_layers, names, calibration_length)
    t, s = load_pair(teacher, student, dtype=dtype, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(teacher, trust_remote_code=trust_remote_code)
    ids = _calibration(
        data, tok, calibration_texts or ANALYSIS_TEXTS, calibration_length or 256, seed, "analyze"
    )
    with _status("analysing") as status:
        meta = {"teacher": teacher, "student": student}
        summary = run_analysis(
            t,
            s,
            student_map,
            ids,
            out,
            orders=names,
            kl=kl,
            batch_size=batch_size,
            force=force,
            status=status,
            meta=meta,
        )
    console.print(_members_table(summary, student_map.n_student))
    console.print(f"[green]wrote[/] {out}: similarity.png, teacher_similarity.png, members.png and JSON")


def _members_table(summary: dict, n_student: int) -> Table:
    """The last-layer cosine of every member to the teacher, one column per order."""
    table = Table(title="last-layer cosine similarity to the teacher, by number of patched layers")
    table.add_column("K", justify="right")
    for name in summary["orders"]:
        table.add_column(name, justify="right")
    for k in range(n_student + 1):
        cells = [row["cosine"][k] if k < len(row["cosine"]) else None for row in summary["orders"].values()]
        table.add_row(str(k), *("" if c is None else f"{c:.4f}" for c in cells))
    return table


def order(
    teacher: Teacher,
    student: Annotated[str, typer.Option(help="Distilled student checkpoint.")],
    out: Annotated[Path, typer.Option(help="Output order JSON (use with build/sweep --order FILE).")],
    name: Annotated[
        str, typer.Option("--order", help="similarity, greedy-kl, shortest-path or optimal.")
    ] = "greedy-kl",
    data: Data = None,
    max_layers: Annotated[
        int, typer.Option("--max-layers", help="optimal: refuse students with more layers (2^M subsets).")
    ] = 12,
    score: Annotated[
        bool,
        typer.Option("--score", help="similarity: also record the KL of every size (on at most 4 blocks)."),
    ] = False,
    student_layers: StudentLayers = None,
    calibration_texts: Texts = None,
    calibration_length: Length = None,
    seed: Seed = 0,
    batch_size: BatchSize = 8,
    dtype: Dtype = "auto",
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Compute a data-driven patch order and save it as JSON. Calibrates on 4 blocks of 256 tokens by default
    (similarity: 32); every model greedy-kl/shortest-path/optimal scores runs the full-vocabulary LM head, so their
    cost grows linearly with --calibration-texts (see docs/analysis.md)."""
    from ..analysis.order_job import plan_order

    validate.output_file(out, force)
    validate.positive(max_layers=max_layers, calibration_texts=calibration_texts, batch_size=batch_size)
    validate.at_least(2, calibration_length=calibration_length)
    validate.seed(seed)
    validate.text_source(data)
    _check_teacher(teacher, trust_remote_code, calibration_length)
    student_map = _student_map(teacher, student, trust_remote_code, student_layers)
    job = plan_order(
        name,
        teacher,
        student,
        out,
        data=data,
        layer_map=student_map,
        calibration_texts=calibration_texts,
        calibration_length=calibration_length,
        seed=seed,
        batch_size=batch_size,
        max_layers=max_layers,
        score=score,
        dtype=dtype,
        force=force,
        trust_remote_code=trust_remote_code,
    )
    with _search_bar(f"{name}: scoring patched models") as progress:
        patch_order = job.run(progress)
    console.print(_order_table(name, patch_order))
    console.print(f"[green]wrote[/] {out}")


@contextlib.contextmanager
def _search_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for an order search; yields its ``progress(done, total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _order_table(name: str, patch_order: PatchOrder) -> Table:
    """Every member of an order: its patched student layers and KL (and greedy KL, for optimal)."""
    table = Table(title=f"order {name}")
    table.add_column("K", justify="right")
    table.add_column("patched student layers")
    values = patch_order.info.get("kl")
    if values:
        table.add_column("KL(teacher || member)", justify="right")
    if "greedy_kl" in patch_order.info:
        table.add_column("greedy KL", justify="right")
    for k, subset in enumerate(patch_order.subsets):
        row = [str(k), str(list(subset))]
        if values:
            row.append(f"{values[k]:.5f}")
        if "greedy_kl" in patch_order.info:
            row.append(f"{patch_order.info['greedy_kl'][k]:.5f}")
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command()(prune)
    app.command()(analyze)
    app.command()(order)
