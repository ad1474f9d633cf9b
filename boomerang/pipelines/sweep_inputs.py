"""A sweep's inputs: its option objects (``BaselineOptions``, ``CalibrationOptions``, ``RunOptions``; the
evaluation's ``EvalSpec`` and ``TaskOptions`` come from ``boomerang.evaluate``), checked before any weights load
(baselines, configs, layer maps, lm-eval tasks, the order's name), then loaded when it runs (the models in one common
dtype, the tokenizer and the families). Nothing here imports torch: the CLI takes its option defaults from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.arch import n_layers
from ..core.layermap import LayerMap
from ..core.plan import BUILTIN_ORDERS, DATA_ORDERS, OrderSpec
from ..errors import BoomerangError
from ..evaluate.lmeval import TaskOptions, resolve_tasks
from ..io.sidecar import read_layer_map

# Lazy imports: the CLI reads its sweep options from here at start-up, so model loading (torch, transformers)
# and the Family are imported inside the functions that load them.
if TYPE_CHECKING:
    from ..analysis.baselines import BaselineCache
    from ..hints import Config, DType, ModelSpec, Tokenizer
    from .sweep_eval import OnBatch

BASELINES = ("naive", "shortgpt", "laco", "random-student")
PRUNED = ("shortgpt", "laco")  # built by boomerang.analysis.baselines.prune_to


@dataclass(frozen=True)
class BaselineOptions:
    """The baselines a sweep evaluates beside the family, at the same sizes.

    ``methods``: any of ``BASELINES`` (``random-student`` is added when ``random_student`` is given);
    ``random_student``: the randomly initialised, distilled student of that baseline (a checkpoint or a model);
    ``params``: keyword options per pruned method for ``boomerang.analysis.baselines.prune_to``;
    ``cache``: a ``BaselineCache`` shared with other sweeps of the same teacher (None: the sweep makes its own).
    """

    methods: Sequence[str] = ()
    random_student: Any = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: BaselineCache | None = None


@dataclass(frozen=True)
class CalibrationOptions:
    """The calibration blocks of the pruned baselines and data-driven orders: ``samples`` blocks of ``length``
    tokens (None: min(256, the evaluation's context)) from ``data`` (None: the evaluation data)."""

    data: Any = None
    samples: int = 128
    length: int | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs and writes its output; none of it changes the numbers.

    ``force``: overwrite ``out``; ``restart``: discard an interrupted sweep's saved progress; ``reuse``: compute
    shared layer prefixes once per batch; ``progress``: show progress bars; ``on_batch(group, done, total)``: called
    after each batch; ``checkpoint_seconds``: save progress at most this often.
    """

    force: bool = False
    restart: bool = False
    reuse: bool = True
    progress: bool = False
    on_batch: OnBatch | None = None
    checkpoint_seconds: float = 30.0


def check_baselines(baselines: Sequence[str], random_student: ModelSpec) -> list[str]:
    """The requested baselines, known and once each (``random-student`` is added when its student is given)."""
    names = [b.strip() for b in baselines if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise BoomerangError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    chosen = list(dict.fromkeys(names))
    if "random-student" in chosen and random_student is None:
        raise BoomerangError(
            "the random-student baseline needs the random-init student: --random-student PATH"
        )
    if random_student is not None and "random-student" not in chosen:
        chosen.append("random-student")
    if any(b in PRUNED for b in chosen):
        try:
            from ..analysis.baselines import prune_to  # noqa: F401
        except ImportError:
            raise BoomerangError(
                f"the {', '.join(b for b in chosen if b in PRUNED)} baseline(s) need "
                "boomerang.analysis.baselines.prune_to, which is not available in this installation"
            ) from None
    return chosen


def model_config(spec: ModelSpec, *, trust_remote_code: bool) -> Any:
    """The config of a checkpoint path or of an in-memory model (no weights are loaded)."""
    from ..io.loading import load_config

    if isinstance(spec, (str, Path)):
        return load_config(spec, trust_remote_code=trust_remote_code)
    if not hasattr(spec, "config"):
        raise BoomerangError(f"expected a model or a checkpoint path, got {type(spec).__name__}")
    return spec.config


def carried_layer_map(spec: ModelSpec, config: Config) -> Any:
    """The layer map the student carries (its config section or ``student_config.json``)."""
    layer_map = read_layer_map(spec, config, allow_hub=False) if isinstance(spec, (str, Path)) else None
    layer_map = layer_map or LayerMap.from_config(config)
    if layer_map is None:
        raise BoomerangError(
            "the student carries no layer map (no 'boomerang' config section or student_config.json); pass "
            "--layers 0,2,... or --layer-map distilbert|distilgpt2 (layer_map=... in Python)"
        )
    return layer_map


def check_layer_map(layer_map: LayerMap, teacher_config: Config, config: Config, what: str) -> None:
    """The layer map fits the teacher and this student, by their configs (``LayerMap.check_fits``; ``what`` names
    the student in the message)."""
    layer_map.check_fits(n_layers(teacher_config), n_layers(config), student=what)


def lm_eval_tasks(tasks: TaskOptions, teacher_config: Config) -> tuple[list[str], Any, Any]:
    """lm-eval's task names, include paths and the tasks needing defaults (nothing without tasks)."""
    if not tasks.tasks:
        return [], (), None
    from ..evaluate.perplexity import is_encoder

    if is_encoder(teacher_config):
        raise BoomerangError("lm-eval tasks need causal LMs; a BERT family is scored by pseudo-perplexity")
    names, paths, defaults = resolve_tasks(tasks.tasks, tasks.include_path)
    return names, paths, defaults


def check_order_name(order: OrderSpec | None) -> None:
    """A string order is a built-in or data-driven order, a JSON order file, or a JSON list of layers."""
    if not isinstance(order, str):
        return

    if order not in BUILTIN_ORDERS + DATA_ORDERS and not Path(order).is_file() and not order.startswith("["):
        raise BoomerangError(
            f"unknown patch order {order!r}: use {', '.join(BUILTIN_ORDERS + DATA_ORDERS)}, a JSON order "
            "file, or a JSON list of student layers such as [3,2,1,0]"
        )


@dataclass
class SweepModels:
    """The loaded models: teacher, student, tokenizer, the family and (for that baseline) the random family."""

    teacher: Any
    student: Any
    tokenizer: Any
    family: Any
    random: Any  # the random-init student's Family, or None
    dtype: Any


def load_models(
    teacher: ModelSpec,
    student: ModelSpec,
    random_student: ModelSpec,
    layer_map: LayerMap,
    *,
    tokenizer: Tokenizer,
    dtype: DType,
    trust_remote_code: bool,
) -> SweepModels:
    """Load (or take) the models in one common dtype, the tokenizer, and build the families."""
    from ..family import Family
    from ..io.loading import load_pair, load_tokenizer, pair_load_dtype

    tr = trust_remote_code
    # one common dtype (a bf16 student beside an fp32 teacher), the random-init student's too
    dtype = pair_load_dtype(teacher, student, dtype, trust_remote_code=tr)
    t, s = (m.eval() for m in load_pair(teacher, student, dtype=dtype, trust_remote_code=tr))
    if tokenizer is None:
        if not isinstance(teacher, (str, Path)):
            raise BoomerangError("pass tokenizer=... for in-memory models")
        tokenizer = load_tokenizer(teacher, trust_remote_code=tr)
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=tr)
    family = Family(t, s, layer_map, tokenizer=tokenizer)
    random = None
    if random_student is not None:
        # beside the loaded teacher (taken as it is), in the pair's dtype
        _, r = load_pair(t, random_student, dtype=dtype, trust_remote_code=tr)
        random = Family(t, r.eval(), layer_map)
    return SweepModels(t, s, tokenizer, family, random, dtype)
