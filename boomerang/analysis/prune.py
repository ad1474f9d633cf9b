"""A pruned teacher written to disk (``boomerang prune``, and the same from Python).

``prune_checkpoint`` checks everything it can from the teacher's config first (the method and its options, the
size, the naive layers), then draws the calibration blocks (each method's defaults: ``CALIBRATION``), loads the
teacher, prunes it with ``baselines.prune_to`` and writes it with ``baselines.save_pruned``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.arch import n_layers
from ..core.params import ParamCount, count_params
from ..data.blocks import calibration_ids
from ..errors import BoomerangError
from ..io import loading
from ..io.atomic import check_writable
from .baselines import METHODS, naive_layers, prune_to, save_pruned

if TYPE_CHECKING:
    from ..core.layermap import LayerMap
    from ..core.plan import OrderSpec
    from ..hints import DType

# default calibration of each method that calibrates: (blocks, tokens per block). LaCo's own code used 5 short
# sentences; ShortGPT's measures BI over many tokens.
CALIBRATION = {"shortgpt": (128, 256), "laco": (8, 128)}
# the options only one method reads, with their defaults (a changed one is refused for the other methods)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "shortgpt": {"recompute": False},
    "laco": {"merge_layers": None, "threshold": None, "lowest": 0, "highest": None, "interval": 1},
}


@dataclass(frozen=True)
class CalibrationText:
    """The calibration text of shortgpt and laco: ``source`` (a text file, folder, .jsonl or hf:NAME), ``texts``
    blocks of ``length`` tokens (None: the method's default, ``CALIBRATION``), drawn with ``seed``."""

    source: str | None = None
    texts: int | None = None
    length: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class PrunedCheckpoint:
    """What ``prune_checkpoint`` wrote: where, by which method, the config's ``boomerang`` section (the teacher
    layers kept, the method's parameters and measurements) and the parameter counts."""

    path: Path
    method: str
    section: dict[str, Any]
    counts: ParamCount


def _only(condition: bool, what: str, **given: bool) -> None:
    used = ["--" + name.replace("_", "-") for name, on in given.items() if on]
    if used and not condition:
        raise BoomerangError(f"{', '.join(used)} apply only {what}; drop {' and '.join(used)}")


def _in_range(option: str, value: int | None, low: int, high: int, why: str) -> None:
    if value is not None and not low <= value <= high:
        raise BoomerangError(f"{option} {value} is out of range: {why}, so give {low}..{high}")


def check_prune(
    n_teacher: int,
    method: str,
    *,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
    layer_map: LayerMap | None = None,
    order: OrderSpec = "last",
    data: str | None = None,
    calibration_texts: int | None = None,
    calibration_length: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Check a pruning request against an ``n_teacher``-layer teacher (arithmetic on configs: nothing loads) and
    return the method's own keyword arguments for ``prune_to``."""
    if method not in METHODS:
        raise BoomerangError(f"unknown --method {method!r}; use one of: {', '.join(METHODS)}")
    unknown = set(options).difference(*METHOD_OPTIONS.values())
    if unknown:
        raise BoomerangError(f"unknown pruning option(s): {', '.join(sorted(unknown))}")
    naive = method == "naive"
    if not naive and (layers is not None or layer_map is not None):
        raise BoomerangError("--layers and --student apply to --method naive only")
    if naive and layers is None and num_layers is None:
        raise BoomerangError("give --num-layers N or --layers i,j,... for the naive baseline")
    if method == "shortgpt" and num_layers is None:
        raise BoomerangError("shortgpt needs --num-layers")
    if layers is not None and layer_map is not None:
        raise BoomerangError("give --layers or --student, not both (--student picks the layers)")
    for owner, defaults in METHOD_OPTIONS.items():
        _only(
            method == owner,
            f"to --method {owner}",
            **{k: options.get(k, d) != d for k, d in defaults.items()},
        )
    _only(
        not naive,
        "to shortgpt and laco (naive needs no calibration text)",
        data=data is not None,
        calibration_texts=calibration_texts is not None,
        calibration_length=calibration_length is not None,
    )
    if not naive and data is None:
        raise BoomerangError(
            f"{method} needs calibration text: pass --data PATH (a text file, folder or .jsonl)"
        )
    n = n_teacher
    lowest, highest = options.get("lowest", 0), options.get("highest")
    _in_range("--num-layers", num_layers, 1, n, f"the teacher has {n} layers")
    _in_range("--lowest", lowest, 0, n - 1, f"the teacher has layers 0..{n - 1}")
    _in_range("--highest", highest, lowest, n - 1, f"--lowest is {lowest} and the top layer {n - 1}")
    if naive:  # pure arithmetic on the configs: every naive error shows before the teacher loads
        params = {} if layer_map is None else {"layer_map": layer_map, "order": order}
        naive_layers(n, num_layers, layers=layers, **params)
        return params
    return {k: options.get(k, d) for k, d in METHOD_OPTIONS[method].items()}


def prune_checkpoint(
    teacher: str,
    out: str | Path,
    method: str = "naive",
    *,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
    layer_map: LayerMap | None = None,
    order: OrderSpec = "last",
    calibration: CalibrationText | str | None = None,
    batch_size: int = 8,
    dtype: DType = "auto",
    force: bool = False,
    trust_remote_code: bool = False,
    status: Callable[[str], None] | None = None,
    **options: float | None,
) -> PrunedCheckpoint:
    """Prune the checkpoint ``teacher`` by ``method`` (naive, shortgpt or laco; see ``baselines``) and write the
    result (with the teacher's tokenizer) to ``out``, atomically.

    naive: ``num_layers`` or ``layers`` (teacher layers to keep); with a student's ``layer_map``, the layers of its
    family member of that size under ``order``. shortgpt and laco calibrate on ``calibration`` (a text source, or
    a ``CalibrationText``); their own ``options``: ``METHOD_OPTIONS``. Every check runs before the teacher loads.
    """
    check_writable(out, force=force)
    n = n_layers(loading.load_config(teacher, trust_remote_code=trust_remote_code))
    cal = CalibrationText(calibration) if isinstance(calibration, str) else calibration or CalibrationText()
    given = {"data": cal.source, "calibration_texts": cal.texts, "calibration_length": cal.length}
    params = check_prune(
        n, method, num_layers=num_layers, layers=layers, layer_map=layer_map, order=order, **given, **options
    )
    tok = loading.load_tokenizer(teacher, trust_remote_code=trust_remote_code)
    ids = None
    if cal.source is not None:
        texts, length = CALIBRATION[method]
        ids = calibration_ids(
            cal.source, tok, n=cal.texts or texts, length=cal.length or length, seed=cal.seed
        )
        params.update(batch_size=batch_size, status=status)
    model = loading.load_model(teacher, dtype=dtype, trust_remote_code=trust_remote_code)
    model = prune_to(model, method, layers=layers, num_layers=num_layers, calibration=ids, **params)
    if status is not None:
        status(f"writing {out}")
    save_pruned(model, out, tokenizer=tok, force=force)
    return PrunedCheckpoint(Path(out), method, dict(model.config.boomerang), count_params(model))
