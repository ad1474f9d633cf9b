"""The one way boomerang writes an output: checked up front, built in a temporary sibling, renamed into place.

* ``check_writable`` runs before any heavy work: it refuses an existing output without ``force``, an output under a
  file, and a place that cannot be written (``/sys/x``, a read-only disk).
* ``atomic_dir`` / ``atomic_write_text`` write into ``.NAME.tmp-PID-STAMP-XXXX`` beside the output and rename it
  into place only when complete. The rename never replaces without ``force`` (``renameat2(RENAME_NOREPLACE)``);
  with ``force`` the old output is swapped out in one step (``RENAME_EXCHANGE``), so a crash never loses both.
* Of two processes writing one output at the same time, the one that started first wins; the other stops with a
  clear error before it renames anything.
* A temporary directory whose owner process is dead (a ``SIGKILL``) is an orphan: the next write beside it removes
  it, or, for resumable writers (``resume=...``), adopts it and carries on where it stopped.
* A write error (disk full, file-size limit, read-only file system) becomes a ``BoomerangError`` naming the output
  and the fix, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BoomerangError
from .snapshot import release, verify_held

FORCE_HINT = "pass --force (force=True in Python) to replace it, or choose another output"
RESUME_FILE = ".resume.json"  # inside a resumable temporary directory: what it is a partial copy of
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<stamp>\d+)-[0-9a-f]+$")
_NOREPLACE, _EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)
_AT_FDCWD = -100
# errors of the environment (a full disk, a read-only path), not of boomerang
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
}


# ---- up-front checks ---------------------------------------------------------------------------------------------


def writable_place(out: str | os.PathLike) -> Path:
    """Fail unless ``out`` could be created: its nearest existing ancestor is a writable directory."""
    out = Path(out).expanduser()
    parent = out.absolute().parent
    while not (parent.exists() or parent.is_symlink()):
        parent = parent.parent
    if not parent.is_dir():
        raise BoomerangError(
            f"cannot write {out}: {parent} is a file, not a directory; choose another output path"
        )
    try:  # os.access is no help for root or on /sys-like file systems: try it
        os.rmdir(_mkdtemp(parent, ".boomerang-probe"))
    except OSError as e:
        raise BoomerangError(
            f"cannot write {out}: {parent} is not writable ({e.strerror}); choose another output path"
        ) from None
    return out


def check_writable(out: str | os.PathLike, *, force: bool, file: bool = False) -> Path:
    """Fail early (before any heavy work) if ``out`` cannot be written: it exists and ``force`` is not set, it has
    the wrong kind (a file where a directory is written, or the reverse), or its place is not writable."""
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        if not force:
            raise BoomerangError(f"{out} already exists; {FORCE_HINT}")
        if file and out.is_dir():
            raise BoomerangError(f"{out} is a directory; give a file name such as {out / 'out.json'}")
        if not file and not out.is_dir():
            raise BoomerangError(f"{out} exists and is not a directory; choose another output path")
    return writable_place(out)


# ---- temporary siblings, their owners and orphans ----------------------------------------------------------------


def _stamp() -> int:
    """Nanoseconds since boot (the clock /proc/PID/stat start times count in)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime_ns(clock) if clock is not None else time.monotonic_ns()


def _mkdtemp(parent: Path, name: str) -> Path:
    """A new directory ``.NAME.tmp-PID-STAMP-XXXX`` (the prefix of ``name`` kept as given if it starts with '.')."""
    prefix = name if name.startswith(".") else f".{name}"
    while True:
        path = parent / f"{prefix}.tmp-{os.getpid()}-{_stamp()}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


_ACTIVE: set[Path] = set()  # temporary directories this process is writing now


def owner_alive(pid: int, stamp: int) -> bool:
    """Whether process ``pid``, which made a temporary directory at ``stamp``, is still running.

    A pid reused by a process started after the directory was made does not count (its start time is later).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the pid
    fields = stat.rpartition(")")[2].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie has finished
        return False
    try:
        started = int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return True
    return started <= stamp + 2_000_000_000  # 2 s of slack for clock granularity


def _alive(path: Path, pid: int, stamp: int) -> bool:
    """Whether the temporary ``path`` is still being written (by another process, or by this one)."""
    return path.absolute() in _ACTIVE if pid == os.getpid() else owner_alive(pid, stamp)


def _temps(parent: Path, name: str | None = None) -> list[tuple[Path, int, int]]:
    """``(path, pid, stamp)`` of the temporary siblings in ``parent`` (of output ``name``, or of every output)."""
    found = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _TMP.match(p.name)
        if m and (name is None or m["name"] == name):
            found.append((p, int(m["pid"]), int(m["stamp"])))
    return found


def clean_orphans(
    parent: str | os.PathLike, name: str | None = None, *, keep_resumable: bool = False
) -> list[Path]:
    """Remove temporary siblings in ``parent`` (of output ``name``, or all) whose owner process is dead.

    With ``keep_resumable``, a resumable writer's directory (see ``atomic_dir(resume=...)``) is kept for it.
    """
    removed = []
    for path, pid, stamp in _temps(Path(parent), name):
        if keep_resumable and (path / RESUME_FILE).is_file():
            continue
        if not _alive(path, pid, stamp):
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _adopt(parent: Path, name: str, key: Any) -> Path | None:
    """A dead writer's temporary directory of the same output made with the same ``key``, renamed as ours."""
    for path, pid, stamp in sorted(_temps(parent, name), key=lambda t: -t[2]):
        if _alive(path, pid, stamp) or not path.is_dir():
            continue
        try:
            same = json.loads((path / RESUME_FILE).read_text()) == key
        except (OSError, ValueError):
            same = False
        if not same:
            continue
        mine = parent / f".{name}.tmp-{os.getpid()}-{_stamp()}-{secrets.token_hex(3)}"
        try:
            os.rename(path, mine)  # only one adopter can win this rename
        except OSError:
            continue
        return mine
    return None


def _claim(tmp: Path, out: Path) -> None:
    """Stop unless ``tmp`` is the oldest live temporary directory of ``out``: the first writer wins."""
    me = _TMP.match(tmp.name)
    assert me is not None
    mine = (int(me["stamp"]), int(me["pid"]), tmp.name)
    for path, pid, stamp in _temps(tmp.parent, out.name):
        if path != tmp and (stamp, pid, path.name) < mine and _alive(path, pid, stamp):
            raise BoomerangError(
                f"another process (pid {pid}) is writing {out} right now; wait for it to finish, or choose "
                "another output"
            )


# ---- renames that never replace by accident ----------------------------------------------------------------------


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system or file system does not support it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC or None


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (atomically where the system can)."""
    src, dst = Path(src), Path(dst)
    try:
        if _renameat2(src, dst, _NOREPLACE):
            return
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
        raise
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    os.rename(src, dst)


def _replace(tmp: Path, out: Path) -> None:
    """Put ``tmp`` at ``out``, replacing what is there; the old content ends up at ``tmp`` (then removed)."""
    same_kind = out.exists() and not out.is_symlink() and out.is_dir() == tmp.is_dir()
    if same_kind and _renameat2(tmp, out, _EXCHANGE):
        _remove(tmp)
        return
    if out.is_dir() and not out.is_symlink():
        trash = _mkdtemp(out.parent, out.name)
        os.rename(out, trash / "old")
        os.rename(tmp, out)
        _remove(trash)
    else:
        os.replace(tmp, out)


def _finish(tmp: Path, out: Path, force: bool) -> None:
    if force and (out.exists() or out.is_symlink()):
        _replace(tmp, out)
        return
    try:
        rename_noreplace(tmp, out)
    except FileExistsError:
        if not force:
            raise BoomerangError(
                f"{out} appeared while this command ran (another process wrote it); it was left as it is. "
                f"Nothing was written; {FORCE_HINT}"
            ) from None
        _replace(tmp, out)


# ---- writing -----------------------------------------------------------------------------------------------------


def write_error(out: str | os.PathLike, e: BaseException) -> BoomerangError:
    """A write failure (``OSError`` or safetensors' I/O error) as a message naming the output and the fix."""
    code = getattr(e, "errno", None)
    text = str(e)
    if code in (errno.ENOSPC, errno.EDQUOT) or "StorageFull" in text or "No space" in text:
        fix = "free some disk space or choose another output path"
    elif code == errno.EFBIG or "FileTooLarge" in text or "too large" in text:
        fix = "raise the file-size limit (ulimit -f) or choose another output path"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "PermissionDenied" in text:
        fix = "choose a writable output path"
    else:
        fix = "check the output path and the disk, then run the command again"
    reason = (
        e.strerror if isinstance(e, OSError) and e.strerror else text.strip().splitlines()[0] if text else ""
    )
    return BoomerangError(
        f"writing {out} failed ({reason or type(e).__name__}); nothing was written. To fix: {fix}"
    )


def temp_dir_error(e: BaseException) -> BoomerangError | None:
    """Python's "no usable temporary directory" (every candidate full or not writable: a full disk), raised by
    ``tempfile`` wherever a library first needs one (some do on import), as a message with the fix."""
    text = str(e)
    if not (isinstance(e, FileNotFoundError) and "No usable temporary directory" in text):
        return None
    where = text.partition("found in")[2].strip() or "the temporary folders"
    return BoomerangError(
        f"no usable temporary directory: {where} are full or not writable (a full disk?). Free some disk space, "
        "or set TMPDIR to a writable folder with space, then run the command again"
    )


def is_write_error(e: BaseException) -> bool:
    """An ``OSError`` or safetensors' ``SafetensorError`` (raised on I/O errors while saving)."""
    return isinstance(e, OSError) or type(e).__name__ == "SafetensorError"


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, force: bool = False, resume: object = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    On any error (or interruption) the temporary directory is removed and ``out`` is left untouched. With
    ``resume`` (a JSON-able key describing exactly what is written), a temporary directory left by a killed run
    (SIGKILL, SIGTERM, a crash) with the same key is handed back instead of a fresh one, so the block can keep
    what is already complete. An exception or Ctrl-C in this process cleans up as usual.
    """
    out = check_writable(out, force=force)
    parent = out.absolute().parent
    if resume is not None:
        resume = json.loads(json.dumps(resume, sort_keys=True))  # compared with the JSON a killed run wrote
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _adopt(parent, out.name, resume) if resume is not None else None
        if tmp is not None:
            _ACTIVE.add(tmp.absolute())  # ours now: not an orphan to clean
        clean_orphans(parent, out.name)
        tmp = tmp or _mkdtemp(parent, out.name)
    except OSError as e:
        raise write_error(out, e) from None
    _ACTIVE.add(tmp.absolute())
    try:
        _claim(tmp, out)
        if resume is not None:
            (tmp / RESUME_FILE).write_text(json.dumps(resume))
        yield tmp
        if resume is not None:
            (tmp / RESUME_FILE).unlink()
        verify_held()  # the inputs this command read did not change meanwhile (boomerang.io.snapshot)
        _claim(tmp, out)
        _finish(tmp, out, force)
        release(out)  # written by this process: a later read of it is not a concurrent change
    except BaseException as e:
        # only a killed process leaves its temporary directory (an orphan, or resumable progress)
        _remove(tmp)
        if is_write_error(e):
            raise write_error(out, e) from None
        raise
    finally:
        _ACTIVE.discard(tmp.absolute())


def atomic_write_text(path: str | os.PathLike, text: str, *, force: bool = True) -> None:
    """Write a file via a temporary sibling and rename (without ``force``, never over an existing file)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_orphans(path.parent, path.name)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{_stamp()}-{secrets.token_hex(3)}"
        _ACTIVE.add(tmp.absolute())
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        verify_held()
        if force:
            os.replace(tmp, path)
        else:
            try:
                rename_noreplace(tmp, path)
            except FileExistsError:
                raise BoomerangError(f"{path} already exists; {FORCE_HINT}") from None
    except BaseException as e:
        if tmp is not None:
            _remove(tmp)
        if is_write_error(e):
            raise write_error(path, e) from None
        raise
    finally:
        if tmp is not None:
            _ACTIVE.discard(tmp.absolute())


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``out`` to write one file at; it becomes ``out`` only if the block succeeds
    (checked and claimed like ``atomic_dir``; never over an existing file without ``force``)."""
    out = check_writable(out, force=force, file=True)
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_orphans(parent, out.name)
        tmp = parent / f".{out.name}.tmp-{os.getpid()}-{_stamp()}-{secrets.token_hex(3)}"
        tmp.touch(exist_ok=False)  # visible to a concurrent writer of the same output (``_claim``)
    except OSError as e:
        raise write_error(out, e) from None
    _ACTIVE.add(tmp.absolute())
    try:
        _claim(tmp, out)
        yield tmp
        _claim(tmp, out)
        _finish(tmp, out, force)
    except BaseException as e:
        _remove(tmp)
        if is_write_error(e):
            raise write_error(out, e) from None
        raise
    finally:
        _ACTIVE.discard(tmp.absolute())


@contextlib.contextmanager
def scratch_dir(near: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """A temporary working directory beside ``near``, removed when the block ends (named like every temporary, so
    one a killed run left behind is removed by the next run)."""
    near = Path(near).expanduser()
    parent, name = near.absolute().parent, f"{near.name}.{purpose}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_orphans(parent, name)
        tmp = _mkdtemp(parent, name)
    except OSError as e:
        raise write_error(near, e) from None
    _ACTIVE.add(tmp.absolute())
    try:
        yield tmp
    finally:
        _remove(tmp)
        _ACTIVE.discard(tmp.absolute())
