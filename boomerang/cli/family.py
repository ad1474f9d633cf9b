"""``boomerang family``: every size of a family written as its own checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    pair_layer_map,
    parse_ints,
    print_gguf_notes,
    progress_bars,
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
Format = Annotated[
    str,
    typer.Option(
        "--format",
        help="safetensors: checkpoint directories; gguf: also each member as one GGUF file for llama.cpp "
        "(gguf/K05-22layers.f16.gguf), listed in family.json beside the checkpoints.",
    ),
]
GGUFType = Annotated[
    str | None,
    typer.Option(
        "--gguf-type", help="GGUF weight type: f32, f16 (default), bf16 or q8_0 (with --format gguf)."
    ),
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
    format: Format = "safetensors",
    gguf_type: GGUFType = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="A sweep of this family (its --out directory or results.json) whose measurements the model cards "
            "show; repeatable. Default: the sweeps under a run's sweeps/ folder near the student (boomerang demo).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The family's name in its model cards.")] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model", help="The teacher's Hub id for the cards' base_model (default: found out)."
        ),
    ] = None,
    license: Annotated[
        str | None, typer.Option(help="The licence for the cards (default: the teacher's, when known).")
    ] = None,
    force: Force = False,
    trust_remote_code: Trust = False,
) -> None:
    """Write every member of a family (K = 0..M, or --sizes) with family.json, order.json and model cards."""
    from ..family import CardOptions, export_family
    from ..io.loading import parse_dtype
    from ..io.stream import parse_shard_size

    parse_dtype(dtype)
    parse_shard_size(max_shard_size)
    gguf = validate.gguf_format(format, gguf_type)
    lm, chosen = _checked(
        teacher, student, out, order, data, sizes, layers, layer_map, stream, force, trust_remote_code
    )
    print_gguf_notes(teacher, gguf, trust_remote_code)
    if sweep:  # the named sweeps exist and describe this family (student, layer map), before any work
        from ..cards import sweep_files, sweep_scores

        probe = {"layer_map": lm.to_json(), "student": student, "members": [], "n_student": lm.n_student}
        sweep_scores(sweep_files(sweep, student)[0], probe, explicit=True)
    card = CardOptions(
        name=name, base_model=base_model, license=license, sweeps=tuple(sweep) if sweep else None
    )
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
            gguf=gguf,
            card=card,
        )
    _print_family(path, gguf)


def _checked(
    teacher: str,
    student: str,
    out: Path,
    order: str | None,
    data: str | None,
    sizes: str | None,
    layers: str | None,
    layer_map: str | None,
    stream: bool | None,
    force: bool,
    trust: bool,
) -> tuple[Any, list[int] | None]:
    """Every option checked before any weights load; returns the layer map and the chosen sizes."""
    from ..analysis.resolve import check_order_data, resolve_order
    from ..core.plan import is_data_order
    from ..family import check_sizes
    from ..io.checkpoints import is_local_safetensors
    from ..io.loading import load_config

    validate.output_dir(out, force)
    validate.order_option(order)
    check_order_data(order, data)
    validate.text_source(data)
    if stream and not (is_local_safetensors(teacher) and is_local_safetensors(student)):
        raise BoomerangError(
            "--stream needs the teacher and the student as local checkpoint directories with safetensors "
            "weights; drop --stream to load them in memory"
        )
    chosen = parse_ints(sizes, "--sizes")
    validate.model_source(teacher, "--teacher")
    validate.model_source(student, "--student")
    lm = pair_layer_map(teacher, student, layers=layers, preset=layer_map, trust_remote_code=trust)
    if not is_data_order(order):  # an order file or list fits this student, and the sizes fit the order?
        scfg = load_config(student, trust_remote_code=trust)
        check_sizes(chosen, lm.n_student, resolve_order(order, lm, config=scfg))
    else:  # the order's member count is known once it is computed; K can be at most the teacher's layer count
        check_sizes(chosen, lm.n_teacher)
    return lm, chosen


def _print_family(path: Path, gguf: str | None) -> None:
    """The members written (from the family's manifest) and where the cards are."""
    import json

    from rich.table import Table

    from ..family import MANIFEST
    from ..io.checkpoints import fmt_bytes

    manifest = json.loads((path / MANIFEST).read_text())
    t = Table(title=f"{path} ({manifest['written']}, order {manifest['order']['name']})")
    cols = ["K", "directory", "layers", "patched student layers", "trainable", "inference", "weights"]
    for col in cols + (["GGUF"] if gguf else []):
        t.add_column(col, justify="right")
    for r in manifest["members"]:
        cells = [
            str(r["K"]),
            r["dir"],
            str(r["n_layers"]),
            str(r["patched_student_layers"]),
            fmt_count(r["params"]["trainable"]),
            fmt_count(r["params"]["inference"]),
            fmt_bytes(r["weights_bytes"]),
        ]
        if gguf:
            cells.append(f"{r['gguf']['file']} ({fmt_bytes(r['gguf']['bytes'])})")
        t.add_row(*cells)
    console.print(t)
    total = sum(r["weights_bytes"] + (r.get("gguf") or {}).get("bytes", 0) for r in manifest["members"])
    scored = sum(1 for r in manifest["members"] if r.get("scores"))
    console.print(f"[green]wrote[/] {len(manifest['members'])} members ({fmt_bytes(total)}) to {path}")
    console.print(
        f"[dim]model cards: README.md and one per member"
        f"{f'; measurements of {scored} members from the sweeps' if scored else ''}; publish with "
        f"`boomerang publish {path} USER/NAME`[/]"
    )


def register(app: typer.Typer) -> None:
    app.command()(family)
