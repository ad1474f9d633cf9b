"""The demo's report: the claims table per text, the reasons behind failed claims, per-text tables and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .claims import Claim, check_all, family

METRIC = "ppl"
OFFLINE_LABEL = "SmolLM2-135M-Instruct"
TOTAL = "total (this run)"  # the key of a run's whole wall time in its stage timings
ABLATIONS = {
    "random": "random-init student, same budget",
    "nocos": "no cosine term (loss.cos=0), same budget",
}
Demo = Any  # pipelines.demo.Demo (imported there, not here: the report sits below the pipeline)


def _rows(res: dict[str, Any], method: str = "boomerang", rename: str | None = None) -> list[dict[str, Any]]:
    return [{**r, "method": rename or r["method"]} for r in res["rows"] if r["method"] == method]


def text_rows(demo: Demo, per: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The rows of one text's sweeps, by curve: main in each order, baselines, ablations."""
    primary = next(iter(demo.s.orders))
    first = per[f"main-{primary}"]
    curves = {f"main ({o})": _rows(per[f"main-{o}"]) for o in demo.s.orders if f"main-{o}" in per}
    fixed = per.get(f"main-{demo.fixed}")
    if fixed is not None:
        curves.setdefault(f"main ({demo.fixed})", _rows(fixed))
    for b in demo.s.baselines:
        curves[b] = _rows(first, b)
    if fixed is not None and any(r["method"] == "random-student" for r in fixed["rows"]):
        curves[f"random init ({demo.fixed})"] = _rows(fixed, "random-student", "boomerang")
    if f"nocos-{demo.fixed}" in per:
        curves[f"no cosine ({demo.fixed})"] = _rows(per[f"nocos-{demo.fixed}"])
    return curves


def text_claims(demo: Demo, per: dict[str, Any]) -> list[Claim]:
    """(a)-(c) on the main family in the primary order (declared before the run: the first of ``orders``);
    (d) and (e) on the recipe's fixed order, where the ablations were swept."""
    primary = next(iter(demo.s.orders))
    c = text_rows(demo, per)
    main = c[f"main ({primary})"] + [r for b in demo.s.baselines for r in c.get(b, [])]
    fixed = c.get(f"main ({demo.fixed})", [])
    first = check_all(main, metric=METRIC)[:3]
    rest = check_all(
        fixed,
        random_rows=c.get(f"random init ({demo.fixed})", []),
        nocos_rows=c.get(f"no cosine ({demo.fixed})", []),
        metric=METRIC,
    )[3:]
    return [*first, *rest]


# ---- why a claim failed -----------------------------------------------------------------------------------------


def _patched_at(rows: list[dict[str, Any]], k: int) -> list[int]:
    """Student layers patched going from member K-1 to member K."""
    by = {r["K"]: set(r.get("patched") or []) for r in rows}
    return sorted(by.get(k, set()) - by.get(k - 1, set()))


def reasons(
    demo: Demo, claim: Claim, curves: dict[str, list[dict[str, Any]]], analysis: dict[str, Any]
) -> list[str]:
    """Plain-words reasons for a failed claim, from the analysis of the main student (``boomerang analyze``)."""
    if claim.passed is not False:
        return []
    end = analysis.get("block_end_similarity") or []
    start = analysis.get("block_start_similarity") or []
    kept = (analysis.get("layer_map") or {}).get("kept") or []
    n_teacher = (analysis.get("layer_map") or {}).get("n_teacher")

    def layer(i: int) -> str:
        if i >= len(end):
            return f"student layer {i}"
        hi = kept[i + 1] if i + 1 < len(kept) else n_teacher
        return (
            f"student layer {i} (teacher block [{kept[i]}, {hi}); output cos {end[i]:.2f} with its block's end, "
            f"{start[i]:.2f} with its first layer)"
        )

    primary = next(iter(demo.s.orders))
    out: list[str] = []
    if claim.key == "a":
        rows = curves[f"main ({primary})"]
        for k in claim.numbers.get("inversions", []):
            got = _patched_at(rows, k)
            out.append(f"K={k}: patching {', '.join(layer(i) for i in got)} made the member worse")
    elif claim.key in ("b", "c"):
        rows = {r["K"]: r for r in curves[f"main ({primary})"]}
        failed = claim.numbers.get("failed_K", [])
        ks = sorted(set(failed if isinstance(failed, list) else [k for v in failed.values() for k in v]))
        if ks and end:
            m = len(end)
            for k in ks[:4]:
                left = [i for i in range(m) if i not in set(rows.get(k, {}).get("patched") or [])]
                worst = sorted(left, key=lambda i: end[i])[:2]
                out.append(
                    f"K={k}: {len(left)} student layer(s) remain; the least aligned: "
                    + "; ".join(layer(i) for i in worst)
                )
            if len(ks) > 4:
                out.append(f"(and {len(ks) - 4} more sizes)")
        if end:
            low = [i for i in range(len(end)) if end[i] < 0.8]
            if low:
                out.append(
                    f"{len(low)} of {len(end)} student layers have cos < 0.8 with their block's end: the student "
                    "has not yet learned to stand for those blocks at this budget"
                )
    elif claim.key == "d":
        for k in claim.numbers.get("near_K", [])[:4]:
            rows = {r["K"]: r for r in curves[f"main ({demo.fixed})"]}
            left = [i for i in range(len(kept)) if i not in set(rows.get(k, {}).get("patched") or [])]
            out.append(
                f"K={k}: only student layer(s) {left} remain from the random-init student, so the member is mostly "
                "the teacher's"
            )
    elif claim.key == "e":
        ia, ib = claim.numbers.get("inversions", [0, 0])
        out.append(
            f"at this budget the curve without the cosine term is as smooth ({ib} vs {ia} inversions): the cosine "
            "term's effect on smoothness is not visible in this run"
        )
    return out


# ---- files ---------------------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return ""
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}" if v >= 100 else f"{v:.2f}"


def _family_table(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    """K | params | ppl of each curve with rows by K (pruned models are listed by their layer count)."""
    names = [n for n, rows in curves.items() if rows and n not in ("shortgpt", "laco")]
    ks = sorted({r["K"] for n in names for r in curves[n]})
    by = {(n, r["K"]): r for n in names for r in curves[n]}
    lines = ["| K | " + " | ".join(f"{n}: params · ppl" for n in names) + " |", "|---|" + "---|" * len(names)]
    for k in ks:
        cells = []
        for n in names:
            r = by.get((n, k))
            cells.append(
                f"{r['inference'] / 1e6:.1f}M · {_fmt(r[METRIC])}" if r and r.get("inference") else ""
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    pruned = [n for n in ("shortgpt", "laco") if curves.get(n)]
    if pruned:
        lines += ["", "| layers | params | " + " | ".join(pruned) + " |", "|---|---|" + "---|" * len(pruned)]
        sizes = sorted(
            {(r["layers"], r["inference"]) for n in pruned for r in curves[n] if r.get("inference")}
        )
        val = {(n, r["layers"]): r[METRIC] for n in pruned for r in curves[n]}
        for layers, params in sizes:
            lines.append(
                f"| {layers} | {params / 1e6:.1f}M | "
                + " | ".join(_fmt(val.get((n, layers))) for n in pruned)
                + " |"
            )
    return lines


def _plot(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    from ..evaluate.plots import sweep_plot

    rows = []
    for name, rs in curves.items():
        if name in ("naive", "shortgpt", "laco"):
            rows += [r for r in rs if r.get("inference")]
        else:
            rows += [{**r, "method": name} for r in family(rs, metric=METRIC)]
    # cut the axis at 20x the teacher so the family and the baselines near it stay readable
    teacher = min((r[METRIC] for r in rows if r.get("role") == "teacher" and r.get(METRIC)), default=None)
    y_max = 20 * teacher if teacher else None
    sweep_plot(rows, path, y=METRIC, y_label="perplexity", title=title, y_max=y_max)


def _training_plot(runs: dict[str, Path], path: Path) -> bool:
    from matplotlib.figure import Figure

    recs = {}
    for name, run in runs.items():
        f = run / "metrics.jsonl"
        if f.is_file():
            recs[name] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    if not recs:
        return False
    fig = Figure(figsize=(9, 3.6), dpi=130)
    a, b = fig.subplots(1, 2)
    teacher = None
    for name, rs in recs.items():
        train = [(r["step"], r["loss"]) for r in rs if r.get("kind") != "eval" and r.get("loss") is not None]
        val = [(r["step"], r["ppl"]) for r in rs if r.get("kind") == "eval" and r.get("model") == "student"]
        teacher = teacher or next(
            (r["ppl"] for r in rs if r.get("kind") == "eval" and r.get("model") == "teacher"), None
        )
        if train:
            a.plot(*zip(*train, strict=True), lw=1, label=name)
        if val:
            b.plot(*zip(*val, strict=True), marker="o", ms=3, label=name)
    if teacher:
        b.axhline(teacher, color="tab:red", ls="--", label="teacher")
    a.set(xlabel="step", ylabel="training loss", title="distillation loss")
    b.set(
        xlabel="step",
        ylabel="validation perplexity",
        yscale="log",
        title="validation (training-format blocks)",
    )
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def _dtype_line(results: dict[str, Any]) -> str:
    dtype, check = results.get("eval_dtype", "float32"), results.get("eval_dtype_check")
    line = f"Every model is evaluated in {dtype}."
    if check:
        line += (
            f" Check: the teacher's perplexity on `{check['text']}` is {check['float32']:.3f} in float32 and "
            f"{check[dtype]:.3f} in {dtype} ({100 * check['relative_difference']:.2f}% apart)."
        )
    return line


def _wall_line(demo: Demo) -> str:
    total, runs = demo.wall_time()
    this = demo.timings.get(TOTAL, 0.0)
    if runs == 1:
        return f"Wall time: {total / 60:.1f} min in one run (every stage; see `results.json`)."
    return (
        f"Wall time: {total / 60:.1f} min over {runs} runs (this one {this / 60:.1f} min; stages done by an "
        "earlier run count once; `timings.json` has every run's stages)."
    )


def _init_lines(demo: Demo, student: Path) -> list[str]:
    """The main student's init (strategy and kept teacher layers) and the recipe's reasons for it."""
    from ..io.sidecar import read_layer_map

    init = demo.recipe.init
    shape = f"`{init.strategy}`" + (f" (blocks of at most {init.max_block} layers)" if init.max_block else "")
    lm = read_layer_map(student, allow_hub=False)
    kept = ", ".join(str(j) for j in lm.kept) if lm else "?"
    lines = [f"Init: {shape}; the student keeps teacher layers {kept}."]
    if demo.recipe.notes:
        lines += ["", f"Why this recipe: {' '.join(demo.recipe.notes.split())}"]
    return lines


def write_report(demo: Demo, students: dict[str, Path], results: dict[str, Any]) -> str:
    """Write ``report.md``, ``results.json``, ``family-TEXT.png``, ``training.png`` and ``command.txt``."""
    from ..io.atomic import atomic_write_text
    from ..train.precision import machine

    out, s = demo.out, demo.s
    teacher_label = s.teacher or OFFLINE_LABEL
    summaries = {}
    for name, st in students.items():
        f = st.parent / "summary.json"
        summaries[name] = json.loads(f.read_text()) if f.is_file() else {}
    analysis = results["analysis"]
    texts = {t.label: t for t in demo.texts}
    claims = {label: text_claims(demo, per) for label, per in results["texts"].items()}
    curves = {label: text_rows(demo, per) for label, per in results["texts"].items()}
    for label in results["texts"]:
        _plot(curves[label], out / f"family-{label}.png", f"{teacher_label} family on {label}")
    _training_plot({n: p.parent for n, p in students.items()}, out / "training.png")
    mach = machine()
    primary = next(iter(s.orders))

    main = summaries.get("main", {})
    vs, vt = (main.get("val_student") or {}).get("ppl"), (main.get("val_teacher") or {}).get("ppl")
    lines = [f"# boomerang demo: {teacher_label}", ""]
    lines += [
        f"Machine: {mach['cpu']}, {mach['cores']} cores, native bf16: {', '.join(mach['native_bf16']) or 'none'}; "  # type: ignore[arg-type]
        f"torch {mach['torch']}. {_wall_line(demo)}",
        "",
        _dtype_line(results),
        "",
        "## Students",
        "",
        "| student | what | tokens | minutes | tokens/s | precision | validation ppl (student / teacher) |",
        "|---|---|---|---|---|---|---|",
    ]
    what = {"main": f"the recipe (`{s.recipe}`)", **ABLATIONS}
    for name, sm in summaries.items():
        v = (sm.get("val_student") or {}).get("ppl")
        t = (sm.get("val_teacher") or {}).get("ppl")
        ratio = f" = {v / t:.2f}×" if v and t else ""
        lines.append(
            f"| {name} | {what.get(name, name)} | {sm.get('tokens', 0):,} | {sm.get('seconds', 0) / 60:.1f} | "
            f"{sm.get('tokens_per_s', 0):.0f} | {(sm.get('precision') or '').split(' ')[0]} | "
            f"{_fmt(v)} / {_fmt(t)}{ratio} |"
        )
    if vs and vt:
        lines += ["", f"The main student ends at **{vs / vt:.2f}×** the teacher's validation perplexity."]
    lines += ["", *_init_lines(demo, students["main"])]

    labels = list(results["texts"])
    lines += [
        "",
        "## Claims",
        "",
        f"(a)–(c) on the main family in the `{primary}` order (declared before the run); (d) and (e) in the "
        f"recipe's fixed `{demo.fixed}` order, where the ablation students were swept. Each cell: verdict and the "
        "numbers behind it.",
        "",
        "| claim | " + " | ".join(f"{lb} ({texts[lb].kind})" for lb in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for i, key in enumerate("abcde"):
        cells = [f"**{claims[lb][i].verdict}**: {claims[lb][i].detail}" for lb in labels]
        lines.append(f"| ({key}) {claims[labels[0]][i].title} | " + " | ".join(cells) + " |")
    why = []
    for lb in labels:
        for c in claims[lb]:
            for reason in reasons(demo, c, curves[lb], analysis):
                why.append(f"- ({c.key}) on {lb}: {reason}")
    if why:
        lines += [
            "",
            "### Why the failed claims failed (from `boomerang analyze` of the main student)",
            "",
            *why,
        ]

    for lb in labels:
        sl = results["texts"][lb][f"main-{primary}"]["slice"][0]
        lines += [
            "",
            f"## {lb}: {texts[lb].kind}",
            "",
            f"Slice: `{sl['name']}`, offset {sl['offset']}, {sl['tokens']:,} tokens (context {s.context}, stride "
            f"{s.stride}). Perplexity by family member K (K student layers patched in that order) and inference "
            "parameters; naive drops the teacher layers that the same member lacks.",
            "",
            *_family_table(curves[lb]),
            "",
            f"![family on {lb}](family-{lb}.png)",
        ]
    lines += ["", "![training](training.png)", ""]
    text = "\n".join(lines)

    command = s.extra.get("command") or "boomerang demo"
    record = {
        "teacher": str(teacher_label),
        "settings": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(s).items()
        },
        "corpus": {"train": demo.corpus.train, "validation": demo.corpus.validation},
        "texts": {lb: {"source": texts[lb].source, "kind": texts[lb].kind} for lb in labels},
        "machine": mach,
        "timings_s": {k: round(v, 1) for k, v in demo.timings.items()},
        "timings_earlier_runs_s": demo.history,
        "wall_s": round(demo.wall_time()[0], 1),
        "students": summaries,
        "analysis": analysis,
        "orders": results["orders"],
        "claims": {lb: [c.as_dict() for c in cs] for lb, cs in claims.items()},
        "curves": curves,
        "slices": {lb: results["texts"][lb][f"main-{primary}"]["slice"] for lb in labels},
        "command": command,
    }
    atomic_write_text(out / "results.json", json.dumps(record, indent=1, default=str) + "\n")
    atomic_write_text(out / "command.txt", command + "\n")
    atomic_write_text(out / "report.md", text)
    return text
