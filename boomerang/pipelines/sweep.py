"""Family sweeps: every member's quality against its size, beside the baselines, in one resumable run.

``sweep(teacher, student, data, out)`` evaluates the family members K in ``sizes`` (default 0..M) under the patch
order, plus the requested baselines at the same sizes, on the same batches, and writes into ``out`` (atomically):
``results.json``, ``results.csv``, ``results.md`` (a Markdown table), ``sweep.png`` (metric against inference
parameters, one curve per method) and ``order.json``.

* **Prefix reuse.** Members built from plans (and the naive and random-student baselines) are evaluated together,
  batch by batch, with ``boomerang.evaluate.reuse``: each shared prefix of layers runs once per batch. Results are identical
  to evaluating each member on its own (``reuse=False`` does that).
* **Resume.** Progress is saved in a sibling folder ``.<out>.partial`` after every batch (at most every
  ``RunOptions.checkpoint_seconds``) and on interruption; running the same command again continues where it stopped (members
  and batches already done are not recomputed). ``out`` appears only when everything is finished.
* **Baselines.** ``naive``: the teacher restricted to the same teacher layers as the member of that size (no
  distillation). ``shortgpt``, ``laco``: ``boomerang.analysis.baselines.prune_to`` at the member's layer count, with
  calibration data; one ``BaselineCache`` (the sweep's own, or ``BaselineOptions.cache``) shares ShortGPT's measurements
  and LaCo's searches across sizes. ``random-student``: the family of a randomly initialised, distilled student.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.baselines import BaselineCache, kept_layers
from ..core.configs import check_compatible
from ..core.plan import recorded_order_name
from ..errors import BoomerangError
from ..evaluate.perplexity import METRIC_LABELS, EvalSpec, check_source, prepare
from ..evaluate.reuse import work
from ..family import check_sizes
from ..io.atomic import check_writable
from ..io.snapshot import hold_local
from .sweep_eval import GroupEvaluator, OnBatch, SweepProgress, describe_model, make_lm_eval
from .sweep_inputs import (
    BASELINES,
    PRUNED,
    BaselineOptions,
    CalibrationOptions,
    RunOptions,
    TaskOptions,
    carried_layer_map,
    check_baselines,
    check_layer_map,
    check_order_name,
    lm_eval_tasks,
    load_models,
    model_config,
)
from .sweep_output import lm_eval_columns, lm_eval_labels, result_rows, to_csv, to_markdown, write_results
from .sweep_plan import (
    Calibration,
    Row,
    Unit,
    groups,
    plan_rows,
    pruned_baseline,
    sweep_order,
)
from .sweep_state import STATE_VERSION, SweepState, partial_dir, probe, source_name, sweep_fingerprint

if TYPE_CHECKING:
    from ..core.layermap import LayerMap
    from ..core.plan import OrderSpec
    from ..evaluate.perplexity import Source
    from ..hints import DType, Model, ModelSpec, Tokenizer

__all__ = [
    "BASELINES",
    "PRUNED",
    "STATE_VERSION",
    "BaselineOptions",
    "CalibrationOptions",
    "EvalSpec",
    "OnBatch",
    "Row",
    "RunOptions",
    "Sweep",
    "TaskOptions",
    "Unit",
    "describe_model",
    "lm_eval_columns",
    "lm_eval_labels",
    "partial_dir",
    "sweep",
    "sweep_options",
    "to_csv",
    "to_markdown",
]


class Sweep:
    """One sweep: validated on construction (cheap), run by ``run()``.

    The parts: ``sweep_inputs`` (checks and loading), ``sweep_plan`` (order, units and rows), ``sweep_state``
    (resumable progress), ``sweep_eval`` (groups of units with prefix reuse, lm-eval) and ``sweep_output``.
    ``order`` defaults to the patch order the student's config records, else ``last``. The options, each an object
    built once (by the CLI or the caller) and passed whole: ``baselines`` (``BaselineOptions``, or just the names; its ``cache`` shares the pruned baselines'
    measurements with other sweeps of the same teacher),
    ``spec`` (``EvalSpec``: what the metric is computed on), ``tasks`` (``TaskOptions``: lm-eval), ``calibration``
    (``CalibrationOptions``) and ``run`` (``RunOptions``: overwriting, resuming, progress).
    """

    def __init__(
        self,
        teacher: ModelSpec,
        student: ModelSpec,
        data: Source,
        out: str | Path,
        *,
        layer_map: LayerMap | None = None,
        tokenizer: Tokenizer | None = None,
        order: OrderSpec | None = None,
        sizes: Sequence[int] | None = None,
        baselines: BaselineOptions | Sequence[str] = (),
        spec: EvalSpec | None = None,
        tasks: TaskOptions | None = None,
        calibration: CalibrationOptions | None = None,
        run: RunOptions | None = None,
        dtype: DType | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        base = baselines if isinstance(baselines, BaselineOptions) else BaselineOptions(tuple(baselines))
        self.run_options = run = run or RunOptions()
        self.calibration_options = calibration = calibration or CalibrationOptions()
        self.out = Path(out)
        self.partial = partial_dir(self.out)
        check_writable(self.out, force=run.force)
        self.teacher_spec, self.student_spec, self.random_spec = teacher, student, base.random_student
        self.data, self.tokenizer, self.order_spec, self.dtype = data, tokenizer, order, dtype
        self.trust_remote_code = trust_remote_code
        self.baseline_params = base.params or {}
        self.baseline_cache = base.cache  # else the sweep's own, made when a pruned baseline is first built
        self.progress = SweepProgress(run.progress)
        self.tasks = tasks or TaskOptions()
        self.baselines = check_baselines(base.methods, base.random_student)
        if data is None:
            raise BoomerangError("a sweep needs evaluation data: --data PATH")
        check_source(data)
        if calibration.data is not None:
            check_source(calibration.data)

        # held from the first read: a checkpoint rewritten before the models load is a clear stop
        self.snapshots = hold_local(teacher, student, base.random_student)
        # configs, layer map and evaluation settings, without loading weights
        self.teacher_config = model_config(teacher, trust_remote_code=trust_remote_code)
        self.student_config = model_config(student, trust_remote_code=trust_remote_code)
        check_compatible(self.teacher_config, self.student_config)
        self.layer_map = layer_map or carried_layer_map(student, self.student_config)
        if order is None:  # the order the student records (init writes the recipe's patch_order), else last
            order = self.order_spec = recorded_order_name(self.student_config)
        check_layer_map(self.layer_map, self.teacher_config, self.student_config, "student")
        if base.random_student is not None:
            rcfg = model_config(base.random_student, trust_remote_code=trust_remote_code)
            check_compatible(self.teacher_config, rcfg)
            check_layer_map(self.layer_map, self.teacher_config, rcfg, "random-init student")
        # members K: checked against the order once it is resolved (an order by size has its own count)
        self.size_request = None if sizes is None else check_sizes(sizes, self.layer_map.n_teacher)
        self.sizes: list[int] = []
        self.spec = (spec or EvalSpec()).resolved(self.teacher_config)
        self.task_names, self.task_paths, self.task_defaults = lm_eval_tasks(self.tasks, self.teacher_config)
        check_order_name(order)

    def run(self) -> dict[str, Any]:
        """Evaluate everything (resuming if possible) and write ``out``; returns the results dict."""
        m = self.models = load_models(
            self.teacher_spec,
            self.student_spec,
            self.random_spec,
            self.layer_map,
            tokenizer=self.tokenizer,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
        )
        for snap in self.snapshots:  # every model and tokenizer came from the version validated above
            snap.verify()
        self.teacher, self.student, self.tokenizer, self.dtype = m.teacher, m.student, m.tokenizer, m.dtype
        self.docs, self.batches = prepare(self.data, self.tokenizer, self.spec)
        cal = self.calibration_options
        self.calibration = Calibration(
            cal.data if cal.data is not None else self.data,
            self.tokenizer,
            n=cal.samples,
            length=cal.length or min(256, self.spec.context or 256),
        )
        if self.run_options.restart and self.partial.exists():
            shutil.rmtree(self.partial)
        self.patch_order = sweep_order(self.partial, self.order_spec, m.family, self.calibration)
        self.sizes = check_sizes(self.size_request, self.layer_map.n_student, self.patch_order)
        self.state = SweepState.load(
            self.partial,
            sweep_fingerprint(self._settings(), self.batches),
            restart=self.run_options.restart,
            log=self.progress.log,
        )
        self.state.save()
        lm_eval_runner = None
        if self.task_names:
            lm_eval_runner = make_lm_eval(
                self.task_names, self.task_paths, self.task_defaults, self.tasks, self.data, self.partial
            )
        rows, units = plan_rows(
            self.layer_map,
            self.patch_order,
            self.sizes,
            self.baselines,
            family=m.family,
            teacher=m.teacher,
            random=m.random,
            pruned=self._pruned,
            pruned_layers=self._pruned_layers,
        )
        evaluator = GroupEvaluator(
            self.state,
            self.batches,
            reuse=self.run_options.reuse,
            progress=self.progress,
            checkpoint_seconds=self.run_options.checkpoint_seconds,
            on_batch=self.run_options.on_batch,
            lm_eval_runner=lm_eval_runner,
            tokenizer=self.tokenizer,
            task_names=self.task_names,
        )
        t0 = time.perf_counter()
        with self.progress.running():
            for group, members in groups(units).items():
                evaluator.run(group, members)
        result = self._results(rows, units)
        result["seconds_this_run"] = time.perf_counter() - t0
        write_results(
            result, self.out, self.partial, order_name=self.patch_order.name, force=self.run_options.force
        )
        return result

    def _pruned(self, method: str, n_layers: int) -> Model:
        params = dict(self.baseline_params.get(method, {}))
        self.progress.log(f"building the {method} baseline with {n_layers} layers")
        return pruned_baseline(
            self.teacher, method, n_layers, self.calibration(), params, cache=self._baseline_cache()
        )

    def _pruned_layers(self, method: str, n_layers: int) -> list[int] | None:
        params = dict(self.baseline_params.get(method, {}))
        return kept_layers(
            self.teacher,
            method,
            num_layers=n_layers,
            calibration=self.calibration(),
            cache=self._baseline_cache(),
            **params,
        )

    def _baseline_cache(self) -> BaselineCache:
        if self.baseline_cache is None:
            self.baseline_cache = BaselineCache()
        return self.baseline_cache

    def _names(self) -> tuple[str, str, str | None]:
        """The teacher's, student's and random-init student's names as results and fingerprints record them."""
        rnd = self.models.random
        return (
            source_name(self.teacher_spec, self.teacher),
            source_name(self.student_spec, self.student),
            None if rnd is None else source_name(self.random_spec, rnd.student),
        )

    def _settings(self) -> dict[str, Any]:
        """Everything the saved progress depends on (with the batches: the state's fingerprint)."""
        teacher, student, rnd = self._names()
        random, cal = self.models.random, self.calibration_options
        return {
            "teacher": teacher,
            "student": student,
            "random": rnd,
            "probes": [probe(self.teacher), probe(self.student)]
            + ([probe(random.student)] if random is not None else []),
            "layer_map": self.layer_map.to_json(),
            "order": self.patch_order.to_json()["subsets"],
            "sizes": self.sizes,
            "baselines": self.baselines,
            "baseline_params": self.baseline_params,
            "calibration": [str(cal.data), cal.samples, cal.length],
            "spec": self.spec.settings(),
            "tasks": [
                self.task_names,
                self.tasks.limit,
                self.tasks.num_fewshot,
                sorted(self.tasks.builtin.items()),
            ],
            "dtype": str(self.teacher.dtype),
        }

    def _results(self, rows: list[Row], units: dict[str, Unit]) -> dict[str, Any]:
        metric = self.spec.metric
        out_rows = result_rows(rows, self.state, metric)
        keyed = [u.key for u in units.values() if u.key is not None]
        teacher, student, rnd = self._names()
        return {
            "teacher": teacher,
            "student": student,
            "random_student": rnd,
            "data": str(self.data) if not isinstance(self.data, (list, tuple)) else "<list of texts>",
            "slice": [
                {"name": d.name, "offset": d.offset, "tokens": len(d.ids), "doc_tokens": d.doc_tokens}
                for d in self.docs
            ],
            "metric": {"name": metric, "label": METRIC_LABELS[metric]},
            "lm_eval_labels": lm_eval_labels(out_rows),
            "settings": self.spec.settings(),
            "layer_map": self.layer_map.to_json(),
            "order": self.patch_order.to_json(),
            "sizes": self.sizes,
            "baselines": self.baselines,
            "tasks": self.task_names,
            "reuse": self.run_options.reuse,
            "work": work(keyed, [len(k[1]) for k in keyed]) if keyed else {},
            "seconds": {g: v["seconds"] for g, v in self.state.groups.items()},
            "rows": out_rows,
        }


def sweep(
    teacher: ModelSpec, student: ModelSpec, data: Source, out: str | Path, **options: Any
) -> dict[str, Any]:
    """Run a family sweep and write its results into ``out`` (see the module docstring and ``Sweep``).

    ``options`` are ``Sweep``'s keywords, or the flat keywords ``sweep_options`` gathers into its option objects.
    """
    return Sweep(teacher, student, data, out, **sweep_options(options)).run()


_RUN = tuple(f.name for f in fields(RunOptions))
_CALIBRATION = {"calibration_samples": "samples", "calibration_length": "length"}
_BASELINE = {"random_student": "random_student", "baseline_params": "params", "baseline_cache": "cache"}


def sweep_options(options: Mapping[str, object]) -> dict[str, Any]:
    """``Sweep``'s keywords from ``sweep()``'s, which also takes them flat, as earlier versions did: ``force``,
    ``restart``, ``reuse``, ``progress``, ``on_batch``, ``checkpoint_seconds`` (``RunOptions``); ``calibration`` (a
    text source), ``calibration_samples``, ``calibration_length`` (``CalibrationOptions``); ``baselines`` (names),
    ``random_student``, ``baseline_params``, ``baseline_cache`` (``BaselineOptions``)."""
    kw = dict(options)

    def gather(names: dict[str, str], key: str, cls: type, first: str | None = None) -> None:
        flat = {new: kw.pop(old) for old, new in names.items() if old in kw}
        if first is not None and key in kw and not isinstance(kw[key], cls):
            flat[first] = kw.pop(key)
        if flat:
            if isinstance(kw.get(key), cls):
                raise TypeError(f"sweep() got {key}={cls.__name__}(...) and flat keywords for it too")
            kw[key] = cls(**flat)

    gather({name: name for name in _RUN}, "run", RunOptions)
    gather(_CALIBRATION, "calibration", CalibrationOptions, first="data")
    gather(_BASELINE, "baselines", BaselineOptions, first="methods")
    return kw
