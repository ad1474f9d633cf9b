"""Benchmark: the polynomial ``shortest-path`` order against ``greedy-kl`` (KLPatch), ``last``/``first`` and
exhaustive search (``optimal``).

(a) The distilled 16-layer SmolLM2 student (``--student``, a COPY of a distilled student directory) with the
    offline SmolLM2-135M-Instruct teacher. ``greedy-kl`` and ``shortest-path`` are computed on ``--texts`` blocks of
    ``--length`` tokens from the training corpus (seed 0), each ``--repeats`` times, alternating (median wall time
    reported; the orders must come out the same every time). For every order (also ``last`` and ``first``) and
    every size K: the KL(teacher || member) on the calibration blocks, and the held-out token perplexity of the
    member on the first ``--ppl-tokens`` tokens of ``--ppl-text`` (default ``builtin:hamlet``: a play, a kind of
    text absent from the training corpus; context ``--context``, stride half of it). Exhaustive search over 2^16 subsets is not feasible here.
(b) Where exhaustive search is feasible: a 9-layer student (``LayerMap.every(30, every=4)``, teacher layers copied,
    not distilled; 512 subsets). ``optimal``, ``greedy-kl`` and ``shortest-path`` on the same calibration blocks:
    time, KL per size and its gap to the optimum, held-out perplexity per size.

    python benchmarks/orders_shortest_path.py --student COPY_OF_A_16_LAYER_STUDENT
        # -> results/orders_shortest_path.json (about an hour on 2 idle cores)
    python benchmarks/orders_shortest_path.py --smoke     # seconds: tiny random models, one repeat
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_STUDENT = "runs/demo/distill/student"  # the demo's 16-layer student (pass a copy with --student)


def corpora() -> tuple[str, str]:
    from boomerang.data import shared_corpora

    root = shared_corpora()
    return str(root / "train"), str(root / "validation")


class HeldOut:
    """Held-out token perplexity of family members, cached by patched set (equal members are scored once)."""

    def __init__(
        self, teacher, student, layer_map, tokenizer, source, *, context: int, tokens: int, batch: int
    ):
        self.args = (teacher, student, layer_map)
        self.tokenizer, self.source = tokenizer, source
        self.opts = dict(context=context, stride=context // 2, max_tokens=tokens, batch_size=batch)
        self.cache: dict[tuple[int, ...], float] = {}

    def __call__(self, subset) -> float:
        import boomerang as B
        from boomerang.evaluate.perplexity import perplexity

        key = tuple(sorted(subset))
        if key not in self.cache:
            model = B.patch(*self.args, key)
            self.cache[key] = perplexity(model, self.source, self.tokenizer, **self.opts).value
        return self.cache[key]

    def curve(self, order) -> list[float]:
        return [self(order.patched(k)) for k in range(order.n_student + 1)]


def compare(orders: dict, reference: str) -> dict:
    """Per-size comparison of every order's KL with one reference order's."""
    ref = orders[reference]["kl"]
    out = {}
    for name, o in orders.items():
        if name == reference:
            continue
        gaps = [a - b for a, b in zip(o["kl"], ref, strict=True)]
        out[f"{name}_vs_{reference}"] = {
            "kl_gap": gaps,
            "sizes_lower": sum(g < -1e-9 for g in gaps),
            "sizes_equal": sum(abs(g) <= 1e-9 for g in gaps),
            "sizes_higher": sum(g > 1e-9 for g in gaps),
            "mean_kl_gap": statistics.fmean(gaps),
        }
    return out


def run_orders(teacher, student, lm, ids, held_out, *, repeats: int, batch: int, exhaustive: bool) -> dict:
    from boomerang.analysis.orders import compute_order, order_scores
    from boomerang.core.plan import PatchOrder

    names = ["greedy-kl", "shortest-path"] + (["optimal"] if exhaustive else [])
    computed, seconds = {}, {n: [] for n in names}
    for r in range(repeats):  # alternate, so that load drifts hit every order alike
        for name in names:
            if name == "optimal" and r > 0:
                continue  # one exhaustive run is enough (minutes)
            t0 = time.perf_counter()
            po = compute_order(
                name, teacher, student, lm, ids, batch_size=batch, max_layers=16, max_texts=None
            )
            seconds[name].append(time.perf_counter() - t0)
            if name in computed and computed[name].subsets != po.subsets:
                raise RuntimeError(f"{name} gave a different order on repeat {r}")
            computed[name] = po
            print(f"repeat {r}: {name} {seconds[name][-1]:.1f}s", flush=True)
    out = {}
    for name in ("last", "first", *names):
        po = computed.get(name) or PatchOrder.builtin(name, lm.n_student)
        kl = po.info.get("kl") or order_scores(teacher, student, lm, po, ids, batch_size=batch)
        row = {"subsets": [list(s) for s in po.subsets], "nested": po.sequence is not None, "kl": kl}
        if name in seconds:
            row.update(seconds=seconds[name], median_seconds=statistics.median(seconds[name]))
            row["evaluations"] = po.info["evaluations"]
        if name == "shortest-path":
            row.update(
                {k: po.info[k] for k in ("chosen_by", "models_scored", "dp_relaxations", "surrogates")}
            )
        row["heldout_ppl"] = held_out.curve(po)
        out[name] = row
        print(f"{name}: KL {[round(v, 4) for v in kl]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default=DEFAULT_STUDENT, help="a copy of the distilled 16-layer student")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny random models, one repeat (a seconds-long check)"
    )
    ap.add_argument("--texts", type=int, default=4, help="calibration blocks (KL_TEXTS)")
    ap.add_argument("--length", type=int, default=128, help="tokens per calibration block")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ppl-tokens", type=int, default=8192, help="held-out tokens per member")
    ap.add_argument("--context", type=int, default=512, help="held-out perplexity window")
    ap.add_argument("--ppl-text", default="builtin:hamlet", help="held-out text (out of domain by default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-exhaustive", action="store_true", help="skip part (b)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import boomerang as B
    from boomerang.core.arch import n_layers
    from boomerang.core.layermap import student_section
    from boomerang.data import calibration_ids
    from boomerang.io.sidecar import student_layer_map

    if args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import make_student, make_teacher, tiny_corpus, tiny_tokenizer

        teacher = make_teacher("llama", 12)
        lm = B.LayerMap.every(12)
        student = make_student(teacher, lm, scale=0.1)
        tok = tiny_tokenizer()
        train = str(tiny_corpus(Path("/tmp/boomerang-sp-smoke/train"), 20, seed=0))
        valid = str(tiny_corpus(Path("/tmp/boomerang-sp-smoke/valid"), 5, seed=1))
        args.repeats, args.length, args.ppl_tokens, args.context = 1, 32, 256, 64
        setup = {
            "teacher": "tiny random llama, 12 layers",
            "student": "LayerMap.every(12), perturbed (scale 0.1)",
        }
    else:
        path = B.offline_teacher()
        teacher = B.load_model(path, dtype="float32")
        student = B.load_model(args.student, dtype="float32")
        lm = student_layer_map(student)
        tok = B.load_tokenizer(path)
        train, _ = corpora()
        valid = args.ppl_text
        summary = Path(args.student).parent / "summary.json"
        setup = {
            "teacher": "SmolLM2-135M-Instruct (30 layers, float32, offline)",
            "student": f"{args.student}: {lm.n_student} layers {list(lm.kept)}",
            "student_run": json.loads(summary.read_text()) if summary.is_file() else None,
        }
    teacher.eval(), student.eval()
    ids = calibration_ids(train, tok, n=args.texts, length=args.length, seed=0)
    setup.update(
        calibration=f"{args.texts} blocks x {args.length} tokens of the training corpus (seed 0)",
        heldout=f"token perplexity on the first {args.ppl_tokens} tokens of {valid}, "
        f"context {args.context}, stride {args.context // 2}",
        repeats=args.repeats,
        batch_size=args.batch_size,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {platform.processor() or 'cpu'}",
    )
    ppl = dict(context=args.context, tokens=args.ppl_tokens, batch=args.batch_size)
    result: dict = {"setup": setup}

    held = HeldOut(teacher, student, lm, tok, valid, **ppl)
    orders = run_orders(
        teacher, student, lm, ids, held, repeats=args.repeats, batch=args.batch_size, exhaustive=False
    )
    result["distilled"] = {
        "n_student": lm.n_student,
        "orders": orders,
        "compare": compare(orders, "greedy-kl"),
    }
    sp, gk = orders["shortest-path"], orders["greedy-kl"]
    result["distilled"]["time_ratio_shortest_path_vs_greedy"] = sp["median_seconds"] / gk["median_seconds"]

    if not args.no_exhaustive:
        n = n_layers(teacher.config)
        small = B.LayerMap.every(n, every=4)
        s_small = B.assemble(
            {"teacher": teacher}, [("teacher", j) for j in small.kept], "teacher", "teacher",
            section=student_section(small), copy=True,
        ).eval()  # fmt: skip
        held_small = HeldOut(teacher, s_small, small, tok, valid, **ppl)
        ex = run_orders(
            teacher, s_small, small, ids, held_small, repeats=1, batch=args.batch_size, exhaustive=True
        )
        result["exhaustive"] = {
            "student": f"LayerMap.every({n}, every=4): {small.n_student} layers {list(small.kept)}, teacher layers "
            "copied, not distilled",
            "orders": ex,
            "compare": compare(ex, "optimal"),
        }

    out = args.out or RESULTS / (
        "orders_shortest_path_smoke.json" if args.smoke else "orders_shortest_path.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["distilled"]["compare"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
