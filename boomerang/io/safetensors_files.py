"""Safetensors files without torch: reading headers, and writing files, shards and index tensor by tensor.

Tensors are described by ``TensorRef`` (where an input tensor's bytes are) and ``OutTensor`` (an output tensor and
the dtype it is written in), with dtypes as safetensors names ("F32", "BF16", ...). Bytes are copied inside the
kernel (``copy_file_range``) when possible; a tensor whose dtype changes needs a ``Convert`` function (the torch
side, ``boomerang.io.stream``, supplies one). Files are laid out exactly as ``safetensors.torch.save_file`` lays
them out and sharded exactly as ``save_pretrained`` shards them, so the bytes written are the same.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from ..interrupts import check
from .snapshot import HeldFile, Snapshot, snapshot_of

if TYPE_CHECKING:
    from typing_extensions import Buffer

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = "50GB"  # transformers' save_pretrained default, so every path writes the same files

# safetensors dtype -> (torch dtype name, bytes per element), in the order of safetensors' own Dtype enum: files
# lay tensors out by that order (descending), then by name.
ST_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
}
_RANK = {name: i for i, name in enumerate(ST_DTYPES)}
_MAX_HEADER = 100_000_000
_CHUNK = 64 << 20

ProgressFn = Callable[[int], None]  # called with the number of bytes just written


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are (``file``/``start``), or how to make it (``make``) if no file holds it.

    ``held`` is the file as it was opened when its header was read: its bytes are read through it, so a file
    replaced meanwhile is never read with this header's offsets (see ``boomerang.io.snapshot``).
    """

    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    file: Path | None = None
    key: str = ""
    start: int = 0
    make: Callable[[], Any] | None = None  # returns a torch tensor (only the torch side makes tensors)
    held: HeldFile | None = field(default=None, compare=False, repr=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ST_DTYPES[self.dtype][1]


@dataclass(frozen=True)
class OutTensor:
    """One tensor of an output file: its name there, its source, and the dtype it is written in."""

    name: str
    ref: TensorRef
    dtype: str  # the ref's dtype, or the conversion target

    @property
    def nbytes(self) -> int:
        return self.ref.numel * ST_DTYPES[self.dtype][1]


Convert = Callable[[OutTensor], "Buffer"]  # the tensor's bytes in its output dtype (any buffer)


# ---- reading -------------------------------------------------------------------------------------------------


REPAIR_HINT = (
    "the file is damaged or incomplete (an interrupted download or copy?): download it again, or save the "
    "checkpoint again with model.save_pretrained(DIR)"
)


def _corrupt(path: Path, reason: str) -> BoomerangError:
    return BoomerangError(
        f"cannot load the model in {path.parent}: {path.name} is not a valid safetensors file ({reason}); "
        f"{REPAIR_HINT}"
    )


def read_header(path: str | os.PathLike, held: HeldFile | None = None) -> dict[str, TensorRef]:
    """Every tensor in one safetensors file, without reading any tensor data (through ``held``, or the file
    opened now)."""
    path = Path(path)
    try:
        held = held or HeldFile(path)
        size = held.size
        head = held.pread(8, 0)
        if len(head) < 8:
            raise _corrupt(path, "shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise _corrupt(path, f"header length {n} does not fit a {size}-byte file")
        header = json.loads(held.pread(n, 8))
    except BoomerangError:
        raise
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
            if info["dtype"] not in ST_DTYPES:
                raise KeyError(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad entry for tensor {key!r}: {info!r}") from None
        ref = TensorRef(dtype=info["dtype"], shape=shape, file=path, key=key, start=base + begin, held=held)
        if not 0 <= begin <= end <= data_size or end - begin != ref.nbytes:
            raise _corrupt(path, f"tensor {key!r} lies outside the file (the file may be truncated)")
        out[key] = ref
    return out


def weight_files(path: Path, snapshot: Snapshot | None = None) -> tuple[list[Path], dict[str, Any]]:
    """A checkpoint directory's safetensors files and its index metadata (empty for a single file)."""
    if (path / INDEX).is_file():
        try:
            raw = snapshot.read_bytes(INDEX) if snapshot is not None else (path / INDEX).read_bytes()
            index = json.loads(raw)
            files = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, BoomerangError) as e:
            raise BoomerangError(
                f"cannot load the model in {path}: unreadable {INDEX} ({e}); {REPAIR_HINT}"
            ) from None
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise BoomerangError(
                f"cannot load the model in {path}: shard files {missing} are missing; {REPAIR_HINT}"
            )
        return [path / f for f in files], index.get("metadata") or {}
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS], {}
    raise BoomerangError(
        f"{path} has no safetensors weights ({WEIGHTS} or {INDEX}); save the checkpoint with "
        "model.save_pretrained(DIR), or convert a .gguf file with `boomerang convert`"
    )


def read_tensors(path: Path, snapshot: Snapshot | None = None) -> tuple[dict[str, TensorRef], dict[str, Any]]:
    """Every tensor of a checkpoint directory (all its files) and its index metadata, read from ``snapshot``
    (default: the directory's snapshot in the current scope, see ``boomerang.io.snapshot``)."""
    snapshot = snapshot or snapshot_of(path)
    files, metadata = weight_files(path, snapshot)
    entries: dict[str, TensorRef] = {}
    for f in files:
        entries.update(read_header(f, snapshot.file(f.name) if f.parent == path else None))
    return entries, metadata


# ---- writing -------------------------------------------------------------------------------------------------


def file_order(tensors: Sequence[OutTensor]) -> list[OutTensor]:
    """The order ``safetensors`` lays tensors out in: by dtype (safetensors' enum order, descending), then name."""
    return sorted(tensors, key=lambda t: (-_RANK[t.dtype], t.name))


def header(tensors: Sequence[OutTensor], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and JSON header of a file holding ``tensors`` in this order (padded to 8 bytes)."""
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.ref.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def copy_bytes(src: Path | HeldFile, start: int, count: int, out_fd: int) -> None:
    """Append ``count`` bytes at ``start`` of ``src`` (a path, or a held file) to ``out_fd`` (inside the kernel
    when possible)."""
    held = src if isinstance(src, HeldFile) else HeldFile(src)
    in_fd, done = held.fd, 0
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
            raise BoomerangError(
                f"{held.path} ended early while copying {count} bytes; the file is truncated"
            )
        write_all(out_fd, chunk)
        done += len(chunk)


def _write_tensor(t: OutTensor, fd: int, convert: Convert | None) -> None:
    ref = t.ref
    if t.nbytes == 0:
        return
    if ref.make is None and ref.dtype == t.dtype:
        assert ref.file is not None
        copy_bytes(ref.held or ref.file, ref.start, ref.nbytes, fd)
        return
    if convert is None:
        raise BoomerangError(
            f"internal: {t.name} needs a conversion ({ref.dtype} to {t.dtype}) but none was given"
        )
    write_all(fd, convert(t))


def write_safetensors(
    path: Path,
    tensors: Sequence[OutTensor],
    *,
    progress: ProgressFn | None = None,
    convert: Convert | None = None,
) -> None:
    """Write one safetensors file tensor by tensor, laid out exactly as ``safetensors.torch.save_file`` would."""
    ordered = file_order(tensors)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, header(ordered, {"format": "pt"}))
        for t in ordered:
            check()  # a Ctrl-C stops a large write between tensors (the temporary is then removed)
            _write_tensor(t, fd, convert)
            if progress is not None:
                progress(t.nbytes)
    finally:
        os.close(fd)


# Units of a shard size, as huggingface_hub (and so ``save_pretrained``) reads them: decimal, case-insensitive.
SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}


def parse_shard_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000, read exactly as ``save_pretrained`` reads it, or a clear error.

    huggingface_hub's own parser is private (``serialization._base``), so this is its rule restated: a number
    (decimals allowed) and a unit of ``SIZE_UNITS``. ``tests/test_shards.py`` checks it against the public
    ``split_state_dict_into_shards_factory``, which parses the same strings itself.
    """
    n = 0
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    elif isinstance(size, str) and size.strip()[-2:].upper() in SIZE_UNITS:
        text = size.strip()
        try:
            n = int(float(text[:-2].strip()) * SIZE_UNITS[text[-2:].upper()])
        except (ValueError, OverflowError):  # not a number, nan, inf
            n = 0
    if n <= 0:
        raise BoomerangError(f"bad --max-shard-size {size!r}: use a size such as 5GB, 500MB or 100KB")
    return n


def write_weights(
    directory: Path,
    tensors: Sequence[OutTensor],
    *,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    total_parameters: int,
    progress: ProgressFn | None = None,
    convert: Convert | None = None,
) -> list[str]:
    """Shard ``tensors`` (in state-dict order) as ``save_pretrained`` does and write them; returns the file names."""
    from huggingface_hub import split_state_dict_into_shards_factory

    by_name = {t.name: t for t in tensors}
    split = split_state_dict_into_shards_factory(
        {t.name: t.nbytes for t in tensors},
        get_storage_size=lambda n: n,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=parse_shard_size(max_shard_size),
    )
    for filename, names in split.filename_to_tensors.items():
        write_safetensors(
            directory / filename, [by_name[n] for n in names], progress=progress, convert=convert
        )
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": total_parameters, **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return list(split.filename_to_tensors)
