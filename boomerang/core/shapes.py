"""What a checkpoint's config says about its weights, without torch: its layers' tensor names and, for the
architectures with a saved layout (``Arch.saved``), the shape of every weight.

``boomerang.io.consistency`` compares these with a checkpoint's safetensors headers, so that a config which
contradicts its weights (a layer count, a width) is refused instead of silently dropping or inventing layers.
A test checks the shapes against transformers' own (meta-device) models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .arch import ARCHS, Arch, config_value

if TYPE_CHECKING:
    from ..hints import Config

# model types whose layers live elsewhere than an adapter says (students of another architecture)
_LAYERS = {"distilbert": "distilbert.transformer.layer"}


def layers_path(config: Config) -> str | None:
    """Where a config's model keeps its layers (``model.layers``), or None if boomerang does not know."""
    model_type = config_value(config, "model_type")
    arch = ARCHS.get(model_type)
    return arch.layers if arch is not None else _LAYERS.get(model_type)


def layer_indices(names: Iterable[str], path: str) -> set[int]:
    """The layer numbers that tensor ``names`` hold under ``path`` (with or without the base-model prefix)."""
    base, _, rest = path.partition(".")
    pattern = re.compile(rf"^(?:{re.escape(base)}\.)?{re.escape(rest or base)}\.(\d+)\.")
    found = set()
    for name in names:
        m = pattern.match(name)
        if m:
            found.add(int(m.group(1)))
    return found


def _int(config: Any, *keys: str) -> int | None:
    for key in keys:
        value = config_value(config, key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def saved_shapes(config: Config, arch: Arch) -> dict[str, tuple[int, ...]] | None:
    """Weight shapes of a canonical checkpoint of ``config``: non-layer tensors by full name, layer tensors by
    their name inside a layer (``self_attn.q_proj.weight``). None when the architecture has no formula."""
    if arch.saved is None:
        return None
    v = _int(config, "vocab_size")
    if arch.model_type == "gpt2":
        h, p = _int(config, "n_embd"), _int(config, "n_positions")
        if None in (v, h, p):
            return None
        i = _int(config, "n_inner") or 4 * h  # type: ignore[operator]
        return {
            "transformer.wte.weight": (v, h),
            "transformer.wpe.weight": (p, h),
            "transformer.ln_f.weight": (h,),
            "lm_head.weight": (v, h),
            "ln_1.weight": (h,),
            "ln_2.weight": (h,),
            "attn.c_attn.weight": (h, 3 * h),  # Conv1D: (in, out)
            "attn.c_proj.weight": (h, h),
            "mlp.c_fc.weight": (h, i),
            "mlp.c_proj.weight": (i, h),
        }  # type: ignore[dict-item]
    h, i = _int(config, "hidden_size"), _int(config, "intermediate_size")
    if None in (v, h, i):
        return None
    if arch.model_type == "gpt_neox":
        return {
            "gpt_neox.embed_in.weight": (v, h),
            "embed_out.weight": (v, h),
            "gpt_neox.final_layer_norm.weight": (h,),
            "input_layernorm.weight": (h,),
            "post_attention_layernorm.weight": (h,),
            "attention.query_key_value.weight": (3 * h, h),  # type: ignore[operator]
            "attention.dense.weight": (h, h),
            "mlp.dense_h_to_4h.weight": (i, h),
            "mlp.dense_4h_to_h.weight": (h, i),
        }  # type: ignore[dict-item]
    heads = _int(config, "num_attention_heads")
    if heads is None:
        return None
    kv = _int(config, "num_key_value_heads") or heads
    hd = _int(config, "head_dim") or h // heads  # type: ignore[operator]
    norms = (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    )
    return {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (v, h),
        "self_attn.q_proj.weight": (heads * hd, h),
        "self_attn.k_proj.weight": (kv * hd, h),
        "self_attn.v_proj.weight": (kv * hd, h),
        "self_attn.o_proj.weight": (h, heads * hd),
        "self_attn.q_norm.weight": (hd,),
        "self_attn.k_norm.weight": (hd,),
        "mlp.gate_proj.weight": (i, h),
        "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
        **{f"{n}.weight": (h,) for n in norms},
    }  # type: ignore[dict-item]


def bias_shape(weight: tuple[int, ...], model_type: str) -> tuple[int, ...]:
    """The bias beside a weight: its output size (GPT-2's Conv1D weights are stored (in, out))."""
    return (weight[-1],) if model_type == "gpt2" and len(weight) == 2 else weight[:1]
