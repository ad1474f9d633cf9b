"""Issue 26, section 6: a short HTTP fuzz of `boomerang serve` in the test suite (the full run of 1,000+ requests is
``tests/fuzz_serve.py``, or ``pytest -m heavy tests/test_fuzz_serve.py``). No 5xx, no traceback, no hang, no
silent acceptance, every refusal naming its field, short error bodies, bounded memory, a clean shutdown."""

from __future__ import annotations

import json

import pytest
from fuzz_serve import GENERATORS, fuzz


def _assert_clean(report) -> None:
    assert not report.problems(), json.dumps(report.problems(), indent=1)[:6000]
    s = report.summary()
    assert s["statuses"].get(200, 0) > 0 and s["statuses"].get(400, 0) > 0  # both outcomes were exercised
    assert s["statuses"].get(413, 0) > 0


def test_fuzz_serve_short(tmp_path):
    report = fuzz(200, seed=26, root=tmp_path)
    _assert_clean(report)
    assert report.requests == 200 and len(report.by_category) >= 12


@pytest.mark.heavy
def test_fuzz_serve_thousand(tmp_path):
    report = fuzz(1000, seed=0, root=tmp_path)
    _assert_clean(report)
    assert report.requests == 1000 and {c.split(" ")[0] for c in report.by_category} >= {"valid", "bad"}
    assert len(GENERATORS) == 12
