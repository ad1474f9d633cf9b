"""Issue 13: a short CLI fuzz in the test suite (the full run of 1,000+ invocations is ``tests/fuzz_cli.py``, or
``pytest -m heavy tests/test_fuzz_cli.py``). Zero tracebacks, zero silent acceptances, every refusal explained and
every acceptance with its output."""

from __future__ import annotations

import json

import pytest
from fuzz_cli import GENERATORS, fuzz
from reliability_kit import make_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("kit"))


def _assert_clean(report) -> None:
    s = report.summary()
    problems = {
        k: getattr(report, k)[:3]
        for k in ("tracebacks", "silent_acceptances", "unexplained", "missing_output", "hangs")
        if getattr(report, k)
    }
    assert not problems, json.dumps(problems, indent=1)[:6000]
    assert s["exit_0"] > 0 and s["exit_2"] > 0  # both outcomes were exercised


def test_fuzz_cli_short(kit, tmp_path):
    report = fuzz(150, seed=13, root=tmp_path, kit=kit)
    _assert_clean(report)
    assert report.invocations == 150 and len(report.by_command) >= 8


@pytest.mark.heavy
def test_fuzz_cli_thousand(kit, tmp_path):
    report = fuzz(1000, seed=0, root=tmp_path, kit=kit)
    _assert_clean(report)
    assert set(report.by_command) == set(GENERATORS)
