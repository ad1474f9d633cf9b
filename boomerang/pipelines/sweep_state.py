"""A sweep's resumable progress in ``.<out>.partial/state.json``: what was evaluated, fingerprinted by the
settings, models and batches it was computed with, so that a rerun continues only onto the same sweep."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from ..evaluate.perplexity import ScoreBatch
from ..io.atomic import atomic_write_text

if TYPE_CHECKING:
    from ..hints import Model, ModelSpec

STATE_VERSION = 1


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def probe(model: Model) -> str:
    """A cheap fingerprint of an in-memory model's weights (for refusing to resume onto other weights)."""
    params = list(model.parameters())
    h = hashlib.sha256()
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().flatten()[:4096].float().numpy().tobytes())
    return h.hexdigest()[:16]


def source_name(spec: ModelSpec, model: ModelSpec) -> str:
    """A model's path as given, or its ``name_or_path`` (an in-memory model)."""
    if isinstance(spec, (str, Path)):
        return str(spec)
    return getattr(model, "name_or_path", "") or f"<in-memory {model.config.model_type}>"


def sweep_fingerprint(settings: Mapping[str, object], batches: Sequence[ScoreBatch]) -> str:
    """The hash of a sweep's settings (JSON) and of every token of its batches."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for b in batches:
        for t in (b.input_ids, b.positions, b.targets, b.docs):
            h.update(t.numpy().tobytes())
    return h.hexdigest()


class SweepState:
    """The JSON progress record: per group the next batch, per unit the summed NLL and token count, per model its
    description, lm-eval results and failures."""

    def __init__(self, partial: Path, data: dict[str, Any]):
        self.partial, self.data = partial, data

    @classmethod
    def load(
        cls, partial: Path, fingerprint: str, *, restart: bool, log: Callable[[str], None]
    ) -> SweepState:
        """The saved progress if it has this fingerprint, else a fresh record (other progress needs ``restart``)."""
        path = partial / "state.json"
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except ValueError:
                state = {}
            if state.get("fingerprint") == fingerprint and state.get("version") == STATE_VERSION:
                log(f"resuming the interrupted sweep from {partial}")
                return cls(partial, state)
            if not restart:
                raise BoomerangError(
                    f"{partial} holds an interrupted sweep with different settings, data or models; pass "
                    "--restart to discard it (or rerun with the same arguments to resume it)"
                )
        fresh = {"groups": {}, "units": {}, "models": {}, "lm_eval": {}, "failed": {}}
        return cls(partial, {"version": STATE_VERSION, "fingerprint": fingerprint, **fresh})

    def save(self) -> None:
        self.partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.partial / "state.json", json.dumps(self.data, indent=1) + "\n")

    def group(self, name: str) -> dict[str, Any]:
        """A group's progress: ``next_batch``, ``done`` and ``seconds``."""
        return self.data["groups"].setdefault(name, {"next_batch": 0, "done": False, "seconds": 0.0})

    def unit(self, name: str) -> dict[str, Any]:
        """A unit's running sums: ``nll`` and ``count`` (scored tokens)."""
        return self.data["units"].setdefault(name, {"nll": 0.0, "count": 0})

    @property
    def groups(self) -> dict[str, Any]:
        return self.data["groups"]

    @property
    def units(self) -> dict[str, Any]:
        return self.data["units"]

    @property
    def models(self) -> dict[str, Any]:
        return self.data["models"]

    @property
    def lm_eval(self) -> dict[str, Any]:
        return self.data["lm_eval"]

    @property
    def failed(self) -> dict[str, str]:
        return self.data["failed"]
