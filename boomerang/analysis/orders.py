"""Data-driven patch orders (``boomerang.analysis.resolve.resolve_order`` turns every order spec into an order, and
calls ``compute_order`` here for these). Data-driven orders are computed from calibration token ids ``[n, length]``:

* ``similarity``: patch first the student layers whose output is least similar (mean per-token cosine) to the
  output of their teacher block (teacher layer ``layer_map.target(i)``), each model run on its own.
* ``greedy-kl`` (KLPatch): starting from the student, each step patches the one more student layer that gives
  the lowest KL(teacher || model), averaged over calibration tokens.
* ``optimal``: for every size, the subset with the lowest KL among all 2^M subsets (M <= 12 by default).
* ``shortest-path``: for every size, the best subset under a surrogate of the KL with only adjacent interactions,
  found as shortest paths in an acyclic graph (polynomial: O(M) scored models, O(M^2) graph edges); see
  ``shortest_path_search``. Like ``optimal``, its subsets need not be nested.
* ``size-aware``: one member per distinct size (layer count), the lowest-KL member of that size. Patching a
  single-layer block changes no size, so each size's member is free to take those layers from the teacher or the
  student. Exhaustive over all 2^M subsets where that is at most ``SIZE_EXHAUSTIVE`` models; beyond, every
  subset of the multi-layer blocks (single-layer blocks all from the student, then all from the teacher), then a
  local search over the single-layer blocks of each size's best member; see ``size_search``.

``greedy-kl`` and the shortest-path view of layer choice follow *Understanding Layer Patching in Model Size
Interpolation* (arXiv 2607.08170), which proves the optimal-subset problem is a shortest-path problem in an acyclic
graph and introduces KLPatch. Only its abstract was available here: the surrogate and its graph are our own.

The searches never run a whole model per candidate. ``PatchEvaluator`` caches the hidden states of the current
model at every block boundary and re-runs only the blocks after the changed one (see ``boomerang.core.spans``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..core import spans
from ..core.layermap import LayerMap
from ..core.patching import check_pair, is_tied
from ..core.plan import DATA_ORDERS, PatchOrder
from ..core.similarity import similarity_matrix
from ..core.spans import embedding_output
from ..errors import BoomerangError
from .teacher_kl import TeacherKL, kl_sum, negative_entropy

if TYPE_CHECKING:
    from ..hints import Calibration, Model

Progress = Callable[[int, int], None]  # (done, total)
# Default cap on calibration blocks for KL-scored searches: every scored model runs the full-vocabulary LM head,
# so a 16-layer greedy-kl search on a 135M teacher costs ~15 CPU-minutes per 1,024 tokens (docs/analysis.md).
KL_TEXTS = 4
SIMILARITY_TEXTS = 32  # default calibration blocks of the `similarity` order (one forward pass per model)
ANALYSIS_TEXTS = 8  # default calibration blocks of `boomerang analyze`


def default_texts(order: str) -> int:
    """Default calibration blocks for computing the data-driven ``order``."""
    return SIMILARITY_TEXTS if order == "similarity" else KL_TEXTS


Criterion = Literal["kl", "cos"]


# ---- calibration helpers ------------------------------------------------------------------------------------


def as_calibration(calibration: Calibration) -> torch.Tensor:
    """Token ids ``[n, length]`` as a LongTensor, or a clear error."""
    if isinstance(calibration, (list, tuple)):
        try:
            calibration = torch.tensor(calibration, dtype=torch.long)
        except (TypeError, ValueError):
            raise BoomerangError(
                "calibration must be token ids of equal-length texts, e.g. boomerang.data.calibration_ids(...)"
            ) from None
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.numel() == 0:
        raise BoomerangError(
            "calibration must be a [n_texts, length] tensor of token ids; build one with "
            "boomerang.data.calibration_ids(source, tokenizer) (on the command line: --data PATH)"
        )
    if calibration.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise BoomerangError(f"calibration token ids must be integers, got {calibration.dtype}")
    return calibration.long()


def calibration_info(ids: torch.Tensor) -> dict[str, Any]:
    """What a search was computed on: text count, length and a fingerprint of the token ids."""
    digest = hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16]
    return {"texts": int(ids.shape[0]), "length": int(ids.shape[1]), "sha256": digest}


def subsample(ids: torch.Tensor, max_texts: int | None) -> torch.Tensor:
    """At most ``max_texts`` blocks, evenly spread over ``ids`` (all of them if None or fewer)."""
    if max_texts is None or ids.shape[0] <= max_texts:
        return ids
    if max_texts < 1:
        raise BoomerangError(f"max_texts must be at least 1 (or None for all), got {max_texts}")
    pick = torch.linspace(0, ids.shape[0] - 1, max_texts).round().long().unique()
    return ids[pick]


def batches(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if batch_size < 1:
        raise BoomerangError(f"batch_size must be at least 1, got {batch_size}")
    return [ids[i : i + batch_size] for i in range(0, ids.shape[0], batch_size)]


# ---- evaluating patched models from cached block-boundary states -------------------------------------------


class PatchEvaluator:
    """Scores patched models of one teacher/student pair on calibration data, block by block.

    A patched model is student layers and teacher blocks in order, the embedding of whichever supplies layer 0
    and the final norm and head of whichever supplies the last layer. ``block(i, patched, states)`` runs one
    position (teacher block ``layer_map.block(i)`` or student layer ``i``) on the states entering it, and
    ``score(head, states)`` finishes the model. Hidden states are lists with one tensor per calibration batch.

    ``criterion="kl"`` scores KL(teacher || model) per token, averaged over all calibration tokens (lower is
    better); ``"cos"`` the mean per-token cosine between the model's and the teacher's final normed hidden states.
    The teacher's probabilities are cached when they fit in ``cache_bytes``; otherwise its final hidden states are,
    and the teacher head is re-applied per score. The KL is summed as ``teacher_kl.kl_sum`` does (a log-sum-exp and
    a dot product: no log-softmax of the scored model). ``counts`` tallies the work done.
    """

    def __init__(
        self,
        teacher: Any,
        student: Any,
        layer_map: LayerMap,
        calibration: Any,
        *,
        criterion: Criterion = "kl",
        batch_size: int = 8,
        cache_bytes: int = 2 << 30,
    ) -> None:
        if criterion not in ("kl", "cos"):
            raise BoomerangError(f"unknown criterion {criterion!r}; use kl or cos")
        check_pair(teacher, student, layer_map)
        self.models = {"teacher": teacher.eval(), "student": student.eval()}
        self.layer_map = layer_map
        self.criterion = criterion
        self.ids = as_calibration(calibration)
        self.batches = batches(self.ids, batch_size)
        self.tokens = int(self.ids.numel())
        self.counts = {"layers": 0, "blocks": 0, "heads": 0, "full_layers": 0}
        self._embed: dict[str, list[torch.Tensor]] = {}
        self._reference(cache_bytes)

    # -- reference (the teacher's own outputs)
    def _reference(self, cache_bytes: int) -> None:
        teacher = self.models["teacher"]
        vocab = int(teacher.config.vocab_size)
        self._ref: TeacherKL | None = None
        self._ref_hidden: list[torch.Tensor] = []
        with torch.no_grad():
            for b in self.batches:
                h = spans.run_span(teacher, b, until="layers")
                self._ref_hidden.append(h)
        with torch.no_grad():
            if self.criterion == "cos":
                self._ref_normed = [
                    torch.nn.functional.normalize(self._head_norm("teacher", b, h).float(), dim=-1)
                    for b, h in zip(self.batches, self._ref_hidden, strict=True)
                ]
                self._ref_hidden = []
            elif self.tokens * vocab * 4 <= cache_bytes:
                self._ref = TeacherKL()
                for b, h in zip(self.batches, self._ref_hidden, strict=True):
                    self._ref.add_batch(self._head_logprobs("teacher", b, h))
                self._ref_hidden = []

    def _head_logprobs(self, who: str, ids: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        model = self.models[who]
        n = self._n(who)
        logits = spans.run_span(model, ids, start=n, hidden=h, until="logits")
        return torch.log_softmax(logits.float(), dim=-1)

    def _head_norm(self, who: str, ids: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return spans.run_span(self.models[who], ids, start=self._n(who), hidden=h, until="norm")

    def _n(self, who: str) -> int:
        return self.layer_map.n_teacher if who == "teacher" else self.layer_map.n_student

    # -- building blocks
    @property
    def n_student(self) -> int:
        return self.layer_map.n_student

    def embed(self, who: str) -> list[torch.Tensor]:
        """The states entering layer 0 with the embedding of ``who`` (cached)."""
        if who not in self._embed:
            with torch.no_grad():
                self._embed[who] = [embedding_output(self.models[who], b) for b in self.batches]
        return self._embed[who]

    def block(self, i: int, patched: bool, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run position ``i``: the teacher block of student layer ``i`` if ``patched``, else student layer ``i``."""
        if patched:
            blk = self.layer_map.block(i)
            model, start, stop = self.models["teacher"], blk.start, blk.stop
        else:
            model, start, stop = self.models["student"], i, i + 1
        self.counts["blocks"] += 1
        self.counts["layers"] += stop - start
        with torch.no_grad():
            return [
                spans.run_span(model, b, start=start, stop=stop, hidden=h)
                for b, h in zip(self.batches, states, strict=True)
            ]

    def depth(self, patched: set[int] | Sequence[int]) -> int:
        """Number of layers of the model patching ``patched``."""
        p = set(patched)
        return sum(len(self.layer_map.block(i)) if i in p else 1 for i in range(self.n_student))

    def score(self, head: str, states: list[torch.Tensor], *, depth: int | None = None) -> float:
        """Finish the model with the final norm and head of ``head`` and compare it with the teacher.

        ``depth`` (the model's layer count) is tallied in ``counts["full_layers"]``: what running it whole costs.
        """
        self.counts["heads"] += 1
        self.counts["full_layers"] += depth or 0
        total = 0.0
        with torch.no_grad():
            for k, (b, h) in enumerate(zip(self.batches, states, strict=True)):
                if self.criterion == "kl":
                    logits = spans.run_span(
                        self.models[head], b, start=self._n(head), hidden=h, until="logits"
                    )
                    if self._ref is not None:
                        total += self._ref.total(k, logits)
                    else:
                        logp = self._head_logprobs("teacher", b, self._ref_hidden[k])
                        total += kl_sum(logp.exp(), negative_entropy(logp), logits)
                else:
                    got = torch.nn.functional.normalize(self._head_norm(head, b, h).float(), dim=-1)
                    total += float((got * self._ref_normed[k]).sum(-1).double().sum())
        return total / self.tokens

    # -- whole models
    def sources(self, patched: set[int] | Sequence[int]) -> tuple[str, str]:
        """(embedding source, head source) of the model patching ``patched``."""
        p = set(patched)
        return ("teacher" if 0 in p else "student"), ("teacher" if self.n_student - 1 in p else "student")

    def states(self, patched: set[int] | Sequence[int]) -> list[list[torch.Tensor]]:
        """The states at every block boundary 0..M of the model patching ``patched``."""
        p = set(patched)
        embed, _ = self.sources(p)
        out = [self.embed(embed)]
        for i in range(self.n_student):
            out.append(self.block(i, i in p, out[-1]))
        return out

    def evaluate(self, patched: set[int] | Sequence[int]) -> float:
        """The criterion for one patched set, computed from scratch."""
        p = set(patched)
        return self.score(self.sources(p)[1], self.states(p)[-1], depth=self.depth(p))


# ---- searches -----------------------------------------------------------------------------------------------


def _better(criterion: Criterion, a: float, b: float) -> bool:
    return a < b if criterion == "kl" else a > b


def nested_search(
    ev: PatchEvaluator, *, sequence: Sequence[int] | None = None, progress: Progress | None = None
) -> tuple[list[int], list[float]]:
    """Grow the patched set one layer at a time, greedily by the criterion (or along a fixed ``sequence``).

    Returns the sequence of added layers and the criterion at every size 0..M. The current model's states at
    every block boundary are cached, so a candidate costs only the blocks from its position to the end plus
    one head. Ties go to the lower layer index.
    """
    m = ev.n_student
    patched: set[int] = set()
    states = ev.states(patched)
    values = [ev.score(ev.sources(patched)[1], states[-1], depth=ev.depth(patched))]
    seq: list[int] = []
    total = m if sequence is not None else m * (m + 1) // 2
    done = 0
    for step in range(m):
        candidates = [sequence[step]] if sequence is not None else [i for i in range(m) if i not in patched]
        best: tuple[float, int, list[list[torch.Tensor]]] | None = None
        for i in candidates:
            h = ev.embed("teacher") if i == 0 else states[i]
            suffix = [ev.block(i, True, h)]
            for j in range(i + 1, m):
                suffix.append(ev.block(j, j in patched, suffix[-1]))
            head = "teacher" if (i == m - 1 or m - 1 in patched) else "student"
            value = ev.score(head, suffix[-1], depth=ev.depth(patched | {i}))
            if best is None or _better(ev.criterion, value, best[0]):
                best = (value, i, suffix)
            done += 1
            if progress:
                progress(done, total)
        assert best is not None
        value, i, suffix = best
        patched.add(i)
        seq.append(i)
        if i == 0:
            states[0] = ev.embed("teacher")
        states[i + 1 :] = suffix
        values.append(value)
    return seq, values


def exhaustive_search(ev: PatchEvaluator, *, progress: Progress | None = None) -> list[float]:
    """The criterion of every subset, indexed by bit mask (bit i set = student layer i patched).

    A depth-first walk over positions 0..M-1 shares every prefix: 2^(M+1) - 2 block evaluations and 2^M heads.
    """
    m = ev.n_student
    values = [math.nan] * (1 << m)
    done = [0]

    def walk(i: int, states: list[torch.Tensor] | None, mask: int) -> None:
        if i == m:
            head = "teacher" if mask >> (m - 1) & 1 else "student"
            subset = [j for j in range(m) if mask >> j & 1]
            values[mask] = ev.score(head, states, depth=ev.depth(subset))  # type: ignore[arg-type]
            done[0] += 1
            if progress:
                progress(done[0], 1 << m)
            return
        for patched in (False, True):
            h = (ev.embed("teacher" if patched else "student")) if i == 0 else states
            walk(i + 1, ev.block(i, patched, h), mask | (int(patched) << i))  # type: ignore[arg-type]

    walk(0, None, 0)
    return values


SIZE_EXHAUSTIVE = 1 << 12  # size-aware: score every subset up to this many (M <= 12)
SIZE_ENUMERATION = 1 << 12  # ... else every subset of the multi-layer blocks, up to this many per pass


def _restricted_walk(
    ev: PatchEvaluator,
    allowed: Callable[[int, int], Sequence[bool]],
    visit: Callable[[int, list[torch.Tensor], str], None],
) -> None:
    """Depth-first over positions 0..M-1 like ``exhaustive_search``, with only the choices ``allowed(i, mask)``
    (mask: the choices before i); calls ``visit(mask, final states, head source)`` for every complete set."""
    m = ev.n_student

    def walk(i: int, states: list[torch.Tensor] | None, mask: int) -> None:
        if i == m:
            visit(mask, states, "teacher" if mask >> (m - 1) & 1 else "student")  # type: ignore[arg-type]
            return
        for patched in allowed(i, mask):
            h = (ev.embed("teacher" if patched else "student")) if i == 0 else states
            walk(i + 1, ev.block(i, patched, h), mask | (int(patched) << i))  # type: ignore[arg-type]

    walk(0, None, 0)


def size_search(
    ev: PatchEvaluator, *, tied: bool = True, rebase: bool = True, progress: Progress | None = None
) -> tuple[list[tuple[int, ...]], list[float], dict[str, Any]]:
    """For every distinct layer count from the student's to the teacher's, the patched set of that size with the
    lowest criterion (KL): the members of the ``size-aware`` order, smallest first, and their KL.

    ``tied``: the teacher ties its head to its embedding, so a member whose embedding and head come from
    different models would need an untied copy of the vocabulary matrix (more parameters than its layer count
    says); such members are left out (student layers 0 and M-1 are patched together or not at all).

    Where 2^M <= ``SIZE_EXHAUSTIVE`` every subset is scored (the exact optimum per size). Beyond, every subset of
    the multi-layer blocks is scored twice, with the single-layer blocks all from the student and all from the
    teacher (a depth-first walk that shares prefixes), and then each size's best set is improved by a local search
    that moves single-layer blocks between teacher and student (one at a time, or the first and last together when
    ``tied``) while the KL falls. Its candidates run from the states of the set they are a move away from
    (``rebase=False``: from the student's or the teacher's, as before; the same values, more layers run).
    """
    m, layer_map = ev.n_student, ev.layer_map
    singles = [i for i in range(m) if len(layer_map.block(i)) == 1]
    exhaustive = (1 << m) <= SIZE_EXHAUSTIVE
    multi = m - len(singles)
    if not exhaustive and (1 << multi) > SIZE_ENUMERATION:
        raise BoomerangError(
            f"the size-aware order enumerates the 2^{multi} subsets of this student's {multi} multi-layer blocks, "
            f"over the limit of {SIZE_ENUMERATION}; use greedy-kl"
        )
    best: dict[int, tuple[float, tuple[int, ...]]] = {}  # layer count -> (value, patched set)
    memo: dict[tuple[int, ...], float] = {}
    total = (1 << m) if exhaustive else 2 << multi
    seen = [0]

    def record(subset: tuple[int, ...], value: float) -> None:
        memo[subset] = value
        d = ev.depth(subset)
        cur = best.get(d)
        if cur is None or value < cur[0] or (value == cur[0] and subset < cur[1]):
            best[d] = (value, subset)
        seen[0] += 1
        if progress:
            progress(seen[0], max(total, seen[0]))

    def visit(mask: int, states: list[torch.Tensor], head: str) -> None:
        subset = tuple(i for i in range(m) if mask >> i & 1)
        if subset not in memo:
            record(subset, ev.score(head, states, depth=ev.depth(subset)))

    def allowed(fixed: bool | None) -> Callable[[int, int], Sequence[bool]]:
        def choices(i: int, mask: int) -> Sequence[bool]:
            if tied and m > 1 and i == m - 1:
                return (bool(mask & 1),)  # the head from whoever supplies the embedding
            if fixed is not None and i in singles:
                return (fixed,)
            return (False, True)

        return choices

    if exhaustive:
        _restricted_walk(ev, allowed(None), visit)
    else:
        for fixed in (False, True):
            _restricted_walk(ev, allowed(fixed), visit)
        moves = [(j,) for j in singles if not (tied and j in (0, m - 1))]
        if tied and 0 in singles and m - 1 in singles:
            moves.append((0, m - 1))
        scorer = _SubsetScorer(ev)
        _local_search(best, memo, record, scorer, moves, scorer.rebase if rebase else None)
    depths = sorted(best)
    info = {
        "method": "exhaustive"
        if exhaustive
        else "multi-layer blocks enumerated, single-layer blocks searched",
        "layers": depths,
        "tied": tied,
        "models_scored": len(memo),
    }
    return [best[d][1] for d in depths], [best[d][0] for d in depths], info


def _local_search(
    best: dict[int, tuple[float, tuple[int, ...]]],
    memo: dict[tuple[int, ...], float],
    record: Callable[[tuple[int, ...], float], None],
    scorer: Callable[[frozenset[int]], float],
    moves: list[tuple[int, ...]],
    rebase: Callable[[tuple[int, ...]], None] | None = None,
) -> None:
    """Improve each size's best set in place: apply a move (flip single-layer blocks between teacher and student)
    while that lowers the criterion; ``record`` scores a new set into ``best`` and ``memo``. ``rebase(subset)`` is
    called with each set whose neighbours are about to be scored (they share its states up to the move)."""
    for d in sorted(best):
        improved = True
        while improved:
            improved = False
            _value, subset = best[d]
            if rebase is not None:
                rebase(subset)
            for move in moves:
                cand = tuple(sorted(set(subset) ^ set(move)))
                if cand in memo:
                    continue
                record(cand, scorer(frozenset(cand)))
                if best[d][1] == cand:
                    improved = True
                    break


def _mask(subset: Sequence[int]) -> int:
    return sum(1 << i for i in subset)


def best_subsets(values: list[float], m: int, criterion: Criterion = "kl") -> list[tuple[int, ...]]:
    """For each size, the best subset (ties to the lexicographically smallest set of layers)."""
    best: list[tuple[int, ...] | None] = [None] * (m + 1)
    score: list[float] = [math.nan] * (m + 1)
    for mask, v in enumerate(values):
        k = bin(mask).count("1")
        subset = tuple(i for i in range(m) if mask >> i & 1)
        if best[k] is None or _better(criterion, v, score[k]) or (v == score[k] and subset < best[k]):  # type: ignore[operator]
            best[k], score[k] = subset, v
    return [b for b in best if b is not None]


def greedy_from_table(
    values: list[float], m: int, criterion: Criterion = "kl"
) -> tuple[list[int], list[float]]:
    """The greedy sequence read off an exhaustive table (identical to ``nested_search``'s choices)."""
    mask, seq, out = 0, [], [values[0]]
    for _ in range(m):
        best_i, best_v = -1, math.nan
        for i in range(m):
            if mask >> i & 1:
                continue
            v = values[mask | 1 << i]
            if best_i < 0 or _better(criterion, v, best_v):
                best_i, best_v = i, v
        mask |= 1 << best_i
        seq.append(best_i)
        out.append(best_v)
    return seq, out


# ---- shortest paths: per-size subsets in polynomial time ------------------------------------------------------


Anchor = Literal["student", "teacher"]


@dataclass(frozen=True)
class ChainSurrogate:
    """The criterion around an anchor model, keeping only interactions between adjacent positions.

    With x_j = 1 when position j is patched and z_j = x_j around the student (z_j = 1 - x_j around the teacher),
    ``f(x) ~ base + sum_j u[j] z_j + sum_{j>=1} w[j] z_{j-1} z_j``. The terms are measured exactly: ``base`` is the
    anchor, ``u[j]`` what flipping position j alone changes, ``w[j]`` what flipping j-1 and j together changes
    beyond the two single flips. So the surrogate is exact for the anchor, every single flip and every adjacent pair
    of flips, and for all subsets when the criterion has no interaction between non-adjacent positions.
    """

    anchor: Anchor
    base: float
    u: tuple[float, ...]
    w: tuple[float, ...]  # w[0] is 0: position 0 has no left neighbour

    @classmethod
    def measure(cls, anchor: Anchor, m: int, score: Callable[[frozenset[int]], float]) -> ChainSurrogate:
        """Measure the terms with 2M scored models: the anchor, M single flips and M-1 adjacent pairs."""
        full = frozenset(range(m))

        def flipped(*js: int) -> frozenset[int]:
            return frozenset(js) if anchor == "student" else full - set(js)

        base = score(flipped())
        single = [score(flipped(j)) for j in range(m)]
        u = tuple(v - base for v in single)
        w = (0.0, *(score(flipped(j - 1, j)) - single[j - 1] - single[j] + base for j in range(1, m)))
        return cls(anchor=anchor, base=base, u=u, w=w)

    def z(self, patched: int) -> int:
        return patched if self.anchor == "student" else 1 - patched

    def value(self, subset: Sequence[int]) -> float:
        """The surrogate's value for one patched set."""
        x = [0] * len(self.u)
        for i in subset:
            x[i] = 1
        z = [self.z(v) for v in x]
        return (
            self.base
            + sum(u * zj for u, zj in zip(self.u, z, strict=True))
            + sum(self.w[j] * z[j - 1] * z[j] for j in range(1, len(z)))
        )

    def shortest_paths(self) -> tuple[list[tuple[int, ...]], list[float], int]:
        """For every size K = 0..M, the patched set minimising the surrogate, and its value.

        The graph is acyclic: a node is (position j, K patched among positions < j, choice at j-1), and an edge
        chooses student layer j or teacher block j at cost ``u[j] z_j + w[j] z_{j-1} z_j``. A path from the source
        to (M, K, .) is a patched set of size K and its length is the surrogate minus ``base``, so one pass of
        dynamic programming over the 2(M+1) nodes per position gives the shortest path to every K at once:
        4M(M+1) edge relaxations at most (returned). Ties go to the lexicographically smallest set.
        """
        m = len(self.u)
        # node (k, previous choice) -> (length, patched positions so far)
        best: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {(0, -1): (0.0, ())}
        relaxations = 0
        for j in range(m):
            nxt: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}
            for (k, prev), (length, chosen) in best.items():
                for c in (0, 1):
                    cost = self.u[j] * self.z(c)
                    if prev >= 0:
                        cost += self.w[j] * self.z(prev) * self.z(c)
                    cand = (length + cost, (*chosen, j) if c else chosen)
                    relaxations += 1
                    key = (k + c, c)
                    if key not in nxt or cand < nxt[key]:
                        nxt[key] = cand
            best = nxt
        subsets, values = [], []
        for k in range(m + 1):
            length, chosen = min(v for (kk, _c), v in best.items() if kk == k)
            subsets.append(chosen)
            values.append(self.base + length)
        return subsets, values, relaxations


def shortest_path_search(
    score: Callable[[frozenset[int]], float], m: int, *, progress: Progress | None = None
) -> tuple[list[tuple[int, ...]], list[float], dict[str, Any]]:
    """Per-size patched sets from two chain surrogates of the criterion (lower is better), verified exactly.

    The surrogate is measured around the student and around the teacher (``ChainSurrogate``: 2M scored models
    each; the one around the student is exact for small K, the one around the teacher for large K). Each gives
    every size's best set by shortest paths; both candidates of each size are scored exactly and the better one is
    kept. ``score`` is the exact criterion of a patched set; it is called at most once per set, at most 6M - 6
    times in all (M >= 3). Returns the sets, their exact scores and what was measured.
    """
    total = 4 * m + max(0, 2 * (m - 3))
    memo: dict[frozenset[int], float] = {}

    def exact(subset: frozenset[int]) -> float:
        if subset not in memo:
            memo[subset] = float(score(subset))
            if progress:
                progress(len(memo), max(total, len(memo)))
        return memo[subset]

    surrogates = [ChainSurrogate.measure(anchor, m, exact) for anchor in ("student", "teacher")]
    paths = [sg.shortest_paths() for sg in surrogates]
    subsets: list[tuple[int, ...]] = []
    values: list[float] = []
    chosen_by: list[str] = []
    candidates: list[dict[str, Any]] = []
    for k in range(m + 1):
        options = {sg.anchor: path[0][k] for sg, path in zip(surrogates, paths, strict=True)}
        scored = sorted((exact(frozenset(sub)), sub, anchor) for anchor, sub in options.items())
        value, subset, anchor = scored[0]
        subsets.append(subset)
        values.append(value)
        same = len({sub for _v, sub, _a in scored}) == 1
        chosen_by.append("both" if same else anchor)
        candidates.append({a: {"subset": list(sub), "kl": v} for v, sub, a in scored})
    if progress:
        progress(len(memo), len(memo))
    info = {
        "surrogates": {
            sg.anchor: {"base": sg.base, "u": list(sg.u), "w": list(sg.w), "predicted": path[1]}
            for sg, path in zip(surrogates, paths, strict=True)
        },
        "candidates": candidates,
        "chosen_by": chosen_by,
        "models_scored": len(memo),
        "dp_relaxations": sum(path[2] for path in paths),
    }
    return subsets, values, info


class _SubsetScorer:
    """The exact criterion of any patched set, run from the deepest cached state it shares.

    A set agrees with the student on positions before its first patched one, with the teacher before its first
    unpatched one, and with the ``rebase``d reference set (e.g. a local search's current best) before its first
    difference from it. It is run from the deepest of these prefixes, on that set's cached boundary states.
    """

    def __init__(self, ev: PatchEvaluator) -> None:
        self.ev = ev
        m = ev.n_student
        self.refs: dict[str, tuple[tuple[bool, ...], list[list[torch.Tensor]]]] = {
            "student": ((False,) * m, ev.states(())),
            "teacher": ((True,) * m, ev.states(range(m))),
        }

    def _choices(self, subset: frozenset[int] | Sequence[int]) -> tuple[bool, ...]:
        return tuple(i in subset for i in range(self.ev.n_student))

    def _run(self, choices: tuple[bool, ...]) -> list[list[torch.Tensor]]:
        """The boundary states 0..M of ``choices``; those before the shared prefix's end are the reference's."""
        ev = self.ev
        start, states = max(
            ((spans.shared_prefix(choices, c), st) for c, st in self.refs.values()), key=lambda x: x[0]
        )
        out = states[: start + 1] if start else [ev.embed("teacher" if choices[0] else "student")]
        for i in range(start, ev.n_student):
            out.append(ev.block(i, choices[i], out[-1]))
        return out

    def rebase(self, subset: frozenset[int] | Sequence[int]) -> None:
        """Cache the boundary states of ``subset``: sets that differ from it late start late."""
        choices = self._choices(subset)
        self.refs["base"] = (choices, self._run(choices))

    def __call__(self, subset: frozenset[int]) -> float:
        ev = self.ev
        h = self._run(self._choices(subset))[-1]
        return ev.score(ev.sources(subset)[1], h, depth=ev.depth(subset))


def layer_similarity(
    teacher: Model, student: Model, layer_map: LayerMap, calibration: Calibration, *, batch_size: int = 8
) -> list[float]:
    """For each student layer i, mean per-token cosine between its output and teacher layer ``target(i)``'s."""
    ids = as_calibration(calibration)
    s = similarity_matrix(student, ids, teacher, batch_size=batch_size, b_layers=layer_map.targets)
    return [float(s[i, i]) for i in range(layer_map.n_student)]


def similarity_order(sims: Sequence[float], layer_map: LayerMap, **info: object) -> PatchOrder:
    """The ``similarity`` order from each student layer's similarity to its block's output (lowest first)."""
    m = layer_map.n_student
    if len(sims) != m:
        raise BoomerangError(f"need one similarity per student layer ({m}), got {len(sims)}")
    seq = sorted(range(m), key=lambda i: (sims[i], i))
    return PatchOrder.from_sequence(
        "similarity",
        seq,
        m,
        criterion="similarity",
        layer_similarity=[float(v) for v in sims],
        targets=layer_map.targets,
        **info,
    )


def order_scores(
    teacher: Model,
    student: Model,
    layer_map: LayerMap,
    order: PatchOrder,
    calibration: Calibration,
    *,
    criterion: Criterion = "kl",
    batch_size: int = 8,
    evaluator: PatchEvaluator | None = None,
) -> list[float]:
    """The criterion of every family member K = 0..M under ``order`` (nested orders reuse cached prefixes)."""
    order = order.check_fits(layer_map.n_student)
    ev = evaluator or PatchEvaluator(
        teacher, student, layer_map, calibration, criterion=criterion, batch_size=batch_size
    )
    seq = order.sequence
    if seq is not None:
        return nested_search(ev, sequence=seq)[1]
    return [ev.evaluate(s) for s in order.subsets]


def compute_order(
    name: str,
    teacher: Model,
    student: Model,
    layer_map: LayerMap,
    calibration: Calibration,
    *,
    batch_size: int = 8,
    max_layers: int = 12,
    max_texts: int | None = KL_TEXTS,
    score: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> PatchOrder:
    """Compute a data-driven order on calibration token ids ``[n, length]``.

    ``max_layers`` bounds ``optimal`` (2^M subsets). KL scoring (``greedy-kl``, ``optimal``, and ``similarity``
    with ``score=True``) uses at most ``max_texts`` calibration blocks, evenly spread over the set (None: all):
    every scored model runs the full-vocabulary head. ``info["calibration"]`` describes the blocks used.
    """
    if name not in DATA_ORDERS:
        raise BoomerangError(f"unknown data-driven order {name!r}; use one of: {', '.join(DATA_ORDERS)}")
    if teacher is None or student is None or calibration is None:
        raise BoomerangError(f"order {name!r} needs the teacher, the student and calibration data (--data)")
    if options:
        raise BoomerangError(f"unknown option(s) for order {name!r}: {', '.join(sorted(options))}")
    ids = as_calibration(calibration)
    kl_ids = subsample(ids, max_texts)
    m = layer_map.n_student
    if name == "similarity":
        check_pair(teacher, student, layer_map)
        sims = layer_similarity(teacher, student, layer_map, ids, batch_size=batch_size)
        order = similarity_order(sims, layer_map, calibration=calibration_info(ids))
        if score:
            ev = PatchEvaluator(teacher, student, layer_map, kl_ids, batch_size=batch_size)
            info = {**order.info, "kl": nested_search(ev, sequence=order.sequence)[1]}
            info["kl_calibration"] = calibration_info(kl_ids)
            order = PatchOrder(name=order.name, subsets=order.subsets, info=info)
        return order

    if name == "optimal" and m > max_layers:
        raise BoomerangError(
            f"order 'optimal' scores all 2^{m} subsets of a {m}-layer student, over the limit max_layers="
            f"{max_layers}; raise max_layers (--max-layers) if you can afford about 2^{m + 1} block evaluations, "
            "or use greedy-kl"
        )
    info: dict[str, Any] = {"calibration": calibration_info(kl_ids)}
    ev = PatchEvaluator(teacher, student, layer_map, kl_ids, batch_size=batch_size)
    if name == "greedy-kl":
        seq, kl = nested_search(ev, progress=progress)
        info.update(criterion="kl", kl=kl, evaluations=_evaluations(ev, ev.counts["heads"]))
        return PatchOrder.from_sequence("greedy-kl", seq, m, **info)
    if name == "shortest-path":
        subsets, kl, found = shortest_path_search(_SubsetScorer(ev), m, progress=progress)
        info.update(criterion="kl", kl=kl, **found, evaluations=_evaluations(ev, ev.counts["heads"]))
        return PatchOrder(name="shortest-path", subsets=subsets, info=info)
    if name == "size-aware":
        subsets, kl, found = size_search(ev, tied=is_tied(teacher), progress=progress)
        info.update(criterion="kl", kl=kl, **found, evaluations=_evaluations(ev, ev.counts["heads"]))
        return PatchOrder(name="size-aware", subsets=subsets, info=info, by_size=True, student_layers=m)

    values = exhaustive_search(ev, progress=progress)
    subsets = best_subsets(values, m)
    gseq, gkl = greedy_from_table(values, m)
    kl = [values[_mask(s)] for s in subsets]
    info.update(
        criterion="kl",
        kl=kl,
        greedy_sequence=gseq,
        greedy_kl=gkl,
        greedy_gap=[g - o for g, o in zip(gkl, kl, strict=True)],
        subsets_scored=1 << m,
        evaluations=_evaluations(ev, ev.counts["heads"]),
    )
    return PatchOrder(name="optimal", subsets=subsets, info=info)


def _evaluations(ev: PatchEvaluator, candidates: int) -> dict[str, int]:
    """Work done, and what running every scored model whole would have cost (the teacher reference excluded)."""
    return {
        "models_scored": candidates,
        "layer_evaluations": ev.counts["layers"],
        "block_evaluations": ev.counts["blocks"],
        "head_evaluations": ev.counts["heads"],
        "full_model_layer_evaluations": ev.counts["full_layers"],
    }
