"""Checkpoints that contradict themselves: a config.json whose layer count or sizes disagree with the tensors in
its safetensors files. transformers would drop the extra layers or initialise the missing ones at random (with a
warning); every loader here refuses instead, naming both numbers.

``check_layers`` and ``check_saved_shapes`` read only the config and the headers (no torch), for the fast build;
``check_checkpoint`` also compares every tensor with a weightless model of the config (exact for any architecture
transformers builds) and is what ``load_model``, the stream builder and ``info`` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.arch import ARCHS, n_layers
from ..core.params import meta_model
from ..core.shapes import bias_shape, layer_indices, layers_path, saved_shapes
from ..errors import BoomerangError
from .checkpoints import CONFIG, is_local_safetensors, read_json
from .safetensors_files import TensorRef, read_tensors

# Lazy imports: the fast build checks checkpoints without torch; transformers' weight-renaming tables are
# imported only where a check needs them.
if TYPE_CHECKING:
    from ..hints import Config, Model

FIX = (
    "the checkpoint contradicts itself: restore the config.json that came with these weights (or the weights "
    "that came with this config.json) from the checkpoint's source, or save it again with "
    "model.save_pretrained(DIR)"
)


def _files(entries: Mapping[str, TensorRef], names: Any = None) -> str:
    files = sorted(
        {ref.file.name for k, ref in entries.items() if ref.file and (names is None or k in names)}
    )
    return ", ".join(files) or "its weights"


def check_layers(path: Path, config: Config, entries: Mapping[str, TensorRef]) -> None:
    """Refuse weights holding more or fewer layers than ``config`` says (for architectures boomerang knows)."""
    where = layers_path(config)
    if where is None:
        return
    held = layer_indices(entries, where)
    n = n_layers(config)
    if held == set(range(n)):
        return
    count = max(held) + 1 if held else 0
    if held == set(range(count)):
        hold = f"{count} (layers 0..{count - 1})" if count else "none"
    else:
        hold = f"layers {sorted(held)}"
    raise BoomerangError(
        f"{path}: its config.json says {n} layers, but its weights ({_files(entries)}) hold {hold}; {FIX}"
    )


def _mismatch(path: Path, name: str, ref: TensorRef, shape: tuple[int, ...]) -> BoomerangError:
    file = ref.file.name if ref.file else "its weights"
    return BoomerangError(
        f"{path}: tensor {name} has shape {list(ref.shape)} in {file}, but its config.json implies "
        f"{list(shape)}; {FIX}"
    )


def check_saved_shapes(path: Path, config: Mapping[str, object], entries: Mapping[str, TensorRef]) -> None:
    """Without torch: every tensor of a canonical checkpoint has the shape its config.json implies."""
    arch = ARCHS.get(str(config.get("model_type")))
    shapes = saved_shapes(config, arch) if arch is not None else None
    if arch is None or shapes is None:
        return
    prefix = arch.layers + "."
    for name, ref in entries.items():
        inner = name[len(prefix) :].partition(".")[2] if name.startswith(prefix) else name
        module, _, leaf = inner.rpartition(".")
        weight = shapes.get(f"{module}.weight")
        if weight is None or ref.make is not None:
            continue
        want = weight if leaf == "weight" else bias_shape(weight, arch.model_type) if leaf == "bias" else None
        if want is not None and ref.shape != want:
            raise _mismatch(path, name, ref, want)


def model_names(entries: Mapping[str, TensorRef], meta: Model) -> dict[str, tuple[str, bool]]:
    """For each checkpoint key: the model's own name for it and whether loading converts the tensor, renamed
    exactly as ``from_pretrained`` renames keys (legacy names, missing base-model prefix, renamed heads)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(meta)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    expected = meta.state_dict()
    prefix = meta.base_model_prefix
    out: dict[str, tuple[str, bool]] = {}
    for key in entries:
        name, pattern = rename_source_key(key, renamings, converters, prefix, expected)
        if name not in expected and key in expected:
            name, pattern = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=expected)
        out[key] = (name, pattern is not None)
    return out


def check_checkpoint(
    path: Path, config: Config, entries: Mapping[str, TensorRef], meta: Model | None = None
) -> None:
    """Refuse a checkpoint whose config contradicts its weights: the layer count, then every tensor's shape
    against a weightless model of the config (``meta``, built if not given)."""
    check_layers(path, config, entries)
    if meta is None:
        try:
            meta = meta_model(config)
        except Exception:  # a config transformers cannot build a model of: its loader reports that
            return
    expected = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    for key, (name, converted) in model_names(entries, meta).items():
        want = expected.get(name)
        ref = entries[key]
        if want is not None and not converted and ref.shape != want:
            raise _mismatch(path, key, ref, want)


def check_files(path: Path) -> None:
    """Without torch, before anything loads: a local checkpoint directory's config.json against its weights."""
    if not is_local_safetensors(path):
        return
    config = read_json(path / CONFIG)
    entries, _ = read_tensors(path)
    check_layers(path, config, entries)
    check_saved_shapes(path, config, entries)
