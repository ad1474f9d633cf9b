"""Tokenisation, packing, calibration sets and the training-data pipeline (blocks, seeded order, token cache).

Documents come from a *source* read by ``corpora.read_texts`` (a text file, a folder, a ``.jsonl`` file, a list of
strings or ``hf:NAME[:CONFIG][@SPLIT]``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import BoomerangError
from ..interrupts import check
from ..io import loading
from ..io.textfile import link_loop, loop_error
from .builtin import builtin_text, is_builtin
from .corpora import read_texts

if TYPE_CHECKING:
    from ..hints import Tokenizer


def tokenize(texts: Iterable[str], tokenizer: Tokenizer, *, add_bos: bool = False) -> Iterator[list[int]]:
    """Token ids per document (no special tokens, except BOS first if ``add_bos``)."""
    bos = tokenizer.bos_token_id
    for text in texts:
        check()  # a Ctrl-C stops tokenising a large corpus between documents
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        yield ([bos] if add_bos and bos is not None else []) + list(ids)


def pack(docs: Iterable[list[int]], block_size: int, eos_id: int) -> Iterator[list[int]]:
    """Concatenate documents, each followed by EOS, and cut into blocks of ``block_size`` (remainder dropped)."""
    buf: list[int] = []
    for doc in docs:
        buf.extend(doc)
        buf.append(eos_id)
        while len(buf) >= block_size:
            yield buf[:block_size]
            buf = buf[block_size:]


def eos_id(tokenizer: Tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id  # BERT-family tokenizers
    if eos is None:
        raise BoomerangError("the tokenizer has no EOS (or SEP) token to separate documents")
    return int(eos)


def calibration_ids(
    source: str | Path | Sequence[str],
    tokenizer: Tokenizer,
    *,
    n: int = 128,
    length: int = 256,
    seed: int = 0,
    text_field: str = "text",
    scan_tokens: int = 4_000_000,
) -> torch.Tensor:
    """``[n, length]`` token blocks drawn (seeded) from the packed source: the calibration set."""
    blocks: list[list[int]] = []
    for block in pack(
        tokenize(read_texts(source, text_field=text_field), tokenizer), length, eos_id(tokenizer)
    ):
        blocks.append(block)
        if len(blocks) * length >= scan_tokens:
            break
    if not blocks:
        raise BoomerangError(f"the data source has fewer than {length} tokens; nothing to calibrate on")
    rng = random.Random(seed)
    picked = rng.sample(range(len(blocks)), n) if len(blocks) >= n else list(range(len(blocks)))
    return torch.tensor([blocks[i] for i in sorted(picked)], dtype=torch.long)


# ---- training data: fixed-length blocks, deterministic order, resumable position ---------------------------


@dataclass
class Batch:
    """``input_ids`` ``[B, L]`` (long) and ``attention_mask`` (None when every position is real)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, a: int, b: int) -> Batch:
        m = self.attention_mask[a:b] if self.attention_mask is not None else None
        return Batch(self.input_ids[a:b], m)

    def to(self, device: str | torch.device) -> Batch:
        m = self.attention_mask.to(device) if self.attention_mask is not None else None
        return Batch(self.input_ids.to(device), m)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum()) if self.attention_mask is not None else self.input_ids.numel()


def pad_id(tokenizer: Tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return int(pid) if pid is not None else eos_id(tokenizer)


class Blocks:
    """Fixed-length token blocks held in memory (int32), packed or padded."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor | None = None):
        self.ids, self.mask = ids, mask

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else self.ids.numel()

    def batch(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        mask = self.mask[idx].long() if self.mask is not None else None
        return Batch(self.ids[idx].long(), mask)

    def head(self, n: int) -> Blocks:
        return Blocks(self.ids[:n], self.mask[:n] if self.mask is not None else None)


def docs_to_blocks(
    docs: Sequence[list[int]] | Iterable[list[int]],
    seq_len: int,
    eos: int,
    *,
    packing: bool = True,
    pad: int = 0,
) -> Blocks:
    """Pack documents (each followed by EOS; remainder dropped), or pad/truncate each into its own block."""
    if packing:
        flat: list[int] = []
        for d in docs:
            flat.extend(d)
            flat.append(eos)
        n = len(flat) // seq_len
        ids = torch.tensor(flat[: n * seq_len], dtype=torch.int32).view(n, seq_len)
        return Blocks(ids)
    rows, masks = [], []
    for d in docs:
        row = ([*d, eos])[:seq_len]
        rows.append(row + [pad] * (seq_len - len(row)))
        masks.append([1] * len(row) + [0] * (seq_len - len(row)))
    if not rows:
        return Blocks(torch.zeros(0, seq_len, dtype=torch.int32), torch.zeros(0, seq_len, dtype=torch.uint8))
    return Blocks(torch.tensor(rows, dtype=torch.int32), torch.tensor(masks, dtype=torch.uint8))


def _fingerprint(source: str | Path | Sequence[str], tokenizer: Any, **options: Any) -> str | None:
    """A cache key for a local source tokenised by ``tokenizer``; None for sources we cannot fingerprint."""
    h = hashlib.sha256()
    if isinstance(source, (list, tuple)):
        return None
    spec = str(source)
    if spec.startswith("hf:"):
        return None
    if is_builtin(spec):  # packaged texts: keyed by their recorded content hashes
        h.update(f"{spec}|{builtin_text(spec).digest()}\n".encode())
    else:
        if link_loop(Path(spec).expanduser()):
            raise loop_error(spec, "data source")
        path = Path(spec).expanduser().resolve()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_state = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    h.update(hashlib.sha256(tok_state.encode()).digest())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return loading.DEFAULT_CACHE / "tokens"


def tokenized_docs(
    source: str | Path | Sequence[str],
    tokenizer: Tokenizer,
    *,
    text_field: str = "text",
    add_bos: bool = False,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """All documents of a (local) source as token lists, cached as safetensors keyed by files and tokenizer."""
    key = _fingerprint(source, tokenizer, text_field=text_field, add_bos=add_bos) if use_cache else None
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    file = cache / f"{key}.safetensors" if key else None
    if file is not None and file.is_file():
        try:
            t = load_file(str(file))
            flat, offsets = t["tokens"].tolist(), t["offsets"].tolist()
            return [flat[a:b] for a, b in itertools.pairwise(offsets)]
        except Exception:  # a corrupt cache entry is rebuilt
            pass
    docs = list(tokenize(read_texts(source, text_field=text_field), tokenizer, add_bos=add_bos))
    if file is not None:
        offsets = [0]
        for d in docs:
            offsets.append(offsets[-1] + len(d))
        flat_t = torch.tensor([t for d in docs for t in d], dtype=torch.int32)
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".safetensors", dir=cache)
        os.close(fd)
        try:
            save_file({"tokens": flat_t, "offsets": torch.tensor(offsets, dtype=torch.int64)}, tmp)
            os.replace(tmp, file)
        except OSError:  # the cache is only a speed-up: a full disk is no reason to stop
            Path(tmp).unlink(missing_ok=True)
        except BaseException:  # Ctrl-C: no temporary file left behind either
            Path(tmp).unlink(missing_ok=True)
            raise
    return docs


class ShuffledBlocks:
    """Blocks in a seeded order, reshuffled every epoch; ``position`` (blocks consumed) makes it resumable."""

    def __init__(self, blocks: Blocks, seed: int = 0, *, shuffle: bool = True):
        if len(blocks) == 0:
            raise BoomerangError(
                "the training data gives no blocks: it is shorter than one sequence (seq_len)"
            )
        self.blocks, self.seed, self.shuffle = blocks, seed, shuffle
        self.position = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            n = len(self.blocks)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch]).permutation(n)
                self._perm = (epoch, torch.from_numpy(perm))
            else:
                self._perm = (epoch, torch.arange(n))
        return self._perm[1]

    def indices(self, start: int, count: int) -> list[int]:
        n = len(self.blocks)
        return [int(self._order(p // n)[p % n]) for p in range(start, start + count)]

    def take(self, count: int) -> Batch:
        check()  # every training step takes a batch: a Ctrl-C stops the run between steps
        batch = self.blocks.batch(self.indices(self.position, count))
        self.position += count
        return batch

    def seek(self, position: int) -> None:
        self.position = position

    @property
    def epoch(self) -> float:
        return self.position / len(self.blocks)


class StreamingBlocks:
    """Blocks from a streamed source through a seeded shuffle buffer; resuming re-reads and skips."""

    def __init__(
        self,
        source: str | Path | Sequence[str],
        tokenizer: Any,
        seq_len: int,
        *,
        seed: int = 0,
        buffer: int = 10_000,
        skip_docs: int = 0,
        packing: bool = True,
        text_field: str = "text",
        add_bos: bool = False,
    ):
        self.source, self.tokenizer, self.seq_len = source, tokenizer, seq_len
        self.seed, self.buffer, self.skip_docs, self.packing = seed, buffer, skip_docs, packing
        self.text_field, self.add_bos = text_field, add_bos
        self.position = 0
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def _raw(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        eos = eos_id(self.tokenizer)
        texts = read_texts(self.source, text_field=self.text_field)
        for _ in range(self.skip_docs):
            if next(texts, None) is None:
                break
        docs = tokenize(texts, self.tokenizer, add_bos=self.add_bos)
        if self.packing:
            for block in pack(docs, self.seq_len, eos):
                yield torch.tensor(block, dtype=torch.int32), None
        else:
            pad = pad_id(self.tokenizer)
            for d in docs:
                b = docs_to_blocks([d], self.seq_len, eos, packing=False, pad=pad)
                yield b.ids[0], b.mask[0]  # type: ignore[index]

    def _shuffled(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Blocks through a seeded shuffle buffer (int32 tensors: ~4 bytes per buffered token)."""
        rng = random.Random(self.seed)
        buf: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for item in self._raw():
            if len(buf) < self.buffer:
                buf.append(item)
                continue
            i = rng.randrange(len(buf))
            yield buf[i]
            buf[i] = item
        rng.shuffle(buf)
        yield from buf

    def take(self, count: int) -> Batch:
        check()
        if self._it is None:
            self.seek(self.position)
        rows, masks = [], []
        for _ in range(count):
            item = next(self._it, None)  # type: ignore[arg-type]
            if item is None:  # next epoch: the same order again (streams are not reshuffled per epoch)
                self._it = self._shuffled()
                item = next(self._it, None)
                if item is None:
                    raise BoomerangError(
                        f"the streamed source {self.source} gives no blocks of {self.seq_len} tokens"
                    )
            rows.append(item[0])
            masks.append(item[1])
        self.position += count
        mask = None if self.packing else torch.stack(masks).long()  # type: ignore[arg-type]
        return Batch(torch.stack(rows).long(), mask)

    def seek(self, position: int) -> None:
        """Restart the stream and skip ``position`` blocks (deterministic for a given seed)."""
        self._it = self._shuffled()
        for _ in range(position):
            if next(self._it, None) is None:
                self._it = self._shuffled()
        self.position = position

    @property
    def epoch(self) -> float:
        return float("nan")
