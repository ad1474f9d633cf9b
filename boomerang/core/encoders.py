"""DistilBERT in BERT's layout.

BERT and DistilBERT layers compute the same function (post-norm self-attention and a GELU MLP, LayerNorm eps
1e-12) under different module names. Renaming DistilBERT's tensors into BERT's layout, with an all-zero token-type
embedding, gives a ``BertForMaskedLM`` that computes exactly what the DistilBERT model computes, so BERT blocks can
be patched in and the family shares one class from student to teacher.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError

if TYPE_CHECKING:
    import torch

    from ..hints import Config

_LAYER = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_FIXED = {
    "distilbert.embeddings.word_embeddings.weight": ["bert.embeddings.word_embeddings.weight"],
    "distilbert.embeddings.position_embeddings.weight": ["bert.embeddings.position_embeddings.weight"],
    "distilbert.embeddings.LayerNorm.weight": ["bert.embeddings.LayerNorm.weight"],
    "distilbert.embeddings.LayerNorm.bias": ["bert.embeddings.LayerNorm.bias"],
    "distilbert.embeddings.position_ids": ["bert.embeddings.position_ids"],
    "vocab_transform.weight": ["cls.predictions.transform.dense.weight"],
    "vocab_transform.bias": ["cls.predictions.transform.dense.bias"],
    "vocab_layer_norm.weight": ["cls.predictions.transform.LayerNorm.weight"],
    "vocab_layer_norm.bias": ["cls.predictions.transform.LayerNorm.bias"],
    "vocab_projector.weight": ["cls.predictions.decoder.weight"],
    # BERT keeps the output bias twice (tied): decoder.bias and predictions.bias
    "vocab_projector.bias": ["cls.predictions.decoder.bias", "cls.predictions.bias"],
}
_LAYER_RE = re.compile(r"^distilbert\.transformer\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def bert_names(name: str) -> list[str]:
    """BERT-layout names of a DistilBERT tensor (empty if BERT has no counterpart)."""
    if name in _FIXED:
        return _FIXED[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER:
        return [f"bert.encoder.layer.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"]
    return []


def synthesized(bert_config: Config) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Tensors BERT has and DistilBERT lacks, as functions of a reference tensor (for dtype and device)."""
    import torch

    n_types, dim, n_pos = (
        bert_config.type_vocab_size,
        bert_config.hidden_size,
        bert_config.max_position_embeddings,
    )
    return {
        "bert.embeddings.token_type_embeddings.weight": lambda ref: torch.zeros(
            n_types, dim, dtype=ref.dtype, device=ref.device
        ),
        "bert.embeddings.token_type_ids": lambda ref: torch.zeros(
            1, n_pos, dtype=torch.long, device=ref.device
        ),
    }


def to_bert_layout(tensors: dict[str, torch.Tensor], bert_config: Config) -> dict[str, torch.Tensor]:
    """Rename a DistilBertForMaskedLM's tensors (parameters and buffers) into BertForMaskedLM's layout."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        for new in bert_names(name):
            out[new] = t
    ref = out["bert.embeddings.word_embeddings.weight"]
    for name, make in synthesized(bert_config).items():
        out[name] = make(ref)
    return out


def check_distilbert_student(bert_config: Config, distil_config: Config) -> None:
    """DistilBERT and BERT layers are interchangeable only if these agree."""
    pairs = {
        "hidden size (dim)": (bert_config.hidden_size, distil_config.dim),
        "attention heads (n_heads)": (bert_config.num_attention_heads, distil_config.n_heads),
        "MLP size (hidden_dim)": (bert_config.intermediate_size, distil_config.hidden_dim),
        "activation": (bert_config.hidden_act, distil_config.activation),
        "vocabulary": (bert_config.vocab_size, distil_config.vocab_size),
        "max positions": (bert_config.max_position_embeddings, distil_config.max_position_embeddings),
    }
    bad = [f"{k}: teacher {a} vs student {b}" for k, (a, b) in pairs.items() if a != b]
    if bert_config.layer_norm_eps != 1e-12:
        bad.append(f"LayerNorm eps: teacher {bert_config.layer_norm_eps} vs DistilBERT's fixed 1e-12")
    if bad:
        raise BoomerangError("the DistilBERT student does not match the BERT teacher: " + "; ".join(bad))


def bert_layout_config(distil_config: Config, bert_config: Config) -> Any:
    """A BertConfig describing the DistilBERT student (for counting and for K=0)."""
    d = bert_config.to_dict()
    d["num_hidden_layers"] = distil_config.n_layers
    return type(bert_config).from_dict(d)
