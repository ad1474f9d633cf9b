"""boomerang: boomerang distillation — a family of model sizes from one teacher and one distilled student.

Public names are imported lazily so that ``import boomerang`` (and ``boomerang --help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ARCHS": "core.arch",
    "Arch": "core.arch",
    "get_arch": "core.arch",
    "register": "core.arch",
    "BoomerangError": "errors",
    "LayerMap": "core.layermap",
    "PRESETS": "core.layermap",
    "read_layer_map": "io.sidecar",
    "write_sidecar": "io.sidecar",
    "PatchOrder": "core.plan",
    "PatchPlan": "core.plan",
    "make_plan": "core.plan",
    "patch": "family",
    "build": "core.patching",
    "assemble": "core.patching",
    "ParamCount": "core.params",
    "count_params": "core.params",
    "family_table": "core.params",
    "load_model": "io.loading",
    "load_tokenizer": "io.loading",
    "offline_teacher": "io.offline",
    "build_intermediate_model": "compat",
    "reference_plan": "compat",
    "Family": "family",
    "export_family": "family",
    "CardOptions": "family",
    "export_gguf": "io.gguf_export",
    "publish": "publish",
    "StreamBuilder": "io.stream",
    "stream_build": "io.fastbuild",
    "init_student": "train.initialise",
    "save_student": "train.initialise",
    "load_recipe": "train.recipe",
    "distill": "train.trainer",
    "perplexity": "evaluate.perplexity",
    "pseudo_perplexity": "evaluate.perplexity",
    "run_lm_eval": "evaluate.lmeval",
    "sweep": "pipelines.sweep",
    "prune_to": "analysis.baselines",
    "save_pruned": "analysis.baselines",
    "analyze": "analysis.analyze",
    "compute_order": "analysis.orders",
    "resolve_order": "analysis.resolve",
    "load_order": "io.order_files",
    "save_order": "io.order_files",
    "run_demo": "pipelines.demo",
    "FamilyServer": "serve.server",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'boomerang' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
