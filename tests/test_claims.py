"""The claims table's checks on hand-made sweep rows: each verdict can go either way."""

import math

import pytest

from boomerang.pipelines import claims as C


def rows(method, values, params=None, start=16):
    params = params or [100 + 10 * k for k in range(len(values))]
    return [
        {"method": method, "K": k, "ppl": v, "inference": p, "layers": start + k}
        for k, (v, p) in enumerate(zip(values, params, strict=True))
    ]


def test_inversions_and_excess_variation():
    assert C.inversions([5, 4, 3, 2]) == []
    assert C.inversions([5, 6, 3, 4, 1]) == [0, 2]
    assert C.excess_variation([8, 4, 2]) == pytest.approx(0.0)
    assert C.excess_variation([8, 16, 2]) == pytest.approx(2 * math.log(2))  # up one doubling, back down


def test_interpolation_is_linear_in_log_metric():
    pts = [(100, 10.0), (200, 1000.0)]
    assert C.interpolate(pts, 150) == pytest.approx(100.0)
    assert C.interpolate(pts, 100) == pytest.approx(10.0)
    assert C.interpolate(pts, 99) is None and C.interpolate(pts, 201) is None


def test_monotone_passes_with_one_inversion_and_fails_with_two():
    assert C.check_monotone(rows("boomerang", [9, 8, 8.5, 7, 6])).passed
    bad = C.check_monotone(rows("boomerang", [9, 9.5, 8, 8.5, 6]))
    assert not bad.passed and bad.numbers["inversions"] == [1, 3] and "K=0→1" in bad.detail


def test_naive_checks_intermediate_members_only():
    fam = rows("boomerang", [50, 30, 20, 10])
    assert C.check_naive(fam + rows("naive", [50, 90, 80, 10])).passed  # K=0 and K=M tie by construction
    c = C.check_naive(fam + rows("naive", [50, 25, 80, 10]))
    assert not c.passed and c.numbers["failed_K"] == [1] and "K=1" in c.detail


def test_pruning_interpolates_on_parameters():
    fam = rows("boomerang", [40, 30, 15, 10], params=[100, 110, 120, 130])
    # pruned models at 100 and 130 parameters: 60 and 10 -> interpolated 60^(2/3)·10^(1/3) ≈ 33 at 110
    shortgpt = [
        {"method": "shortgpt", "K": 0, "ppl": 60, "inference": 100},
        {"method": "shortgpt", "K": 3, "ppl": 10, "inference": 130},
    ]
    laco = [{**r, "method": "laco", "ppl": r["ppl"] * 2} for r in shortgpt]
    c = C.check_pruning(fam + shortgpt + laco)
    assert c.passed, c.detail
    assert c.numbers["ratios"]["shortgpt"][1] == pytest.approx(30 / (60 ** (2 / 3) * 10 ** (1 / 3)))
    tight = [{**r, "ppl": 35} if r["inference"] == 100 else r for r in shortgpt]
    c = C.check_pruning(fam + tight + laco)
    assert not c.passed and c.numbers["failed_K"]["shortgpt"] == [0, 1]
    assert C.check_pruning(fam + shortgpt).passed is False  # LaCo missing: not a pass
    assert C.check_pruning(fam).passed is None


def test_random_init_must_stay_far_above():
    fam = rows("boomerang", [50, 30, 20, 10])
    assert C.check_random(fam, rows("boomerang", [900, 800, 500, 10])).passed
    c = C.check_random(fam, rows("boomerang", [900, 800, 30, 10]))
    assert not c.passed and c.numbers["near_K"] == [2]
    assert C.check_random(
        fam, rows("random-student", [900, 800, 500, 10]), random_method="random-student"
    ).passed
    assert C.check_random(fam, []).passed is None


def test_cosine_ablation_smoothness():
    smooth = rows("boomerang", [50, 40, 30, 20, 10])
    rough = rows("boomerang", [60, 70, 30, 35, 10])
    assert C.check_cosine(smooth, rough).passed
    assert not C.check_cosine(rough, smooth).passed
    assert not C.check_cosine(smooth, smooth).passed  # equally smooth is not "less smooth"


def test_check_all_gives_five_claims():
    out = C.check_all(rows("boomerang", [50, 40, 30]))
    assert [c.key for c in out] == ["a", "b", "c", "d", "e"]
    assert [c.verdict for c in out] == ["PASS", "n/a", "n/a", "n/a", "n/a"]


def test_wiggles_under_the_tolerance_are_not_inversions():
    c = C.check_monotone(rows("boomerang", [90, 50, 37.0, 37.2, 37.1, 37.3]))  # +0.5% steps near the teacher
    assert c.passed and c.numbers["inversions"] == [] and c.numbers["wiggles"] == 2 and "under 1%" in c.detail
    assert not C.check_monotone(rows("boomerang", [90, 50, 37.0, 38.0, 37.1, 38.5])).passed  # +2.7%, +3.8%


def test_teacher_size_variants_are_reported_apart_not_judged():
    """A K-indexed order that patches single-layer blocks last ends with members the teacher's size: they are
    teacher-size variants, not intermediate sizes. Here K=3 is such a variant and worse than naive dropping (the
    teacher); it must not fail (b) or (c), nor count as an inversion in (a)."""
    fam = rows("boomerang", [50, 30, 12, 10.8, 10], params=[100, 110, 120, 130, 130])
    fam[-1]["role"] = "teacher"
    naive = rows("naive", [60, 40, 20, 10, 10], params=[100, 110, 120, 130, 130])
    assert [r["K"] for r in C.teacher_size_variants(fam)] == [3]
    assert [r["K"] for r in C.sized(fam)] == [0, 1, 2, 4]
    b = C.check_naive(fam + naive)
    assert b.passed and sorted(b.numbers["ratios"]) == [1, 2]
    shortgpt = [
        {"method": "shortgpt", "K": k, "ppl": v, "inference": p} for k, v, p in ((0, 80, 100), (4, 10, 130))
    ]
    laco = [{**r, "method": "laco"} for r in shortgpt]
    c = C.check_pruning(fam + shortgpt + laco)
    assert c.passed and sorted(c.numbers["ratios"]["shortgpt"]) == [0, 1, 2]
    a = C.check_monotone([*fam[:3], {**fam[3], "ppl": 14}, fam[4]])  # the variant worse than K=2: not counted
    assert a.passed and a.numbers["inversions"] == []
