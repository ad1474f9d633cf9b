"""Layer-pruning baselines: naive layer dropping, ShortGPT and LaCo.

Every method picks teacher layers (LaCo also merges some) and builds the pruned model with
``boomerang.core.patching.assemble``, so configs (layer count, ``layer_types``, ``max_window_layers``, ``layer_idx``)
are right and checkpoints load with plain ``from_pretrained``. The one entry point the sweep uses is
:func:`prune_to`.

* **naive** (paper §3.1): keep a given set of teacher layers. By default, the teacher layers of the interpolated
  model of the same size (given a layer map), else of the default student (``LayerMap.every(N)``, last order),
  else evenly spaced layers.
* **shortgpt** (Men et al. 2024): Block Influence ``BI_i = 1 - E[cos(x_i, x_{i+1})]`` between layer i's input and
  output over all calibration tokens; the layers with the lowest BI are removed. By default BI is measured once
  on the teacher (as in the official ShortGPT code); ``recompute=True`` re-measures it on the pruned model after
  every removal.
* **laco** (Yang et al. 2024): merge a chunk of C layers into its first layer,
  ``theta* = theta_l + sum_k (theta_{l+k} - theta_l)``, over the weights and biases of every linear layer of the
  block (norms keep layer l's values); accept when the mean over calibration texts of the cosine between the
  flattened last hidden states of the merged and original models exceeds T.

ShortGPT's measurements and LaCo's searches are kept between calls only in a :class:`BaselineCache` that the
caller owns and passes as ``cache=`` (a sweep over sizes: one cache, one measurement); the module holds no state.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ..core import spans
from ..core.arch import get_arch
from ..core.hooks import StopForward, capture, layer_list, stop_after
from ..core.layermap import LayerMap
from ..core.patching import _set_tensor, assemble
from ..core.plan import PatchOrder, PatchPlan
from ..core.spans import forward_ids
from ..errors import BoomerangError
from ..interrupts import check
from ..io.atomic import atomic_dir
from .orders import as_calibration, batches, calibration_info
from .resolve import resolve_order

if TYPE_CHECKING:
    from ..hints import Calibration, Tokenizer

METHODS = ("naive", "shortgpt", "laco")
LACO_MERGE_GRID = (3, 4, 5, 6)
# 0.95, 0.90, ..., 0.05: LaCo's paper stops near 0.45 on 7B models, but a small model's merges fall below that long
# before the sizes a family needs (SmolLM2-135M: no LaCo model under 28 of 30 layers at 0.45)
LACO_THRESHOLDS = tuple(round(0.95 - 0.05 * i, 2) for i in range(19))
Status = Callable[[str], None]
_T = TypeVar("_T")


def _n_layers(model: nn.Module) -> int:
    return len(layer_list(model))


def _check_size(num_layers: int, n: int) -> None:
    if not 1 <= num_layers <= n:
        raise BoomerangError(f"num_layers={num_layers} is out of range for a {n}-layer teacher; use 1..{n}")


def build_pruned(
    teacher: PreTrainedModel, kept: Sequence[int], section: Mapping[str, object], *, copy: bool = False
) -> PreTrainedModel:
    """The teacher restricted to the teacher layers ``kept`` (in order); tensors shared unless ``copy``."""
    return assemble(
        {"teacher": teacher}, [("teacher", j) for j in kept], "teacher", "teacher", section=section, copy=copy
    )


def _section(method: str, kept: Sequence[int], n_teacher: int, **extra: Any) -> dict[str, Any]:
    return {
        "role": "baseline",
        "method": method,
        "n_teacher": n_teacher,
        "num_layers": len(kept),
        "teacher_layers": list(kept),
        **extra,
    }


# ---- naive ---------------------------------------------------------------------------------------------------


def evenly_spaced(n_teacher: int, num_layers: int) -> list[int]:
    """``num_layers`` teacher layers spread evenly, first and last included."""
    _check_size(num_layers, n_teacher)
    if num_layers == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (num_layers - 1)) for i in range(num_layers)]


def family_layers(
    layer_map: LayerMap, num_layers: int, order: str | PatchOrder | Sequence[int] = "last"
) -> list[int]:
    """Teacher layers of the family member (under ``order``: a name, order file or PatchOrder) of that size."""
    patch_order = resolve_order(order, layer_map)
    sizes = {}
    for k in range(patch_order.n_members):
        plan = PatchPlan(layer_map=layer_map, patched=patch_order.patched(k), order=patch_order.name)
        sizes.setdefault(plan.n_layers, plan)
    if num_layers not in sizes:
        raise BoomerangError(
            f"no member of the {patch_order.name!r} family has {num_layers} layers (sizes: {sorted(sizes)}); pass the "
            "teacher layers to keep explicitly (layers=..., --layers)"
        )
    return sizes[num_layers].teacher_layers


def naive_layers(
    n_teacher: int,
    num_layers: int | None = None,
    *,
    layers: Sequence[int] | None = None,
    layer_map: LayerMap | None = None,
    order: str | PatchOrder | Sequence[int] = "last",
) -> list[int]:
    """The teacher layers the naive baseline keeps (see the module docstring for the defaults)."""
    if layers is not None:
        kept = sorted(int(j) for j in layers)
        bad = [j for j in kept if not 0 <= j < n_teacher]
        if bad or len(set(kept)) != len(kept) or not kept:
            raise BoomerangError(
                f"layers {list(layers)} must be distinct teacher layers in 0..{n_teacher - 1} (at least one)"
            )
        if num_layers is not None and num_layers != len(kept):
            raise BoomerangError(f"num_layers={num_layers} but {len(kept)} layers were listed")
        return kept
    if num_layers is None:
        raise BoomerangError(
            "the naive baseline needs num_layers (--num-layers) or the layers to keep (--layers)"
        )
    _check_size(num_layers, n_teacher)
    if layer_map is not None:
        if layer_map.n_teacher != n_teacher:
            raise BoomerangError(
                f"the layer map is for a {layer_map.n_teacher}-layer teacher, but the teacher has {n_teacher} layers"
            )
        return family_layers(layer_map, num_layers, order)
    default = LayerMap.every(n_teacher)
    if default.n_student <= num_layers:
        return family_layers(default, num_layers, "last")
    return evenly_spaced(n_teacher, num_layers)


def prune_naive(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    *,
    layers: Sequence[int] | None = None,
    layer_map: LayerMap | None = None,
    order: str | PatchOrder | Sequence[int] = "last",
    copy: bool = False,
) -> PreTrainedModel:
    n = _n_layers(teacher)
    kept = naive_layers(n, num_layers, layers=layers, layer_map=layer_map, order=order)
    params: dict[str, Any] = {}
    if layers is None:
        if layer_map is not None:
            params = {"layer_map": layer_map.to_json(), "order": resolve_order(order, layer_map).name}
        else:
            params = {
                "default": "every-other family (last order)"
                if num_layers and num_layers >= LayerMap.every(n).n_student
                else "evenly spaced"
            }
    return build_pruned(teacher, kept, _section("naive", kept, n, parameters=params), copy=copy)


# ---- a cache so that sweeps over sizes reuse one measurement --------------------------------------------------


def _weights_version(model: nn.Module) -> int:
    """Changes whenever a tensor of ``model`` is replaced or edited in place (``_version`` counts in-place ops)."""
    return hash(tuple((p.data_ptr(), p._version) for p in model.parameters()))


class BaselineCache:
    """ShortGPT's measurements and LaCo's searches, per model, for whoever prunes one teacher many times.

    Its owner (a sweep for its lifetime, the demo across its sweeps, a benchmark) creates one and passes it as
    ``cache=`` to :func:`prune_to`, :func:`shortgpt`, :func:`laco_search` and the ``prune_*`` functions, so that
    a sweep over many sizes measures once; without one, every call measures afresh. Entries are keyed weakly by
    model (dropped with the model, never keeping it alive) and dropped whenever the model's weights change.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]] = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, key: tuple, make: Callable[[], _T]) -> _T:
        """The entry ``key`` of ``model``, made by ``make()`` when missing or when the weights have changed."""
        version = _weights_version(model)
        entries = self._entries.get(model)
        if entries is None or entries.get("version") != version:
            entries = self._entries[model] = {"version": version}
        if key not in entries:
            entries[key] = make()
        return entries[key]

    def clear(self, model: nn.Module | None = None) -> None:
        """Forget the measurements and searches of ``model``, or of every model."""
        if model is None:
            self._entries.clear()
        else:
            self._entries.pop(model, None)

    def __len__(self) -> int:
        """The number of models with entries."""
        return len(self._entries)


def _cached(cache: BaselineCache | None, model: nn.Module, key: tuple, make: Callable[[], _T]) -> _T:
    return make() if cache is None else cache.get(model, key, make)


# ---- ShortGPT -------------------------------------------------------------------------------------------------


def block_influence(model: nn.Module, calibration: Calibration, *, batch_size: int = 8) -> list[float]:
    """``BI_i = 1 - mean over calibration tokens of cos(input of layer i, output of layer i)``, per layer."""
    ids = as_calibration(calibration)
    layers = layer_list(model)
    n = len(layers)
    total = torch.zeros(n, dtype=torch.float64)
    tokens = 0
    model.eval()
    for b in batches(ids, batch_size):
        with (
            torch.no_grad(),
            capture(model, outputs=range(n), inputs=range(n), detach=True) as got,
            stop_after(model, n - 1),
            contextlib.suppress(StopForward),
        ):
            forward_ids(model, b)
        for i in range(n):
            x, y = got["in"][i].float(), got["out"][i].float()
            total[i] += torch.nn.functional.cosine_similarity(x, y, dim=-1).double().sum()
        tokens += b.numel()
    return [1.0 - float(v) for v in total / tokens]


@dataclass
class ShortGPTResult:
    kept: list[int]
    removed: list[int]  # teacher layers in removal order
    # BI of the (remaining) layers at each measurement, by teacher layer index
    block_influence: list[list[float]]
    recompute: bool


def shortgpt(
    teacher: PreTrainedModel,
    num_layers: int,
    calibration: Calibration,
    *,
    recompute: bool = False,
    batch_size: int = 8,
    status: Status | None = None,
    cache: BaselineCache | None = None,
) -> ShortGPTResult:
    """Teacher layers ShortGPT keeps at ``num_layers`` (measurements are shared across calls through ``cache``)."""
    ids = as_calibration(calibration)
    n = _n_layers(teacher)
    _check_size(num_layers, n)
    cal = calibration_info(ids)["sha256"]
    if not recompute:
        bi = _cached(
            cache,
            teacher,
            ("bi", cal, batch_size),
            lambda: _measure(teacher, list(range(n)), ids, batch_size, status),
        )
        ranked = sorted(range(n), key=lambda j: (bi[j], j))
        removed = ranked[: n - num_layers]
        kept = [j for j in range(n) if j not in set(removed)]
        return ShortGPTResult(kept, removed, [bi], False)
    state = _cached(cache, teacher, ("bi-iter", cal, batch_size), lambda: {"removed": [], "bi": []})
    while n - len(state["removed"]) > num_layers:
        kept = [j for j in range(n) if j not in set(state["removed"])]
        if status:
            status(f"ShortGPT: measuring BI on {len(kept)} layers")
        bi_kept = _measure(teacher, kept, ids, batch_size, None)
        bi = [math.nan] * n
        for j, v in zip(kept, bi_kept, strict=True):
            bi[j] = v
        state["bi"].append(bi)
        state["removed"].append(min(kept, key=lambda j: (bi[j], j)))
    removed = state["removed"][: n - num_layers]
    kept = [j for j in range(n) if j not in set(removed)]
    return ShortGPTResult(kept, removed, state["bi"][: len(removed)], True)


def _measure(
    teacher: PreTrainedModel, kept: list[int], ids: torch.Tensor, batch_size: int, status: Status | None
) -> list[float]:
    """BI of every layer of the teacher restricted to ``kept`` (listed by position in ``kept``)."""
    if status:
        status(f"ShortGPT: measuring BI on {len(kept)} layers")
    if len(kept) == _n_layers(teacher):
        return block_influence(teacher, ids, batch_size=batch_size)
    model = build_pruned(teacher, kept, section=None)  # type: ignore[arg-type]
    return block_influence(model, ids, batch_size=batch_size)


def prune_shortgpt(
    teacher: PreTrainedModel,
    num_layers: int,
    calibration: Calibration,
    *,
    recompute: bool = False,
    batch_size: int = 8,
    copy: bool = False,
    status: Status | None = None,
    cache: BaselineCache | None = None,
) -> PreTrainedModel:
    n = _n_layers(teacher)
    r = shortgpt(
        teacher,
        num_layers,
        calibration,
        recompute=recompute,
        batch_size=batch_size,
        status=status,
        cache=cache,
    )
    section = _section(
        "shortgpt",
        r.kept,
        n,
        removed=r.removed,
        block_influence=[[None if math.isnan(v) else round(v, 6) for v in bi] for bi in r.block_influence],
        parameters={"recompute": recompute, "calibration": calibration_info(as_calibration(calibration))},
    )
    return build_pruned(teacher, r.kept, section, copy=copy)


# ---- LaCo -----------------------------------------------------------------------------------------------------


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def merged_tensors(layers: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """RDSC merge of ``layers[0]`` with the rest: ``theta_0 + sum_k (theta_k - theta_0)`` for every weight and
    bias of every linear submodule (``nn.Linear`` or GPT-2's ``Conv1D``). Returns new tensors by name."""
    base = layers[0]
    out: dict[str, torch.Tensor] = {}
    for name, mod in base.named_modules():
        if not _is_linear(mod):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            theta = p.detach()
            merged = theta.clone()
            for other in layers[1:]:
                merged += other.get_submodule(name).get_parameter(pname).detach() - theta
            out[f"{name}.{pname}" if name else pname] = merged
    return out


def _set_param(module: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    mod = module.get_submodule(owner) if owner else module
    old = mod._parameters[attr]
    mod._parameters[attr] = (
        tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=False)
    )
    return old  # type: ignore[return-value]


@dataclass
class LacoResult:
    merge_layers: int
    threshold: float
    lowest: int
    highest: int
    interval: int
    merges: list[tuple[int, int]]  # accepted (position, number of following layers merged into it), in order
    groups: list[list[int]]  # teacher layers merged into each layer of the result
    attempts: list[dict[str, Any]] = field(default_factory=list)
    similarity: float = 1.0  # of the result's last hidden states to the teacher's

    @property
    def n_layers(self) -> int:
        return len(self.groups)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "merge_layers": self.merge_layers,
            "threshold": self.threshold,
            "lowest": self.lowest,
            "highest": self.highest,
            "interval": self.interval,
        }


class _Working:
    """The one working copy LaCo edits: a zero-copy model over the teacher whose layers are merged in place."""

    def __init__(self, teacher: PreTrainedModel) -> None:
        n = _n_layers(teacher)
        self.teacher = teacher
        self.arch = get_arch(teacher.config)
        self.model = build_pruned(teacher, list(range(n)), section=None)  # type: ignore[arg-type]
        self.model.eval()
        self.groups: list[list[int]] = [[j] for j in range(n)]
        self.first_changed = n

    def _sync_config(self) -> None:
        cfg, tcfg = self.model.config, self.teacher.config
        n = len(self.groups)
        for key in ("num_hidden_layers", "n_layer", "n_layers"):
            if isinstance(getattr(cfg, key, None), int):
                setattr(cfg, key, n)
                break
        for fname in self.arch.layer_fields:
            values = getattr(tcfg, fname, None)
            if isinstance(values, list):
                setattr(cfg, fname, [values[g[0]] for g in self.groups])

    def merge(self, pos: int, k: int) -> Callable[[], None]:
        """Merge layers ``pos+1 .. pos+k`` into layer ``pos``; returns an undo function."""
        layers = layer_list(self.model)
        new = merged_tensors([layers[pos + i] for i in range(k + 1)])
        old = {name: _set_param(layers[pos], name, t) for name, t in new.items()}
        removed = [layers[pos + i] for i in range(1, k + 1)]
        for _ in range(k):
            del layers[pos + 1]
        groups_before = [list(g) for g in self.groups[pos : pos + k + 1]]
        self.groups[pos : pos + k + 1] = [list(itertools.chain.from_iterable(groups_before))]
        first_before = self.first_changed
        self.first_changed = min(self.first_changed, pos)
        self._sync_config()

        def undo() -> None:
            for i, mod in enumerate(removed):
                layers.insert(pos + 1 + i, mod)
            for name, t in old.items():
                _set_param(layers[pos], name, t)
            self.groups[pos : pos + 1] = groups_before
            self.first_changed = first_before
            self._sync_config()

        return undo


class Laco:
    """LaCo searches on one teacher and calibration set, sharing the teacher's cached activations and every
    scored merge across runs (so sweeping C and T costs far less than independent runs)."""

    def __init__(
        self,
        teacher: PreTrainedModel,
        calibration: Calibration,
        *,
        batch_size: int = 8,
        cache_bytes: int = 2 << 30,
    ):
        self._teacher = weakref.ref(teacher.eval())
        self.ids = as_calibration(calibration)
        self.batches = batches(self.ids, batch_size)
        self.n = _n_layers(teacher)
        self.scores: dict[tuple, float] = {}
        self.runs: dict[tuple, LacoResult] = {}
        self.evaluations = 0
        hidden = int(getattr(teacher.config, "hidden_size", 0) or getattr(teacher.config, "n_embd", 0))
        elem = torch.finfo(teacher.dtype).bits // 8
        fits = self.n * self.ids.numel() * hidden * elem <= cache_bytes
        self.inputs: list[dict[int, torch.Tensor]] | None = [] if fits else None
        self.reference: list[torch.Tensor] = []
        with torch.no_grad():
            for b in self.batches:
                if self.inputs is not None:
                    with capture(teacher, inputs=range(self.n), detach=True) as got:
                        h = spans.run_span(teacher, b, until="norm")
                    self.inputs.append(dict(got["in"]))
                else:
                    h = spans.run_span(teacher, b, until="norm")
                self.reference.append(h.flatten(1).float())

    @property
    def teacher(self) -> PreTrainedModel:
        teacher = self._teacher()
        if teacher is None:
            raise BoomerangError("the teacher of this LaCo search no longer exists")
        return teacher

    def similarity(self, work: _Working, start: int) -> float:
        """Mean over calibration texts of cos(flattened last hidden states of ``work``, of the teacher)."""
        self.evaluations += 1
        use_cache = self.inputs is not None and start <= work.first_changed
        sims = []
        with torch.no_grad():
            for k, b in enumerate(self.batches):
                if use_cache:
                    h = spans.run_span(work.model, b, start=start, hidden=self.inputs[k][start], until="norm")  # type: ignore[index]
                else:
                    h = spans.run_span(work.model, b, until="norm")
                sims.append(
                    torch.nn.functional.cosine_similarity(h.flatten(1).float(), self.reference[k], dim=-1)
                )
        return float(torch.cat(sims).double().mean())

    def run(
        self,
        merge_layers: int,
        threshold: float,
        *,
        lowest: int = 0,
        highest: int | None = None,
        interval: int = 1,
        status: Status | None = None,
    ) -> LacoResult:
        """One LaCo pass (the official loop): from ``l = H - C`` down to ``L``, try merging layers
        ``l+1 .. l+C-1`` into ``l``; on acceptance step down by ``I``, otherwise by 1."""
        n = self.n
        c, t, i_step = int(merge_layers), float(threshold), int(interval)
        h_top = n - 1 if highest is None else int(highest)
        if c < 2:
            raise BoomerangError(f"merge_layers (C) must be at least 2, got {c}")
        if i_step < 1:
            raise BoomerangError(f"interval (I) must be at least 1, got {i_step}")
        if not 0 <= lowest <= h_top <= n - 1:
            raise BoomerangError(f"need 0 <= lowest (L) <= highest (H) <= {n - 1}; got L={lowest}, H={h_top}")
        key = (c, t, lowest, h_top, i_step)
        if key in self.runs:
            return self.runs[key]
        work = _Working(self.teacher)
        merges: list[tuple[int, int]] = []
        attempts: list[dict[str, Any]] = []
        sim_now = 1.0
        pos = h_top - c
        while pos >= lowest:
            check()  # the search runs many cheap steps between forwards: stop promptly on Ctrl-C
            k = min(c - 1, len(work.groups) - pos - 1)
            state = (tuple(merges), pos, k)
            if k < 1:
                s = 1.0  # nothing to merge: the official code accepts the unchanged model
                undo: Callable[[], None] = lambda: None  # noqa: E731
            else:
                undo = work.merge(pos, k)
                if state not in self.scores:
                    if status:
                        status(f"LaCo C={c} T={t:.2f}: {len(work.groups)} layers, trying layer {pos}")
                    self.scores[state] = self.similarity(work, pos)
                s = self.scores[state]
            accepted = s > t
            attempts.append({"layer": pos, "merged": k, "similarity": s, "accepted": accepted})
            if accepted:
                if k >= 1:
                    merges.append((pos, k))
                    sim_now = s
                pos -= i_step
                if pos >= len(work.groups):
                    pos = len(work.groups) - 1 - c
            else:
                undo()
                pos -= 1
        result = LacoResult(
            c, t, lowest, h_top, i_step, merges, [list(g) for g in work.groups], attempts, sim_now
        )
        self.runs[key] = result
        return result

    def build(self, result: LacoResult, *, copy: bool = False) -> PreTrainedModel:
        """The pruned model of ``result``: merges replayed on a working copy, then assembled from the teacher."""
        work = _Working(self.teacher)
        for pos, k in result.merges:
            work.merge(pos, k)
        origins = [g[0] for g in work.groups]
        section = _section(
            "laco",
            origins,
            self.n,
            merged_groups=work.groups,
            merges=[list(m) for m in result.merges],
            similarity=result.similarity,
            parameters={**result.params, "calibration": calibration_info(self.ids)},
        )
        model = build_pruned(self.teacher, origins, section, copy=copy)
        layers, src = layer_list(model), layer_list(work.model)
        prefix = work.arch.layers
        for pos, group in enumerate(work.groups):
            if len(group) == 1:
                continue
            for name, mod in src[pos].named_modules():
                if _is_linear(mod):
                    for pname, p in mod.named_parameters(recurse=False):
                        full = f"{prefix}.{pos}.{name}.{pname}" if name else f"{prefix}.{pos}.{pname}"
                        _set_tensor(model, full, p.detach())
        del layers
        return model

    def sweep(
        self,
        num_layers: int,
        *,
        merge_grid: Sequence[int] = LACO_MERGE_GRID,
        thresholds: Sequence[float] = LACO_THRESHOLDS,
        lowest: int = 0,
        highest: int | None = None,
        interval: int = 1,
        status: Status | None = None,
    ) -> tuple[LacoResult, list[LacoResult]]:
        """The sweep point closest to ``num_layers`` from below (at most that many layers).

        For each C the threshold is lowered from the highest until the result has at most ``num_layers`` layers
        (lower thresholds accept more merges). Among those results the largest wins; ties go to the higher
        similarity to the teacher, then to the smaller C. Returns the winner and every run made.
        """
        _check_size(num_layers, self.n)
        tried: list[LacoResult] = []
        for c in merge_grid:
            for t in sorted(thresholds, reverse=True):
                r = self.run(c, t, lowest=lowest, highest=highest, interval=interval, status=status)
                tried.append(r)
                if r.n_layers <= num_layers:
                    break
        fitting = [r for r in tried if r.n_layers <= num_layers]
        if not fitting:
            smallest = min(r.n_layers for r in tried)
            raise BoomerangError(
                f"the LaCo sweep (C in {list(merge_grid)}, T down to {min(thresholds)}) reaches only {smallest} "
                f"layers, not {num_layers}; lower the thresholds or raise C"
            )
        best = max(fitting, key=lambda r: (r.n_layers, r.similarity, -r.merge_layers))
        return best, tried


def laco_search(
    teacher: PreTrainedModel,
    calibration: Calibration,
    *,
    batch_size: int = 8,
    cache: BaselineCache | None = None,
) -> Laco:
    """A LaCo search for this teacher and calibration set (the one ``cache`` holds, if given)."""
    ids = as_calibration(calibration)
    return _cached(
        cache,
        teacher,
        ("laco", calibration_info(ids)["sha256"], batch_size),
        lambda: Laco(teacher, ids, batch_size=batch_size),
    )


def prune_laco(
    teacher: PreTrainedModel,
    calibration: Calibration,
    *,
    num_layers: int | None = None,
    merge_layers: int | None = None,
    threshold: float | None = None,
    lowest: int = 0,
    highest: int | None = None,
    interval: int = 1,
    batch_size: int = 8,
    copy: bool = False,
    status: Status | None = None,
    cache: BaselineCache | None = None,
) -> PreTrainedModel:
    """One LaCo run with ``merge_layers`` (C) and ``threshold`` (T), or the sweep point for ``num_layers``."""
    search = laco_search(teacher, calibration, batch_size=batch_size, cache=cache)
    if merge_layers is not None and threshold is not None:
        result = search.run(
            merge_layers, threshold, lowest=lowest, highest=highest, interval=interval, status=status
        )
        if num_layers is not None and result.n_layers != num_layers:
            raise BoomerangError(
                f"LaCo with C={merge_layers}, T={threshold} gives {result.n_layers} layers, not {num_layers}; "
                "drop num_layers, or drop C and T to sweep for that size"
            )
    elif num_layers is not None:
        grid = (merge_layers,) if merge_layers is not None else LACO_MERGE_GRID
        thresholds = (threshold,) if threshold is not None else LACO_THRESHOLDS
        result, _ = search.sweep(
            num_layers,
            merge_grid=grid,
            thresholds=thresholds,
            lowest=lowest,
            highest=highest,
            interval=interval,
            status=status,
        )
    else:
        raise BoomerangError(
            "LaCo needs num_layers (--num-layers), or both merge_layers (C) and threshold (T)"
        )
    return search.build(result, copy=copy)


# ---- the one entry point ----------------------------------------------------------------------------------------


def prune_to(
    teacher: PreTrainedModel,
    method: str,
    *,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    calibration: Calibration | None = None,
    cache: BaselineCache | None = None,
    **params: Any,
) -> PreTrainedModel:
    """A pruned teacher by ``method`` (naive, shortgpt or laco); see the module docstring.

    naive: ``layers`` or ``num_layers`` [``layer_map``, ``order``]; shortgpt: ``num_layers``, ``calibration``
    [``recompute``, ``batch_size``]; laco: ``calibration`` and ``num_layers`` (sweep) or ``merge_layers`` and
    ``threshold`` [``lowest``, ``highest``, ``interval``, ``batch_size``]. All take ``copy`` (default False:
    the result shares the teacher's tensors) and ``status`` (a callback for progress messages). ``cache``: a
    :class:`BaselineCache` that keeps ShortGPT's measurements and LaCo's searches for the next call (naive
    measures nothing); None measures afresh.
    """
    if method not in METHODS:
        raise BoomerangError(f"unknown pruning method {method!r}; use one of: {', '.join(METHODS)}")
    allowed = {
        "naive": {"layer_map", "order", "copy", "status"},
        "shortgpt": {"recompute", "batch_size", "copy", "status"},
        "laco": {
            "merge_layers",
            "threshold",
            "lowest",
            "highest",
            "interval",
            "batch_size",
            "copy",
            "status",
        },
    }[method]
    extra = set(params) - allowed
    if extra:
        raise BoomerangError(
            f"unknown parameter(s) for {method}: {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}"
        )
    if method == "naive":
        params.pop("status", None)
        return prune_naive(teacher, num_layers, layers=layers, **params)
    if layers is not None:
        raise BoomerangError(f"{method} chooses the layers itself; pass num_layers, not layers")
    if calibration is None:
        raise BoomerangError(f"{method} needs calibration token ids (on the command line: --data PATH)")
    if method == "shortgpt":
        if num_layers is None:
            raise BoomerangError("shortgpt needs num_layers (--num-layers)")
        return prune_shortgpt(teacher, num_layers, calibration, cache=cache, **params)
    return prune_laco(teacher, calibration, num_layers=num_layers, cache=cache, **params)


def kept_layers(
    teacher: PreTrainedModel,
    method: str,
    *,
    num_layers: int,
    calibration: Calibration,
    cache: BaselineCache | None = None,
    **params: Any,
) -> list[int] | None:
    """The teacher layers ``prune_to(teacher, method, num_layers=..., ...)`` keeps, where the method only chooses
    layers (ShortGPT); None where it merges them (LaCo) or needs a layer map (naive). The model built from them
    computes what the teacher's layers compute, so evaluations can share its prefixes with other models'."""
    if method != "shortgpt":
        return None
    params = {k: v for k, v in params.items() if k in ("recompute", "batch_size")}
    return shortgpt(teacher, num_layers, calibration, cache=cache, **params).kept


def save_pruned(
    model: PreTrainedModel, out: str | Path, *, tokenizer: Tokenizer | None = None, force: bool = False
) -> Path:
    """Write a pruned model (and tokenizer) as a standard checkpoint, atomically."""
    with atomic_dir(out, force=force) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)
