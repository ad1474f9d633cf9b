"""Reading a checkpoint that another process may rewrite meanwhile: one consistent version, or a clear stop.

Commands read a checkpoint in several passes: its config to validate options, its safetensors headers to plan,
its tensors to write members, its tokenizer files last. If another process replaces the checkpoint between two
passes (``build --force`` into the student's folder), the later passes would read the new files with the old
header's offsets. So a checkpoint directory is *held*:

* ``Snapshot(directory)`` opens every file in it once and keeps the descriptors. Tensors are read through them,
  so an atomic rewrite (a new file renamed over the old one) does not reach a reader: it keeps the version it
  opened, whose inode stays alive while it is held.
* ``Snapshot.verify()`` checks that every path still names the file that was opened, unchanged (device, inode,
  size, mtime), and that no file was added or removed. A reader calls it before it commits its output: a
  change means some pass may have read the other version, so the command stops (``ChangedWhileRead``, exit 2)
  naming the file, and nothing is written.
* ``reading()`` is a scope (one CLI command): within it, every reader of a directory shares one ``Snapshot``
  taken at the first read, and ``atomic.atomic_dir`` verifies them all before renaming an output into place.
  Outside a scope each reader holds its own snapshot.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import BoomerangError


class ChangedWhileRead(BoomerangError):
    """A checkpoint file changed while a command read it."""


class HeldFile:
    """A file opened once; reads go through its descriptor, so they see the version that was opened."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fd = -1
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(self.fd)
        except OSError as e:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            raise BoomerangError(f"cannot read {self.path}: {e.strerror or e}") from None
        self.identity = (st.st_dev, st.st_ino)
        self.version = (st.st_size, st.st_mtime_ns)

    @property
    def size(self) -> int:
        return self.version[0]

    def pread(self, count: int, offset: int) -> bytes:
        return os.pread(self.fd, count, offset)

    def read_bytes(self) -> bytes:
        chunks, offset = [], 0
        while True:
            chunk = os.pread(self.fd, 1 << 20, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def change(self) -> str | None:
        """Why this file is no longer the one that was opened, or None."""
        try:
            now = os.stat(self.path)
        except OSError:
            return "it was removed"
        if (now.st_dev, now.st_ino) != self.identity:
            return "it was replaced by another file"
        st = os.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns) != self.version:
            return "it was rewritten in place"
        return None

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def _listing(directory: Path) -> dict[str, bool]:
    """The regular files of a directory (name -> True); a folder's entries (tokenizer folders) by name only."""
    out = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {}
    for e in entries:
        try:
            out[e.name] = stat.S_ISREG(e.stat().st_mode)
        except OSError:  # a dangling link or a loop: listed, never opened
            out[e.name] = False
    return out


class Snapshot:
    """One version of a checkpoint directory: every file opened once and held."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.names = _listing(self.directory)
        self.files: dict[str, HeldFile] = {}
        for name, regular in self.names.items():
            if regular:
                with contextlib.suppress(BoomerangError):  # unreadable: the reader that needs it says so
                    self.files[name] = HeldFile(self.directory / name)

    def file(self, name: str) -> HeldFile:
        """The held file ``name`` (opened now if it was not there at first; ``verify`` then reports it)."""
        held = self.files.get(name)
        if held is None:
            held = self.files[name] = HeldFile(self.directory / name)
        return held

    def read_bytes(self, name: str) -> bytes:
        return self.file(name).read_bytes()

    def verify(self) -> None:
        """Stop (``ChangedWhileRead``) if any file of the directory changed since it was held."""
        for name, held in self.files.items():
            why = held.change()
            if why is not None:
                raise _changed(self.directory / name, why)
        now = _listing(self.directory)
        for name in sorted(set(now) ^ set(self.names)):
            why = "it appeared" if name in now else "it was removed"
            raise _changed(self.directory / name, why)

    def close(self) -> None:
        for held in self.files.values():
            held.close()


def _changed(path: Path, why: str) -> ChangedWhileRead:
    return ChangedWhileRead(
        f"{path} changed while this command was reading it ({why}): another process is writing "
        f"{path.parent}. Nothing was written; run the command again once that process has finished"
    )


# ---- the scope of one command ----------------------------------------------------------------------------------


class _Scope(threading.local):
    held: dict[Path, Snapshot] | None = None


_SCOPE = _Scope()


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """Within this block every checkpoint directory is held from its first read on (nested blocks share it)."""
    if _SCOPE.held is not None:
        yield
        return
    _SCOPE.held = {}
    try:
        yield
    finally:
        held, _SCOPE.held = _SCOPE.held, None
        for snap in held.values():
            snap.close()


@contextlib.contextmanager
def unheld() -> Iterator[None]:
    """A block outside any scope (a long run that keeps what it read in memory, such as training)."""
    saved, _SCOPE.held = _SCOPE.held, None
    try:
        yield
    finally:
        _SCOPE.held = saved


def snapshot_of(directory: str | os.PathLike) -> Snapshot:
    """The directory's snapshot: the scope's (taken at its first read), or a new one outside a scope."""
    path = Path(directory).expanduser()
    if _SCOPE.held is None:
        return Snapshot(path)
    key = path.resolve()
    snap = _SCOPE.held.get(key)
    if snap is None:
        snap = _SCOPE.held[key] = Snapshot(path)
    return snap


def verify_held() -> None:
    """Verify every directory held in the current scope (nothing outside a scope)."""
    for snap in list((_SCOPE.held or {}).values()):
        snap.verify()


def hold_local(*specs: object) -> list[Snapshot]:
    """Snapshots of the model specs that are local directories (Hub ids, files and loaded models are skipped)."""
    out = []
    for spec in specs:
        if isinstance(spec, (str, os.PathLike)) and Path(spec).expanduser().is_dir():
            out.append(snapshot_of(spec))
    return out


def release(directory: str | os.PathLike) -> None:
    """Forget the scope's snapshot of ``directory``: this process has just written it itself."""
    if _SCOPE.held is not None:
        snap = _SCOPE.held.pop(Path(directory).expanduser().resolve(), None)
        if snap is not None:
            snap.close()
