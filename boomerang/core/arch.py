"""Architecture adapters as data, keyed by ``config.model_type``.

An adapter says where a model's layers live and which of its other tensors belong to the *embedding side*
(taken from whichever model supplies the first layer) or the *head side* (taken from whichever model supplies
the last layer). It also lists the per-layer config fields that must be subset when the depth changes.
Adding a decoder architecture is one ``register(Arch(...))`` call. Configs may be transformers config objects or
plain ``config.json`` dicts (the torch-free fast build reads those).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import BoomerangError

if TYPE_CHECKING:
    from ..hints import Config

LEAVES = ("weight", "bias")  # tensors of a module, in the order modules register them


def config_value(config: Config, key: str, default: object = None) -> Any:
    """A field of a config object or of a ``config.json`` dict."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


class Saved(BaseModel):
    """What ``save_pretrained`` writes for an architecture's model class: modules holding tensors, in state-dict
    order, each with a ``weight`` and optionally a ``bias``.

    ``before`` (the embedding side) starts with the token embedding and ``after`` (the head side) ends with the LM
    head; a tied head shares the token embedding's weight and is not written. This lets ``boomerang.io.fastbuild``
    write a member from the checkpoint files alone; a test checks it against transformers' own models.
    """

    model_config = ConfigDict(frozen=True)

    model_class: str  # what AutoModelForCausalLM builds for the model_type, e.g. "LlamaForCausalLM"
    before: tuple[str, ...]  # modules before the layers, e.g. ("model.embed_tokens",)
    layer: tuple[str, ...]  # modules of one layer (relative to it); absent ones are skipped
    after: tuple[str, ...]  # modules after the layers, e.g. ("model.norm", "lm_head")
    # (saved, model) names of modules transformers renames when saving (a conversion mapping: GPT-NeoX's lm_head
    # is saved as embed_out); with any, the state dict is written sorted by model name (``dot_natural_key``)
    renamed: tuple[tuple[str, str], ...] = ()

    @property
    def tied(self) -> tuple[str, str]:
        """(LM head weight, token embedding weight): the names a tied head shares."""
        return f"{self.after[-1]}.weight", f"{self.before[0]}.weight"


class Arch(BaseModel):
    """Where things live in one model family (all paths are full ``state_dict`` prefixes)."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    layers: str  # ModuleList of transformer blocks, e.g. "model.layers"
    embed: tuple[str, ...]  # embedding-side modules, e.g. ("model.embed_tokens",)
    head: tuple[str, ...]  # head-side modules: final norm and LM head, e.g. ("model.norm", "lm_head")
    shared: tuple[str, ...] = ()  # config-derived modules identical in teacher and student (rotary tables)
    final_norm: str | None = None  # the final norm module (for analysis hooks); must be in ``head``
    lm_head: str = "lm_head"
    attention: str | None = "self_attn"  # submodule of a layer that carries ``layer_idx``
    n_layers_field: str = "num_hidden_layers"
    layer_fields: tuple[str, ...] = ()  # per-layer list fields of the config, subset with the layers
    window_layers_field: str | None = None  # "first K layers use full attention" count, recomputed
    encoder: bool = False  # masked-LM encoder (BERT family) rather than a causal LM
    saved: Saved | None = None  # the saved layout, for building without transformers (None: always use it)
    # config fields that must agree between teacher and student for their layers to be interchangeable
    structural: tuple[str, ...] = (
        "hidden_size",
        "vocab_size",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "head_dim",
        "hidden_act",
        "rms_norm_eps",
        "rope_parameters",
        "sliding_window",
        "attention_bias",
        "mlp_bias",
    )

    @model_validator(mode="after")
    def _check_saved(self) -> Arch:
        s = self.saved
        if s is not None and not (
            all(self.side(m) == "embed" for m in s.before) and all(self.side(m) == "head" for m in s.after)
        ):
            raise ValueError(
                f"{self.model_type}: saved.before must be embedding-side and saved.after head-side"
            )
        return self

    def layer_prefix(self, i: int) -> str:
        return f"{self.layers}.{i}."

    def side(self, name: str) -> str | None:
        """'embed', 'head' or 'shared' for a non-layer tensor name; None if the adapter does not know it."""
        for kind, prefixes in (("embed", self.embed), ("head", self.head), ("shared", self.shared)):
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                return kind
        return None


ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    ARCHS[arch.model_type] = arch
    return arch


_LLAMA_LAYER = (
    *(f"self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")),
    *(f"mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")),
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)


def _llama_like(model_type: str, model_class: str, **kw: Any) -> Arch:
    return register(
        Arch(
            model_type=model_type,
            layers="model.layers",
            embed=("model.embed_tokens",),
            head=("model.norm", "lm_head"),
            shared=("model.rotary_emb",),
            final_norm="model.norm",
            saved=Saved(
                model_class=model_class,
                before=("model.embed_tokens",),
                layer=_LLAMA_LAYER,
                after=("model.norm", "lm_head"),
            ),
            **kw,
        )
    )


_llama_like("llama", "LlamaForCausalLM")
_llama_like("mistral", "MistralForCausalLM")
_llama_like(
    "qwen2", "Qwen2ForCausalLM", layer_fields=("layer_types",), window_layers_field="max_window_layers"
)
_llama_like(
    "qwen3", "Qwen3ForCausalLM", layer_fields=("layer_types",), window_layers_field="max_window_layers"
)
_llama_like(
    "gemma3_text",
    "Gemma3ForCausalLM",
    layer_fields=("layer_types",),
    structural=(
        "hidden_size",
        "vocab_size",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "head_dim",
        "hidden_activation",
        "rms_norm_eps",
        "rope_parameters",
        "sliding_window",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
    ),
)
register(
    Arch(
        model_type="gpt_neox",
        layers="gpt_neox.layers",
        embed=("gpt_neox.embed_in", "gpt_neox.emb_dropout"),
        head=("gpt_neox.final_layer_norm", "embed_out", "lm_head"),
        shared=("gpt_neox.rotary_emb",),
        final_norm="gpt_neox.final_layer_norm",
        lm_head="embed_out",
        attention="attention",
        saved=Saved(
            model_class="GPTNeoXForCausalLM",
            before=("gpt_neox.embed_in",),
            layer=(
                "input_layernorm",
                "post_attention_layernorm",
                "attention.query_key_value",
                "attention.dense",
                "mlp.dense_h_to_4h",
                "mlp.dense_4h_to_h",
            ),
            after=("gpt_neox.final_layer_norm", "embed_out"),
            renamed=(("embed_out", "lm_head"),),
        ),
        structural=(
            "hidden_size",
            "vocab_size",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
            "rope_parameters",
            "use_parallel_residual",
            "attention_bias",
        ),
    )
)
register(
    Arch(
        model_type="gpt2",
        layers="transformer.h",
        embed=("transformer.wte", "transformer.wpe", "transformer.drop"),
        head=("transformer.ln_f", "lm_head"),
        final_norm="transformer.ln_f",
        attention="attn",
        saved=Saved(
            model_class="GPT2LMHeadModel",
            before=("transformer.wte", "transformer.wpe"),
            layer=("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"),
            after=("transformer.ln_f", "lm_head"),
        ),
        structural=(
            "n_embd",
            "vocab_size",
            "n_head",
            "n_inner",
            "activation_function",
            "layer_norm_epsilon",
            "n_positions",
            "scale_attn_weights",
            "reorder_and_upcast_attn",
        ),
    )
)
register(
    Arch(
        model_type="bert",
        layers="bert.encoder.layer",
        embed=("bert.embeddings",),
        head=("cls",),
        final_norm=None,  # BERT is post-norm: each layer ends in its own LayerNorm
        lm_head="cls.predictions.decoder",
        attention="attention.self",
        encoder=True,
        structural=(
            "hidden_size",
            "vocab_size",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
            "max_position_embeddings",
            "type_vocab_size",
        ),
    )
)

# DistilBERT is not patched in its own layout: its tensors are renamed into BERT's (see ``encoders.py``)
# and the family is assembled as ``BertForMaskedLM``, which computes exactly what DistilBERT computes.
FOREIGN_STUDENTS = {("bert", "distilbert")}


def get_arch(config: Config | str) -> Arch:
    """The adapter for a config (or a model_type string), or a clear error listing the supported ones."""
    model_type = config if isinstance(config, str) else config_value(config, "model_type")
    if model_type in ARCHS:
        arch = ARCHS[model_type]
        if model_type == "gpt2" and config_value(config, "scale_attn_by_inverse_layer_idx", False):
            raise BoomerangError(
                "this GPT-2 config sets scale_attn_by_inverse_layer_idx=True, which makes each layer's "
                "computation depend on its position; layers cannot be moved without changing them"
            )
        return arch
    supported = ", ".join(sorted([*ARCHS, "distilbert (as a student of bert)"]))
    raise BoomerangError(
        f"model_type {model_type!r} is not supported. Supported model types: {supported}. "
        "A new decoder architecture is a few lines of data in boomerang/core/arch.py."
    )


ENCODER_TYPES = {"bert", "distilbert"}  # model types loaded as masked LMs (the rest as causal LMs)


def model_class(config: Config) -> type:
    """The transformers Auto class that builds ``config``'s model (imports transformers when called)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if config.model_type in ENCODER_TYPES else AutoModelForCausalLM


def n_layers(config: Config) -> int:
    """Number of transformer layers of a config, whatever the field is called."""
    for field in ("num_hidden_layers", "n_layer", "n_layers"):
        value = config_value(config, field)
        if isinstance(value, int):
            return value
    raise BoomerangError(f"cannot tell how many layers a {type(config).__name__} has")


def route(
    name: str, arch: Arch, sources: Sequence[tuple[str, int]], embed_from: str, head_from: str
) -> tuple[str, str]:
    """Where output tensor ``name`` comes from: (model, tensor name in that model's canonical layout)."""
    prefix = arch.layers + "."
    if name.startswith(prefix):
        idx, rest = name[len(prefix) :].split(".", 1)
        who, src = sources[int(idx)]
        return who, f"{prefix}{src}.{rest}"
    side = arch.side(name)
    if side == "embed":
        return embed_from, name
    if side == "head":
        return head_from, name
    if side == "shared":  # config-derived tables (rotary): identical in every compatible model
        return "teacher", name
    raise BoomerangError(f"the {arch.model_type} adapter does not say where tensor {name!r} comes from")
