"""Helpers shared by the command modules: consoles (from ``boomerang.ui``), list parsing, layer-map options,
progress bars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..core.layermap import LayerMap
from ..errors import BoomerangError
from ..io.sidecar import read_layer_map
from ..ui import console, err_console  # noqa: F401 (the command modules import both consoles from here)

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


def parse_ints(text: str | None, what: str = "list") -> list[int] | None:
    """``"0,2,4"`` or ``"0-3,7"`` -> ``[0, 2, 4]`` / ``[0, 1, 2, 3, 7]``."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise BoomerangError(
                f"cannot read {what} {text!r}: use comma-separated integers such as 0,2,4 or 0-3"
            ) from None
    return out


def resolve_layer_map(
    student: str | Path | None,
    student_config: Any,
    *,
    layers: str | None = None,
    preset: str | None = None,
    n_teacher: int | None = None,
) -> LayerMap:
    """The layer map from --layers / --layer-map, else from the student's config or sidecar file."""
    if layers and preset:
        raise BoomerangError("give either --layers or --layer-map, not both")
    if preset:
        return LayerMap.preset(preset)
    if layers:
        return LayerMap.from_kept(parse_ints(layers, "--layers") or [], n_teacher)
    lm = (
        read_layer_map(student, student_config)
        if student is not None
        else LayerMap.from_config(student_config)
    )
    if lm is None:
        raise BoomerangError(
            f"cannot find the layer map of student {student}: it has no 'boomerang' config section and no "
            "student_config.json. Pass --layers 0,2,... (the teacher layers it was initialised from) or "
            "--layer-map distilbert|distilgpt2"
        )
    return lm


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

    return Bars()
