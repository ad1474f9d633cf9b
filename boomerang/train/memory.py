"""Per-rank accelerator memory of a distillation run, planned from the models' ``config.json`` alone.

Pure arithmetic over configs: no weights, no torch. For each strategy (DDP or FSDP, with or without activation
checkpointing) a plan lists what one rank holds at its peak (the backward pass of a micro-batch, with the
gradients of earlier micro-batches accumulated):

- **weights**: the teacher (bf16 under bf16 precision, else fp32) and the student's fp32 master weights;
  FSDP divides both by the number of ranks and adds the unsharded working set (bf16 layers being gathered, and the
  root group: embeddings, final norm and head, which stays gathered from forward to backward);
- **compute copies**: under DDP + bf16 autocast, the bf16 copies of the student's matrices that autograd keeps
  for the backward pass;
- **gradients** (fp32; DDP's bucket copy on top; FSDP: a shard plus one layer's unsharded bf16 gradient and its
  fp32 reduce-scatter input);
- **optimizer**: AdamW's two fp32 moments per trainable parameter (the fp32 weights are the master weights);
- **activations**: what autograd saves per decoder layer for ``micro_batch × seq_len`` tokens, counted tensor
  by tensor for transformers' layers (norm internals in fp32, q/k/v/output and the log-sum-exp of a fused
  attention kernel, 2 of the gated MLP's 4 intermediates with ``train.lean_mlp``), or one residual-stream tensor
  per layer plus one recomputed layer with checkpointing; plus the cosine terms' saved tensors;
- **teacher outputs**: the teacher states captured at the aligned layers, its final hidden state and one layer's
  transient working set (the teacher runs without gradients);
- **loss buffers**: the fused CE/KL (``boomerang.train.losses``) keeps the head gradient (vocab × hidden, fp32)
  and the hidden-state gradient for the backward pass, and 3–4 fp32 ``chunk_tokens × vocab`` buffers per chunk
  (full ``[tokens × vocab]`` logits only with ``train.fused_loss: false``).

The per-layer activation counts were derived from, and are tested against, what autograd really saves
(``torch.autograd.graph.saved_tensors_hooks``) for every supported architecture; ``benchmarks/memory_plan.py``
checks whole plans against the measured peak of real trainer steps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.layermap import LayerMap
from ..errors import BoomerangError
from ..io.checkpoints import CONFIG, expand_alias, read_json

if TYPE_CHECKING:
    from .recipe import Recipe

GiB = 1 << 30
STRATEGIES = ("ddp", "ddp+ac", "fsdp", "fsdp+ac")
STRATEGY_NAMES = {
    "ddp": "DDP",
    "ddp+ac": "DDP + checkpointing",
    "fsdp": "FSDP",
    "fsdp+ac": "FSDP + checkpointing",
}
RESERVE_FRACTION = 0.10  # of the device's memory, for the CUDA context, NCCL buffers and fragmentation ...
RESERVE_MIN = 2 * GiB  # ... but at least this much
FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma3_text": "gemma",
    "gpt_neox": "neox",
    "gpt2": "gpt2",
}
_TIED_DEFAULT = {"gpt2": True, "gemma3_text": True}


# ---- model shapes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder-only model, read from its ``config.json``."""

    model_type: str
    family: str  # llama (Llama, Mistral, Qwen2/3), gemma, neox (GPT-NeoX/Pythia), gpt2
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qk_norm: bool = False
    attn_bias: bool = False  # biases on q/k/v (Qwen2, Llama's attention_bias)
    out_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False
    parallel_residual: bool = True  # GPT-NeoX
    rotary_dims: int = 0  # GPT-NeoX: rotary dimensions per head
    positions: int = 0  # GPT-2: learned position embeddings
    guessed: bool = False  # the model_type is unknown; read as a Llama-like decoder

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> ModelShape:
        """A shape from a ``config.json`` dict; unknown model types with Llama-style keys are read as Llama-like."""
        cfg = dict(config)
        if (
            "text_config" in cfg
            and "num_hidden_layers" not in cfg
            and isinstance(cfg["text_config"], Mapping)
        ):
            cfg = {
                **cfg["text_config"],
                "model_type": cfg["text_config"].get("model_type", cfg.get("model_type")),
            }
        mt = str(cfg.get("model_type") or "")
        family = FAMILIES.get(mt)
        tied = bool(cfg.get("tie_word_embeddings", _TIED_DEFAULT.get(mt, False)))
        try:
            if family == "gpt2":
                d, heads = int(cfg["n_embd"]), int(cfg["n_head"])
                return cls(
                    mt, family, int(cfg["n_layer"]), d, int(cfg.get("n_inner") or 4 * d), heads, heads,
                    d // heads, int(cfg["vocab_size"]), tied, attn_bias=True, out_bias=True, mlp_bias=True,
                    positions=int(cfg.get("n_positions", 1024)),
                )  # fmt: skip
            d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            layers, vocab, inter = (
                int(cfg["num_hidden_layers"]),
                int(cfg["vocab_size"]),
                int(cfg["intermediate_size"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BoomerangError(
                f"cannot plan memory for model_type {mt or '(none)'!r}: its config.json lacks {e} (a decoder "
                "config needs hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, vocab_size)"
            ) from None
        head_dim = int(cfg.get("head_dim") or d // heads)
        kv = int(cfg.get("num_key_value_heads") or heads)
        if family == "neox":
            return cls(
                mt, family, layers, d, inter, heads, heads, head_dim, vocab, tied,
                attn_bias=bool(cfg.get("attention_bias", True)), out_bias=bool(cfg.get("attention_bias", True)),
                mlp_bias=True, parallel_residual=bool(cfg.get("use_parallel_residual", True)),
                rotary_dims=int(head_dim * float(cfg.get("rotary_pct", 0.25))),
            )  # fmt: skip
        bias = bool(cfg.get("attention_bias", False))
        return cls(
            mt, family or "llama", layers, d, inter, heads, kv, head_dim, vocab, tied,
            qk_norm=mt in ("qwen3", "gemma3_text"), attn_bias=bias or mt == "qwen2", out_bias=bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)), guessed=family is None,
        )  # fmt: skip

    def with_layers(self, layers: int) -> ModelShape:
        return replace(self, layers=layers)

    # -- parameter counts --------------------------------------------------------------------------------------
    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def norm_params(self) -> int:
        """Parameters of one norm over the hidden size (LayerNorms have a bias)."""
        return 2 * self.hidden if self.family in ("neox", "gpt2") else self.hidden

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden + self.positions * self.hidden

    @property
    def head_params(self) -> int:
        """The LM head's own parameters (0 when tied to the embedding)."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def layer_matrix_params(self) -> int:
        """Weights of one layer's linear maps (what bf16 autocast copies)."""
        d, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        mlp = (3 if self.family in ("llama", "gemma") else 2) * d * i
        return d * (q + 2 * kv) + q * d + mlp

    @property
    def layer_params(self) -> int:
        d, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        n = self.layer_matrix_params
        n += (q + 2 * kv) * self.attn_bias + d * self.out_bias
        if self.mlp_bias:
            n += (2 * i if self.family in ("llama", "gemma") else i) + d
        n += (4 if self.family == "gemma" else 2) * self.norm_params
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    @property
    def final_norm_params(self) -> int:
        return self.norm_params

    @property
    def params(self) -> int:
        return self.embed_params + self.layers * self.layer_params + self.final_norm_params + self.head_params

    @property
    def head_unit_params(self) -> int:
        """Parameters of the FSDP unit holding the head: final norm and head (+ the embedding it is tied to)."""
        return self.final_norm_params + (self.embed_params if self.tied else self.head_params)

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers (embeddings, final norm, head)."""
        return self.embed_params + self.final_norm_params + self.head_params

    # -- activations ---------------------------------------------------------------------------------------------
    def layer_activations(self, mode: str, *, lean_mlp: bool = True, masked: bool = False) -> float:
        """Bytes autograd saves per token in one decoder layer.

        ``mode``: ``fp32``; ``autocast`` (fp32 weights and residual stream, bf16 matmuls: DDP + bf16);
        ``bf16`` (bf16 weights and residual stream: FSDP's mixed precision). ``masked``: attention runs with a
        padding mask (grouped key/value heads are then repeated to every head, as transformers does).
        """
        d, i, h = self.hidden, self.intermediate, self.heads
        q, kv = self.q_width, self.kv_width if not masked else self.q_width
        r = 2 if mode == "bf16" else 4  # residual stream
        c = 4 if mode == "fp32" else 2  # matmul outputs
        lse = 4 * h  # the fused attention kernels' log-sum-exp (fp32)

        def lin_in(w: int, consumers: int) -> int:  # a norm's output as saved by the linear maps reading it
            return 4 * w if mode == "fp32" else (consumers if mode == "autocast" else 1) * 2 * w

        if self.family in ("llama", "gemma"):
            # input (fp32, or an fp32 copy), 1/rms, normalised (in the input's dtype)
            if self.family == "llama":

                def norm(w: int, b: int) -> int:
                    return 4 * w + 4 + b * w

                norms = norm(d, r) * 2
            else:  # Gemma keeps the normalised tensor in fp32; post-norms normalise matmul outputs

                def norm(w: int, b: int) -> int:
                    return 8 * w + 4

                norms = norm(d, r) * 2 + norm(d, c) * 2
            a = norms + lin_in(d, 3) + lin_in(d, 2)
            if self.qk_norm:
                a += norm(q, c) + norm(self.kv_width, c)
            a += c * (q + 2 * kv) + c * q + lse  # q, k, v after RoPE; the output (shared with o_proj's input)
            a += c * i * (2 if lean_mlp else 4)  # gate, up (and act(gate), their product)
            return a
        # LayerNorm: input (own dtype) + mean and 1/std
        if self.family == "neox":
            # qkv, roped q/k, out, copy
            a = (r * d + 8) + lin_in(d, 1) + c * 3 * q + c * 2 * q + lse + 2 * c * q
            a += 8 if self.parallel_residual else r * d + 8  # the second LayerNorm (same input if parallel)
            return a + lin_in(d, 1) + 2 * c * i  # GELU input and output
        # GPT-2: q, k, v are views of c_attn's output; gelu_new keeps 4 intermediates + c_proj's input
        return 2 * (r * d + 8) + 2 * lin_in(d, 1) + c * 3 * d + lse + c * d + 5 * c * i

    def final_activations(self, mode: str) -> float:
        """Bytes per token saved by the final norm."""
        d, r = self.hidden, 2 if mode == "bf16" else 4
        if self.family == "llama":
            return 4 * d + 4 + r * d
        if self.family == "gemma":
            return 8 * d + 4
        return r * d + 8


# ---- what a run looks like -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunShape:
    """The recipe settings memory depends on."""

    micro_batch: int
    seq_len: int
    bf16: bool
    lean_mlp: bool = True
    fused_loss: bool = True
    chunk_tokens: int = 512
    kl: bool = True
    ce: bool = True
    n_pairs: int = 0  # aligned (student, teacher) state pairs of the cosine term
    teacher_states: int = 0  # distinct teacher states captured for them
    needs_teacher: bool = True
    masked: bool = False  # attention with a padding mask (data.packing: false)
    trainable_embed: bool = True
    trainable_head: bool = True  # with a tied head: the shared matrix

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass
class Plan:
    """Per-rank memory of one strategy: components in bytes, total, and whether it fits."""

    strategy: str
    gpus: int
    components: dict[str, float]
    notes: list[str] = field(default_factory=list)
    capacity: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # sub-parts of some components, for checks

    @property
    def total(self) -> float:
        return sum(self.components.values())

    @property
    def usable(self) -> float | None:
        return None if self.capacity is None else usable_memory(self.capacity)

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= usable_memory(self.capacity)


COMPONENTS = (
    ("teacher weights", "the frozen teacher"),
    ("student weights", "fp32 master weights"),
    ("working copies", "bf16 copies for compute (autocast, or FSDP's gathered layers and root)"),
    ("gradients", "fp32 gradients (+ DDP buckets or FSDP's unsharded layer)"),
    ("optimizer", "AdamW moments (2 × fp32 per trainable parameter)"),
    ("activations", "what autograd keeps for the student's backward pass"),
    ("teacher outputs", "captured teacher states + one layer's transient working set"),
    ("loss buffers", "head and hidden-state gradients + chunk buffers of the fused CE/KL"),
)


def usable_memory(capacity: float) -> float:
    """What a plan may use of a device with ``capacity`` bytes (the rest is reserved)."""
    return capacity - max(RESERVE_MIN, RESERVE_FRACTION * capacity)


def plan(teacher: ModelShape, student: ModelShape, run: RunShape, gpus: int, strategy: str,
         capacity: float | None = None) -> Plan:  # fmt: skip
    """Per-rank memory of ``strategy`` (one of ``STRATEGIES``) on ``gpus`` devices."""
    if strategy not in STRATEGIES:
        raise BoomerangError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if gpus < 1:
        raise BoomerangError(f"gpus must be at least 1, got {gpus}")
    fsdp, ac = strategy.startswith("fsdp"), strategy.endswith("+ac")
    n = gpus if fsdp else 1
    mode = ("bf16" if fsdp else "autocast") if run.bf16 else "fp32"
    tb = 2 if run.bf16 else 4  # teacher weights and outputs
    T, d = run.tokens, student.hidden
    notes: list[str] = []

    # trainable student parameters
    frozen = 0 if run.trainable_embed else student.embed_params
    if not run.trainable_head:
        frozen += (
            student.head_params if not student.tied else (student.embed_params if run.trainable_embed else 0)
        )
    trainable = student.params - frozen

    c: dict[str, float] = {}
    c["teacher weights"] = teacher.params * tb / n if run.needs_teacher else 0.0
    c["student weights"] = student.params * 4 / n
    c["working copies"] = _working_copies(teacher, student, run, fsdp=fsdp, ac=ac)
    grads = trainable * 4 / n
    if not fsdp and gpus > 1:
        grads += trainable * 4  # DDP's bucket buffers (gradient_as_bucket_view=False)
        notes.append("DDP keeps a second copy of the gradients in its communication buckets")
    if fsdp:
        unit = max(student.layer_params, student.head_unit_params, student.embed_params)
        grads += unit * (2 + 4)  # one unit's unsharded bf16 gradient + its fp32 reduce-scatter input
    c["gradients"] = grads
    c["optimizer"] = trainable * 8 / n
    # activations of one micro-batch
    per_layer = T * student.layer_activations(mode, lean_mlp=run.lean_mlp, masked=run.masked)
    if ac:
        saved = student.layers * T * d * (2 if mode == "bf16" else 4)  # each layer's input
        recompute = per_layer  # one layer's activations, recomputed in the backward pass
    else:
        saved, recompute = student.layers * per_layer, 0.0
    saved += T * student.final_activations(mode)
    # cosine terms: fp32 normalised copies (+ fp32 copies of non-fp32 inputs)
    cosine = run.n_pairs * T * d * (4 + (4 if tb != 4 else 0) + (4 if mode == "bf16" else 0))
    acts = saved + recompute + cosine
    c["activations"] = acts
    if run.needs_teacher:
        states = (run.teacher_states + 1) * T * teacher.hidden * tb  # captured states + final hidden
        c["teacher outputs"] = states + T * (3 * teacher.intermediate + 4 * teacher.hidden) * tb
    else:
        c["teacher outputs"] = 0.0
    kept, chunk = _loss_buffers(student, run, notes)
    c["loss buffers"] = kept + chunk
    parts = {"activations.saved": saved, "activations.recompute": recompute, "activations.cosine": cosine,
             "loss.kept": kept, "loss.chunks": chunk}  # fmt: skip
    return Plan(strategy, gpus, c, notes, capacity, parts)


def _working_copies(
    teacher: ModelShape, student: ModelShape, run: RunShape, *, fsdp: bool, ac: bool
) -> float:
    """Bytes of the bf16 copies of weights that exist at once (0 in fp32)."""
    d, V = student.hidden, student.vocab
    if not run.bf16:
        return 0.0
    if fsdp:
        # boomerang.train.sharding's units: 2 layers gathered at a time (one prefetched), plus the head from the
        # forward to the backward pass
        copies = 2 * student.layer_params * 2 + student.head_unit_params * 2
        if run.needs_teacher:  # the teacher's head is gathered from its forward until the loss is computed
            copies += 2 * teacher.layer_params * 2 + teacher.head_unit_params * 2
        return copies
    # autocast's copies are saved by every layer (one when recomputing), plus the head's, in the loss
    layers = 1 if ac else student.layers
    lean_down = d * student.intermediate if run.lean_mlp and student.family in ("llama", "gemma") else 0
    return layers * (student.layer_matrix_params - lean_down) * 2 + V * d * 2


def _loss_buffers(student: ModelShape, run: RunShape, notes: list[str]) -> tuple[float, float]:
    """Bytes the loss keeps until the backward pass, and bytes of its per-chunk buffers."""
    T, d, V = run.tokens, student.hidden, student.vocab
    tb = 2 if run.bf16 else 4
    C = min(run.chunk_tokens, T)
    kl = run.kl and run.needs_teacher
    # fp32 [chunk × vocab] buffers live at once (measured with torch.profiler): a chunk's logits, the teacher's,
    # its probabilities and a log-sum-exp temporary; with several chunks the previous chunk's overlap the next's
    buffers = (2.25 + 2 * kl) if T > C else (1.25 + 1.25 * kl)
    if run.fused_loss:
        # the gradients of h and of the head, kept to the backward pass
        kept = T * d * 4 + (V * d * 4 if run.trainable_head else 0)
        chunk = C * V * (4 * buffers + (2 * (1 + kl) if run.bf16 else 0))
    else:  # full logits of both models, plus their gradient
        kept = T * V * (4 + (4 if run.bf16 else 0)) + (T * V * tb if kl else 0)
        chunk = C * V * 4 * buffers
        notes.append("train.fused_loss is off: full [tokens × vocab] logits are kept")
    return kept, chunk


def plans(teacher: ModelShape, student: ModelShape, run: RunShape, gpus: int,
          capacity: float | None = None) -> list[Plan]:  # fmt: skip
    """One plan per strategy in ``STRATEGIES``."""
    return [plan(teacher, student, run, gpus, s, capacity) for s in STRATEGIES]


# ---- inputs: device memory, configs, recipes -------------------------------------------------------------------

_UNITS = {"": 10**9, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_memory(text: str) -> int:
    """``"80GB"`` -> 80·10⁹ bytes; ``"79.6GiB"``, ``"81559MiB"`` and a bare number of GB work too."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise BoomerangError(
            f"cannot read the memory size {text!r}; write a number with a unit, e.g. 80GB, 79.6GiB or 24000MiB"
        )
    value = float(m.group(1)) * _UNITS[unit]
    if value < GiB:
        raise BoomerangError(
            f"--gpu-memory {text!r} is less than 1 GiB; give the memory of one GPU, e.g. 80GB"
        )
    return int(value)


def read_config(spec: str) -> dict[str, Any]:
    """A model's ``config.json`` as a dict: from a local directory, or from the Hub (that one file, no weights)."""
    spec = expand_alias(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise BoomerangError(
                f"{spec} has no config.json; pass a Hugging Face checkpoint directory or Hub id"
            )
        return read_json(path / CONFIG)
    if path.suffix == ".gguf":
        raise BoomerangError(
            f"{spec} is a GGUF file; the memory plan reads config.json: convert it first "
            "(boomerang convert) and pass the directory"
        )
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise BoomerangError(f"{spec} is neither a checkpoint directory nor a Hub id (owner/name)")
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id=spec, filename=CONFIG)
    except Exception as e:  # offline, unknown repo, HTTP errors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BoomerangError(
            f"cannot read the config.json of {spec!r} from the Hugging Face Hub ({reason}); pass a local "
            "checkpoint directory instead, or run once where the Hub is reachable"
        ) from None
    return json.loads(Path(local).read_text())


def student_layers(recipe: Recipe, teacher_layers: int) -> int:
    """How many layers ``init`` gives the recipe's student."""
    from .recipe import MEASURED

    ini = recipe.init
    if ini.strategy == "layers":
        return len(ini.layers or [])
    if ini.strategy in MEASURED and ini.size:
        return ini.size
    return LayerMap.every(
        teacher_layers, every=ini.every, keep_first=ini.keep_first, keep_last=ini.keep_last
    ).n_student


def cosine_pairs(recipe: Recipe, n_student: int) -> tuple[int, int]:
    """(aligned pairs, distinct teacher states) of the cosine term, as ``DistillLoss`` builds them."""
    loss = recipe.loss
    if loss.cos == 0:
        return 0, 0
    pairs = int(loss.align_embeddings) + (n_student - 1)
    pairs += int(loss.align_final in ("raw", "both")) + int(loss.align_final in ("normed", "both"))
    teacher = pairs - int(loss.align_final in ("normed", "both"))  # the normed state is the final hidden
    return pairs, teacher


def recipe_run(recipe: Recipe, n_student: int, *, bf16: bool | None = None) -> RunShape:
    """The ``RunShape`` of a recipe; ``precision: auto`` counts as bf16 (GPUs that support it)."""
    tr, loss = recipe.train, recipe.loss
    pairs, t_states = cosine_pairs(recipe, n_student)
    needs_teacher = loss.kl > 0 or pairs > 0
    return RunShape(
        micro_batch=tr.micro_batch_size,
        seq_len=recipe.data.seq_len,
        bf16=(tr.precision != "fp32") if bf16 is None else bf16,
        lean_mlp=tr.lean_mlp,
        fused_loss=tr.fused_loss is not False,
        chunk_tokens=loss.chunk_tokens,
        kl=loss.kl > 0,
        ce=loss.ce > 0,
        n_pairs=pairs,
        teacher_states=t_states if needs_teacher else 0,
        needs_teacher=needs_teacher,
        masked=not recipe.data.packing,
        trainable_embed=not tr.freeze_embeddings,
        trainable_head=not tr.freeze_head,
    )


@dataclass
class RecipePlan:
    """The plans of one recipe, with the shapes they came from."""

    teacher: ModelShape
    student: ModelShape
    run: RunShape
    plans: list[Plan]


def plan_recipe(recipe: Recipe, gpus: int, capacity: float | None = None) -> RecipePlan:
    """Plan a recipe on ``gpus`` devices of ``capacity`` bytes each, reading only the models' configs."""
    teacher = ModelShape.from_config(read_config(recipe.teacher))
    if recipe.student:
        student = ModelShape.from_config(read_config(recipe.student))
    else:
        student = teacher.with_layers(student_layers(recipe, teacher.layers))
    if recipe.train.untie_head and student.tied:
        student = replace(student, tied=False)
    run = recipe_run(recipe, student.layers)
    return RecipePlan(teacher, student, run, plans(teacher, student, run, gpus, capacity))


# ---- what to tell the user -------------------------------------------------------------------------------------

# fastest first: sharding costs communication, checkpointing compute
PREFERENCE = (
    "ddp",
    "fsdp",
    "ddp+ac",
    "fsdp+ac",
)


def recipe_strategy(recipe: Recipe) -> str:
    """The strategy a recipe runs with on several GPUs (``train.strategy`` and ``train.gradient_checkpointing``)."""
    fsdp = getattr(recipe.train, "strategy", "ddp") == "fsdp"
    return ("fsdp" if fsdp else "ddp") + ("+ac" if recipe.train.gradient_checkpointing else "")


def strategy_verdict(recipe: Recipe, plans: list[Plan]) -> list[str]:
    """Whether the recipe's own strategy fits, and what to use if not."""
    by = {p.strategy: p for p in plans}
    own = recipe_strategy(recipe)
    name = STRATEGY_NAMES[own]
    lines = []
    if by[own].fits:
        lines.append(f"the recipe as written ({name}) fits: about {by[own].total / GiB:.1f} GiB per GPU")
    else:
        lines.append(
            f"the recipe as written ({name}) does not fit: about {by[own].total / GiB:.1f} GiB per GPU"
        )
    fitting = [s for s in PREFERENCE if by[s].fits]
    if fitting and fitting[0] != own:
        best = fitting[0]
        how = []
        if best.startswith("fsdp") != own.startswith("fsdp"):
            how.append(f"train.strategy={'fsdp' if best.startswith('fsdp') else 'ddp'}")
        if best.endswith("+ac") != own.endswith("+ac"):
            how.append(f"train.gradient_checkpointing={str(best.endswith('+ac')).lower()}")
        verb = "fits too and is faster" if by[own].fits else "fits"
        lines.append(
            f"{STRATEGY_NAMES[best]} {verb} ({by[best].total / GiB:.1f} GiB): override {' '.join(how)}"
        )
    if not fitting:
        lines.append(
            "no strategy fits: lower train.micro_batch_size (activations scale with it), use more or larger GPUs, "
            "or freeze the embeddings (train.freeze_embeddings=true)"
        )
    lines.append(
        "(estimates: activations are counted tensor by tensor as autograd keeps them; see docs/training.md for the "
        "measured error)"
    )
    return lines
