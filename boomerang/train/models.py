"""The two models of a run: the frozen teacher, the trainable student, and the forward passes the loss needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.arch import get_arch, n_layers
from ..core.configs import check_compatible
from ..core.hooks import layer_list
from ..core.layermap import LayerMap
from ..errors import BoomerangError
from ..io import loading
from ..io.sidecar import student_layer_map
from . import attention
from .initialise import init_from_recipe
from .lean import lean_mlps
from .losses import DistillLoss, ModelOutputs, head_mode_problem, model_outputs
from .mixed import MixedContext
from .recipe import Recipe, check_frozen_layers, check_frozen_random, resolve_model_spec
from .working_copy import WorkingCopy

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class LossForward(nn.Module):
    """A model's forward pass as one module, so that DDP/FSDP wrappers see every call."""

    def __init__(self, model: nn.Module, keys: list[str], mode: str):
        super().__init__()
        self.model, self.keys, self.mode = model, keys, mode

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ctx: dict[int, torch.Tensor] | None = None,
    ) -> ModelOutputs:
        return model_outputs(self.model, input_ids, attention_mask, self.keys, mode=self.mode, ctx=ctx)  # type: ignore[arg-type]


def untie_head(model: nn.Module) -> bool:
    """Give a tied model its own LM head (a copy of the embedding). Returns False if it was not tied."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()  # type: ignore[operator]
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone(), requires_grad=inp.weight.requires_grad)
    model.config.tie_word_embeddings = False  # type: ignore[union-attr]
    return True


def freeze(
    model: nn.Module, *, embeddings: bool, head: bool, final_norm: bool, layers: Sequence[int] = ()
) -> list[str]:
    """Freeze parts of the student; returns what was frozen (tied matrices are frozen by either flag)."""
    arch = get_arch(model.config)
    frozen = []
    targets: list[tuple[str, nn.Module | None]] = []
    if embeddings:
        targets += [("embeddings", model.get_input_embeddings())]  # type: ignore[operator]
        targets += [("embeddings", model.get_submodule(m)) for m in arch.embed if _has(model, m)]
    if head:
        targets.append(("LM head", model.get_output_embeddings()))  # type: ignore[operator]
    if final_norm and arch.final_norm:
        targets.append(("final norm", model.get_submodule(arch.final_norm)))
    if layers:
        blocks, chosen = layer_list(model), sorted(set(layers))
        check_frozen_layers(chosen, len(blocks))
        named = ("layer " if len(chosen) == 1 else "layers ") + ", ".join(map(str, chosen))
        targets += [(named, blocks[i]) for i in chosen]
    for what, module in targets:
        if module is None:
            continue
        for p in module.parameters():
            p.requires_grad_(False)
        if what not in frozen:
            frozen.append(what)
    return frozen


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def compile_layers(model: nn.Module) -> None:
    """``torch.compile`` each layer's forward; hooks (on the modules) stay outside the compiled code."""
    for layer in layer_list(model):
        layer.forward = torch.compile(layer.forward, dynamic=False)  # type: ignore[method-assign]


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights (as HF Trainer does)."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@dataclass
class RunModels:
    """Teacher, student and what the loss needs from them."""

    teacher: nn.Module
    student: nn.Module
    tokenizer: Any
    teacher_path: str
    layer_map: LayerMap
    loss_fn: DistillLoss
    mode: str  # "head" (fused CE/KL from hidden states) or "logits"
    frozen: list[str]
    undo_lean: Callable[[], None]
    save_dtype: torch.dtype  # the teacher checkpoint's stored dtype: the student is saved in it
    s_fwd: LossForward
    t_fwd: LossForward | None
    working: WorkingCopy | None = (
        None  # bf16 working copy the forward passes run on (fp32 masters: ``student``)
    )
    mixed: MixedContext | None = None  # draws the family members of the mixed-context term
    member_loss: DistillLoss | None = None
    attention: str = "sdpa"  # what the trained passes' attention is (train.attention)
    undo_attention: Callable[[], None] = lambda: None  # back to the models' own attention

    @property
    def trained(self) -> nn.Module:
        """The module the training forward and backward passes run on."""
        return self.working.model if self.working is not None else self.student


def _load_teacher(r: Recipe, bf16: bool) -> tuple[PreTrainedModel, Any, str, torch.dtype]:
    """The frozen teacher (bf16 under bf16 precision), its tokenizer, its path and the dtype it is stored in."""
    teacher_path = resolve_model_spec(r.teacher)
    save_dtype = loading.stored_dtype(loading.load_config(teacher_path))
    teacher = loading.load_model(teacher_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    if get_arch(teacher.config).encoder:
        raise BoomerangError(
            f"distillation here trains causal LMs; {teacher.config.model_type} is a masked-LM encoder"
        )
    tokenizer = loading.load_tokenizer(teacher_path)
    teacher.eval().requires_grad_(False)
    return teacher, tokenizer, teacher_path, save_dtype


def _load_student(r: Recipe, teacher: PreTrainedModel, tokenizer: Any) -> tuple[PreTrainedModel, LayerMap]:
    """The recipe's student (fp32), loaded or initialised from the teacher, and its layer map."""
    if r.student:
        student = loading.load_model(resolve_model_spec(r.student), dtype=torch.float32)
        check_compatible(teacher.config, student.config)
        layer_map = student_layer_map(student)
        layer_map.check_fits(n_layers(teacher.config), n_layers(student.config))
    else:
        student = init_from_recipe(r, teacher, tokenizer)
        layer_map = student_layer_map(student)
    return student, layer_map


def _matmul_attention(
    r: Recipe, cpu_bf16: bool, models: list[nn.Module], note: Callable[[str], None]
) -> tuple[str, Callable[[], None]]:
    """Switch ``models`` to ``train.attention``'s matmul attention where it applies (bf16 on a CPU); returns
    what the trained passes use and the undo."""
    want = r.train.attention
    if want == "sdpa" or not cpu_bf16:
        if want == "matmul":
            note("train.attention: matmul computes bf16 attention on a CPU only; this run keeps SDPA")
        return "sdpa", lambda: None
    before = [getattr(m.config, "_attn_implementation", None) for m in models]
    for m in models:
        attention.use(m)

    def undo() -> None:
        for m, impl in zip(models, before, strict=True):
            m.set_attn_implementation(impl or "sdpa")  # type: ignore[operator]

    return "matmul", undo


def prepare_models(
    recipe: Recipe,
    *,
    bf16: bool,
    fsdp: bool,
    note: Callable[[str], None],
    world: int = 1,
    cpu: bool = True,
) -> RunModels:
    """Load the teacher (bf16 under bf16 precision), load or initialise the student (fp32), apply the recipe's
    freezing / untying / checkpointing / lean-MLP switches and choose the loss path."""
    r = recipe
    if r.loss.mixed and (r.loss.ce or r.loss.kl) and world > 1:  # before loading anything
        raise BoomerangError(
            "loss.mixed trains random family members in one process only; run without accelerate launch "
            "or set loss.mixed=0"
        )
    teacher, tokenizer, teacher_path, save_dtype = _load_teacher(r, bf16)
    student, layer_map = _load_student(r, teacher, tokenizer)
    check_frozen_random(getattr(student.config, "boomerang", None), r.train)
    student = student.float().requires_grad_(True)
    tr = r.train
    if tr.untie_head and not untie_head(student):
        note("train.untie_head: the student's head is already untied")
    frozen = freeze(
        student,
        embeddings=tr.freeze_embeddings,
        head=tr.freeze_head,
        final_norm=tr.freeze_final_norm,
        layers=tr.freeze_layers or (),
    )
    if tr.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    undo_lean = lean_mlps(layer_list(student)) if tr.lean_mlp else (lambda: None)
    student.config.use_cache = False
    student.train()
    loss_fn = DistillLoss(r.loss, layer_map)
    # (under FSDP too: boomerang.train.sharding keeps the head gathered for the fused loss)
    problem = head_mode_problem(student) or head_mode_problem(teacher)
    if tr.fused_loss and problem:
        raise BoomerangError(f"train.fused_loss is on, but {problem}; set train.fused_loss: false")
    mode = "logits" if (problem or tr.fused_loss is False) else "head"
    working = None
    if bf16 and not fsdp and tr.bf16_copies is not False:  # FSDP2 has its own bf16 compute policy
        working = WorkingCopy(student)
    elif tr.bf16_copies and not bf16:
        note("train.bf16_copies is not used: this run computes in fp32")
    elif tr.bf16_copies and fsdp:
        note("train.bf16_copies is not used under FSDP (its mixed-precision policy computes in bf16)")
    trained = working.model if working is not None else student
    attention_used, undo_attention = _matmul_attention(r, bf16 and cpu, [trained, teacher], note)
    s_fwd = LossForward(trained, loss_fn.keys(0), mode)
    t_fwd = LossForward(teacher, loss_fn.keys(1), mode) if loss_fn.needs_teacher else None
    member_loss = loss_fn.member_loss()
    mixed = (
        MixedContext(teacher, trained, layer_map, seed=r.train.seed, draw=r.loss.mixed_draw)
        if member_loss is not None
        else None
    )
    return RunModels(
        teacher,
        student,
        tokenizer,
        teacher_path,
        layer_map,
        loss_fn,
        mode,
        frozen,
        undo_lean,
        save_dtype,
        s_fwd,
        t_fwd,
        working,
        mixed,
        member_loss,
        attention_used,
        undo_attention,
    )
