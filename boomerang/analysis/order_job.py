"""A data-driven patch order computed from checkpoints and saved as JSON (``boomerang order``, and the same from
Python).

``plan_order`` checks everything from configs (the order's name, its options, the student's layer map, the output
path) before any model loads; ``OrderJob.run`` then loads the pair, draws the calibration blocks (each order's
default: ``orders.default_texts`` blocks of ``ORDER_LENGTH`` tokens), searches and writes the order.
``write_order`` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.arch import n_layers
from ..core.configs import check_compatible
from ..core.plan import DATA_ORDERS
from ..data.blocks import calibration_ids
from ..errors import BoomerangError
from ..io import loading
from ..io.atomic import check_writable
from ..io.order_files import save_order
from ..io.sidecar import read_layer_map
from .orders import KL_TEXTS, Progress, compute_order, default_texts

if TYPE_CHECKING:
    from ..core.layermap import LayerMap
    from ..core.plan import PatchOrder
    from ..hints import DType

ORDER_LENGTH = 256  # default tokens per calibration block


@dataclass(frozen=True)
class OrderJob:
    """A checked request to compute the data-driven order ``name`` of a teacher/student pair and save it."""

    name: str
    teacher: str
    student: str
    out: Path
    layer_map: LayerMap
    data: str
    calibration_texts: int | None = None
    calibration_length: int | None = None
    seed: int = 0
    batch_size: int = 8
    max_layers: int = 12
    score: bool = False
    dtype: DType = "auto"
    force: bool = False
    trust_remote_code: bool = False

    def run(self, progress: Progress | None = None) -> PatchOrder:
        """Load the pair, compute the order on the calibration blocks and write it; returns the order."""
        trust = self.trust_remote_code
        teacher, student = loading.load_pair(
            self.teacher, self.student, dtype=self.dtype, trust_remote_code=trust
        )
        tok = loading.load_tokenizer(self.teacher, trust_remote_code=trust)
        n, length = (
            self.calibration_texts or default_texts(self.name),
            self.calibration_length or ORDER_LENGTH,
        )
        ids = calibration_ids(self.data, tok, n=n, length=length, seed=self.seed)
        order = compute_order(
            self.name,
            teacher,
            student,
            self.layer_map,
            ids,
            batch_size=self.batch_size,
            max_layers=self.max_layers,
            # the calibration blocks set the size of KL searches; similarity's score caps its KL at KL_TEXTS
            max_texts=KL_TEXTS if self.name == "similarity" else None,
            score=self.score,
            progress=progress,
        )
        save_order(order, self.out, force=self.force)
        return order


def plan_order(
    name: str,
    teacher: str,
    student: str,
    out: str | Path,
    *,
    data: str | None,
    layer_map: LayerMap | None = None,
    calibration_texts: int | None = None,
    calibration_length: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    max_layers: int = 12,
    score: bool = False,
    dtype: DType = "auto",
    force: bool = False,
    trust_remote_code: bool = False,
) -> OrderJob:
    """Check a request to compute the order ``name`` on calibration text ``data`` (configs only: nothing loads).
    ``layer_map`` defaults to the one the student carries; ``max_layers`` bounds ``optimal`` (2^M subsets);
    ``score``: similarity also records the KL of every size."""
    if name not in DATA_ORDERS:
        raise BoomerangError(f"unknown --order {name!r}; use one of: {', '.join(DATA_ORDERS)}")
    out = check_writable(out, force=force, file=True)
    if score and name != "similarity":
        raise BoomerangError("--score apply only to --order similarity; drop --score")
    if data is None:
        raise BoomerangError(
            f"--order {name} needs calibration text: pass --data PATH (a text file, folder or .jsonl)"
        )
    tcfg = loading.load_config(teacher, trust_remote_code=trust_remote_code)
    scfg = loading.load_config(student, trust_remote_code=trust_remote_code)
    check_compatible(tcfg, scfg)
    layer_map = layer_map if layer_map is not None else read_layer_map(student, scfg)
    if layer_map is None:
        raise BoomerangError(
            f"cannot find the layer map of student {student}: it has no 'boomerang' config section and no "
            "student_config.json; pass layer_map=LayerMap.from_kept([...]) (on the command line: --student-layers)"
        )
    layer_map.check_fits(n_layers(tcfg), n_layers(scfg))
    m = layer_map.n_student
    if name == "optimal" and m > max_layers:
        raise BoomerangError(
            f"--order optimal scores all 2^{m} subsets; the student has {m} layers, over "
            f"--max-layers {max_layers}. Raise --max-layers or use greedy-kl or shortest-path"
        )
    return OrderJob(
        name,
        teacher,
        student,
        out,
        layer_map,
        data,
        calibration_texts,
        calibration_length,
        seed,
        batch_size,
        max_layers,
        score,
        dtype,
        force,
        trust_remote_code,
    )


def write_order(
    name: str,
    teacher: str,
    student: str,
    out: str | Path,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> PatchOrder:
    """Compute the data-driven order ``name`` of a teacher/student pair on calibration text ``data`` and save it
    as JSON at ``out`` (the options of ``plan_order``); returns the order."""
    return plan_order(name, teacher, student, out, **options).run(progress)
