"""Shared by the reliability tests and the CLI fuzzer (issue 13): tiny saved model pairs, bad input files, and an
in-process CLI runner that reports tracebacks."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

from tiny import make_pair, save_pair, tiny_corpus, tiny_recipe

N_TEACHER, KEPT = 8, (0, 2, 4, 6, 7)  # an 8-layer teacher and its 5-layer student
M = len(KEPT)


@dataclass
class Kit:
    """Everything the reliability tests run the CLI on (all under ``root``)."""

    root: Path

    def pair(self, arch: str = "llama") -> tuple[Path, Path]:
        return self.root / arch / "teacher", self.root / arch / "student"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    def path(self, name: str) -> Path:
        return self.root / "bad" / name


def make_kit(root: Path, archs: tuple[str, ...] = ("llama", "qwen3")) -> Kit:
    """Save tiny teacher/student pairs (8 -> 5 layers), a corpus, a recipe and a set of bad inputs under ``root``."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        teacher, student, lm = make_pair(arch, n_layers=N_TEACHER, kept=KEPT, tie=True)
        save_pair(root / arch, teacher, student, lm)
        del teacher, student
    torch.manual_seed(0)
    tiny_corpus(root / "corpus", 12, seed=0)
    tiny_corpus(root / "val", 3, seed=1)
    bad = root / "bad"
    bad.mkdir()
    t_dir, s_dir = root / "llama" / "teacher", root / "llama" / "student"
    (bad / "list_order.json").write_text("[4, 3, 2, 1, 0]")
    (bad / "short_order.json").write_text("[2, 1, 0]")
    (bad / "truncated_order.json").write_text("[4,3,")
    (bad / "object_order.json").write_text('{"subsets": [[], [9]]}')
    (bad / "data.txt").write_text("w4 w5 w6 w7 " * 50)
    (bad / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    # a student whose student_config.json is not JSON (and whose config has no boomerang section)
    sc = bad / "bad_sidecar"
    shutil.copytree(s_dir, sc)
    cfg = json.loads((sc / "config.json").read_text())
    cfg.pop("boomerang", None)
    (sc / "config.json").write_text(json.dumps(cfg))
    (sc / "student_config.json").write_text("{not json")
    # a student whose student_config.json contradicts its config's boomerang section
    two = bad / "two_maps"
    shutil.copytree(s_dir, two)
    ref = {"copied_teacher_layers": [0, 1, 2, 3, 4], "pruned_teacher_layers": [5, 6, 7]}
    (two / "student_config.json").write_text(json.dumps(ref))
    # truncated weights
    trunc = bad / "truncated"
    shutil.copytree(t_dir, trunc)
    weights = trunc / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    # no tokenizer
    notok = bad / "no_tokenizer"
    shutil.copytree(t_dir, notok)
    for f in notok.glob("tokenizer*"):
        f.unlink()
    # a recipe for distill
    import yaml

    recipe = tiny_recipe(root, teacher=str(t_dir))
    recipe["data"] = {"train": str(root / "corpus"), "eval": str(root / "val"), "seq_len": 16}
    recipe["data"]["cache_dir"] = str(root / "cache")
    recipe["train"].update(steps=2, batch_size=2, micro_batch_size=2)
    recipe["init"] = {"strategy": "layers", "layers": list(KEPT)}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    _round2(root, s_dir)
    return Kit(root)


def _round2(root: Path, s_dir: Path) -> None:
    """Issue 26's inputs, under ``round2/``: both student formats, self-contradicting checkpoints, text that is
    not text, link loops and recipes that are not recipes."""
    import os

    r2 = root / "round2"
    r2.mkdir()

    def student(name: str, edit, sidecar: bool = True) -> None:
        shutil.copytree(s_dir, r2 / name)
        cfg = json.loads((r2 / name / "config.json").read_text())
        edit(cfg)
        (r2 / name / "config.json").write_text(json.dumps(cfg))
        if not sidecar:
            (r2 / name / "student_config.json").unlink()

    def layers(n: int, kept: list[int]):
        def edit(cfg):
            cfg["num_hidden_layers"] = n
            cfg["boomerang"]["layer_map"]["kept"] = kept

        return edit

    student("sidecar_student", lambda c: c.pop("boomerang"))  # the published format: a valid student
    student("three_layers", layers(3, [0, 2, 4]), sidecar=False)  # says 3 layers, holds 5
    student("seven_layers", layers(7, [0, 1, 2, 3, 4, 6, 7]), sidecar=False)  # says 7, holds 5
    student("wide", lambda c: c.update(intermediate_size=128))  # says 128-wide MLPs, holds 64
    (r2 / "number_text.jsonl").write_text('{"text": "w4 w5 w6"}\n{"text": 5}\n')
    (r2 / "null_text.jsonl").write_text('{"text": null}\n')
    os.symlink("loop_b", r2 / "loop_a")
    os.symlink("loop_a", r2 / "loop_b")
    recipe = (root / "recipe.yaml").read_text()
    (r2 / "twice.yaml").write_text(recipe + "train:\n  steps: 3\n")  # a top-level key given twice
    (r2 / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (r2 / "latin1.yaml").write_bytes(recipe.encode() + b"notes: caf\xe9\n")


@dataclass
class Result:
    code: int | None
    out: str
    err: str
    traceback: str | None  # an exception that escaped the CLI

    @property
    def crashed(self) -> bool:
        """A traceback: an exception escaped, or an exit status other than 0 (ok) and 2 (bad input)."""
        return self.traceback is not None or self.code not in (0, 2)

    @property
    def explained(self) -> bool:
        """Exit 2 came with a message (ours, or click's usage text)."""
        return self.code == 2 and ("error:" in self.err.lower() or "Usage:" in self.err + self.out)


def invoke(argv: list[str]) -> Result:
    """Run the CLI in this process, capturing its output; never raises."""
    from boomerang.cli.app import run

    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    tb = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    except BaseException:  # a traceback is what is being counted
        tb = traceback.format_exc()
    return Result(code, out.getvalue(), err.getvalue(), tb)


def no_temp_left(parent: Path) -> bool:
    """No hidden temporary sibling (``.NAME.tmp-*``) left in ``parent``."""
    return not [p for p in parent.iterdir() if ".tmp-" in p.name]
