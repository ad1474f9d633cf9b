"""Out-of-core building: write an intermediate checkpoint straight from the teacher's and student's safetensors.

Neither model is instantiated. The checkpoints' headers say where every tensor's bytes are; the output's exact
tensor set comes from a weightless (meta-device) model of the output config, with tied duplicates dropped the way
``save_pretrained`` drops them; ``patching.route`` says which input tensor each output tensor is. Tensors are copied
byte-for-byte (``copy_file_range``) or, when the dtype changes, read one at a time, converted and written. Peak
memory is about the largest tensor, whatever the model size, and the result is bit-identical to the in-memory
``patch(...)`` followed by ``save_pretrained`` (same files, same bytes).

Input keys are mapped to model names with transformers' own loading rules (``rename_source_key``), so checkpoints
without the base-model prefix (the original GPT-2's ``h.0...``), legacy names (``LayerNorm.gamma``) and renamed
heads (GPT-NeoX's ``embed_out``) are read exactly as ``from_pretrained`` reads them.
"""

from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .arch import FOREIGN_STUDENTS, Arch, n_layers
from .atomic import atomic_dir, check_writable
from .configs import check_compatible
from .encoders import bert_names, synthesized
from .errors import BoomerangError
from .layermap import LayerMap, read_layer_map
from .params import meta_model
from .plan import PatchOrder, PatchPlan, make_plan

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = "50GB"  # transformers' save_pretrained default, so both paths write the same files

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
_MAX_HEADER = 100_000_000
_CHUNK = 64 << 20

ProgressFn = Callable[[int], None]  # called with the number of bytes just written


class StreamUnsupported(BoomerangError):
    """The checkpoints can be built in memory, but not streamed (e.g. the model needs weight conversions)."""


# ---- reading safetensors lazily ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are (``file``/``start``), or how to make it (``make``) if no file holds it."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path | None = None
    key: str = ""
    start: int = 0
    make: Callable[[], torch.Tensor] | None = None

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * _itemsize(self.dtype)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _corrupt(path: Path, reason: str) -> BoomerangError:
    return BoomerangError(
        f"cannot load the model in {path.parent}: {path.name} is not a valid safetensors file ({reason})"
    )


def read_header(path: str | os.PathLike) -> dict[str, TensorRef]:
    """Every tensor in one safetensors file, without reading any tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, "shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise _corrupt(path, f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except OSError as e:
        raise BoomerangError(f"cannot read {path}: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"unreadable header: {e}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    base, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorRef] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad entry for tensor {key!r}: {info!r}") from None
        ref = TensorRef(dtype=dtype, shape=shape, file=path, key=key, start=base + begin)
        if not 0 <= begin <= end <= data_size or end - begin != ref.nbytes:
            raise _corrupt(path, f"tensor {key!r} lies outside the file (the file may be truncated)")
        out[key] = ref
    return out


def is_local_safetensors(spec: str | os.PathLike) -> bool:
    """True for a local checkpoint directory with a config and safetensors weights (single-file or sharded)."""
    from .loading import expand_alias

    path = Path(expand_alias(spec)).expanduser()
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and ((path / WEIGHTS).is_file() or (path / INDEX).is_file())
    )


def _weight_files(path: Path) -> tuple[list[Path], dict[str, Any]]:
    if (path / INDEX).is_file():
        try:
            index = json.loads((path / INDEX).read_text())
            files = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BoomerangError(f"cannot load the model in {path}: unreadable {INDEX} ({e})") from None
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise BoomerangError(f"cannot load the model in {path}: shard files {missing} are missing")
        return [path / f for f in files], index.get("metadata") or {}
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS], {}
    raise StreamUnsupported(f"{path} has no {WEIGHTS} or {INDEX}; streaming needs safetensors weights")


def _conversions(model: Any) -> tuple[list[Any], list[Any]]:
    """transformers' key renamings and weight converters for a model class (as ``from_pretrained`` uses them)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    mapping = get_model_conversion_mapping(model)
    return (
        [m for m in mapping if isinstance(m, WeightRenaming)],
        [m for m in mapping if isinstance(m, WeightConverter)],
    )


class Checkpoint:
    """A local safetensors checkpoint opened lazily: its config, and where every tensor's bytes are."""

    def __init__(self, path: str | os.PathLike, *, trust_remote_code: bool = False) -> None:
        from .loading import expand_alias, load_config

        self.path = Path(expand_alias(path)).expanduser()
        if not self.path.exists():
            raise BoomerangError(f"{path} does not exist")
        self.config = load_config(self.path, trust_remote_code=trust_remote_code)
        self.files, self.index_metadata = _weight_files(self.path)
        self.entries: dict[str, TensorRef] = {}
        for f in self.files:
            self.entries.update(read_header(f))
        self._named: dict[str, TensorRef] | None = None
        self._meta: Any = None

    @property
    def meta(self) -> Any:
        """A weightless model of this checkpoint's own class."""
        if self._meta is None:
            self._meta = meta_model(self.config)
        return self._meta

    @property
    def dtype(self) -> torch.dtype:
        """The dtype ``from_pretrained(..., dtype="auto")`` (its default) loads this checkpoint in."""
        from .loading import parse_dtype

        cfg_dtype = getattr(self.config, "dtype", None)
        if cfg_dtype is not None:
            return cfg_dtype if isinstance(cfg_dtype, torch.dtype) else parse_dtype(str(cfg_dtype))
        if "dtype" in self.index_metadata:
            return parse_dtype(str(self.index_metadata["dtype"]))
        first = read_header(self.files[0])
        floats = [first[k].dtype for k in sorted(first) if first[k].dtype.is_floating_point]
        return floats[0] if floats else torch.get_default_dtype()

    def named(self) -> dict[str, TensorRef]:
        """Tensors under the model class's own state-dict names, renamed exactly as ``from_pretrained`` does."""
        if self._named is not None:
            return self._named
        from transformers.core_model_loading import dot_natural_key, rename_source_key

        meta = self.meta
        expected = meta.state_dict()
        renamings, converters = _conversions(meta)
        prefix = meta.base_model_prefix
        out: dict[str, TensorRef] = {}
        for key in sorted(self.entries, key=dot_natural_key):
            name, pattern = rename_source_key(key, renamings, converters, prefix, expected)
            if name not in expected and key in expected:
                name, pattern = rename_source_key(
                    key, [], [], base_model_prefix=prefix, meta_state_dict=expected
                )
            if name not in expected:
                continue  # unused keys (e.g. GPT-2's old attention-mask buffers) are ignored, as on load
            if pattern is not None:
                raise StreamUnsupported(
                    f"{self.path}: tensor {key!r} needs a weight conversion when loaded; it cannot be streamed"
                )
            out.setdefault(name, self.entries[key])
        # tied parameters are stored once: every name of a tied group can be served by whichever one is on disk
        groups: dict[int, list[str]] = defaultdict(list)
        for name, p in meta.named_parameters(remove_duplicate=False):
            groups[id(p)].append(name)
        for names in groups.values():
            have = [n for n in names if n in out]
            for n in names:
                if n not in out and have:
                    out[n] = out[have[0]]
        self._named = out
        return out

    def canonical(self, arch: Arch, teacher_config: Any) -> dict[str, TensorRef]:
        """Tensors under the teacher architecture's names (a DistilBERT student is renamed into BERT's layout)."""
        named = self.named()
        kind = self.config.model_type
        if kind == arch.model_type:
            return named
        if (arch.model_type, kind) not in FOREIGN_STUDENTS:
            raise BoomerangError(f"cannot use a {kind} model with a {arch.model_type} teacher")
        out = {new: ref for name, ref in named.items() for new in bert_names(name)}
        ref = out["bert.embeddings.word_embeddings.weight"]
        for name, make in synthesized(teacher_config).items():
            shape = make(torch.empty(0, dtype=ref.dtype, device="meta"))
            out[name] = TensorRef(
                dtype=shape.dtype,
                shape=tuple(shape.shape),
                key=f"<synthesized {name}>",
                make=lambda make=make, dt=ref.dtype: make(torch.empty(0, dtype=dt)),
            )
        return out


# ---- writing safetensors incrementally ---------------------------------------------------------------------


@dataclass(frozen=True)
class OutTensor:
    name: str  # name in the output file
    ref: TensorRef
    dtype: torch.dtype  # dtype written (the ref's dtype, or the conversion target)

    @property
    def nbytes(self) -> int:
        return _numel(self.ref.shape) * _itemsize(self.dtype)


def _file_order(tensors: Sequence[OutTensor]) -> list[OutTensor]:
    """The order safetensors' ``save_file`` lays tensors out in (asked of safetensors itself, with empty tensors)."""
    from safetensors.torch import save

    blob = save({t.name: torch.empty(0, dtype=t.dtype) for t in tensors})
    (n,) = struct.unpack("<Q", blob[:8])
    order = [k for k in json.loads(blob[8 : 8 + n]) if k != "__metadata__"]
    by_name = {t.name: t for t in tensors}
    return [by_name[k] for k in order]


def _header(tensors: Sequence[OutTensor], metadata: dict[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": ST_NAMES[t.dtype],
            "shape": list(t.ref.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_bytes(src: Path, start: int, count: int, out_fd: int) -> None:
    """Append ``count`` bytes at ``start`` of ``src`` to ``out_fd`` (inside the kernel when possible)."""
    with open(src, "rb") as f:
        in_fd = f.fileno()
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < count:
                    n = os.copy_file_range(in_fd, out_fd, min(count - done, 1 << 30), start + done)
                    if n == 0:
                        break
                    done += n
            except OSError:
                pass  # e.g. across filesystems on old kernels: fall back to reads and writes
        while done < count:
            chunk = os.pread(in_fd, min(count - done, _CHUNK), start + done)
            if not chunk:
                raise BoomerangError(f"{src} ended early while copying {count} bytes; the file is truncated")
            _write_all(out_fd, chunk)
            done += len(chunk)


def _load(ref: TensorRef) -> torch.Tensor:
    if ref.make is not None:
        return ref.make()
    assert ref.file is not None
    buf = bytearray(ref.nbytes)
    with open(ref.file, "rb") as f:
        f.seek(ref.start)
        if f.readinto(buf) != len(buf):
            raise BoomerangError(f"{ref.file} ended early while reading {ref.key}; the file is truncated")
    if not buf:
        return torch.empty(ref.shape, dtype=ref.dtype)
    return torch.frombuffer(buf, dtype=ref.dtype).reshape(ref.shape)


def _write_tensor(t: OutTensor, fd: int) -> None:
    ref = t.ref
    if t.nbytes == 0:
        return
    if ref.make is None and ref.dtype == t.dtype:
        assert ref.file is not None
        _copy_bytes(ref.file, ref.start, ref.nbytes, fd)
        return
    data = _load(ref).to(t.dtype).contiguous().reshape(-1).view(torch.uint8)
    _write_all(fd, data.numpy())


def write_safetensors(
    path: Path, tensors: Sequence[OutTensor], *, progress: ProgressFn | None = None
) -> None:
    """Write one safetensors file tensor by tensor, laid out exactly as ``safetensors.torch.save_file`` would."""
    ordered = _file_order(tensors)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, _header(ordered, {"format": "pt"}))
        for t in ordered:
            _write_tensor(t, fd)
            if progress is not None:
                progress(t.nbytes)
    finally:
        os.close(fd)


def write_weights(
    directory: Path,
    tensors: Sequence[OutTensor],
    *,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    total_parameters: int,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Shard ``tensors`` (in state-dict order) as ``save_pretrained`` does and write them; returns the file names."""
    from huggingface_hub.serialization._base import split_state_dict_into_shards_factory

    by_name = {t.name: t for t in tensors}
    split = split_state_dict_into_shards_factory(
        {t.name: t.nbytes for t in tensors},
        get_storage_size=lambda n: n,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=parse_shard_size(max_shard_size),
    )
    for filename, names in split.filename_to_tensors.items():
        write_safetensors(directory / filename, [by_name[n] for n in names], progress=progress)
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": total_parameters, **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return list(split.filename_to_tensors)


def _saved_state(model: Any) -> dict[str, torch.Tensor]:
    """The state dict ``save_pretrained`` writes (ignored keys and tied duplicates dropped), before renaming."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    return remove_tied_weights_from_state_dict(state, model)


def checkpoint_nbytes(config: Any, dtype: torch.dtype | None = None) -> int:
    """Bytes of weights ``save_pretrained`` writes for a model of ``config`` loaded in ``dtype``."""
    return sum(t.numel() * t.element_size() for t in _saved_state(meta_model(config, dtype)).values())


def saved_names(model: Any) -> dict[str, str]:
    """For a (meta) model: file name -> state-dict name of every tensor ``save_pretrained`` writes, in its order."""
    from transformers.core_model_loading import revert_weight_conversion

    state = _saved_state(model)
    _, converters = _conversions(model)
    if converters:
        raise StreamUnsupported(
            f"{type(model).__name__} converts weights when saving ({converters[0]!r}); it cannot be streamed"
        )
    ids = {id(t): name for name, t in state.items()}
    saved = revert_weight_conversion(model, dict(state))
    return {out: ids[id(t)] for out, t in saved.items()}


def fmt_bytes(n: float) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, like the shard sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def check_free_space(out: str | os.PathLike, need: int, what: str, fix: str) -> None:
    """Refuse (before writing anything) when ``out``'s filesystem has less than ``need`` bytes free."""
    import shutil

    probe = Path(out).expanduser().resolve().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise BoomerangError(
            f"not enough disk space: {what} needs about {fmt_bytes(need)}, but only {fmt_bytes(free)} is free "
            f"on {probe}. {fix}"
        )


def parse_shard_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000 (the units ``save_pretrained`` accepts), or a clear error."""
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        n = size if isinstance(size, int) else parse_size_to_int(str(size))
    except ValueError:
        n = 0
    if n <= 0:
        raise BoomerangError(f"bad --max-shard-size {size!r}: use a size such as 5GB, 500MB or 100KB")
    return n


# ---- building ---------------------------------------------------------------------------------------------


class StreamBuilder:
    """A teacher/student pair of local safetensors checkpoints, ready to write any member of their family.

    Opening reads only configs and safetensors headers; ``write(plan, directory)`` writes one member.
    """

    def __init__(
        self,
        teacher: str | os.PathLike,
        student: str | os.PathLike,
        layer_map: LayerMap | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from .loading import parse_dtype

        for role, spec in (("teacher", teacher), ("student", student)):
            if not is_local_safetensors(spec):
                if not Path(spec).expanduser().exists():
                    raise BoomerangError(f"{spec} does not exist")
                raise StreamUnsupported(
                    f"the {role} {spec} is not a local checkpoint directory with safetensors weights; "
                    "streaming needs both models on disk (build in memory instead)"
                )
        self.trust_remote_code = trust_remote_code
        self.teacher = Checkpoint(teacher, trust_remote_code=trust_remote_code)
        self.student = Checkpoint(student, trust_remote_code=trust_remote_code)
        tcfg, scfg = self.teacher.config, self.student.config
        self.arch = check_compatible(tcfg, scfg)
        if layer_map is None:
            layer_map = read_layer_map(self.student.path, scfg)
        if layer_map is None:
            raise BoomerangError(
                f"the student {student} carries no layer map (no 'boomerang' config section and no "
                "student_config.json); pass layer_map=LayerMap.from_kept([...]) or --layers"
            )
        nt, ns = n_layers(tcfg), n_layers(scfg)
        if layer_map.n_teacher != nt or layer_map.n_student != ns:
            raise BoomerangError(
                f"the layer map ({layer_map.describe()}) does not fit a {nt}-layer teacher and {ns}-layer student"
            )
        self.layer_map = layer_map
        wanted = parse_dtype(dtype)
        if wanted is None:
            td, sd = self.teacher.dtype, self.student.dtype
            if td != sd:
                raise BoomerangError(
                    f"teacher is {td} but student is {sd}; pass a dtype (--dtype) to write both in one"
                )
            wanted = td
        self.dtype: torch.dtype = wanted
        self._views: dict[str, dict[str, TensorRef]] | None = None
        self._tokenizer: Any = None
        self._generation: Any = None
        # fail now (not half-way through a family) if transformers would convert weights on load or save
        saved_names(self.teacher.meta)
        _ = self.views

    @property
    def views(self) -> dict[str, dict[str, TensorRef]]:
        if self._views is None:
            tcfg = self.teacher.config
            self._views = {
                "teacher": self.teacher.canonical(self.arch, tcfg),
                "student": self.student.canonical(self.arch, tcfg),
            }
        return self._views

    def plan(
        self,
        num_patched: int | None = None,
        *,
        order: str | PatchOrder | Sequence[int] = "last",
        patched: Iterable[int] | None = None,
    ) -> PatchPlan:
        return make_plan(self.layer_map, num_patched=num_patched, order=order, patched=patched)

    def config(self, plan: PatchPlan) -> Any:
        """The config.json of the member, as ``save_pretrained`` writes it for the in-memory build."""
        from .params import plan_config

        self._check_plan(plan)
        cfg = plan_config(self.teacher.config, self.student.config, plan)
        cfg.dtype = str(self.dtype).split(".")[1]
        return cfg

    def _check_plan(self, plan: PatchPlan) -> None:
        if plan.layer_map != self.layer_map:
            raise BoomerangError(
                f"the plan's layer map ({plan.layer_map.describe()}) is not this pair's ({self.layer_map.describe()})"
            )

    def tensors(self, plan: PatchPlan, config: Any = None) -> tuple[list[OutTensor], Any]:
        """Every output tensor (in save order) with its source, and the member's meta model."""
        from .patching import route

        cfg = config if config is not None else self.config(plan)
        meta = meta_model(cfg, self.dtype)
        expected = meta.state_dict()
        views = self.views
        out: list[OutTensor] = []
        for file_name, name in saved_names(meta).items():
            who, src = route(name, self.arch, plan.sources, plan.embed_source, plan.head_source)
            ref = views[who].get(src)
            if ref is None:
                ckpt = self.teacher if who == "teacher" else self.student
                raise BoomerangError(
                    f"the {who} checkpoint {ckpt.path} has no tensor {src!r} (needed for {name!r})"
                )
            target = expected[name]
            if tuple(target.shape) != ref.shape:
                raise BoomerangError(
                    f"shape mismatch for {name}: {ref.shape} from the {who}, expected {tuple(target.shape)}"
                )
            out.append(OutTensor(file_name, ref, target.dtype))
        return out, meta

    def nbytes(self, plan: PatchPlan) -> int:
        """Bytes of weights the member takes on disk (headers and tokenizer not included)."""
        return sum(t.nbytes for t in self.tensors(plan)[0])

    def check_space(self, plan: PatchPlan, out: str | os.PathLike) -> None:
        """Refuse, before writing anything, if ``out``'s file system cannot hold the member."""
        check_free_space(
            out,
            self.nbytes(plan) + (1 << 20),
            "the model",
            "Write a smaller dtype (--dtype bfloat16) or choose another --out.",
        )

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.teacher.path, trust_remote_code=self.trust_remote_code)
        return self._tokenizer

    @property
    def generation_config(self) -> Any:
        """The teacher's generation config, loaded as ``from_pretrained`` loads it."""
        if self._generation is None:
            from transformers import GenerationConfig

            try:
                self._generation = GenerationConfig.from_pretrained(self.teacher.path)
            except OSError:
                self._generation = GenerationConfig.from_pretrained(
                    self.teacher.path, config_file_name="config.json", _from_model_config=True
                )
        return self._generation

    def write(
        self,
        plan: PatchPlan,
        directory: str | os.PathLike,
        *,
        max_shard_size: int | str = DEFAULT_SHARD_SIZE,
        tokenizer: bool = True,
        progress: ProgressFn | None = None,
    ) -> int:
        """Write the member into an existing (empty) directory; returns the bytes of weights written."""
        directory = Path(directory)
        cfg = self.config(plan)
        tensors, meta = self.tensors(plan, cfg)
        cfg.architectures = [type(meta).__name__]
        cfg.save_pretrained(directory)
        if meta.can_generate():
            self.generation_config.save_pretrained(directory)
        write_weights(
            directory,
            tensors,
            max_shard_size=max_shard_size,
            total_parameters=meta.num_parameters(),
            progress=progress,
        )
        if tokenizer:
            self.tokenizer.save_pretrained(directory)
        return sum(t.nbytes for t in tensors)


def stream_build(
    teacher: str | os.PathLike,
    student: str | os.PathLike,
    out: str | os.PathLike,
    plan: PatchPlan | None = None,
    *,
    num_patched: int | None = None,
    order: str | PatchOrder | Sequence[int] = "last",
    patched: Iterable[int] | None = None,
    layer_map: LayerMap | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    force: bool = False,
    progress: ProgressFn | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write one intermediate model from two local safetensors checkpoints without loading either model.

    Give ``plan``, or ``num_patched`` with ``order``, or an explicit ``patched`` set. The output directory is
    written atomically and holds config, generation config, tokenizer and (sharded) safetensors weights.
    """
    check_writable(out, force=force)
    parse_shard_size(max_shard_size)
    builder = StreamBuilder(teacher, student, layer_map, dtype=dtype, trust_remote_code=trust_remote_code)
    if plan is None:
        plan = builder.plan(num_patched, order=order, patched=patched)
    builder.check_space(plan, out)
    with atomic_dir(out, force=force) as tmp:
        builder.write(plan, tmp, max_shard_size=max_shard_size, progress=progress)
    return Path(out)
