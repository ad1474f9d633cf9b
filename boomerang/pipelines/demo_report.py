"""The demo's report: the claims table per text (judged per distinct size), the reasons behind failed claims, what
the mixed-context term buys, per-text tables and plots. It reads a ``DemoResults`` and nothing else."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..evaluate.plots import sweep_plot
from ..io.atomic import atomic_write_text
from ..train.run_dir import RunDir
from .claims import Claim, check_all, family, interpolate, sized, teacher_size_variants
from .demo_results import Curve, DemoResults, TextResult

METRIC = "ppl"
OFFLINE_LABEL = "SmolLM2-135M-Instruct"
TOTAL = "total (this run)"  # the key of a run's whole wall time in its stage timings
Rows = list[dict[str, Any]]


def _rows(res: dict[str, Any], method: str = "boomerang", rename: str | None = None) -> Rows:
    return [{**r, "method": rename or r["method"]} for r in res["rows"] if r["method"] == method]


def label(curve: Curve) -> str:
    """How a curve is named in tables and plots: ``main (size-aware)``, ``no cosine (first)``."""
    names = {"main": "main", "nocos": "no cosine", "nomixed": "no mixed-context", "random": "random init"}
    return f"{names.get(curve.student, curve.student)} ({curve.order})"


def text_rows(res: DemoResults, text: TextResult) -> dict[str, Rows]:
    """The rows of one text's sweeps, by curve: main in each order, baselines, ablations."""
    curves: dict[str, Rows] = {}
    main = [c for c in text.sweeps if c.student == "main"]
    for c in main:
        curves[label(c)] = _rows(text.sweeps[c])
    first = text.sweeps.get(Curve("main", res.primary))
    for b in res.baselines:
        curves[b] = _rows(first, b) if first is not None else []
    fixed = text.sweeps.get(Curve("main", res.fixed))
    if fixed is not None and any(r["method"] == "random-student" for r in fixed["rows"]):
        curves[label(Curve("random", res.fixed))] = _rows(fixed, "random-student", "boomerang")
    for c in text.sweeps:
        if c.student != "main":
            curves[label(c)] = _rows(text.sweeps[c])
    return curves


def text_claims(res: DemoResults, curves: dict[str, Rows]) -> list[Claim]:
    """(a)-(c) on the main family in the primary order (declared before the run), per distinct size; (d) and (e)
    on the recipe's fixed order, where the random-init and no-cosine students were swept."""
    main = curves.get(label(Curve("main", res.primary)), []) + [
        r for b in res.baselines for r in curves.get(b, [])
    ]
    fixed = curves.get(label(Curve("main", res.fixed)), [])
    first = check_all(main, metric=METRIC)[:3]
    rest = check_all(
        fixed,
        random_rows=curves.get(label(Curve("random", res.fixed)), []),
        nocos_rows=curves.get(label(Curve("nocos", res.fixed)), []),
        metric=METRIC,
    )[3:]
    return [*first, *rest]


def size_ratios(rows: Rows, baseline: Rows) -> dict[int, float]:
    """Per distinct size (layers) below the teacher: the member's metric / the baseline's at the same size."""
    pts = (
        sorted({(r["inference"], r[METRIC]) for r in family(baseline, baseline[0]["method"], METRIC)})
        if baseline
        else []
    )
    out = {}
    for r in sized(rows, metric=METRIC):
        ref = interpolate(pts, r["inference"]) if pts and r.get("inference") else None
        if ref and r.get("role") != "teacher":
            out[r["layers"]] = r[METRIC] / ref
    return out


# ---- why a claim failed -----------------------------------------------------------------------------------------


def _patched_at(rows: list[dict[str, Any]], k: int) -> list[int]:
    """Student layers patched going from member K-1 to member K."""
    by = {r["K"]: set(r.get("patched") or []) for r in rows}
    return sorted(by.get(k, set()) - by.get(k - 1, set()))


def reasons(res: DemoResults, claim: Claim, curves: dict[str, Rows]) -> list[str]:
    """Plain-words reasons for a failed claim, from the analysis of the main student (``boomerang analyze``)."""
    if claim.passed is not False:
        return []
    analysis = res.analysis
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

    primary_rows = curves[label(Curve("main", res.primary))]
    out: list[str] = []
    if claim.key == "a":
        rows = primary_rows
        for k in claim.numbers.get("inversions", []):
            got = _patched_at(rows, k)
            out.append(f"K={k}: patching {', '.join(layer(i) for i in got)} made the member worse")
    elif claim.key in ("b", "c"):
        rows = {r["K"]: r for r in primary_rows}
        failed = claim.numbers.get("failed_K", [])
        ks = sorted(set(failed if isinstance(failed, list) else [k for v in failed.values() for k in v]))
        if ks and end:
            m = len(end)
            for k in ks[:4]:
                left = [i for i in range(m) if i not in set(rows.get(k, {}).get("patched") or [])]
                worst = sorted(left, key=lambda i: end[i])[:2]
                n = rows.get(k, {}).get("layers")
                out.append(
                    f"K={k} ({n} layers): {len(left)} student layer(s) remain; the least aligned: "
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
            rows = {r["K"]: r for r in curves[label(Curve("main", res.fixed))]}
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
    for name, run_path in runs.items():
        run = RunDir(run_path)
        if run.metrics.is_file():
            recs[name] = run.read_metrics()
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


def _dtype_line(res: DemoResults) -> str:
    dtype, check = res.eval_dtype, res.eval_dtype_check
    line = f"Every model is evaluated in {dtype}."
    if check:
        line += (
            f" Check: the teacher's perplexity on `{check['text']}` is {check['float32']:.3f} in float32 and "
            f"{check[dtype]:.3f} in {dtype} ({100 * check['relative_difference']:.2f}% apart)."
        )
    return line


def _wall_line(res: DemoResults) -> str:
    if res.runs == 1:
        return f"Wall time: {res.wall_s / 60:.1f} min in one run (every stage; see `results.json`)."
    return (
        f"Wall time: {res.wall_s / 60:.1f} min over {res.runs} runs (this one {res.this_run_s / 60:.1f} min; stages "
        "done by an earlier run count once; `timings.json` has every run's stages)."
    )


def _init_lines(res: DemoResults) -> list[str]:
    """The main student's init (strategy and kept teacher layers) and the recipe's reasons for it."""
    kept = ", ".join(str(j) for j in res.kept) or "?"
    lines = [f"Init: {res.init}; the student keeps teacher layers {kept}."]
    if res.recipe_notes:
        lines += ["", f"Why this recipe: {' '.join(res.recipe_notes.split())}"]
    return lines


def _size_table(res: DemoResults, curves: dict[str, Rows]) -> list[str]:
    """Per distinct size below the teacher: each primary-order family and naive / ShortGPT / LaCo, with the
    family's ratio to ShortGPT (the comparison issue 22 asks for)."""
    fams = [n for n in curves if n.endswith(f"({res.primary})") and curves[n]]
    if not fams:
        return []
    sizes = sorted({r["layers"] for n in fams for r in sized(curves[n], metric=METRIC)})
    by = {(n, r["layers"]): r for n in fams for r in sized(curves[n], metric=METRIC)}
    pruned = [b for b in ("shortgpt", "laco") if curves.get(b)]
    ratios = {n: size_ratios(curves[n], curves["shortgpt"]) for n in fams} if "shortgpt" in pruned else {}
    naive = {r["K"]: r for r in family(curves.get("naive", []), "naive", METRIC)}
    pr = {(b, r["layers"]): r[METRIC] for b in pruned for r in curves[b] if r.get("layers")}
    head = ["layers", "params", *fams, *(f"{n} / ShortGPT" for n in ratios), "naive", *pruned]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    main = label(Curve("main", res.primary))
    for n_layers in sizes:
        rows = [by.get((n, n_layers)) for n in fams]
        params = next((r["inference"] for r in rows if r and r.get("inference")), None)
        m = by.get((main, n_layers))
        nv = naive.get(m["K"]) if m else None
        cells = [str(n_layers), f"{params / 1e6:.1f}M" if params else ""]
        cells += [_fmt(r[METRIC]) if r else "" for r in rows]
        cells += [f"{ratios[n][n_layers]:.3f}" if n_layers in ratios[n] else "" for n in ratios]
        cells += [_fmt(nv[METRIC]) if nv else "", *(_fmt(pr.get((b, n_layers))) for b in pruned)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _variants_line(curves: dict[str, Rows]) -> list[str]:
    """Teacher-size variants of the K-indexed families, reported apart from the sizes."""
    out = []
    for name, rows in curves.items():
        v = teacher_size_variants(rows, metric=METRIC) if rows else []
        if v:
            vals = ", ".join(f"K={r['K']}: {_fmt(r[METRIC])}" for r in v)
            out.append(
                f"- {name}: {len(v)} teacher-size variant(s) (the teacher's parameters, not the teacher): {vals}"
            )
    return out


def _mixed_lines(res: DemoResults, curves_by_text: dict[str, dict[str, Rows]]) -> list[str]:
    """What the mixed-context term buys: its family against the one without it, per size, on every text."""
    with_, without = label(Curve("main", res.primary)), label(Curve("nomixed", res.primary))
    lines = []
    for lb, curves in curves_by_text.items():
        if not curves.get(without) or not curves.get("shortgpt"):
            continue
        a, b = (
            size_ratios(curves[with_], curves["shortgpt"]),
            size_ratios(curves[without], curves["shortgpt"]),
        )
        common = sorted(set(a) & set(b))
        if not common:
            continue
        ga, gb = (_geomean([r[k] for k in common]) for r in (a, b))
        wins = sum(a[k] < b[k] for k in common)
        below = (sum(a[k] < 1 for k in common), sum(b[k] < 1 for k in common))
        lines.append(
            f"- {lb}: with the term, {below[0]} of {len(common)} sizes below ShortGPT (geometric mean "
            f"{ga:.3f}× ShortGPT, worst {max(a.values()):.3f}); without it, {below[1]} ({gb:.3f}×, worst "
            f"{max(b.values()):.3f}); better with the term at {wins} of {len(common)} sizes"
        )
    return lines


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def write_report(res: DemoResults, out: Path) -> str:
    """Write ``report.md``, ``results.json``, ``family-TEXT.png``, ``training.png`` and ``command.txt``."""
    curves = {t.label: text_rows(res, t) for t in res.texts}
    claims = {lb: text_claims(res, c) for lb, c in curves.items()}
    for lb, c in curves.items():
        _plot(c, out / f"family-{lb}.png", f"{res.teacher} family on {lb}")
    _training_plot({n: Path(st.run_dir) for n, st in res.students.items()}, out / "training.png")
    lines = [
        *_student_lines(res),
        *_claim_lines(res, curves, claims),
        *_mixed_section(res, curves),
        *(line for t in res.texts for line in _text_section(res, t, curves[t.label])),
        "",
        "![training](training.png)",
        "",
    ]
    text = "\n".join(lines)
    record = _record(res, curves, claims)
    atomic_write_text(out / "results.json", json.dumps(record, indent=1, default=str) + "\n")
    atomic_write_text(out / "command.txt", res.command + "\n")
    atomic_write_text(out / "report.md", text)
    return text


def _student_lines(res: DemoResults) -> list[str]:
    """The report's title, machine and precision lines, the students' table and the init."""
    mach = res.machine
    lines = [
        f"# boomerang demo: {res.teacher}",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, native bf16: {', '.join(mach['native_bf16']) or 'none'}; "
        f"torch {mach['torch']}. {_wall_line(res)}",
        "",
        _dtype_line(res),
        "",
        "## Students",
        "",
        "| student | what | tokens | minutes | tokens/s | precision | validation ppl (student / teacher) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, st in res.students.items():
        sm = st.summary
        v = (sm.get("val_student") or {}).get("ppl")
        t = (sm.get("val_teacher") or {}).get("ppl")
        ratio = f" = {v / t:.2f}×" if v and t else ""
        lines.append(
            f"| {name} | {st.what} | {sm.get('tokens', 0):,} | {sm.get('seconds', 0) / 60:.1f} | "
            f"{sm.get('tokens_per_s', 0):.0f} | {(sm.get('precision') or '').split(' ')[0]} | "
            f"{_fmt(v)} / {_fmt(t)}{ratio} |"
        )
    main = res.students["main"].summary if "main" in res.students else {}
    vs, vt = (main.get("val_student") or {}).get("ppl"), (main.get("val_teacher") or {}).get("ppl")
    if vs and vt:
        lines += ["", f"The main student ends at **{vs / vt:.2f}×** the teacher's validation perplexity."]
    return [*lines, "", *_init_lines(res)]


def _claim_lines(
    res: DemoResults, curves: dict[str, dict[str, Rows]], claims: dict[str, list[Claim]]
) -> list[str]:
    """The claims table, one column per text, and the reasons for the failed ones."""
    texts = {t.label: t for t in res.texts}
    labels = list(curves)
    lines = [
        "",
        "## Claims",
        "",
        f"(a)–(c) on the main family in the `{res.primary}` order (declared before the run), judged per distinct "
        f"size: members the teacher's size are reported apart as teacher-size variants. (d) and (e) in the "
        f"recipe's fixed `{res.fixed}` order, where the random-init and no-cosine students were swept. Each cell: "
        "verdict and the numbers behind it.",
        "",
        "| claim | " + " | ".join(f"{lb} ({texts[lb].kind})" for lb in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for i, key in enumerate("abcde"):
        cells = [f"**{claims[lb][i].verdict}**: {claims[lb][i].detail}" for lb in labels]
        lines.append(f"| ({key}) {claims[labels[0]][i].title} | " + " | ".join(cells) + " |")
    why = [
        f"- ({c.key}) on {lb}: {r}" for lb in labels for c in claims[lb] for r in reasons(res, c, curves[lb])
    ]
    if why:
        lines += [
            "",
            "### Why the failed claims failed (from `boomerang analyze` of the main student)",
            "",
            *why,
        ]
    return lines


def _mixed_section(res: DemoResults, curves: dict[str, dict[str, Rows]]) -> list[str]:
    """The main family against the no-mixed-context ablation's, per size (nothing without that ablation)."""
    mixed = _mixed_lines(res, curves)
    if not mixed:
        return []
    return [
        "",
        "## What the mixed-context term buys",
        "",
        f"The `nomixed` student is the main recipe without `loss.mixed`, on the same budget, swept in the same "
        f"`{res.primary}` order (its own, computed the same way). Per size below the teacher, each family's "
        "perplexity over ShortGPT's at the same parameters:",
        "",
        *mixed,
    ]


def _text_section(res: DemoResults, text: TextResult, rows: dict[str, Rows]) -> list[str]:
    """One evaluated text: its slice, the table by distinct size, every member by K and the plot."""
    lb = text.label
    sw = text.sweeps.get(Curve("main", res.primary))
    sl = sw["slice"][0] if sw else {"name": "?", "offset": 0, "tokens": 0}
    variants = _variants_line(rows)
    return [
        "",
        f"## {lb}: {text.kind}",
        "",
        f"Slice: `{sl['name']}`, offset {sl['offset']}, {sl['tokens']:,} tokens (context {res.context}, stride "
        f"{res.stride}). By distinct size: each `{res.primary}` family, its ratio to ShortGPT, naive dropping of "
        "the main member's missing teacher layers, and the pruning baselines:",
        "",
        *_size_table(res, rows),
        "",
        "Every swept member, by K (in a `size-aware` order member K is the K-th size):",
        "",
        *_family_table(rows),
        *(["", *variants] if variants else []),
        "",
        f"![family on {lb}](family-{lb}.png)",
    ]


def _record(
    res: DemoResults, curves: dict[str, dict[str, Rows]], claims: dict[str, list[Claim]]
) -> dict[str, Any]:
    """``results.json``: the settings, every student's summary, the curves and the claims."""
    texts = {t.label: t for t in res.texts}
    main = Curve("main", res.primary)
    return {
        "teacher": res.teacher,
        "settings": res.settings,
        "corpus": res.corpus,
        "texts": {lb: {"source": t.source, "kind": t.kind} for lb, t in texts.items()},
        "machine": res.machine,
        "timings_s": {k: round(v, 1) for k, v in res.timings.items()},
        "timings_earlier_runs_s": res.history,
        "wall_s": round(res.wall_s, 1),
        "students": {n: st.summary for n, st in res.students.items()},
        "analysis": res.analysis,
        "orders": res.orders,
        "claims": {lb: [c.as_dict() for c in cs] for lb, cs in claims.items()},
        "curves": curves,
        "slices": {lb: t.sweeps[main]["slice"] for lb, t in texts.items() if main in t.sweeps},
        "command": res.command,
    }
