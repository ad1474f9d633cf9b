"""Names for the types that public signatures share: a loaded model, a model or its path, a config (object or
``config.json`` dict), a tokenizer, calibration token ids and a dtype.

They exist for readers and type checkers only: modules import them under ``TYPE_CHECKING``, so naming a model in
a signature never imports torch or transformers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    Model: TypeAlias = PreTrainedModel  # a loaded model (a teacher, a student, a member, a pruned baseline)
    # a loaded model, or a checkpoint path / Hub id
    ModelSpec: TypeAlias = PreTrainedModel | str | os.PathLike
    Config: TypeAlias = PretrainedConfig | dict[str, Any]  # a model config, or a config.json dict
    Tokenizer: TypeAlias = PreTrainedTokenizerBase
    Calibration: TypeAlias = torch.Tensor | Sequence[Sequence[int]]  # token ids [n_texts, length]
    DType: TypeAlias = str | torch.dtype  # "auto", "bfloat16", "bf16", ... or a torch dtype
