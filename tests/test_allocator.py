import subprocess
import sys

SCRIPT = r"""
import os, sys, torch
if sys.argv[1] == "tuned":
    from boomerang.core.allocator import keep_freed_memory
    assert keep_freed_memory()
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
base = rss_mb()
acts = [torch.ones(2 * 2**20) for _ in range(12)]  # a training step's activations: 12 x 8 MB
peak = rss_mb()
del acts  # the step ends
print(peak - base, rss_mb() - base)
"""


def _rss(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    peak, after = out.stdout.split()[-2:]
    return float(peak), float(after)


def test_keep_freed_memory_keeps_a_steps_memory_for_the_next_step():
    """glibc's defaults hand memory freed at the end of a step back to the OS, so the next step faults its pages
    in again (about 8% of SmolLM2's bf16 step); tuned, the process keeps it for reuse."""
    peak, after = _rss("plain")
    assert peak > 90 and after < 0.5 * peak, (peak, after)  # returned to the OS
    peak, after = _rss("tuned")
    assert peak > 90 and after > 0.9 * peak, (peak, after)  # kept
