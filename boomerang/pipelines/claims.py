"""The paper's claims about a boomerang family, checked on sweep results and stated as PASS or FAIL with numbers.

Each check takes rows as a sweep writes them (``method``, ``K``, ``inference`` parameters, the metric) and returns a
``Claim``. Lower metric values are better (perplexity). Definitions:

Sizes come first. A family's members are judged by their size (inference parameters): members the size of the
teacher that are not the teacher itself (the student with only single-layer blocks kept, in a K-indexed order)
are **teacher-size variants**, reported apart (``teacher_size_variants``), never counted as intermediate sizes.

- **(a) monotone**: along the family, from the student up to the teacher (variants left out), the metric falls,
  with at most ``MAX_INVERSIONS`` inversions. An inversion is a member at least ``TOLERANCE`` (1%) worse than the
  member before it; smaller wiggles are counted and reported apart.
- **(b) naive**: every member of intermediate size (larger than the student, smaller than the teacher) is below
  naive layer dropping with the same teacher layers.
- **(c) pruning**: every member smaller than the teacher is below ShortGPT and LaCo at the same parameter count;
  the pruned models' log-metric is interpolated linearly in parameters between their sizes.
- **(d) random init**: a randomly initialised student distilled on the same budget does not interpolate: each of its
  intermediate members is at least ``RANDOM_FAR`` × the boomerang member of the same K, in the same order.
- **(e) cosine term**: the same budget without the cosine term gives a less smooth family in the same order: more
  inversions, or as many and more excess total variation of log-metric (TV beyond a monotone curve's).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_INVERSIONS = 1
TOLERANCE = 0.01  # relative: a member less than 1% worse than the one before it is a wiggle, not an inversion
RANDOM_FAR = 2.0

Row = dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """One claim's verdict and the numbers behind it."""

    key: str  # "a".."e"
    title: str
    passed: bool | None  # None: not checked (data missing)
    detail: str  # plain words with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "verdict": self.verdict,
            "detail": self.detail,
            **self.numbers,
        }


TITLES = {
    "a": "the family falls as size grows (at most one inversion)",
    "b": "every intermediate member is below naive layer dropping of the same layers",
    "c": "every member is below ShortGPT and LaCo at the same parameter count",
    "d": "a randomly initialised student does not interpolate",
    "e": "without the cosine term the family is less smooth",
}


def family(rows: Sequence[Row], method: str = "boomerang", metric: str = "ppl") -> list[Row]:
    """The rows of one family, by K, with a finite metric."""
    out = [r for r in rows if r["method"] == method and _finite(r.get(metric))]
    return sorted(out, key=lambda r: r["K"])


def _teacher_size(family_rows: Sequence[Row]) -> float | None:
    """The teacher's inference parameters: its row's (role ``teacher``), else the family's largest."""
    sizes = [r.get("inference") for r in family_rows if r.get("role") == "teacher"]
    sizes = sizes or [r.get("inference") for r in family_rows]
    sizes = [x for x in sizes if x]
    return max(sizes) if sizes else None


def sized(rows: Sequence[Row], method: str = "boomerang", metric: str = "ppl") -> list[Row]:
    """The family from the student up to the teacher, without teacher-size variants (see the module's text)."""
    family_rows = family(rows, method, metric)
    top = _teacher_size(family_rows)
    if top is None:
        return family_rows
    keep = [r for r in family_rows if (r.get("inference") or 0) < top]
    teacher = [r for r in family_rows if r.get("role") == "teacher"] or [
        r for r in family_rows if r.get("inference") == top
    ][-1:]
    return keep + teacher[-1:]


def teacher_size_variants(rows: Sequence[Row], method: str = "boomerang", metric: str = "ppl") -> list[Row]:
    """Members the size of the teacher that are not the teacher (a K-indexed order patching single-layer blocks
    last): variants of the teacher's size, not intermediate sizes."""
    family_rows = family(rows, method, metric)
    top = _teacher_size(family_rows)
    if top is None:
        return []
    kept = sized(rows, method, metric)
    return [r for r in family_rows if r.get("inference") == top and r not in kept]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def inversions(values: Sequence[float], tolerance: float = 0.0) -> list[int]:
    """Indices i where ``values[i + 1] > values[i] · (1 + tolerance)`` (a member worse than the one before it)."""
    return [i for i in range(len(values) - 1) if values[i + 1] > values[i] * (1 + tolerance)]


def excess_variation(values: Sequence[float]) -> float:
    """Total variation of log(values) beyond that of a monotone curve with the same ends (0 if monotone)."""
    logs = [math.log(v) for v in values]
    tv = sum(abs(b - a) for a, b in itertools.pairwise(logs))
    return tv - abs(logs[-1] - logs[0]) if logs else 0.0


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of log(y) at ``x`` between the (x, y) points; None outside their range."""
    pts = sorted(points)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            if x1 == x0:
                return min(y0, y1)
            t = (x - x0) / (x1 - x0)
            return math.exp((1 - t) * math.log(y0) + t * math.log(y1))
    return pts[-1][1] if x == pts[-1][0] else None


def check_monotone(rows: Sequence[Row], metric: str = "ppl", label: str = "") -> Claim:
    family_rows = sized(rows, metric=metric)
    if len(family_rows) < 3:
        return Claim("a", TITLES["a"], None, "fewer than three members were evaluated")
    vals = [r[metric] for r in family_rows]
    inv = inversions(vals, TOLERANCE)
    wiggles = len(inversions(vals)) - len(inv)
    where = ", ".join(
        f"K={family_rows[i]['K']}→{family_rows[i + 1]['K']} ({vals[i]:.1f}→{vals[i + 1]:.1f})" for i in inv
    )
    detail = f"{label}{len(inv)} inversion(s) over {len(family_rows)} members" + (f": {where}" if inv else "")
    if wiggles:
        detail += f" (+{wiggles} under {TOLERANCE:.0%})"
    detail += f"; {vals[0]:.1f} (K={family_rows[0]['K']}) → {vals[-1]:.1f} (K={family_rows[-1]['K']})"
    numbers = {
        "inversions": [family_rows[i + 1]["K"] for i in inv],
        "wiggles": wiggles,
        "excess_tv": excess_variation(vals),
    }
    return Claim("a", TITLES["a"], len(inv) <= MAX_INVERSIONS, detail, numbers)


def check_naive(rows: Sequence[Row], metric: str = "ppl") -> Claim:
    members = sized(rows, metric=metric)
    family_by_k = {r["K"]: r for r in members}
    naive = {r["K"]: r for r in family(rows, "naive", metric)}
    if not family_by_k or not naive:
        return Claim("b", TITLES["b"], None, "naive layer dropping was not evaluated")
    low, top = min(r.get("inference") or 0 for r in members), max(r.get("inference") or 0 for r in members)
    ks = [k for k, r in sorted(family_by_k.items()) if low < (r.get("inference") or 0) < top and k in naive]
    if not ks:
        return Claim("b", TITLES["b"], None, "no intermediate member has a naive counterpart")
    ratios = {k: family_by_k[k][metric] / naive[k][metric] for k in ks}
    worse = [k for k in ks if ratios[k] >= 1]
    worst = max(ks, key=lambda k: ratios[k])
    detail = (
        f"{len(ks) - len(worse)} of {len(ks)} members below naive; worst ratio {ratios[worst]:.3f} at K={worst} "
        f"({family_by_k[worst][metric]:.1f} vs {naive[worst][metric]:.1f})"
    )
    if worse:
        detail += f"; not below at K={', '.join(map(str, worse))}"
    return Claim("b", TITLES["b"], not worse, detail, {"ratios": ratios, "failed_K": worse})


def check_pruning(
    rows: Sequence[Row], metric: str = "ppl", methods: Sequence[str] = ("shortgpt", "laco")
) -> Claim:
    family_rows = sized(rows, metric=metric)
    if not family_rows:
        return Claim("c", TITLES["c"], None, "no family members")
    top = max(r.get("inference") or 0 for r in family_rows)
    members = [r for r in family_rows if r.get("inference") and r["inference"] < top]
    parts, failed, numbers = [], {}, {}
    present = [meth for meth in methods if family(rows, meth, metric)]
    if not present:
        return Claim("c", TITLES["c"], None, "neither ShortGPT nor LaCo was evaluated")
    for meth in present:
        pts = sorted({(r["inference"], r[metric]) for r in family(rows, meth, metric) if r.get("inference")})
        ratios = {}
        for r in members:
            ref = interpolate(pts, r["inference"])
            if ref is not None:
                ratios[r["K"]] = r[metric] / ref
        bad = [k for k, q in ratios.items() if q >= 1]
        failed[meth] = bad
        numbers[meth] = ratios
        if ratios:
            worst = max(ratios, key=ratios.__getitem__)
            parts.append(
                f"{meth}: {len(ratios) - len(bad)} of {len(ratios)} below (worst ratio {ratios[worst]:.3f} at "
                f"K={worst}" + (f"; above at K={', '.join(map(str, bad))}" if bad else "") + ")"
            )
        else:
            parts.append(f"{meth}: no member within its parameter range")
    if present != list(methods):
        parts.append(f"not evaluated: {', '.join(x for x in methods if x not in present)}")
    checked = any(numbers[meth] for meth in present)
    passed = checked and not any(failed.values()) and present == list(methods)
    return Claim(
        "c",
        TITLES["c"],
        passed if checked else None,
        "; ".join(parts),
        {"ratios": numbers, "failed_K": failed},
    )


def check_random(
    rows: Sequence[Row], random_rows: Sequence[Row], metric: str = "ppl", random_method: str = "boomerang"
) -> Claim:
    """``random_rows``: the random-init student's family (rows of ``random_method``, e.g. a sweep's
    ``random-student`` baseline, or the boomerang rows of its own sweep)."""
    family_by_k = {r["K"]: r for r in family(rows, metric=metric)}
    rnd = {r["K"]: r for r in family(random_rows, random_method, metric)}
    if not family_by_k or not rnd:
        return Claim("d", TITLES["d"], None, "the random-init student's family was not evaluated")
    m = max(family_by_k)
    ks = [k for k in sorted(family_by_k) if 0 < k < m and k in rnd]
    if not ks:
        return Claim("d", TITLES["d"], None, "no intermediate sizes in common")
    ratios = {k: rnd[k][metric] / family_by_k[k][metric] for k in ks}
    near = [k for k in ks if ratios[k] < RANDOM_FAR]
    low = min(ks, key=lambda k: ratios[k])
    med = sorted(ratios.values())[len(ratios) // 2]
    k0 = (
        f"; its student {rnd[0][metric]:.1f} vs {family_by_k[0][metric]:.1f}"
        if 0 in rnd and 0 in family_by_k
        else ""
    )
    detail = (
        f"random-init members are {ratios[low]:.2f}× to {max(ratios.values()):.2f}× the boomerang members "
        f"(median {med:.2f}×; threshold {RANDOM_FAR}×){k0}"
    )
    if near:
        detail += f"; within {RANDOM_FAR}× at K={', '.join(map(str, near))}"
    return Claim("d", TITLES["d"], not near, detail, {"ratios": ratios, "near_K": near})


def check_cosine(rows: Sequence[Row], nocos_rows: Sequence[Row], metric: str = "ppl") -> Claim:
    family_rows, nocos = family(rows, metric=metric), family(nocos_rows, metric=metric)
    if len(family_rows) < 3 or len(nocos) < 3:
        why = "the no-cosine student's family was not evaluated (--ablations random,nocos trains it)"
        return Claim("e", TITLES["e"], None, why)
    a, b = [r[metric] for r in family_rows], [r[metric] for r in nocos]
    ia, ib = len(inversions(a, TOLERANCE)), len(inversions(b, TOLERANCE))
    ta, tb = excess_variation(a), excess_variation(b)
    passed = ib > ia or (ib == ia and tb > ta)
    detail = (
        f"with cosine: {ia} inversion(s), excess TV {ta:.3f}; without: {ib} inversion(s), excess TV {tb:.3f} "
        f"(log-{metric})"
    )
    numbers = {"inversions": [ia, ib], "excess_tv": [ta, tb]}
    return Claim("e", TITLES["e"], passed, detail, numbers)


def check_all(
    rows: Sequence[Row],
    *,
    random_rows: Sequence[Row] = (),
    nocos_rows: Sequence[Row] = (),
    metric: str = "ppl",
    random_method: str = "boomerang",
) -> list[Claim]:
    """Claims (a)–(e) on one text (``random_rows`` and ``nocos_rows``: the ablations' families, same order)."""
    return [
        check_monotone(rows, metric),
        check_naive(rows, metric),
        check_pruning(rows, metric),
        check_random(rows, random_rows, metric, random_method),
        check_cosine(rows, nocos_rows, metric),
    ]
