"""A checkpoint's tokenizer as GGUF metadata: the vocabulary, token types, merges, special tokens, chat template.

boomerang writes byte-level BPE tokenizers (``tokenizer.ggml.model = gpt2``: SmolLM2, Llama 3, Qwen 2/2.5/3 and any
tokenizer built the same way), read from the checkpoint's ``tokenizer.json`` without torch or transformers.
llama.cpp cannot read a tokenizer's pre-tokenizer from the file; it picks one by the name in ``tokenizer.ggml.pre``.
That name is found from the pre-tokenizer itself (not from a hash of a test text, as llama.cpp's converter does, so
a family's tokenizer converted from a GGUF, or any retrained vocabulary, is recognised too):

* ``ByteLevel(use_regex=True)`` alone splits text with GPT-2's regex: ``gpt-2``;
* ``Digits(individual_digits=True)`` then that: SmolLM's ``smollm``;
* ``Split(regex)`` then ``ByteLevel(use_regex=False)``: the name transformers' GGUF reader
  (``GGUF_PRE_TOKENIZER_SPLITS``, the map ``boomerang convert`` reads with) gives that regex, e.g. ``llama3``
  (Llama 3) or ``qwen2`` (Qwen 2/2.5/3).

Anything else (sentencepiece and WordPiece vocabularies, other pre-tokenizers) is refused with the reason; special
tokens, merges, ``add_bos``/``add_eos`` and the chat template come from ``gguf.SpecialVocab``, as in llama.cpp's
converter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError

if TYPE_CHECKING:
    from gguf import GGUFWriter

TOKENIZER_JSON = "tokenizer.json"
GPT2_PRE = "gpt-2"  # llama.cpp's name for GPT-2's own regex (ByteLevel with use_regex=True)
DIGITS_PRE = "smollm"  # single digits first, then GPT-2's regex


@dataclass(frozen=True)
class Vocab:
    """What a GGUF file says about a tokenizer (before the special tokens, which ``gguf.SpecialVocab`` reads)."""

    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]  # gguf.TokenType values


def _unsupported(directory: Path, what: str) -> BoomerangError:
    return BoomerangError(
        f"cannot write the tokenizer of {directory} as GGUF: {what}. boomerang writes byte-level BPE tokenizers "
        "(SmolLM2, Llama 3, Qwen 2/2.5/3); convert this model with llama.cpp's convert_hf_to_gguf.py instead, or "
        "export the safetensors checkpoint (--format safetensors)"
    )


def read_tokenizer_json(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``tokenizer.json``, or a clear error."""
    directory = Path(directory)
    path = directory / TOKENIZER_JSON
    if not path.is_file():
        raise _unsupported(directory, f"it has no {TOKENIZER_JSON} (a fast tokenizer's file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BoomerangError(
            f"cannot read {path}: {e}; copy the tokenizer files again from the model it was made from"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise BoomerangError(f"{path} is not a tokenizers file (no 'model' object)")
    return data


def _steps(pre: Any) -> list[dict[str, Any]]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for p in pre.get("pretokenizers", []) if isinstance(p, dict)]
    return [pre]


def _split_names() -> dict[str, str]:
    """Regex -> llama.cpp pre-tokenizer name, from transformers' GGUF reader (the first name of each regex)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    names: dict[str, str] = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, name)
    return names


def pre_tokenizer_name(data: Mapping[str, object], directory: Path) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for a byte-level tokenizer's pre-tokenizer."""
    steps = _steps(data.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if kinds and kinds[-1] == "ByteLevel" and last.get("add_prefix_space"):
        raise _unsupported(
            directory, "its ByteLevel pre-tokenizer adds a prefix space, which llama.cpp's BPE does not"
        )
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return GPT2_PRE
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
        return DIGITS_PRE
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if regex is not None and split.get("behavior") == "Isolated" and not split.get("invert"):
            name = _split_names().get(regex)
            if name is not None:
                return name
        raise _unsupported(directory, f"llama.cpp has no pre-tokenizer named for its split pattern {regex!r}")
    raise _unsupported(
        directory, f"its pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp names"
    )


def read_vocab(directory: str | Path, vocab_size: int) -> Vocab:
    """The vocabulary of a byte-level BPE tokenizer, padded to the model's ``vocab_size`` with unused tokens."""
    from gguf import TokenType

    directory = Path(directory)
    data = read_tokenizer_json(directory)
    model = data["model"]
    if model.get("type") != "BPE":
        raise _unsupported(directory, f"it is a {model.get('type')} tokenizer, not BPE")
    if model.get("byte_fallback"):
        raise _unsupported(directory, "it is a sentencepiece-style BPE (byte fallback), not byte-level")
    normalizer = (data.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):  # Qwen's NFC is dropped by llama.cpp's own converter too
        raise _unsupported(
            directory, f"it normalizes text first ({normalizer}), which llama.cpp's BPE does not"
        )
    pre = pre_tokenizer_name(data, directory)
    by_id: dict[int, tuple[str, int]] = {
        int(i): (t, TokenType.NORMAL) for t, i in model.get("vocab", {}).items()
    }
    for added in data.get("added_tokens", []):
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise BoomerangError(
            f"the tokenizer of {directory} has token id {max(by_id)}, but the model's vocabulary has only "
            f"{vocab_size} rows; the tokenizer does not belong to this model"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return Vocab(model="gpt2", pre=pre, tokens=tokens, types=types)


def check_vocab(directory: str | Path, vocab_size: int) -> None:
    """Fail now (before any heavy work) if the tokenizer cannot be written as GGUF."""
    read_vocab(directory, vocab_size)


def add_vocab(writer: GGUFWriter, directory: str | Path, vocab_size: int) -> Vocab:
    """Write the tokenizer of ``directory`` into a ``gguf.GGUFWriter``."""
    import gguf

    vocab = read_vocab(directory, vocab_size)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    special = gguf.SpecialVocab(Path(directory), load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise BoomerangError(
            f"the tokenizer of {directory} has no merges; a BPE tokenizer without them is damaged"
        )
    for kind, value in _adds_specials(Path(directory), special.special_token_ids).items():
        special.add_special_token.setdefault(kind, value)  # what tokenizer_config.json says wins
    special.add_to_gguf(writer, quiet=True)
    return vocab


def _adds_specials(directory: Path, ids: dict[str, int]) -> dict[str, bool]:
    """Whether encoding adds the BOS / EOS token, as the ``tokenizers`` library encodes (llama.cpp needs both
    flags: its defaults differ by pre-tokenizer)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / TOKENIZER_JSON))
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    bos, eos = ids.get("bos"), ids.get("eos")
    return {
        "bos": bos is not None and len(full) > len(plain) and full[0] == bos,
        "eos": eos is not None and len(full) > len(plain) and full[-1] == eos,
    }
