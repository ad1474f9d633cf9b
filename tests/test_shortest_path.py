"""The ``shortest-path`` patch order: per-size subsets from chain surrogates of the KL, in polynomial time."""

import itertools
import json
import random

import pytest
import torch
from tiny import ids, make_pair, make_student, make_teacher, perturb, save_pair, tiny_tokenizer

import boomerang as B
from boomerang.analysis.orders import (
    ChainSurrogate,
    PatchEvaluator,
    _mask,
    best_subsets,
    compute_order,
    exhaustive_search,
    greedy_from_table,
    order_scores,
    shortest_path_search,
)
from boomerang.analysis.resolve import resolve_order
from boomerang.cli.app import run
from boomerang.io.order_files import load_order, save_order


class Chain:
    """An exact criterion with only adjacent interactions, counting the distinct sets it is asked about."""

    def __init__(self, base, u, w):
        self.base, self.u, self.w, self.asked = base, u, w, []

    def __call__(self, subset):
        self.asked.append(frozenset(subset))
        x = [int(i in subset) for i in range(len(self.u))]
        pairs = sum(self.w[j] * x[j - 1] * x[j] for j in range(1, len(x)))
        return self.base + sum(a * b for a, b in zip(self.u, x, strict=True)) + pairs


def brute_force(f, m):
    """For every size, the lowest value over all sets of that size."""
    return [min(f(frozenset(c)) for c in itertools.combinations(range(m), k)) for k in range(m + 1)]


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 11])
def test_equals_exhaustive_search_where_the_surrogate_is_exact(m):
    """On criteria with only adjacent interactions the chain surrogate is exact, so the shortest paths are the
    per-size optima; the criterion is evaluated O(M) times (distinct sets), not 2^M."""
    rng = random.Random(m)
    for _ in range(5):
        f = Chain(
            rng.uniform(0, 5),
            [rng.uniform(-2, 1) for _ in range(m)],
            [0.0] + [rng.uniform(-2, 2) for _ in range(m - 1)],
        )
        subsets, values, info = shortest_path_search(f, m)
        asked = list(f.asked)
        assert values == pytest.approx(brute_force(f, m), abs=1e-9)
        assert [len(s) for s in subsets] == list(range(m + 1))
        assert all(
            f(frozenset(s)) == pytest.approx(v, abs=1e-12) for s, v in zip(subsets, values, strict=True)
        )
        assert len(asked) == len(set(asked)) == info["models_scored"]  # every set scored once
        assert len(asked) <= (6 * m - 6 if m >= 3 else 2**m)
        assert info["dp_relaxations"] <= 2 * 4 * m * (m + 1)
        for anchor in ("student", "teacher"):  # exact: the surrogate predicts every size's optimum
            assert info["surrogates"][anchor]["predicted"] == pytest.approx(values, abs=1e-9)


def test_finds_the_best_pair_where_greedy_cannot():
    """Layer 0 alone is the best single patch, but layers 1 and 2 together beat every pair that contains 0:
    greedy (KLPatch) keeps 0 and misses them; the shortest path does not."""
    f = Chain(5.0, [-1.0, -0.4, -0.4, -0.1], [0.0, 0.0, -2.0, 0.0])
    subsets, values, _info = shortest_path_search(f, 4)
    table = [f(frozenset(i for i in range(4) if mask >> i & 1)) for mask in range(16)]
    greedy, greedy_values = greedy_from_table(table, 4)
    assert subsets[1] == (0,) and subsets[2] == (1, 2) and values[2] == pytest.approx(5.0 - 2.8)
    assert greedy[0] == 0 and greedy_values[2] > values[2] + 1.0


def test_chain_surrogate_terms_and_graph():
    f = Chain(1.0, [0.5, -1.0, 2.0], [0.0, 3.0, -4.0])
    for anchor in ("student", "teacher"):
        sg = ChainSurrogate.measure(anchor, 3, f)
        for mask in range(8):
            subset = [i for i in range(3) if mask >> i & 1]
            assert sg.value(subset) == pytest.approx(f(frozenset(subset)), abs=1e-12)
        subsets, values, relaxations = sg.shortest_paths()
        assert values == pytest.approx(brute_force(f, 3), abs=1e-12)
        assert [f(frozenset(s)) for s in subsets] == pytest.approx(values, abs=1e-12)
        assert relaxations == 2 * (1 + 2 + 4)  # 1, 2, then 4 live nodes (k, previous choice), 2 edges each
    student = ChainSurrogate.measure("student", 3, f)
    assert (student.base, student.u, student.w) == (1.0, (0.5, -1.0, 2.0), (0.0, 3.0, -4.0))


# ---- on models ------------------------------------------------------------------------------------------------


def direct_kl(teacher, model, x):
    with torch.no_grad():
        lp = torch.log_softmax(teacher(x).logits.float(), -1)
        lq = torch.log_softmax(model(x).logits.float(), -1)
    return float((lp.exp() * (lp - lq)).sum() / x.numel())


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_equals_optimal_for_three_layers(arch):
    """With M = 3 every set is the anchor, one flip or an adjacent pair of flips away from the student or the
    teacher, so both surrogates together are exact and the order is the optimal one."""
    teacher, student, lm = make_pair(arch, 5, kept=(0, 2, 4))
    perturb(student, 0.2, seed=3)
    x = ids(3, 10)
    sp = compute_order("shortest-path", teacher, student, lm, x)
    opt = compute_order("optimal", teacher, student, lm, x)
    assert sp.subsets == opt.subsets and sp.info["kl"] == pytest.approx(opt.info["kl"], abs=1e-9)


def test_exact_surrogate_on_a_real_model_equals_optimal():
    """A student equal to its teacher except two adjacent layers: the KL depends on those two positions only, so
    the chain surrogate is exact on every one of the 2^M sets, and the per-size KL equals exhaustive search's."""
    teacher = make_teacher("llama", 7)
    lm = B.LayerMap.from_kept(range(7), 7)  # one teacher layer per student layer
    student = make_student(teacher, lm, scale=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer, scale in ((student.model.layers[2], 0.3), (student.model.layers[3], 0.1)):
            for p in layer.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    x = ids(3, 10)
    m = lm.n_student
    table = exhaustive_search(PatchEvaluator(teacher, student, lm, x))
    sp = compute_order("shortest-path", teacher, student, lm, x)
    sg = ChainSurrogate(
        anchor="student", **{k: sp.info["surrogates"]["student"][k] for k in ("base", "u", "w")}
    )
    assert (
        max(
            abs(sg.value(s) - table[_mask(s)])
            for k in range(m + 1)
            for s in itertools.combinations(range(m), k)
        )
        < 1e-6
    )
    assert sp.info["kl"] == pytest.approx([table[_mask(s)] for s in best_subsets(table, m)], abs=1e-9)
    assert sp.info["evaluations"]["head_evaluations"] <= 6 * m - 6 < 2**m


def test_scores_are_exact_and_the_work_is_polynomial():
    teacher, student, lm = make_pair("qwen2", 10, kept=(0, 2, 3, 4, 5, 6, 7, 8, 9))
    perturb(student, 0.2, seed=5)
    x = ids(3, 10)
    m = lm.n_student
    sp = compute_order("shortest-path", teacher, student, lm, x, batch_size=2)
    assert sp.name == "shortest-path" and [len(s) for s in sp.subsets] == list(range(m + 1))
    for k, subset in enumerate(sp.subsets):
        assert sp.info["kl"][k] == pytest.approx(
            direct_kl(teacher, B.patch(teacher, student, lm, subset), x), abs=1e-6
        )
        chosen = sp.info["candidates"][k][
            sp.info["chosen_by"][k] if sp.info["chosen_by"][k] != "both" else "student"
        ]
        assert sp.info["kl"][k] == min(c["kl"] for c in sp.info["candidates"][k].values()) == chosen["kl"]
    ev = sp.info["evaluations"]
    assert ev["head_evaluations"] == sp.info["models_scored"] <= 6 * m - 6
    assert ev["layer_evaluations"] < ev["full_model_layer_evaluations"]
    assert order_scores(teacher, student, lm, sp, x, batch_size=2) == pytest.approx(sp.info["kl"], abs=1e-9)
    assert ev["head_evaluations"] < 1 + m * (m + 1) // 2  # what greedy-kl scores (test_orders.py)


def _corpus(tmp_path, words=3000):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(f"w{int(i)}" for i in torch.randint(4, 96, (words,), generator=g)))
    return path


def test_usable_wherever_greedy_kl_is(tmp_path):
    """resolve_order, Family, `boomerang order`, build, family and sweep all take --order shortest-path."""
    from boomerang.analysis.orders import KL_TEXTS
    from boomerang.data import calibration_ids
    from boomerang.pipelines.sweep import EvalSpec, sweep

    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    perturb(student, 0.3, seed=2)
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    data = _corpus(tmp_path)
    tok = tiny_tokenizer()
    cal = calibration_ids(str(data), tok, n=KL_TEXTS)
    expected = compute_order("shortest-path", teacher, student, lm, cal)
    assert resolve_order("shortest-path", lm, teacher=teacher, student=student, calibration=cal) == expected
    assert B.Family(teacher, student, tokenizer=tok).order("shortest-path", data=str(data)) == expected
    save_order(expected, tmp_path / "sp.json")
    assert load_order(tmp_path / "sp.json") == expected
    assert json.loads((tmp_path / "sp.json").read_text())["name"] == "shortest-path"

    pair = ["--teacher", str(t_dir), "--student", str(s_dir), "--data", str(data)]
    assert run(["order", *pair, "--order", "shortest-path", "--out", str(tmp_path / "o.json")]) == 0
    assert load_order(tmp_path / "o.json") == expected
    common = [*pair, "--order", "shortest-path"]
    assert run(["build", *common, "-k", "2", "--out", str(tmp_path / "b")]) == 0
    assert load_order(tmp_path / "b" / "order.json") == expected
    x = ids(2, 10)
    with torch.no_grad():
        built = B.load_model(tmp_path / "b", dtype="float32")(x).logits
        ref = B.patch(teacher, student, lm, num_patched=2, order=expected)(x).logits
    assert torch.equal(built, ref)
    assert run(["family", *common, "--sizes", "1,3", "--out", str(tmp_path / "f")]) == 0
    manifest = json.loads((tmp_path / "f" / "family.json").read_text())
    assert [r["patched_student_layers"] for r in manifest["members"]] == [
        list(expected.patched(k)) for k in (1, 3)
    ]
    spec = EvalSpec(context=24, stride=12, max_tokens=48, batch_size=2)
    result = sweep(teacher, student, str(data), tmp_path / "s", tokenizer=tok, order="shortest-path", spec=spec,
                   sizes=[1, 2], calibration_samples=3, calibration_length=16)  # fmt: skip
    po = load_order(tmp_path / "s" / "order.json")
    assert po == compute_order(
        "shortest-path", teacher, student, lm, calibration_ids(str(data), tok, n=3, length=16)
    )
    assert [r["patched"] for r in result["rows"]] == [list(po.patched(1)), list(po.patched(2))]
