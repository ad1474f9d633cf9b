"""Recipe values read strictly, before pydantic validates them: the declared types, finite numbers, integers the
code can use, and YAML files without a key given twice.

pydantic's lax mode would read ``steps: '3'`` and ``steps: true`` as integers, ``1e400`` as infinity and a YAML
mapping's repeated key as its last value. These checks walk the recipe's own field annotations, so a new field
(in any section, ``loss`` included) is held to them without being listed here.
"""

from __future__ import annotations

import math
import os
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

INT_MAX = 2**31 - 1  # counts (steps, sizes, batch sizes): far beyond any run, and what every index type holds
WIDE = {  # integers that may go beyond INT_MAX, and their own upper bound
    "train.max_tokens": 2**63 - 1,
    "data.skip_docs": 2**63 - 1,
    "data.heldout_docs": 2**63 - 1,
    "train.seed": 2**32 - 1,  # what every random generator involved accepts
    "init.seed": 2**32 - 1,
}
CPU_BOUND = ("train.threads",)  # at most this machine's CPUs


def check_values(model: type[BaseModel], data: object, prefix: str = "") -> list[str]:
    """Problems (one line each, naming the dotted key) with the raw values of ``data`` for ``model``'s fields."""
    if not isinstance(data, dict):
        return []
    problems: list[str] = []
    for name, info in model.model_fields.items():
        if name in data:
            problems += _check(prefix + name, info.annotation, data[name])
    return problems


def _check(key: str, ann: Any, value: Any) -> list[str]:
    if value is None:
        return []  # whether null is allowed is pydantic's to say
    origin = get_origin(ann)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(ann) if a is not type(None)]
        return _check(key, options[0], value) if len(options) == 1 else []
    if origin is Literal:
        return []
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return check_values(ann, value, key + ".")
    if origin in (list, tuple):
        args = [a for a in get_args(ann) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)) or not args:
            return []
        elems = args if origin is tuple and len(args) == len(value) else [args[0]] * len(value)
        return [
            p for i, (a, v) in enumerate(zip(elems, value, strict=True)) for p in _check(f"{key}[{i}]", a, v)
        ]
    if ann is bool:
        return [] if isinstance(value, bool) else [f"{key}: must be true or false, got {_shown(value)}"]
    if ann is int:
        return _integer(key, value)
    if ann is float:
        return _real(key, value)
    return []


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'mapping'}"
    return repr(value)


def _integer(key: str, value: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int):
        quoted = isinstance(value, str) and value.strip().lstrip("+-").isdigit()
        hint = f" (write {value.strip()} without quotes)" if quoted else ""
        return [f"{key}: must be an integer, got {_shown(value)}{hint}"]
    if key in CPU_BOUND:
        cpus = os.cpu_count() or 1
        if value > cpus:
            return [f"{key}: {value} is more than this machine's {cpus} CPUs; give 1..{cpus}"]
        return []
    high = WIDE.get(key, INT_MAX)
    if value > high:
        return [f"{key}: {value} is too large; give at most {high}"]
    return []


def _real(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [f"{key}: must be a number, got {_shown(value)}"]
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text; pydantic turns it into a number
        try:
            number = float(value)
        except ValueError:
            return []  # not a number at all: pydantic says so
    elif isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return [f"{key}: {value} is too large for a number; give a finite number"]
    else:
        return []
    if math.isfinite(number):
        return []
    why = ""
    if isinstance(value, str) and not math.isnan(number) and "inf" not in value.lower():
        why = f" ({value.strip()} is beyond the largest number, about 1.8e308, so it reads as infinity)"
    return [f"{key}: must be a finite number, got {value!r}{why}"]


def nonfinite(data: object, prefix: str = "") -> list[str]:
    """Dotted keys of every non-finite float in a (dumped) recipe."""
    if isinstance(data, dict):
        return [k for name, v in data.items() for k in nonfinite(v, f"{prefix}{name}.")]
    if isinstance(data, (list, tuple)):
        return [k for i, v in enumerate(data) for k in nonfinite(v, f"{prefix.rstrip('.')}[{i}].")]
    if isinstance(data, float) and not math.isfinite(data):
        return [prefix.rstrip(".")]
    return []


# ---- YAML without repeated keys --------------------------------------------------------------------------------


class DuplicateKey(yaml.YAMLError):
    """A mapping gives one key twice (YAML would keep the last in silence)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""


def _mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the constructor below says what is wrong
            continue
        line = key_node.start_mark.line + 1
        if first is not None:
            raise DuplicateKey(f"key {key!r} is given twice (lines {first} and {line}); keep one")
        seen[key] = line
    return loader.construct_mapping(node, deep=True)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str) -> Any:
    """YAML read safely, refusing repeated keys (``DuplicateKey``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)
