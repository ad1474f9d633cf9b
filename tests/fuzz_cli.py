"""A fuzzer for the CLI (issue 13): generated invocations of every command, run in process on tiny Llama and Qwen3
pairs, each judged against an oracle that knows which inputs are invalid.

Every invocation must end in exit 0 with a valid output (only for inputs the oracle accepts) or exit 2 with a
message. Counted:

* tracebacks: an exception escaping ``boomerang.cli.app.run``, or an exit status other than 0 and 2;
* silent acceptances: exit 0 on an input the oracle calls invalid;
* unexplained refusals: exit 2 without a message; missing outputs: exit 0 without the promised output;
* hangs: an invocation that uses more than ``CPU_LIMIT`` seconds of CPU (SIGPROF stops it);
* refusals of valid inputs are listed too (they point at an oracle or a validation that is too strict).

The inputs include issue 26's classes: non-finite, mistyped and huge recipe numbers, recipes with a key given
twice or binary bytes, students in both documented formats, checkpoints whose config contradicts their weights,
.jsonl text that is not a string, symbolic link loops, and calibration longer than the model's context.

``tests/test_fuzz_cli.py`` runs a short fuzz in the test suite; the full run (at least 1,000 invocations)::

    flock /tmp/boomerang-heavy.lock .venv/bin/python tests/fuzz_cli.py --n 1000 --seed 0 --json fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reliability_kit import KEPT, N_TEACHER, Kit, Result, invoke, make_kit

M = len(KEPT)
CONTEXT = 128  # the tiny models' positions: longer calibration is refused
CPU_LIMIT = 120.0  # CPU seconds one invocation may use before it counts as a hang


@dataclass
class Case:
    """One generated invocation and what the oracle expects of it."""

    command: str
    argv: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # why the oracle calls it invalid (empty: valid)
    output: Callable[[], bool] | None = None  # on exit 0: was the promised output written?

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def invalid(self, why: str) -> None:
        self.bad.append(why)


LISTS = {
    "0,2": [0, 2], "1": [1], "0-2": [0, 1, 2], "3,4": [3, 4], "0, 4": [0, 4], "4": [4], "2-3": [2, 3],
    "1,,2": None, "": None, ",": None, "3-1": None, "-1": None, "0,0": None, "x": None, "1-": None,
    "0-1,1": None, "٣": None, "1;2": None, "0-99999": None,
}  # fmt: skip


ORDERS = {  # name: (well-formed, fits the 5-layer student)
    "last": (True, True), "first": (True, True), "[4,3,2,1,0]": (True, True), "[0,1,2,3,4]": (True, True),
    "list_order.json": (True, True), "[2,1,0]": (True, False), "short_order.json": (True, False),
    "middle": (False, False), "[4,3,": (False, False), "truncated_order.json": (False, False),
    "object_order.json": (False, False), "missing.json": (False, False), "[]": (False, False),
    "[4,4,2,1,0]": (False, False), '{"subsets": 3}': (False, False),
}  # fmt: skip


class Gen:
    """Value pools: each draw returns a command-line string and whether it breaks the option's rule."""

    def __init__(self, rng: random.Random, kit: Kit, work: Path):
        self.rng, self.kit, self.work = rng, kit, work
        self.t, self.s = kit.pair("llama")
        self.qt, self.qs = kit.pair("qwen3")
        self.n = 0

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq):
        return self.rng.choice(list(seq))

    def fresh(self, suffix: str = "") -> Path:
        self.n += 1
        return self.work / f"out{self.n}{suffix}"

    # ---- integers ---------------------------------------------------------------------------------------------
    def integer(self, lo: int, hi: int | None, typical: tuple[int, ...]) -> tuple[str, bool]:
        """An integer option's value: mostly typical valid ones, sometimes out of range or not an integer."""
        r = self.rng.random()
        if r < 0.6:
            v = self.pick(typical)
            return str(v), lo <= v and (hi is None or v <= hi)
        if r < 0.92:
            v = self.pick([-7, -1, 0, 1, 2, 3, lo - 1, lo, (hi or lo) + 1, hi or lo, 2**31, 2**63, 10**30])
            return str(v), lo <= v and (hi is None or v <= hi)
        return self.pick(["abc", "1.5", "", " ", "1e3", "0x10", "1_0x"]), False

    def option_int(self, case: Case, flag: str, lo: int, hi: int | None, typical: tuple[int, ...]) -> None:
        value, ok = self.integer(lo, hi, typical)
        case.add(flag, value)
        if not ok:
            case.invalid(f"{flag} {value!r}")

    # ---- integer lists ------------------------------------------------------------------------------------------

    def int_list(self, case: Case, flag: str, hi: int, *, need_zero: bool = False) -> list[int] | None:
        text = self.pick(LISTS)
        values = LISTS[text]
        case.add(flag, text)
        ok = values is not None and all(v <= hi for v in values) and (not need_zero or 0 in values)
        if need_zero and values is not None and values != sorted(values):
            ok = False
        if not ok:
            case.invalid(f"{flag} {text!r}")
        return values if ok else None

    # ---- paths --------------------------------------------------------------------------------------------------
    def out_dir(self, case: Case, flag: str = "--out", *, file: bool = False) -> Path:
        out = self.fresh(".json" if file else "")
        r = self.rng.random()
        if r < 0.82:
            case.add(flag, str(out))
        elif r < 0.88:
            case.add(flag, str(self.kit.path("data.txt") / "sub"))
            case.invalid("out under a file")
        elif r < 0.92:
            case.add(flag, "/sys/boomerang-fuzz")
            case.invalid("out on /sys")
        elif r < 0.96:
            existing = self.fresh()
            existing.mkdir() if not file else existing.write_text("{}")
            case.add(flag, str(existing))
            if self.chance(0.5):
                case.add("--force")
                if file:
                    out = existing
                else:
                    return existing
            else:
                case.invalid("out exists, no --force")
        else:
            case.add(flag, str(self.work))  # an existing directory, as a file or a non-empty output dir
            case.invalid("out is an existing directory")
        return out

    def model(
        self,
        case: Case,
        flag: str | None,
        *,
        role: str = "teacher",
        tokenizer: bool = True,
        paired: bool = True,
    ) -> str:
        """A model path: mostly the right one, sometimes missing, damaged, a GGUF in name only, or mistyped.
        ``paired``: the student is used beside the Llama teacher (a Qwen3 student is then a bad input)."""
        good = {"teacher": self.t, "student": self.s}[role]
        if role == "student" and self.chance(0.2):
            good = self.kit.root / "round2" / "sidecar_student"  # the published students' format
        r = self.rng.random()
        bad: tuple[str, str] | None = None
        if r < 0.86:
            value = str(good)
        else:
            bad = self.pick(
                [
                    (str(self.kit.path("bad.gguf")), "damaged gguf"),
                    (str(self.kit.root / "llama" / "teachr"), "mistyped path"),
                    (str(self.kit.path("truncated")), "truncated weights"),
                    ("someorg/somemodel", "hub id while offline"),
                    (str(self.kit.path("data.txt")), "a text file as a model"),
                    (str(self.kit.root / "bad"), "a folder without config.json"),
                ]
                + [
                    (str(self.kit.root / "round2" / "three_layers"), "config says 3 layers, weights hold 5"),
                    (str(self.kit.root / "round2" / "seven_layers"), "config says 7 layers, weights hold 5"),
                    (str(self.kit.root / "round2" / "wide"), "config's MLP width contradicts the weights"),
                    (str(self.kit.root / "round2" / "loop_a"), "a symbolic link loop"),
                ]
                + ([(str(self.kit.path("no_tokenizer")), "no tokenizer")] if tokenizer else [])
                + (
                    [(str(self.kit.path("bad_sidecar")), "bad student_config.json")]
                    if role == "student"
                    else []
                )
                + ([(str(self.kit.path("two_maps")), "two layer maps")] if role == "student" else [])
                + (
                    [(str(self.qs), "a Qwen3 student for a Llama teacher")]
                    if role == "student" and paired
                    else []
                )
            )
            value = bad[0]
            case.invalid(f"{role}: {bad[1]}")
        if flag is not None:
            case.add(flag, value)
        else:
            case.add(value)
        return value

    def data(self, case: Case, flag: str = "--data") -> None:
        r = self.rng.random()
        if r < 0.85:
            case.add(flag, str(self.pick([self.kit.corpus, self.kit.path("data.txt")])))
            return
        value, why = self.pick(
            [
                (str(self.t / "model.safetensors"), "binary data"),
                (str(self.kit.root / "missing.txt"), "missing data"),
                (str(self.kit.path("bad_sidecar")), "a folder without text files"),
                (str(self.kit.root / "round2" / "number_text.jsonl"), "a .jsonl text that is a number"),
                (str(self.kit.root / "round2" / "null_text.jsonl"), "a .jsonl text that is null"),
                (str(self.kit.root / "round2" / "loop_a"), "a symbolic link loop"),
            ]
        )
        case.add(flag, value)
        case.invalid(why)

    def order(self, case: Case, flag: str = "--order", *, inline: bool = True, student: bool = True) -> str:
        """A patch order; ``student``: the model is the 5-layer student (else only the form is checked)."""
        name = self.pick([o for o in ORDERS if inline or not o.startswith(("[", "{"))])
        value = str(self.kit.path(name)) if name.endswith(".json") else name
        case.add(flag, value)
        formed, fits = ORDERS[name]
        if not formed or (student and not fits):
            case.invalid(f"{flag} {name}")
        return value

    def usage_mistake(self, case: Case) -> None:
        """Sometimes a mistake click itself catches: an unknown option, a typo, a flag given a value."""
        r = self.rng.random()
        if r < 0.03:
            case.add("--nonsense")
            case.invalid("unknown option")
        elif r < 0.05:
            case.add("--force=maybe")
            case.invalid("a flag with a value")


# ---- the commands -------------------------------------------------------------------------------------------------


def _has(path: Path, *names: str) -> Callable[[], bool]:
    return lambda: all((path / n).exists() for n in names)


def g_info(g: Gen) -> Case:
    c = Case("info", ["info"])
    role = g.pick(["teacher", "student"])
    # a student alone is described on its own, with --teacher beside that teacher
    with_teacher = g.chance(0.2)
    g.model(c, None, role=role, tokenizer=False, paired=with_teacher)
    if g.chance(0.3):
        g.order(c, inline=False, student=role == "student")  # a teacher has no family table to fit
    if with_teacher:
        c.add("--teacher", str(g.t))
    if g.chance(0.15):
        layers = g.int_list(c, "--layers", N_TEACHER - 1, need_zero=True)
        if layers is not None and role == "student" and layers != list(KEPT):
            c.invalid("--layers contradicts the student's map")
        elif layers is not None and role == "teacher" and len(layers) != N_TEACHER:
            c.invalid("--layers does not fit the model's layer count")
    return c


def g_build(g: Gen) -> Case:
    c = Case("build", ["build"])
    g.model(c, "--teacher", tokenizer=False)
    g.model(c, "--student", role="student", tokenizer=False)
    out = g.out_dir(c)
    c.output = _has(out, "config.json")
    if g.chance(0.75):
        g.option_int(c, "-k", 0, M, (0, 1, 2, 3, 5))
        if g.chance(0.35):
            g.order(c)
    else:
        g.int_list(c, "--patch-layers", M - 1)
        if g.chance(0.1):
            c.add("-k", "1")
            c.invalid("-k with --patch-layers")
    if g.chance(0.03):
        c.argv = [a for a in c.argv if a not in ("-k", "--patch-layers")]
        c.invalid("neither -k nor --patch-layers (or a value taken as one)")
    if g.chance(0.1):
        c.add("--no-stream")
    if g.chance(0.05):
        g.data(c)
        c.invalid("--data without a data-driven order")
    if g.chance(0.05):
        c.add("--layers", "0,1,2,3,4")
        c.invalid("--layers contradicts the student's map")
    g.usage_mistake(c)
    return c


def g_family(g: Gen) -> Case:
    c = Case("family", ["family"])
    g.model(c, "--teacher", tokenizer=False)
    g.model(c, "--student", role="student", tokenizer=False)
    out = g.out_dir(c)
    c.output = _has(out, "family.json", "order.json")
    if g.chance(0.85):
        g.int_list(c, "--sizes", M)
    if g.chance(0.3):
        g.order(c)
    if g.chance(0.1):
        c.add("--no-stream")
    if g.chance(0.05):
        c.add("--max-shard-size", g.pick(["big", "0KB", "-1MB"]))
        c.invalid("bad shard size")
    g.usage_mistake(c)
    return c


def g_init(g: Gen) -> Case:
    c = Case("init", ["init"])
    g.model(c, "--teacher")
    out = g.out_dir(c)
    c.output = _has(out, "config.json", "student_config.json")
    r = g.rng.random()
    if r < 0.5:
        every, ok1 = g.integer(1, None, (1, 2, 3))
        first, ok2 = g.integer(1, N_TEACHER, (1, 2))
        last, ok3 = g.integer(0, N_TEACHER, (0, 1, 2))
        c.add("--every", every, "--keep-first", first, "--keep-last", last)
        if not (ok1 and ok2 and ok3):
            c.invalid("every/keep-first/keep-last out of range")
        else:
            from boomerang.core.layermap import LayerMap

            if LayerMap.every(N_TEACHER, int(every), int(first), int(last)).n_student >= N_TEACHER:
                c.invalid("the student would be the whole teacher")
    elif r < 0.75:
        layers = g.int_list(c, "--layers", N_TEACHER - 1, need_zero=True)
        if layers is not None and len(layers) >= N_TEACHER:
            c.invalid("the student would be the whole teacher")
    elif r < 0.9:
        c.add("--strategy", "similarity")
        if g.chance(0.9):
            g.data(c)
        else:
            c.invalid("similarity without --data")
        size, ok = g.integer(1, N_TEACHER - 1, (2, 3, 5))
        c.add("--size", size)
        if not ok:
            c.invalid("--size out of range")
        g.option_int(c, "--calibration-texts", 1, None, (2, 3))
        g.option_int(c, "--calibration-length", 2, CONTEXT, (8, 16, 500))
    else:
        c.add("--strategy", g.pick(["random", "every", "sometimes"]))
        if c.argv[-1] == "sometimes":
            c.invalid("unknown strategy")
        g.option_int(c, "--seed", 0, 2**32 - 1, (0, 1, 7))
    if g.chance(0.05):
        c.add("--patch-order", g.pick(["last", "first", "middle"]))
        if c.argv[-1] == "middle":
            c.invalid("bad --patch-order")
    g.usage_mistake(c)
    return c


def g_prune(g: Gen) -> Case:
    c = Case("prune", ["prune"])
    g.model(c, "--teacher")
    out = g.out_dir(c)
    c.output = _has(out, "config.json")
    method = g.pick(["naive", "naive", "shortgpt", "laco", "other"])
    c.add("--method", method)
    if method == "other":
        c.invalid("unknown method")
    if method == "naive" and g.chance(0.3):
        layers = g.int_list(c, "--layers", N_TEACHER - 1)
        if layers is not None and not layers:
            c.invalid("no layers")
    else:
        g.option_int(c, "-n", 1, N_TEACHER, (2, 4, 6))
    if method in ("shortgpt", "laco"):
        if g.chance(0.9):
            g.data(c)
        else:
            c.invalid("no calibration data")
        c.add("--calibration-texts", "2", "--calibration-length", "16")
        if method == "laco" and g.chance(0.5):  # T or C, with -n: a sweep over the other
            if g.chance(0.5):
                value = g.pick(["0.5", "0.9", "nan", "2", "-0.5", "inf"])
                c.add("--threshold", value)
                if value in ("nan", "2", "inf"):
                    c.invalid("bad threshold")
            else:
                g.option_int(c, "-C", 2, None, (2, 3))
    elif g.chance(0.1):
        c.add("--threshold", "0.5")
        c.invalid("laco option with another method")
    g.usage_mistake(c)
    return c


def g_eval(g: Gen) -> Case:
    c = Case("eval", ["eval"])
    g.model(c, None)
    g.data(c)
    c.add("--max-tokens", g.pick(["32", "48"]))
    context = None
    if g.chance(0.4):
        value, ok = g.integer(2, 128, (8, 16, 32))
        c.add("--context", value)
        context = int(value) if ok else None
        if not ok:
            c.invalid("--context out of range")
    if g.chance(0.4):
        value, ok = g.integer(1, None, (1, 4, 8))
        c.add("--stride", value)
        if not ok or int(value) >= (context or 128):
            c.invalid("--stride out of range")
    if g.chance(0.3):
        g.option_int(c, "--batch-size", 1, None, (1, 2, 4))
    if g.chance(0.2):
        g.option_int(c, "--offset", 0, None, (0, 5))
    if g.chance(0.2):
        g.option_int(c, "--max-docs", 1, None, (1, 3))
    if g.chance(0.4):
        out = g.out_dir(c, "--json", file=True)
        c.output = lambda: out.is_file()
    g.usage_mistake(c)
    return c


def g_sweep(g: Gen) -> Case:
    c = Case("sweep", ["sweep"])
    g.model(c, "--teacher")
    g.model(c, "--student", role="student")
    g.data(c)
    out = g.out_dir(c)
    c.output = _has(out, "results.json")
    c.add("--max-tokens", "32", "--context", "16")
    if g.chance(0.7):
        g.int_list(c, "--sizes", M)
    else:
        c.add("--sizes", "0,5")
    if g.chance(0.3):
        g.order(c)
    if g.chance(0.2):
        value = g.pick(["naive", "naive,,laco", "", "sometimes", "naive,naive"])
        c.add("--baselines", value)
        if value != "naive":
            c.invalid("bad --baselines")
    if g.chance(0.2):
        g.option_int(c, "--batch-size", 1, None, (1, 4))
    g.usage_mistake(c)
    return c


def g_analyze(g: Gen) -> Case:
    c = Case("analyze", ["analyze"])
    g.model(c, "--teacher")
    g.model(c, "--student", role="student")
    if g.chance(0.92):
        g.data(c)
    else:
        c.invalid("no --data")
    out = g.out_dir(c)
    c.output = _has(out, "summary.json")
    g.option_int(c, "--calibration-texts", 1, None, (1, 2))
    g.option_int(c, "--calibration-length", 2, CONTEXT, (8, 16, 200))
    if g.chance(0.4):
        value = g.pick(["last", "last,first", "last,,first", "", "first,first", "middle"])
        c.add("--orders", value)
        if value not in ("last", "last,first"):
            c.invalid("bad --orders")
    g.usage_mistake(c)
    return c


def g_order(g: Gen) -> Case:
    c = Case("order", ["order"])
    g.model(c, "--teacher")
    g.model(c, "--student", role="student")
    if g.chance(0.92):
        g.data(c)
    else:
        c.invalid("no --data")
    out = g.out_dir(c, file=True)
    c.output = lambda: out.is_file() and out.stat().st_size > 0
    name = g.pick(["similarity", "greedy-kl", "last", "optimal"])
    c.add("--order", name)
    if name == "last":
        c.invalid("not a data-driven order")
    g.option_int(c, "--calibration-texts", 1, None, (1, 2))
    g.option_int(c, "--calibration-length", 2, CONTEXT, (8, 16, 129))
    if name == "optimal" and g.chance(0.5):
        value, ok = g.integer(1, None, (3, 12))
        c.add("--max-layers", value)
        if not ok or int(value) < M:
            c.invalid("--max-layers below the student's layers")
    if g.chance(0.1):
        c.add("--score")
        if name != "similarity":
            c.invalid("--score without similarity")
    g.usage_mistake(c)
    return c


def g_distill(g: Gen) -> Case:
    c = Case("distill", ["distill"])
    r = g.rng.random()
    if r < 0.85:
        c.add(str(g.kit.root / "recipe.yaml"))
    else:
        r2 = g.kit.root / "round2"
        value, why = g.pick(
            [
                (str(g.kit.root / "bad") + "/", "a folder as the recipe"),
                (str(g.kit.root / "missing.yaml"), "missing recipe"),
                (str(g.kit.path("data.txt")), "not a recipe"),
                (str(r2 / "twice.yaml"), "a recipe key given twice"),
                (str(r2 / "binary.yaml"), "a binary recipe"),
                (str(r2 / "latin1.yaml"), "a recipe that is not UTF-8"),
                (str(r2 / "loop_a"), "a symbolic link loop as the recipe"),
            ]
        )
        c.add(value)
        c.invalid(why)
    out = g.fresh()
    r = g.rng.random()
    if r < 0.9:
        c.add("--out", str(out))
    else:
        c.add(
            "--out",
            g.pick([str(g.kit.path("data.txt") / "run"), "/sys/boomerang-fuzz", str(g.kit.path("data.txt"))]),
        )
        c.invalid("an unwritable run directory")
    overrides = {
        "train.steps=1": True, "loss.kl=0.5": True, "lr=1e-3": True, "train.stepz=1": False, "steps=0": False,
        "=3": False, "noequals": False, "train.batch_size=x": False, "optim.betas=[2, 3]": False,
        # issue 26: non-finite, mistyped and huge numbers, and keys given twice inside a value
        "optim.lr=1e400": False, "lr=inf": False, "loss.temperature=.nan": False, "optim.eps=-1e999": False,
        "optim.betas=[0.9, 1e400]": False, "train.steps='3'": False, "train.steps=true": False,
        "train.seed=4294967296": False, "train.seed=4294967295": True, "train.batch_size=100000000000000000000": False,
        "train.threads=100000": False, "train.compile=1": False, "optim.weight_decay=0.05": True,
        "train={steps: 1, steps: 2}": False, "loss.temperature=2.0": True,
    }  # fmt: skip
    if g.chance(0.5):
        item = g.pick(overrides)
        c.add(item)
        if not overrides[item]:
            c.invalid(f"bad override {item}")
    dry = g.chance(0.85)
    if dry:
        c.add("--dry-run")
        if g.chance(0.3):
            g.option_int(c, "--steps", 1, None, (1, 2))
            if any(a in ("train.steps=1", "steps=0") for a in c.argv):
                c.invalid("train.steps set twice")
    else:  # a real (two-step) run: its inputs are checked too
        c.add("checkpoint.every=1")
        c.output = _has(out, "student")
        r2 = g.kit.root / "round2"
        inputs = {
            f"student={r2 / 'sidecar_student'}": True, f"student={g.s}": True,
            f"student={r2 / 'three_layers'}": False, f"student={r2 / 'wide'}": False,
            f"data.train={r2 / 'number_text.jsonl'}": False, f"data.train={r2 / 'loop_a'}": False,
            f"data.eval={r2 / 'loop_a'}": False, "data.seq_len=4096": False,
            "data.heldout_docs=100 data.eval=null": False,
        }  # fmt: skip
        if g.chance(0.5):
            item = g.pick(inputs)
            c.add(*item.split(" "))
            if not inputs[item]:
                c.invalid(f"bad input {item}")
    if g.chance(0.05):
        c.add("--resume", "--force")
        c.invalid("--resume with --force")
    g.usage_mistake(c)
    return c


def g_convert(g: Gen) -> Case:
    c = Case("convert", ["convert"])
    c.add(g.pick([str(g.kit.path("bad.gguf")), str(g.t), str(g.kit.path("data.txt"))]))
    c.invalid("no convertible GGUF file")  # every convert here is invalid: no tiny GGUF model exists
    g.out_dir(c)
    return c


def g_demo(g: Gen) -> Case:
    c = Case("demo", ["demo", "--out", str(g.fresh())])
    mistake = g.pick(["tokens", "eval", "orders", "baselines"])
    if mistake == "tokens":
        c.add("--tokens", g.pick(["0", "-5", "100"]))
    elif mistake == "eval":
        c.add("--eval-tokens", g.pick(["0", "-1"]))
    elif mistake == "orders":
        c.add("--orders", g.pick(["", "last,,first", "last,last"]))
    else:
        c.add("--baselines", g.pick(["naive,,laco", ","]))
    c.invalid(f"bad --{mistake}")  # every demo here is invalid: a valid one runs the real pipeline
    return c


def g_usage(g: Gen) -> Case:
    c = Case("usage", [g.pick(["buidl", "evaluate", "famliy", "", "--version-x"])])
    if c.argv == [""]:
        c.argv = []
    c.invalid("no such command")
    return c


GENERATORS: dict[str, tuple[Callable[[Gen], Case], float]] = {
    "info": (g_info, 1.0),
    "build": (g_build, 2.5),
    "family": (g_family, 1.5),
    "init": (g_init, 1.5),
    "prune": (g_prune, 1.0),
    "eval": (g_eval, 1.0),
    "sweep": (g_sweep, 0.6),
    "analyze": (g_analyze, 0.4),
    "order": (g_order, 0.6),
    "distill": (g_distill, 0.8),
    "convert": (g_convert, 0.3),
    "demo": (g_demo, 0.3),
    "usage": (g_usage, 0.2),
}


# ---- running ------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    invocations: int = 0
    tracebacks: list[dict] = field(default_factory=list)
    silent_acceptances: list[dict] = field(default_factory=list)
    unexplained: list[dict] = field(default_factory=list)
    missing_output: list[dict] = field(default_factory=list)
    hangs: list[dict] = field(default_factory=list)
    refused_valid: list[dict] = field(default_factory=list)
    by_command: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)  # exit 0, by command
    exits: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "invocations": self.invocations,
            "tracebacks": len(self.tracebacks),
            "silent_acceptances": len(self.silent_acceptances),
            "unexplained_refusals": len(self.unexplained),
            "missing_outputs": len(self.missing_output),
            "hangs": len(self.hangs),
            "refused_valid": len(self.refused_valid),
            "exit_0": self.exits[0],
            "exit_2": self.exits[2],
            "by_command": dict(sorted(self.by_command.items())),
            "accepted_by_command": dict(sorted(self.accepted.items())),
            "seconds": round(self.seconds, 1),
        }


class HangError(BaseException):
    """An invocation used more CPU time than any command on the tiny models needs."""


def limited(argv: list[str], cpu_seconds: float) -> Result:
    """``invoke``, stopped by ``HangError`` after ``cpu_seconds`` of CPU time (SIGPROF: a process stopped from
    outside, or waiting, does not count; pytest-timeout's SIGALRM is left alone)."""

    def stop(_signum: int, _frame: object) -> None:
        raise HangError(f"over {cpu_seconds} s of CPU")

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    try:
        return invoke(argv)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def fuzz(
    n: int, seed: int, root: Path, kit: Kit | None = None, log: Callable[[str], None] | None = None
) -> Report:
    """Run ``n`` generated invocations (deterministic for a seed) with the kit under ``root``."""
    rng = random.Random(seed)
    kit = kit or make_kit(root / "kit")
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    g = Gen(rng, kit, work)
    names = list(GENERATORS)
    weights = [GENERATORS[k][1] for k in names]
    report = Report()
    started = time.perf_counter()
    for i in range(n):
        case = GENERATORS[rng.choices(names, weights)[0]][0](g)
        r = limited(case.argv, CPU_LIMIT)
        entry = {"argv": case.argv, "bad": case.bad, "code": r.code, "err": r.err[-600:]}
        report.invocations += 1
        report.by_command[case.command] += 1
        report.exits[r.code] += 1
        if r.code == 0:
            report.accepted[case.command] += 1
        if r.traceback is not None and "HangError" in r.traceback:
            report.hangs.append(entry)
        elif r.crashed:
            report.tracebacks.append({**entry, "traceback": (r.traceback or "")[-3000:]})
        elif r.code == 0 and case.bad:
            report.silent_acceptances.append(entry)
        elif r.code == 0 and case.output is not None and not case.output():
            report.missing_output.append(entry)
        elif r.code == 2 and not r.explained:
            report.unexplained.append(entry)
        elif r.code == 2 and not case.bad:
            report.refused_valid.append(entry)
        if log is not None and (i + 1) % 50 == 0:
            log(f"{i + 1}/{n}: {json.dumps(report.summary())}")
        for p in list(work.iterdir()):  # keep the disk small
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    report.seconds = time.perf_counter() - started
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write the report (with every failure) here")
    args = ap.parse_args()
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="boomerang-fuzz-") as tmp:
        root = args.root or Path(tmp)
        report = fuzz(args.n, args.seed, root, log=lambda m: print(m, file=sys.stderr, flush=True))
    summary = report.summary()
    print(json.dumps(summary, indent=1))
    if args.json:
        details = {
            k: getattr(report, k) for k in ("tracebacks", "silent_acceptances", "unexplained", "hangs")
        }
        details |= {"missing_output": report.missing_output, "refused_valid": report.refused_valid}
        args.json.write_text(json.dumps({"seed": args.seed, **summary, **details}, indent=1) + "\n")
    bad = (
        summary["tracebacks"]
        + summary["silent_acceptances"]
        + summary["unexplained_refusals"]
        + summary["hangs"]
    )
    sys.exit(1 if bad or summary["missing_outputs"] else 0)


if __name__ == "__main__":
    main()
