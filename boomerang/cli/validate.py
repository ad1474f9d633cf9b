"""The CLI's one validation layer: every command checks its options with these before any model loads.

Each check raises ``BoomerangError`` with a message naming the option, the problem and the fix; ``boomerang.cli.app``
turns it into exit status 2. Checks that need a model's shape read only its config (milliseconds).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BoomerangError
from ..io.atomic import check_writable, clean_orphans, writable_place

_MAX_RANGE = 10_000  # longest a-b range in an integer list (no layer count comes near it)


def _flag(name: str) -> str:
    return name if name.startswith("-") else "--" + name.replace("_", "-")


# ---- numbers -----------------------------------------------------------------------------------------------------


def at_least(minimum: int, **options: int | float | None) -> None:
    """Each given option (``None`` = not given) must be ``>= minimum``; ``stride=0`` checks ``--stride``."""
    for name, value in options.items():
        if value is not None and value < minimum:
            raise BoomerangError(
                f"{_flag(name)} must be at least {minimum}, got {value}; give {_flag(name)} {minimum} or more "
                "(or leave it out for the default)"
            )


def positive(**options: int | float | None) -> None:
    """Each given option must be ``>= 1``."""
    at_least(1, **options)


def in_range(name: str, value: int | None, low: int, high: int, why: str) -> None:
    """``low <= value <= high`` (inclusive), ``why`` saying where the bounds come from."""
    if value is not None and not low <= value <= high:
        raise BoomerangError(f"{_flag(name)} {value} is out of range: {why}, so give {low}..{high}")


def seed(value: int | None, option: str = "--seed") -> None:
    """A seed: 0 <= seed < 2**32 (what every random generator involved accepts)."""
    if value is not None and not 0 <= value < 2**32:
        raise BoomerangError(f"{option} must be in 0..{2**32 - 1}, got {value}")


def fraction_or_count(name: str, value: float | None) -> None:
    """A positive count (``>= 1``) or a fraction in (0, 1)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise BoomerangError(f"{_flag(name)} must be a count >= 1 or a fraction in (0, 1), got {value}")


def real(name: str, value: float | None, low: float, high: float) -> None:
    """A finite number in ``[low, high]`` (typer reads ``nan`` and ``inf`` as floats)."""
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise BoomerangError(f"{_flag(name)} must be a number in [{low}, {high}], got {value}")


def only_with(condition: bool, what: str, **given: bool) -> None:
    """Options (``name=True`` when given) that apply only when ``condition`` holds, e.g. to one method."""
    used = [_flag(name) for name, on in given.items() if on]
    if used and not condition:
        raise BoomerangError(f"{', '.join(used)} apply only {what}; drop {' and '.join(used)}")


# ---- integer lists -----------------------------------------------------------------------------------------------


def parse_ints(text: str | None, what: str = "list") -> list[int] | None:
    """``"0,2,4"`` or ``"0-3,7"`` -> ``[0, 2, 4]`` / ``[0, 1, 2, 3, 7]``; None stays None.

    Refused, with a message naming the fix: an empty list or item (``""``, ``"1,,2"``), anything but non-negative
    integers and ``a-b`` ranges, a range that runs backwards, and an integer listed twice.
    """
    if text is None:
        return None
    example = "use comma-separated integers such as 0,2,4 or 0-3"
    body = "".join(text.split())
    if not body:
        raise BoomerangError(f"{what} is empty; {example}")
    out: list[int] = []
    for part in body.split(","):
        if not part:
            raise BoomerangError(
                f"cannot read {what} {text!r}: it has an empty item (two commas in a row, or one at an end); {example}"
            )
        a, sep, b = part.partition("-")
        if not a and sep and b.isascii() and b.isdigit():
            raise BoomerangError(f"{what} {text!r}: {part} is negative; layers and sizes count from 0")
        if not (a.isascii() and a.isdigit()) or (sep and not (b.isascii() and b.isdigit())):
            raise BoomerangError(
                f"cannot read {what} {text!r}: {part!r} is not an integer or a-b range; {example}"
            )
        lo, hi = int(a), int(b) if sep else int(a)
        if hi < lo:
            raise BoomerangError(f"{what} {text!r}: the range {part} runs backwards; write {hi}-{lo}")
        if hi - lo > _MAX_RANGE:
            raise BoomerangError(f"{what} {text!r}: the range {part} is too long (over {_MAX_RANGE} items)")
        out.extend(range(lo, hi + 1))
    twice = sorted(k for k, n in Counter(out).items() if n > 1)
    if twice:
        raise BoomerangError(f"{what} {text!r} lists {twice} more than once; list each once")
    return out


def names(text: str, what: str, known: Sequence[str] | None = None) -> list[str]:
    """A comma-separated list of names (``last,first``): no empty items, no repeats, known names if given."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise BoomerangError(f"cannot read {what} {text!r}: it has an empty item; write e.g. a,b")
    twice = sorted(k for k, n in Counter(items).items() if n > 1)
    if twice:
        raise BoomerangError(f"{what} {text!r} lists {twice} more than once; list each once")
    if known is not None:
        unknown = [t for t in items if t not in known]
        if unknown:
            raise BoomerangError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return items


# ---- orders ------------------------------------------------------------------------------------------------------


def order_option(order: str | None, option: str = "--order", *, data: bool = True) -> str | None:
    """Check a patch-order option before any model loads: a known name, an inline JSON list (``[3,2,1,0]``) or a
    JSON order file (None: the order the student records, resolved once its config is read). Whether it fits the
    student is checked when the layer map is known (configs only)."""
    from ..core.plan import BUILTIN_ORDERS, DATA_ORDERS
    from ..io.order_files import load_order, parse_order_text

    if order is None:
        return None
    known = BUILTIN_ORDERS + (DATA_ORDERS if data else ())
    if order in known:
        return order
    if order.lstrip().startswith("["):
        parse_order_text(order, f"{option} {order!r}")
        return order
    path = Path(order).expanduser()
    if path.is_file():
        load_order(path)
        return order
    if order.endswith(".json") or os.sep in order or "/" in order:
        raise BoomerangError(f"{option}: the order file {order} does not exist")
    raise BoomerangError(
        f"unknown patch order {order!r} for {option}; use {', '.join(known)}, a JSON order file, or a JSON list "
        "of student layers such as [3,2,1,0]"
    )


# ---- paths -------------------------------------------------------------------------------------------------------


def output_dir(out: Path, force: bool) -> Path:
    """An output directory that can be written: checked (and cleared of dead runs' temporary files) up front."""
    out = check_writable(out, force=force)
    if out.absolute().parent.is_dir():
        clean_orphans(out.absolute().parent, out.name, keep_resumable=True)
    return out


def output_file(path: Path, force: bool) -> Path:
    """An output file (``--json``, an order file) that can be written."""
    if str(path).endswith(("/", os.sep)):
        raise BoomerangError(f"{path} names a directory; give a file name such as {Path(path) / 'out.json'}")
    return check_writable(path, force=force, file=True)


FORMATS = ("safetensors", "gguf")


def gguf_format(format: str, gguf_type: str | None) -> str | None:
    """``--format`` and ``--gguf-type``: the GGUF type to write, or None for safetensors only."""
    from ..io.gguf_export import DEFAULT_GGUF_TYPE, GGUF_TYPES

    if format not in FORMATS:
        raise BoomerangError(f"--format {format!r} is not one of: {', '.join(FORMATS)}")
    if format != "gguf":
        if gguf_type is not None:
            raise BoomerangError("--gguf-type is read only with --format gguf; add --format gguf, or drop it")
        return None
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise BoomerangError(f"--gguf-type {gguf_type!r} is not one of: {', '.join(GGUF_TYPES)}")
    return gguf_type or DEFAULT_GGUF_TYPE


def gguf_file(out: Path, force: bool) -> Path:
    """A GGUF output file (``--out NAME.gguf``) that can be written."""
    if Path(out).suffix != ".gguf":
        raise BoomerangError(
            f"--format gguf writes one file: give --out a name ending in .gguf (e.g. {out}.gguf)"
        )
    return output_file(out, force)


def output_target(out: Path, force: bool, gguf: str | None) -> Path:
    """``--out``: a checkpoint directory, or with ``--format gguf`` one ``.gguf`` file."""
    return output_dir(out, force) if gguf is None else gguf_file(out, force)


def run_dir(out: Path) -> Path:
    """A run directory (``distill``): its place must be writable; dead writers' temporary files are removed."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BoomerangError(f"{out} exists and is not a directory; choose another --out")
    writable_place(out)
    for d in (out.absolute().parent, out, out / "checkpoints"):
        if d.is_dir():
            clean_orphans(d)
    return out


def text_source(source: str | None, option: str = "--data", text_field: str = "text") -> None:
    """A text source option: an existing text file or folder (never model weights, no link loops), ``hf:NAME``,
    ``builtin:NAME``; the first lines of .jsonl files must hold text in ``text_field``."""
    if source is not None:
        from ..data.textfiles import check_text_source

        check_text_source(source, option, text_field)


def text_field(source: str | None, field: str) -> None:
    """``--text-field`` is read from .jsonl files and hf: datasets only: a changed one over plain text is refused."""
    if source is None or field == "text" or str(source).startswith("hf:"):
        return
    path = Path(source).expanduser()
    from ..data.textfiles import text_files

    files = text_files(path) if path.is_dir() else [path]
    if not any(f.name.endswith((".jsonl", ".jsonl.gz")) for f in files):
        raise BoomerangError(
            f"--text-field {field!r} is read from .jsonl files and hf: datasets only, and {source} holds plain text; "
            "drop --text-field"
        )


def model_source(spec: str, option: str) -> None:
    """A model option: a local path must exist (at once, without trying the Hub), a .gguf file must be one, a
    checkpoint's config must agree with its weights (headers only)."""
    from ..io.checkpoints import OFFLINE_ALIAS
    from ..io.consistency import check_files
    from ..io.textfile import link_loop, loop_error

    if spec == OFFLINE_ALIAS:
        return
    path = Path(spec).expanduser()
    if link_loop(path):
        raise loop_error(path, option)
    if path.is_file() and path.suffix == ".gguf":
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise BoomerangError(
                    f"{option} {spec} is not a GGUF file (it does not start with GGUF); download it again, or pass a "
                    "checkpoint directory"
                )
    if path.is_dir():
        check_files(path)  # a config.json that contradicts its weights (layer count, sizes)


def student_freezes(recipe: Any) -> None:
    """A local student's config against the freeze settings: the frozen layers exist, and no random, untrained
    weights are frozen (they would stay random)."""
    from ..train.recipe import check_frozen_layers, check_frozen_random

    path = Path(recipe.student).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return  # the loader names a broken config
    if not isinstance(config, dict):
        return
    n = config.get("num_hidden_layers")
    if isinstance(n, int):
        check_frozen_layers(recipe.train.freeze_layers, n, f"the student {recipe.student}")
    section = config.get("boomerang")
    check_frozen_random(section if isinstance(section, dict) else None, recipe.train)


def tokenizer_source(spec: str, option: str) -> None:
    """A local checkpoint a tokenizer is read from must have tokenizer files (checked without loading)."""
    from ..io.checkpoints import expand_alias, tokenizer_files

    path = Path(expand_alias(spec)).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and not tokenizer_files(path):
        raise BoomerangError(
            f"{option} {spec} has no tokenizer (no tokenizer.json, tokenizer_config.json or vocabulary files). Copy "
            "the tokenizer files of the model it was made from into it (or save one with "
            "tokenizer.save_pretrained), or pass --tokenizer DIR where the command has it"
        )


def recipe_file(path: Path) -> Path:
    """The recipe argument of ``distill``: a file (a directory gets its YAML files listed)."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))
        hint = f": it holds {', '.join(found[:5])}" if found else ", which holds no .yaml files"
        raise BoomerangError(
            f"the recipe {path} is a directory{hint}. Give the recipe YAML file itself, e.g. "
            f"{path / (found[0] if found else 'recipe.yaml')}"
        )
    return path


def within_context(option: str, length: int | None, spec: str, trust_remote_code: bool = False) -> None:
    """A token length (calibration blocks, training sequences) must fit the model's positions, as ``eval
    --context`` must: read from its config alone."""
    from ..core.configs import max_positions
    from ..io.loading import load_config

    if length is None:
        return
    limit = max_positions(load_config(spec, trust_remote_code=trust_remote_code))
    if limit is not None and length > limit:
        raise BoomerangError(
            f"{option} {length} exceeds the model's {limit} positions ({spec}); give {option} {limit} or less"
        )


def context_default(default: int, spec: str, trust_remote_code: bool = False) -> int:
    """A default token length, shortened to the model's positions if it has fewer."""
    from ..core.configs import max_positions
    from ..io.loading import load_config

    limit = max_positions(load_config(spec, trust_remote_code=trust_remote_code))
    return min(default, limit) if limit else default


def teacher_layers(spec: str, trust_remote_code: bool = False) -> int:
    """The layer count of a model from its config alone."""
    from ..core.arch import n_layers
    from ..io.loading import load_config

    return n_layers(load_config(spec, trust_remote_code=trust_remote_code))
