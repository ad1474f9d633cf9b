"""boomerang: boomerang distillation — a family of model sizes from one teacher and one distilled student.

Public names are imported lazily so that ``import boomerang`` (and ``boomerang --help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ARCHS": "arch",
    "Arch": "arch",
    "get_arch": "arch",
    "register": "arch",
    "BoomerangError": "errors",
    "LayerMap": "layermap",
    "PRESETS": "layermap",
    "read_layer_map": "layermap",
    "write_sidecar": "layermap",
    "PatchOrder": "plan",
    "PatchPlan": "plan",
    "make_plan": "plan",
    "patch": "patching",
    "build": "patching",
    "assemble": "patching",
    "ParamCount": "params",
    "count_params": "params",
    "family_table": "params",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "offline_teacher": "loading",
    "build_intermediate_model": "compat",
    "reference_plan": "compat",
    "Family": "family",
    "export_family": "family",
    "StreamBuilder": "stream",
    "stream_build": "fastbuild",
    "init_student": "initialise",
    "save_student": "initialise",
    "load_recipe": "recipe",
    "distill": "trainer",
    "perplexity": "evaluation",
    "pseudo_perplexity": "evaluation",
    "run_lm_eval": "lmeval",
    "sweep": "sweep",
    "prune_to": "baselines",
    "save_pruned": "baselines",
    "analyze": "analysis",
    "compute_order": "orders",
    "load_order": "orders",
    "save_order": "orders",
    "run_demo": "demo",
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
