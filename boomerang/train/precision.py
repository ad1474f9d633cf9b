"""Training precision: fp32, or bf16 autocast (bf16 teacher, fp32 master weights for the student).

``precision: auto`` picks bf16 on a GPU that supports it, and on a CPU only where both hold:

1. the CPU computes bf16 natively: ``amx_bf16`` (Intel AMX) or ``avx512_bf16`` in its flags; without them bf16
   matmuls are emulated and slower than fp32;
2. a bf16 matmul of the trainer's typical shape is at least ``MIN_SPEEDUP`` × faster than fp32 on this machine
   (measured in about a tenth of a second at setup; with several processes the flags alone decide, so that every
   rank agrees).

The choice is made once per run: each checkpoint records it, and a resumed run keeps it.

That bf16 losses track fp32 ones is established once, by the tests (a tiny model over 50 steps) and by
``benchmarks/distill_step.py`` on SmolLM2 (loss difference after N steps), not re-checked at run time.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_SPEEDUP = 1.3
PROBE_SHAPE = (1024, 576, 1536)  # tokens × hidden × intermediate: a SmolLM2 MLP matmul at micro-batch 2 × 512


@dataclass(frozen=True)
class Precision:
    """The chosen precision and why."""

    name: str  # "fp32" or "bf16"
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def machine() -> dict[str, object]:
    """What a run's numbers were measured on: CPU model, cores, native-bf16 flags, torch version."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "cpu": model or "unknown",
        "cores": os.cpu_count(),
        "native_bf16": native_bf16(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def native_bf16(flags: set[str] | None = None) -> list[str]:
    """The native-bf16 flags this CPU has (AMX or AVX512-BF16), in order of preference."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def bf16_speedup(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 7) -> float:
    """fp32 time / bf16 time of one ``[m, k] @ [k, n]`` matmul on the CPU (the fastest of ``repeats`` each: other
    work on the machine only slows a run down, so the minimum is the least disturbed estimate)."""
    m, k, n = shape
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm-up (oneDNN picks its kernel)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        times[dtype] = min(ts)
    return times[torch.float32] / times[torch.bfloat16]


def choose_precision(
    requested: str, *, cuda: bool | None = None, processes: int | None = None, started: str | None = None
) -> Precision:
    """Resolve ``train.precision`` (``auto``, ``fp32`` or ``bf16``) for this machine. ``started``: what a resumed
    run chose when it started, which ``auto`` keeps (a new measurement could decide otherwise)."""
    if requested != "auto":
        return Precision(requested, "set in the recipe")
    if started:
        return Precision(started, "as this run started (train.precision auto is decided once per run)")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        ok = torch.cuda.is_bf16_supported()
        return Precision("bf16" if ok else "fp32", "GPU supports bf16" if ok else "GPU lacks bf16")
    have = native_bf16()
    if not have:
        return Precision("fp32", "this CPU has no native bf16 (neither amx_bf16 nor avx512_bf16)")
    processes = int(os.environ.get("WORLD_SIZE", "1")) if processes is None else processes
    if processes > 1:
        return Precision("bf16", f"this CPU has {have[0]}")
    speedup = bf16_speedup()
    if speedup < MIN_SPEEDUP:
        return Precision(
            "fp32", f"this CPU has {have[0]}, but bf16 matmuls are only {speedup:.2f}x faster here"
        )
    return Precision("bf16", f"this CPU has {have[0]}; bf16 matmuls are {speedup:.1f}x faster than fp32 here")
