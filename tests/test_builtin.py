"""Packaged texts (``builtin:NAME``), compressed sources, corpus resolution and optional extras."""

from __future__ import annotations

import gzip
import hashlib
import sys
from importlib.resources import files

import pytest
from tiny import tiny_corpus, tiny_tokenizer

from boomerang.data import TEXTS, Corpus, builtin_text, find_corpus, read_texts, tokenized_docs
from boomerang.data.corpora import shared_corpora
from boomerang.errors import BoomerangError, require
from boomerang.evaluate.perplexity import check_source, named_texts

TEXTS_DIR = files("boomerang.data").joinpath("texts")


def test_every_packaged_file_is_registered_and_matches_its_hash():
    on_disk = {
        f"{d.name}/{f.name}" if d.is_dir() else d.name
        for d in TEXTS_DIR.iterdir()
        for f in (d.iterdir() if d.is_dir() else [d])
        if f.name.endswith(".gz")
    }
    registered = {rel for t in TEXTS.values() for rel in t.files}
    assert on_disk == registered  # nothing ships without provenance, nothing registered is missing
    for t in TEXTS.values():
        for rel, sha in t.files.items():
            data = gzip.decompress(TEXTS_DIR.joinpath(*rel.split("/")).read_bytes())
            assert hashlib.sha256(data).hexdigest() == sha, rel
    readme = TEXTS_DIR.joinpath("README.md").read_text()
    assert all(f"`builtin:{name}`" in readme for name in TEXTS) and "CC-BY 2.5" in readme


def test_builtin_sources_read_everywhere_data_is_accepted():
    train = list(read_texts("builtin:default-train"))
    assert len(train) == 12 and sum(len(t.encode()) for t in train) == 790_037
    assert train[0].startswith("NORTHANGER ABBEY")
    (hamlet,) = read_texts("builtin:hamlet")
    assert len(hamlet) == 173_942 and hamlet.startswith("HAMLET, PRINCE OF DENMARK")
    assert next(read_texts("builtin:devils-dictionary")).startswith("ABASEMENT, n.")
    assert [n for n, _ in named_texts("builtin:hamlet")] == ["builtin:hamlet"]
    names = [n for n, _ in named_texts("builtin:default-train", limit=2)]
    assert names == [
        "builtin:default-train/northanger-abbey.txt",
        "builtin:default-train/1790_george_washington_n.txt",
    ]
    check_source("builtin:hamlet")
    assert builtin_text("hamlet").spec == "builtin:hamlet"


def test_a_typo_lists_the_packaged_texts():
    for call in (lambda: list(read_texts("builtin:hamlett")), lambda: check_source("builtin:hamlett")):
        with pytest.raises(BoomerangError) as e:
            call()
        msg = str(e.value)
        assert "did you mean builtin:hamlet?" in msg
        assert all(f"builtin:{n}" in msg for n in ("default-train", "hamlet", "devils-dictionary"))


def test_token_cache_keys_differ_per_builtin_text(tmp_path):
    tok = tiny_tokenizer()
    a = tokenized_docs("builtin:hamlet", tok, cache_dir=tmp_path)
    b = tokenized_docs("builtin:devils-dictionary", tok, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and a != b
    assert tokenized_docs("builtin:hamlet", tok, cache_dir=tmp_path) == a  # read back from the cache


def test_gzip_files_are_sources(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"one document\n"))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n{"text": "y"}\n'))
    assert list(read_texts(tmp_path / "a.txt.gz")) == ["one document\n"]
    assert list(read_texts(tmp_path / "b.jsonl.gz")) == ["x", "y"]
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(BoomerangError, match=r"cannot read .*bad\.txt\.gz"):
        list(read_texts(tmp_path / "bad.txt.gz"))


def test_find_corpus(tmp_path, monkeypatch):
    both = tmp_path / "both"
    tiny_corpus(both / "train", 2)
    tiny_corpus(both / "validation", 2)
    assert find_corpus(both) == Corpus(str(both / "train"), str(both / "validation"))
    assert find_corpus(both / "train") == Corpus(str(both / "train"), "builtin:hamlet")
    assert find_corpus("builtin:default-train") == Corpus("builtin:default-train", "builtin:hamlet")
    # never validate on training text
    assert find_corpus("builtin:hamlet").validation == "builtin:devils-dictionary"
    assert find_corpus("hf:some/dataset").train == "hf:some/dataset"  # opened lazily (and needs the hf extra)
    half = tmp_path / "half"
    tiny_corpus(half / "train", 2)
    with pytest.raises(BoomerangError, match="only one of train/ and validation/"):
        find_corpus(half)
    with pytest.raises(BoomerangError, match="does not exist"):
        find_corpus(tmp_path / "nope")
    with pytest.raises(BoomerangError, match="no packaged text"):
        find_corpus("builtin:nope")
    # $BOOMERANG_DATA wins, and a wrong one is an error rather than a silent fallback
    monkeypatch.setenv("BOOMERANG_DATA", str(tmp_path / "shared"))
    with pytest.raises(BoomerangError, match=r"BOOMERANG_DATA=.* has no corpora/validation"):
        find_corpus()
    tiny_corpus(tmp_path / "shared" / "corpora" / "train", 2)
    tiny_corpus(tmp_path / "shared" / "corpora" / "validation", 2)
    assert shared_corpora() == tmp_path / "shared" / "corpora"
    assert find_corpus() == Corpus(
        *(str(tmp_path / "shared" / "corpora" / s) for s in ("train", "validation"))
    )


def test_missing_optional_packages_name_their_extra(monkeypatch):
    with pytest.raises(BoomerangError, match=r"pip install 'boomerang-distill\[eval\]'"):
        require("boomerang_no_such_module", "eval", "testing")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(BoomerangError, match=r"hf:NAME.*pip install 'boomerang-distill\[hf\]'"):
        list(read_texts("hf:some/dataset"))
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    from boomerang.evaluate.lmeval import resolve_tasks

    with pytest.raises(BoomerangError, match=r"pip install 'boomerang-distill\[eval\]'"):
        resolve_tasks(["boomerang_cloze"])
