"""Layer-similarity analysis of a teacher/student pair (the paper's Figures 23, 25, 26 and 27).

* ``student_teacher``: mean per-token cosine between every student layer's output and every teacher layer's
  output, each model run on its own; the heatmap marks each student layer's block start and block end.
* ``teacher_self``: the teacher's layer-vs-layer matrix (what the similarity-based initialisation uses).
* ``members``: for every family member K = 0..M under each patch order, the mean per-token cosine between its
  final hidden states (after the final norm: what the LM head reads) and the teacher's, against K
  (optionally also KL(teacher || member)).

``analyze`` writes all of it (JSON and PNG) into one directory, atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.layermap import LayerMap
from ..core.patching import check_pair
from ..core.plan import PatchOrder, PatchPlan
from ..core.similarity import similarity_matrices, similarity_matrix
from ..io.atomic import atomic_dir, check_writable
from .orders import (
    PatchEvaluator,
    as_calibration,
    calibration_info,
    order_scores,
    similarity_order,
)
from .resolve import resolve_order

if TYPE_CHECKING:
    from ..hints import Calibration, Model


def student_teacher(
    student: Model, teacher: Model, calibration: Calibration, *, batch_size: int = 8
) -> torch.Tensor:
    """``S[i, j]``: cos(student layer i output, teacher layer j output), ``[M, N]``."""
    return similarity_matrix(student, as_calibration(calibration), teacher, batch_size=batch_size)


def teacher_self(teacher: Model, calibration: Calibration, *, batch_size: int = 8) -> torch.Tensor:
    """``S[i, j]``: cos(teacher layer i output, teacher layer j output), ``[N, N]``."""
    return similarity_matrix(teacher, as_calibration(calibration), batch_size=batch_size)


def members(
    teacher: Model,
    student: Model,
    layer_map: LayerMap,
    calibration: Calibration,
    orders: Sequence[str | PatchOrder] = ("last", "first"),
    *,
    kl: bool = False,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Per order: patched sets, depths, and the final-hidden-state cosine (and KL) of every member vs the teacher.

    Orders are names (``last``, ``first``, ``similarity``, ``greedy-kl``, ``shortest-path``, ``optimal``), saved
    order files, or ``PatchOrder`` objects; data-driven ones are computed on ``calibration``. Each row keeps the
    order itself (``PatchOrder.to_json()``) under ``"order"``.
    """
    ids = as_calibration(calibration)
    cos_ev = PatchEvaluator(teacher, student, layer_map, ids, criterion="cos", batch_size=batch_size)
    kl_ev = (
        PatchEvaluator(teacher, student, layer_map, ids, criterion="kl", batch_size=batch_size)
        if kl
        else None
    )
    out: dict[str, dict[str, Any]] = {}
    for order in orders:
        patch_order = resolve_order(
            order, layer_map, teacher=teacher, student=student, calibration=ids, batch_size=batch_size
        )
        key = patch_order.name if patch_order.name not in out else f"{patch_order.name}-{len(out)}"
        row: dict[str, Any] = {
            "num_patched": [len(s) for s in patch_order.subsets],
            "num_layers": [PatchPlan(layer_map=layer_map, patched=s).n_layers for s in patch_order.subsets],
            "patched": [list(s) for s in patch_order.subsets],
            "cosine": order_scores(teacher, student, layer_map, patch_order, ids, evaluator=cos_ev),
            "order": patch_order.to_json(),
        }
        if kl_ev is not None:
            row["kl"] = order_scores(teacher, student, layer_map, patch_order, ids, evaluator=kl_ev)
        out[key] = row
    return out


# ---- plots ------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_student_teacher(
    matrix: torch.Tensor, layer_map: LayerMap, path: str | Path, *, title: str = ""
) -> None:
    """Heatmap of ``[M, N]`` similarities with each student layer's block start (square) and end (cross)."""
    m, n = matrix.shape
    fig = _figure(max(5.0, 0.28 * n + 2.5), max(3.5, 0.28 * m + 1.8))
    ax = fig.subplots()
    im = ax.imshow(
        matrix.numpy(), cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1.0, aspect="auto"
    )
    rows = list(range(m))
    ax.scatter(
        layer_map.kept,
        rows,
        marker="s",
        s=60,
        facecolors="none",
        edgecolors="white",
        linewidths=1.5,
        label="block start (initialised from)",
    )
    ax.scatter(
        layer_map.targets,
        rows,
        marker="x",
        s=45,
        color="red",
        linewidths=1.5,
        label="block end (aligned with)",
    )
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("student layer")
    ax.set_xticks(range(n))
    ax.set_yticks(rows)
    ax.tick_params(labelsize=7)
    ax.set_title(title or "cosine similarity: student layer output vs teacher layer output", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.legend(loc="lower center", ncol=2, fontsize=7, facecolor="0.6", framealpha=1.0)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)


def plot_teacher_self(matrix: torch.Tensor, path: str | Path, *, layer_map: LayerMap | None = None) -> None:
    """Heatmap of the teacher's ``[N, N]`` self-similarity, with the student's blocks outlined if given."""
    from matplotlib.patches import Rectangle

    n = matrix.shape[0]
    fig = _figure(max(5.0, 0.25 * n + 2.5), max(4.5, 0.25 * n + 1.5))
    ax = fig.subplots()
    im = ax.imshow(matrix.numpy(), cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1.0)
    if layer_map is not None:
        for blk in layer_map.blocks:
            ax.add_patch(
                Rectangle(
                    (blk.start - 0.5, blk.start - 0.5),
                    len(blk),
                    len(blk),
                    fill=False,
                    clip_on=False,
                    edgecolor="red",
                    linewidth=1.2,
                )
            )
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("teacher layer")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.tick_params(labelsize=7)
    ax.set_title("teacher self-similarity" + (" (student blocks outlined)" if layer_map else ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)


def plot_members(
    curves: Mapping[str, Mapping[str, object]], path: str | Path, *, key: str = "cosine"
) -> None:
    """Cosine (or KL) of every member vs the teacher against the number of patched layers, one line per order."""
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for name, row in curves.items():
        ax.plot(row["num_patched"], row[key], marker="o", markersize=3, label=name)
    ax.set_xlabel("number of patched student layers (K)")
    ax.set_ylabel(
        "last-layer cosine similarity to the teacher" if key == "cosine" else "KL(teacher || member)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


# ---- everything, written atomically -----------------------------------------------------------------------------


def analyze(
    teacher: Model,
    student: Model,
    layer_map: LayerMap,
    calibration: Calibration,
    out: str | Path,
    *,
    orders: Sequence[str | PatchOrder] = ("last", "first"),
    kl: bool = False,
    batch_size: int = 8,
    force: bool = False,
    meta: Mapping[str, object] | None = None,
    status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``similarity.{json,png}``, ``teacher_similarity.{json,png}``, ``members.{json,png}`` (and
    ``members_kl.png`` with ``kl``), ``orders/<name>.json`` and ``summary.json`` into ``out``; returns the summary."""
    check_writable(out, force=force)
    check_pair(teacher, student, layer_map)
    ids = as_calibration(calibration)
    cal = calibration_info(ids)

    def say(msg: str) -> None:
        if status:
            status(msg)

    say("student x teacher and teacher x teacher similarity")
    st, tt = similarity_matrices(student, ids, teacher, batch_size=batch_size)
    diag = [float(st[i, layer_map.target(i)]) for i in range(layer_map.n_student)]
    # the similarity order is read off the matrix just computed rather than measured again
    orders = [similarity_order(diag, layer_map, calibration=cal) if o == "similarity" else o for o in orders]
    say("family members vs the teacher")
    curves = members(teacher, student, layer_map, ids, orders, kl=kl, batch_size=batch_size)
    summary = {
        "calibration": cal,
        "layer_map": layer_map.to_json(),
        "block_end_similarity": diag,
        "block_start_similarity": [float(st[i, k]) for i, k in enumerate(layer_map.kept)],
        "orders": {
            name: {"cosine": row["cosine"], **({"kl": row["kl"]} if "kl" in row else {})}
            for name, row in curves.items()
        },
        **(meta or {}),
    }
    with atomic_dir(out, force=force) as tmp:
        _write_analysis(tmp, st, tt, curves, layer_map, cal, kl=kl)
        _dump(tmp / "summary.json", summary)
    return summary


def _write_analysis(
    tmp: Path,
    st: torch.Tensor,
    tt: torch.Tensor,
    curves: dict[str, Any],
    layer_map: LayerMap,
    cal: dict[str, Any],
    *,
    kl: bool,
) -> None:
    """The similarity matrices, the orders and the member curves, as JSON and plots, into ``tmp``."""
    _dump(
        tmp / "similarity.json",
        {
            "description": "mean per-token cosine similarity, student layer i output (rows) vs teacher layer j "
            "output (columns)",
            "calibration": cal,
            "layer_map": layer_map.to_json(),
            "block_start": list(layer_map.kept),
            "block_end": layer_map.targets,
            "matrix": st.tolist(),
        },
    )
    plot_student_teacher(st, layer_map, tmp / "similarity.png")
    _dump(
        tmp / "teacher_similarity.json",
        {
            "description": "mean per-token cosine similarity between teacher layer outputs",
            "calibration": cal,
            "matrix": tt.tolist(),
        },
    )
    plot_teacher_self(tt, tmp / "teacher_similarity.png", layer_map=layer_map)
    (tmp / "orders").mkdir()
    for name, row in curves.items():
        _dump(tmp / "orders" / f"{name}.json", row["order"])
    _dump(
        tmp / "members.json",
        {
            "description": "mean per-token cosine similarity between each member's final normed hidden states and "
            "the teacher's"
            + (", and KL(teacher || member) per token" if kl else "")
            + "; the orders themselves are in orders/<name>.json",
            "calibration": cal,
            "orders": {name: {k: v for k, v in row.items() if k != "order"} for name, row in curves.items()},
        },
    )
    plot_members(curves, tmp / "members.png")
    if kl:
        plot_members(curves, tmp / "members_kl.png", key="kl")


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
