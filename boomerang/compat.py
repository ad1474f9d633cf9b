"""The reference implementation's public call, with its exact semantics.

``build_intermediate_model(teacher, student, num_layers_to_patch, patch_first_k_layers, dtype)`` from
dcml-lab/boomerang-distillation counts ``num_layers_to_patch`` differently from :func:`boomerang.patch`:

* it counts only student layers whose teacher block holds two or more layers;
* patching from the end, the trailing single-layer blocks (e.g. layers 34, 35 of Qwen3-8B) are taken from the
  teacher already at ``num_layers_to_patch=0``, together with the multi-layer blocks counted;
* patching from the start, any leading single-layer blocks come along, and the embedding is always the teacher's.

This module reproduces that, but fixes the reference's tied-embedding bug (the patched model unties and records
it, so save/reload is exact) and does not deep-copy the models.
"""

from __future__ import annotations

import torch

from .core.patching import build
from .core.plan import reference_plan  # the reference's plans (torch-free, in core)
from .errors import BoomerangError
from .io.loading import load_pair, load_tokenizer
from .io.sidecar import read_layer_map


def build_intermediate_model(
    teacher_name_or_path: str,
    student_name_or_path: str,
    num_layers_to_patch: int,
    patch_first_k_layers: bool = False,
    dtype: torch.dtype = torch.bfloat16,
):
    """Drop-in replacement for the reference function; returns ``(model, tokenizer)``.

    The layer map is read from the student's ``student_config.json`` (local or on the Hub) or its
    ``boomerang`` config section. The tokenizer is the teacher's, left-padded, with pad = eos if unset.
    """
    tokenizer = load_tokenizer(teacher_name_or_path)
    if getattr(tokenizer, "eos_token", None) and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    teacher, student = load_pair(teacher_name_or_path, student_name_or_path, dtype=dtype)
    layer_map = read_layer_map(student_name_or_path, student.config)
    if layer_map is None:
        raise BoomerangError(
            f"{student_name_or_path} has no student_config.json and no 'boomerang' config section, so its layer map is unknown"
        )
    plan = reference_plan(layer_map, num_layers_to_patch, patch_first_k_layers)
    return build(teacher, student, plan), tokenizer
