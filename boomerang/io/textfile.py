"""Small text files the user names (a recipe, a chat template): read as UTF-8 text, or refused with a message
saying what the file is instead (binary data, another encoding, a symbolic link loop, unreadable)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import BoomerangError


def link_loop(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a symbolic link that never reaches a file (it leads back to itself)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def loop_error(path: str | os.PathLike, what: str) -> BoomerangError:
    return BoomerangError(
        f"{what} {path} is a symbolic link loop (following its links leads back to itself); point it at a real "
        "file or folder, or pass that path instead"
    )


def read_text_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names it in errors ("the recipe") and ``fix`` says what to give."""
    path = Path(path)
    if link_loop(path):
        raise loop_error(path, what)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BoomerangError(f"cannot read {what} {path}: {e.strerror or e}; {fix}") from None
    if b"\x00" in data[: 1 << 16]:
        raise BoomerangError(
            f"{what} {path} is not a text file (it holds binary data, like model weights or an archive); {fix}"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BoomerangError(
            f"{what} {path} is not UTF-8 text (byte {e.start} cannot be read); save it as UTF-8, or {fix}"
        ) from None
