"""Evaluate many models on one batch, computing each shared prefix of layers only once.

Family members share prefixes: under the ``last`` order every member starts with student layers (the student's
own first layers), under ``first`` with the teacher's first layers. Each model is described by a *key*: where its
embedding comes from, where each of its layers comes from, and where its head comes from, e.g.
``(("student", "embed"), (("student", 0), ("student", 1), ("teacher", 4)), ("teacher", "head"))``.
Two models whose keys agree on the embedding and the first ``d`` layers have the same hidden state after ``d``
layers, bit for bit (same tensors, same inputs, same kernels).

The models' own ``forward`` is used, so every architecture's masks and position embeddings are built as usual:
for a model that can start from a cached state after ``d`` layers, its first ``d`` layers are swapped for
identity modules for the duration of the call (so they are not even called) and a forward pre-hook
(``spans.feed_input``) hands layer ``d`` the cached state. Forward
hooks keep (a copy of) the states that later models will start from. Results are therefore identical to running
each model on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.hooks import layer_list
from ..core.spans import feed_input, shared_prefix
from ..interrupts import check

if TYPE_CHECKING:
    from ..core.plan import PatchPlan

Key = tuple[Hashable, tuple[Hashable, ...], Hashable]  # (embedding, layers, head)


@dataclass
class Scored:
    """A model to evaluate. ``key`` describes its computation (None: opaque, always run in full)."""

    name: str
    model: nn.Module
    key: Key | None = None


def plan_key(plan: PatchPlan, names: dict[str, str] | None = None) -> Key:
    """The key of a family member built from a ``PatchPlan``; ``names`` renames the models (e.g. student ->
    random-student) so that different students never share keys."""
    names = names or {}

    def who(w: str) -> str:
        return names.get(w, w)

    return (
        (who(plan.embed_source), "embed"),
        tuple((who(w), j) for w, j in plan.sources),
        (who(plan.head_source), "head"),
    )


def layers_key(who: str, layers: Sequence[int]) -> Key:
    """The key of a model made of ``who``'s layers (embedding and head of ``who``), e.g. a naive baseline."""
    return ((who, "embed"), tuple((who, j) for j in layers), (who, "head"))


@dataclass(frozen=True)
class Step:
    index: int
    alias_of: int | None  # identical key: reuse that model's result
    start: int  # layers skipped (the state after ``start`` layers comes from the cache)
    capture: tuple[int, ...]  # depths whose states later models start from


def schedule(keys: Sequence[Key | None]) -> list[Step]:
    """Per model (in the given order): what to reuse and what to keep for later.

    Every distinct prefix is computed once, whatever the order: a model starts from the deepest state an earlier
    model kept, and keeps the states at every depth where a later model's deepest shared prefix ends. A model
    always runs at least its last layer (the cached state enters through a layer's pre-hook).
    """
    steps: list[Step] = []
    available: set[tuple] = set()
    first_with: dict[Key, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            steps.append(Step(i, None, 0, ()))
            continue
        if key in first_with:
            steps.append(Step(i, first_with[key], 0, ()))
            continue
        first_with[key] = i
        embed, layers, _ = key
        n = len(layers)
        start = max((d for d in range(1, n) if (embed, layers[:d]) in available), default=0)
        want = set()
        for later in keys[i + 1 :]:
            if later is None or later == key or later[0] != embed:
                continue
            d = min(shared_prefix(layers, later[1]), len(later[1]) - 1)
            if d > start and (embed, layers[:d]) not in available:
                want.add(d)
        available.update((embed, layers[:d]) for d in want)
        steps.append(Step(i, None, start, tuple(sorted(want))))
    return steps


def work(keys: Sequence[Key | None], n_layers: Sequence[int]) -> dict[str, int]:
    """Layer and head evaluations with and without reuse (``n_layers`` for opaque models)."""
    steps = schedule(keys)
    distinct = [s for s in steps if s.alias_of is None]
    return {
        "models": len(keys),
        "distinct_models": len(distinct),
        "layers_separately": sum(n_layers),
        "layers_shared": sum(n_layers[s.index] - s.start for s in distinct),
        "heads_separately": len(keys),
        "heads_shared": len(distinct),
    }


class _Skip(nn.Module):
    """Stands in for a layer whose output is already known: returns its input (no hooks, no arithmetic)."""

    def forward(
        self, hidden_states: torch.Tensor | None = None, *args: object, **kwargs: object
    ) -> torch.Tensor:
        return hidden_states if hidden_states is not None else kwargs["hidden_states"]


def _first_tensor(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@contextlib.contextmanager
def resumed(
    model: nn.Module, start: int, state: torch.Tensor | None, capture: Sequence[int] = ()
) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, ``model``'s forward skips its first ``start`` layers and feeds ``state`` to layer
    ``start``; the states after the layers in ``capture`` (depths, 1-based) are copied into the yielded dict."""
    layers = layer_list(model)
    saved = [layers[i] for i in range(start)]
    got: dict[int, torch.Tensor] = {}
    handles = []

    def keep(depth: int):
        def hook(_m, _a, out):
            got[depth] = _first_tensor(out).detach().clone()

        return hook

    if start and state is None:
        raise ValueError("a state is needed to start after layer 0")
    try:
        if start:
            for i in range(start):
                layers[i] = _Skip()
            handles.append(
                layers[start].register_forward_pre_hook(feed_input(state, clone=True), with_kwargs=True)
            )
        for d in capture:
            handles.append(layers[d - 1].register_forward_hook(keep(d)))
        yield got
    finally:
        for h in handles:
            h.remove()
        for i, layer in enumerate(saved):
            layers[i] = layer


def score(
    models: Sequence[Scored],
    fn: Callable[[nn.Module], torch.Tensor],
    *,
    reuse: bool = True,
    steps: Sequence[Step] | None = None,
    on_model: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """``fn(model)`` for every model (e.g. the per-token NLL of one batch), sharing prefixes if ``reuse``.

    ``steps`` may be precomputed with ``schedule`` (it depends only on the keys). ``on_model(i)`` is called
    before model ``i`` runs (for progress display).
    """
    if not reuse:
        out = []
        for i, m in enumerate(models):
            if on_model is not None:
                on_model(i)
            out.append(fn(m.model))
        return out
    steps = list(steps) if steps is not None else schedule([m.key for m in models])
    results: list[torch.Tensor | None] = [None] * len(models)
    cache: dict[tuple, torch.Tensor] = {}
    for step in steps:
        check()
        i = step.index
        if step.alias_of is not None:
            results[i] = results[step.alias_of]
            continue
        if on_model is not None:
            on_model(i)
        m = models[i]
        if m.key is None:
            results[i] = fn(m.model)
            continue
        embed, layers, _ = m.key
        state = cache[(embed, layers[: step.start])] if step.start else None
        with resumed(m.model, step.start, state, step.capture) as got:
            results[i] = fn(m.model)
        for d, h in got.items():
            cache[(embed, layers[:d])] = h
    return results  # type: ignore[return-value]
