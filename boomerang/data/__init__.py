"""Data: text sources (``corpora``), the texts that ship with the package (``builtin``) and tokenised blocks for
calibration and training (``blocks``).

The public names of these modules are re-exported here, lazily (``from boomerang.data import calibration_ids``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TEXT_SUFFIXES": "corpora",
    "shared_corpora": "corpora",
    "read_texts": "corpora",
    "Corpus": "corpora",
    "find_corpus": "corpora",
    "DEFAULT_TRAIN": "corpora",
    "DEFAULT_VALIDATION": "corpora",
    "BuiltinText": "builtin",
    "TEXTS": "builtin",
    "builtin_text": "builtin",
    "tokenize": "blocks",
    "pack": "blocks",
    "eos_id": "blocks",
    "pad_id": "blocks",
    "calibration_ids": "blocks",
    "Batch": "blocks",
    "Blocks": "blocks",
    "docs_to_blocks": "blocks",
    "default_cache_dir": "blocks",
    "tokenized_docs": "blocks",
    "ShuffledBlocks": "blocks",
    "StreamingBlocks": "blocks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'boomerang.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
