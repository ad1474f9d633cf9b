"""Benchmark: a sweep's ShortGPT models evaluated alone (before) or sharing prefixes with the family (now).

ShortGPT only chooses teacher layers, so its models are keyed like naive dropping and evaluated in the family's
group: every prefix of teacher layers they share with the teacher, the naive models, each other or a member runs
once per batch. Before, each ran whole in a group of its own. On the real SmolLM2-135M-Instruct teacher with the
demo's 16-layer init (as ``order_size_aware.py``: perturbed by 0.2% noise; distillation does not change the cost),
in bf16, the demo's evaluation of one text (the first 4,096 tokens of *Hamlet*, windows of 512 moving by 384) in
the recipe's ``first`` order beside naive dropping and ShortGPT, alternating ``--repeats`` times: the sweep's wall
time (ShortGPT's block influence measured once beforehand, outside the timing), the layer evaluations of the keyed
models, and whether every row's perplexity is the same both ways.

    python benchmarks/sweep_baselines.py      # -> results/sweep_baselines.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from order_size_aware import TRAIN, setup

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from boomerang.analysis.baselines import BaselineCache, shortgpt
    from boomerang.evaluate.spec import EvalSpec
    from boomerang.io.loading import load_tokenizer
    from boomerang.io.offline import offline_teacher
    from boomerang.pipelines.sweep import BaselineOptions, CalibrationOptions, RunOptions, Sweep
    from boomerang.pipelines.sweep_plan import Calibration
    from boomerang.train.precision import machine

    class Alone(Sweep):
        """The sweep as it was: ShortGPT's models opaque, each evaluated whole in its own group."""

        def _pruned_layers(self, method: str, n_layers: int) -> None:
            return None

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--text", default="builtin:hamlet")
    ap.add_argument("--out", type=Path, default=RESULTS / "sweep_baselines.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher, student, lm, _ = setup()
    tok = load_tokenizer(offline_teacher())
    cache = BaselineCache()
    shortgpt(
        teacher, 16, Calibration(TRAIN, tok, n=16, length=256)(), cache=cache
    )  # BI measured once, untimed
    work = Path(tempfile.mkdtemp(prefix="sweep-baselines-"))
    runs: dict[str, list[dict]] = {"alone": [], "shared": []}
    try:
        for r in range(args.repeats):
            for name, cls in (("alone", Alone), ("shared", Sweep)):
                res = cls(
                    teacher,
                    student,
                    args.text,
                    work / f"{name}-{r}",
                    layer_map=lm,
                    tokenizer=tok,
                    order="first",
                    baselines=BaselineOptions(("naive", "shortgpt"), cache=cache),
                    spec=EvalSpec(context=512, stride=384, max_tokens=4096),
                    calibration=CalibrationOptions(TRAIN, 16, 256),
                    run=RunOptions(progress=False),
                ).run()
                opaque = {row["layers"] for row in res["rows"] if row["method"] == "shortgpt"}
                opaque = opaque - {lm.n_teacher} if name == "alone" else set()
                runs[name].append(
                    {
                        "seconds": res["seconds_this_run"],
                        "layer_evaluations_per_batch": res["work"]["layers_shared"] + sum(opaque),
                        "groups": res["seconds"],
                        "work": res["work"],
                        "rows": [(row["method"], row["K"], row.get("ppl")) for row in res["rows"]],
                    }
                )
                print(name, f"{res['seconds_this_run']:.1f} s", res["work"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    result = {
        "machine": {**machine(), "threads": torch.get_num_threads()},
        "text": args.text,
        "median_s": med,
        "speedup": med["alone"] / med["shared"],
        "same_perplexities": all(
            a["rows"] == runs["alone"][0]["rows"] for a in runs["alone"] + runs["shared"]
        ),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
