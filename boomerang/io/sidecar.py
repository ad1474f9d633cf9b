"""Finding and writing a student's layer map on disk or on the Hub.

A student carries its ``LayerMap`` (``boomerang.core.layermap``) in the ``boomerang`` section of its config.json;
students of the reference implementation carry it in a ``student_config.json`` sidecar file beside the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.layermap import SIDECAR, LayerMap
from ..errors import BoomerangError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def read_layer_map(student: str | Path, config: Any = None, *, allow_hub: bool = True) -> LayerMap | None:
    """Find a student's layer map: the ``boomerang`` config section, else the reference sidecar file.

    ``student`` is a local directory or a Hub id; ``config`` is its (already loaded) config, if at hand.
    Returns None when neither source exists.
    """
    if config is not None:
        lm = LayerMap.from_config(config)
        if lm is not None:
            return lm
    path = Path(student)
    if path.is_dir():
        cfg_file = path / "config.json"
        if config is None and cfg_file.is_file():
            lm = LayerMap.from_config(json.loads(cfg_file.read_text()))
            if lm is not None:
                return lm
        side = path / SIDECAR
        return LayerMap.from_reference(json.loads(side.read_text())) if side.is_file() else None
    if not allow_hub:
        return None
    from .loading import hub_file

    side_path = hub_file(str(student), SIDECAR, required=False)
    return LayerMap.from_reference(json.loads(Path(side_path).read_text())) if side_path else None


def write_sidecar(directory: str | Path, layer_map: LayerMap) -> None:
    """Write the reference-format ``student_config.json`` so the published tooling can read our students."""
    Path(directory, SIDECAR).write_text(json.dumps(layer_map.to_reference(), indent=2) + "\n")


def student_layer_map(student: PreTrainedModel) -> LayerMap:
    """The layer map stored in a student's config, or a clear error."""
    lm = LayerMap.from_config(student.config)
    if lm is None:
        path = getattr(student.config, "_name_or_path", "") or getattr(student, "name_or_path", "")
        lm = read_layer_map(path, allow_hub=False) if path else None
    if lm is None:
        raise BoomerangError(
            "the student carries no layer map (no 'boomerang' section in its config.json and no "
            "student_config.json beside it); pass layer_map=LayerMap.from_kept([...]) or a preset"
        )
    return lm
