"""Loading models and tokenizers from local directories, Hub ids and GGUF files.

Weights load from safetensors only (GGUF is parsed by transformers, never unpickled), and remote code never runs
unless ``trust_remote_code=True`` is passed explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from ..core.arch import model_class
from ..errors import BoomerangError
from .checkpoints import DTYPE_NAMES, common_dtype_name, copy_tokenizer, dtype_name, expand_alias
from .offline import (  # noqa: F401 (re-exported: the alias and cache are torch-free)
    DEFAULT_CACHE,
    OFFLINE_ALIAS,
    load_gguf,
    offline_dir,
    strip_quantization,
)

DTYPES = {alias: getattr(torch, name) for alias, name in DTYPE_NAMES.items()}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` -> ``torch.bfloat16``; None or "auto" keeps the checkpoint's dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype)
    return None if name is None else getattr(torch, name)


def _hub_error(spec: str, err: Exception) -> BoomerangError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return BoomerangError(
        f"could not load {spec!r}: it is not a local directory or .gguf file, and fetching it from the Hugging Face "
        f"Hub failed ({reason}). If you are offline, download it on a connected machine and pass the local "
        "directory, or set HF_HUB_OFFLINE=1 to use only the local Hub cache."
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith(".gguf") or os.sep == "\\"


def resolve(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``(location, gguf_file)`` for a model spec: a directory, a ``.gguf`` file, ``smollm2-offline`` or a Hub id."""
    spec = expand_alias(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BoomerangError(
                f"{spec} is a directory but has no config.json; is it a Hugging Face checkpoint?"
            )
        has_st = any(path.glob("*.safetensors"))
        has_bin = any(path.glob("*.bin")) or any(path.glob("*.pt"))
        if has_bin and not has_st:
            raise BoomerangError(
                f"{spec} holds only pickle weights (*.bin); boomerang loads safetensors only. Convert it with "
                "`model.save_pretrained(dir)` in a trusted environment first."
            )
        return str(path), None
    if path.exists():
        raise BoomerangError(
            f"{spec} is a file but not a .gguf file; pass a checkpoint directory, a .gguf file or a Hub id"
        )
    if _looks_like_path(spec):
        raise BoomerangError(f"{spec} does not exist")
    return spec, None


def load_config(spec: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    where, gguf = resolve(spec)
    try:
        cfg = AutoConfig.from_pretrained(where, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if Path(where).is_dir():
            raise BoomerangError(f"cannot read the config of {spec}: {e}") from None
        raise _hub_error(str(spec), e) from None
    strip_quantization(cfg)
    return cfg


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM (or, for BERT-family configs, a masked LM) in eval mode."""
    where, gguf = resolve(spec)
    torch_dtype = parse_dtype(dtype)
    config = load_config(spec, trust_remote_code=trust_remote_code)
    auto = model_class(config)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        if gguf:
            model = load_gguf(where, gguf, auto, kwargs)
        else:
            model = auto.from_pretrained(where, use_safetensors=True, **kwargs)
    except BoomerangError:
        raise
    except Exception as e:  # corrupt files, missing shards, offline Hub
        if Path(where).is_dir():
            raise BoomerangError(f"cannot load the model in {spec}: {e}") from None
        raise _hub_error(str(spec), e) from None
    model.eval()
    return model


def stored_dtype(config: Any) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in, from its config (fp32 when the config names none)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return parse_dtype(str(value).removeprefix("torch.")) or torch.float32


def pair_dtype(
    teacher_config: Any, student_config: Any, dtype: str | torch.dtype | None = None
) -> torch.dtype | None:
    """The one dtype to load a teacher and its student in.

    An explicit ``dtype`` wins. With None or ``"auto"`` each keeps its stored dtype when the two agree (None), and
    otherwise both take the wider one (fp32 over bf16/fp16; bf16 and fp16 meet at fp32), so that e.g. a student
    distilled and saved in bf16 works beside its fp32 teacher without losing the teacher's precision.
    """
    explicit = parse_dtype(dtype)
    if explicit is not None:
        return explicit
    a, b = dtype_name(stored_dtype(teacher_config)), dtype_name(stored_dtype(student_config))
    return None if a == b else getattr(torch, common_dtype_name(a or "float32", b or "float32"))


def load_pair(
    teacher: str | os.PathLike,
    student: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Teacher and student, loaded in one dtype (``pair_dtype``)."""
    common = pair_dtype(
        load_config(teacher, trust_remote_code=trust_remote_code),
        load_config(student, trust_remote_code=trust_remote_code),
        dtype,
    )
    return (
        load_model(teacher, dtype=common, trust_remote_code=trust_remote_code),
        load_model(student, dtype=common, trust_remote_code=trust_remote_code),
    )


def load_tokenizer(spec: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    where, gguf = resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(where, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if Path(where).is_dir():
            raise BoomerangError(f"cannot load a tokenizer from {spec}: {e}") from None
        raise _hub_error(str(spec), e) from None


def save_tokenizer(
    directory: str | os.PathLike,
    source: str | os.PathLike | None,
    tokenizer: Any = None,
    *,
    trust_remote_code: bool = False,
) -> None:
    """Give ``directory`` the tokenizer of ``source`` (a model spec).

    A local checkpoint directory's tokenizer files are copied byte for byte, so every build path writes the same
    files; otherwise (a Hub id, a .gguf file, or no source) ``tokenizer``, or the one loaded from ``source``, is
    saved with ``save_pretrained``.
    """
    if source is not None:
        where, gguf = resolve(source)
        if gguf is None and Path(where).is_dir() and copy_tokenizer(where, directory):
            return
    if tokenizer is None and source is not None:
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def hub_file(repo: str, filename: str, *, required: bool = True) -> str | None:
    """Download one file from a Hub repo (None if it does not exist and ``required`` is false)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo_id=repo, filename=filename)
    except (EntryNotFoundError, RepositoryNotFoundError):
        if required:
            raise BoomerangError(f"{repo} on the Hugging Face Hub has no file {filename}") from None
        return None
    except Exception as e:  # offline, DNS failure, HTTP errors
        raise _hub_error(repo, e) from None


# ---- GGUF files (the offline teacher is boomerang.io.offline) ----------------------------------------------


def convert_gguf(
    gguf: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
) -> Path:
    """Write a GGUF model as a standard safetensors checkpoint with its tokenizer (atomically)."""
    from .atomic import atomic_dir

    with atomic_dir(out, force=force) as tmp:
        model = load_model(gguf, dtype=dtype)
        tok = load_tokenizer(gguf)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)
