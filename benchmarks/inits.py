"""Init strategies compared at the same budget, on an out-of-domain text, in every patch order (issue 17).

Each student is distilled from the same teacher with the same recipe and budget; only the kept layers differ. This
script distils any that are missing (``boomerang init --layers`` + ``boomerang distill``), then sweeps each one on
``--text`` (default ``builtin:hamlet``: a play, a kind of text absent from the training corpus) in every order of
``--orders`` with ``boomerang sweep``, and scores each family with the demo's claim checks
(``boomerang.pipelines.claims``): student perplexity, inversions, excess total variation of log-perplexity, and how
many intermediate members (more layers than the student, fewer than the teacher) are below naive dropping and below ShortGPT/LaCo at the same parameter count.

    python benchmarks/inits.py --work runs/inits      # -> benchmarks/results/inits.json (+ a markdown table)

Data-driven orders (``greedy-kl``) are chosen on ``--calibration-samples`` x 256 training tokens, never on the
evaluated text. Budget on 2 cores (bf16): about 13 min of distillation per student, then 26 min for all 15
sweeps with ``--tokens 2048 --naive`` (8 min for the first, which also builds the ShortGPT and LaCo baselines, 1 min
for each other).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TEACHER_LAYERS = 30
INITS = {  # the kept teacher layers of each 16-layer init of the 30-layer SmolLM2 teacher
    "shortgpt-cap3": "0,1,2,5,8,10,13,16,19,20,21,23,24,27,28,29",  # shortgpt --max-block 3 (the demo's default)
    "every": "0,2,4,6,8,10,12,14,16,18,20,22,24,26,28,29",  # every other layer + the last two (the old default)
    "llama": "0,1,3,5,7,9,11,13,15,17,19,21,23,25,27,29",  # the paper's Llama recipe (Eq. 3: first two kept)
    "similarity": "0,1,3,5,7,9,11,13,16,19,20,22,24,26,28,29",  # init --strategy similarity --size 16
    "shortgpt": "0,1,2,8,9,10,11,19,20,21,22,23,24,27,28,29",  # init --strategy shortgpt --size 16
}


def boomerang(*args: str, log: Path) -> None:
    exe = Path(sys.executable).with_name("boomerang")
    with log.open("w") as f:
        subprocess.run([str(exe), *args], check=True, stdout=f, stderr=subprocess.STDOUT)


def distil(name: str, work: Path, args: argparse.Namespace) -> Path:
    d = work / name
    student = d / "run" / "student"
    if (student / "config.json").is_file():
        return student
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "init" / "config.json").is_file():
        boomerang("init", "--teacher", "smollm2-offline", "--layers", INITS[name], "--out", str(d / "init"),
                  "--force", log=d / "init.log")  # fmt: skip
    boomerang("distill", "smollm2-cpu", "--student", str(d / "init"), f"data.train={args.train}",
              f"data.eval={args.validation}", f"train.max_tokens={args.budget}", "checkpoint.every=0",
              "eval.every=0", "eval.blocks=16", "log.progress=false", *args.set, "--out", str(d / "run"),
              "--force", log=d / "distill.log")  # fmt: skip
    return student


def sweep(student: Path, order: str, out: Path, args: argparse.Namespace, baselines: str) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "results.json").is_file():
        extra = ["--baselines", baselines] if baselines else []
        boomerang("sweep", "--teacher", "smollm2-offline", "--student", str(student), "--data", args.text,
                  "--order", order, "--max-tokens", str(args.tokens), "--context", "512", "--stride", "384",
                  "--calibration", args.train, "--calibration-samples", str(args.calibration_samples),
                  "--dtype", "bfloat16", "--out", str(out), "--force", "--restart", *extra,
                  log=out.with_suffix(".log"))  # fmt: skip
    return json.loads((out / "results.json").read_text())


def score(rows: list[dict], pruned: list[dict]) -> dict:
    from boomerang.pipelines import claims

    fam = claims.family(rows)
    vals = [r["ppl"] for r in fam]
    a = claims.check_monotone(rows)
    b = claims.check_naive(rows)
    c = claims.check_pruning(rows + pruned)
    # intermediate sizes: members with more layers than the student and fewer than the teacher
    inter = {r["K"] for r in fam if r["K"] > 0 and r["layers"] < fam[-1]["layers"]}
    has_naive = any(r["method"] == "naive" for r in rows)
    naive_bad = set(b.numbers.get("failed_K", []))
    below = {
        m: sum(q < 1 for k, q in c.numbers["ratios"].get(m, {}).items() if k in inter)
        for m in ("shortgpt", "laco")
    }
    # geometric mean and worst of (member / ShortGPT at the same parameters) over the student and the
    # intermediate members: one number per family however many sizes it reaches
    r_sg = [q for k, q in c.numbers["ratios"].get("shortgpt", {}).items() if k in inter | {0}]
    return {
        "shortgpt_ratio_gmean": math.exp(sum(math.log(q) for q in r_sg) / len(r_sg)) if r_sg else None,
        "shortgpt_ratio_worst": max(r_sg) if r_sg else None,
        "student_ppl": vals[0],
        "teacher_ppl": vals[-1],
        "mean_log_ppl": sum(math.log(v) for v in vals) / len(vals),
        "inversions": len(a.numbers.get("inversions", [])),
        "excess_tv": a.numbers.get("excess_tv"),
        "intermediate": len(inter),
        "below_naive": len(inter - naive_bad) if has_naive else None,
        "below_shortgpt": below["shortgpt"],
        "below_laco": below["laco"],
        "sizes": sorted({r["layers"] for r in fam}),
        "curve": [(r["K"], r["layers"], round(r["ppl"], 2)) for r in fam],
    }


def main() -> None:
    from boomerang.data import shared_corpora

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/inits"), help="students and sweeps (resumable)")
    ap.add_argument("--inits", default=",".join(INITS), help="which inits, comma-separated")
    ap.add_argument("--budget", type=int, default=200_000, help="distillation tokens per student")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for every student"
    )
    ap.add_argument("--orders", default="first,last,greedy-kl")
    ap.add_argument("--text", default="builtin:hamlet", help="evaluation text (out of domain by default)")
    ap.add_argument("--tokens", type=int, default=4096, help="evaluated tokens of --text")
    ap.add_argument("--calibration-samples", type=int, default=16, help="x 256 training tokens (greedy-kl)")
    ap.add_argument(
        "--naive", action="store_true", help="also naive dropping in every sweep (twice the time)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "inits.json")
    args = ap.parse_args()
    root = shared_corpora()
    args.train, args.validation = str(root / "train"), str(root / "validation")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = [n for n in args.inits.split(",") if n]
    unknown = [n for n in names if n not in INITS]
    if unknown:
        ap.error(f"unknown init(s) {unknown}; choose from {', '.join(INITS)}")
    t0 = time.perf_counter()
    students = {n: distil(n, args.work, args) for n in names}
    # every sweep first (each is cached under --work, so an interrupted run resumes), then the scores
    swept: dict[str, dict[str, list[dict]]] = {}
    # (method, layers) -> row: the union over the sweeps that have them
    pruned: dict[tuple[str, int], dict] = {}
    seconds: dict[str, float] = {}
    for n in names:
        swept[n] = {}
        for order in args.orders.split(","):
            # the pruning baselines once; naive members depend on the order (and double a sweep's cost)
            base = ",".join(
                [*(["shortgpt", "laco"] if not pruned else []), *(["naive"] if args.naive else [])]
            )
            out = args.work / "sweeps" / f"{n}-{order}"
            res = sweep(students[n], order, out, args, base)
            seconds[f"{n}-{order}"] = res.get("seconds_this_run")
            swept[n][order] = rows = res["rows"]
            for r in rows:
                # LaCo reaches only some sizes
                if r["method"] in ("shortgpt", "laco") and r["ppl"] is not None:
                    pruned.setdefault((r["method"], r["layers"]), r)
        print(f"{n}: swept ({time.perf_counter() - t0:.0f} s)", flush=True)
    base_rows = sorted(pruned.values(), key=lambda r: (r["method"], r["layers"]))
    result: dict = {"setup": {k: str(v) for k, v in vars(args).items()}, "inits": {}}
    for n in names:
        summary = json.loads((students[n].parent / "summary.json").read_text())
        result["inits"][n] = {
            "layers": INITS[n],
            "tokens": summary["tokens"],
            "val_ppl": summary["val_student"]["ppl"],
            "val_teacher_ppl": summary["val_teacher"]["ppl"],
            "orders": {
                order: score([r for r in rows if r["method"] in ("boomerang", "naive")], base_rows)
                for order, rows in swept[n].items()
            },
        }
    result["pruned"] = [(r["method"], r["layers"], round(r["ppl"], 2)) for r in base_rows]
    result["sweep_seconds"] = seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


def table(result: dict) -> str:
    lines = [
        "| init | val ppl | order | 16-layer ppl | sizes | inversions | excess TV | below naive | below ShortGPT "
        "| below LaCo | vs ShortGPT: geo-mean, worst |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, e in result["inits"].items():
        for order, s in e["orders"].items():
            m = s["intermediate"]
            naive = "–" if s["below_naive"] is None else f"{s['below_naive']}/{m}"
            lines.append(
                f"| {n} | {e['val_ppl']:.1f} | {order} | {s['student_ppl']:.1f} | {len(s['sizes'])} | "
                f"{s['inversions']} | {s['excess_tv']:.3f} | {naive} | {s['below_shortgpt']}/{m} | "
                f"{s['below_laco']}/{m} | {s['shortgpt_ratio_gmean']:.3f}, {s['shortgpt_ratio_worst']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
