"""Loading models and tokenizers from local directories, Hub ids and GGUF files.

Weights load from safetensors only (GGUF is parsed by transformers, never unpickled), and remote code never runs
unless ``trust_remote_code=True`` is passed explicitly.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from ..core.arch import model_class
from ..errors import BoomerangError
from .atomic import atomic_dir
from .checkpoints import (
    DTYPE_NAMES,
    common_dtype_name,
    copy_tokenizer,
    dtype_name,
    expand_alias,
    is_model_spec,
    read_json,
    tokenizer_files,
)
from .consistency import check_checkpoint
from .offline import (  # noqa: F401 (re-exported: the alias and cache are torch-free)
    DEFAULT_CACHE,
    OFFLINE_ALIAS,
    load_gguf,
    offline_dir,
    strip_quantization,
)
from .safetensors_files import REPAIR_HINT, read_tensors
from .snapshot import snapshot_of

if TYPE_CHECKING:
    from ..hints import Config, ModelSpec, Tokenizer

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


_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_FILE_SUFFIXES = (".gguf", ".json", ".safetensors", ".bin", ".pt", ".yaml", ".yml", ".txt", ".jsonl")


def _looks_like_path(spec: str) -> bool:
    """A spec that can only be meant as a local path: it starts like one, cannot be a Hub id, names a file, or its
    first component is a local directory (``runs/studnet`` when ``runs/`` exists)."""
    return (
        spec.startswith((".", "/", "~"))
        or os.sep == "\\"
        or not _HUB_ID.match(spec)
        or spec.endswith(_FILE_SUFFIXES)
        or ("/" in spec and Path(spec.split("/", 1)[0]).is_dir())
    )


def hub_offline() -> bool:
    """Whether the Hugging Face Hub may not be contacted (``HF_HUB_OFFLINE``)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # an invalid repo id
        return False


def _no_such_local(spec: str, offline: bool) -> BoomerangError:
    """ "No such local directory", with the closest names beside it, at once (no Hub retries)."""
    path = Path(spec).expanduser()
    parent = path.parent
    hint = ""
    if parent.is_dir():
        names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
        close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
        if close:
            hint = f" (did you mean {' or '.join(str(parent / c) for c in close)}?)"
    else:
        hint = f" ({parent} does not exist either)"
    hub = (
        "; it is not in the local Hub cache either, and the Hub is offline (HF_HUB_OFFLINE=1)"
        if offline and _HUB_ID.match(spec)
        else ""
    )
    return BoomerangError(
        f"no such local directory: {spec} does not exist{hint}{hub}. Pass an existing checkpoint directory, a .gguf "
        "file or a Hugging Face Hub id (organisation/name)"
    )


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
    offline = hub_offline()
    if _looks_like_path(spec) or (offline and not _in_hub_cache(spec)):
        raise _no_such_local(spec, offline)
    return spec, None


def load_config(spec: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    where, gguf = resolve(spec)
    if not gguf and Path(where).is_dir():
        read_json(Path(where) / "config.json")  # a clear message for a damaged config.json
    try:
        cfg = AutoConfig.from_pretrained(where, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types on damaged files
        if gguf:
            raise gguf_error(spec, e) from None
        if Path(where).is_dir():
            raise BoomerangError(f"cannot read the config of {spec}: {_first_line(e)}") from None
        raise _hub_error(str(spec), e) from None
    strip_quantization(cfg)
    if not trust_remote_code:
        drop_remote_code(cfg)
    return cfg


def drop_remote_code(cfg: Config) -> None:
    """Forget a config's ``auto_map``: without --trust-remote-code the model is transformers' own class, so every
    checkpoint written from it is a standard one, and must not point at code it does not ship."""
    if "auto_map" in cfg.__dict__:
        del cfg.auto_map


def gguf_error(spec: str | os.PathLike, e: BaseException) -> BoomerangError:
    """A GGUF file that transformers cannot parse (truncated, damaged, or an unsupported architecture)."""
    return BoomerangError(
        f"cannot read the GGUF file {spec}: {_first_line(e)}. The file is damaged, incomplete or not a supported "
        "GGUF model: download it again, or pass a checkpoint directory instead"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM (or, for BERT-family configs, a masked LM) in eval mode."""
    where, gguf = resolve(spec)
    local = not gguf and Path(where).is_dir()
    # held from before the config is read: a checkpoint rewritten meanwhile is a clear stop, not a mix
    snapshot = snapshot_of(where) if local else None
    torch_dtype = parse_dtype(dtype)
    config = load_config(spec, trust_remote_code=trust_remote_code)
    auto = model_class(config)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if local:
        # damaged or truncated weights, or a config that contradicts them: a clear message before transformers
        entries, _ = read_tensors(Path(where), snapshot)
        check_checkpoint(Path(where), config, entries)
    try:
        if gguf:
            model = load_gguf(where, gguf, auto, kwargs)
        else:
            model = auto.from_pretrained(where, config=config, use_safetensors=True, **kwargs)
    except BoomerangError:
        raise
    except Exception as e:  # corrupt files, missing shards, offline Hub
        if gguf:
            raise gguf_error(spec, e) from None
        if Path(where).is_dir():
            raise BoomerangError(
                f"cannot load the model in {spec}: {_first_line(e)}; {REPAIR_HINT}"
            ) from None
        raise _hub_error(str(spec), e) from None
    if snapshot is not None:
        snapshot.verify()
    model.eval()
    return model


def stored_dtype(config: Config) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in, from its config (fp32 when the config names none)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return parse_dtype(str(value).removeprefix("torch.")) or torch.float32


def pair_dtype(
    teacher_config: Config, student_config: Config, dtype: str | torch.dtype | None = None
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


def pair_load_dtype(
    teacher: ModelSpec,
    student: ModelSpec,
    dtype: str | torch.dtype | None = None,
    *,
    trust_remote_code: bool = False,
) -> str | torch.dtype | None:
    """The dtype ``load_pair`` loads checkpoints in: ``pair_dtype`` of the two configs when both are checkpoints,
    else ``dtype`` as given (the loaded model keeps its own)."""
    if not (is_model_spec(teacher) and is_model_spec(student)):
        return dtype
    return pair_dtype(
        load_config(teacher, trust_remote_code=trust_remote_code),
        load_config(student, trust_remote_code=trust_remote_code),
        dtype,
    )


def load_pair(
    teacher: ModelSpec,
    student: ModelSpec,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Teacher and student, loaded in one dtype (``pair_load_dtype``): the one place a pair is loaded. Either may
    already be a loaded model, which is taken as it is."""
    common = pair_load_dtype(teacher, student, dtype, trust_remote_code=trust_remote_code)

    def load(spec: ModelSpec) -> PreTrainedModel:
        if is_model_spec(spec):
            return load_model(spec, dtype=common, trust_remote_code=trust_remote_code)
        return spec

    return load(teacher), load(student)


def load_tokenizer(spec: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    where, gguf = resolve(spec)
    if not gguf and Path(where).is_dir() and not tokenizer_files(where):
        raise BoomerangError(
            f"{spec} has no tokenizer (no tokenizer.json, tokenizer_config.json or vocabulary files). Copy the "
            "tokenizer files of the model it was made from into it (or save one with tokenizer.save_pretrained), "
            "or pass --tokenizer DIR where the command has it"
        )
    try:
        return AutoTokenizer.from_pretrained(where, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except Exception as e:
        if gguf:
            raise gguf_error(spec, e) from None
        if Path(where).is_dir():
            raise BoomerangError(
                f"cannot load the tokenizer of {spec}: {_first_line(e)}. Its tokenizer files are damaged or "
                "incomplete: copy them again from the model it was made from"
            ) from None
        raise _hub_error(str(spec), e) from None


def save_tokenizer(
    directory: str | os.PathLike,
    source: str | os.PathLike | None,
    tokenizer: Tokenizer | None = None,
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
    with atomic_dir(out, force=force) as tmp:
        model = load_model(gguf, dtype=dtype)
        tok = load_tokenizer(gguf)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)
