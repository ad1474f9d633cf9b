"""Initialising a student from options as a command line gives them, checked before any model loads.

``init_section`` makes the ``InitSection`` (whose own rules say which settings go with which strategy) from loose
options; ``plan_init`` checks it against the teacher's config alone (layer count, positions) and fills in what
depends on the teacher. ``boomerang.train.initialise.write_student`` then does the heavy work. ``boomerang init`` is
these three calls; the Python API gets the same checks and messages by making the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..core.arch import n_layers
from ..core.configs import max_positions
from ..core.layermap import LayerMap
from ..errors import BoomerangError
from ..io.loading import load_config
from .recipe import MEASURED, OPTIONS, STRATEGIES, InitSection, Spelling, resolve_model_spec

DEFAULT_CALIBRATION_LENGTH = 256  # tokens per calibration block, unless the teacher has fewer positions
PAPER_DEFAULT = {"every": 2, "keep_first": 1, "keep_last": 2}  # the paper's every-other-layer student


def init_section(
    strategy: str | None = None,
    *,
    layers: list[int] | None = None,
    data: str | None = None,
    size: int | None = None,
    spelling: Spelling = OPTIONS,
    **settings: Any,
) -> InitSection:
    """The ``InitSection`` that ``boomerang init``'s options describe.

    The strategy defaults to ``layers`` when ``layers`` are given, else ``every``; ``data`` (the calibration texts)
    is required by the measured strategies and, like ``size``, refused by the others. ``settings`` are the other
    ``InitSection`` fields (``every``, ``max_block``, ``calibration_length``, ...); one left out or ``None`` takes
    the section's default. Every rule is checked here, with messages that name the options as ``spelling`` spells
    them.
    """
    strategy = strategy or ("layers" if layers else "every")
    name, setting = spelling.name, spelling.setting
    if strategy not in STRATEGIES:
        raise BoomerangError(f"unknown {name('strategy')} {strategy!r}; use one of: {', '.join(STRATEGIES)}")
    given = {k: v for k, v in settings.items() if v is not None}
    fields = dict(strategy=strategy, layers=layers, size=size, calibration=data, **given)
    try:
        section = InitSection.model_validate(fields, context={"spelling": spelling})
    except ValidationError as e:
        raise _option_error(e, spelling) from None
    measured = strategy in MEASURED
    if measured and data is None:
        raise BoomerangError(
            f"{setting('strategy', strategy)} needs calibration texts: pass {setting('calibration', 'PATH')}"
        )
    if not measured and (size is not None or data is not None):
        raise BoomerangError(
            f"{name('size')} and {name('calibration')} only apply to {setting('strategy', 'similarity')} or "
            "shortgpt"
        )
    return section


def _option_error(e: ValidationError, spelling: Spelling) -> BoomerangError:
    """The first problem of a failed ``InitSection`` validation, naming the option as ``spelling`` spells it."""
    err = e.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    ctx, got = err.get("ctx") or {}, err.get("input")
    if err["type"] == "greater_than_equal":
        opt, low = spelling.name(key), ctx["ge"]
        return BoomerangError(
            f"{opt} must be at least {low}, got {got}; give {opt} {low} or more (or leave it out for the default)"
        )
    if err["type"] == "less_than_equal":
        opt, high = spelling.name(key), ctx["le"]
        return BoomerangError(f"{opt} must be at most {high}, got {got}; give {opt} {high} or less")
    msg = str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    return BoomerangError(f"{spelling.name(key)}: {msg}" if key else msg)


@dataclass(frozen=True)
class InitPlan:
    """A student initialisation checked against its teacher's config: what ``write_student`` makes."""

    teacher: str  # as given: a directory, .gguf, Hub id, or smollm2-offline
    init: InitSection  # its calibration_length fitted to the teacher's positions
    teacher_layers: int
    patch_order: str | None = None  # recorded in the student's config
    trust_remote_code: bool = False

    @property
    def measured(self) -> bool:
        """Whether the strategy measures the teacher on calibration texts."""
        return self.init.strategy in MEASURED


def plan_init(
    teacher: str,
    init: InitSection,
    *,
    patch_order: str | None = None,
    trust_remote_code: bool = False,
    spelling: Spelling = OPTIONS,
) -> InitPlan:
    """Check ``init`` against the teacher's config alone (no weights load): refuse a student that cannot be made or
    would be the whole teacher, and a calibration length past the teacher's positions; a calibration length left
    unset becomes 256 tokens, or the teacher's positions if fewer."""
    if patch_order is not None and patch_order not in ("last", "first"):
        raise BoomerangError(f"{spelling.name('patch_order')} must be last or first, not {patch_order!r}")
    config = load_config(resolve_model_spec(teacher), trust_remote_code=trust_remote_code)
    n = n_layers(config)
    check_student_shape(init, n, spelling)
    if init.strategy in MEASURED:
        limit = max_positions(config)
        length = init.calibration_length
        if "calibration_length" not in init.model_fields_set:
            length = min(DEFAULT_CALIBRATION_LENGTH, limit) if limit else DEFAULT_CALIBRATION_LENGTH
        elif limit is not None and length > limit:
            opt = spelling.name("calibration_length")
            raise BoomerangError(
                f"{opt} {length} exceeds the model's {limit} positions ({teacher}); give {opt} {limit} or less"
            )
        init = init.model_copy(update={"calibration_length": length})
    return InitPlan(teacher, init, n, patch_order, trust_remote_code)


def check_student_shape(init: InitSection, n: int, spelling: Spelling = OPTIONS) -> None:
    """Refuse, for an ``n``-layer teacher, a student that cannot be made or would be the whole teacher."""
    why = f"the teacher has {n} layers"
    _in_range(spelling, "keep_first", init.keep_first, 1, n, why)
    _in_range(spelling, "keep_last", init.keep_last, 0, n, why)
    every = lambda: LayerMap.every(n, init.every, init.keep_first, init.keep_last)  # noqa: E731
    if init.strategy in MEASURED:
        _in_range(spelling, "size", init.size, 1, n - 1, f"{why} and a student keeps fewer")
        m = init.size or every().n_student
        _in_range(
            spelling,
            "isolate",
            init.isolate,
            0,
            min(n // 2, n - m),
            f"a {m}-layer student of {n} layers drops {n - m}, and "
            "each isolated layer is one of them, alone in a 2-layer block",
        )
        return
    layer_map = LayerMap.from_kept(init.layers, n) if init.layers else every()
    if layer_map.n_student >= n:
        spell = lambda values: " ".join(spelling.setting(k, v) for k, v in values.items())  # noqa: E731
        how = spelling.name("layers") if init.layers else spell(init.model_dump(include=set(PAPER_DEFAULT)))
        raise BoomerangError(
            f"{how} keeps all {n} teacher layers, so the student would be the teacher; keep fewer layers "
            f"(e.g. {spell(PAPER_DEFAULT)}, the paper's default)"
        )


def _in_range(spelling: Spelling, key: str, value: int | None, low: int, high: int, why: str) -> None:
    """``low <= value <= high`` (inclusive), ``why`` saying where the bounds come from."""
    if value is not None and not low <= value <= high:
        raise BoomerangError(f"{spelling.name(key)} {value} is out of range: {why}, so give {low}..{high}")
