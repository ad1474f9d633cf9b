"""Local checkpoint directories without torch or transformers: names, configs, dtypes, tokenizer files, disk space.

Everything here reads or copies files only, so the fast build path (``boomerang.io.fastbuild``) and the CLI can use
it without importing the heavy libraries.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from .offline import OFFLINE_ALIAS, offline_dir, offline_teacher
from .safetensors_files import INDEX, WEIGHTS

if TYPE_CHECKING:
    from ..hints import DType
    from .snapshot import Snapshot

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"

# What --dtype accepts, as torch dtype names.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}

# Files (or folders) a tokenizer's save_pretrained writes, by name prefix.
TOKENIZER_PREFIXES = (
    "tokenizer",
    "vocab",
    "merges",
    "special_tokens",
    "chat_template",
    "additional_chat_templates",
    "spiece",
    "added_tokens",
)


def is_model_spec(spec: object) -> bool:
    """A model given as a checkpoint path or Hub id (rather than a loaded model)."""
    return isinstance(spec, (str, os.PathLike))


def expand_alias(spec: str | os.PathLike) -> str:
    """``smollm2-offline`` -> the converted offline teacher's directory (converted on first use); else ``spec``."""
    spec = str(spec)
    if spec != OFFLINE_ALIAS or Path(spec).exists():
        return spec
    out = offline_dir()
    if not (out / CONFIG).is_file():
        offline_teacher()  # converting imports torch and transformers
    return str(out)


def is_local_safetensors(spec: str | os.PathLike) -> bool:
    """True for a local checkpoint directory with a config and safetensors weights (single-file or sharded)."""
    path = Path(expand_alias(spec)).expanduser()
    return (
        path.is_dir()
        and (path / CONFIG).is_file()
        and ((path / WEIGHTS).is_file() or (path / INDEX).is_file())
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or a clear error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BoomerangError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_json(raw, path)


def parse_json(raw: bytes, path: Path) -> dict[str, Any]:
    """A JSON object from the bytes of file ``path``, or a clear error."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BoomerangError(
            f"{path} is not valid JSON ({e}); the checkpoint is damaged: restore the file from its source, or save "
            "the checkpoint again with model.save_pretrained(DIR)"
        ) from None
    if not isinstance(data, dict):
        raise BoomerangError(
            f"{path} does not hold a JSON object; restore the file from its source, or save the checkpoint again"
        )
    return data


def transformers_version() -> str:
    """The installed transformers version, read without importing transformers."""
    return version("transformers")


def dtype_name(dtype: DType) -> str | None:
    """``"bf16"`` or ``torch.bfloat16`` -> ``"bfloat16"``; None or "auto" -> None (keep the checkpoint's dtype)."""
    if dtype is None or dtype == "auto":
        return None
    if not isinstance(dtype, str):  # a torch.dtype
        return str(dtype).removeprefix("torch.")
    try:
        return DTYPE_NAMES[dtype.lower()]
    except KeyError:
        raise BoomerangError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(DTYPE_NAMES)}") from None


def common_dtype_name(teacher: str, student: str) -> str:
    """The one dtype to write or load a teacher/student pair in when none is asked for: theirs when they agree,
    else the wider (float32 over bfloat16/float16; bfloat16 and float16 meet at float32)."""
    if teacher == student:
        return teacher
    width = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
    wt, ws = width.get(teacher, 4), width.get(student, 4)
    return teacher if wt > ws else student if ws > wt else "float32"


# ---- tokenizer files ---------------------------------------------------------------------------------------


def tokenizer_files(directory: str | os.PathLike) -> list[Path]:
    """The tokenizer files (and folders) of a checkpoint directory."""
    path = Path(directory)
    return sorted(p for p in path.iterdir() if p.name.startswith(TOKENIZER_PREFIXES)) if path.is_dir() else []


def tokenizer_nbytes(directory: str | os.PathLike) -> int:
    files = tokenizer_files(directory)
    return sum(q.stat().st_size for p in files for q in ([p] if p.is_file() else p.rglob("*")) if q.is_file())


def copy_tokenizer(
    src: str | os.PathLike, directory: str | os.PathLike, snapshot: Snapshot | None = None
) -> bool:
    """Copy a checkpoint's tokenizer files byte for byte into ``directory`` (from ``snapshot``, a held version of
    ``src``, if given); False if it has none."""
    files = tokenizer_files(src)
    for p in files:
        if p.is_dir():
            shutil.copytree(p, Path(directory) / p.name)
        elif snapshot is not None:
            (Path(directory) / p.name).write_bytes(snapshot.read_bytes(p.name))
        else:
            shutil.copyfile(p, Path(directory) / p.name)
    return bool(files)


# ---- disk space --------------------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, like the shard sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def check_free_space(out: str | os.PathLike, need: int, what: str, fix: str) -> None:
    """Refuse (before writing anything) when ``out``'s filesystem has less than ``need`` bytes free."""
    probe = Path(out).expanduser().resolve().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise BoomerangError(
            f"not enough disk space: {what} needs about {fmt_bytes(need)}, but only {fmt_bytes(free)} is free "
            f"on {probe}. {fix}"
        )
