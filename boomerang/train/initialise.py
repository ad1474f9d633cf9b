"""Student initialisation (stage 1): copy a subset of the teacher's layers, or re-initialise them randomly.

Strategies:

- ``every`` (the paper's default): the first ``keep_first`` layers, every ``every``-th layer, the last ``keep_last``.
- ``layers``: an explicit list of kept teacher layers.
- ``random``: the ``every`` layer map (so the student can still be patched) with all weights re-initialised:
  the paper's random-initialisation baseline.
- ``shortgpt`` (the init the paper leaves to future work, §3.5): the layers ShortGPT keeps at size M, i.e. the
  M−1 layers besides layer 0 with the largest block influence BI_i = 1 − cos(input of layer i, output of layer i)
  on calibration data; equivalently the partition minimising the summed BI of the dropped layers. ``max_block``
  caps the block length (the same DP under that constraint), trading ShortGPT's long blocks for a finer family;
  ``isolate`` gives the first layers ShortGPT drops 2-layer blocks of their own, so the largest members start as
  ShortGPT's models of their size.
- ``similarity`` (appendix E.2): for a target size M, the kept layers that maximise the *minimum* over blocks of
  the cosine similarity between the output of the block's first layer and the output of its last layer
  (teacher self-similarity on calibration data). Ties are broken by the largest total similarity. Both are
  solved exactly by dynamic programming over contiguous partitions of the teacher's layers; layer 0 is always
  kept (it starts the first block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from ..core.arch import n_layers
from ..core.layermap import LayerMap, student_section
from ..core.patching import assemble
from ..core.similarity import similarity_matrix
from ..data.blocks import calibration_ids
from ..errors import BoomerangError
from ..io import loading
from ..io.atomic import atomic_dir
from ..io.sidecar import student_layer_map, write_sidecar
from .recipe import KEYWORDS, MEASURED, STRATEGIES, InitSection, check_init_rules, resolve_model_spec
from .recipe import InitStrategy as Strategy  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ..hints import Tokenizer
    from .init_plan import InitPlan
    from .recipe import Recipe


def block_similarities(sim: torch.Tensor, kept: Sequence[int]) -> list[float]:
    """``sim[first, last]`` of every block of the partition that starts at ``kept``."""
    n = sim.shape[0]
    ends = [*kept[1:], n]
    return [float(sim[a, b - 1]) for a, b in zip(kept, ends, strict=True)]


def similarity_layers(sim: torch.Tensor, size: int) -> list[int]:
    """The kept layers of a ``size``-layer student maximising (min block similarity, then total similarity).

    ``sim`` is the teacher's ``[N, N]`` layer-output self-similarity; block ``[a, b)`` scores ``sim[a, b-1]``
    (1 for a single layer). Exact: a bottleneck DP finds the best achievable minimum, then a second DP
    maximises the total over partitions whose blocks all reach it.
    """
    n = sim.shape[0]
    if not 1 <= size <= n:
        raise BoomerangError(f"student size {size} is out of range for a {n}-layer teacher (1..{n})")
    s = sim.double().clone()
    s.fill_diagonal_(1.0)
    bottleneck, _ = _partition(n, size, lambda i, j: float(s[i, j - 1]), min, float("inf"))
    floor = bottleneck - 1e-9
    _, kept = _partition(
        n, size, lambda i, j: float(s[i, j - 1]) if s[i, j - 1] >= floor else _NEG, lambda a, b: a + b, 0.0
    )
    return kept


_NEG = float("-inf")


def block_influence_from_similarity(sim: torch.Tensor) -> list[float]:
    """ShortGPT's BI_i = 1 − cos(input of layer i, output of layer i) for i ≥ 1, from the teacher's layer-output
    self-similarity (the input of layer i is the output of layer i−1); BI_0 is not defined here (nan)."""
    return [float("nan")] + [1.0 - float(sim[i - 1, i]) for i in range(1, sim.shape[0])]


def isolated_layers(bi: Sequence[float], count: int) -> list[int]:
    """The first ``count`` layers in ShortGPT's removal order (lowest BI first, layer 0 never) that can each have a
    2-layer block of their own: no two adjacent."""
    chosen: list[int] = []
    for j in sorted(range(1, len(bi)), key=lambda j: (bi[j], j)):
        if len(chosen) == count:
            break
        if all(abs(j - c) >= 2 for c in chosen):
            chosen.append(j)
    return sorted(chosen)


def shortgpt_layers(
    sim: torch.Tensor, size: int, max_block: int | None = None, isolate: int = 0
) -> list[int]:
    """Kept layers minimising the summed block influence of the dropped layers (layer 0 always kept): ShortGPT's
    choice at ``size`` layers, or with ``max_block`` the best choice whose blocks are at most that long.

    ``isolate`` = k puts each of the first k layers ShortGPT drops in a 2-layer block of its own ([r−1, r+1)), so
    that the family's members 1..k layers short of the teacher start as ShortGPT's models of those sizes (each
    patches one such block alone). The DP then minimises the summed BI under that constraint too."""
    n = sim.shape[0]
    if not 1 <= size <= n:
        raise BoomerangError(f"student size {size} is out of range for a {n}-layer teacher (1..{n})")
    if max_block is not None and max_block * size < n:
        raise BoomerangError(
            f"{size} blocks of at most {max_block} layers cannot cover {n} teacher layers; raise max_block to "
            f"{-(-n // size)} or more, or the size"
        )
    bi = block_influence_from_similarity(sim.double())
    alone = isolated_layers(bi, isolate) if isolate else []
    if len(alone) < isolate:
        raise BoomerangError(
            f"init isolate={isolate}: only {len(alone)} of the {n}-layer teacher's layers can each have a 2-layer "
            f"block of their own; lower isolate"
        )
    prefix = [0.0]
    for v in bi[1:]:
        prefix.append(prefix[-1] + v)

    def score(i: int, j: int) -> float:  # block [i, j): layer i kept, i+1..j-1 dropped
        if max_block is not None and j - i > max_block:
            return _NEG
        if any(i == r or (i < r < j and (i, j) != (r - 1, r + 1)) for r in alone):
            return _NEG  # an isolated layer is dropped, alone in [r−1, r+1)
        return -(prefix[j - 1] - prefix[i])

    best, kept = _partition(n, size, score, lambda a, b: a + b, 0.0)
    if best == _NEG:
        raise BoomerangError(
            f"no {size}-layer student has blocks of at most {max_block} layers with {isolate} isolated layers; "
            f"lower isolate or raise max_block"
        )
    return kept


def _partition(n: int, size: int, score, combine, identity: float) -> tuple[float, list[int]]:
    """Best split of layers [0, n) into ``size`` contiguous blocks; block [i, j) scores ``score(i, j)``."""
    best = [[_NEG] * (n + 1) for _ in range(size + 1)]  # best[m][j]: layers [0, j) in m blocks
    arg = [[-1] * (n + 1) for _ in range(size + 1)]  # start of the last of those blocks
    best[0][0] = identity
    for m in range(1, size + 1):
        for j in range(m, n - (size - m) + 1):
            for i in range(m - 1, j):
                prev = best[m - 1][i]
                v = score(i, j) if prev != _NEG else _NEG
                if v == _NEG:
                    continue
                cand = combine(prev, v)
                if cand > best[m][j]:
                    best[m][j], arg[m][j] = cand, i
    kept, j = [], n
    for m in range(size, 0, -1):
        j = arg[m][j]
        kept.append(j)
    return best[size][n], sorted(kept)


def strategy_layer_map(
    teacher_layers: int,
    strategy: str = "every",
    *,
    every: int = 2,
    keep_first: int = 1,
    keep_last: int = 2,
    layers: Sequence[int] | None = None,
    size: int | None = None,
    similarity: torch.Tensor | None = None,
    max_block: int | None = None,
    isolate: int = 0,
) -> LayerMap:
    """The layer map a strategy gives for an N-layer teacher (``similarity`` needs the similarity matrix)."""
    if strategy not in STRATEGIES:
        raise BoomerangError(f"unknown init strategy {strategy!r}; use one of: {', '.join(STRATEGIES)}")
    check_init_rules(strategy, layers, max_block, isolate, KEYWORDS)  # InitSection's rules
    if strategy == "layers":
        assert layers  # check_init_rules refuses the strategy without them
        return LayerMap.from_kept(layers, teacher_layers)
    if strategy in MEASURED:
        if size is None:  # as many layers as the every-other-layer student (16 of 30)
            size = LayerMap.every(
                teacher_layers, every=every, keep_first=keep_first, keep_last=keep_last
            ).n_student
        if similarity is None:
            raise BoomerangError(f"the {strategy!r} strategy needs the teacher's layer similarity matrix")
        if strategy == "shortgpt":
            return LayerMap.from_kept(shortgpt_layers(similarity, size, max_block, isolate), teacher_layers)
        return LayerMap.from_kept(similarity_layers(similarity, size), teacher_layers)
    return LayerMap.every(teacher_layers, every=every, keep_first=keep_first, keep_last=keep_last)


def init_student(
    teacher: PreTrainedModel,
    layer_map: LayerMap | Sequence[int] | str | None = None,
    *,
    every: int = 2,
    keep_first: int = 1,
    keep_last: int = 2,
    size: int | None = None,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    teacher_name: str | None = None,
    patch_order: str | None = None,
    reinitialise: bool = False,
    max_block: int | None = None,
    isolate: int = 0,
) -> PreTrainedModel:
    """A student initialised from ``teacher`` (which is left untouched; the student owns its tensors).

    ``layer_map`` is a LayerMap, a list of kept teacher layers, or a strategy name (``every``, ``random``,
    ``similarity``; default ``every``). ``similarity`` needs ``size`` and ``calibration`` token ids ``[n, len]``.
    ``reinitialise`` gives any layer map random weights (``random`` is the ``every`` map with them): the
    random-init baseline for a student of the same shape. The student's config carries the layer map
    (``boomerang`` section) plus how it was made.
    """
    n = n_layers(teacher.config)
    info: dict[str, Any] = {}
    if isinstance(layer_map, LayerMap):
        student_map, strategy = layer_map, "layers"
    elif layer_map is not None and not isinstance(layer_map, str):
        student_map, strategy = LayerMap.from_kept(list(layer_map), n), "layers"
    else:
        strategy = layer_map or "every"
        sim = None
        if strategy in MEASURED:
            if calibration is None:
                raise BoomerangError(
                    f"the {strategy!r} strategy needs calibration token ids (calibration=...)"
                )

            sim = similarity_matrix(teacher, calibration)
        student_map = strategy_layer_map(
            n,
            strategy,
            every=every,
            keep_first=keep_first,
            keep_last=keep_last,
            size=size,
            similarity=sim,
            max_block=max_block,
            isolate=isolate,
        )
        if strategy in ("every", "random"):
            info.update(every=every, keep_first=keep_first, keep_last=keep_last)
        if sim is not None:
            info.update(_measured_info(strategy, sim, student_map, calibration, max_block, isolate))  # type: ignore[arg-type]
    student_map.check_fits(n, student_map.n_student)  # made from the map: only the teacher's count can differ
    reinitialise = reinitialise or strategy == "random"
    extra: dict[str, Any] = {"init": {"strategy": strategy, **info}}
    if reinitialise:  # "random" says so by its name; any other map records it
        extra["init"].update({} if strategy == "random" else {"random_weights": True}, seed=seed)
    if patch_order is not None:
        extra["patch_order"] = patch_order
    section = student_section(student_map, teacher=teacher_name, **extra)
    student = assemble(
        {"teacher": teacher},
        [("teacher", j) for j in student_map.kept],
        "teacher",
        "teacher",
        section=section,
        copy=True,
    )
    if reinitialise:
        student = _reinitialised(student, seed)
    student.requires_grad_(True)  # trainable even when the teacher is frozen
    student.train(teacher.training)
    return student


def _measured_info(
    strategy: str,
    sim: torch.Tensor,
    layer_map: LayerMap,
    calibration: torch.Tensor,
    max_block: int | None,
    isolate: int = 0,
) -> dict[str, Any]:
    """What a measured init (``shortgpt``, ``similarity``) records about its choice in the student's config."""
    if strategy == "shortgpt":
        bi = block_influence_from_similarity(sim)
        dropped = [j for j in range(layer_map.n_teacher) if j not in set(layer_map.kept)]
        return {
            "objective": "min summed block influence of the dropped layers",
            "max_block": max_block,
            **({"isolated": isolated_layers(bi, isolate)} if isolate else {}),
            "dropped_block_influence": round(sum(bi[j] for j in dropped), 6),
            "block_influence": [None] + [round(v, 6) for v in bi[1:]],
            "calibration_shape": list(calibration.shape),
        }
    scores = block_similarities(sim.clone().fill_diagonal_(1.0), layer_map.kept)
    return {
        "objective": "max min block similarity",
        "min_block_similarity": round(min(scores), 6),
        "block_similarity": [round(x, 6) for x in scores],
        "calibration_shape": list(calibration.shape),
    }


def _reinitialised(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """A model of the same class and config with freshly initialised weights (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    fresh.to(dtype=model.dtype)
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = model.generation_config
    return fresh


def save_student(
    student: PreTrainedModel,
    out: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    force: bool = False,
) -> Path:
    """Write a student checkpoint atomically: safetensors, config (with its layer map), tokenizer, sidecar."""
    layer_map = student_layer_map(student)
    with atomic_dir(out, force=force) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_sidecar(tmp, layer_map)
    return Path(out)


def student_from_section(
    teacher: PreTrainedModel,
    tokenizer: Tokenizer,
    init: InitSection,
    *,
    calibration: str | None = None,
    text_field: str = "text",
    teacher_name: str | None = None,
    patch_order: str | None = None,
    report: Callable[[str], object] | None = None,
) -> PreTrainedModel:
    """The student an ``InitSection`` describes. A measured strategy reads ``init.calibration`` (else
    ``calibration``, e.g. a recipe's training texts) into calibration blocks first; ``report`` hears of it."""
    calib = None
    if init.strategy in MEASURED:
        source = init.calibration or calibration
        if source is None:
            raise BoomerangError(f"the {init.strategy!r} strategy needs calibration texts (init.calibration)")
        n, length = init.calibration_texts, init.calibration_length
        calib = calibration_ids(source, tokenizer, n=n, length=length, seed=init.seed, text_field=text_field)
        if report is not None:
            report(f"measuring teacher layer similarity on {calib.shape[0]}×{calib.shape[1]} tokens…")
    return init_student(
        teacher,
        init.layers if init.strategy == "layers" else init.strategy,
        every=init.every,
        keep_first=init.keep_first,
        keep_last=init.keep_last,
        size=init.size,
        calibration=calib,
        seed=init.seed,
        teacher_name=teacher_name,
        patch_order=patch_order,
        max_block=init.max_block,
        isolate=init.isolate,
    )


def init_from_recipe(recipe: Recipe, teacher: PreTrainedModel, tokenizer: Tokenizer) -> PreTrainedModel:
    """The student a recipe's ``init`` section describes: what ``distill`` trains when the recipe names no
    ``student``. A measured strategy is calibrated on ``init.calibration``, else the recipe's ``data.train``."""
    return student_from_section(
        teacher,
        tokenizer,
        recipe.init,
        calibration=recipe.data.train,
        text_field=recipe.data.text_field,
        teacher_name=recipe.teacher,
        patch_order=recipe.patch_order,
    )


def write_student(
    plan: InitPlan,
    out: str | Path,
    *,
    dtype: str = "auto",
    force: bool = False,
    report: Callable[[str], object] | None = None,
) -> PreTrainedModel:
    """Load the planned teacher (``boomerang.train.init_plan.plan_init``), initialise its student and write it, with
    the teacher's tokenizer, to ``out`` (atomically); the student is returned."""
    path = resolve_model_spec(plan.teacher)
    teacher = loading.load_model(path, dtype=dtype, trust_remote_code=plan.trust_remote_code)
    tokenizer = loading.load_tokenizer(path, trust_remote_code=plan.trust_remote_code)
    student = student_from_section(
        teacher, tokenizer, plan.init, teacher_name=plan.teacher, patch_order=plan.patch_order, report=report
    )
    save_student(student, out, tokenizer=tokenizer, force=force)
    return student
