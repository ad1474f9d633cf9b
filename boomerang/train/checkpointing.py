"""Checkpoints of a run: model, optimizer, scheduler, RNG states and the data position, as safetensors + JSON.

Nothing is pickled. A checkpoint is written into a temporary directory and renamed into place, so a directory
``OUT/checkpoints/step-N`` with a ``state.json`` is always complete; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, load_model, save_file, save_model

from ..io.atomic import atomic_dir
from . import sharding
from .run_dir import STATE, RunDir, list_checkpoints

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler


@dataclass
class RunState:
    """Progress of a run; saved in every checkpoint's ``state.json``."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # real training tokens consumed
    data_position: int = 0  # blocks consumed
    skipped: int = 0  # non-finite steps skipped
    elapsed: float = 0.0  # training seconds (across resumes)
    precision: str | None = None  # fp32 or bf16, as the run started (kept on resume)
    teacher_eval: dict[str, float] | None = None
    last_eval: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # recent train records (for the summary)

    def to_json(self, world: int) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "data_position": self.data_position,
            "skipped": self.skipped,
            "elapsed": self.elapsed,
            "precision": self.precision,
            "teacher_eval": self.teacher_eval,
            "last_eval": self.last_eval,
            "world_size": world,
        }

    def update(self, meta: Mapping[str, object]) -> None:
        self.step, self.tokens, self.data_position = meta["step"], meta["tokens"], meta["data_position"]
        self.skipped, self.elapsed = meta["skipped"], meta["elapsed"]
        self.teacher_eval, self.last_eval = meta.get("teacher_eval"), meta.get("last_eval")
        self.precision = meta.get("precision")


# ---- file codecs ------------------------------------------------------------------------------------------------


def _optimizer_to_files(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    for pid, vals in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(vals)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(state: Mapping[str, object]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_files(states: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = {}, []
    for r, st in enumerate(states):
        tensors[f"{r}.torch"] = st["torch"]
        for i, c in enumerate(st.get("cuda", [])):
            tensors[f"{r}.cuda.{i}"] = c
        py = st["python"]
        npst = st["numpy"]
        tensors[f"{r}.numpy"] = torch.from_numpy(np.asarray(npst[1], dtype=np.int64))
        meta.append(
            {
                "python": [py[0], list(py[1]), py[2]],
                "numpy": [npst[0], int(npst[2]), int(npst[3]), float(npst[4])],
                "cuda": len(st.get("cuda", [])),
            }
        )
    return tensors, {"ranks": meta}


def _rng_from_files(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], rank: int
) -> dict[str, Any] | None:
    ranks = meta["ranks"]
    if rank >= len(ranks):
        return None
    m = ranks[rank]
    py = m["python"]
    st = {
        "torch": tensors[f"{rank}.torch"],
        "python": (py[0], tuple(py[1]), py[2]),
        "numpy": (m["numpy"][0], tensors[f"{rank}.numpy"].numpy().astype(np.uint32), *m["numpy"][1:]),
    }
    if m["cuda"]:
        st["cuda"] = [tensors[f"{rank}.cuda.{i}"] for i in range(m["cuda"])]
    return st


class Checkpointer:
    """Saves and restores a run's training state under ``out/checkpoints``."""

    def __init__(self, out: Path, acc: Any, *, fsdp: bool, keep: int):
        self.out, self.acc, self.fsdp, self.keep = out, acc, fsdp, keep
        self.main, self.world, self.rank = acc.is_main_process, acc.num_processes, acc.process_index

    def save(
        self,
        model: torch.nn.Module,
        wrapped: torch.nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler,
        state: RunState,
    ) -> None:
        """Write ``step-N`` for ``state.step``. Under FSDP every process gathers its shards onto rank 0, which
        writes the same files as an unsharded run."""
        acc, step = self.acc, state.step
        states = [rng_state()]
        if self.world > 1:
            states = gather_object([rng_state()])
        path = RunDir(self.out).checkpoint(step)
        if self.fsdp:  # collectives: every process takes part
            full_model = sharding.full_model_state(model)
            full_opt = sharding.full_optimizer_state(model, optimizer)
        if self.main:
            with atomic_dir(path, force=True) as tmp:
                if self.fsdp:
                    save_file(full_model, str(tmp / "model.safetensors"))
                    tensors, meta = _optimizer_to_files(full_opt)
                else:
                    save_model(model, str(tmp / "model.safetensors"))
                    tensors, meta = _optimizer_to_files(optimizer.optimizer.state_dict())
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                (tmp / "optimizer.json").write_text(json.dumps(meta))
                (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
                rt, rm = _rng_to_files(states)
                save_file(rt, str(tmp / "rng.safetensors"))
                (tmp / "rng.json").write_text(json.dumps(rm))
                (tmp / STATE).write_text(json.dumps(state.to_json(self.world), indent=1))
        if self.main:
            for old in list_checkpoints(self.out)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler,
        state: RunState,
    ) -> None:
        """Restore everything saved by ``save`` into the given objects (RNG only for the same world size).
        Under FSDP rank 0 reads the files and every process receives its shards."""
        meta = json.loads((path / STATE).read_text())
        opt_files = (path / "optimizer.safetensors", path / "optimizer.json")
        if self.fsdp:  # collectives: every process takes part
            full_model = load_file(str(path / "model.safetensors")) if self.main else {}
            sharding.load_full_model_state(model, full_model)
            full_opt = (
                _optimizer_from_files(load_file(str(opt_files[0])), json.loads(opt_files[1].read_text()))
                if self.main
                else {}
            )
            sharding.load_full_optimizer_state(model, optimizer, full_opt)
        else:
            load_model(model, str(path / "model.safetensors"), strict=True)
            opt = _optimizer_from_files(load_file(str(opt_files[0])), json.loads(opt_files[1].read_text()))
            optimizer.optimizer.load_state_dict(opt)
        scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
        rng = _rng_from_files(
            load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text()), self.rank
        )
        if rng is not None and meta.get("world_size", 1) == self.world:
            set_rng_state(rng)
        state.update(meta)
