"""Telling text sources from everything else before anything is read (or any model loaded).

A data option given a model's weights (``--data model.safetensors``), an archive or an image must be refused, not
scored as text: a file is text unless its first 64 KiB (decompressed, for ``.gz``) hold a NUL byte.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

from ..errors import BoomerangError

TEXT_SUFFIXES = (".txt", ".md")
_PROBE = 1 << 16
_NOT_LOCAL = ("hf:", "builtin:")  # datasets and packaged texts are checked when read


def check_text_file(path: str | Path) -> None:
    """Refuse a file that is not text: NUL bytes in its first 64 KiB (model weights, archives, images)."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                head = f.read(_PROBE)
        else:
            with path.open("rb") as f:
                head = f.read(_PROBE)
    except (OSError, EOFError, zlib.error) as e:
        raise BoomerangError(f"cannot read data file {path}: {getattr(e, 'strerror', None) or e}") from None
    if b"\x00" in head:
        raise BoomerangError(
            f"{path} is not a text file (it holds binary data, like model weights or an archive); pass a text "
            "file, a folder of .txt/.md/.jsonl files, a .jsonl file, or hf:NAME"
        )


def text_files(folder: Path) -> list[Path]:
    """The documents of a folder source, in reading order."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and (p.suffix in (*TEXT_SUFFIXES, ".jsonl") or p.name.endswith((".txt.gz", ".jsonl.gz")))
    )


def check_text_source(source: str | Path | Sequence[str], option: str = "--data") -> None:
    """Fail fast unless ``source`` is a readable text source: an existing text file, or a folder holding text
    files (the first 100 are probed). Lists of strings, ``hf:`` datasets and ``builtin:`` texts pass here."""
    if isinstance(source, (list, tuple)) or str(source).startswith(_NOT_LOCAL):
        return
    path = Path(str(source)).expanduser()
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise BoomerangError(
                f"{option} {path} contains no .txt, .md or .jsonl files; pass a folder of text files or a text file"
            )
        for f in files[:100]:
            check_text_file(f)
    elif path.is_file():
        check_text_file(path)
    else:
        raise BoomerangError(
            f"{option} {source!r} does not exist; pass a text file, a folder, a .jsonl file, or "
            "hf:NAME[:CONFIG][@SPLIT] for a Hugging Face dataset"
        )
