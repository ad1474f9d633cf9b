"""Claim (e) against the budget: what the cosine term changes, at the demo's budget and at larger ones (issue 22).

For each budget, two students are distilled from the same init, data order and seed with the demo's recipe: with
the cosine term (the recipe) and without it (``loss.cos=0``). For each student it measures

* the per-layer alignment that the cosine term trains: the mean per-token cosine between student layer i's output
  and its teacher block's end (``boomerang analyze``'s ``block_end_similarity``, on training-set calibration
  blocks), in the student's own context;
* validation perplexity (Pride and Prejudice, the recipe's held-out blocks);
* the family's smoothness in the recipe's fixed order (``first``), as claim (e) judges it: inversions (members at
  least 1% worse than the one before) and excess total variation of log-perplexity, on ``--text``.

    python benchmarks/cosine_budget.py --budgets 163840,655360 loss.mixed=0   # -> results/cosine_budget.json

(``loss.mixed=0``: the cosine term's own effect, without the mixed-context term, and 1.8x faster.)

Students are kept in ``--work`` and reused (resumable). Nothing here is tuned on the evaluated text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEPT = "0,1,2,5,8,10,13,16,19,20,21,23,24,27,28,29"  # shortgpt, blocks <= 3 (the demo's init until issue 22)


def boomerang(*args: str, log: Path) -> None:
    exe = Path(sys.executable).with_name("boomerang")
    with log.open("w") as f:
        subprocess.run([str(exe), *args], check=True, stdout=f, stderr=subprocess.STDOUT)


def distil(
    work: Path, name: str, budget: int, extra: list[str], args: argparse.Namespace
) -> tuple[Path, float]:
    run = work / f"{name}-{budget}"
    if not (run / "student" / "config.json").is_file():
        t0 = time.time()
        boomerang("distill", "smollm2-cpu", "--student", str(work / "init"), f"data.train={args.train}",
                  f"data.eval={args.validation}", f"train.max_tokens={budget}", "checkpoint.every=0",
                  "eval.every=0", "eval.blocks=16", "log.progress=false", *args.overrides, *extra, "--out", str(run),
                  "--force",
                  log=work / f"{name}-{budget}.log")  # fmt: skip
        print(f"{name} at {budget:,} tokens: {time.time() - t0:.0f} s", flush=True)
    return run, json.loads((run / "summary.json").read_text())["val_student"]["ppl"]


def measure(run: Path, args: argparse.Namespace) -> dict:
    import torch

    from boomerang.analysis.analyze import analyze
    from boomerang.data import calibration_ids
    from boomerang.evaluate.perplexity import perplexity
    from boomerang.family import Family
    from boomerang.io.loading import load_pair, load_tokenizer
    from boomerang.io.offline import offline_teacher
    from boomerang.io.sidecar import student_layer_map
    from boomerang.pipelines.claims import excess_variation, inversions

    teacher_dir = offline_teacher()
    tok = load_tokenizer(teacher_dir)
    teacher, student = load_pair(teacher_dir, run / "student", dtype="bfloat16")
    lm = student_layer_map(student)
    ids = calibration_ids(args.train, tok, n=8, length=256)
    with torch.no_grad():
        summary = analyze(teacher, student, lm, ids, run / "analysis", orders=("first",), force=True)
        fam = Family(teacher, student, lm, order="first")
        texts = {}
        for text in args.text.split(","):
            ppl = [
                perplexity(fam.member(k), text, tok, context=512, stride=384, max_tokens=args.tokens).value
                for k in fam.ks
            ]
            texts[text] = {
                "first_order_ppl": ppl,
                "inversions": len(inversions(ppl, 0.01)),
                "excess_tv": excess_variation(ppl),
            }
    return {
        "block_end_similarity": summary["block_end_similarity"],
        "mean_block_end_similarity": sum(summary["block_end_similarity"]) / lm.n_student,
        **texts[args.text.split(",")[0]],  # the first text's, at the top level
        "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/cosine-budget"))
    ap.add_argument(
        "--budgets", default="163840,655360", help="distillation tokens per student, comma-separated"
    )
    ap.add_argument(
        "--text",
        default="../shared/data/corpora/validation,builtin:hamlet,builtin:devils-dictionary",
        help="where smoothness is measured (comma-separated; the first is also reported at the top level)",
    )
    ap.add_argument("--tokens", type=int, default=2048, help="evaluated tokens of --text")
    ap.add_argument("--train", default="../shared/data/corpora/train")
    ap.add_argument("--validation", default="../shared/data/corpora/validation")
    ap.add_argument("--out", type=Path, default=RESULTS / "cosine_budget.json")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every student, e.g. loss.mixed=0")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "init" / "config.json").is_file():
        boomerang("init", "--teacher", "smollm2-offline", "--layers", KEPT, "--out", str(args.work / "init"),
                  "--force", log=args.work / "init.log")  # fmt: skip
    result: dict = {
        "init": KEPT,
        "overrides": args.overrides,
        "text": args.text,
        "tokens": args.tokens,
        "budgets": {},
    }
    for budget in (int(b) for b in args.budgets.split(",")):
        row = {}
        for name, extra in (("cos", []), ("nocos", ["loss.cos=0"])):
            run, val = distil(args.work, name, budget, extra, args)
            row[name] = {"val_ppl": val, **measure(run, args)}
        result["budgets"][str(budget)] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        c, n = row["cos"], row["nocos"]
        print(
            f"{budget:>9,} tokens | mean block-end cos {c['mean_block_end_similarity']:.3f} vs "
            f"{n['mean_block_end_similarity']:.3f} | val ppl {c['val_ppl']:.2f} vs {n['val_ppl']:.2f} | "
            f"inversions {c['inversions']} vs {n['inversions']} | excess TV {c['excess_tv']:.3f} vs "
            f"{n['excess_tv']:.3f}",
            flush=True,
        )
        for text in c["texts"]:
            ct, nt = c["texts"][text], n["texts"][text]
            print(f"    {text}: inversions {ct['inversions']} vs {nt['inversions']} | excess TV "
                  f"{ct['excess_tv']:.3f} vs {nt['excess_tv']:.3f}", flush=True)  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
