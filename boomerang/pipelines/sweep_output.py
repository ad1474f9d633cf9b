"""A sweep's outputs: its result rows, and ``results.json``, ``results.csv``, ``results.md``, ``sweep.png`` (plus
one plot per lm-eval column) and ``order.json``, written into ``out`` at once."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluate.lmeval import metric_label
from ..evaluate.perplexity import METRIC_LABELS
from ..evaluate.plots import sweep_plot
from ..io.atomic import atomic_dir
from ..ui import fmt_count, fmt_metric
from .sweep_plan import Row
from .sweep_state import SweepState

BASE_COLUMNS = ("method", "K", "role", "layers", "trainable", "inference")


def result_rows(rows: Sequence[Row], state: SweepState, metric: str) -> list[dict[str, Any]]:
    """One dict per row: sizes, the metric and NLL over the scored tokens, lm-eval columns, any error."""
    out = []
    for r in rows:
        info = state.models.get(r.unit, {})
        acc = state.units.get(r.unit, {"nll": 0.0, "count": 0})
        plan = r.plan
        row: dict[str, Any] = {
            "method": r.method,
            "K": r.K,
            "role": r.role,
            "layers": info.get("layers"),
            "trainable": info.get("trainable"),
            "inference": info.get("inference"),
            metric: math.exp(acc["nll"] / acc["count"]) if acc["count"] else float("nan"),
            "nll": acc["nll"] / acc["count"] if acc["count"] else float("nan"),
            "scored_tokens": acc["count"],
            "teacher_layers": plan.teacher_layers if plan is not None else info.get("teacher_layers"),
            "patched": list(plan.patched) if plan is not None and r.method != "naive" else None,
            "model": r.unit,
        }
        for task, metrics in state.lm_eval.get(r.unit, {}).items():
            for name, value in metrics.items():
                row[f"{task}/{name}"] = value
        if r.unit in state.failed:
            row["error"] = state.failed[r.unit]
        out.append(row)
    return out


def write_results(
    result: Mapping[str, object], out: Path, partial: Path, *, order_name: str, force: bool
) -> None:
    """Write every output into ``out`` atomically (never over another process's output), then drop ``partial``."""
    rows = result["rows"]
    metric = result["metric"]["name"]
    with atomic_dir(out, force=force) as tmp:
        (tmp / "results.json").write_text(json.dumps(_clean(result), indent=1, default=str) + "\n")
        (tmp / "results.csv").write_text(to_csv(rows))
        (tmp / "results.md").write_text(to_markdown(result))
        shutil.copy(partial / "order.json", tmp / "order.json")
        if (partial / "tasks").is_dir():
            shutil.copytree(partial / "tasks", tmp / "tasks")
        title = f"{Path(result['teacher']).name} ← {Path(result['student']).name} ({order_name} order)"
        sweep_plot(rows, tmp / "sweep.png", y=metric, y_label=METRIC_LABELS[metric], title=title)
        for col in lm_eval_columns(rows):
            safe = col.replace("/", "-").replace(" ", "_")
            sweep_plot(rows, tmp / f"sweep-{safe}.png", y=col, y_label=col, title=title, log_y=False)
    shutil.rmtree(partial, ignore_errors=True)


def _clean(o: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def lm_eval_columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r if "/" in k))


def lm_eval_labels(rows: Sequence[Mapping[str, object]]) -> dict[str, str]:
    """``task/metric`` column -> what it measures (lm-eval's metrics, kept apart from boomerang's perplexity)."""
    return {c: metric_label(c.split("/", 1)[1]) for c in lm_eval_columns(rows)}


def to_csv(rows: Sequence[Mapping[str, object]]) -> str:
    if not rows:
        return ""
    metric_cols = [k for k in rows[0] if k in ("ppl", "pppl")]
    cols = [
        *BASE_COLUMNS,
        *metric_cols,
        "nll",
        "scored_tokens",
        *lm_eval_columns(rows),
        "teacher_layers",
        "patched",
        "model",
        "error",
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(
            [
                " ".join(map(str, r[c]))
                if isinstance(r.get(c), list)
                else ("" if r.get(c) is None else r.get(c))
                for c in cols
            ]
        )
    return buf.getvalue()


def to_markdown(result: Mapping[str, object]) -> str:
    rows = result["rows"]
    metric = result["metric"]["name"]
    extra = lm_eval_columns(rows)
    head = ["method", "K", "layers", "params (inference)", "params (trainable)", metric, *extra]
    lines = [
        f"# Sweep: {result['teacher']} ← {result['student']}",
        "",
        f"- order: `{result['order']['name']}`; sizes K = {result['sizes']}",
        f"- {result['metric']['label']}; settings: {json.dumps(result['settings'])}",
        *(
            f"- `{col}`: {label} (lm-evaluation-harness, not boomerang's token perplexity)"
            for col, label in (result.get("lm_eval_labels") or lm_eval_labels(rows)).items()
        ),
        "- data slice: "
        + "; ".join(
            f"{d['name']} tokens {d['offset']}..{d['offset'] + d['tokens']}" for d in result["slice"][:5]
        )
        + (f" (+{len(result['slice']) - 5} more)" if len(result["slice"]) > 5 else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 1 else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        label = r["method"] + (f" ({r['role']})" if r.get("role") else "")
        cells = [
            label,
            str(r["K"]),
            "" if r.get("layers") is None else str(r["layers"]),
            fmt_count(r["inference"]) if r.get("inference") else "",
            fmt_count(r["trainable"]) if r.get("trainable") else "",
            fmt_metric(r.get(metric)),
            *[fmt_metric(r.get(c)) for c in extra],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
