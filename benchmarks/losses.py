"""Which loss trains student layers for the teacher's context? (issue 22: the teacher- and mixed-context terms)

Large family members use student layers among teacher layers, but the paper's loss trains them only in the
student's own context. Students are distilled from one init (``--init``; by default ShortGPT's with blocks of at
most 3, the demo's until issue 22), on the same data order, seed and budget (the demo's: 163,840 tokens):

* ``cos``: the paper's loss (CE + KL + cosine), ``loss.mixed=0``;
* ``ctx``: plus the teacher-context term ``loss.ctx`` (each student layer also run on the teacher's hidden state
  entering its block, pulled towards the teacher's block end), ``loss.mixed=0``;
* ``mixed``: plus the mixed-context term ``loss.mixed=1`` (each micro-batch also trains one random family member,
  its student layers among teacher blocks), members drawn by count (``loss.mixed_draw=count``);
* ``mixed-size``: the same term with its members drawn uniformly by size (``loss.mixed_draw=size``), so that
  the sizes just below the teacher are trained as often as the others: the ``smollm2-cpu`` recipe's loss;
* ``kl``, ``kl-only``: that loss with ``loss.kl=1`` (10x the paper's KL weight), and with ``loss.ce=0`` too;
* ``kl-only-b4``, ``kl-only-b2``: KL alone with 4 and 2 sequences per optimizer step instead of 8, so 2x and 4x
  the steps on the same tokens.

For each it reports validation perplexity (Pride and Prejudice), the training speed, and, on the first ``--tokens``
tokens of two out-of-domain texts, beside ShortGPT at the same number of layers:

* the whole family in the ``size-aware`` order (as the demo computes it: the best member of every distinct size by
  KL on 4 x 256 training tokens), one member per size from the student to the teacher;
* every "alone" member: one multi-layer student block among teacher layers (every other block patched back), the
  situation of the members just below the teacher's size.

    python benchmarks/losses.py                         # -> benchmarks/results/losses.json
    python benchmarks/losses.py --init 0,1,2,5,8,10,13,15,18,20,21,23,24,27,28,29 --variants mixed \
        --work runs/nested-dp --out benchmarks/results/losses-nested-dp.json   # the init `--isolate 1` gives
    python benchmarks/losses.py --init 0,1,2,5,8,10,13,15,16,19,20,23,24,27,28,29 --variants mixed \
        --work runs/nested --out benchmarks/results/losses-nested.json   # a hand-made variant (15 kept, 21 dropped)

Students are kept in ``--work`` (shared with ``benchmarks/cosine_budget.py``, whose ``cos`` student at the demo's
budget with ``loss.mixed=0`` is this one's ``cos``) and reused. Nothing here is tuned on the evaluated texts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosine_budget import KEPT, RESULTS, boomerang, distil

VARIANTS = {
    "cos": ["loss.mixed=0"],
    "ctx": ["loss.mixed=0", "loss.ctx=0.5"],
    "mixed": ["loss.mixed=1.0", "loss.mixed_draw=count"],  # members drawn by count (the draw before `size`)
    "mixed-size": ["loss.mixed=1.0", "loss.mixed_draw=size"],  # members drawn uniformly by size
    # the recipe's loss with 10x the KL weight, and with KL alone: does matching the teacher's whole distribution
    # rather than the training text's tokens keep the student closer to the teacher out of domain?
    "kl": ["loss.mixed=1.0", "loss.mixed_draw=size", "loss.kl=1.0"],
    "kl-only": ["loss.mixed=1.0", "loss.mixed_draw=size", "loss.kl=1.0", "loss.ce=0"],
    # KL alone with 2x and 4x the optimizer steps on the same tokens (4 and 2 sequences per step, not 8): the demo's
    # budget is only 40 steps of 8 sequences
    "kl-only-b4": [
        "loss.mixed=1.0",
        "loss.mixed_draw=size",
        "loss.kl=1.0",
        "loss.ce=0",
        "train.batch_size=4",
    ],
    "kl-only-b2": [
        "loss.mixed=1.0",
        "loss.mixed_draw=size",
        "loss.kl=1.0",
        "loss.ce=0",
        "train.batch_size=2",
    ],
}
TEXTS = ("builtin:hamlet", "builtin:devils-dictionary")


def measure(run: Path, args: argparse.Namespace, shortgpt: dict[str, dict[int, float]]) -> dict:
    import torch

    from boomerang.analysis.baselines import BaselineCache, prune_to
    from boomerang.analysis.orders import compute_order
    from boomerang.data import calibration_ids
    from boomerang.evaluate.perplexity import perplexity
    from boomerang.family import Family, patch
    from boomerang.io.loading import load_pair, load_tokenizer
    from boomerang.io.offline import offline_teacher
    from boomerang.io.sidecar import student_layer_map

    teacher_dir = offline_teacher()
    tok = load_tokenizer(teacher_dir)
    teacher, student = load_pair(teacher_dir, run / "student", dtype="bfloat16")
    layer_map = student_layer_map(student)
    cache = BaselineCache()  # ShortGPT's block influence, measured once for every size

    def ppl(model: torch.nn.Module, text: str) -> float:
        return perplexity(model, text, tok, context=512, stride=384, max_tokens=args.tokens).value

    def shortgpt_ppl(layers: int, text: str) -> float:
        if layers not in shortgpt[text]:
            calib = calibration_ids(args.train, tok, n=16, length=256)
            pruned = (
                teacher
                if layers == layer_map.n_teacher
                else prune_to(teacher, "shortgpt", num_layers=layers, calibration=calib, cache=cache)
            )
            shortgpt[text][layers] = ppl(pruned, text)
        return shortgpt[text][layers]

    sizes = {}
    with torch.no_grad():
        ids = calibration_ids(args.train, tok, n=16, length=256)
        order = compute_order("size-aware", teacher, student, layer_map, ids, max_texts=4)
        fam = Family(teacher, student, layer_map, order=order)
        for k in fam.ks:
            member = fam.member(k)
            layers = member.config.num_hidden_layers
            row = {"K": k, "patched": list(order.subsets[k])}
            for text in TEXTS:
                p, sg = ppl(member, text), shortgpt_ppl(layers, text)
                row[text] = {"ppl": p, "shortgpt": sg, "ratio": p / sg}
            sizes[layers] = row
            fam.clear()

    alone = {}
    with torch.no_grad():
        for i in range(layer_map.n_student):
            block = layer_map.block(i)
            if len(block) == 1:
                continue  # a single-layer block alone is a teacher-size variant, not a smaller model
            layers = layer_map.n_teacher - len(block) + 1
            member = patch(teacher, student, layer_map, patched=set(range(layer_map.n_student)) - {i})
            row = {"layers": layers}
            for text in TEXTS:
                p, sg = ppl(member, text), shortgpt_ppl(layers, text)
                row[text] = {"ppl": p, "shortgpt": sg, "ratio": p / sg}
            alone[f"[{block[0]},{block[-1] + 1})"] = row
    return {"sizes": sizes, "alone": alone}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/cosine-budget"))
    ap.add_argument("--budget", type=int, default=163840, help="distillation tokens per student")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {','.join(VARIANTS)}")
    ap.add_argument("--tokens", type=int, default=2048, help="evaluated tokens of each text")
    ap.add_argument("--train", default="../shared/data/corpora/train")
    ap.add_argument("--validation", default="../shared/data/corpora/validation")
    ap.add_argument(
        "--init", default=KEPT, help="the student's kept teacher layers (default: the demo's init)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "losses.json")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for every variant"
    )
    args = ap.parse_args()
    args.overrides = list(args.set)
    names = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in names if v not in VARIANTS]:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    if (args.work / "init" / "config.json").is_file():
        from boomerang.io.sidecar import read_layer_map

        cached = ",".join(map(str, read_layer_map(args.work / "init").kept))
        if cached != args.init:
            ap.error(f"{args.work} holds students of init {cached}, not {args.init}; pass another --work")
    else:
        boomerang("init", "--teacher", "smollm2-offline", "--layers", args.init, "--out", str(args.work / "init"),
                  "--force", log=args.work / "init.log")  # fmt: skip
    shortgpt: dict[str, dict[int, float]] = {t: {} for t in TEXTS}
    result: dict = {
        "init": args.init,
        "budget": args.budget,
        "tokens": args.tokens,
        "set": args.overrides,
        "variants": {},
    }
    for name in names:
        run, val = distil(args.work, name, args.budget, VARIANTS[name], args)
        summary = json.loads((run / "summary.json").read_text())
        measured = measure(run, args, shortgpt)
        result["variants"][name] = {
            "overrides": VARIANTS[name],
            "val_ppl": val,
            "tokens_per_s": summary.get("tokens_per_s"),
            **measured,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{name:6s} val {val:6.2f} | {summary.get('tokens_per_s')} tok/s", flush=True)
        for what, rows in (("size", measured["sizes"]), ("alone", measured["alone"])):
            cells = " ".join(
                f"{key}:{row['builtin:hamlet']['ratio']:.2f}/{row['builtin:devils-dictionary']['ratio']:.2f}"
                for key, row in rows.items()
            )
            print(f"    {what} vs ShortGPT (Hamlet/Devil's): {cells}", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
