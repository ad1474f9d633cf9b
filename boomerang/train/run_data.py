"""The data of a run: training blocks in a seeded, resumable order, validation blocks, and the run's length."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..data.blocks import (
    Blocks,
    ShuffledBlocks,
    StreamingBlocks,
    docs_to_blocks,
    eos_id,
    pack,
    pad_id,
    tokenize,
    tokenized_docs,
)
from ..data.corpora import read_texts
from ..errors import BoomerangError
from .recipe import Recipe

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..hints import Tokenizer


@dataclass
class RunData:
    train_data: Any  # ShuffledBlocks or StreamingBlocks: .take(n), .position, .seek(p)
    eval_blocks: Any  # Blocks or None
    eval_slice: dict[str, Any] | None  # exactly which validation tokens, for the report
    description: str
    total_steps: int
    tokens_per_step: float


def prepare_data(recipe: Recipe, tokenizer: Tokenizer, acc: Accelerator) -> RunData:
    """Tokenise (or stream) the training data, pick the validation blocks and size the run."""
    d = recipe.data
    streaming = d.streaming if d.streaming is not None else d.train.startswith("hf:")
    train_data, eval_docs, data_desc = _training_data(recipe, tokenizer, acc, streaming)
    eval_blocks, eval_slice = _validation_blocks(recipe, tokenizer, acc, streaming, eval_docs)
    total_steps, tokens_per_step = _run_length(recipe, train_data)
    return RunData(train_data, eval_blocks, eval_slice, data_desc, total_steps, tokens_per_step)


def _training_data(recipe: Recipe, tok: Any, acc: Any, streaming: bool) -> tuple[Any, list[list[int]], str]:
    """The training blocks (shuffled, or streamed), the held-out documents and a description of the data."""

    d = recipe.data
    opts = dict(text_field=d.text_field, add_bos=d.add_bos)
    if streaming:
        train_data = StreamingBlocks(
            d.train,
            tok,
            d.seq_len,
            seed=recipe.train.seed,
            buffer=d.shuffle_buffer,
            skip_docs=d.heldout_docs + d.skip_docs,
            packing=d.packing,
            **opts,
        )
        eval_docs: list[list[int]] = []
        if d.heldout_docs:
            texts = read_texts(d.train, text_field=d.text_field, limit=d.heldout_docs)
            eval_docs = list(tokenize(texts, tok, add_bos=d.add_bos))
        return train_data, eval_docs, f"{d.train} (streamed, shuffle buffer {d.shuffle_buffer} blocks)"
    with acc.main_process_first():
        docs = tokenized_docs(d.train, tok, cache_dir=d.cache_dir, **opts)
    train_docs = docs[d.heldout_docs + d.skip_docs :]
    _check_documents(d, len(docs), train_docs)
    blocks = docs_to_blocks(train_docs, d.seq_len, eos_id(tok), packing=d.packing, pad=pad_id(tok))
    desc = f"{d.train}: {len(train_docs)} documents, {len(blocks)} blocks, {blocks.n_tokens:,} tokens"
    return ShuffledBlocks(blocks, seed=recipe.train.seed), docs[: d.heldout_docs], desc


def _validation_blocks(
    recipe: Recipe, tok: Any, acc: Any, streaming: bool, eval_docs: list[list[int]]
) -> tuple[Any, dict[str, Any] | None]:
    """The validation blocks (``data.eval``, or the held-out documents) and exactly which tokens they are."""

    d, n_eval = recipe.data, recipe.eval.blocks
    if not n_eval or not (d.eval or eval_docs):
        return None, None
    eos = eos_id(tok)
    if d.eval and (d.eval.startswith("hf:") or streaming):
        rows = []
        texts = read_texts(d.eval, text_field=d.text_field)
        for b in pack(tokenize(texts, tok, add_bos=d.add_bos), d.seq_len, eos):
            rows.append(b)
            if len(rows) >= n_eval:
                break
        eval_blocks = Blocks(torch.tensor(rows, dtype=torch.int32).view(-1, d.seq_len))
    else:
        if d.eval:
            with acc.main_process_first():
                opts = dict(text_field=d.text_field, add_bos=d.add_bos)
                eval_docs = tokenized_docs(d.eval, tok, cache_dir=d.cache_dir, **opts)
        eval_blocks = docs_to_blocks(eval_docs, d.seq_len, eos, packing=d.packing, pad=pad_id(tok)).head(
            n_eval
        )
    if len(eval_blocks) == 0:
        raise BoomerangError(_short_validation(d, eval_docs))
    return eval_blocks, {
        "source": d.eval or f"the first {d.heldout_docs} documents of {d.train}",
        "from": "start",
        "blocks": len(eval_blocks),
        "seq_len": d.seq_len,
        "tokens": eval_blocks.n_tokens,
        "layout": "packed" if d.packing else "one padded document each",
    }


def _run_length(recipe: Recipe, train_data: Any) -> tuple[int, float]:
    """The run's optimizer steps (``train.steps`` and/or ``train.max_tokens``) and tokens per step."""

    tr = recipe.train
    if isinstance(train_data, ShuffledBlocks):
        tokens_per_block = train_data.blocks.n_tokens / len(train_data.blocks)
    else:
        tokens_per_block = recipe.data.seq_len
    tokens_per_step = tokens_per_block * tr.batch_size
    limits = [tr.steps] if tr.steps else []
    if tr.max_tokens:
        limits.append(max(1, math.ceil(tr.max_tokens / tokens_per_step)))
    return min(limits), tokens_per_step


def _check_documents(d: Any, n_docs: int, train_docs: list[list[int]]) -> None:
    """The training documents left after the held-out and skipped ones must give at least one block; say which
    setting took them if not."""
    taken = d.heldout_docs + d.skip_docs
    settings = " + ".join(f"data.{k}={getattr(d, k)}" for k in ("heldout_docs", "skip_docs") if getattr(d, k))
    if taken and taken >= n_docs:
        raise BoomerangError(
            f"{settings} leaves no training documents: {d.train} has {n_docs}. Hold out or skip fewer "
            "documents, or give the validation texts separately as data.eval"
        )
    tokens = sum(len(doc) + 1 for doc in train_docs)  # each followed by EOS when packed
    if d.packing and tokens < d.seq_len:
        after = f" after {settings}" if taken else ""
        raise BoomerangError(
            f"the training data is shorter than one sequence: {_docs(len(train_docs))} of {d.train}{after} "
            f"hold {tokens} tokens, fewer than data.seq_len={d.seq_len}. Give more text, lower data.seq_len"
            + (", or hold out or skip fewer documents" if taken else "")
        )


def _short_validation(d: Any, eval_docs: list[list[int]]) -> str:
    tokens = sum(len(doc) + 1 for doc in eval_docs)
    if d.eval:
        return (
            f"the validation data {d.eval} is shorter than one sequence (fewer than data.seq_len={d.seq_len} "
            "tokens); give more validation text or lower data.seq_len"
        )
    return (
        f"the held-out {_docs(len(eval_docs))} (data.heldout_docs={d.heldout_docs}: the first documents of "
        f"{d.train}) hold {tokens} tokens, fewer than one sequence of data.seq_len={d.seq_len}; hold out more "
        "documents, lower data.seq_len, or give validation texts as data.eval"
    )


def _docs(n: int) -> str:
    return f"{n} document{'' if n == 1 else 's'}"
