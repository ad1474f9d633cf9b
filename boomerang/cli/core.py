"""``boomerang info``, ``boomerang build`` and ``boomerang convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import BoomerangError
from ..io.sidecar import read_layer_map
from ..ui import fmt_count
from . import validate
from .common import Dtype, LayerMapPreset, Layers, OrderData, Trust, console, parse_ints, resolve_layer_map

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
    from ..core.arch import get_arch, n_layers
    from ..core.configs import check_compatible
    from ..core.params import count_params, distinct_sizes, family_table, meta_model
    from ..core.plan import recorded_order
    from ..io.consistency import check_checkpoint
    from ..io.loading import load_config, resolve
    from ..io.order_files import static_order
    from ..io.safetensors_files import read_tensors

    validate.model_source(model, "MODEL")
    validate.order_option(order, data=False)
    cfg = load_config(model, trust_remote_code=trust_remote_code)
    order = recorded_order(cfg) if order is None else order  # the order the student records, else last
    where, gguf = resolve(model)
    arch = get_arch(cfg)
    skeleton = meta_model(cfg)
    if gguf is None and Path(where).is_dir():
        # damaged or truncated weights, or a config that contradicts them, fail here (not in another command)
        check_checkpoint(Path(where), cfg, read_tensors(Path(where))[0], skeleton)
    counts = count_params(skeleton)
    t = Table(title=f"{model}", show_header=False)
    t.add_row("architecture", f"{cfg.model_type} ({type(skeleton).__name__})")
    t.add_row("layers", str(n_layers(cfg)))
    t.add_row(
        "hidden size", str(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", getattr(cfg, "dim", "?"))))
    )
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
        t.add_row(
            "boomerang", f"intermediate model, patched student layers {section.get('patched_student_layers')}"
        )
    console.print(t)

    if layers is not None or layer_map:
        lm = resolve_layer_map(model, cfg, layers=layers, preset=layer_map)
    else:
        lm = read_layer_map(model, cfg)
    if lm is None:
        console.print("[dim]not a boomerang student (no layer map found)[/]")
        return
    if lm.n_student != n_layers(cfg):
        raise BoomerangError(f"the layer map keeps {lm.n_student} layers but the model has {n_layers(cfg)}")
    console.print(f"[bold]layer map[/]: {lm.describe()}")
    bt = Table(title="student blocks")
    for col in ("student layer", "teacher layer", "block", "size", "aligned with teacher layer"):
        bt.add_column(col, justify="right")
    for i in range(lm.n_student):
        b = lm.block(i)
        bt.add_row(str(i), str(lm.kept[i]), f"[{b.start}, {b.stop})", str(len(b)), str(lm.target(i)))
    console.print(bt)

    if teacher is not None:
        tcfg = load_config(teacher, trust_remote_code=trust_remote_code)
        check_compatible(tcfg, cfg)
        exact = True
    else:  # assume teacher layers are shaped like the student's
        d = cfg.to_dict()
        for key in ("num_hidden_layers", "n_layer", "n_layers"):
            if key in d:
                d[key] = lm.n_teacher
        for field in arch.layer_fields:
            d.pop(field, None)
        d.pop("boomerang", None)
        tcfg = type(cfg).from_dict(d)
        exact = False
    st = Table(title="distinct sizes (whatever the order; single-layer blocks change no size)")
    for col in ("layers", "trainable", "inference", "e.g. patching"):
        st.add_column(col, justify="right")
    for size in distinct_sizes(tcfg, cfg, lm):
        st.add_row(
            str(size.layers), fmt_count(size.trainable), fmt_count(size.inference), str(list(size.patched))
        )
    console.print(st)
    ft = Table(title=f"family ({order} order){'' if exact else ' — pass --teacher for exact counts'}")
    for col in ("K", "patched student layers", "layers", "trainable", "inference"):
        ft.add_column(col, justify="right")
    for row in family_table(tcfg, cfg, lm, static_order(order, lm)):
        ft.add_row(
            str(row["K"]),
            str(row["patched"]),
            str(row["layers"]),
            fmt_count(row["trainable"]),
            fmt_count(row["inference"]),
        )
    console.print(ft)


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
    from ..core.arch import n_layers
    from ..core.plan import BUILTIN_ORDERS, DATA_ORDERS, make_plan, recorded_order
    from ..io.atomic import atomic_dir
    from ..io.checkpoints import dtype_name, is_local_safetensors
    from ..io.fastbuild import FastBuilder
    from ..io.order_files import save_order, static_order
    from ..io.safetensors_files import parse_shard_size

    gguf = validate.gguf_format(format, gguf_type)
    if gguf is None:
        validate.output_dir(out, force)
    else:
        validate.gguf_file(out, force)
    if (num_patched is None) == (patch_layers is None):
        raise BoomerangError("give exactly one of --num-patched K or --patch-layers i,j,...")
    validate.at_least(0, num_patched=num_patched)
    dtype_name(dtype)
    parse_shard_size(max_shard_size)
    explicit = parse_ints(patch_layers, "--patch-layers")
    validate.order_option(order)
    if data is not None and order not in DATA_ORDERS:
        raise BoomerangError(
            f"--data is read only by the data-driven orders ({', '.join(DATA_ORDERS)}); drop --data, or choose "
            "one of them with --order"
        )
    validate.text_source(data)
    validate.model_source(teacher, "--teacher")
    validate.model_source(student, "--student")
    if gguf is not None:
        from ..family import check_gguf_teacher

        for note in check_gguf_teacher(teacher, gguf, trust_remote_code=trust_remote_code):
            console.print(f"[yellow]note[/]: {note}")
    can_stream = is_local_safetensors(teacher) and is_local_safetensors(student)
    if stream and not can_stream:
        raise BoomerangError(
            "--stream needs the teacher and the student as local checkpoint directories with safetensors "
            "weights; drop --stream to build in memory"
        )
    data_order = num_patched is not None and order in DATA_ORDERS
    # canonical checkpoints stream without torch or transformers (the same bytes; see boomerang.io.fastbuild)
    builder: Any = None
    if stream is not False and can_stream and not data_order:
        builder = FastBuilder.open(teacher, student, dtype=dtype)
    if builder is not None:
        tcfg, scfg = builder.teacher.config, builder.student.config
    else:
        from ..core.configs import check_compatible
        from ..io.loading import load_config

        tcfg = load_config(teacher, trust_remote_code=trust_remote_code)
        scfg = load_config(student, trust_remote_code=trust_remote_code)
        check_compatible(tcfg, scfg)
    lm = resolve_layer_map(student, scfg, layers=layers, preset=layer_map, n_teacher=n_layers(tcfg))
    lm.check_fits(n_layers(tcfg), n_layers(scfg))
    order = recorded_order(scfg) if order is None else order  # the order the student records, else last
    m = lm.n_student
    validate.in_range(
        "num_patched", num_patched, 0, m, f"the student has {m} layers (K=0 student, K={m} teacher)"
    )
    if explicit is not None:
        make_plan(lm, patched=explicit)  # the listed layers exist?
    if not data_order:
        static_order(order, lm)  # an order file or list fits this student?
    if builder is None and stream is not False and can_stream:
        from ..io.stream import StreamBuilder, StreamUnsupported

        try:
            builder = StreamBuilder(teacher, student, lm, dtype=dtype, trust_remote_code=trust_remote_code)
        except StreamUnsupported as e:
            if stream:
                raise
            console.print(f"[dim]building in memory: {e}[/]")

    def load_pair() -> tuple:
        from ..io.loading import load_pair

        t, s = load_pair(teacher, student, dtype=dtype, trust_remote_code=trust_remote_code)
        return t, s

    models = None
    po = None
    if num_patched is not None:
        if data_order:
            from ..analysis.orders import default_texts, resolve_order
            from ..data.blocks import calibration_ids
            from ..io.loading import load_tokenizer

            if data is None:
                raise BoomerangError(f"order {order!r} is computed from calibration texts: pass --data PATH")
            models = load_pair()
            tok = load_tokenizer(teacher, trust_remote_code=trust_remote_code)
            ids = calibration_ids(data, tok, n=default_texts(order))
            po = resolve_order(order, lm, teacher=models[0], student=models[1], calibration=ids)
            if builder is not None:
                models = None  # streaming: the models were needed only for the search
        else:
            po = static_order(order, lm)
    plan = make_plan(lm, num_patched=num_patched, order=po if po is not None else order, patched=explicit)
    save_po = po is not None and order not in BUILTIN_ORDERS
    if builder is not None:
        builder.check_space(plan, out)

    def write(tmp: Path) -> tuple[Any, str]:
        """Write the member into the (empty) directory ``tmp``; returns its parameter counts and how."""
        if builder is not None:
            from .common import progress_bars

            with progress_bars() as bars:
                bars.start(1, builder.nbytes(plan))
                builder.write(plan, tmp, max_shard_size=max_shard_size, progress=bars.advance)
            c, how = builder.params(plan), "streamed"
        else:
            from ..core.params import count_params
            from ..core.patching import build as build_model
            from ..io.loading import save_tokenizer

            t, s = models or load_pair()
            model = build_model(t, s, plan)
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
            save_tokenizer(tmp, teacher, trust_remote_code=trust_remote_code)
            c, how = count_params(model), "built in memory"
        if save_po:
            save_order(po, tmp / "order.json")
        return c, how

    if gguf is None:
        with atomic_dir(out, force=force) as tmp:
            c, how = write(tmp)
    else:
        from ..io.atomic import scratch_dir
        from ..io.gguf_export import export_gguf

        with scratch_dir(out, "member") as work:
            c, how = write(work)
            export_gguf(work, out, type=gguf, name=out.stem, force=force)
        how += f", written as one {gguf} GGUF file"
    console.print(
        f"[green]wrote[/] {out} ({how}): {plan.n_layers} layers (patched student layers {list(plan.patched)}), "
        f"{fmt_count(c.trainable)} trainable / {fmt_count(c.inference)} inference parameters"
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
