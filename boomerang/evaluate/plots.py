"""The sweep plot: quality against inference-time parameters, one curve per method (like the paper's Figure 2).

Uses matplotlib's Agg backend (no display needed); importing this module does not touch pyplot's global state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METHOD_STYLE = {
    "boomerang": {"color": "tab:blue", "marker": "o", "label": "boomerang (zero-shot interpolation)"},
    "naive": {"color": "tab:gray", "marker": "s", "label": "naive layer dropping"},
    "shortgpt": {"color": "tab:green", "marker": "^", "label": "ShortGPT"},
    "laco": {"color": "tab:purple", "marker": "v", "label": "LaCo"},
    "random-student": {"color": "tab:brown", "marker": "x", "label": "random-init student family"},
}


# colours for curves with other names (e.g. the demo's ablation families), none of METHOD_STYLE's
SPARE_COLORS = ("tab:blue", "tab:cyan", "tab:olive", "tab:pink", "black", "tab:brown")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def sweep_plot(
    rows: Sequence[Mapping[str, object]],
    path: str | Path,
    *,
    y: str,
    y_label: str,
    title: str | None = None,
    x: str = "inference",
    log_y: bool | None = None,
    y_max: float | None = None,
) -> Path:
    """Write a PNG of ``y`` against ``x`` (parameters, shown in millions). Teacher and student are marked.

    ``log_y=None`` picks a log scale when the values span more than a factor of 30 (perplexities often do).
    ``y_max`` cuts the axis there; a curve that leaves it says so in the legend.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=150)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    values = [r[y] for r in rows if _finite(r.get(y)) and (y_max is None or r[y] <= y_max)]
    taken = {METHOD_STYLE[m]["color"] for m in methods if m in METHOD_STYLE}
    spare = iter(c for c in SPARE_COLORS if c not in taken)
    for method in methods:
        pts = sorted(
            (r[x] / 1e6, r.get("K", 0), r[y])
            for r in rows
            if r["method"] == method and _finite(r.get(y)) and r.get(x)
        )
        if not pts:
            continue
        style = METHOD_STYLE.get(method) or {"marker": "o", "label": method, "color": next(spare, None)}
        xs, _, ys = zip(*pts, strict=True)
        label = style["label"] + (" (partly off scale)" if y_max is not None and max(ys) > y_max else "")
        ax.plot(xs, ys, marker=style["marker"], color=style.get("color"), label=label, lw=1.5, ms=5)
    for role, color, marker in (("teacher", "tab:red", "*"), ("student", "tab:orange", "D")):
        for r in rows:
            if r.get("role") == role and _finite(r.get(y)):
                ax.scatter(
                    [r[x] / 1e6], [r[y]], s=160 if marker == "*" else 70, color=color, marker=marker,
                    zorder=5, label=role, edgecolors="black", linewidths=0.5,
                )  # fmt: skip
                break
    if log_y is None:
        pos = [v for v in values if v > 0]
        log_y = bool(pos) and max(pos) / min(pos) > 30
    if log_y:
        ax.set_yscale("log")
    if y_max is not None and values:
        ax.set_ylim(top=y_max, bottom=min(values) / (1.25 if log_y else 1.0))
    ax.set_xlabel("Parameter count at inference (millions)")
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if methods:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
