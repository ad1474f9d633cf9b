"""Writing a checkpoint as one GGUF file that llama.cpp loads as it is.

``export_gguf(model_dir, out, type="f16")`` reads a local safetensors checkpoint (a family member, a student, a
teacher: any checkpoint directory of a supported architecture) and writes one ``.gguf`` file with

* the architecture's metadata under llama.cpp's keys, with the checkpoint's own layer count, and for Gemma 3 the
  member's own sliding/full pattern (``gemma3.attention.sliding_window_pattern``, one flag per layer);
* the tokenizer (``gguf_vocab``: vocabulary, merges, special tokens, chat template);
* the tensors under llama.cpp's names. Names come from ``gguf.TensorNameMap`` (llama.cpp's own table, the one
  transformers reads GGUF files with, so ``boomerang convert`` maps them back). Layout facts follow llama.cpp's
  converter: the llama graph wants Q/K rows in its rotary layout (``_permute``), Gemma's norms are stored as
  ``1 + w``, Llama 3 rope scaling is a ``rope_freqs`` tensor, a tied head is not stored.

Tensors are written one at a time, read from the safetensors files (no torch), so memory stays about the largest
tensor. ``type`` is ``f32``, ``f16`` (default), ``bf16`` or ``q8_0``; as llama.cpp's converter does, 1-D tensors
(norms, biases) stay f32, and with ``q8_0`` a matrix whose rows do not split into 32-value blocks is written f16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F
from gguf.quants import quantize

from ..errors import BoomerangError
from .atomic import atomic_file, check_writable
from .checkpoints import CONFIG, is_local_safetensors, read_json
from .gguf_vocab import add_vocab, check_vocab
from .safetensors_files import TensorRef, read_tensors

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_GGUF_TYPE = "f16"
GGUF_SUFFIX = ".gguf"
GGUF_DIR = "gguf"  # a family's GGUF files: FAMILY/gguf/K05-22layers.f16.gguf
_BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 + an f16 scale


@dataclass(frozen=True)
class _Arch:
    """How llama.cpp runs one transformers ``model_type``."""

    gguf: str  # gguf.MODEL_ARCH member
    permute_qk: bool = False  # the llama graph's rotary layout of Q/K rows
    norm_shift: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp stores 1 + w
    swa: bool = False  # the graph runs per-layer sliding-window attention
    rope_freqs: bool = False  # reads Llama 3 rope scaling as a tensor
    act: tuple[str, ...] = ("silu",)  # the activation the graph computes
    act_field: str = "hidden_act"
    full_heads: bool = False  # the graph assumes head_dim * heads == hidden_size


GGUF_ARCHS: dict[str, _Arch] = {
    "llama": _Arch("LLAMA", permute_qk=True, rope_freqs=True),
    # llama.cpp's converter writes Mistral as llama
    "mistral": _Arch("LLAMA", permute_qk=True, rope_freqs=True),
    "qwen2": _Arch("QWEN2", full_heads=True),
    "qwen3": _Arch("QWEN3"),
    "gemma3_text": _Arch(
        "GEMMA3", norm_shift=1.0, swa=True, act=("gelu_pytorch_tanh",), act_field="hidden_activation"
    ),
}


def check_type(type: str) -> str:
    """A GGUF weight type name, or a clear error."""
    if type not in GGUF_TYPES:
        raise BoomerangError(f"unknown GGUF type {type!r}; use one of: {', '.join(GGUF_TYPES)}")
    return type


def gguf_nbytes(n_values: int, type: str) -> int:
    """About how many bytes ``n_values`` weights take in a GGUF file of ``type`` (for free-space checks)."""
    return math.ceil(n_values * _BYTES_PER_VALUE[check_type(type)])


def gguf_name(member: str, type: str) -> str:
    """The file name of a member's GGUF file: ``K05-22layers.f16.gguf``."""
    return f"{member}.{check_type(type)}{GGUF_SUFFIX}"


# ---- what a checkpoint needs: checked before anything is read or written ------------------------------------


def _refuse(model_type: str) -> BoomerangError:
    supported = ", ".join(sorted(GGUF_ARCHS))
    if model_type in ("gpt2", "gpt_neox"):
        why = "llama.cpp runs it, but boomerang's GGUF writer does not describe it yet"
    elif model_type in ("bert", "distilbert"):
        why = "it is a masked-LM encoder, not a text generator llama.cpp runs"
    else:
        why = "boomerang's GGUF writer does not describe it"
    return BoomerangError(
        f"cannot write a {model_type} model as GGUF: {why}. GGUF export supports {supported}; export this family "
        "as safetensors checkpoints (--format safetensors), or convert them with llama.cpp's convert_hf_to_gguf.py"
    )


def _rope(config: dict[str, Any], kind: str = "full_attention") -> dict[str, Any]:
    """The rope parameters of one attention kind (transformers 5 ``rope_parameters``, or older fields)."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(kind), dict):
        return params[kind]
    if isinstance(params, dict) and kind == "full_attention":
        return params
    if kind != "full_attention":
        return {}
    scaling = dict(config.get("rope_scaling") or {})
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    return {"rope_theta": config.get("rope_theta", 10000.0), **scaling}


def _sliding(config: dict[str, Any]) -> list[bool]:
    """Per layer, whether it attends through a sliding window (transformers' ``layer_types``, or Mistral's
    ``sliding_window`` on every layer)."""
    n = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == n:
        return [t == "sliding_attention" for t in types]
    return [config.get("sliding_window") is not None] * n


def check_config(config: Mapping[str, object], where: str = "the model") -> list[str]:
    """Fail, naming the reason, unless llama.cpp computes what transformers computes for this config; returns
    notes to show (e.g. a sliding window the llama.cpp graph ignores)."""
    model_type = config.get("model_type", "?")
    arch = GGUF_ARCHS.get(model_type)
    if arch is None:
        raise _refuse(model_type)
    notes: list[str] = []
    act = config.get(arch.act_field)
    if act not in arch.act:
        raise BoomerangError(
            f"cannot write {where} as GGUF: its activation {act!r} is not the {'/'.join(arch.act)} llama.cpp's "
            f"{arch.gguf.lower()} graph computes"
        )
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    head_dim = config.get("head_dim") or hidden // heads
    if arch.full_heads and head_dim * heads != hidden:
        raise BoomerangError(
            f"cannot write {where} as GGUF: head_dim {head_dim} x {heads} heads != hidden size {hidden}, which "
            f"llama.cpp's {arch.gguf.lower()} graph assumes"
        )
    rope = _rope(config)
    kind = rope.get("rope_type", "default")
    allowed = ("default", "linear", "yarn", *(("llama3",) if arch.rope_freqs else ()))
    if kind not in allowed:
        raise BoomerangError(
            f"cannot write {where} as GGUF: rope scaling {kind!r} is not one boomerang writes for llama.cpp "
            f"({', '.join(allowed)})"
        )
    if arch.swa:
        local = _rope(config, "sliding_attention")
        if local.get("rope_type", "default") != "default":
            raise BoomerangError(
                f"cannot write {where} as GGUF: its sliding-window layers scale rope ({local['rope_type']}), "
                "which llama.cpp does not"
            )
        if config.get("attn_logit_softcapping") is not None:
            raise BoomerangError(
                f"cannot write {where} as GGUF: llama.cpp's Gemma 3 has no attention softcapping"
            )
        scalar, n = config.get("query_pre_attn_scalar"), int(config["num_hidden_layers"])
        # llama.cpp scales queries by 1/sqrt(head_dim), except for Gemma 3 27B (62 layers): 1/sqrt(hidden/heads)
        expected = hidden // heads if n == 62 else head_dim
        if scalar is not None and scalar != expected:
            raise BoomerangError(
                f"cannot write {where} as GGUF: llama.cpp scales a {n}-layer Gemma 3's queries by "
                f"1/sqrt({expected}), but this model uses query_pre_attn_scalar={scalar}"
            )
    elif any(_sliding(config)):
        window = config.get("sliding_window")
        notes.append(
            f"llama.cpp's {arch.gguf.lower()} graph has no sliding-window attention: the GGUF agrees with "
            f"transformers on contexts up to the window ({window} tokens); its context length is set to that"
        )
    return notes


def check_export(
    model: str | os.PathLike | dict[str, object], tokenizer_dir: str | os.PathLike | None = None
) -> list[str]:
    """Everything ``export_gguf`` refuses, checked from a config (a dict or a checkpoint directory) and the
    directory holding the tokenizer; returns the notes ``check_config`` gives."""
    if isinstance(model, dict):
        config = model
    else:
        tokenizer_dir = tokenizer_dir or model
        config = read_json(Path(model) / CONFIG)
    notes = check_config(config)
    if tokenizer_dir is not None:
        check_vocab(tokenizer_dir, int(config["vocab_size"]))
    return notes


# ---- tensors -----------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    """One output tensor: its GGUF name, where it comes from, its logical shape and its GGML type."""

    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    ref: TensorRef | None = None
    source: str = ""
    data: Any = None  # a tensor boomerang makes (rope_freqs)
    nbytes: int = 0


_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _read(ref: TensorRef) -> np.ndarray:
    """A safetensors tensor as float32, read from its file (no torch)."""
    assert ref.file is not None
    if ref.dtype == "BF16":
        raw = np.fromfile(ref.file, dtype="<u2", count=ref.numel, offset=ref.start)
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(ref.shape)
    if ref.dtype not in _NUMPY:
        raise BoomerangError(
            f"cannot write tensor {ref.key} ({ref.dtype}) as GGUF: only float weights are written"
        )
    return (
        np.fromfile(
            ref.file, dtype=np.dtype(_NUMPY[ref.dtype]).newbyteorder("<"), count=ref.numel, offset=ref.start
        )
        .astype(np.float32)
        .reshape(ref.shape)
    )


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows from transformers' rotary layout (halves) into llama.cpp's (interleaved pairs), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_factors(config: dict[str, Any], rope: dict[str, Any]) -> np.ndarray:
    """Llama 3 rope scaling as per-frequency divisors (llama.cpp's ``rope_freqs``): 1 for short wavelengths,
    ``factor`` for long ones, a smooth blend between (the same frequencies transformers' llama3 rope computes)."""
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = rope.get("rope_theta", 10000.0)
    factor, low, high = (
        rope.get("factor", 8.0),
        rope.get("low_freq_factor", 1.0),
        rope.get("high_freq_factor", 4.0),
    )
    old = rope.get("original_max_position_embeddings", 8192)
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / inv_freq
    smooth = (old / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, blended))
    return out.astype(np.float32)


def _qtype(type: str, shape: tuple[int, ...]) -> Any:
    if len(shape) <= 1:
        return Q.F32
    if type == "q8_0":
        return Q.Q8_0 if shape[-1] % 32 == 0 else Q.F16
    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}[type]


def _encode(data: np.ndarray, qtype: Any) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


@dataclass
class _Plan:
    """Everything an export writes, known before any tensor is read."""

    config: dict[str, Any]
    arch: _Arch
    tensors: list[_Tensor]
    notes: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors if t.ref is not None)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data the file holds."""
        return sum(t.nbytes for t in self.tensors)


def plan_export(model_dir: str | os.PathLike, type: str = DEFAULT_GGUF_TYPE) -> _Plan:
    """Check a checkpoint and list the tensors its GGUF file will hold (reads configs and headers only)."""
    check_type(type)
    model_dir = Path(model_dir)
    if not is_local_safetensors(model_dir):
        raise BoomerangError(
            f"{model_dir} is not a local checkpoint directory with safetensors weights (config.json and "
            "model.safetensors); GGUF files are written from one"
        )
    config = read_json(model_dir / CONFIG)
    notes = check_export(config, model_dir)
    arch = GGUF_ARCHS[config["model_type"]]
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf], n_layers)
    refs, _ = read_tensors(model_dir)
    tensors = []
    for key in sorted(refs, key=_natural):
        if key.endswith("rotary_emb.inv_freq"):  # a buffer older checkpoints stored; llama.cpp computes it
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BoomerangError(
                f"cannot write {model_dir} as GGUF: its tensor {key} has no name in llama.cpp's "
                f"{arch.gguf.lower()} architecture"
            )
        shape = refs[key].shape
        tensors.append(_Tensor(name=name, shape=shape, qtype=_qtype(type, shape), ref=refs[key], source=key))
    if not config.get("tie_word_embeddings", False) and not any(
        t.source == "lm_head.weight" for t in tensors
    ):
        raise BoomerangError(
            f"{model_dir} is not tied but stores no lm_head.weight; the checkpoint is damaged"
        )
    rope = _rope(config)
    if rope.get("rope_type") == "llama3":
        factors = _llama3_factors(config, rope)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        tensors.append(
            _Tensor(name=name, shape=factors.shape, qtype=_qtype(type, factors.shape), data=factors)
        )
    for t in tensors:
        t.nbytes = math.prod(gguf.quant_shape_to_byte_shape(t.shape, t.qtype))
    return _Plan(config=config, arch=arch, tensors=tensors, notes=notes)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _values(plan: _Plan, t: _Tensor) -> np.ndarray:
    """One tensor's values as llama.cpp wants them (float32, before encoding)."""
    if t.data is not None:
        return t.data
    assert t.ref is not None
    data = _read(t.ref)
    cfg, arch = plan.config, plan.arch
    if arch.permute_qk and t.source.endswith(("q_proj.weight", "q_proj.bias")):
        data = _permute(data, int(cfg["num_attention_heads"]))
    elif arch.permute_qk and t.source.endswith(("k_proj.weight", "k_proj.bias")):
        data = _permute(data, int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    if arch.norm_shift and t.source.endswith("norm.weight"):
        data = data + np.float32(arch.norm_shift)
    return data


# ---- metadata ----------------------------------------------------------------------------------------------


def _add_metadata(w: Any, plan: _Plan, name: str, type: str, license: str | None) -> None:
    cfg, arch = plan.config, plan.arch
    heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    head_dim = cfg.get("head_dim")
    sliding = _sliding(cfg)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_size_label(gguf.size_label(plan.n_params, 0, 0, 0))
    if license:
        w.add_license(license)
    context = int(cfg.get("max_position_embeddings") or 2048)
    if any(sliding) and not arch.swa and cfg.get("sliding_window"):
        context = min(context, int(cfg["sliding_window"]))
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(cfg.get("num_key_value_heads") or heads))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    if head_dim:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
    if arch.gguf == "LLAMA":
        w.add_vocab_size(int(cfg["vocab_size"]))
        w.add_rope_dimension_count(int(head_dim or hidden // heads))
    rope = _rope(cfg)
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        for key, add in (
            ("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
            ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
            ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", w.add_rope_scaling_yarn_beta_slow),
        ):
            if rope.get(key) is not None:
                add(float(rope[key]))
    if arch.swa:
        if any(sliding):
            w.add_sliding_window(int(cfg["sliding_window"]))
            w.add_sliding_window_pattern(sliding)  # this member's own layers, not the teacher's period
            w.add_rope_freq_base_swa(float(_rope(cfg, "sliding_attention").get("rope_theta", 10000.0)))
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    w.add_file_type(_file_type(type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _file_type(type: str) -> Any:
    """``general.file_type``: the type most tensors have."""
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[type]


# ---- writing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """What ``export_gguf`` wrote."""

    path: Path
    type: str
    n_layers: int
    nbytes: int
    notes: tuple[str, ...] = ()


def export_gguf(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    type: str = DEFAULT_GGUF_TYPE,
    name: str | None = None,
    license: str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Exported:
    """Write the checkpoint in ``model_dir`` as one GGUF file ``out`` (atomically; an existing file is replaced only
    with ``force``). ``type``: f32, f16, bf16 or q8_0. ``name`` is ``general.name`` (default: the directory's
    name). ``progress(nbytes)`` is called after each tensor."""
    check_writable(out, force=force, file=True)
    plan = plan_export(model_dir, type)
    with atomic_file(out, force=force) as tmp:
        write_plan(
            plan,
            model_dir,
            tmp,
            type=type,
            name=name or Path(model_dir).resolve().name,
            license=license,
            progress=progress,
        )
    return Exported(
        path=Path(out),
        type=type,
        n_layers=int(plan.config["num_hidden_layers"]),
        nbytes=Path(out).stat().st_size,
        notes=tuple(plan.notes),
    )


def write_plan(
    plan: _Plan,
    model_dir: str | os.PathLike,
    path: Path,
    *,
    type: str,
    name: str,
    license: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write a planned export into ``path`` (not atomically: ``export_gguf`` wraps this)."""
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[plan.arch.gguf]])
    try:
        _add_metadata(w, plan, name, type, license)
        add_vocab(w, model_dir, int(plan.config["vocab_size"]))
        for t in plan.tensors:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in plan.tensors:
            data = _encode(_values(plan, t), t.qtype)
            w.write_tensor_data(data)
            if progress is not None:
                progress(t.nbytes)
    finally:
        w.close()
