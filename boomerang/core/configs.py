"""Configs of models whose depth changed: per-layer fields subset, tying and provenance recorded.

Configs are transformers config objects or plain ``config.json`` dicts; a dict is derived into a dict, edited
exactly as the config object would be, so the torch-free fast build writes the same config.json.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from .arch import FOREIGN_STUDENTS, Arch, config_value, get_arch, n_layers
from .encoders import check_distilbert_student
from .layermap import CONFIG_KEY

if TYPE_CHECKING:
    from ..hints import Config

# Keys never carried into a derived config.
_DROP = ("quantization_config", "sliding_window_pattern", "_name_or_path", "architectures_map")


def max_positions(config: Config) -> int | None:
    """The longest sequence a model's positions allow (``max_position_embeddings`` or ``n_positions``), if set."""
    for field in ("max_position_embeddings", "n_positions"):
        value = config_value(config, field)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_compatible(teacher_cfg: Config, student_cfg: Config) -> Arch:
    """Raise a clear error unless the student's layers can stand in for the teacher's; return the adapter."""
    arch = get_arch(teacher_cfg)
    t_type, s_type = config_value(teacher_cfg, "model_type"), config_value(student_cfg, "model_type")
    if (t_type, s_type) in FOREIGN_STUDENTS:
        check_distilbert_student(teacher_cfg, student_cfg)
        return arch
    if t_type != s_type:
        raise BoomerangError(
            f"teacher and student have different architectures ({t_type} vs {s_type}); patching needs the same "
            "architecture (or a DistilBERT student of a BERT teacher)"
        )
    get_arch(student_cfg)
    bad = []
    for field in arch.structural:
        a, b = config_value(teacher_cfg, field), config_value(student_cfg, field)
        if a != b:
            bad.append(f"{field}: teacher {a!r} vs student {b!r}")
    if bad:
        raise BoomerangError(
            "the student does not match the teacher, so their layers are not interchangeable: "
            + "; ".join(bad)
        )
    return arch


def _layers_key(d: dict[str, Any]) -> str:
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        if key in d:
            return key
    raise BoomerangError("config has no layer-count field")


def derive_config(
    base: Config,
    configs: Mapping[str, Config],
    sources: Sequence[tuple[str, int]],
    *,
    tie: bool,
    section: Mapping[str, object] | None,
) -> Any:
    """A config of ``base``'s class with the layers ``sources`` (pairs of model name and layer index).

    Per-layer list fields (``layer_types``) take each layer's value from the config of the model it comes from;
    ``max_window_layers`` is recomputed; ``tie_word_embeddings`` is set to ``tie``; ``section`` goes under the
    ``boomerang`` key (None removes it). A ``config.json`` dict gives a dict.
    """
    arch = get_arch(base)
    plain = isinstance(base, Mapping)
    d = copy.deepcopy(dict(base)) if plain else base.to_dict()
    for key in _DROP:
        d.pop(key, None)
    d[_layers_key(d)] = len(sources)
    for field in arch.layer_fields:
        if isinstance(d.get(field), list):
            values = []
            for who, idx in sources:
                src = config_value(configs[who], field)
                if not isinstance(src, list) or len(src) != n_layers(configs[who]):
                    raise BoomerangError(
                        f"the {who}'s config has no per-layer {field!r} list of the right length"
                    )
                values.append(src[idx])
            d[field] = values
    window = arch.window_layers_field
    if window and d.get(window) is not None:
        d[window] = sum(1 for who, idx in sources if idx < config_value(configs[who], window))
    if "tie_word_embeddings" in d or tie is not None:
        d["tie_word_embeddings"] = bool(tie)
    if section is None:
        d.pop(CONFIG_KEY, None)
    else:
        d[CONFIG_KEY] = section
    if plain:
        return d
    cfg = type(base).from_dict(d)
    impl = getattr(base, "_attn_implementation", None)
    if impl is not None:
        cfg._attn_implementation = impl
    return cfg


def teacher_config_like(student_config: Config, n_teacher: int) -> Config:
    """A teacher config guessed from a student's: the same layers, ``n_teacher`` of them (per-layer fields
    dropped). For parameter counts when the teacher itself is not at hand."""
    d = student_config.to_dict()
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        if key in d:
            d[key] = n_teacher
    for field in get_arch(student_config).layer_fields:
        d.pop(field, None)
    d.pop("boomerang", None)
    return type(student_config).from_dict(d)
