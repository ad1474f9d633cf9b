"""A whole family of sizes: one member (``patch``), zero-copy members in memory (``Family``) and on disk
(``export_family``).

Every member of a family is the student with some layers replaced by their teacher blocks, so every tensor of
every member is a tensor of the teacher or of the student. ``Family`` builds members on the meta device and hands
them the source tensors (``core.patching.build``): a member costs only its module objects, so holding all M+1 members
costs about the memory of teacher plus student, and getting one takes milliseconds. Each member has its own
module objects, so ``layer_idx``, attention types and KV caches are right for its depth.

Because members share tensors with the teacher, the student and each other, changing a tensor in place (training,
``model.half()`` on a member) changes it everywhere. Cast or move the whole family with ``Family.to``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .analysis.resolve import resolve_order
from .cards import CardInfo, sweep_files, sweep_scores, teacher_info, write_cards
from .core.layermap import LayerMap
from .core.params import FamilySize, distinct_sizes, family_table, plan_config, plan_params
from .core.plan import OrderSpec, PatchOrder, PatchPlan, is_data_order, make_plan
from .errors import BoomerangError
from .interrupts import check
from .io.atomic import atomic_dir, check_writable
from .io.checkpoints import expand_alias, is_local_safetensors, is_model_spec, tokenizer_nbytes
from .io.order_files import save_order
from .io.safetensors_files import DEFAULT_SHARD_SIZE
from .io.sidecar import student_layer_map
from .io.snapshot import hold_local, release

if TYPE_CHECKING:  # torch and transformers are imported only when a model is loaded or built
    import torch
    from transformers import PreTrainedModel

    from .hints import Calibration, ModelSpec

MANIFEST = "family.json"
CARD = "README.md"  # each member's model card, and the family's
ORDER_FILE = "order.json"
_MEMBER_OVERHEAD = 1 << 20  # config, generation config, index and safetensors headers, per member (generous)


def patch(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    layer_map: LayerMap | None = None,
    patched: Iterable[int] | PatchPlan | None = None,
    *,
    num_patched: int | None = None,
    order: str | PatchOrder | Sequence[int] | None = None,
    copy: bool = False,
) -> PreTrainedModel:
    """Replace student layers by their teacher blocks.

    Give either ``patched`` (any set of student layer indices) or ``num_patched=K`` with ``order`` ("last" or
    "first", or a PatchOrder; default: the order the student's config records, else "last"). K = 0 is the
    student and K = M the teacher. The result shares tensors with ``teacher`` and ``student`` unless ``copy=True``.
    """
    from .core.patching import build

    if isinstance(patched, PatchPlan):
        plan = patched
    else:
        layer_map = layer_map or student_layer_map(student)
        patch_order = None if patched is not None else resolve_order(order, layer_map, config=student.config)
        plan = make_plan(layer_map, num_patched=num_patched, order=patch_order, patched=patched)
    return build(teacher, student, plan, copy=copy)


class Family:
    """All sizes between a student and its teacher, sharing the two models' tensors.

    ``teacher`` and ``student`` are loaded models or checkpoint paths (loaded with ``dtype``). ``layer_map``
    defaults to the one the student carries. ``order`` is the default patch order for ``member(K)``: by default
    the order the student's config records (``init`` writes the recipe's ``patch_order``), else ``last``.
    """

    def __init__(
        self,
        teacher: PreTrainedModel | str | os.PathLike,
        student: PreTrainedModel | str | os.PathLike,
        layer_map: LayerMap | None = None,
        *,
        order: OrderSpec | None = None,
        dtype: str | torch.dtype | None = None,
        tokenizer: Any = None,
        calibration: Any = None,
        trust_remote_code: bool = False,
    ) -> None:
        from .core.patching import check_pair
        from .io.loading import load_pair, load_tokenizer

        self.snapshots = hold_local(teacher, student)  # read once: rewritten meanwhile is a clear stop
        self.sources: dict[str, str | None] = {
            role: str(spec) if is_model_spec(spec) else getattr(spec, "name_or_path", None) or None
            for role, spec in (("teacher", teacher), ("student", student))
        }
        # one common dtype (a bf16 student beside an fp32 teacher)
        self.teacher, self.student = load_pair(
            teacher, student, dtype=dtype, trust_remote_code=trust_remote_code
        )
        # where the tokenizer's files are, if it was loaded from the teacher's checkpoint (exports copy them)
        self.tokenizer_source: str | None = None
        if tokenizer is None and is_model_spec(teacher):
            tokenizer = load_tokenizer(teacher, trust_remote_code=trust_remote_code)
            self.tokenizer_source = str(teacher)
        self.tokenizer = tokenizer
        self.layer_map: LayerMap = layer_map or student_layer_map(self.student)
        self.arch = check_pair(self.teacher, self.student, self.layer_map)
        self.calibration = calibration
        self._orders: dict[Any, PatchOrder] = {}
        self._members: dict[tuple[Any, ...], PreTrainedModel] = {}
        self.default_order = self.order(order)

    # ---- sizes and orders ----------------------------------------------------------------------------------
    @property
    def n_student(self) -> int:
        """M: the student's layer count (members K = 0..M in most orders)."""
        return self.layer_map.n_student

    @property
    def ks(self) -> list[int]:
        """The members K of the default order: 0..M, or one per distinct size for an order by size."""
        return list(range(self.default_order.n_members))

    @property
    def sizes(self) -> list[FamilySize]:
        """The family's distinct sizes, smallest first: layer count and parameters (patching a single-layer
        block changes no size, so a student with such blocks has fewer distinct sizes than M + 1)."""

        return distinct_sizes(self.teacher.config, self.student.config, self.layer_map)

    def __len__(self) -> int:
        return self.default_order.n_members

    def __getitem__(self, k: int) -> PreTrainedModel:
        return self.member(k)

    def order(
        self,
        order: OrderSpec | None = None,
        *,
        data: str | os.PathLike | Sequence[str] | None = None,
        calibration: Calibration | None = None,
        **options: Any,
    ) -> PatchOrder:
        """Resolve (and remember) a patch order: a name, a JSON file, a sequence of student layers or a PatchOrder.

        Data-driven orders (``similarity``, ``greedy-kl``, ``optimal``) need ``calibration`` token ids, or
        ``data`` (a text source for ``boomerang.data.calibration_ids``), or the Family's ``calibration``.
        """
        if order is None and "default_order" in vars(self):
            return self.default_order
        if isinstance(order, os.PathLike):  # a saved order file
            order = os.fspath(order)
        key = order if order is None or isinstance(order, str) else ("sequence", *order)
        if isinstance(order, PatchOrder):
            key = None
        if key in self._orders and not options and data is None and calibration is None:
            return self._orders[key]
        ids = calibration if calibration is not None else self.calibration
        if is_data_order(order) and ids is None and data is not None:
            ids = self._calibration(data, str(order))
        patch_order = resolve_order(
            order,
            self.layer_map,
            config=self.student.config,
            teacher=self.teacher,
            student=self.student,
            calibration=ids,
            **options,
        )
        if key is not None:
            self._orders[key] = patch_order
        return patch_order

    def _calibration(self, data: Any, order: str = "") -> Any:
        from .analysis.orders import default_texts
        from .data.blocks import calibration_ids

        if self.tokenizer is None:
            raise BoomerangError(
                "this Family has no tokenizer: pass tokenizer=... (or calibration token ids)"
            )
        return calibration_ids(data, self.tokenizer, n=default_texts(order))

    def plan(
        self, k: int | None = None, *, order: OrderSpec | None = None, patched: Iterable[int] | None = None
    ) -> PatchPlan:
        """The plan of one member: size ``k`` under ``order``, or the explicit set ``patched``."""
        if patched is not None:
            if k is not None:
                raise BoomerangError("give either a size K or an explicit set of patched layers, not both")
            return make_plan(self.layer_map, patched=patched)
        if k is None:
            raise BoomerangError("give a size K (0..M) or patched={...}")
        return make_plan(self.layer_map, num_patched=k, order=self.order(order))

    # ---- members ---------------------------------------------------------------------------------------------
    def member(
        self,
        k: int | None = None,
        *,
        order: OrderSpec | None = None,
        patched: Iterable[int] | None = None,
        plan: PatchPlan | None = None,
    ) -> PreTrainedModel:
        """A ready model of size ``k`` (or with the explicit ``patched`` set), sharing the family's tensors.

        Members are remembered: asking again for the same layers returns the same object.
        """
        from .core.patching import build

        if plan is None:
            plan = self.plan(k, order=order, patched=patched)
        elif plan.layer_map != self.layer_map:
            raise BoomerangError("the plan's layer map is not this family's")
        key = (plan.patched, plan.order, plan.embed_override)
        model = self._members.get(key)
        if model is None:
            model = build(self.teacher, self.student, plan)
            self._members[key] = model
        return model

    def members(
        self, order: OrderSpec | None = None, sizes: Iterable[int] | None = None
    ) -> dict[int, PreTrainedModel]:
        """``{K: model}`` for every size (or the chosen ``sizes``) under ``order``."""
        patch_order = self.order(order)
        return {k: self.member(k, order=patch_order) for k in check_sizes(sizes, self.n_student, patch_order)}

    def table(self, order: OrderSpec | None = None) -> list[dict[str, Any]]:
        """One row per size: K, patched student layers, layer count, trainable and inference parameters."""

        return family_table(self.teacher.config, self.student.config, self.layer_map, self.order(order))

    def clear(self) -> None:
        """Forget the remembered members (their memory is freed once nothing else refers to them)."""
        self._members.clear()

    def to(self, *args: object, **kwargs: object) -> Family:
        """Move or cast teacher and student (like ``nn.Module.to``); members are rebuilt on next use."""
        self.teacher.to(*args, **kwargs)
        self.student.to(*args, **kwargs)
        self.clear()
        return self

    def export(
        self,
        out: str | os.PathLike,
        *,
        order: OrderSpec | None = None,
        sizes: Iterable[int] | None = None,
        max_shard_size: int | str = DEFAULT_SHARD_SIZE,
        force: bool = False,
        progress: ExportProgress | None = None,
        gguf: str | None = None,
        card: CardOptions | None = None,
    ) -> Path:
        """Write members as checkpoint directories with ``family.json``, ``order.json`` and model cards (and, with
        ``gguf`` = f32/f16/bf16/q8_0, each member as one GGUF file too); see ``export_family``."""
        from .io.stream import parse_shard_size

        parse_shard_size(max_shard_size)
        patch_order = self.order(order)
        writer = _MemoryWriter(self, max_shard_size)
        chosen = check_sizes(sizes, self.n_student, patch_order)
        return _export(writer, out, patch_order, chosen, force=force, progress=progress, gguf=gguf, card=card)

    def __repr__(self) -> str:
        return (
            f"Family({self.arch.model_type}, {self.layer_map.describe()}, order={self.default_order.name!r}, "
            f"{len(self._members)} members built)"
        )


def check_sizes(sizes: Iterable[int] | None, m: int, order: PatchOrder | None = None) -> list[int]:
    """The chosen members K (all by default), each checked: 0..M, or 0..n-1 for an order by size of n sizes."""
    last = order.n_members - 1 if order is not None else m
    if sizes is None:
        return list(range(last + 1))
    chosen = sorted(set(int(k) for k in sizes))
    bad = [k for k in chosen if not 0 <= k <= last]
    if bad:
        what = (
            f"order {order.name!r} has {last + 1} sizes"
            if order is not None and order.by_size
            else (f"the student has {m} layers")
        )
        raise BoomerangError(f"sizes {bad} are out of range: {what}, so K is 0..{last}")
    if not chosen:
        raise BoomerangError("no sizes chosen; give e.g. --sizes 0,4,8")
    return chosen


# ---- export ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardOptions:
    """What the model cards of an export say beyond the members themselves (each field: None finds it out).

    ``name`` titles the cards (default: the teacher's name + ``-boomerang``); ``base_model`` is the teacher's Hub id
    and ``license`` its licence (default: ``cards.teacher_info``); ``sweeps`` are sweep results (``results.json``
    or their directories) whose measurements the cards show (default: a run's ``sweeps/`` folder near the student,
    see ``cards.sweep_files``).
    """

    name: str | None = None
    base_model: str | None = None
    license: str | None = None
    sweeps: tuple[str, ...] | None = None


class ExportProgress:
    """Hooks an exporter calls; the default does nothing (the CLI shows progress bars)."""

    def start(self, members: int, nbytes: int) -> None: ...

    def member(self, k: int, name: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def done_member(self) -> None: ...

    def resumed(self, k: int, name: str) -> None:
        """Member ``k`` was already written completely by an interrupted run of the same export."""


class _Writer:
    """One way of writing members: streamed from disk, or saved from memory."""

    teacher_config: Any
    student_config: Any
    layer_map: LayerMap
    dtype: torch.dtype
    teacher: str | None
    student: str | None
    tokenizer_bytes: int = 0
    mode: str

    def write(self, plan: PatchPlan, directory: Path, progress: ExportProgress, nbytes: int) -> list[str]:
        """Write one member into ``directory``; returns the file names written."""
        raise NotImplementedError


class _StreamWriter(_Writer):
    mode = "stream"

    def __init__(self, builder: Any, max_shard_size: int | str) -> None:
        self.builder, self.max_shard_size = builder, max_shard_size
        self.teacher_config, self.student_config = builder.teacher.config, builder.student.config
        self.layer_map, self.dtype = builder.layer_map, builder.dtype
        self.teacher, self.student = str(builder.teacher.path), str(builder.student.path)
        self.tokenizer_bytes = tokenizer_nbytes(builder.teacher.path)

    def write(self, plan: PatchPlan, directory: Path, progress: ExportProgress, nbytes: int) -> list[str]:
        self.builder.write(plan, directory, max_shard_size=self.max_shard_size, progress=progress.advance)
        return sorted(p.name for p in directory.iterdir())


class _MemoryWriter(_Writer):
    mode = "memory"

    def __init__(self, family: Family, max_shard_size: int | str) -> None:
        self.family, self.max_shard_size = family, max_shard_size
        self.teacher_config, self.student_config = family.teacher.config, family.student.config
        self.layer_map, self.dtype = family.layer_map, family.teacher.dtype
        self.teacher, self.student = family.sources["teacher"], family.sources["student"]
        src = family.sources["teacher"]
        self.tokenizer_bytes = tokenizer_nbytes(src) if src else 0

    def write(self, plan: PatchPlan, directory: Path, progress: ExportProgress, nbytes: int) -> list[str]:
        from .io.loading import save_tokenizer

        model = self.family.member(plan=plan)
        model.save_pretrained(directory, max_shard_size=self.max_shard_size)
        if self.family.tokenizer is not None:
            save_tokenizer(directory, self.family.tokenizer_source, self.family.tokenizer)
        for snap in self.family.snapshots:  # the tokenizer files are read now: still the loaded version?
            snap.verify()
        progress.advance(nbytes)
        return sorted(p.name for p in directory.iterdir())


def member_dir(k: int, plan: PatchPlan, m: int) -> str:
    """``K05-22layers``: the size and the layer count of a member (K zero-padded so that names sort)."""
    return f"K{k:0{max(2, len(str(m)))}d}-{plan.n_layers}layers"


def _export(
    writer: _Writer,
    out: str | os.PathLike,
    order: PatchOrder,
    sizes: list[int],
    *,
    force: bool,
    progress: ExportProgress | None,
    resume: Any = None,
    gguf: str | None = None,
    card: CardOptions | None = None,
) -> Path:
    """Write the members; with ``resume`` (a key naming the sources and settings), members that a killed run of
    the same export completed are kept, so the export continues member by member."""
    from .io.gguf_export import check_config, check_type, gguf_nbytes
    from .io.stream import check_free_space, checkpoint_nbytes

    out = check_writable(out, force=force)
    progress = progress or ExportProgress()
    layer_map = writer.layer_map
    if gguf is not None:
        check_type(gguf)
        check_config(_config_dict(writer.teacher_config), "the teacher")
    plans = {k: PatchPlan(layer_map=layer_map, patched=order.patched(k), order=order.name) for k in sizes}
    weights = {
        k: checkpoint_nbytes(plan_config(writer.teacher_config, writer.student_config, p), writer.dtype)
        for k, p in plans.items()
    }
    counts = {k: plan_params(writer.teacher_config, writer.student_config, p) for k, p in plans.items()}
    gguf_bytes = {k: gguf_nbytes(c.trainable, gguf) if gguf else 0 for k, c in counts.items()}
    manifest = _manifest(writer, order, card, gguf)
    manifest["members"] = [{"K": k, "patched_student_layers": list(p.patched)} for k, p in plans.items()]
    card = card or CardOptions()
    files, explicit = sweep_files(list(card.sweeps) if card.sweeps else None, writer.student)
    scores = sweep_scores(files, manifest, explicit=explicit)  # a named sweep of another family fails here
    need = sum(weights.values()) + sum(gguf_bytes.values())
    need += len(plans) * (writer.tokenizer_bytes * (2 if gguf else 1) + _MEMBER_OVERHEAD)
    check_free_space(
        out,
        need,
        f"the {len(plans)} family members",
        "Export fewer sizes (--sizes), write a smaller dtype (--dtype bfloat16) or choose another --out.",
    )
    rows = []
    progress.start(len(plans), sum(weights.values()) + sum(gguf_bytes.values()))
    if resume is not None:
        resume = {**resume, "order": order.to_json(), "sizes": sizes, "writer": writer.mode, "gguf": gguf}
    with atomic_dir(out, force=force, resume=resume) as tmp:
        for k, plan in plans.items():
            check()
            row = _write_member(writer, tmp, k, plan, progress, weights[k], counts[k].as_dict())
            if gguf is not None:
                row["gguf"] = _write_gguf(tmp, row["dir"], gguf, manifest, progress)
            if k in scores:
                row["scores"] = scores[k]
            rows.append(row)
            progress.done_member()
        save_order(order, tmp / ORDER_FILE)
        manifest["members"] = rows
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        write_cards(tmp, manifest)
    return out


def _write_member(
    writer: _Writer,
    tmp: Path,
    k: int,
    plan: PatchPlan,
    progress: ExportProgress,
    nbytes: int,
    params: dict[str, int],
) -> dict[str, Any]:
    """Member ``k``'s directory in the export's temporary directory (kept if an interrupted run finished it),
    and its row of ``family.json``."""
    name = member_dir(k, plan, plan.layer_map.n_student)
    progress.member(k, name)
    # a member's directory exists only once complete: one there was finished by an interrupted run
    if (tmp / name).is_dir():
        progress.resumed(k, name)
        progress.advance(nbytes)
        files = sorted(p.name for p in (tmp / name).iterdir())
    else:
        with atomic_dir(tmp / name) as member:
            files = writer.write(plan, member, progress, nbytes)
    return {
        "K": k,
        "dir": name,
        "n_layers": plan.n_layers,
        "patched_student_layers": list(plan.patched),
        "layer_sources": [[who, j] for who, j in plan.sources],
        "teacher_layers": plan.teacher_layers,
        "embedding_from": plan.embed_source,
        "head_from": plan.head_source,
        "params": params,
        "weights_bytes": nbytes,
        "files": sorted({*files, CARD}),
    }


def _config_dict(config: Any) -> dict[str, Any]:
    """A config object or a ``config.json`` dict, as a dict."""
    return config if isinstance(config, dict) else config.to_dict()


def _manifest(
    writer: _Writer, order: PatchOrder, card: CardOptions | None, gguf: str | None
) -> dict[str, Any]:
    """``family.json`` without its members."""

    card = card or CardOptions()
    found = teacher_info(writer.teacher) if card.base_model is None or card.license is None else CardInfo()
    info = CardInfo(card.base_model or found.base_model, card.license or found.license)
    layer_map = writer.layer_map
    return {
        "format": "boomerang-family",
        "version": 1,
        "boomerang_version": _version(),
        "name": card.name or family_name(info.base_model or writer.teacher),
        "teacher": writer.teacher,
        "student": writer.student,
        "model_type": _config_dict(writer.teacher_config)["model_type"],
        "dtype": str(writer.dtype).removeprefix("torch."),
        "written": writer.mode,
        "formats": ["safetensors", *(["gguf"] if gguf else [])],
        "gguf_type": gguf,
        "card": info.to_json(),
        "layer_map": layer_map.to_json(),
        "n_teacher": layer_map.n_teacher,
        "n_student": layer_map.n_student,
        "order": {"name": order.name, "file": ORDER_FILE, "sequence": order.sequence},
        "members": [],
    }


def family_name(teacher: str | None) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` -> ``SmolLM2-135M-Instruct-boomerang``."""
    base = Path(str(teacher or "model").rstrip("/")).name or "model"
    return f"{base.removesuffix('.gguf')}-boomerang"


def _write_gguf(
    tmp: Path, member: str, type: str, manifest: dict[str, Any], progress: ExportProgress
) -> dict:
    """A member's GGUF file in the export's ``gguf/`` folder (kept if an interrupted run finished it)."""
    from .io.gguf_export import GGUF_DIR, export_gguf, gguf_name

    rel = f"{GGUF_DIR}/{gguf_name(member, type)}"
    path = tmp / rel
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        export_gguf(
            tmp / member,
            path,
            type=type,
            name=f"{manifest['name']} {member}",
            license=manifest["card"]["license"],
            progress=progress.advance,
        )
        release(tmp / member)  # our own output, read back: its card is written next, not a concurrent change
    else:
        progress.advance(path.stat().st_size)
    return {"file": rel, "type": type, "bytes": path.stat().st_size}


def _version() -> str:
    return __version__


def export_family(
    teacher: str | os.PathLike | PreTrainedModel,
    student: str | os.PathLike | PreTrainedModel,
    out: str | os.PathLike,
    *,
    layer_map: LayerMap | None = None,
    order: OrderSpec | None = None,
    sizes: Iterable[int] | None = None,
    data: str | os.PathLike | Sequence[str] | Calibration | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    stream: bool | None = None,
    force: bool = False,
    progress: ExportProgress | None = None,
    trust_remote_code: bool = False,
    gguf: str | None = None,
    card: CardOptions | None = None,
) -> Path:
    """Write every member (or the chosen ``sizes``) of a family as its own checkpoint directory under ``out``, with
    ``family.json``, ``order.json`` and a model card (README.md) for the family and for each member.

    With two local safetensors checkpoints the members are streamed from disk (``stream=None`` decides; ``True``
    insists, ``False`` loads both models). Data-driven orders need ``data``: a text source (tokenised into calibration
    blocks) or calibration token ids (``[n, length]``, a tensor or lists of ints).
    ``order`` defaults to the order the student's config records, else ``last``. ``gguf`` (f32, f16, bf16 or q8_0)
    also writes each member as one GGUF file for llama.cpp, ``gguf/K05-22layers.f16.gguf``
    (``boomerang.io.gguf_export``). ``card`` sets what the cards say (``CardOptions``).
    """
    from .io.stream import parse_shard_size

    calibration, data = (data, None) if _is_token_ids(data) else (None, data)
    check_writable(out, force=force)
    parse_shard_size(max_shard_size)
    if gguf is not None:
        check_gguf_teacher(teacher, gguf, trust_remote_code=trust_remote_code)
    if is_data_order(order) and data is None and calibration is None:
        raise BoomerangError(
            f"order {order!r} is computed from calibration texts: pass --data PATH (data=...)"
        )
    on_disk = is_model_spec(teacher) and is_model_spec(student)
    can = on_disk and is_local_safetensors(teacher) and is_local_safetensors(student)  # type: ignore[arg-type]
    if stream and not can:
        raise BoomerangError(
            "streaming needs the teacher and the student as local checkpoint directories with safetensors weights"
        )
    builder = _stream_builder(teacher, student, layer_map, dtype, stream, trust_remote_code) if can else None
    writer: _Writer
    if builder is not None:
        patch_order = _streamed_export_order(builder, order, data, calibration, trust_remote_code)
        key = _resume_key(teacher, student, builder.layer_map, builder.dtype, max_shard_size)  # type: ignore[arg-type]
        writer, n_student = _StreamWriter(builder, max_shard_size), builder.layer_map.n_student
    else:
        family = Family(
            teacher,
            student,
            layer_map,
            dtype=dtype,
            calibration=calibration,
            trust_remote_code=trust_remote_code,
        )
        patch_order = family.order(order, data=data)
        if not on_disk:
            return family.export(
                out, order=patch_order, sizes=sizes, max_shard_size=max_shard_size, force=force, progress=progress,
                gguf=gguf, card=card,
            )  # fmt: skip
        key = _resume_key(teacher, student, family.layer_map, family.teacher.dtype, max_shard_size)  # type: ignore[arg-type]
        writer, n_student = _MemoryWriter(family, max_shard_size), family.n_student
    chosen = check_sizes(sizes, n_student, patch_order)
    return _export(
        writer, out, patch_order, chosen, force=force, progress=progress, resume=key, gguf=gguf, card=card
    )


def _is_token_ids(data: Any) -> bool:
    """Calibration token ids (a tensor, or lists of ints) rather than a text source (a path, name or texts)."""
    if hasattr(data, "dim"):
        return True
    return (
        isinstance(data, Sequence)
        and not isinstance(data, str)
        and bool(data)
        and not isinstance(data[0], str)
    )


def _stream_builder(
    teacher: Any,
    student: Any,
    layer_map: LayerMap | None,
    dtype: Any,
    stream: bool | None,
    trust_remote_code: bool,
) -> Any:
    """A stream builder of two local safetensors checkpoints, or None where streaming is off or unsupported
    (``stream=True`` insists: unsupported is then an error)."""
    from .io.stream import StreamBuilder, StreamUnsupported

    if stream is False:
        return None
    try:
        return StreamBuilder(teacher, student, layer_map, dtype=dtype, trust_remote_code=trust_remote_code)
    except StreamUnsupported:
        if stream:
            raise
        return None


def check_gguf_teacher(teacher: ModelSpec, gguf: str, *, trust_remote_code: bool = False) -> list[str]:
    """Fail before any work if a family of ``teacher`` cannot be written as GGUF files of type ``gguf``: the type,
    the architecture and (for a local checkpoint directory) the tokenizer. Returns notes to show the user."""
    from .io.gguf_export import check_export, check_type

    check_type(gguf)
    if not is_model_spec(teacher):
        return check_export(_config_dict(teacher.config))
    from .io.loading import load_config

    config = _config_dict(load_config(teacher, trust_remote_code=trust_remote_code))
    local = Path(expand_alias(teacher)).expanduser()
    return check_export(config, local if local.is_dir() else None)


def _resume_key(
    teacher: str | os.PathLike, student: str | os.PathLike, layer_map: LayerMap, dtype: Any, shard: Any
) -> dict[str, Any]:
    """What an export from checkpoint paths depends on: the files of both (names, sizes, times) and settings."""

    def files(spec: str | os.PathLike) -> Any:
        path = Path(expand_alias(spec)).expanduser()
        if not path.is_dir():
            return str(spec)
        stats = [(f.name, f.stat()) for f in sorted(path.iterdir()) if f.is_file()]
        return {"path": str(path.resolve()), "files": [[n, st.st_size, st.st_mtime_ns] for n, st in stats]}

    return {
        "teacher": files(teacher),
        "student": files(student),
        "layer_map": layer_map.to_json(),
        "dtype": str(dtype),
        "max_shard_size": str(shard),
        "version": _version(),
    }


def _streamed_export_order(
    builder: Any, order: OrderSpec | None, data: Any, calibration: Any, trust_remote_code: bool
) -> PatchOrder:
    """The order of a streamed export: a data-driven one loads both models just for the search."""
    layer_map, config = builder.layer_map, builder.student.config
    if not is_data_order(order):
        return resolve_order(order, layer_map, config=config)
    from .io.loading import load_model

    teacher = load_model(builder.teacher.path, dtype=builder.dtype, trust_remote_code=trust_remote_code)
    student = load_model(builder.student.path, dtype=builder.dtype, trust_remote_code=trust_remote_code)
    if calibration is None and data is not None:
        from .analysis.orders import default_texts
        from .data.blocks import calibration_ids

        calibration = calibration_ids(data, builder.tokenizer, n=default_texts(str(order)))
    try:
        return resolve_order(order, layer_map, teacher=teacher, student=student, calibration=calibration)
    finally:
        del teacher, student


def load_family(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a family's ``family.json`` manifest."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BoomerangError(f"cannot read {path}: {e}") from None
