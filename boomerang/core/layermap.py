"""Layer maps: which teacher layers a student was initialised from, and the blocks they stand for.

A student with M layers keeps the sorted teacher layers ``kept = (l_1 < ... < l_M)`` of an N-layer teacher.
Student layer i (0-based) *stands for* the teacher block ``[l_i, l_{i+1})`` (the last block is ``[l_M, N)``)
and is aligned during distillation with the output of the block's last layer, ``l_{i+1} - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ..errors import BoomerangError

if TYPE_CHECKING:
    from ..hints import Config

CONFIG_KEY = "boomerang"  # section of config.json holding the layer map and provenance
SIDECAR = "student_config.json"  # the reference implementation's file beside published students


class LayerMap(BaseModel):
    """An M-layer student's map onto an N-layer teacher (frozen, validated)."""

    model_config = ConfigDict(frozen=True)

    n_teacher: int
    kept: tuple[int, ...]

    @field_validator("kept", mode="before")
    @classmethod
    def _as_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple, range)) else v

    @model_validator(mode="after")
    def _check(self) -> LayerMap:
        n, kept = self.n_teacher, self.kept
        if n < 1:
            raise ValueError(f"n_teacher must be at least 1, got {n}")
        if not kept:
            raise ValueError("the layer map is empty: keep at least teacher layer 0")
        bad = [k for k in kept if not 0 <= k < n]
        if bad:
            raise ValueError(
                f"kept layers {bad} are out of range for a {n}-layer teacher (valid: 0..{n - 1})"
            )
        dup = sorted({k for k in kept if kept.count(k) > 1})
        if dup:
            raise ValueError(f"kept layers {dup} are duplicated; list each teacher layer once")
        if list(kept) != sorted(kept):
            raise ValueError(f"kept layers {list(kept)} are not sorted; use {sorted(kept)}")
        if kept[0] != 0:
            raise ValueError(
                f"the first kept layer is {kept[0]}, but it must be 0: the student's first layer reads the "
                "embedding, so it must stand for teacher layers starting at 0"
            )
        return self

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def every(cls, n_teacher: int, every: int = 2, keep_first: int = 1, keep_last: int = 2) -> LayerMap:
        """Keep the first ``keep_first`` layers, then every ``every``-th layer, then the last ``keep_last``.

        ``every(36)`` gives the paper's Qwen3-8B student ``[0, 2, ..., 34, 35]``;
        ``every(28, keep_first=2, keep_last=1)`` gives its Llama-3.2-3B student ``[0, 1, 3, ..., 27]``.
        """
        if every < 1 or keep_first < 1 or keep_last < 0:
            raise BoomerangError(
                f"every={every}, keep_first={keep_first}, keep_last={keep_last}: need every >= 1, "
                "keep_first >= 1 (layer 0 is always kept) and keep_last >= 0"
            )
        kept = set(range(min(keep_first, n_teacher)))
        kept |= set(range(keep_first - 1, n_teacher, every))
        kept |= set(range(max(n_teacher - keep_last, 0), n_teacher))
        return cls.from_kept(sorted(kept), n_teacher)

    @classmethod
    def from_kept(cls, kept: Sequence[int], n_teacher: int | None = None) -> LayerMap:
        """A map from explicit teacher layers. ``n_teacher`` defaults to ``max(kept) + 1``."""
        kept = [int(k) for k in kept]
        if n_teacher is None:
            if not kept:
                raise BoomerangError("the layer map is empty: keep at least teacher layer 0")
            n_teacher = max(kept) + 1
        try:
            return cls(n_teacher=n_teacher, kept=tuple(kept))
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            raise BoomerangError(f"invalid layer map: {first_error(e)}") from None

    @classmethod
    def preset(cls, name: str) -> LayerMap:
        """Built-in maps for off-the-shelf students (see ``PRESETS``)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise BoomerangError(
                f"unknown layer-map preset {name!r}; known presets: {', '.join(PRESETS)}"
            ) from None

    # ---- geometry -----------------------------------------------------------------------------
    @property
    def n_student(self) -> int:
        return len(self.kept)

    @property
    def pruned(self) -> tuple[int, ...]:
        """Teacher layers not copied into the student."""
        s = set(self.kept)
        return tuple(i for i in range(self.n_teacher) if i not in s)

    def block(self, i: int) -> range:
        """Teacher layers that student layer ``i`` stands for."""
        self._check_student_index(i)
        end = self.kept[i + 1] if i + 1 < self.n_student else self.n_teacher
        return range(self.kept[i], end)

    @property
    def blocks(self) -> list[range]:
        return [self.block(i) for i in range(self.n_student)]

    def target(self, i: int) -> int:
        """The teacher layer whose output student layer ``i`` is aligned with: ``l_{i+1} - 1`` (or N - 1)."""
        return self.block(i)[-1]

    @property
    def targets(self) -> list[int]:
        return [self.target(i) for i in range(self.n_student)]

    def check_fits(self, n_teacher: int, n_student: int, *, student: str = "student") -> None:
        """Raise a clear error unless this map is for an ``n_teacher``-layer teacher and ``n_student``-layer student.

        The one check that a layer map fits a pair: layer counts from configs, or from loaded models
        (``core.patching.check_pair``); ``student`` names the student in the message."""
        problems = []
        if self.n_teacher != n_teacher:
            problems.append(
                f"it is for a {self.n_teacher}-layer teacher, but the teacher has {n_teacher} layers"
            )
        if self.n_student != n_student:
            problems.append(
                f"it keeps {self.n_student} teacher layers, but the {student} has {n_student} layers"
            )
        if problems:
            raise BoomerangError(
                f"the layer map ({self.describe()}) does not fit this pair: {'; '.join(problems)}"
            )

    def _check_student_index(self, i: int) -> None:
        if not 0 <= i < self.n_student:
            raise BoomerangError(
                f"student layer {i} does not exist: the student has layers 0..{self.n_student - 1}"
            )

    # ---- serialisation ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"n_teacher": self.n_teacher, "kept": list(self.kept)}

    def to_reference(self) -> dict[str, list[int]]:
        """The reference implementation's ``student_config.json`` content."""
        return {"pruned_teacher_layers": list(self.pruned), "copied_teacher_layers": list(self.kept)}

    @classmethod
    def from_reference(cls, data: Mapping[str, object]) -> LayerMap:
        """Read ``{"pruned_teacher_layers": [...], "copied_teacher_layers": [...]}``."""
        try:
            kept = [int(x) for x in data["copied_teacher_layers"]]
            pruned = [int(x) for x in data.get("pruned_teacher_layers", [])]
        except (KeyError, TypeError, ValueError):
            raise BoomerangError(
                f"{SIDECAR} must hold a list 'copied_teacher_layers' (and 'pruned_teacher_layers'); "
                f"got keys {sorted(data)}"
            ) from None
        overlap = set(kept) & set(pruned)
        if overlap:
            raise BoomerangError(f"{SIDECAR}: layers {sorted(overlap)} are both copied and pruned")
        n = len(kept) + len(pruned)
        if sorted(kept + pruned) != list(range(n)):
            raise BoomerangError(
                f"{SIDECAR}: copied and pruned layers must together be 0..N-1 exactly once; "
                f"got copied={kept} pruned={pruned}"
            )
        return cls.from_kept(kept, n)

    @classmethod
    def from_config(cls, config: Config) -> LayerMap | None:
        """The student map stored in a config's ``boomerang`` section, if any."""
        section = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
        if not isinstance(section, dict) or section.get("role") != "student" or "layer_map" not in section:
            return None
        saved = section["layer_map"]
        return cls.from_kept(saved["kept"], saved["n_teacher"])

    def describe(self) -> str:
        return f"{self.n_student}-layer student of a {self.n_teacher}-layer teacher, kept {list(self.kept)}"


def first_error(e: Exception) -> str:
    """The first message of a pydantic ValidationError, without pydantic's "Value error, " prefix."""
    errs = getattr(e, "errors", None)
    if callable(errs):
        msgs = [str(x.get("ctx", {}).get("error") or x.get("msg")) for x in errs()]
        if msgs:
            return msgs[0].removeprefix("Value error, ")
    return str(e)


PRESETS: dict[str, LayerMap] = {
    # DistilBERT and DistilGPT2 were both initialised from teacher layers [0, 2, 4, 7, 9, 11] of 12.
    "distilbert": LayerMap(n_teacher=12, kept=(0, 2, 4, 7, 9, 11)),
    "distilgpt2": LayerMap(n_teacher=12, kept=(0, 2, 4, 7, 9, 11)),
}


def student_section(layer_map: LayerMap, teacher: str | None = None, **extra: object) -> dict[str, Any]:
    """The ``boomerang`` config section written into a student's config.json."""
    return {"role": "student", "layer_map": layer_map.to_json(), "teacher": teacher, **extra}
