"""Telling text sources from everything else before anything is read (or any model loaded).

A data option given a model's weights (``--data model.safetensors``), an archive or an image must be refused, not
scored as text: a file is text unless its first 64 KiB (decompressed, for ``.gz``) hold a NUL byte.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

from ..errors import BoomerangError
from ..io.textfile import link_loop, loop_error

TEXT_SUFFIXES = (".txt", ".md")
_PROBE = 1 << 16
_NOT_LOCAL = ("hf:", "builtin:")  # datasets and packaged texts are checked when read


def check_text_file(path: str | Path, text_field: str | None = None) -> None:
    """Refuse a file that is not text: NUL bytes in its first 64 KiB (model weights, archives, images). With
    ``text_field``, the complete lines in that head of a .jsonl file are checked as ``jsonl_text`` reads them."""
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
    if text_field is not None and path.name.removesuffix(".gz").endswith(".jsonl"):
        lines = head.decode("utf-8", errors="replace").split("\n")
        if len(head) == _PROBE:
            lines = lines[:-1]  # the last line may be cut off
        for n, line in enumerate(lines, 1):
            if line.strip():
                jsonl_text(line, path, n, text_field)


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
               dict: "an object"}  # fmt: skip


def text_value(value: object, where: str, field: str | None) -> str:
    """A document's text, which must be a string: a number, null, a list or an object is refused, not read as
    Python's ``str()`` of it."""
    if isinstance(value, str):
        return value
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    what = f"its {field!r} field" if field else "it"
    raise BoomerangError(
        f"{where}: {what} holds {kind} ({json.dumps(value, default=str)[:60]}), not text; every document's text "
        "must be a JSON string. Fix the data, or name another field with text_field / --text-field"
    )


def jsonl_text(line: str, path: Path, n: int, text_field: str) -> str:
    """The text of line ``n`` of a .jsonl file, or a message naming the file, the line and the problem."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BoomerangError(f"{path}:{n} is not valid JSON ({e.msg})") from None
    if not isinstance(row, dict) or text_field not in row:
        raise BoomerangError(f"{path}:{n} has no {text_field!r} field; set text_field / --text-field")
    return text_value(row[text_field], f"{path}:{n}", text_field)


def is_document(path: Path) -> bool:
    """A file name a folder source reads as documents (.txt, .md, .jsonl, and those gzip-compressed)."""
    return path.suffix in (*TEXT_SUFFIXES, ".jsonl") or path.name.endswith((".txt.gz", ".jsonl.gz"))


def text_files(folder: Path) -> list[Path]:
    """The documents of a folder source, in reading order. A document name that is a symbolic link loop is
    refused (it would be skipped in silence)."""
    found = []
    for p in folder.rglob("*"):
        if not is_document(p):
            continue
        if link_loop(p):
            raise loop_error(p, "the data file")
        if p.is_file():
            found.append(p)
    return sorted(found)


def check_text_source(
    source: str | Path | Sequence[str], option: str = "--data", text_field: str = "text"
) -> None:
    """Fail fast unless ``source`` is a readable text source: an existing text file, or a folder holding text
    files (the first 100 are probed, .jsonl lines for a string ``text_field`` too). Lists of strings, ``hf:``
    datasets and ``builtin:`` texts pass here."""
    if isinstance(source, (list, tuple)) or str(source).startswith(_NOT_LOCAL):
        return
    path = Path(str(source)).expanduser()
    if link_loop(path):
        raise loop_error(path, option)
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise BoomerangError(
                f"{option} {path} contains no .txt, .md or .jsonl files; pass a folder of text files or a text file"
            )
        for f in files[:100]:
            check_text_file(f, text_field)
    elif path.is_file():
        check_text_file(path, text_field)
    else:
        raise BoomerangError(
            f"{option} {source!r} does not exist; pass a text file, a folder, a .jsonl file, or "
            "hf:NAME[:CONFIG][@SPLIT] for a Hugging Face dataset"
        )
