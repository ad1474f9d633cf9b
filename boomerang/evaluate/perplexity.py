"""Token perplexity (sliding window) and masked-LM pseudo-perplexity on an exact, reported slice of text.

**Token perplexity** (causal LMs) follows the "perplexity of fixed-length models" scheme. Each document is scored
on its own (documents are never glued together). Windows of at most ``context`` tokens move forward by ``stride``
new tokens; every token of the document except the first is scored exactly once, as the next-token prediction
from the tokens before it in its window, i.e. with at least ``context - stride`` and at most ``context - 1`` tokens
of left context (the first window gives the document's first tokens less). Every window starts at position 0.

* BOS: not added unless ``add_bos=True``; then the tokenizer's BOS is put before each document's slice and the
  slice's first token becomes scorable (BOS itself is never scored). Without BOS the first token is not scored.
* EOS: not added unless ``add_eos=True``; then EOS is appended and scored as the document's last target.
* Value: ``exp(sum of NLL / number of scored tokens)``, NLL in nats, computed in float32 from the model's logits.

**Pseudo-perplexity** (BERT-family masked LMs): each document's tokens are cut into chunks of at most
``context - 2`` tokens, each chunk is wrapped as ``[CLS] chunk [SEP]``, and every chunk token is masked in turn
and scored from all the others (the masked copies are batched). CLS/SEP are never scored.
Value: ``exp(sum of NLL / number of scored tokens)``.

The slice: ``offset`` tokens of the document stream are skipped (whole documents when shorter) and at most
``max_tokens`` text tokens are taken, each document keeping its own boundaries. ``PerplexityResult.docs`` records
every document's name, token offset and token count, so a reported number names the exact data it came from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arch import ARCHS
from ..core.hooks import layer_list
from ..data.builtin import builtin_text, is_builtin
from ..data.corpora import TEXT_SUFFIXES, read_texts
from ..errors import BoomerangError
from ..interrupts import check
from ..io import loading

# EvalSpec and the metric names live in .spec (no torch there) and are imported from here as before
from .spec import METRIC_LABELS, PSEUDO_PPL, TOKEN_PPL, EvalSpec, default_metric, is_encoder  # noqa: F401
from .spec import check_window as _check_window

if TYPE_CHECKING:
    from ..hints import DType, Model, Tokenizer

Source = str | Path | Sequence[str]


# ---- documents and the exact slice -------------------------------------------------------------------------


def named_texts(
    source: Source, *, text_field: str = "text", limit: int | None = None
) -> Iterator[tuple[str, str]]:
    """``(name, text)`` for every document of a source, in the order ``boomerang.data.read_texts`` reads them.

    Names: a file's name; ``path#i`` for the i-th document of a .jsonl file; a folder's files relative to it;
    ``hf:...#i`` for dataset rows; ``text#i`` for a list of strings.
    """
    count = 0

    def emit(items: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        nonlocal count
        for item in items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item

    if isinstance(source, (list, tuple)):
        yield from emit((f"text#{i}", str(t)) for i, t in enumerate(source))
        return
    spec = str(source)
    if spec.startswith("hf:"):
        yield from emit((f"{spec}#{i}", t) for i, t in enumerate(read_texts(spec, text_field=text_field)))
        return
    if is_builtin(spec):
        yield from emit(builtin_text(spec).documents())
        return
    path = Path(spec).expanduser()

    def file_docs(f: Path, name: str) -> Iterator[tuple[str, str]]:
        texts = read_texts(f, text_field=text_field)
        if f.suffix == ".jsonl":
            return ((f"{name}#{i}", t) for i, t in enumerate(texts))
        return ((name, t) for t in texts)

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ".jsonl"))
        if not files:
            raise BoomerangError(f"{path} contains no .txt, .md or .jsonl files")
        for f in files:
            yield from emit(file_docs(f, str(f.relative_to(path))))
            if limit is not None and count >= limit:
                return
        return
    if path.is_file():
        yield from emit(file_docs(path, path.name))
        return
    list(read_texts(spec))  # raises the standard "does not exist" error


def check_source(source: Source) -> None:
    """Fail fast (before loading models) if a local data source is missing or empty."""
    if isinstance(source, (list, tuple)) or str(source).startswith("hf:"):
        return
    if is_builtin(source):
        builtin_text(source)  # an unknown name lists the available ones
        return
    path = Path(str(source)).expanduser()
    if not path.exists():
        list(read_texts(str(source)))  # the standard message
    if path.is_dir():
        next(named_texts(path), None)


@dataclass
class Document:
    """A document's slice: text token ids (no special tokens) and where they come from."""

    name: str
    ids: list[int]
    offset: int  # index of the first token taken, in the document's own tokens
    doc_tokens: int  # the document's length in tokens


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def load_documents(
    source: Source,
    tokenizer: Tokenizer,
    *,
    offset: int = 0,
    max_tokens: int | None = None,
    max_docs: int | None = None,
    text_field: str = "text",
) -> list[Document]:
    """Tokenise ``source`` and cut the slice: skip ``offset`` tokens of the document stream, keep ``max_tokens``."""
    if offset < 0 or (max_tokens is not None and max_tokens < 1):
        raise BoomerangError(
            f"offset must be >= 0 and max_tokens >= 1 (got offset={offset}, max_tokens={max_tokens})"
        )
    docs: list[Document] = []
    skip, left = offset, max_tokens
    for name, text in named_texts(source, text_field=text_field, limit=max_docs):
        ids = encode(tokenizer, text)
        if skip >= len(ids):
            skip -= len(ids)
            continue
        take = ids[skip:] if left is None else ids[skip : skip + left]
        docs.append(Document(name, take, skip, len(ids)))
        skip = 0
        if left is not None:
            left -= len(take)
            if left <= 0:
                break
    if not docs:
        raise BoomerangError(
            f"the data source {source if not isinstance(source, (list, tuple)) else 'list'} has no tokens "
            f"after offset {offset}; lower --offset or use more data"
        )
    return docs


# ---- batches ------------------------------------------------------------------------------------------------


@dataclass
class ScoreBatch:
    """One forward pass: ``input_ids [B, L]`` and what to score in it.

    causal: ``positions [n]`` are the window positions whose logits are needed (the same for every row) and
    ``targets [B, n]`` the tokens they predict. mlm: ``positions [B]`` is the masked position of each row and
    ``targets [B]`` its original token. ``docs [B]`` is each row's document index.
    """

    kind: str
    input_ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    docs: torch.Tensor

    @property
    def n_scored(self) -> int:
        return self.targets.numel()


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_target)`` windows over a sequence of ``n`` tokens; targets are ``[first, end)``."""
    if n < 2:
        return []
    end = min(context, n)
    out = [(0, end, 1)]
    while end < n:
        start, end = end, min(end + stride, n)
        out.append((max(0, end - context), end, start))
    return out


def _group(
    rows: list[tuple[tuple, list[int], Any, Any, int]], batch_size: int, make: Callable
) -> list[ScoreBatch]:
    """Rows with the same shape key are batched together (so no padding is ever needed)."""
    by_shape: dict[tuple, list] = {}
    for row in rows:
        by_shape.setdefault(row[0], []).append(row)
    out = []
    for shape in sorted(by_shape, key=lambda s: (-s[0], s)):
        group = by_shape[shape]
        for i in range(0, len(group), batch_size):
            out.append(make(group[i : i + batch_size]))
    return out


def causal_batches(
    docs: Sequence[Document],
    *,
    context: int,
    stride: int,
    batch_size: int = 4,
    bos_id: int | None = None,
    eos_id: int | None = None,
) -> list[ScoreBatch]:
    """All windows of all documents, batched by shape. ``bos_id``/``eos_id`` are added when given."""
    _check_window(context, stride, None)
    rows = []
    for d, doc in enumerate(docs):
        seq = ([bos_id] if bos_id is not None else []) + doc.ids + ([eos_id] if eos_id is not None else [])
        for b, e, s in windows(len(seq), context, stride):
            length = e - b
            rows.append(((length, e - s), seq[b:e], s - b, None, d))

    def make(group: list) -> ScoreBatch:
        _, n = group[0][0]
        first = group[0][2]
        ids = torch.tensor([r[1] for r in group], dtype=torch.long)
        return ScoreBatch(
            "causal",
            ids,
            torch.arange(first - 1, first - 1 + n),
            ids[:, first : first + n].clone(),
            torch.tensor([r[4] for r in group], dtype=torch.long),
        )

    return _group(rows, batch_size, make)


def mlm_special_ids(tokenizer: Tokenizer) -> tuple[int, int, int]:
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id)
    if any(i is None for i in ids):
        raise BoomerangError(
            "pseudo-perplexity needs a masked-LM tokenizer with CLS, SEP and MASK tokens (e.g. BERT's); "
            f"this tokenizer has cls={ids[0]}, sep={ids[1]}, mask={ids[2]}"
        )
    return ids  # type: ignore[return-value]


def mlm_batches(
    docs: Sequence[Document], tokenizer: Tokenizer, *, context: int, batch_size: int = 64
) -> list[ScoreBatch]:
    """Every token of every ``[CLS] chunk [SEP]`` masked in turn; copies batched by length."""
    if context < 3:
        raise BoomerangError(f"--context must be at least 3 for pseudo-perplexity, got {context}")
    cls, sep, mask = mlm_special_ids(tokenizer)
    rows = []
    for d, doc in enumerate(docs):
        for c in range(0, len(doc.ids), context - 2):
            seq = [cls, *doc.ids[c : c + context - 2], sep]
            for p in range(1, len(seq) - 1):
                rows.append(((len(seq),), seq, p, seq[p], d))

    def make(group: list) -> ScoreBatch:
        ids = torch.tensor([r[1] for r in group], dtype=torch.long)
        pos = torch.tensor([r[2] for r in group], dtype=torch.long)
        ids[torch.arange(len(group)), pos] = mask
        return ScoreBatch(
            "mlm", ids, pos, torch.tensor([r[3] for r in group]), torch.tensor([r[4] for r in group])
        )

    return _group(rows, batch_size, make)


# ---- scoring one batch ------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _encoder_head(model: nn.Module) -> nn.Module | None:
    """The masked-LM head as one module (BERT's ``cls``), or None if the architecture is not registered."""
    arch = ARCHS.get(model.config.model_type)
    return model.get_submodule(arch.head[0]) if arch is not None and len(arch.head) == 1 else None


def batch_nll(model: nn.Module, batch: ScoreBatch) -> torch.Tensor:
    """Per-token NLL (nats, float32) of the batch's targets: ``[B, n]`` (causal) or ``[B]`` (mlm).

    Only the scored positions go through the LM head.
    """
    check()  # a Ctrl-C stops an evaluation between batches
    with torch.no_grad():
        if batch.kind == "causal":
            try:
                logits = model(
                    input_ids=batch.input_ids, use_cache=False, logits_to_keep=batch.positions
                ).logits
            except TypeError:  # a model class without logits_to_keep: full logits, then select
                logits = model(input_ids=batch.input_ids, use_cache=False).logits[:, batch.positions]
            return F.cross_entropy(
                logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none"
            ).view_as(batch.targets)
        rows = torch.arange(batch.input_ids.shape[0])
        head = _encoder_head(model)
        if head is None:  # e.g. a plain DistilBertForMaskedLM: run its own head on every position
            logits = model(input_ids=batch.input_ids).logits[rows, batch.positions]
            return F.cross_entropy(logits.float(), batch.targets, reduction="none")

        got: dict[str, torch.Tensor] = {}

        def hook(_m, _a, out):
            got["h"] = out[0] if isinstance(out, (tuple, list)) else out
            raise _Stop

        handle = layer_list(model)[-1].register_forward_hook(hook)
        try:
            model(input_ids=batch.input_ids)
        except _Stop:
            pass
        finally:
            handle.remove()
        logits = head(got["h"][rows, batch.positions])
        return F.cross_entropy(logits.float(), batch.targets, reduction="none")


# ---- accumulation and results -----------------------------------------------------------------------------


@dataclass
class DocSlice:
    name: str
    offset: int  # first token taken, in the document's own tokens
    tokens: int  # text tokens taken
    doc_tokens: int  # the whole document's tokens
    scored: int = 0
    nll: float = 0.0  # summed, nats

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.scored) if self.scored else float("nan")


@dataclass
class PerplexityResult:
    """A perplexity and the exact data it was computed on."""

    metric: str  # "ppl" (token perplexity) or "pppl" (masked-LM pseudo-perplexity)
    value: float
    nll: float  # mean NLL per scored token, nats
    scored: int
    tokens: int
    docs: list[DocSlice]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return METRIC_LABELS[self.metric]

    def slice_text(self) -> str:
        parts = [
            f"{d.name} [tokens {d.offset}..{d.offset + d.tokens} of {d.doc_tokens}]" for d in self.docs[:3]
        ]
        more = f" and {len(self.docs) - 3} more documents" if len(self.docs) > 3 else ""
        return ", ".join(parts) + more

    def describe(self) -> str:
        s = self.settings
        how = (
            f"context {s.get('context')}, stride {s.get('stride')}, BOS {'added' if s.get('add_bos') else 'not added'}"
            if self.metric == TOKEN_PPL
            else f"chunks of {s.get('context')} tokens with CLS/SEP"
        )
        return (
            f"{self.label} = {self.value:.4f} on {self.scored} scored tokens of {self.slice_text()} ({how})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "label": self.label,
            "value": self.value,
            "nll": self.nll,
            "scored_tokens": self.scored,
            "slice_tokens": self.tokens,
            "settings": self.settings,
            "seconds": self.seconds,
            "documents": [{**asdict(d), "ppl": d.ppl} for d in self.docs],
        }


class Accumulator:
    """Summed NLL and token counts per document, batch by batch."""

    def __init__(self, n_docs: int):
        self.nll = torch.zeros(n_docs, dtype=torch.float64)
        self.count = torch.zeros(n_docs, dtype=torch.long)

    def add(self, batch: ScoreBatch, nll: torch.Tensor) -> None:
        per_row = nll.double().reshape(nll.shape[0], -1)
        self.nll.index_add_(0, batch.docs, per_row.sum(1))
        self.count.index_add_(0, batch.docs, torch.full_like(batch.docs, per_row.shape[1]))

    @property
    def total_nll(self) -> float:
        return float(self.nll.sum())

    @property
    def total_count(self) -> int:
        return int(self.count.sum())

    def result(
        self, metric: str, docs: Sequence[Document], settings: Mapping[str, object], seconds: float = 0.0
    ):
        n = self.total_count
        if n == 0:
            raise BoomerangError(
                "nothing was scored: the slice is too short (every document needs 2+ tokens)"
            )
        mean = self.total_nll / n
        slices = [
            DocSlice(d.name, d.offset, len(d.ids), d.doc_tokens, int(c), float(s))
            for d, c, s in zip(docs, self.count, self.nll, strict=True)
        ]
        return PerplexityResult(
            metric, math.exp(mean), mean, n, sum(len(d.ids) for d in docs), slices, settings, seconds
        )


# ---- the public API ------------------------------------------------------------------------------------------


def prepare(
    source: Source | Sequence[Document], tokenizer: Tokenizer, spec: EvalSpec
) -> tuple[list[Document], list[ScoreBatch]]:
    """The slice's documents and batches for a resolved ``spec``."""
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], Document):
        docs = list(source)  # type: ignore[arg-type]
    else:
        docs = load_documents(
            source,  # type: ignore[arg-type]
            tokenizer,
            offset=spec.offset,
            max_tokens=spec.max_tokens,
            max_docs=spec.max_docs,
            text_field=spec.text_field,
        )
    assert spec.context is not None and spec.batch_size is not None
    if spec.metric == PSEUDO_PPL:
        return docs, mlm_batches(docs, tokenizer, context=spec.context, batch_size=spec.batch_size)
    bos = eos = None
    if spec.add_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise BoomerangError("add_bos/--bos was requested but the tokenizer has no BOS token")
    if spec.add_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise BoomerangError("add_eos/--eos was requested but the tokenizer has no EOS token")
    assert spec.stride is not None
    batches = causal_batches(
        docs, context=spec.context, stride=spec.stride, batch_size=spec.batch_size, bos_id=bos, eos_id=eos
    )
    return docs, batches


def _model_and_tokenizer(model: Any, tokenizer: Any, dtype: Any) -> tuple[nn.Module, Any]:
    if isinstance(model, (str, Path)):
        tok = tokenizer if tokenizer is not None else loading.load_tokenizer(model)
        if isinstance(tok, (str, Path)):
            tok = loading.load_tokenizer(tok)
        return loading.load_model(model, dtype=dtype), tok
    if tokenizer is None:
        raise BoomerangError("pass the tokenizer for an in-memory model (tokenizer=... or a path)")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = loading.load_tokenizer(tokenizer)
    return model, tokenizer


def evaluate(
    model: nn.Module | str | Path,
    data: Source | Sequence[Document],
    tokenizer: Tokenizer | None = None,
    spec: EvalSpec | None = None,
    *,
    dtype: DType | None = None,
    progress: Callable[[int, int], None] | None = None,
    **settings: str | int | bool | None,
) -> PerplexityResult:
    """Token perplexity (causal LMs) or pseudo-perplexity (masked LMs) of ``model`` on a slice of ``data``.

    ``model`` is an in-memory model (then pass ``tokenizer``) or a checkpoint path. ``data`` is any source
    ``boomerang.data.read_texts`` accepts. ``spec`` says what is scored (``EvalSpec``: metric, slice, windows);
    ``settings`` are ``EvalSpec`` fields as keywords (``context=512, max_tokens=4096``), over ``spec`` if both
    are given. ``progress(i, n)`` is called after each of the ``n`` batches. See the module docstring for the
    exact scheme.
    """
    if not isinstance(data, (list, tuple)) or not data or not isinstance(data[0], Document):
        check_source(data)  # type: ignore[arg-type]
    model, tok = _model_and_tokenizer(model, tokenizer, dtype)
    spec = replace(spec or EvalSpec(), **settings).resolved(model.config)  # type: ignore[arg-type]
    docs, batches = prepare(data, tok, spec)
    was_training = model.training
    model.eval()
    acc = Accumulator(len(docs))
    t0 = time.perf_counter()
    try:
        for i, batch in enumerate(batches):
            acc.add(batch, batch_nll(model, batch))
            if progress is not None:
                progress(i + 1, len(batches))
    finally:
        model.train(was_training)
    return acc.result(spec.metric, docs, spec.settings(), time.perf_counter() - t0)


def perplexity(
    model: Model, data: Source | Sequence[Document], tokenizer: Tokenizer | None = None, **kw: Any
) -> PerplexityResult:
    """Token perplexity of a causal LM (see ``evaluate``)."""
    return evaluate(model, data, tokenizer, metric=TOKEN_PPL, **kw)


def pseudo_perplexity(
    model: Model, data: Source | Sequence[Document], tokenizer: Tokenizer | None = None, **kw: Any
) -> PerplexityResult:
    """Masked-LM pseudo-perplexity of a BERT-family model (see ``evaluate``)."""
    return evaluate(model, data, tokenizer, metric=PSEUDO_PPL, **kw)
