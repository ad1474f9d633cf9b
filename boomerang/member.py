"""One intermediate model written to disk (``boomerang build``, and the same from Python).

``build_member`` checks everything it can from configs first (the layer map, the order, the size), then writes
the member: streamed from the safetensors files when both checkpoints are local (without torch for canonical
ones, ``io.fastbuild``), else built in memory. A data-driven order loads both models for its search only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .analysis.resolve import check_order, check_order_data, resolve_order
from .core.arch import n_layers
from .core.configs import check_compatible
from .core.params import count_params
from .core.plan import BUILTIN_ORDERS, OrderSpec, PatchPlan, is_data_order, make_plan
from .errors import BoomerangError
from .family import ExportProgress
from .io.atomic import atomic_dir, check_writable, scratch_dir
from .io.checkpoints import dtype_name, is_local_safetensors
from .io.fastbuild import FastBuilder
from .io.order_files import save_order
from .io.safetensors_files import parse_shard_size
from .io.sidecar import read_layer_map

# Lazy imports: a streamed build of canonical checkpoints never imports torch or transformers, so the modules
# that do (loading, stream, orders, gguf_export, ...) are imported inside the functions that need them.
if TYPE_CHECKING:
    from .core.layermap import LayerMap
    from .core.params import ParamCount
    from .hints import DType


@dataclass(frozen=True)
class BuiltMember:
    """What ``build_member`` wrote: where, which member, its parameter counts and how it was written."""

    path: Path
    plan: PatchPlan
    counts: ParamCount
    how: str


def build_member(
    teacher: str,
    student: str,
    out: str | Path,
    *,
    num_patched: int | None = None,
    patched: Iterable[int] | None = None,
    order: OrderSpec | None = None,
    data: str | None = None,
    layer_map: LayerMap | None = None,
    dtype: DType = "auto",
    stream: bool | None = None,
    max_shard_size: str | int = "50GB",
    gguf: str | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    progress: ExportProgress | None = None,
) -> BuiltMember:
    """Write the member with ``num_patched`` layers patched under ``order`` (default: the order the student records,
    else ``last``; data-driven orders need ``data``), or the explicit set ``patched``, to ``out``: a checkpoint
    directory, or with ``gguf`` (a GGUF type) one GGUF file. ``stream``: None decides, True insists, False loads."""
    out = Path(out)
    if (num_patched is None) == (patched is None):
        raise BoomerangError("give exactly one of --num-patched K or --patch-layers i,j,...")
    check_order_data(order, data)
    check_writable(out, force=force, file=gguf is not None)
    dtype_name(dtype)
    parse_shard_size(max_shard_size)
    can_stream = is_local_safetensors(teacher) and is_local_safetensors(student)
    if stream and not can_stream:
        raise BoomerangError(
            "--stream needs the teacher and the student as local checkpoint directories with safetensors "
            "weights; drop --stream to build in memory"
        )
    data_order = num_patched is not None and is_data_order(order)
    if data_order and data is None:
        raise BoomerangError(f"order {order!r} is computed from calibration texts: pass --data PATH")
    src = _Sources(teacher, student, dtype, trust_remote_code, stream is not False and can_stream, data_order)
    resolved_map = src.layer_map(layer_map)
    plan_of = _planner(src, resolved_map, num_patched, patched, order, data)
    builder = src.stream_builder(resolved_map, insist=bool(stream))
    plan, patch_order = plan_of()
    if builder is not None:
        builder.check_space(plan, out)
        src.models = None  # streaming: the models were needed only for the search
    order_to_save = (
        patch_order if patch_order is not None and patch_order.name not in BUILTIN_ORDERS else None
    )

    def write(tmp: Path) -> tuple[ParamCount, str]:
        counts, how = _write(src, builder, plan, tmp, max_shard_size, progress)
        if order_to_save is not None:
            save_order(order_to_save, tmp / "order.json")
        return counts, how

    if gguf is None:
        with atomic_dir(out, force=force) as tmp:
            counts, how = write(tmp)
        return BuiltMember(out, plan, counts, how)
    from .io.gguf_export import export_gguf

    with scratch_dir(out, "member") as work:
        counts, how = write(work)
        export_gguf(work, out, type=gguf, name=out.stem, force=force)
    return BuiltMember(out, plan, counts, f"{how}, written as one {gguf} GGUF file")


class _Sources:
    """The teacher and student of one build: configs (and a byte-copying builder) first, models only if needed."""

    def __init__(
        self, teacher: str, student: str, dtype: DType, trust: bool, streamable: bool, data_order: bool
    ) -> None:
        self.teacher, self.student, self.dtype, self.trust = teacher, student, dtype, trust
        self.streamable = streamable
        self.models: tuple[Any, Any] | None = None
        self.in_memory_because = ""  # why a streamable pair is built in memory after all
        # canonical checkpoints stream without torch or transformers (the same bytes; see boomerang.io.fastbuild)
        self.fast = FastBuilder.open(teacher, student, dtype=dtype) if streamable and not data_order else None
        if self.fast is not None:
            self.tcfg, self.scfg = self.fast.teacher.config, self.fast.student.config
        else:
            from .io.loading import load_config

            self.tcfg = load_config(teacher, trust_remote_code=trust)
            self.scfg = load_config(student, trust_remote_code=trust)
            check_compatible(self.tcfg, self.scfg)

    def layer_map(self, given: LayerMap | None) -> LayerMap:
        layer_map = given if given is not None else read_layer_map(self.student, self.scfg)
        if layer_map is None:
            raise BoomerangError(
                f"cannot find the layer map of student {self.student}: it has no 'boomerang' config section and "
                "no student_config.json; pass layer_map=LayerMap.from_kept([...]) (on the command line: --layers)"
            )
        layer_map.check_fits(n_layers(self.tcfg), n_layers(self.scfg))
        return layer_map

    def stream_builder(self, layer_map: LayerMap, insist: bool) -> Any:
        if self.fast is not None or not self.streamable:
            return self.fast
        from .io.stream import StreamBuilder, StreamUnsupported

        try:
            return StreamBuilder(
                self.teacher, self.student, layer_map, dtype=self.dtype, trust_remote_code=self.trust
            )
        except StreamUnsupported as e:
            if insist:
                raise
            self.in_memory_because = str(e)
            return None

    def load(self) -> tuple[Any, Any]:
        if self.models is None:
            from .io.loading import load_pair

            self.models = load_pair(
                self.teacher, self.student, dtype=self.dtype, trust_remote_code=self.trust
            )
        return self.models


def _planner(
    src: _Sources,
    layer_map: LayerMap,
    num_patched: int | None,
    patched: Iterable[int] | None,
    order: OrderSpec | None,
    data: str | None,
) -> Any:
    """Check the member's size and order now (configs only); returns the step that makes its plan."""
    m = layer_map.n_student
    if num_patched is not None and not 0 <= num_patched <= m:
        raise BoomerangError(
            f"--num-patched {num_patched} is out of range: the student has {m} layers (K=0 student, K={m} "
            f"teacher), so give 0..{m}"
        )
    if patched is not None:
        explicit = [int(i) for i in patched]
        return lambda: (make_plan(layer_map, patched=explicit), None)
    check_order(order, layer_map, config=src.scfg)  # an order file or list fits this student?

    def plan() -> tuple[PatchPlan, Any]:
        if is_data_order(order):
            from .analysis.orders import default_texts
            from .data.blocks import calibration_ids
            from .io.loading import load_tokenizer

            teacher, student = src.load()
            tok = load_tokenizer(src.teacher, trust_remote_code=src.trust)
            ids = calibration_ids(data, tok, n=default_texts(str(order)))
            patch_order = resolve_order(order, layer_map, teacher=teacher, student=student, calibration=ids)
        else:
            patch_order = resolve_order(order, layer_map, config=src.scfg)
        return make_plan(layer_map, num_patched=num_patched, order=patch_order), patch_order

    return plan


def _write(
    src: _Sources,
    builder: Any,
    plan: PatchPlan,
    tmp: Path,
    max_shard_size: str | int,
    progress: ExportProgress | None,
) -> tuple[ParamCount, str]:
    """Write the member into the (empty) directory ``tmp``; returns its parameter counts and how."""
    if builder is not None:
        if progress is not None:
            progress.start(1, builder.nbytes(plan))
        builder.write(plan, tmp, max_shard_size=max_shard_size, progress=progress and progress.advance)
        return builder.params(plan), "streamed"
    from .core.patching import build
    from .io.loading import save_tokenizer

    teacher, student = src.load()
    model = build(teacher, student, plan)
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    save_tokenizer(tmp, src.teacher, trust_remote_code=src.trust)
    why = f": {src.in_memory_because}" if src.in_memory_because else ""
    return count_params(model), f"built in memory{why}"
