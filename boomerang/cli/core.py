"""``boomerang info``, ``boomerang build`` and ``boomerang convert``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ..errors import BoomerangError
from ..io.sidecar import read_layer_map
from ..ui import fmt_count
from . import validate
from .common import (
    Dtype,
    LayerMapPreset,
    Layers,
    OrderData,
    Trust,
    console,
    pair_layer_map,
    parse_ints,
    print_gguf_notes,
    progress_bars,
    resolve_layer_map,
)

if TYPE_CHECKING:
    from ..core.layermap import LayerMap

# Heavy modules (torch, transformers) are imported inside the commands so that `boomerang --help` is instant.

Force = Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")]


def info(
    model: Annotated[str, typer.Argument(help="Checkpoint directory, .gguf file or Hub id.")],
    teacher: Annotated[
        str | None, typer.Option(help="The teacher, for exact family parameter counts.")
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            help="Patch order for the family table: last or first (default: the student's, else last)."
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Layer map as kept teacher layers, e.g. 0,2,4,5.")
    ] = None,
    layer_map: LayerMapPreset = None,
    trust_remote_code: Trust = False,
) -> None:
    """Architecture, layer count, and for a student its blocks and the parameters of every family size."""
    from ..analysis.resolve import resolve_order
    from ..core.arch import n_layers
    from ..core.configs import check_compatible, teacher_config_like
    from ..core.params import distinct_sizes, family_table
    from ..io.loading import load_config

    validate.model_source(model, "MODEL")
    validate.order_option(order, data=False)
    cfg = load_config(model, trust_remote_code=trust_remote_code)
    console.print(_model_table(model, cfg))
    own = layers is None and not layer_map
    student_map = (
        read_layer_map(model, cfg) if own else resolve_layer_map(model, cfg, layers=layers, preset=layer_map)
    )
    if student_map is None:
        console.print("[dim]not a boomerang student (no layer map found)[/]")
        return
    if teacher is not None:
        tcfg = load_config(teacher, trust_remote_code=trust_remote_code)
        check_compatible(tcfg, cfg)
    else:  # assume teacher layers are shaped like the student's
        tcfg = teacher_config_like(cfg, student_map.n_teacher)
    student_map.check_fits(n_layers(tcfg), n_layers(cfg), student=model)
    console.print(f"[bold]layer map[/]: {student_map.describe()}")
    console.print(_blocks_table(student_map))
    console.print(_sizes_table(distinct_sizes(tcfg, cfg, student_map)))
    patch_order = resolve_order(order, student_map, config=cfg)
    console.print(
        _family_table(
            family_table(tcfg, cfg, student_map, patch_order), patch_order.name, exact=teacher is not None
        )
    )


def _model_table(model: str, cfg: Any) -> Table:
    """What a checkpoint is (its weights checked against its config on the way)."""
    from ..core.arch import n_layers
    from ..core.params import count_params, meta_model
    from ..io.consistency import check_checkpoint
    from ..io.loading import resolve
    from ..io.safetensors_files import read_tensors

    where, gguf = resolve(model)
    skeleton = meta_model(cfg)
    if gguf is None and Path(where).is_dir():
        # damaged or truncated weights, or a config that contradicts them, fail here (not in another command)
        check_checkpoint(Path(where), cfg, read_tensors(Path(where))[0], skeleton)
    counts = count_params(skeleton)
    t = Table(title=f"{model}", show_header=False)
    t.add_row("architecture", f"{cfg.model_type} ({type(skeleton).__name__})")
    t.add_row("layers", str(n_layers(cfg)))
    hidden = getattr(cfg, "hidden_size", getattr(cfg, "n_embd", getattr(cfg, "dim", "?")))
    t.add_row("hidden size", str(hidden))
    t.add_row("vocabulary", str(cfg.vocab_size))
    t.add_row("tied embeddings", str(bool(getattr(cfg, "tie_word_embeddings", False))))
    if getattr(cfg, "layer_types", None):
        kinds = sorted(set(cfg.layer_types))
        t.add_row("layer types", ", ".join(f"{k} x{cfg.layer_types.count(k)}" for k in kinds))
    t.add_row(
        "parameters", f"{fmt_count(counts.trainable)} trainable, {fmt_count(counts.inference)} at inference"
    )
    section = getattr(cfg, "boomerang", None)
    if isinstance(section, dict) and section.get("role") == "intermediate":
        patched = section.get("patched_student_layers")
        t.add_row("boomerang", f"intermediate model, patched student layers {patched}")
    return t


def _blocks_table(layer_map: LayerMap) -> Table:
    bt = Table(title="student blocks")
    for col in ("student layer", "teacher layer", "block", "size", "aligned with teacher layer"):
        bt.add_column(col, justify="right")
    for i in range(layer_map.n_student):
        b = layer_map.block(i)
        bt.add_row(
            str(i), str(layer_map.kept[i]), f"[{b.start}, {b.stop})", str(len(b)), str(layer_map.target(i))
        )
    return bt


def _sizes_table(sizes: list[Any]) -> Table:
    st = Table(title="distinct sizes (whatever the order; single-layer blocks change no size)")
    for col in ("layers", "trainable", "inference", "e.g. patching"):
        st.add_column(col, justify="right")
    for size in sizes:
        st.add_row(
            str(size.layers), fmt_count(size.trainable), fmt_count(size.inference), str(list(size.patched))
        )
    return st


def _family_table(rows: list[dict[str, Any]], order: str, exact: bool) -> Table:
    ft = Table(title=f"family ({order} order){'' if exact else ' — pass --teacher for exact counts'}")
    for col in ("K", "patched student layers", "layers", "trainable", "inference"):
        ft.add_column(col, justify="right")
    for row in rows:
        ft.add_row(
            str(row["K"]),
            str(row["patched"]),
            str(row["layers"]),
            fmt_count(row["trainable"]),
            fmt_count(row["inference"]),
        )
    return ft


def build(
    teacher: Annotated[str, typer.Option(help="Teacher checkpoint (directory, .gguf or Hub id).")],
    student: Annotated[str, typer.Option(help="Distilled student checkpoint.")],
    out: Annotated[Path, typer.Option(help="Output directory (written atomically).")],
    num_patched: Annotated[
        int | None,
        typer.Option("--num-patched", "-k", help="Patch K student layers (K=0 student, K=M teacher)."),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            help="Which K layers: last, first, a saved order (.json), or similarity / greedy-kl / shortest-path / "
            "optimal (need --data). Default: the order the student records (init writes it), else last."
        ),
    ] = None,
    patch_layers: Annotated[
        str | None, typer.Option("--patch-layers", help="Explicit student layers to patch, e.g. 3,5.")
    ] = None,
    layers: Layers = None,
    layer_map: LayerMapPreset = None,
    data: OrderData = None,
    dtype: Dtype = "auto",
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Write the model straight from the safetensors files without loading either model "
            "(default: whenever both are local safetensors checkpoints).",
        ),
    ] = None,
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Largest weight file, e.g. 5GB or 500MB.")
    ] = "50GB",
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="safetensors: a checkpoint directory; gguf: one GGUF file for llama.cpp (--out NAME.gguf).",
        ),
    ] = "safetensors",
    gguf_type: Annotated[
        str | None,
        typer.Option(
            "--gguf-type", help="GGUF weight type: f32, f16 (default), bf16 or q8_0 (with --format gguf)."
        ),
    ] = None,
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Write one intermediate model: the student with some layers replaced by their teacher blocks."""
    from ..member import build_member

    gguf = validate.gguf_format(format, gguf_type)
    validate.output_target(out, force, gguf)
    validate.at_least(0, num_patched=num_patched)
    explicit = parse_ints(patch_layers, "--patch-layers")
    validate.order_option(order)
    validate.text_source(data)
    validate.model_source(teacher, "--teacher")
    validate.model_source(student, "--student")
    print_gguf_notes(teacher, gguf, trust_remote_code)
    student_map = None  # else the student's own, found from the configs alone (no torch for canonical pairs)
    if layers is not None or layer_map:  # a map for a student that carries none
        student_map = pair_layer_map(
            teacher, student, layers=layers, preset=layer_map, trust_remote_code=trust_remote_code
        )
    with progress_bars() as bars:
        built = build_member(
            teacher,
            student,
            out,
            num_patched=num_patched,
            patched=explicit,
            order=order,
            data=data,
            layer_map=student_map,
            dtype=dtype,
            stream=stream,
            max_shard_size=max_shard_size,
            gguf=gguf,
            force=force,
            trust_remote_code=trust_remote_code,
            progress=bars,
        )
    plan, c = built.plan, built.counts
    console.print(
        f"[green]wrote[/] {out} ({built.how}): {plan.n_layers} layers (patched student layers "
        f"{list(plan.patched)}), {fmt_count(c.trainable)} trainable / {fmt_count(c.inference)} inference parameters"
    )


def convert(
    source: Annotated[str | None, typer.Argument(help="A .gguf file (or checkpoint) to convert.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
    smollm2: Annotated[
        bool,
        typer.Option("--smollm2", help="Convert the offline SmolLM2-135M-Instruct teacher into the cache."),
    ] = False,
    dtype: Dtype = "auto",
    force: Force = False,
) -> None:
    """Convert a GGUF model into a standard safetensors checkpoint (with its tokenizer)."""
    from ..io.loading import convert_gguf, load_config
    from ..io.offline import offline_teacher, smollm2_gguf

    if out is not None:
        validate.output_dir(out, force)
    if smollm2 and source is not None:
        raise BoomerangError("give SOURCE or --smollm2, not both")
    if source is not None:
        validate.model_source(source, "SOURCE")
        if not source.endswith(".gguf"):
            raise BoomerangError(
                f"convert reads .gguf files; {source} is not one (a checkpoint directory needs no conversion)"
            )
        load_config(source)  # a damaged file fails here, before anything is written
    if smollm2:
        path = (
            offline_teacher() if out is None else convert_gguf(smollm2_gguf(), out, dtype=dtype, force=force)
        )
        console.print(f"[green]offline teacher ready[/]: {path}")
        return
    if source is None or out is None:
        raise BoomerangError("give SOURCE and --out (or --smollm2)")
    convert_gguf(source, out, dtype=dtype, force=force)
    console.print(f"[green]wrote[/] {out}")


def register(app: typer.Typer) -> None:
    app.command()(info)
    app.command()(build)
    app.command()(convert)
