"""What the user sees, shared by the command line and the library: the rich consoles and number formats.

Below every other module (the trainer prints through these consoles, the CLI too), and light: rich only.
"""

from __future__ import annotations

import math

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fmt_count(n: float) -> str:
    """A parameter count: ``135_000_000`` -> ``"135.0M"`` (``B``, ``M`` or ``K``)."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def fmt_metric(v: object) -> str:
    """A metric value in a table: four significant digits, ``"n/a"`` for a missing or non-finite value."""
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
