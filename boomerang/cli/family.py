"""``boomerang family``: every size of a family written as its own checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BoomerangError
from ..ui import fmt_count
from . import validate
from .common import (
    Dtype,
    LayerMapPreset,
    Layers,
    OrderData,
    Trust,
    console,
    parse_ints,
    progress_bars,
    resolve_layer_map,
)

Force = Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")]
Stream = Annotated[
    bool | None,
    typer.Option(
        "--stream/--no-stream",
        help="Write members straight from the safetensors files without loading the models "
        "(default: whenever both are local safetensors checkpoints).",
    ),
]
ShardSize = Annotated[
    str, typer.Option("--max-shard-size", help="Largest weight file per member, e.g. 5GB or 500MB.")
]
OrderOpt = Annotated[
    str | None,
    typer.Option(
        help="Patch order: last, first, a saved order (.json), or similarity / greedy-kl / shortest-path / "
        "optimal (need --data). Default: the order the student records (init writes it), else last."
    ),
]


def family(
    teacher: Annotated[str, typer.Option(help="Teacher checkpoint (directory, .gguf or Hub id).")],
    student: Annotated[str, typer.Option(help="Distilled student checkpoint.")],
    out: Annotated[Path, typer.Option(help="Output directory: one sub-directory per member (atomic).")],
    order: OrderOpt = None,
    data: OrderData = None,
    sizes: Annotated[
        str | None, typer.Option(help="Sizes K to write, e.g. 0,4,8 or 0-3 (default: all 0..M).")
    ] = None,
    layers: Layers = None,
    layer_map: LayerMapPreset = None,
    dtype: Dtype = "auto",
    max_shard_size: ShardSize = "50GB",
    stream: Stream = None,
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Write every member of a family (K = 0..M, or --sizes) with family.json, order.json and a README table."""
    from rich.table import Table

    from ..core.arch import n_layers
    from ..core.plan import DATA_ORDERS, recorded_order
    from ..family import MANIFEST, check_sizes, export_family, fmt_bytes
    from ..io.checkpoints import is_local_safetensors
    from ..io.loading import load_config, parse_dtype
    from ..io.order_files import static_order
    from ..io.stream import parse_shard_size

    validate.output_dir(out, force)
    parse_dtype(dtype)
    parse_shard_size(max_shard_size)
    validate.order_option(order)
    if data is not None and order not in DATA_ORDERS:
        raise BoomerangError(
            f"--data is read only by the data-driven orders ({', '.join(DATA_ORDERS)}); drop --data, or choose "
            "one of them with --order"
        )
    validate.text_source(data)
    if stream and not (is_local_safetensors(teacher) and is_local_safetensors(student)):
        raise BoomerangError(
            "--stream needs the teacher and the student as local checkpoint directories with safetensors "
            "weights; drop --stream to load them in memory"
        )
    chosen = parse_ints(sizes, "--sizes")
    validate.model_source(teacher, "--teacher")
    validate.model_source(student, "--student")
    tcfg = load_config(teacher, trust_remote_code=trust_remote_code)
    scfg = load_config(student, trust_remote_code=trust_remote_code)
    lm = resolve_layer_map(student, scfg, layers=layers, preset=layer_map, n_teacher=n_layers(tcfg))
    lm.check_fits(n_layers(tcfg), n_layers(scfg))
    order = recorded_order(scfg) if order is None else order  # the order the student records, else last
    check_sizes(chosen, lm.n_student)
    if order not in DATA_ORDERS:
        static_order(order, lm)  # an order file or list fits this student?
    with progress_bars() as bars:
        path = export_family(
            teacher,
            student,
            out,
            layer_map=lm,
            order=order,
            sizes=chosen,
            data=data,
            dtype=dtype,
            max_shard_size=max_shard_size,
            stream=stream,
            force=force,
            progress=bars,
            trust_remote_code=trust_remote_code,
        )
    import json

    manifest = json.loads((path / MANIFEST).read_text())
    t = Table(title=f"{path} ({manifest['written']}, order {manifest['order']['name']})")
    for col in ("K", "directory", "layers", "patched student layers", "trainable", "inference", "weights"):
        t.add_column(col, justify="right")
    for r in manifest["members"]:
        t.add_row(
            str(r["K"]),
            r["dir"],
            str(r["n_layers"]),
            str(r["patched_student_layers"]),
            fmt_count(r["params"]["trainable"]),
            fmt_count(r["params"]["inference"]),
            fmt_bytes(r["weights_bytes"]),
        )
    console.print(t)
    total = sum(r["weights_bytes"] for r in manifest["members"])
    console.print(f"[green]wrote[/] {len(manifest['members'])} members ({fmt_bytes(total)}) to {path}")


def register(app: typer.Typer) -> None:
    app.command()(family)
