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

    from ..hints import Config


def read_layer_map(
    student: str | Path, config: Config | None = None, *, allow_hub: bool = True
) -> LayerMap | None:
    """Find a student's layer map: the ``boomerang`` config section, else the reference sidecar file.

    ``student`` is a local directory or a Hub id; ``config`` is its (already loaded) config, if at hand.
    Returns None when neither source exists; a local student whose two sources disagree is refused.
    """
    path = Path(student)
    layer_map = config_layer_map(config, f"the config of {student}") if config is not None else None
    if path.is_dir():
        cfg_file = path / "config.json"
        if layer_map is None and cfg_file.is_file():
            layer_map = config_layer_map(_read_json(cfg_file, "a config.json"), str(cfg_file))
        side = path / SIDECAR
        other = sidecar_layer_map(side) if side.is_file() else None
        if layer_map is not None and other is not None and layer_map != other:
            raise BoomerangError(
                f"{student} carries two layer maps that disagree: the 'boomerang' section of its config.json keeps "
                f"teacher layers {list(layer_map.kept)} of {layer_map.n_teacher}, but {SIDECAR} keeps {list(other.kept)} of "
                f"{other.n_teacher}. Delete (or correct) the wrong one; boomerang writes both from one map"
            )
        return layer_map or other
    if layer_map is not None or not allow_hub:
        return layer_map
    from .loading import hub_file

    side_path = hub_file(str(student), SIDECAR, required=False)
    return sidecar_layer_map(Path(side_path)) if side_path else None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise BoomerangError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BoomerangError(
            f"{path} is not valid JSON ({e}); it should be {what}. Fix the file, or restore it from the checkpoint's "
            "source"
        ) from None


def sidecar_layer_map(path: Path) -> LayerMap:
    """The layer map in a reference ``student_config.json``, or a clear error."""
    what = f'a {SIDECAR} such as {{"copied_teacher_layers": [0, 2, 4], "pruned_teacher_layers": [1, 3]}}'
    data = _read_json(path, what)
    if not isinstance(data, dict):
        raise BoomerangError(f"{path} holds a JSON {type(data).__name__}; it should be {what}")
    try:
        return LayerMap.from_reference(data)
    except BoomerangError as e:
        raise BoomerangError(f"{path}: {e}. It should be {what}") from None
    except (OverflowError, TypeError, ValueError):  # e.g. Infinity, or lists of lists
        raise BoomerangError(
            f"{path} holds layer numbers that are not integers; it should be {what}"
        ) from None


def config_layer_map(config: Config, where: str) -> LayerMap | None:
    """The student layer map in a config's ``boomerang`` section (None if it has none), or a clear error."""
    try:
        return LayerMap.from_config(config)
    except BoomerangError as e:
        raise BoomerangError(f"{where}: its 'boomerang' section has an invalid layer map ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise BoomerangError(
            f'{where}: the \'boomerang\' section\'s layer_map must be {{"n_teacher": N, "kept": [0, ...]}}; '
            "fix it, or remove the section and pass --layers"
        ) from None


def write_sidecar(directory: str | Path, layer_map: LayerMap) -> None:
    """Write the reference-format ``student_config.json`` so the published tooling can read our students."""
    Path(directory, SIDECAR).write_text(json.dumps(layer_map.to_reference(), indent=2) + "\n")


def student_layer_map(student: PreTrainedModel) -> LayerMap:
    """The layer map stored in a student's config, or a clear error."""
    layer_map = config_layer_map(student.config, "the student's config")
    if layer_map is None:
        path = getattr(student.config, "_name_or_path", "") or getattr(student, "name_or_path", "")
        layer_map = read_layer_map(path, allow_hub=False) if path else None
    if layer_map is None:
        raise BoomerangError(
            "the student carries no layer map (no 'boomerang' section in its config.json and no "
            "student_config.json beside it); pass layer_map=LayerMap.from_kept([...]) or a preset"
        )
    return layer_map
