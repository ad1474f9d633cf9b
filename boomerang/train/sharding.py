"""FSDP2 (torch's ``fully_shard``) for the student and the frozen teacher, on GPUs (NCCL) and CPUs (gloo).

Accelerate maps CPU processes to DDP and only shards on GPUs, so the trainer calls ``fully_shard`` itself: the same
code runs, and is tested, on several CPU processes as on GPUs. Each model is sharded in units:

- every decoder layer (gathered for its forward, resharded after it, gathered again for its backward);
- the embedding-side modules (an untied model's embedding is resharded after the forward);
- the head side (final norm and LM head; with a tied head, together with the embedding, since one parameter may
  belong to one unit only), kept gathered from the forward to the end of the backward, because the fused CE/KL
  (``boomerang.train.losses``) reads the head's weight after the forward;
- the root: the module that wraps the model's forward (no parameters of its own).

The student keeps fp32 parameter shards (the master weights the optimizer updates) and computes in bf16 under
bf16 precision: ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`` gathers bf16 copies and
reduce-scatters gradients in fp32. The frozen teacher is sharded the same way, in its own dtype; its head unit is
resharded explicitly after the loss (``release``). Gradients are reduce-scattered after every micro-batch, so that
accumulated gradients stay sharded (the no-sync alternative would hold a full unsharded copy).

Checkpoints gather full state dicts onto rank 0 (CPU) and write the same safetensors files as an unsharded run,
because torch.distributed.checkpoint's format pickles its metadata, which this project never loads; resuming then
works across strategies and process counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import fsdp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from transformers import AutoModelForCausalLM

from ..core.arch import get_arch
from ..core.hooks import layer_list

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from .losses import ModelOutputs


def fsdp_modules() -> Any:
    """torch.distributed.fsdp's FSDP2 API (``fully_shard``, ``MixedPrecisionPolicy``, ``FSDPModule``)."""
    return fsdp


def _with_params(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    out = []
    for name in names:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        if any(True for _ in m.parameters()) and m not in out:
            out.append(m)
    return out


def units(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """(decoder layers, embedding-side modules, head-side modules) of a transformers causal LM.

    With a tied head the embedding is moved to the head side (a parameter belongs to exactly one unit).
    """
    arch = get_arch(model.config)  # type: ignore[arg-type]
    embed = _with_params(model, arch.embed)
    head = _with_params(model, arch.head)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()  # type: ignore[operator]
    if out is not None and out not in head:
        head.append(out)
    if inp is not None and inp not in embed:
        embed.insert(0, inp)
    if out is not None and inp is not None and out.weight is inp.weight:
        head = [inp, *[m for m in head if m is not inp]]
        embed = [m for m in embed if m is not inp]
    return list(layer_list(model)), embed, head


def wanted(strategy: str, accelerate_fsdp: bool, world: int) -> bool:
    """Whether to shard: ``train.strategy`` fsdp (or auto under ``accelerate launch`` with an FSDP config) and
    more than one process."""
    return world > 1 and (strategy == "fsdp" or (strategy == "auto" and accelerate_fsdp))


def shard(
    root: nn.Module, model: nn.Module, *, bf16_compute: bool, mesh: DeviceMesh | None = None
) -> nn.Module:
    """Shard ``model`` in units (see the module docstring) and make ``root`` (which calls it) the FSDP root.

    ``bf16_compute``: gather bf16 copies of fp32 parameters and reduce gradients in fp32 (the student under bf16);
    otherwise compute in the parameters' own dtype. Returns ``root``, now an ``FSDPModule``.
    """
    fsdp = fsdp_modules()
    mp = (
        fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16_compute
        else fsdp.MixedPrecisionPolicy()
    )
    kw: dict[str, Any] = {"mp_policy": mp, "mesh": mesh}
    layers, embed, head = units(model)
    for layer in layers:
        fsdp.fully_shard(layer, reshard_after_forward=True, **kw)
    if embed:
        fsdp.fully_shard(embed if len(embed) > 1 else embed[0], reshard_after_forward=True, **kw)
    if head:
        fsdp.fully_shard(head if len(head) > 1 else head[0], reshard_after_forward=False, **kw)
    fsdp.fully_shard(root, **kw)
    return root


def head_unit(model: nn.Module) -> nn.Module | None:
    """The FSDP unit holding the LM head (gathered after a forward until ``release``)."""
    out = model.get_output_embeddings()  # type: ignore[operator]
    return out if isinstance(out, fsdp_modules().FSDPModule) else None


def release(model: nn.Module) -> None:
    """Reshard a frozen model's head unit (kept gathered after its forward for the loss)."""
    unit = head_unit(model)
    if unit is not None:
        unit.reshard()  # type: ignore[operator]


def gathered_weight(module: nn.Module) -> torch.Tensor:
    """A head's weight as a plain tensor (its unit must be gathered: after the model's forward)."""
    w = module.weight
    if hasattr(w, "to_local"):
        unit = module if isinstance(module, fsdp_modules().FSDPModule) else None
        if unit is None:
            raise RuntimeError("the head's weight is sharded and its module is not an FSDP unit")
        unit.unshard()  # type: ignore[operator]
        w = module.weight
    return w  # type: ignore[return-value]


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, fsdp_modules().FSDPModule)


def local_numel(module: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model) over the module's parameters."""
    local = total = 0
    for p in module.parameters():
        if hasattr(p, "to_local"):
            local += p.to_local().numel()
        else:
            local += p.numel()
        total += p.numel()
    return local, total


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip sharded (DTensor) or plain gradients to a global norm; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# ---- the trainer's view: forwards, counts, checkpoints, the final student ---------------------------------------


class _NoHead(nn.Module):
    """The FSDP root: the model's loss forward, returning no parameter (FSDP hooks every tensor it returns)."""

    def __init__(self, fwd: nn.Module):
        super().__init__()
        self.fwd = fwd

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ctx: dict[int, torch.Tensor] | None = None,
    ) -> ModelOutputs:
        out = self.fwd(input_ids, attention_mask, ctx)
        out.head_weight = None
        return out


class ShardedForward:
    """A sharded model's loss forward: calls the FSDP root, then attaches the gathered head weight."""

    def __init__(self, fwd: nn.Module, model: nn.Module, *, bf16_compute: bool, mesh: DeviceMesh | None):
        self.model, self.head = model, getattr(fwd, "mode", "head") == "head"
        self.root = shard(_NoHead(fwd), model, bf16_compute=bf16_compute, mesh=mesh)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ctx: dict[int, torch.Tensor] | None = None,
    ) -> ModelOutputs:
        out = self.root(input_ids, attention_mask, ctx)  # ctx: the teacher-context pass's inputs (loss.ctx)
        if self.head:
            out.head_weight = gathered_weight(self.model.get_output_embeddings())  # type: ignore[operator]
        return out

    @property
    def training(self) -> bool:
        return self.root.training

    def train(self, mode: bool = True) -> ShardedForward:
        self.root.train(mode)
        return self

    def eval(self) -> ShardedForward:
        return self.train(False)


def shard_models(
    s_fwd: nn.Module, t_fwd: nn.Module | None, *, bf16: bool, device: torch.device
) -> tuple[ShardedForward, ShardedForward | None]:
    """Shard the student (fp32 master shards, bf16 compute under ``bf16``) and the frozen teacher over every
    process; parameters move to ``device`` unit by unit."""
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    student = ShardedForward(s_fwd, s_fwd.model, bf16_compute=bf16, mesh=mesh)  # type: ignore[arg-type]
    teacher = None
    if t_fwd is not None:  # the teacher is already in its compute dtype
        teacher = ShardedForward(t_fwd, t_fwd.model, bf16_compute=False, mesh=mesh)  # type: ignore[arg-type]
    return student, teacher


def shard_counts(models: dict[str, nn.Module]) -> dict[str, dict[str, Any]]:
    """Per model: the parameter elements every rank holds, and the model's total. Collective."""
    mine = {name: local_numel(m) for name, m in models.items()}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {name: {"per_rank": [e[name][0] for e in everyone], "total": mine[name][1]} for name in models}


def _options(**kw: Any) -> Any:
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (e.g. a tied head and the embedding), first name first."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded model on rank 0's CPU (empty elsewhere), each tied parameter once under
    its first name, as ``safetensors.torch.save_model`` writes it. Collective."""
    sd = get_model_state_dict(model, options=_options())
    for names in _tied_groups(model):
        for name in names[1:]:
            sd.pop(name, None)
    return sd


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (rank 0's; the others pass ``{}``) into a sharded model. Collective."""
    if state:
        for names in _tied_groups(model):
            have = next((n for n in names if n in state), None)
            for name in names:
                if have is not None and name not in state:
                    state[name] = state[have]
    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=True))


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state on rank 0 (empty elsewhere), numbered like ``optimizer.state_dict()`` so that
    sharded and unsharded runs write the same files. Collective."""
    sd = get_optimizer_state_dict(model, optimizer, options=_options())
    if not sd:
        return {}
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": {index[n]: st for n, st in sd["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, object]
) -> None:
    """Load an optimizer state numbered like ``optimizer.state_dict()`` (rank 0's; others pass ``{}``). Collective."""
    if state:
        names = _param_names(model, optimizer)
        groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
        state = {"state": {names[int(i)]: st for i, st in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, state, options=_options(broadcast_from_rank0=True))


def plain_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """An unsharded CPU copy of a sharded model holding ``state`` (a full state dict), for saving."""
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(model.config)  # type: ignore[arg-type]
    for names in _tied_groups(model):
        for name in names:
            if name in state:
                state = {**state, **{n: state[name] for n in names}}
                break
    copy.load_state_dict(state, assign=True, strict=False)
    for name, buf in model.named_buffers():  # buffers are not sharded (e.g. rotary tables)
        parent, _, leaf = name.rpartition(".")
        owner = copy.get_submodule(parent) if parent else copy
        owner.register_buffer(
            leaf, buf.detach().cpu().clone(), persistent=leaf not in owner._non_persistent_buffers_set
        )
    copy.tie_weights()
    missing = [n for n, p in copy.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"the gathered state dict lacks {missing[:5]}")
    return copy.eval()
