"""Streaming builds from the checkpoint files alone: no torch, no transformers.

``StreamBuilder`` (``boomerang.io.stream``) learns a member's tensors, their order and its config from transformers
(a weightless model of the member, transformers' key renamings). For *canonical* checkpoints all of that follows
from the files, and ``FastBuilder`` writes the same bytes without importing either library:

* the tensor set and its state-dict order come from the adapter's saved layout (``Arch.saved``): every input
  tensor must be one that layout names, and every layer of both models must hold the same tensors;
* config.json is the teacher's config.json edited by ``configs.derive_config`` (which works on dicts too), and
  generation_config.json is the teacher's, copied; both are what transformers writes when they were written by
  the installed transformers version (checked);
* the weights are stored in the dtype wanted (no conversion), tied heads are omitted exactly when the configs say
  they are tied, and the tokenizer files are copied byte for byte (as every build path does).

``open_builder`` picks ``FastBuilder`` whenever that holds and ``StreamBuilder`` otherwise; ``stream_build`` is
the one-call API over both. Both builders derive from ``builder.Builder``; this module sits above ``stream`` and
imports it only when the fast path cannot serve.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.arch import LEAVES, Arch, Saved, get_arch, n_layers, route
from ..core.configs import check_compatible
from ..core.layermap import LayerMap
from ..core.params import ParamCount, config_tied, plan_config, plan_tied
from ..core.plan import PatchOrder, PatchPlan
from ..errors import BoomerangError
from .atomic import atomic_dir, check_writable
from .builder import Builder
from .checkpoints import (
    CONFIG,
    DTYPE_NAMES,
    GENERATION_CONFIG,
    common_dtype_name,
    copy_tokenizer,
    dtype_name,
    expand_alias,
    is_local_safetensors,
    parse_json,
    tokenizer_files,
    transformers_version,
)
from .consistency import check_layers, check_saved_shapes
from .safetensors_files import (
    DEFAULT_SHARD_SIZE,
    ST_DTYPES,
    OutTensor,
    ProgressFn,
    TensorRef,
    parse_shard_size,
    read_tensors,
)
from .sidecar import read_layer_map
from .snapshot import Snapshot, snapshot_of

if TYPE_CHECKING:
    from ..hints import DType

_ST_NAME = {torch_name: st for st, (torch_name, _) in ST_DTYPES.items()}  # "float32" -> "F32"


class NotFast(BoomerangError):
    """The pair can be built exactly only through transformers; the message says why."""


@dataclass(frozen=True)
class RawCheckpoint:
    """A local safetensors checkpoint as files: its config.json and where every tensor's bytes are."""

    path: Path
    config: dict[str, Any]
    entries: dict[str, TensorRef]
    snapshot: Snapshot

    @classmethod
    def open(cls, spec: str | os.PathLike) -> RawCheckpoint:
        path = Path(expand_alias(spec)).expanduser()
        if not is_local_safetensors(path):
            raise NotFast(f"{spec} is not a local checkpoint directory with safetensors weights")
        snapshot = snapshot_of(path)  # held before the first read: one version, or a clear stop
        config = parse_json(snapshot.read_bytes(CONFIG), path / CONFIG)
        entries, _ = read_tensors(path, snapshot)
        check_layers(path, config, entries)  # a config that contradicts its weights is refused, not built
        check_saved_shapes(path, config, entries)
        return cls(path, config, entries, snapshot)


def _rank(modules: Sequence[str], name: str) -> tuple[int, int] | None:
    """Where tensor ``name`` (``module.weight`` or ``module.bias``) stands among ``modules``; None if not there."""
    module, _, leaf = name.rpartition(".")
    if module in modules and leaf in LEAVES:
        return modules.index(module), LEAVES.index(leaf)
    return None


def natural_key(name: str) -> list[tuple[Any, ...]]:
    """Sort key of transformers' ``dot_natural_key``: dotted parts, numbers (and trailing numbers) numerically."""
    parts: list[tuple[Any, ...]] = []
    for part in name.split("."):
        if part.isdigit():
            parts.append((0, int(part)))
            continue
        text = part.rstrip("0123456789")
        digits = part[len(text) :]
        parts.append((1, text, int(digits)) if digits else (1, text))
    return parts


@dataclass(frozen=True)
class _Layout:
    """A canonical checkpoint's tensors: one dict (suffix -> ref) per layer, and the rest by name."""

    layers: list[dict[str, TensorRef]]
    other: dict[str, TensorRef]

    @classmethod
    def of(cls, ckpt: RawCheckpoint, arch: Arch, saved: Saved) -> _Layout:
        prefix, n = arch.layers + ".", n_layers(ckpt.config)
        layers: list[dict[str, TensorRef]] = [{} for _ in range(n)]
        other: dict[str, TensorRef] = {}
        for name, ref in ckpt.entries.items():
            if name.startswith(prefix):
                idx, _, suffix = name[len(prefix) :].partition(".")
                ok = idx.isascii() and idx.isdigit() and str(int(idx)) == idx and int(idx) < n
                if ok and _rank(saved.layer, suffix) is not None:
                    layers[int(idx)][suffix] = ref
                    continue
            elif _rank(saved.before + saved.after, name) is not None:
                other[name] = ref
                continue
            raise NotFast(f"{ckpt.path}: tensor {name!r} is not one that {saved.model_class} saves")
        if not layers or any(_shapes(layer) != _shapes(layers[0]) for layer in layers):
            raise NotFast(f"{ckpt.path}: its layers do not all hold the same tensors")
        head, embedding = saved.tied
        if embedding not in other:
            raise NotFast(f"{ckpt.path} has no {embedding}")
        if (head in other) == config_tied(ckpt.config):  # save_pretrained omits exactly a tied head
            raise NotFast(f"{ckpt.path}: {head} does not match tie_word_embeddings")
        return cls(layers, other)


def _shapes(tensors: dict[str, TensorRef]) -> dict[str, tuple[int, ...]]:
    return {name: ref.shape for name, ref in tensors.items()}


class FastBuilder(Builder):
    """A canonical teacher/student pair, ready to write any member of their family without torch.

    ``FastBuilder.open`` returns None (and ``create`` raises ``NotFast`` with the reason) when the pair is not
    canonical; ``open_builder`` then uses ``StreamBuilder``.
    """

    def __init__(
        self,
        teacher: RawCheckpoint,
        student: RawCheckpoint,
        layer_map: LayerMap | None,
        *,
        arch: Arch,
        dtype: str,
    ) -> None:
        assert arch.saved is not None
        self.teacher, self.student, self.layer_map = teacher, student, layer_map
        self.arch, self.saved, self.dtype = arch, arch.saved, dtype
        self._layouts = {
            "teacher": _Layout.of(teacher, arch, arch.saved),
            "student": _Layout.of(student, arch, arch.saved),
        }
        self._check_layouts()

    @classmethod
    def open(cls, *args: object, **kwargs: object) -> FastBuilder | None:
        """``create``, but None when only the transformers path can build the pair exactly.

        Any error (unreadable files, incompatible models, a layer map that does not fit) also gives None, so that
        the transformers path reports it.
        """
        try:
            return cls.create(*args, **kwargs)
        except BoomerangError:
            return None

    @classmethod
    def create(
        cls,
        teacher: str | os.PathLike,
        student: str | os.PathLike,
        layer_map: LayerMap | None = None,
        *,
        dtype: DType | None = None,
    ) -> FastBuilder:
        """The fast builder for this pair, or ``NotFast`` saying why it cannot build it exactly."""
        t, s = RawCheckpoint.open(teacher), RawCheckpoint.open(student)
        tcfg, scfg = t.config, s.config
        if tcfg.get("model_type") != scfg.get("model_type"):
            raise NotFast("teacher and student have different model types")
        arch = get_arch(tcfg)
        if arch.saved is None or arch.encoder:
            raise NotFast(f"the {arch.model_type} adapter has no saved layout")
        version = transformers_version()
        for who, cfg in (("teacher", tcfg), ("student", scfg)):
            _check_config(who, cfg, arch.saved, version)
        check_compatible(tcfg, scfg)
        gen = t.path / GENERATION_CONFIG
        if (
            not gen.is_file()
            or parse_json(t.snapshot.read_bytes(GENERATION_CONFIG), gen).get("transformers_version")
            != version
        ):
            raise NotFast(f"the teacher has no {GENERATION_CONFIG} written by transformers {version}")
        if not tokenizer_files(t.path):
            raise NotFast("the teacher has no tokenizer files")
        if layer_map is None:
            layer_map = read_layer_map(s.path, scfg)
        if layer_map is not None:
            layer_map.check_fits(n_layers(tcfg), n_layers(scfg))
        return cls(t, s, layer_map, arch=arch, dtype=_stored_dtype(t, s, dtype))

    def _check_layouts(self) -> None:
        t, s = self._layouts["teacher"], self._layouts["student"]
        head = self.saved.tied[0]
        if _shapes(t.layers[0]) != _shapes(s.layers[0]):
            raise NotFast("the teacher's and the student's layers hold different tensors")
        t_other, s_other = _shapes(t.other), _shapes(s.other)
        t_other.pop(head, None)
        s_other.pop(head, None)
        if t_other != s_other:
            raise NotFast("the teacher's and the student's embeddings or heads differ")

    def _check_plan(self, plan: PatchPlan) -> None:
        plan.layer_map.check_fits(n_layers(self.teacher.config), n_layers(self.student.config))

    def _tied(self, plan: PatchPlan) -> bool:
        return plan_tied(self.teacher.config, self.student.config, plan)

    def _view(self, who: str) -> dict[str, TensorRef]:
        """One model's tensors by name; a tied head is served by the embedding it shares."""
        ckpt, layout = getattr(self, who), self._layouts[who]
        view = dict(ckpt.entries)
        head, embedding = self.saved.tied
        view.setdefault(head, layout.other[embedding])
        return view

    def names(self, plan: PatchPlan) -> list[str]:
        """The member's tensor names, in the state-dict order ``save_pretrained`` writes them in."""
        saved, layout = self.saved, self._layouts["teacher"]
        head = saved.tied[0]
        other = {*layout.other, head} - ({head} if self._tied(plan) else set())
        before = sorted((n for n in other if _rank(saved.before, n)), key=lambda n: _rank(saved.before, n))
        after = sorted((n for n in other if _rank(saved.after, n)), key=lambda n: _rank(saved.after, n))
        suffixes = sorted(layout.layers[0], key=lambda n: _rank(saved.layer, n))
        layers = [f"{self.arch.layers}.{i}.{sfx}" for i in range(plan.n_layers) for sfx in suffixes]
        names = [*before, *layers, *after]
        if not saved.renamed:
            return names
        model_name = {f"{a}.{leaf}": f"{b}.{leaf}" for a, b in saved.renamed for leaf in LEAVES}
        return sorted(names, key=lambda n: natural_key(model_name.get(n, n)))

    def tensors(self, plan: PatchPlan) -> list[OutTensor]:
        """Every tensor of the member (in state-dict order) with its source."""
        self._check_plan(plan)
        views = {who: self._view(who) for who in ("teacher", "student")}
        out = []
        for name in self.names(plan):
            who, src = route(name, self.arch, plan.sources, plan.embed_source, plan.head_source)
            out.append(OutTensor(name, views[who][src], _ST_NAME[self.dtype]))
        return out

    def nbytes(self, plan: PatchPlan) -> int:
        return sum(t.nbytes for t in self.tensors(plan))

    def params(self, plan: PatchPlan) -> ParamCount:
        trainable = sum(t.ref.numel for t in self.tensors(plan))
        tied = self._layouts[plan.embed_source].other[self.saved.tied[1]].numel if self._tied(plan) else 0
        return ParamCount(trainable, trainable + tied)

    def config_json(self, plan: PatchPlan) -> str:
        """The member's config.json, as ``save_pretrained`` writes it for the transformers path."""
        self._check_plan(plan)
        d = plan_config(self.teacher.config, self.student.config, plan)
        d.update(
            dtype=self.dtype,
            architectures=[self.saved.model_class],
            transformers_version=transformers_version(),
        )
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def _write_configs(self, plan: PatchPlan, directory: Path) -> tuple[list[OutTensor], int]:
        tensors = self.tensors(plan)
        (directory / CONFIG).write_text(self.config_json(plan))
        (directory / GENERATION_CONFIG).write_bytes(self.teacher.snapshot.read_bytes(GENERATION_CONFIG))
        return tensors, sum(t.ref.numel for t in tensors)

    def _write_tokenizer(self, directory: Path) -> None:
        copy_tokenizer(self.teacher.path, directory, self.teacher.snapshot)


def _check_config(who: str, config: dict[str, Any], saved: Saved, version: str) -> None:
    """NotFast unless ``config`` is what ``save_pretrained`` of the installed transformers wrote for this class."""
    if config.get("transformers_version") != version:
        raise NotFast(
            f"the {who}'s config.json is from transformers {config.get('transformers_version')}, not {version}"
        )
    if config.get("architectures") != [saved.model_class]:
        raise NotFast(f"the {who} is not saved as a {saved.model_class}")
    if "quantization_config" in config or "auto_map" in config:
        raise NotFast(f"the {who} is quantized or uses remote code")
    if not isinstance(config.get("tie_word_embeddings"), bool):
        raise NotFast(f"the {who}'s config.json does not say whether its embeddings are tied")
    if config.get("dtype") not in DTYPE_NAMES.values():
        raise NotFast(
            f"the {who}'s config.json has no dtype of {', '.join(sorted(set(DTYPE_NAMES.values())))}"
        )


def _stored_dtype(teacher: RawCheckpoint, student: RawCheckpoint, dtype: Any) -> str:
    """The dtype the member is written in, when no tensor needs converting to it (else NotFast)."""
    wanted = dtype_name(dtype)
    td, sd = teacher.config["dtype"], student.config["dtype"]
    if wanted is None:
        wanted = common_dtype_name(td, sd)  # mixed: the student's tensors need converting (not fast)
    st = _ST_NAME.get(wanted)
    for ckpt in (teacher, student):
        if st is None or any(ref.dtype != st for ref in ckpt.entries.values()):
            raise NotFast(f"{ckpt.path} is not stored in {wanted}: writing it needs a dtype conversion")
    return wanted


def open_builder(
    teacher: str | os.PathLike,
    student: str | os.PathLike,
    layer_map: LayerMap | None = None,
    *,
    dtype: DType | None = None,
    trust_remote_code: bool = False,
    fast: bool | None = None,
) -> Builder:
    """The builder for a pair of local safetensors checkpoints.

    ``fast=None`` uses ``FastBuilder`` whenever it writes exactly what ``StreamBuilder`` writes, and
    ``StreamBuilder`` otherwise; ``True`` insists on the fast path (``NotFast`` says why it cannot); ``False``
    always uses ``StreamBuilder``.
    """
    if fast:
        return FastBuilder.create(teacher, student, layer_map, dtype=dtype)
    if fast is None:
        builder = FastBuilder.open(teacher, student, layer_map, dtype=dtype)
        if builder is not None:
            return builder
    from .stream import StreamBuilder

    return StreamBuilder(teacher, student, layer_map, dtype=dtype, trust_remote_code=trust_remote_code)


def stream_build(
    teacher: str | os.PathLike,
    student: str | os.PathLike,
    out: str | os.PathLike,
    plan: PatchPlan | None = None,
    *,
    num_patched: int | None = None,
    order: PatchOrder | None = None,
    patched: Iterable[int] | None = None,
    layer_map: LayerMap | None = None,
    dtype: DType | None = None,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    force: bool = False,
    progress: ProgressFn | None = None,
    trust_remote_code: bool = False,
    fast: bool | None = None,
) -> Path:
    """Write one intermediate model from two local safetensors checkpoints without loading either model.

    Give ``plan``, or ``num_patched`` with ``order`` (default: the order the student's config records, else
    ``last``), or an explicit ``patched`` set. The output directory is
    written atomically and holds config, generation config, tokenizer and (sharded) safetensors weights.
    ``fast`` chooses the builder (see ``open_builder``); both write the same bytes.
    """
    check_writable(out, force=force)
    parse_shard_size(max_shard_size)
    builder = open_builder(
        teacher, student, layer_map, dtype=dtype, trust_remote_code=trust_remote_code, fast=fast
    )
    if plan is None:
        plan = builder.plan(num_patched, order=order, patched=patched)
    builder.check_space(plan, out)
    with atomic_dir(out, force=force) as tmp:
        builder.write(plan, tmp, max_shard_size=max_shard_size, progress=progress)
    return Path(out)
