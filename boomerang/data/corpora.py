"""Text sources: finding the project's corpora and reading documents from files, folders, lists and datasets.

A *source* is a local text file (one document; ``.gz`` files are decompressed), a folder (each ``*.txt``/``*.md``
file one document and each ``*.jsonl`` line one document, in sorted path order), a ``.jsonl`` file (one document
per line, text in ``text_field``), a list of strings, a Hugging Face dataset written ``hf:NAME[:CONFIG][@SPLIT]``
(streamed; needs the ``hf`` extra), or a text that ships with the package, written ``builtin:NAME`` (see
``boomerang.data.builtin``).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BoomerangError, require
from ..io.textfile import link_loop, loop_error
from .builtin import builtin_text, is_builtin
from .textfiles import check_text_file, check_text_source, jsonl_text, text_files, text_value

TEXT_SUFFIXES = (".txt", ".md")
DEFAULT_TRAIN = "builtin:default-train"  # the packaged training corpus, used when no shared corpora are found
DEFAULT_VALIDATION = "builtin:hamlet"  # validation for a single training source (hamlet: devils-dictionary)


def shared_corpora() -> Path:
    """The project's offline corpora folder (holds ``train/`` and ``validation/``).

    Looked up in ``$BOOMERANG_DATA/corpora``, else ``shared/data/corpora`` in the current directory or its parent,
    else, from a source checkout, ``../shared/data/corpora`` beside the repository.
    """
    found = _find_shared()
    if found is None:
        raise BoomerangError(
            "cannot find the shared corpora (corpora/train, corpora/validation): set BOOMERANG_DATA to the data "
            f"folder that holds corpora/, or use a packaged text such as {DEFAULT_TRAIN}"
        )
    return found


def _find_shared() -> Path | None:
    env = os.environ.get("BOOMERANG_DATA")
    if env:  # set explicitly: it must be right
        found = Path(env).expanduser() / "corpora"
        if not (found / "validation").is_dir():
            raise BoomerangError(f"BOOMERANG_DATA={env} has no corpora/validation folder; fix or unset it")
        return found
    cwd = Path.cwd()
    candidates = [cwd / "shared" / "data", cwd.parent / "shared" / "data"]
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():  # running from a checkout, not an installed wheel
        candidates.append(root.parent / "shared" / "data")
    return next((c / "corpora" for c in candidates if (c / "corpora" / "validation").is_dir()), None)


@dataclass(frozen=True)
class Corpus:
    """A training source and a validation source, each as ``read_texts`` accepts it."""

    train: str
    validation: str


def find_corpus(data: str | Path | None = None) -> Corpus:
    """The training and validation texts of a run (validated; nothing is read).

    * ``None``: the shared corpora (``shared_corpora``) if found, else the packaged ``builtin:default-train``
      validated on ``builtin:hamlet``;
    * a folder holding ``train/`` and ``validation/``: those two;
    * any other source (file, folder, ``.jsonl``, ``hf:``, ``builtin:``): trained on, validated on
      ``builtin:hamlet`` (``builtin:devils-dictionary`` when training on hamlet).
    """
    if data is None:
        found = _find_shared()
        if found is None:
            return Corpus(DEFAULT_TRAIN, DEFAULT_VALIDATION)
        return Corpus(str(found / "train"), str(found / "validation"))
    spec = str(data)
    if is_builtin(spec):
        builtin_text(spec)  # an unknown name lists the available ones
    elif not spec.startswith("hf:"):
        path = Path(spec).expanduser()
        if not path.exists():
            list(_read(spec, "text"))  # the standard "does not exist" message
        if (path / "train").is_dir() or (path / "validation").is_dir():
            if not ((path / "train").is_dir() and (path / "validation").is_dir()):
                raise BoomerangError(
                    f"{path} has only one of train/ and validation/: add the other, or pass the training "
                    f"folder itself (then validated on {DEFAULT_VALIDATION})"
                )
            for part in ("train", "validation"):
                check_text_source(path / part, "--data")
            return Corpus(str(path / "train"), str(path / "validation"))
        check_text_source(path, "--data")  # text, not weights; no link loops (before anything runs)
    validation = "builtin:devils-dictionary" if spec == DEFAULT_VALIDATION else DEFAULT_VALIDATION
    return Corpus(spec, validation)


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
        yield from (text_value(s, f"text {i} of the list", None) for i, s in enumerate(source))
        return
    spec = str(source)
    if spec.startswith("hf:"):
        yield from _read_hf(spec, text_field)
        return
    if is_builtin(spec):
        yield from (text for _, text in builtin_text(spec).documents())
        return
    path = Path(spec).expanduser()
    if link_loop(path):
        raise loop_error(path, "data source")
    if path.is_dir():
        files = [p for p in text_files(path) if p.suffix in (*TEXT_SUFFIXES, ".jsonl")]
        if not files:
            raise BoomerangError(f"{path} contains no .txt, .md or .jsonl files")
        for f in files:
            yield from _read_file(f, text_field)
        return
    if path.is_file():
        yield from _read_file(path, text_field)
        return
    raise BoomerangError(
        f"data source {spec!r} does not exist; pass a text file, a folder, a .jsonl file, hf:NAME[:CONFIG][@SPLIT] "
        "for a Hugging Face dataset, or builtin:NAME for a packaged text (e.g. builtin:default-train)"
    )


def _open(path: Path, errors: str = "strict"):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors=errors)
    return path.open(encoding="utf-8", errors=errors)


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    check_text_file(path)  # model weights or an archive are refused, not scored as text
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        with _open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield jsonl_text(line, path, n, text_field)
    else:
        try:
            with _open(path, errors="replace") as f:
                text = f.read()
        except (OSError, EOFError) as e:  # unreadable, or a damaged .gz file
            raise BoomerangError(f"cannot read {path}: {e}") from None
        yield text


def _read_hf(spec: str, text_field: str) -> Iterator[str]:
    name, config, split = _hf_spec(spec)
    datasets = require("datasets", "hf", "reading Hugging Face datasets (hf:NAME)")
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise BoomerangError(
            f"could not open Hugging Face dataset {name!r} (config {config}, split {split}): {str(e).splitlines()[0]}. "
            "Offline? Use a local text folder or .jsonl file instead."
        ) from None
    for i, row in enumerate(ds):
        if text_field not in row:
            raise BoomerangError(f"dataset {name!r} has no {text_field!r} column; columns: {sorted(row)}")
        yield text_value(row[text_field], f"dataset {name!r} row {i}", text_field)
