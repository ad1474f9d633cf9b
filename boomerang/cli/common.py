"""Helpers shared by the command modules: consoles (from ``boomerang.ui``), list parsing, layer-map options,
progress bars."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..core.layermap import LayerMap
from ..errors import BoomerangError
from ..io.sidecar import config_layer_map, read_layer_map
from ..ui import console, err_console  # noqa: F401 (the command modules import both consoles from here)
from .validate import parse_ints

if TYPE_CHECKING:
    from ..hints import Config

# Options shared by several commands: one definition each.
Dtype = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")]
Trust = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the Hub to run.")]
Layers = Annotated[
    str | None, typer.Option("--layers", help="Student's kept teacher layers, if it carries no layer map.")
]
LayerMapPreset = Annotated[
    str | None, typer.Option("--layer-map", help="Layer-map preset: distilbert, distilgpt2.")
]
OrderData = Annotated[
    str | None,
    typer.Option("--data", help="Calibration texts for data-driven orders: file, folder, .jsonl or hf:NAME."),
]


def resolve_layer_map(
    student: str | Path | None,
    student_config: Config,
    *,
    layers: str | None = None,
    preset: str | None = None,
    n_teacher: int | None = None,
    option: str = "--layers",
) -> LayerMap:
    """The layer map from --layers / --layer-map, else from the student's config or sidecar file.

    --layers and --layer-map are for students that carry no map: one that contradicts the student's own map is
    refused (it would write a wrongly mapped model); one that repeats it is accepted.
    """
    if layers is not None and preset:
        raise BoomerangError(f"give either {option} or --layer-map, not both")
    own = (
        read_layer_map(student, student_config, allow_hub=False)
        if student is not None
        else config_layer_map(student_config, "the student's config")
    )
    given = None
    if preset:
        given, option = LayerMap.preset(preset), "--layer-map"
    elif layers is not None:
        given = LayerMap.from_kept(parse_ints(layers, option) or [], n_teacher)
    if given is not None:
        if own is not None and own != given:
            raise BoomerangError(
                f"{option} gives kept teacher layers {list(given.kept)} of {given.n_teacher}, but the student "
                f"{student or ''} carries its own layer map: {list(own.kept)} of {own.n_teacher}. Drop {option} "
                "(it is only for students without a layer map), or fix the student's config"
            )
        return given
    if own is None and student is not None and not Path(student).is_dir():
        own = read_layer_map(student, student_config)  # a Hub student's sidecar file
    if own is None:
        raise BoomerangError(
            f"cannot find the layer map of student {student}: it has no 'boomerang' config section and no "
            f"student_config.json. Pass {option} 0,2,... (the teacher layers it was initialised from) or "
            "--layer-map distilbert|distilgpt2"
        )
    return own


def pair_layer_map(
    teacher: str, student: str, *, layers: str | None, preset: str | None, trust_remote_code: bool
) -> LayerMap:
    """The layer map of a teacher/student pair from their configs (``resolve_layer_map``), checked to fit both;
    the configs must describe one architecture."""
    from ..core.arch import n_layers
    from ..core.configs import check_compatible
    from ..io.loading import load_config

    tcfg = load_config(teacher, trust_remote_code=trust_remote_code)
    scfg = load_config(student, trust_remote_code=trust_remote_code)
    check_compatible(tcfg, scfg)
    student_map = resolve_layer_map(student, scfg, layers=layers, preset=preset, n_teacher=n_layers(tcfg))
    student_map.check_fits(n_layers(tcfg), n_layers(scfg))
    return student_map


def print_gguf_notes(teacher: str, gguf: str | None, trust_remote_code: bool) -> None:
    """Fail now if the teacher's members cannot be GGUF files of type ``gguf``; show what the user should know."""
    if gguf is not None:
        from ..family import check_gguf_teacher

        for note in check_gguf_teacher(teacher, gguf, trust_remote_code=trust_remote_code):
            console.print(f"[yellow]note[/]: {note}")


def progress_bars() -> Any:
    """A rich progress display over members and bytes, usable as an ``ExportProgress``."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from ..family import ExportProgress

    class Bars(ExportProgress):
        def __init__(self) -> None:
            self.members = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
            )
            self.bytes = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            from rich.console import Group
            from rich.live import Live

            self.live = Live(Group(self.members, self.bytes), console=console, transient=True)
            self.m_task = self.b_task = None

        def __enter__(self) -> Bars:
            self.live.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.live.__exit__(*exc)

        def start(self, members: int, nbytes: int) -> None:
            self.m_task = self.members.add_task("members", total=members)
            self.b_task = self.bytes.add_task("weights", total=nbytes)

        def member(self, k: int, name: str) -> None:
            self.members.update(self.m_task, description=f"member {name}")

        def advance(self, nbytes: int) -> None:
            self.bytes.advance(self.b_task, nbytes)

        def done_member(self) -> None:
            self.members.advance(self.m_task)

        def resumed(self, k: int, name: str) -> None:
            console.print(f"[dim]member {name}: kept, written completely by an interrupted run[/]")

    return Bars()
