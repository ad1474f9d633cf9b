"""Ctrl-C that always stops a command, and says how to carry on.

Python turns SIGINT into a ``KeyboardInterrupt`` at the next bytecode of the main thread. If that bytecode is in
a finaliser (a ``__del__``, a weakref callback: long stages that build and drop many modules, such as a LaCo
search, run them all the time), the exception is printed as "Exception ignored" and the command runs on. So
within ``catching()`` (one CLI command) a Ctrl-C is also recorded, and ``check()``, called in every long loop
(per batch, per layer search step, per tensor written), raises it again until the command has stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_pending = False
_hint: str | None = None


def _handler(signum: int, frame: Any) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed in this command (even if it was swallowed once)."""
    if _pending:
        raise KeyboardInterrupt


def pending() -> bool:
    return _pending


def resume_hint(text: str) -> None:
    """What the interrupted command should print to say how to carry on (e.g. ``--resume``)."""
    global _hint
    _hint = text


def hint() -> str | None:
    return _hint


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """Record Ctrl-C for ``check`` while the block runs (main thread only; elsewhere a no-op)."""
    global _pending, _hint
    _pending, _hint = False, None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = False
