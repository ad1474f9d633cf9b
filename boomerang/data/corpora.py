"""Text sources: finding the project's corpora and reading documents from files, folders, lists and datasets.

A *source* is a local text file (one document), a folder (each ``*.txt``/``*.md`` file one document and each
``*.jsonl`` line one document, in sorted path order), a ``.jsonl`` file (one document per line, text in
``text_field``), a list of strings, or a Hugging Face dataset written ``hf:NAME[:CONFIG][@SPLIT]`` (streamed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import BoomerangError

TEXT_SUFFIXES = (".txt", ".md")


def shared_corpora() -> Path:
    """The project's offline corpora (``train/``, ``validation/``): ``$BOOMERANG_DATA``, else ``../shared/data``
    beside the repository, else ``/work/shared/data``."""
    import os

    candidates = [os.environ.get("BOOMERANG_DATA"), Path(__file__).resolve().parents[3] / "shared" / "data"]
    candidates.append("/work/shared/data")
    for c in candidates:
        if c and (Path(c) / "corpora" / "validation").is_dir():
            return Path(c) / "corpora"
    raise BoomerangError(
        "cannot find the shared corpora (corpora/train, corpora/validation): set BOOMERANG_DATA to the data "
        "folder that holds corpora/"
    )


def _hf_spec(spec: str) -> tuple[str, str | None, str]:
    body = spec.removeprefix("hf:")
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    return name, (config or None), (split or "train")


def read_texts(
    source: str | Path | Sequence[str], *, text_field: str = "text", limit: int | None = None
) -> Iterator[str]:
    """Yield documents from ``source`` (see module docstring), at most ``limit`` of them."""
    it = _read(source, text_field)
    for i, text in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield text


def _read(source: str | Path | Sequence[str], text_field: str) -> Iterator[str]:
    if isinstance(source, (list, tuple)):
        yield from (str(s) for s in source)
        return
    spec = str(source)
    if spec.startswith("hf:"):
        yield from _read_hf(spec, text_field)
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ".jsonl"))
        if not files:
            raise BoomerangError(f"{path} contains no .txt, .md or .jsonl files")
        for f in files:
            yield from _read_file(f, text_field)
        return
    if path.is_file():
        yield from _read_file(path, text_field)
        return
    raise BoomerangError(
        f"data source {spec!r} does not exist; pass a text file, a folder, a .jsonl file, or hf:NAME[:CONFIG][@SPLIT] "
        "for a Hugging Face dataset"
    )


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BoomerangError(f"{path}:{n} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or text_field not in row:
                    raise BoomerangError(
                        f"{path}:{n} has no {text_field!r} field; set text_field / --text-field"
                    )
                yield str(row[text_field])
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def _read_hf(spec: str, text_field: str) -> Iterator[str]:
    name, config, split = _hf_spec(spec)
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise BoomerangError(
            f"could not open Hugging Face dataset {name!r} (config {config}, split {split}): {str(e).splitlines()[0]}. "
            "Offline? Use a local text folder or .jsonl file instead."
        ) from None
    for row in ds:
        if text_field not in row:
            raise BoomerangError(f"dataset {name!r} has no {text_field!r} column; columns: {sorted(row)}")
        yield str(row[text_field])
