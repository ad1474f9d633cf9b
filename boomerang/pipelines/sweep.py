"""Family sweeps: every member's quality against its size, beside the baselines, in one resumable run.

``sweep(teacher, student, data, out)`` evaluates the family members K in ``sizes`` (default 0..M) under the patch
order, plus the requested baselines at the same sizes, on the same batches, and writes into ``out`` (atomically):
``results.json``, ``results.csv``, ``results.md`` (a Markdown table), ``sweep.png`` (metric against inference
parameters, one curve per method) and ``order.json``.

* **Prefix reuse.** Members built from plans (and the naive and random-student baselines) are evaluated together,
  batch by batch, with ``boomerang.evaluate.reuse``: each shared prefix of layers runs once per batch. Results are identical
  to evaluating each member on its own (``reuse=False`` does that).
* **Resume.** Progress is saved in a sibling folder ``.<out>.partial`` after every batch (at most every
  ``checkpoint_seconds``) and on interruption; running the same command again continues where it stopped (members
  and batches already done are not recomputed). ``out`` appears only when everything is finished.
* **Baselines.** ``naive``: the teacher restricted to the same teacher layers as the member of that size (no
  distillation). ``shortgpt``, ``laco``: ``boomerang.analysis.baselines.prune_to`` at the member's layer count, with
  calibration data. ``random-student``: the family of a randomly initialised, distilled student.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BoomerangError
from ..evaluate.perplexity import METRIC_LABELS, Batch, EvalSpec, batch_nll, check_source, prepare
from ..evaluate.reuse import Key, Scored, layers_key, plan_key, schedule, score, work
from ..ui import fmt_count, fmt_metric

BASELINES = ("naive", "shortgpt", "laco", "random-student")
PRUNED = ("shortgpt", "laco")  # built by boomerang.analysis.baselines.prune_to
STATE_VERSION = 1
OnBatch = Callable[[str, int, int], None]  # (group, batches done, batches in group)


@dataclass
class TaskOptions:
    """lm-eval settings for a sweep or an eval (``tasks`` empty: no lm-eval)."""

    tasks: Sequence[str] = ()
    include_path: Sequence[str | Path] = ()
    data: Any = None  # text for the built-in tasks (default: the evaluation data)
    batch_size: int = 8
    limit: int | float | None = None
    num_fewshot: int | None = None
    builtin: dict[str, Any] = field(default_factory=dict)  # options of make_cloze_task / make_wordppl_task


@dataclass
class Unit:
    """One distinct model to evaluate (rows of equal models share a unit)."""

    name: str
    key: Key | None  # None: opaque (a pruned baseline), evaluated on its own
    build: Callable[[], Any]
    group: str


@dataclass
class Row:
    method: str
    K: int
    unit: str
    plan: Any = None  # PatchPlan for members and plan-shaped baselines
    role: str = ""


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _probe(model: Any) -> str:
    """A cheap fingerprint of an in-memory model's weights (for refusing to resume onto other weights)."""
    params = list(model.parameters())
    h = hashlib.sha256()
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().flatten()[:4096].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _source_name(spec: Any, model: Any) -> str:
    if isinstance(spec, (str, Path)):
        return str(spec)
    return getattr(model, "name_or_path", "") or f"<in-memory {model.config.model_type}>"


class _Progress:
    """A rich progress bar (or nothing): current group, batch and model."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    @contextlib.contextmanager
    def running(self) -> Iterator[_Progress]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as bar:
            self._bar = bar
            yield self
            self._bar = None

    def start(self, description: str, total: int, done: int = 0) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(description, total=total, completed=done)

    def update(self, description: str, advance: int = 0) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=description, advance=advance)

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message, highlight=False)


class Sweep:
    """One sweep: validated on construction (cheap), run by ``run()``.

    ``order`` defaults to the patch order the student's config records, else ``last``.
    """

    def __init__(
        self,
        teacher: Any,
        student: Any,
        data: Any,
        out: str | Path,
        *,
        layer_map: Any = None,
        tokenizer: Any = None,
        order: Any = None,
        sizes: Sequence[int] | None = None,
        baselines: Sequence[str] = (),
        random_student: Any = None,
        spec: EvalSpec | None = None,
        tasks: TaskOptions | None = None,
        calibration: Any = None,
        calibration_samples: int = 128,
        calibration_length: int | None = None,
        baseline_params: dict[str, dict[str, Any]] | None = None,
        dtype: Any = None,
        force: bool = False,
        restart: bool = False,
        reuse: bool = True,
        progress: bool = False,
        on_batch: OnBatch | None = None,
        checkpoint_seconds: float = 30.0,
        trust_remote_code: bool = False,
    ) -> None:
        from ..io.atomic import check_writable

        self.out = Path(out)
        self.partial = partial_dir(self.out)
        check_writable(self.out, force=force)
        self.force, self.restart = force, restart
        self.teacher_spec, self.student_spec, self.random_spec = teacher, student, random_student
        self.data = data
        self.tokenizer = tokenizer
        self.order_spec = order
        self.dtype = dtype
        self.reuse = reuse
        self.on_batch = on_batch
        self.checkpoint_seconds = checkpoint_seconds
        self.trust_remote_code = trust_remote_code
        self.calibration_source = calibration
        self.calibration_shape = (calibration_samples, calibration_length)
        self.baseline_params = baseline_params or {}
        self.progress = _Progress(progress)
        self.tasks = tasks or TaskOptions()

        baselines = [b.strip() for b in baselines if b.strip()]
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise BoomerangError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
        self.baselines = list(dict.fromkeys(baselines))
        if "random-student" in self.baselines and random_student is None:
            raise BoomerangError(
                "the random-student baseline needs the random-init student: --random-student PATH"
            )
        if random_student is not None and "random-student" not in self.baselines:
            self.baselines.append("random-student")
        if any(b in PRUNED for b in self.baselines):
            try:
                from ..analysis.baselines import prune_to  # noqa: F401
            except ImportError:
                raise BoomerangError(
                    f"the {', '.join(b for b in self.baselines if b in PRUNED)} baseline(s) need "
                    "boomerang.analysis.baselines.prune_to, which is not available in this installation"
                ) from None
        if data is None:
            raise BoomerangError("a sweep needs evaluation data: --data PATH")
        check_source(data)
        if calibration is not None:
            check_source(calibration)

        # configs, layer map and evaluation settings, without loading weights
        self.teacher_config = self._config(teacher)
        self.student_config = self._config(student)
        from ..core.configs import check_compatible

        check_compatible(self.teacher_config, self.student_config)
        self.layer_map = layer_map or self._layer_map(student, self.student_config)
        if order is None:  # the order the student records (init writes the recipe's patch_order), else last
            from ..core.plan import recorded_order

            order = self.order_spec = recorded_order(self.student_config)
        self._check_map(self.layer_map, self.student_config, "student")
        if random_student is not None:
            rcfg = self._config(random_student)
            check_compatible(self.teacher_config, rcfg)
            self._check_map(self.layer_map, rcfg, "random-init student")
        from ..family import check_sizes

        self.sizes = check_sizes(sizes, self.layer_map.n_student)
        self.spec = (spec or EvalSpec()).resolved(self.teacher_config)
        self.task_names: list[str] = []
        if self.tasks.tasks:
            from ..evaluate.lmeval import resolve_tasks
            from ..evaluate.perplexity import is_encoder

            if is_encoder(self.teacher_config):
                raise BoomerangError(
                    "lm-eval tasks need causal LMs; a BERT family is scored by pseudo-perplexity"
                )
            self.task_names, self.task_paths, self.task_defaults = resolve_tasks(
                self.tasks.tasks, self.tasks.include_path
            )
        if isinstance(order, str):
            from ..core.plan import BUILTIN_ORDERS, DATA_ORDERS

            if (
                order not in BUILTIN_ORDERS + DATA_ORDERS
                and not Path(order).is_file()
                and not order.startswith("[")
            ):
                raise BoomerangError(
                    f"unknown patch order {order!r}: use {', '.join(BUILTIN_ORDERS + DATA_ORDERS)}, a JSON order "
                    "file, or a JSON list of student layers such as [3,2,1,0]"
                )

    # ---- validation helpers ----------------------------------------------------------------------------------
    def _config(self, spec: Any) -> Any:
        from ..io.loading import load_config

        if isinstance(spec, (str, Path)):
            return load_config(spec, trust_remote_code=self.trust_remote_code)
        if not hasattr(spec, "config"):
            raise BoomerangError(f"expected a model or a checkpoint path, got {type(spec).__name__}")
        return spec.config

    @staticmethod
    def _layer_map(spec: Any, config: Any) -> Any:
        from ..core.layermap import LayerMap
        from ..io.sidecar import read_layer_map

        lm = read_layer_map(spec, config, allow_hub=False) if isinstance(spec, (str, Path)) else None
        lm = lm or LayerMap.from_config(config)
        if lm is None:
            raise BoomerangError(
                "the student carries no layer map (no 'boomerang' config section or student_config.json); pass "
                "--layers 0,2,... or --layer-map distilbert|distilgpt2 (layer_map=... in Python)"
            )
        return lm

    def _check_map(self, lm: Any, config: Any, what: str) -> None:
        from ..core.arch import n_layers

        nt, ns = n_layers(self.teacher_config), n_layers(config)
        if lm.n_teacher != nt or lm.n_student != ns:
            raise BoomerangError(
                f"the layer map ({lm.describe()}) does not fit this pair: the teacher has {nt} layers and the "
                f"{what} has {ns}"
            )

    # ---- loading ----------------------------------------------------------------------------------------------
    def _model(self, spec: Any) -> Any:
        from ..io.loading import load_model

        if isinstance(spec, (str, Path)):
            return load_model(spec, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        return spec.eval()

    def _load(self) -> None:
        from ..family import Family
        from ..io.loading import load_tokenizer

        if isinstance(self.teacher_spec, (str, Path)) and isinstance(self.student_spec, (str, Path)):
            from ..io.loading import load_config, pair_dtype

            tr = self.trust_remote_code
            self.dtype = pair_dtype(
                load_config(self.teacher_spec, trust_remote_code=tr),
                load_config(self.student_spec, trust_remote_code=tr),
                self.dtype,
            )  # one common dtype (a bf16 student beside an fp32 teacher)
        self.teacher = self._model(self.teacher_spec)
        self.student = self._model(self.student_spec)
        if self.tokenizer is None:
            if not isinstance(self.teacher_spec, (str, Path)):
                raise BoomerangError("pass tokenizer=... for in-memory models")
            self.tokenizer = load_tokenizer(self.teacher_spec, trust_remote_code=self.trust_remote_code)
        elif isinstance(self.tokenizer, (str, Path)):
            self.tokenizer = load_tokenizer(self.tokenizer, trust_remote_code=self.trust_remote_code)
        self.family = Family(self.teacher, self.student, self.layer_map, tokenizer=self.tokenizer)
        self.random = None
        if self.random_spec is not None:
            self.random = Family(self.teacher, self._model(self.random_spec), self.layer_map)

    _calibration: Any = None

    def calibration(self) -> torch.Tensor:
        if self._calibration is None:
            from ..data.blocks import calibration_ids

            n, length = self.calibration_shape
            length = length or min(256, self.spec.context or 256)
            source = self.calibration_source if self.calibration_source is not None else self.data
            self._calibration = calibration_ids(source, self.tokenizer, n=n, length=length)
        return self._calibration

    def _order(self) -> Any:
        from ..io.order_files import load_order, save_order

        saved, saved_spec = self.partial / "order.json", self.partial / "order_spec.json"
        spec_text = json.dumps(self.order_spec if isinstance(self.order_spec, str) else str(self.order_spec))
        if saved.is_file() and saved_spec.is_file():
            if saved_spec.read_text() == spec_text:
                return load_order(saved)
            raise BoomerangError(
                f"{self.partial} holds an interrupted sweep with a different patch order; pass --restart to discard "
                "it (or rerun with the same arguments to resume it)"
            )
        spec = self.order_spec
        if isinstance(spec, str) and spec.startswith("["):
            try:
                spec = [int(i) for i in json.loads(spec)]
            except (ValueError, TypeError):
                raise BoomerangError(
                    f"cannot read the order {spec!r}: give a JSON list such as [3,2,1,0]"
                ) from None
        from ..core.plan import DATA_ORDERS

        calibration = None
        if isinstance(spec, str) and spec in DATA_ORDERS:
            from ..analysis.orders import default_texts

            calibration = (
                self.calibration()[: default_texts(spec)] if spec == "similarity" else self.calibration()
            )
        po = self.family.order(spec, calibration=calibration)
        self.partial.mkdir(parents=True, exist_ok=True)
        save_order(po, saved)
        saved_spec.write_text(spec_text)
        return po

    # ---- units and rows ---------------------------------------------------------------------------------------
    def _plan_rows(self) -> tuple[list[Row], dict[str, Unit]]:
        from ..core.patching import assemble
        from ..core.plan import PatchPlan

        rows: list[Row] = []
        units: dict[str, Unit] = {}
        by_key: dict[Any, str] = {}
        m, n_teacher = self.layer_map.n_student, self.layer_map.n_teacher

        def unit(name: str, key: Key | None, build: Callable[[], Any], group: str = "family") -> str:
            if key is not None and key in by_key:
                return by_key[key]
            units[name] = Unit(name, key, build, group)
            if key is not None:
                by_key[key] = name
            return name

        plans = {
            k: PatchPlan(layer_map=self.layer_map, patched=self.po.patched(k), order=self.po.name)
            for k in self.sizes
        }
        for k, plan in plans.items():
            role = "student" if k == 0 else "teacher" if k == m else ""
            name = unit(f"boomerang K={k}", plan_key(plan), lambda p=plan: self.family.member(plan=p))
            rows.append(Row("boomerang", k, name, plan, role))
        for method in self.baselines:
            for k, plan in plans.items():
                if method == "naive":
                    layers = plan.teacher_layers
                    name = unit(
                        f"naive K={k}",
                        layers_key("teacher", layers),
                        lambda ls=layers: assemble(
                            {"teacher": self.teacher},
                            [("teacher", j) for j in ls],
                            "teacher",
                            "teacher",
                            section=None,
                        ),
                    )
                elif method == "random-student":
                    name = unit(
                        f"random-student K={k}",
                        plan_key(plan, {"student": "random-student"}),
                        lambda p=plan: self.random.member(plan=p),  # type: ignore[union-attr]
                    )
                elif plan.n_layers >= n_teacher:  # pruning nothing: the teacher
                    name = unit(
                        "teacher",
                        layers_key("teacher", range(n_teacher)),
                        lambda: self.teacher,
                    )
                else:
                    n = plan.n_layers
                    name = unit(
                        f"{method} {n} layers",
                        None,
                        lambda meth=method, n=n: self._pruned(meth, n),
                        f"{method}-{n}",
                    )
                rows.append(Row(method, k, name, plan if method in ("naive", "random-student") else None))
        return rows, units

    def _pruned(self, method: str, n_layers: int) -> Any:
        from ..analysis.baselines import prune_to

        params = dict(self.baseline_params.get(method, {}))
        self.progress.log(f"building the {method} baseline with {n_layers} layers")
        return prune_to(
            self.teacher, method, num_layers=n_layers, calibration=self.calibration(), **params
        ).eval()

    # ---- state -----------------------------------------------------------------------------------------------
    def _fingerprint(self, batches: Sequence[Batch]) -> str:
        h = hashlib.sha256()
        settings = {
            "teacher": _source_name(self.teacher_spec, self.teacher),
            "student": _source_name(self.student_spec, self.student),
            "random": None if self.random is None else _source_name(self.random_spec, self.random.student),
            "probes": [_probe(self.teacher), _probe(self.student)]
            + ([_probe(self.random.student)] if self.random is not None else []),
            "layer_map": self.layer_map.to_json(),
            "order": self.po.to_json()["subsets"],
            "sizes": self.sizes,
            "baselines": self.baselines,
            "baseline_params": self.baseline_params,
            "calibration": [str(self.calibration_source), *self.calibration_shape],
            "spec": self.spec.settings(),
            "tasks": [
                self.task_names,
                self.tasks.limit,
                self.tasks.num_fewshot,
                sorted(self.tasks.builtin.items()),
            ],
            "dtype": str(self.teacher.dtype),
        }
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
        for b in batches:
            for t in (b.input_ids, b.positions, b.targets, b.docs):
                h.update(t.numpy().tobytes())
        return h.hexdigest()

    def _load_state(self, fingerprint: str) -> dict[str, Any]:
        path = self.partial / "state.json"
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except ValueError:
                state = {}
            if state.get("fingerprint") == fingerprint and state.get("version") == STATE_VERSION:
                self.progress.log(f"resuming the interrupted sweep from {self.partial}")
                return state
            if not self.restart:
                raise BoomerangError(
                    f"{self.partial} holds an interrupted sweep with different settings, data or models; pass "
                    "--restart to discard it (or rerun with the same arguments to resume it)"
                )
        return {
            "version": STATE_VERSION,
            "fingerprint": fingerprint,
            "groups": {},
            "units": {},
            "models": {},
            "lm_eval": {},
            "failed": {},
        }

    def _save_state(self) -> None:
        from ..io.atomic import atomic_write_text

        self.partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.partial / "state.json", json.dumps(self.state, indent=1) + "\n")

    # ---- evaluation -------------------------------------------------------------------------------------------
    def _evaluate_group(self, group: str, units: list[Unit], batches: list[Batch]) -> None:
        g = self.state["groups"].setdefault(group, {"next_batch": 0, "done": False, "seconds": 0.0})
        pending = [u for u in units if u.name not in self.state["failed"]]
        if g["done"] and all(u.name in self.state["lm_eval"] for u in pending if self.task_names):
            return
        models = []
        for u in pending:
            try:
                model = u.build()
            except BoomerangError as e:
                self.state["failed"][u.name] = str(e)
                self.progress.log(f"[yellow]skipped {u.name}[/]: {e}")
                continue
            models.append(Scored(u.name, model, u.key))
            self.state["models"][u.name] = describe_model(model)
        if not models:
            g["done"] = True
            self._save_state()
            return
        steps = schedule([s.key for s in models]) if self.reuse else None
        distinct = sum(1 for s in steps if s.alias_of is None) if steps else len(models)
        acc = {s.name: self.state["units"].setdefault(s.name, {"nll": 0.0, "count": 0}) for s in models}
        start = len(batches) if g["done"] else g["next_batch"]
        self.progress.start(f"{group}", total=len(batches) * distinct, done=start * distinct)
        last_save = time.monotonic()
        t0 = time.perf_counter()
        try:
            for i in range(start, len(batches)):
                batch = batches[i]

                def show(j: int, i: int = i) -> None:
                    self.progress.update(
                        f"{group} · batch {i + 1}/{len(batches)} · {models[j].name}", advance=1
                    )

                nll = score(
                    models,
                    lambda mdl, b=batch: batch_nll(mdl, b),
                    reuse=self.reuse,
                    steps=steps,
                    on_model=show,
                )
                for s, v in zip(models, nll, strict=True):
                    acc[s.name]["nll"] += float(v.double().sum())
                    acc[s.name]["count"] += int(v.numel())
                g["next_batch"] = i + 1
                if time.monotonic() - last_save >= self.checkpoint_seconds:
                    g["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._save_state()
                    last_save = time.monotonic()
                if self.on_batch is not None:
                    self.on_batch(group, i + 1, len(batches))
            g["done"] = True
        finally:
            g["seconds"] += time.perf_counter() - t0
            self._save_state()
        # lm-eval on the models while they are built (pruned baselines are expensive to rebuild)
        for s in models:
            self._lm_eval(s.name, s.model)

    def _lm_eval(self, name: str, model: Any) -> None:
        if not self.task_names or name in self.state["lm_eval"]:
            return
        self.progress.log(f"lm-eval {', '.join(self.task_names)} on {name}")
        self.state["lm_eval"][name] = self.lm.run(model, self.tokenizer)
        self._save_state()

    # ---- the run -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate everything (resuming if possible) and write ``out``; returns the results dict."""
        self._load()
        self.docs, self.batches = prepare(self.data, self.tokenizer, self.spec)
        if self.restart and self.partial.exists():
            shutil.rmtree(self.partial)
        self.po = self._order()
        fingerprint = self._fingerprint(self.batches)
        self.state = self._load_state(fingerprint)
        self._save_state()
        if self.task_names:
            from ..evaluate.lmeval import LMEval, prepare_builtin

            self.lm = LMEval(
                self.task_names,
                include_path=self.task_paths,
                batch_size=self.tasks.batch_size,
                limit=self.tasks.limit,
                num_fewshot=self.tasks.num_fewshot,
                needs_defaults=self.task_defaults,
            )
            task_data = self.tasks.data if self.tasks.data is not None else self.data
            self.lm.add_include_path(
                prepare_builtin(self.task_names, task_data, self.partial / "tasks", **self.tasks.builtin)
            )
        rows, units = self._plan_rows()
        groups: dict[str, list[Unit]] = {}
        for u in units.values():
            groups.setdefault(u.group, []).append(u)
        t0 = time.perf_counter()
        with self.progress.running():
            for group, members in groups.items():
                self._evaluate_group(group, members, self.batches)
        result = self._results(rows, units)
        result["seconds_this_run"] = time.perf_counter() - t0
        self._write(result)
        return result

    def _results(self, rows: list[Row], units: dict[str, Unit]) -> dict[str, Any]:
        metric = self.spec.metric
        out_rows = []
        for r in rows:
            info = self.state["models"].get(r.unit, {})
            acc = self.state["units"].get(r.unit, {"nll": 0.0, "count": 0})
            plan = r.plan
            row: dict[str, Any] = {
                "method": r.method,
                "K": r.K,
                "role": r.role,
                "layers": info.get("layers"),
                "trainable": info.get("trainable"),
                "inference": info.get("inference"),
                metric: math.exp(acc["nll"] / acc["count"]) if acc["count"] else float("nan"),
                "nll": acc["nll"] / acc["count"] if acc["count"] else float("nan"),
                "scored_tokens": acc["count"],
                "teacher_layers": plan.teacher_layers if plan is not None else info.get("teacher_layers"),
                "patched": list(plan.patched) if plan is not None and r.method != "naive" else None,
                "model": r.unit,
            }
            for task, metrics in self.state["lm_eval"].get(r.unit, {}).items():
                for name, value in metrics.items():
                    row[f"{task}/{name}"] = value
            if r.unit in self.state["failed"]:
                row["error"] = self.state["failed"][r.unit]
            out_rows.append(row)
        keyed = [u.key for u in units.values() if u.key is not None]
        return {
            "teacher": _source_name(self.teacher_spec, self.teacher),
            "student": _source_name(self.student_spec, self.student),
            "random_student": None
            if self.random is None
            else _source_name(self.random_spec, self.random.student),
            "data": str(self.data) if not isinstance(self.data, (list, tuple)) else "<list of texts>",
            "slice": [
                {"name": d.name, "offset": d.offset, "tokens": len(d.ids), "doc_tokens": d.doc_tokens}
                for d in self.docs
            ],
            "metric": {"name": metric, "label": METRIC_LABELS[metric]},
            "lm_eval_labels": lm_eval_labels(out_rows),
            "settings": self.spec.settings(),
            "layer_map": self.layer_map.to_json(),
            "order": self.po.to_json(),
            "sizes": self.sizes,
            "baselines": self.baselines,
            "tasks": self.task_names,
            "reuse": self.reuse,
            "work": work(keyed, [len(k[1]) for k in keyed]) if keyed else {},
            "seconds": {g: v["seconds"] for g, v in self.state["groups"].items()},
            "rows": out_rows,
        }

    # ---- outputs ---------------------------------------------------------------------------------------------
    def _write(self, result: dict[str, Any]) -> None:
        from ..evaluate.plots import sweep_plot
        from ..io.atomic import atomic_dir

        rows = result["rows"]
        metric = result["metric"]["name"]
        with atomic_dir(self.out, force=self.force) as tmp:  # never over an output another process wrote
            (tmp / "results.json").write_text(json.dumps(_clean(result), indent=1, default=str) + "\n")
            (tmp / "results.csv").write_text(to_csv(rows))
            (tmp / "results.md").write_text(to_markdown(result))
            shutil.copy(self.partial / "order.json", tmp / "order.json")
            if (self.partial / "tasks").is_dir():
                shutil.copytree(self.partial / "tasks", tmp / "tasks")
            title = f"{Path(result['teacher']).name} ← {Path(result['student']).name} ({self.po.name} order)"
            sweep_plot(rows, tmp / "sweep.png", y=metric, y_label=METRIC_LABELS[metric], title=title)
            for col in lm_eval_columns(rows):
                safe = col.replace("/", "-").replace(" ", "_")
                sweep_plot(rows, tmp / f"sweep-{safe}.png", y=col, y_label=col, title=title, log_y=False)
        shutil.rmtree(self.partial, ignore_errors=True)


def describe_model(model: Any) -> dict[str, Any]:
    """Layer count, parameter counts and (for pruned baselines) the teacher layers kept."""
    from ..core.hooks import layer_list
    from ..core.params import count_params

    section = getattr(model.config, "boomerang", None)
    kept = section.get("teacher_layers") if isinstance(section, dict) else None
    return {"layers": len(layer_list(model)), **count_params(model).as_dict(), "teacher_layers": kept}


def _clean(o: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def lm_eval_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r if "/" in k))


def lm_eval_labels(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``task/metric`` column -> what it measures (lm-eval's metrics, kept apart from boomerang's perplexity)."""
    from ..evaluate.lmeval import metric_label

    return {c: metric_label(c.split("/", 1)[1]) for c in lm_eval_columns(rows)}


BASE_COLUMNS = ("method", "K", "role", "layers", "trainable", "inference")


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    metric_cols = [k for k in rows[0] if k in ("ppl", "pppl")]
    cols = [
        *BASE_COLUMNS,
        *metric_cols,
        "nll",
        "scored_tokens",
        *lm_eval_columns(rows),
        "teacher_layers",
        "patched",
        "model",
        "error",
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(
            [
                " ".join(map(str, r[c]))
                if isinstance(r.get(c), list)
                else ("" if r.get(c) is None else r.get(c))
                for c in cols
            ]
        )
    return buf.getvalue()


def to_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    metric = result["metric"]["name"]
    extra = lm_eval_columns(rows)
    head = ["method", "K", "layers", "params (inference)", "params (trainable)", metric, *extra]
    lines = [
        f"# Sweep: {result['teacher']} ← {result['student']}",
        "",
        f"- order: `{result['order']['name']}`; sizes K = {result['sizes']}",
        f"- {result['metric']['label']}; settings: {json.dumps(result['settings'])}",
        *(
            f"- `{col}`: {label} (lm-evaluation-harness, not boomerang's token perplexity)"
            for col, label in (result.get("lm_eval_labels") or lm_eval_labels(rows)).items()
        ),
        "- data slice: "
        + "; ".join(
            f"{d['name']} tokens {d['offset']}..{d['offset'] + d['tokens']}" for d in result["slice"][:5]
        )
        + (f" (+{len(result['slice']) - 5} more)" if len(result["slice"]) > 5 else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 1 else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        label = r["method"] + (f" ({r['role']})" if r.get("role") else "")
        cells = [
            label,
            str(r["K"]),
            "" if r.get("layers") is None else str(r["layers"]),
            fmt_count(r["inference"]) if r.get("inference") else "",
            fmt_count(r["trainable"]) if r.get("trainable") else "",
            fmt_metric(r.get(metric)),
            *[fmt_metric(r.get(c)) for c in extra],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep(teacher: Any, student: Any, data: Any, out: str | Path, **options: Any) -> dict[str, Any]:
    """Run a family sweep and write its results into ``out`` (see the module docstring and ``Sweep``)."""
    return Sweep(teacher, student, data, out, **options).run()
