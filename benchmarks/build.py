"""Benchmark: writing one intermediate model, and holding a whole family in memory.

A random-weight Llama teacher (default 24 layers, hidden 1024: about 1.5 GB in float32) and an every-other-layer
student (13 layers) are saved as sharded safetensors under --workdir. Then, in one run, each approach writes the
same intermediate model (the reference's ``num_layers_to_patch=K`` from the end), each in its own subprocess:

  (a) reference: ``from_pretrained`` both, deep-copy the teacher, cut it to the student, load the student's weights,
      deep-copy the patched teacher layers, norm and head, ``save_pretrained`` (dcml-lab/boomerang-distillation's
      ``build_intermediate_model`` followed by a save);
  (b) memory: ``boomerang.load_model`` both, zero-copy ``boomerang.patch``, ``save_pretrained`` (``boomerang build
      --no-stream``);
  (c) stream: ``boomerang build`` as users run it (streaming is its default for local safetensors checkpoints), run
      in-process by the child through ``boomerang.cli.app.run``, so its wall time includes every import it makes.
      No model is instantiated and, the checkpoints being canonical, neither torch nor transformers is imported
      (``boomerang.io.fastbuild``).

A fourth child, ``startup``, only starts the interpreter and makes the imports of the torch path (torch,
transformers' model classes and config loading, boomerang's in-memory and transformers-based streaming modules): the
import cost that (a) and (b) pay and (c) avoids.

Wall time (measured by the parent around each child) and peak RSS (the child's own ``VmHWM``, which counts
anonymous memory and touched pages of memory-mapped files; ``ru_maxrss`` would include the parent's RSS at fork)
are recorded per repeat; the JSON holds medians and ratios to (a). A last subprocess loads teacher and student,
touches every weight, builds and runs every member with ``boomerang.Family``, and compares its RSS with all members
held to its RSS with only teacher and student loaded.

    python benchmarks/build.py            # writes benchmarks/results/build.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
APPROACHES = ("reference", "memory", "stream")
TORCH_APPROACHES = ("reference", "memory")  # the approaches that pay the torch path's imports
FIXED = "startup"  # measured alongside: the import cost of the torch path


# ---- the work each child process does ------------------------------------------------------------------------


def _plan(student_dir: str, k: int):
    """The members the reference builds for ``num_layers_to_patch=k`` from the end (torch-free)."""
    from boomerang.core.plan import make_plan, reference_patched
    from boomerang.io.sidecar import read_layer_map

    lm = read_layer_map(student_dir)
    return make_plan(lm, patched=reference_patched(lm, k, False))


def run_reference(teacher: str, student: str, out: str, k: int) -> None:
    """The reference implementation's steps (deep copies everywhere), then save_pretrained."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from boomerang.io.sidecar import read_layer_map

    lm = read_layer_map(student)
    plan = _plan(student, k)
    tok = AutoTokenizer.from_pretrained(teacher)
    t = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    s = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    # reload_student_model: deep-copy the teacher, delete the pruned layers, load the student's weights
    model = copy.deepcopy(t)
    for i in sorted(lm.pruned, reverse=True):
        del model.model.layers[i]
    model.config.num_hidden_layers = len(model.model.layers)
    model.load_state_dict(s.state_dict(), strict=True)
    # patch_last_k_layers: keep the first student layers, deep-copy the teacher's layers after the cut
    first = min(plan.patched) if plan.patched else lm.n_student
    cut = lm.kept[first] if first < lm.n_student else lm.n_teacher
    layers = list(model.model.layers[:first]) + [
        copy.deepcopy(t.model.layers[j]) for j in range(cut, lm.n_teacher)
    ]
    model.model.layers = torch.nn.ModuleList(layers)
    model.model.norm = copy.deepcopy(t.model.norm)
    model.model.rotary_emb = copy.deepcopy(t.model.rotary_emb)
    model.lm_head = copy.deepcopy(t.lm_head)
    model.config.num_hidden_layers = len(layers)
    for i, block in enumerate(model.model.layers):
        block.apply(lambda m, i=i: setattr(m, "layer_idx", i))
    del s
    model.save_pretrained(out)
    tok.save_pretrained(out)


def run_memory(teacher: str, student: str, out: str, k: int) -> None:
    import boomerang as B
    from boomerang.io.loading import save_tokenizer

    t, s = B.load_model(teacher), B.load_model(student)
    model = B.build(t, s, _plan(student, k))
    model.save_pretrained(out)
    save_tokenizer(out, teacher)  # as `boomerang build --no-stream` does


def run_stream(teacher: str, student: str, out: str, k: int) -> None:
    """``boomerang build --teacher T --student S --patch-layers ... --out O``, in-process."""
    from boomerang.cli.app import run

    patched = ",".join(str(i) for i in _plan(student, k).patched)
    code = run(["build", "--teacher", teacher, "--student", student, "--patch-layers", patched, "--out", out])
    if code:
        raise SystemExit(code)


def run_startup(teacher: str, student: str, out: str, k: int) -> None:
    """Interpreter start and the imports of the torch path (torch, transformers' model classes, tokenizers)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import boomerang.core.patching
    import boomerang.io.stream  # noqa: F401

    AutoModelForCausalLM.from_config  # noqa: B018 (resolve the lazy class)
    AutoConfig.from_pretrained(teacher)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def run_family(teacher: str, student: str, out: str, k: int) -> None:
    """RSS with teacher + student loaded, then with every member of the family built and held."""
    import gc

    import torch

    import boomerang as B

    t, s = B.load_model(teacher), B.load_model(student)
    with torch.no_grad():  # touch every weight: memory-mapped tensors count once they are read
        for p in [*t.parameters(), *s.parameters()]:
            p.sum()
    gc.collect()
    base = _rss_mb()
    weights_mb = sum(p.numel() * p.element_size() for p in {*t.parameters(), *s.parameters()}) / 2**20
    fam = B.Family(t, s)
    times = []
    held = []
    for size in fam.sizes:
        t0 = time.perf_counter()
        held.append(fam.member(size))
        times.append(time.perf_counter() - t0)
    gc.collect()
    built = _rss_mb()
    x = torch.randint(0, t.config.vocab_size, (1, 16))
    with torch.no_grad():  # every member runs (and still shares the family's tensors)
        for m in held:
            m(x)
    gc.collect()
    after = _rss_mb()
    ptrs = {p.data_ptr() for m in held for p in m.parameters()}
    source = {p.data_ptr() for p in [*t.parameters(), *s.parameters()]}
    from boomerang.core.params import plan_config
    from boomerang.io.stream import checkpoint_nbytes

    copies = sum(
        checkpoint_nbytes(plan_config(t.config, s.config, fam.plan(size)), t.dtype) for size in fam.sizes
    )
    Path(out).write_text(
        json.dumps(
            {
                "members": len(held),
                "teacher_student_weights_mb": weights_mb,
                "rss_teacher_student_mb": base,
                "rss_all_members_built_mb": built,
                "rss_all_members_after_forward_mb": after,
                "ratio": after / base,
                "member_build_s_median": statistics.median(times),
                "member_build_s_max": max(times),
                "new_tensors": len(ptrs - source),
                "copies_would_need_mb": copies / 2**20,
            }
        )
    )


# ---- setup and measurement ---------------------------------------------------------------------------------


def make_models(
    work: Path, layers: int, hidden: int, intermediate: int, vocab: int, shard: str
) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from boomerang.core.layermap import LayerMap, student_section
    from boomerang.core.patching import assemble

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import tiny_tokenizer  # a small word-level tokenizer; the benchmark measures weights only

    t_dir, s_dir = work / "teacher", work / "student"
    if (t_dir / "config.json").is_file() and (s_dir / "config.json").is_file():
        return t_dir, s_dir
    shutil.rmtree(work, ignore_errors=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=vocab,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    teacher = LlamaForCausalLM(cfg).eval()  # random init (normal, std 0.02)
    lm = LayerMap.every(layers)
    student = assemble(
        {"teacher": teacher},
        [("teacher", j) for j in lm.kept],
        "teacher",
        "teacher",
        section=student_section(lm),
        copy=False,
    )
    teacher.save_pretrained(t_dir, max_shard_size=shard)
    student.save_pretrained(s_dir, max_shard_size=shard)
    for d in (t_dir, s_dir):
        tiny_tokenizer(d)
    return t_dir, s_dir


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(kind: str, teacher: Path, student: Path, out: Path, k: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    os.sync()  # no dirty pages of the previous run left to write back
    rss_file = out.with_name(out.name + ".rss")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--teacher",
        str(teacher),
        "--student",
        str(student),
        "--out",
        str(out),
        "-k",
        str(k),
        "--rss-file",
        str(rss_file),
    ]
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{kind} failed with exit code {code}")
    peak = float(rss_file.read_text())
    rss_file.unlink()
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(peak, 1)}


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=[*APPROACHES, FIXED, "family"], help=argparse.SUPPRESS)
    ap.add_argument("--teacher")
    ap.add_argument("--student")
    ap.add_argument("--out")
    ap.add_argument("--rss-file", help=argparse.SUPPRESS)
    ap.add_argument("-k", type=int, default=6, help="reference num_layers_to_patch (default 6)")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shard", default="500MB", help="shard size of the saved teacher and student")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/boomerang-bench-build")
    ap.add_argument("--keep", action="store_true", help="keep the models in --workdir for the next run")
    ap.add_argument("--results", default=str(RESULTS / "build.json"))
    args = ap.parse_args()

    if args.child:
        fn = {
            "reference": run_reference,
            "memory": run_memory,
            "stream": run_stream,
            FIXED: run_startup,
            "family": run_family,
        }
        fn[args.child](args.teacher, args.student, args.out, args.k)
        Path(args.rss_file).write_text(str(_status_mb("VmHWM")))
        return

    from importlib.metadata import version

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        teacher, student = make_models(
            work, args.layers, args.hidden, args.intermediate, args.vocab, args.shard
        )
        print(
            f"models ready in {time.perf_counter() - t0:.1f}s: teacher {_dir_bytes(teacher) / 1e9:.2f} GB, "
            f"student {_dir_bytes(student) / 1e9:.2f} GB",
            flush=True,
        )
        for f in [*teacher.glob("*.safetensors"), *student.glob("*.safetensors")]:
            with open(f, "rb") as fh:  # warm the page cache so that no approach pays for the first read
                while fh.read(64 << 20):
                    pass
        kinds = (*APPROACHES, FIXED)
        runs: dict[str, list[dict]] = {a: [] for a in kinds}
        for r in range(args.repeats):
            order = kinds[r % 4 :] + kinds[: r % 4]  # rotate, so no approach always runs first
            for kind in order:
                res = measure(kind, teacher, student, work / f"out-{kind}", args.k)
                runs[kind].append(res)
                print(
                    f"repeat {r + 1} {kind:9s} {res['wall_s']:7.2f} s  {res['peak_rss_mb']:8.0f} MB",
                    flush=True,
                )
        identical = _same_files(work / "out-memory", work / "out-stream")
        out_bytes = _dir_bytes(work / "out-stream")
        fam_file = work / "family.json"
        measure("family", teacher, student, fam_file, args.k)
        fam = json.loads(fam_file.read_text())

        med = {
            a: {
                "wall_s": statistics.median(x["wall_s"] for x in runs[a]),
                "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs[a]),
            }
            for a in kinds
        }
        fixed = med[FIXED]["wall_s"]
        beyond = {a: max(med[a]["wall_s"] - fixed, 1e-3) for a in TORCH_APPROACHES}
        ratios = {
            a: {
                "wall": round(med[a]["wall_s"] / med["reference"]["wall_s"], 3),
                "peak_rss": round(med[a]["peak_rss_mb"] / med["reference"]["peak_rss_mb"], 3),
            }
            for a in APPROACHES
        }
        for a in TORCH_APPROACHES:  # their time past the torch path's imports, relative to the reference's
            ratios[a]["wall_beyond_startup"] = round(beyond[a] / beyond["reference"], 3)
        result = {
            "benchmark": "build",
            "setup": {
                "teacher": {
                    "layers": args.layers,
                    "hidden": args.hidden,
                    "intermediate": args.intermediate,
                    "vocab": args.vocab,
                    "dtype": "float32",
                    "bytes": _dir_bytes(teacher),
                },
                "student": {
                    "layers": len(
                        json.loads((student / "config.json").read_text())["boomerang"]["layer_map"]["kept"]
                    ),
                    "bytes": _dir_bytes(student),
                },
                "input_shard_size": args.shard,
                "num_layers_to_patch": args.k,
                "output_bytes": out_bytes,
                "repeats": args.repeats,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": version("torch"),
                "transformers": version("transformers"),
                "platform": platform.platform(),
            },
            "runs": runs,
            "median": med,
            "ratio_vs_reference": ratios,
            "memory_and_stream_outputs_identical": identical,
            "family": fam,
            "goals": {
                "stream_peak_rss_le_0.15x": ratios["stream"]["peak_rss"] <= 0.15,
                "stream_wall_le_0.5x": ratios["stream"]["wall"] <= 0.5,
                "family_rss_le_1.05x": fam["ratio"] <= 1.05,
            },
        }
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
        print(
            json.dumps(
                {"median": med, "ratio_vs_reference": ratios, "family": fam, "goals": result["goals"]},
                indent=2,
            )
        )
    finally:
        for kind in APPROACHES:
            shutil.rmtree(work / f"out-{kind}", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
