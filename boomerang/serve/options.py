"""A server's start-up options that need no model: the engine's limits, the draft's name, and the precision and
device the members run in (checked before anything is loaded).

``--dtype auto`` chooses as the trainer's ``precision: auto`` does (``boomerang.train.precision``): bf16 on a GPU
that supports it, and on a CPU that computes bf16 natively (AMX or AVX512-BF16) where a bf16 matmul is measurably
faster than fp32; fp32 everywhere else. An explicit ``--dtype`` wins.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import BoomerangError

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda"
    dtype: str | None  # a dtype name for loading, None: the checkpoints' own
    reason: str


def check_engine_options(max_batch: int, max_gamma: int, gamma: int | None = None) -> None:
    """``--max-batch``, ``--max-gamma`` and ``--gamma``."""
    if max_batch < 1:
        raise BoomerangError(f"--max-batch must be at least 1 (1: no batching), got {max_batch}")
    if not 1 <= max_gamma <= 32:
        raise BoomerangError(f"--max-gamma must be between 1 and 32, got {max_gamma}")
    if gamma is not None and not 1 <= gamma <= max_gamma:
        raise BoomerangError(f"--gamma must be between 1 and --max-gamma ({max_gamma}), got {gamma}")


def check_draft(draft: str, n_student: int | None = None) -> None:
    """``--draft``: ``student`` or ``kN`` with N below the student's layer count M (kM is the teacher)."""
    m = re.fullmatch(r"student|k(\d+)", draft.strip().lower())
    if not m:
        raise BoomerangError(f"--draft {draft!r} is not a member name: use student or kN (e.g. k2)")
    if n_student is not None and m.group(1) is not None and int(m.group(1)) >= n_student:
        raise BoomerangError(
            f"--draft {draft}: the draft must be smaller than the teacher (k{n_student}): use student or "
            f"k0..k{n_student - 1}"
        )


def check_device(device: str) -> None:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise BoomerangError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")


def choose(dtype: str, device: str = "auto") -> Placement:
    """Where and in which dtype to serve (see the module docstring)."""
    import torch

    from ..train.precision import choose_precision

    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise BoomerangError(
            f"--device {device}: this machine has no CUDA GPU that torch can use; pass --device cpu"
        )
    if dtype != "auto":
        return Placement(device, dtype, "set by --dtype")
    chosen = on_own_thread(lambda: choose_precision("auto", cuda=device.startswith("cuda")))
    return Placement(device, "bfloat16" if chosen.bf16 else "float32", chosen.reason)


def on_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a short-lived thread of its own; its exception is raised here.

    For the heavy tensor work a server does before its engine starts (the ``--dtype auto`` measurement, a
    data-driven patch order): large matrix products on the main thread, followed by decoding on the engine's
    thread, left that decoding 0.74x as fast on a 2-core AMD EPYC (``benchmarks/serve_probe.py``).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised on the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name="boomerang-startup", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
