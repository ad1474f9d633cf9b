"""Parameter accounting: trainable (unique tensors) and inference-time counts.

With tied embeddings the vocabulary matrix is one trainable tensor but does two jobs at inference (input lookup
and output projection); once the embedding and head come from different models it is two tensors. Following the
paper's Table 1 and its evaluation code, ``inference`` counts a tied head a second time; ``trainable`` counts every
distinct tensor once.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .arch import config_value, model_class
from .configs import derive_config
from .layermap import LayerMap
from .plan import PatchOrder, PatchPlan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..hints import Config, Model


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    inference: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(model: nn.Module) -> ParamCount:
    """Counts for a built model (meta-device skeletons included)."""
    unique = {id(p): p.numel() for p in model.parameters()}
    trainable = sum(unique.values())
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    return ParamCount(trainable, trainable + (head.weight.numel() if tied else 0))


def config_tied(config: Config) -> bool:
    return bool(config_value(config, "tie_word_embeddings", False))


def plan_tied(teacher_config: Config, student_config: Config, plan: PatchPlan) -> bool:
    """Whether the member ties its head to its embedding: both from one model whose own head is tied."""
    configs = {"teacher": teacher_config, "student": student_config}
    return plan.embed_source == plan.head_source and config_tied(configs[plan.head_source])


def plan_config(
    teacher_config: Config, student_config: Config, plan: PatchPlan, *, section: bool = True
) -> Any:
    """The config of the model ``plan`` describes, from the two configs alone (``config.json`` dicts give a dict)."""
    configs = {"teacher": teacher_config, "student": student_config}
    tie = plan_tied(teacher_config, student_config, plan)
    return derive_config(
        teacher_config, configs, plan.sources, tie=tie, section=plan.provenance() if section else None
    )


def meta_model(config: Config, dtype: torch.dtype | None = None) -> Model:
    """A weightless (meta-device) model of ``config``, built the way ``from_pretrained`` builds it (in ``dtype``)."""
    import torch

    cfg = copy.deepcopy(config)
    with torch.device("meta"):
        return model_class(cfg).from_config(cfg, dtype=dtype) if dtype else model_class(cfg).from_config(cfg)


def plan_params(teacher_config: Config, student_config: Config, plan: PatchPlan) -> ParamCount:
    return count_params(meta_model(plan_config(teacher_config, student_config, plan, section=False)))


@dataclass(frozen=True)
class FamilySize:
    """One distinct size of a family: its layer count and parameters, and a member that has it."""

    layers: int
    trainable: int
    inference: int
    patched: tuple[int, ...]  # the fewest-patched member of this size (patching blocks in order)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "patched": list(self.patched)}


def distinct_sizes(teacher_config: Config, student_config: Config, layer_map: LayerMap) -> list[FamilySize]:
    """Every layer count a member can have (student to teacher), each with its parameters.

    Members whose embedding and head come from different models of a tied pair are left out: they carry an
    untied copy of the vocabulary matrix, so their parameters are not those of their layer count.
    """
    m = layer_map.n_student
    gains = [len(layer_map.block(i)) - 1 for i in range(m)]
    # extra layers -> fewest blocks reaching them (multi-layer only)
    reach: dict[int, tuple[int, ...]] = {0: ()}
    for i in (i for i in range(m) if gains[i] > 0):
        for extra, subset in sorted(reach.items(), reverse=True):
            cand = extra + gains[i]
            if cand not in reach or len(subset) + 1 < len(reach[cand]):
                reach[cand] = (*subset, i)
    out = []
    for extra in sorted(reach):
        patched = reach[extra]
        if (0 in patched) != (m - 1 in patched) and config_tied(teacher_config):
            patched = tuple(sorted({*patched, 0, m - 1}))  # the same layer count, tied
            if sum(gains[i] for i in patched) != extra:
                continue
        plan = PatchPlan(layer_map=layer_map, patched=patched)
        counts = plan_params(teacher_config, student_config, plan)
        out.append(FamilySize(plan.n_layers, counts.trainable, counts.inference, plan.patched))
    return out


def family_table(
    teacher_config: Config, student_config: Config, layer_map: LayerMap, order: PatchOrder | None = None
) -> list[dict[str, Any]]:
    """One row per member K of the order (default ``last``): patched student layers, depth and parameter counts."""
    m = layer_map.n_student
    order = PatchOrder.builtin("last", m) if order is None else order.check_fits(m)
    rows = []
    for k in range(order.n_members):
        plan = PatchPlan(layer_map=layer_map, patched=order.patched(k), order=order.name)
        counts = plan_params(teacher_config, student_config, plan)
        rows.append({"K": k, "patched": list(plan.patched), "layers": plan.n_layers, **counts.as_dict()})
    return rows
