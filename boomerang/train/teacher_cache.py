"""A teacher-output cache: the frozen teacher's outputs of a run, kept on disk for runs that see the same batches.

Students distilled from one teacher on the same data order (an ablation beside the main student: a random-init
student, the same init without the cosine term, another learning rate) need exactly the same teacher outputs. The
first run writes them, one safetensors file per optimizer step (every micro-batch, every captured state); later
runs read them instead of running the teacher's trunk. Outputs are stored in the dtype they were computed in, so a
run that reads them gets bit-identical losses.

A cache is tied to everything that decides the batches and the teacher's outputs (the ``fingerprint``: teacher,
precision, data, sequence length, batch split, seed); a run with another fingerprint refuses it. A run that needs
states the cache lacks computes the teacher itself for those steps. Single-process runs only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import BoomerangError
from .losses import ModelOutputs

if TYPE_CHECKING:
    from ..train.recipe import Recipe

META = "cache.json"


def cache_fingerprint(
    recipe: Recipe, *, teacher_path: str, precision: str, keys: list[str]
) -> dict[str, Any]:
    """What the cached outputs depend on (the recipe's data and batch layout, the teacher, the precision)."""
    d, t = recipe.data, recipe.train
    return {
        "teacher": str(teacher_path),
        "precision": precision,
        "data": recipe.data.model_dump(mode="json", exclude={"cache_dir", "eval"}),
        "seq_len": d.seq_len,
        "batch_size": t.batch_size,
        "micro_batch_size": t.micro_batch_size,
        "seed": t.seed,
        "mode": "head" if t.fused_loss is not False else "logits",
        "keys": sorted(keys),
    }


class TeacherCache:
    """Reads and fills ``directory`` for one run (``keys``: the teacher states the run's loss needs)."""

    def __init__(self, directory: str | os.PathLike, meta: dict[str, Any]):
        self.dir = Path(directory)
        self.keys = meta["keys"]
        self.hits = self.misses = 0
        meta_file = self.dir / META
        if meta_file.is_file():
            stored = json.loads(meta_file.read_text())
            mine = {k: v for k, v in meta.items() if k != "keys"}
            theirs = {k: v for k, v in stored.items() if k != "keys"}
            if mine != theirs:
                diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise BoomerangError(
                    f"the teacher cache {self.dir} was written for other batches or another teacher (differs in "
                    f"{', '.join(diff)}); use a new train.teacher_cache directory or delete that one"
                )
            self.stored_keys = stored["keys"]
            self.writable = False
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_json(meta_file, meta)
            self.stored_keys = meta["keys"]
            self.writable = True
        self.usable = set(self.keys) <= set(self.stored_keys)

    def _file(self, step: int) -> Path:
        return self.dir / f"step-{step:07d}.safetensors"

    def load(self, step: int) -> dict[int, ModelOutputs] | None:
        """The cached outputs of optimizer step ``step`` (1-based), by micro-batch, or None."""
        path = self._file(step)
        if not self.usable or not path.is_file():
            self.misses += 1
            return None

        flat = load_file(str(path))
        out: dict[int, ModelOutputs] = {}
        for name, t in flat.items():
            micro, _, key = name.partition("/")
            o = out.setdefault(int(micro), ModelOutputs())
            if key == "hidden":
                o.hidden = t
            elif key == "logits":
                o.logits = t
            elif key in self.keys:
                o.states[key] = t
        for o in out.values():
            # head mode: the normed state is the hidden one
            if "norm" in self.keys and "norm" not in o.states:
                o.states["norm"] = o.hidden  # type: ignore[assignment]
        self.hits += 1
        return out

    def save(self, step: int, outputs: dict[int, ModelOutputs]) -> None:
        """Store one step's outputs (only by the run that created the cache; never over a complete file)."""
        path = self._file(step)
        if not self.writable or path.is_file():
            return

        flat: dict[str, torch.Tensor] = {}
        for micro, o in outputs.items():
            if o.hidden is not None:
                flat[f"{micro}/hidden"] = o.hidden
            if o.logits is not None:
                flat[f"{micro}/logits"] = o.logits
            for key, t in o.states.items():
                if t is not o.hidden:  # head mode's "norm" state is the hidden state itself: stored once
                    flat[f"{micro}/{key}"] = t
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in flat.items()}, str(tmp))
            os.replace(tmp, path)
        except BaseException:  # a write error or Ctrl-C leaves no temporary file behind
            tmp.unlink(missing_ok=True)
            raise


def _atomic_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
