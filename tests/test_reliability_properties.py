"""Issue 13: property-based tests (hypothesis). Every generated input to a parser ends in a value or a
``BoomerangError``; every generated value of a CLI integer option ends in exit 0 with a valid output or exit 2 with
a message, never a traceback, and never exit 0 for a value the option's rule forbids."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_kit import KEPT, N_TEACHER, invoke, make_kit

from boomerang.cli.validate import parse_ints
from boomerang.core.layermap import LayerMap
from boomerang.errors import BoomerangError
from boomerang.io.order_files import parse_order_text
from boomerang.io.sidecar import sidecar_layer_map
from boomerang.train.recipe import parse_recipe

QUICK = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CLI = settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=30), inner, max_size=4),
    max_leaves=20,
)


# ---- parsers ------------------------------------------------------------------------------------------------------


@QUICK
@given(st.text(alphabet="0123456789,- \t-x٣", max_size=16))
def test_integer_lists_parse_or_refuse(text):
    try:
        got = parse_ints(text, "--sizes")
    except BoomerangError as e:
        assert "--sizes" in str(e)
        return
    assert got and len(set(got)) == len(got) and all(isinstance(k, int) and k >= 0 for k in got)
    items = "".join(text.split()).split(",")
    assert all(items) and all(p.replace("-", "", 1).isascii() for p in items)


@QUICK
@given(st.lists(st.integers(0, 300), unique=True, min_size=1, max_size=12))
def test_integer_lists_round_trip(values):
    assert parse_ints(",".join(map(str, values)), "x") == values
    assert parse_ints(" , ".join(map(str, values)), "x") == values


@QUICK
@given(st.integers(0, 50), st.integers(0, 50))
def test_ranges(a, b):
    if b < a:
        with pytest.raises(BoomerangError, match="runs backwards"):
            parse_ints(f"{a}-{b}")
    else:
        assert parse_ints(f"{a}-{b}") == list(range(a, b + 1))


@QUICK
@given(json_values)
def test_order_json_is_an_order_or_a_clear_error(data):
    try:
        po = parse_order_text(json.dumps(data), "--order X")
    except BoomerangError as e:
        text = str(e)
        assert "--order X" in text and "[3, 2, 1, 0]" in text  # where, and an example of the fix
        assert "validation error" not in text.lower() and "pydantic" not in text.lower()
        return
    m = po.n_student
    assert all(len(s) == k and set(s) <= set(range(m)) for k, s in enumerate(po.subsets))


@QUICK
@given(st.text(max_size=40))
def test_order_text_that_is_not_json(text):
    try:
        parse_order_text(text, "f.json")
    except BoomerangError as e:
        assert "f.json" in str(e)


@QUICK
@given(st.permutations(list(range(7))))
def test_every_permutation_is_an_order(seq):
    po = parse_order_text(json.dumps(seq), "x")
    assert po.sequence == seq and po.n_student == 7


@QUICK
@given(json_values)
def test_student_config_json_is_a_map_or_a_clear_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sc") / "student_config.json"
    path.write_text(json.dumps(data))
    try:
        lm = sidecar_layer_map(path)
    except BoomerangError as e:
        assert str(path) in str(e) and "copied_teacher_layers" in str(e)
        return
    assert isinstance(lm, LayerMap)


@QUICK
@given(st.sets(st.integers(1, 15), max_size=10), st.integers(1, 16))
def test_student_config_json_round_trip(tmp_path_factory, rest, n):
    kept = sorted({0} | {k for k in rest if k < n})
    lm = LayerMap.from_kept(kept, n)
    path = tmp_path_factory.mktemp("sc") / "student_config.json"
    path.write_text(json.dumps(lm.to_reference()))
    assert sidecar_layer_map(path) == lm


@QUICK
@given(st.binary(max_size=64))
def test_student_config_json_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("sc") / "student_config.json"
    path.write_bytes(raw)
    with contextlib.suppress(BoomerangError):
        sidecar_layer_map(path)


RECIPE = {"teacher": "t", "data": {"train": "x"}}
keys = st.sampled_from(
    ["train.steps", "steps", "lr", "loss.kl", "kl", "train.batch_size", "data.seq_len", "init.layers", "train",
     "nonsense", "train.stepz", "optim.betas", "init.strategy", "", " ", "a.b.c", "data"]
)  # fmt: skip
values = st.sampled_from(
    ["1", "0", "-3", "1e-4", "[0.9, 0.95]", "null", "true", "x", "[", "{a: 1}", "", "nan"]
)


@QUICK
@given(st.lists(st.tuples(keys, st.sampled_from(["=", ":", "=="]), values), max_size=3))
def test_recipe_overrides_apply_or_refuse(items):
    overrides = [k + sep + v for k, sep, v in items]
    try:
        recipe = parse_recipe(dict(RECIPE), overrides, where="r.yaml")
    except BoomerangError as e:
        assert str(e)
        return
    assert recipe.teacher == "t"


# ---- the CLI's integer options ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("kit"), archs=("llama",))


ints = st.integers(-3, 12) | st.sampled_from([2**31, 2**63, 10**30])


def _check(r, out, valid: bool) -> None:
    """No traceback; exit 0 only for a valid value (and then with the output written); exit 2 with a message."""
    assert not r.crashed, r.traceback or (r.code, r.err)
    if r.code == 0:
        assert valid, f"silently accepted: {r.out[-500:]}"
        assert out is None or out.exists()
    else:
        assert r.explained, r.err


def _fresh(tmp_path_factory):
    return tmp_path_factory.mktemp("o") / "out"


@CLI
@given(k=ints)
def test_build_num_patched(kit, tmp_path_factory, k):
    t, s = kit.pair()
    out = _fresh(tmp_path_factory)
    r = invoke(["build", "--teacher", str(t), "--student", str(s), "-k", str(k), "--out", str(out)])
    _check(r, out, 0 <= k <= len(KEPT))
    if r.code == 0:
        assert len(json.loads((out / "config.json").read_text())["boomerang"]["patched_student_layers"]) == k
    shutil.rmtree(out, ignore_errors=True)


@CLI
@given(n=ints)
def test_prune_num_layers(kit, tmp_path_factory, n):
    t, _ = kit.pair()
    out = _fresh(tmp_path_factory)
    r = invoke(["prune", "--teacher", str(t), "-n", str(n), "--out", str(out)])
    _check(r, out, 1 <= n <= N_TEACHER)
    shutil.rmtree(out, ignore_errors=True)


@CLI
@given(every=ints, first=ints, last=ints)
def test_init_every_keep_first_keep_last(kit, tmp_path_factory, every, first, last):
    t, _ = kit.pair()
    out = _fresh(tmp_path_factory)
    argv = ["init", "--teacher", str(t), "--out", str(out), "--every", str(every)]
    r = invoke([*argv, "--keep-first", str(first), "--keep-last", str(last)])
    valid = every >= 1 and 1 <= first <= N_TEACHER and 0 <= last <= N_TEACHER
    if valid:
        valid = LayerMap.every(N_TEACHER, every, first, last).n_student < N_TEACHER
    _check(r, out, valid)
    shutil.rmtree(out, ignore_errors=True)


@CLI
@given(context=st.none() | ints, stride=st.none() | ints, batch=st.none() | ints, tokens=st.none() | ints)
def test_eval_window_options(kit, tmp_path_factory, context, stride, batch, tokens):
    t, _ = kit.pair()
    out = _fresh(tmp_path_factory).with_suffix(".json")
    argv = ["eval", str(t), "--data", str(kit.path("data.txt")), "--json", str(out)]
    for flag, v in (
        ("--context", context),
        ("--stride", stride),
        ("--batch-size", batch),
        ("--max-tokens", tokens),
    ):
        if v is not None:
            argv += [flag, str(v)]
    r = invoke(argv)
    ctx = context if context is not None else 128  # the tiny model's positions
    valid = (
        (context is None or 2 <= context <= 128)
        and (stride is None or 1 <= stride < ctx)
        and (batch is None or batch >= 1)
        and (tokens is None or tokens >= 1)
    )
    _check(r, out, valid)
    if r.code == 0:
        assert json.loads(out.read_text())["perplexity"]["scored_tokens"] >= 1
    out.unlink(missing_ok=True)


@CLI
@given(texts=ints, length=ints, batch=ints)
def test_order_calibration_options(kit, tmp_path_factory, texts, length, batch):
    t, s = kit.pair()
    out = _fresh(tmp_path_factory).with_suffix(".json")
    argv = ["order", "--teacher", str(t), "--student", str(s), "--data", str(kit.corpus), "--out", str(out)]
    argv += ["--order", "similarity", "--calibration-texts", str(min(texts, 3))]
    r = invoke([*argv, "--calibration-length", str(min(length, 24)), "--batch-size", str(batch)])
    valid = min(texts, 3) >= 1 and min(length, 24) >= 2 and batch >= 1
    _check(r, out, valid)
    out.unlink(missing_ok=True)


@CLI
@given(sizes=st.text(alphabet="0123456,-", max_size=6))
def test_family_sizes_text(kit, tmp_path_factory, sizes):
    t, s = kit.pair()
    out = _fresh(tmp_path_factory)
    r = invoke(["family", "--teacher", str(t), "--student", str(s), "--sizes", sizes, "--out", str(out)])
    try:
        chosen = parse_ints(sizes)
        valid = all(k <= len(KEPT) for k in chosen)
    except BoomerangError:
        valid = False
    _check(r, out, valid)
    if r.code == 0:
        assert len(json.loads((out / "family.json").read_text())["members"]) == len(chosen)
    shutil.rmtree(out, ignore_errors=True)
