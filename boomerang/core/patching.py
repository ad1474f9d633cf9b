"""Zero-shot patching: assemble a model whose layers come from the teacher and the student.

Models are assembled on the meta device and then given the source models' own tensors, so building a member
copies no weights (``copy=True`` clones them). Each result has its own module objects, so every layer's
``layer_idx`` and attention type are right for its new position, and KV caches work as usual.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedModel

from ..errors import BoomerangError
from .arch import FOREIGN_STUDENTS, Arch, get_arch, n_layers, route
from .configs import check_compatible, derive_config
from .encoders import to_bert_layout
from .layermap import LayerMap
from .plan import PatchPlan

if TYPE_CHECKING:
    from ..hints import Config


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """All parameters and buffers (persistent or not), tied names included."""
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


def canonical_tensors(model: PreTrainedModel, arch: Arch, teacher_config: Config) -> dict[str, torch.Tensor]:
    """A model's tensors under the teacher architecture's names (DistilBERT is renamed into BERT's layout)."""
    if model.config.model_type == arch.model_type:
        return named_tensors(model)
    if (arch.model_type, model.config.model_type) in FOREIGN_STUDENTS:
        return to_bert_layout(named_tensors(model), teacher_config)
    raise BoomerangError(f"cannot use a {model.config.model_type} model with a {arch.model_type} teacher")


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    if attr in module._parameters:
        module._parameters[attr] = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        raise BoomerangError(f"internal: {name} is neither a parameter nor a buffer")


def is_tied(model: PreTrainedModel) -> bool:
    """True when the LM head's weight is the input embedding's tensor."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def assemble(
    models: dict[str, PreTrainedModel],
    sources: Sequence[tuple[str, int]],
    embed_from: str,
    head_from: str,
    *,
    section: Mapping[str, object] | None,
    copy: bool = False,
) -> PreTrainedModel:
    """Build a model of the teacher's class with layers ``sources`` (pairs of model key and layer index).

    ``models`` must hold a "teacher"; the embedding side comes from ``embed_from`` and the final norm and head
    from ``head_from``. Tensors are shared with the sources unless ``copy``.
    """
    teacher = models["teacher"]
    arch = get_arch(teacher.config)
    views = {who: canonical_tensors(m, arch, teacher.config) for who, m in models.items()}
    tie = embed_from == head_from and is_tied(models[embed_from])
    cfg = derive_config(
        teacher.config, {k: m.config for k, m in models.items()}, sources, tie=tie, section=section
    )
    with torch.device("meta"):
        model = type(teacher)(cfg)
    clones: dict[int, torch.Tensor] = {}
    for name, target in named_tensors(model).items():
        who, src = route(name, arch, sources, embed_from, head_from)
        tensor = views[who].get(src)
        if tensor is None:
            raise BoomerangError(f"the {who} has no tensor {src!r} (needed for {name!r})")
        if tensor.shape != target.shape:
            raise BoomerangError(
                f"shape mismatch for {name}: {tuple(tensor.shape)} from the {who}, expected {tuple(target.shape)}"
            )
        if copy:
            if id(tensor) not in clones:
                c = tensor.detach().clone()
                clones[id(tensor)] = (
                    nn.Parameter(c, requires_grad=tensor.requires_grad)
                    if isinstance(tensor, nn.Parameter)
                    else c
                )
            tensor = clones[id(tensor)]
        _set_tensor(model, name, tensor)
    leftover = [n for n, t in named_tensors(model).items() if t.is_meta]
    if leftover:
        raise BoomerangError(f"internal: tensors left unassigned: {leftover[:5]}")
    model.train(teacher.training)
    if getattr(teacher, "generation_config", None) is not None:
        model.generation_config = _copy.deepcopy(teacher.generation_config)
    return model


def check_pair(teacher: PreTrainedModel, student: PreTrainedModel, layer_map: LayerMap) -> Arch:
    """Validate that ``student`` is an M-layer student of ``teacher`` under ``layer_map``."""
    arch = check_compatible(teacher.config, student.config)
    layer_map.check_fits(n_layers(teacher.config), n_layers(student.config))
    td, sd = teacher.dtype, student.dtype
    if td != sd:
        raise BoomerangError(f"teacher is {td} but student is {sd}; load both with the same dtype")
    return arch


def build(
    teacher: PreTrainedModel, student: PreTrainedModel, plan: PatchPlan, *, copy: bool = False
) -> PreTrainedModel:
    """The intermediate model described by ``plan``."""
    check_pair(teacher, student, plan.layer_map)
    return assemble(
        {"teacher": teacher, "student": student},
        plan.sources,
        plan.embed_source,
        plan.head_source,
        section=plan.provenance(),
        copy=copy,
    )
