"""Data-driven patch orders (similarity, greedy-kl, optimal) and the span runner they are built on."""

import itertools
import json

import pytest
import torch
from tiny import DECODERS, ids, make_pair, make_student, make_teacher, perturb, save_pair, tiny_tokenizer

import boomerang as B
from boomerang.analysis.orders import (
    KL_TEXTS,
    PatchEvaluator,
    compute_order,
    exhaustive_search,
    greedy_from_table,
    order_scores,
    subsample,
)
from boomerang.analysis.resolve import resolve_order
from boomerang.cli.app import run
from boomerang.core.hooks import capture
from boomerang.core.spans import embedding_output, run_span
from boomerang.errors import BoomerangError
from boomerang.io.order_files import load_order, save_order


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits.float()


def direct_kl(teacher, model, x):
    """KL(teacher || model) per token from two plain full forward passes."""
    lp = torch.log_softmax(_logits(teacher, x), -1)
    lq = torch.log_softmax(_logits(model, x), -1)
    return float((lp.exp() * (lp - lq)).sum() / x.numel())


def direct_cos(teacher, model, x):
    """Mean per-token cosine of the final normed hidden states (hidden_states[-1] of the HF output)."""
    with torch.no_grad():
        a = teacher(x, output_hidden_states=True).hidden_states[-1].float()
        b = model(x, output_hidden_states=True).hidden_states[-1].float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


# ---- spans ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [*DECODERS, "bert"])
def test_spans_compose_to_the_full_forward(arch):
    m = make_teacher(arch, 6)
    x = ids(2, 10)
    with torch.no_grad():
        full = m(input_ids=x).logits
        with capture(m, outputs=range(6), inputs=range(6), detach=True) as got:
            m(input_ids=x)
        assert torch.equal(embedding_output(m, x), got["in"][0])
        h = run_span(m, x, start=0, stop=2)
        assert torch.equal(h, got["out"][1])
        h = run_span(m, x, start=2, stop=5, hidden=h)
        assert torch.allclose(h, got["out"][4], atol=1e-6)
        assert torch.allclose(run_span(m, x, start=5, hidden=h, until="logits"), full, atol=1e-5)
        # head only: no layer runs, the injected state goes through the final norm and head
        assert torch.allclose(run_span(m, x, start=6, hidden=got["out"][5], until="logits"), full, atol=1e-5)
        assert torch.equal(run_span(m, x, start=3, stop=3, hidden=h), h)
    # no layer stays patched afterwards
    assert torch.equal(_logits(m, x), full.float())


def test_span_bad_arguments():
    m = make_teacher("llama", 4)
    with pytest.raises(ValueError, match="bad span"):
        run_span(m, ids(), start=3, stop=2, hidden=torch.zeros(1))
    with pytest.raises(ValueError, match="needs the hidden state"):
        run_span(m, ids(), start=2)


# ---- evaluator and searches against brute force ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text", "gpt2"])
def test_exhaustive_table_equals_brute_force_kl(arch):
    teacher, student, lm = make_pair(arch, 6, kept=(0, 2, 4, 5))
    x = ids(3, 10)
    ev = PatchEvaluator(teacher, student, lm, x, batch_size=2)
    table = exhaustive_search(ev)
    m = lm.n_student
    for mask in range(1 << m):
        patched = [i for i in range(m) if mask >> i & 1]
        ref = direct_kl(teacher, B.patch(teacher, student, lm, patched), x)
        assert table[mask] == pytest.approx(ref, abs=1e-6), patched
    # all patched = the teacher (to float32 rounding: the KL is a difference of sums over the vocabulary)
    assert table[(1 << m) - 1] == pytest.approx(0.0, abs=1e-6)
    assert ev.counts["blocks"] == 2 ** (m + 1) - 2 and ev.counts["heads"] == 2**m


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_greedy_kl_is_greedy_and_scores_are_exact(arch):
    teacher, student, lm = make_pair(arch, 8, kept=(0, 2, 4, 6, 7))
    x = ids(3, 10)
    po = compute_order("greedy-kl", teacher, student, lm, x, batch_size=2)
    seq, kl = po.sequence, po.info["kl"]
    m = lm.n_student
    # the same choices as reading the greedy path off an exhaustive table
    table = exhaustive_search(PatchEvaluator(teacher, student, lm, x, batch_size=2))
    tseq, tkl = greedy_from_table(table, m)
    assert seq == tseq and kl == pytest.approx(tkl, abs=1e-9)
    for k in range(m + 1):
        ref = direct_kl(teacher, B.patch(teacher, student, lm, num_patched=k, order=po), x)
        assert kl[k] == pytest.approx(ref, abs=1e-6)
    # each step is the best extension of the previous set
    for k in range(m):
        prev = set(po.subsets[k])
        options = [table[sum(1 << i for i in prev | {j})] for j in range(m) if j not in prev]
        assert kl[k + 1] == pytest.approx(min(options), abs=1e-9)
    ev = po.info["evaluations"]
    assert ev["head_evaluations"] == 1 + m * (m + 1) // 2
    assert ev["layer_evaluations"] < ev["full_model_layer_evaluations"]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_greedy_equals_optimal_for_two_layers(arch):
    # with M = 2, size 1 is the greedy first step over all singletons: greedy is provably optimal
    teacher, student, lm = make_pair(arch, 4, kept=(0, 2))
    x = ids(3, 10)
    greedy = compute_order("greedy-kl", teacher, student, lm, x)
    optimal = compute_order("optimal", teacher, student, lm, x)
    assert greedy.subsets == optimal.subsets
    assert greedy.info["kl"] == pytest.approx(optimal.info["kl"], abs=1e-9)


def test_greedy_equals_optimal_when_optima_are_nested():
    """A student that is the teacher with layers damaged at widely different strengths: the best subsets are
    nested (checked), and then greedy must find every one of them."""
    teacher = make_teacher("llama", 5)
    lm = B.LayerMap.from_kept(range(5), 5)  # one teacher layer per student layer
    student = make_student(teacher, lm, scale=0.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer, scale in zip(student.model.layers, (0.3, 0.0, 0.03, 0.1, 0.01), strict=True):
            for p in layer.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    x = ids(3, 12)
    optimal = compute_order("optimal", teacher, student, lm, x)
    subsets = [set(s) for s in optimal.subsets]
    assert all(a <= b for a, b in itertools.pairwise(subsets)), "construction must give nested optima"
    greedy = compute_order("greedy-kl", teacher, student, lm, x)
    assert greedy.subsets == optimal.subsets
    assert greedy.sequence[:2] == [0, 3]  # the most damaged layers first
    assert optimal.info["greedy_gap"] == pytest.approx([0.0] * 6, abs=1e-12)


def test_optimal_is_never_worse_than_greedy():
    teacher, student, lm = make_pair("qwen2", 8, kept=(0, 2, 4, 6, 7))
    perturb(student, 0.2, seed=5)
    x = ids(3, 10)
    po = compute_order("optimal", teacher, student, lm, x)
    assert all(gap >= -1e-12 for gap in po.info["greedy_gap"])
    assert po.info["kl"][-1] == pytest.approx(0.0, abs=1e-6)
    assert po.info["subsets_scored"] == 2**lm.n_student
    for k, subset in enumerate(po.subsets):
        ref = direct_kl(teacher, B.patch(teacher, student, lm, subset), x)
        assert po.info["kl"][k] == pytest.approx(ref, abs=1e-6)


def test_similarity_order_follows_block_end_similarity():
    teacher, student, lm = make_pair("llama", 8, kept=(0, 2, 4, 6, 7))
    x = ids(4, 10)
    po = compute_order("similarity", teacher, student, lm, x, batch_size=3, score=True)
    # reference: capture both models' outputs and compare layer i with teacher layer target(i) by hand
    with torch.no_grad(), capture(student, outputs=range(5), detach=True) as s_out:
        student(x)
        s_hidden = dict(s_out["out"])
    with torch.no_grad(), capture(teacher, outputs=range(8), detach=True) as t_out:
        teacher(x)
    sims = [
        float(torch.nn.functional.cosine_similarity(s_hidden[i], t_out["out"][lm.target(i)], dim=-1).mean())
        for i in range(5)
    ]
    assert po.info["layer_similarity"] == pytest.approx(sims, abs=1e-5)
    assert po.sequence == sorted(range(5), key=lambda i: sims[i])
    assert len(po.info["kl"]) == 6 and po.info["kl"][-1] == pytest.approx(0.0, abs=1e-6)


def test_order_scores_for_builtin_orders_match_direct_computation():
    teacher, student, lm = make_pair("gemma3_text", 6, kept=(0, 2, 4, 5))
    x = ids(2, 10)
    for order in ("last", "first"):
        po = resolve_order(order, lm)
        kl = order_scores(teacher, student, lm, po, x)
        cos = order_scores(teacher, student, lm, po, x, criterion="cos")
        for k in range(lm.n_student + 1):
            model = B.patch(teacher, student, lm, num_patched=k, order=order)
            assert kl[k] == pytest.approx(direct_kl(teacher, model, x), abs=1e-6)
            assert cos[k] == pytest.approx(direct_cos(teacher, model, x), abs=1e-5)


# ---- serialisation -------------------------------------------------------------------------------------------------


# ---- size-aware: one member per distinct size --------------------------------------------------------------------


def _brute_force_by_size(teacher, student, lm, x, tied=True):
    """The lowest-KL patched set for every layer count, over every subset (tied pairs: 0 and M-1 together)."""
    m, best = lm.n_student, {}
    for r in range(m + 1):
        for subset in itertools.combinations(range(m), r):
            if tied and (0 in subset) != (m - 1 in subset):
                continue
            plan = B.PatchPlan(layer_map=lm, patched=subset)
            kl = direct_kl(teacher, B.patch(teacher, student, lm, subset), x)
            if plan.n_layers not in best or kl < best[plan.n_layers][0] - 1e-12:
                best[plan.n_layers] = (kl, subset)
    return best


def test_size_aware_is_the_exhaustive_optimum_per_size():
    """With few layers every subset is scored: each size's member is the brute-force best of that size; single-
    layer blocks may come from either model; no member mixes the embedding of one model with the other's head."""
    teacher, student, lm = make_pair("llama", 8, kept=(0, 1, 3, 6, 7))  # blocks 1, 2, 3, 1, 1 layers
    perturb(student, 0.3, seed=7)
    x = ids(3, 10)
    po = compute_order("size-aware", teacher, student, lm, x)
    assert po.by_size and po.n_student == 5 and po.sequence is None
    best = _brute_force_by_size(teacher, student, lm, x)
    layers = [B.PatchPlan(layer_map=lm, patched=s).n_layers for s in po.subsets]
    assert layers == sorted(best) == list(range(5, 9))  # every size once, smallest first
    for subset, kl, n in zip(po.subsets, po.info["kl"], layers, strict=True):
        assert kl == pytest.approx(best[n][0], abs=1e-6)
        assert kl == pytest.approx(direct_kl(teacher, B.patch(teacher, student, lm, subset), x), abs=1e-6)
        assert (0 in subset) == (4 in subset)
    assert po.info["method"] == "exhaustive" and po.info["kl"][-1] == pytest.approx(0.0, abs=1e-6)
    # K indexes the sizes: member k is the k-th size, whatever it patches
    m3 = B.patch(teacher, student, lm, num_patched=3, order=po)
    assert torch.equal(_logits(m3, x), _logits(B.patch(teacher, student, lm, po.subsets[3]), x))
    with pytest.raises(BoomerangError, match="4 sizes"):
        B.patch(teacher, student, lm, num_patched=4, order=po)


def test_size_aware_search_beyond_exhaustive(monkeypatch):
    """Past the exhaustive limit: the multi-layer blocks are enumerated and the single-layer blocks searched. The
    members still cover every size with exact KLs, and each is at least as good as the best member of its size
    whose single-layer blocks are all the student's or all the teacher's."""
    import boomerang.analysis.orders as orders

    teacher, student, lm = make_pair("qwen2", 8, kept=(0, 1, 3, 4, 6, 7))  # blocks 1, 2, 1, 2, 1, 1
    perturb(student, 0.3, seed=3)
    x = ids(2, 10)
    monkeypatch.setattr(orders, "SIZE_EXHAUSTIVE", 4)
    po = compute_order("size-aware", teacher, student, lm, x)
    assert po.info["method"].startswith("multi-layer blocks")
    layers = [B.PatchPlan(layer_map=lm, patched=s).n_layers for s in po.subsets]
    assert layers == list(range(6, 9))
    singles = [0, 2, 4, 5]
    for subset, kl, n in zip(po.subsets, po.info["kl"], layers, strict=True):
        assert kl == pytest.approx(direct_kl(teacher, B.patch(teacher, student, lm, subset), x), abs=1e-6)
        for fixed in ((), tuple(singles)):
            for multi in ((), (1,), (3,), (1, 3)):
                cand = tuple(sorted({*multi, *fixed}))
                if B.PatchPlan(layer_map=lm, patched=cand).n_layers == n:
                    assert kl <= direct_kl(teacher, B.patch(teacher, student, lm, cand), x) + 1e-6
    best = _brute_force_by_size(teacher, student, lm, x)
    print("size-aware vs optimum:", [(po.info["kl"][i], best[n][0]) for i, n in enumerate(layers)])


@pytest.mark.parametrize("cache_bytes", [2 << 30, 0])
def test_kl_as_log_sum_exp_and_dot_product(cache_bytes):
    """KL summed as logsumexp(z) - p.z + sum p log p equals kl_div on log-softmaxes, with the teacher's
    probabilities cached or (over the cache budget) recomputed per score; the teacher itself scores 0."""
    from boomerang.analysis.teacher_kl import kl_sum, negative_entropy

    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5), tie=False)
    perturb(student, 0.3, seed=5)
    x = ids(3, 10)
    ev = PatchEvaluator(teacher, student, lm, x, batch_size=2, cache_bytes=cache_bytes)
    assert (ev._ref is None) == (cache_bytes == 0)
    for subset in [(), (0,), (1, 2), (3,), (0, 1, 2, 3)]:
        ref = direct_kl(teacher, B.patch(teacher, student, lm, subset), x)
        assert ev.evaluate(subset) == pytest.approx(ref, abs=1e-6), subset
    assert abs(ev.evaluate(range(4))) < 1e-6
    lp = torch.log_softmax(torch.randn(4, 7, 50) * 4, -1)
    lp[0, 0, 3] = -torch.inf  # a token the teacher rules out costs nothing
    z = torch.randn(4, 7, 50) * 4
    want = float(torch.nn.functional.kl_div(torch.log_softmax(z, -1), lp, log_target=True, reduction="none")
                 .nan_to_num().double().sum())  # fmt: skip
    assert kl_sum(lp.exp(), negative_entropy(lp), z) == pytest.approx(want, rel=1e-5)


def test_kl_sum_is_float64_accurate_on_a_large_vocabulary():
    """On a 49,152-entry vocabulary one float32 sum per row (and taking sum p = 1) biases the KL by ~1e-4 nats per
    token; the partial sums and the mass term keep it within 1e-5 of float64, and the teacher's KL near 0."""
    from boomerang.analysis.teacher_kl import TeacherKL

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(49152, 64, generator=g) * 0.5).bfloat16()
    h = (torch.randn(64, 64, generator=g) * 3).bfloat16()
    zt = torch.nn.functional.linear(h, w)
    zm = torch.nn.functional.linear(h + (torch.randn(64, 64, generator=g) * 0.3).bfloat16(), w)
    lp = torch.log_softmax(zt.float(), -1)
    ref = TeacherKL()
    ref.add_batch(lp)
    exact = float((lp.double().exp() * (lp.double() - torch.log_softmax(zm.double(), -1))).sum())
    assert abs(ref.total(0, zm) - exact) / 64 < 1e-5
    assert abs(ref.total(0, zt)) / 64 < 1e-5


def test_subset_scorer_starts_from_the_deepest_shared_state():
    """Scores of sets near the rebased one are bit-identical to scoring them from scratch, and run only the
    blocks from their first difference on."""
    from boomerang.analysis.orders import _SubsetScorer

    teacher, student, lm = make_pair("qwen2", 8, kept=(0, 1, 3, 4, 6, 7))  # blocks 1, 2, 1, 2, 1, 1
    perturb(student, 0.3, seed=3)
    x = ids(2, 10)
    ev = PatchEvaluator(teacher, student, lm, x)
    scorer = _SubsetScorer(ev)
    base = (1, 2)
    scorer.rebase(base)
    for subset, first_run in [((1, 2, 5), 5), ((1,), 2), ((1, 2, 4), 4), ((0, 1, 2, 5), 3), ((0, 1, 2), 3)]:
        before = ev.counts["blocks"]
        got = scorer(frozenset(subset))
        assert ev.counts["blocks"] - before == lm.n_student - first_run, subset
        assert got == ev.evaluate(subset), subset  # the same tensors through the same kernels
    scorer.rebase((0, 1, 2, 3, 4, 5))  # the teacher: nothing to run
    before = ev.counts["blocks"]
    assert scorer(frozenset(range(6))) == ev.evaluate(range(6))
    assert ev.counts["blocks"] - before == lm.n_student  # only evaluate() ran blocks


def test_size_aware_local_search_from_the_current_best_is_exact(monkeypatch):
    """Starting the local search's candidates from the current best set's states changes no value and no choice,
    and runs fewer blocks than starting them from the student's or the teacher's."""
    import boomerang.analysis.orders as orders

    teacher, student, lm = make_pair("qwen2", 10, kept=(0, 1, 2, 4, 5, 7, 8, 9))  # 2-layer blocks at 2, 4, 5
    perturb(student, 0.3, seed=11)
    x = ids(2, 10)
    monkeypatch.setattr(orders, "SIZE_EXHAUSTIVE", 4)
    got = {}
    for rebase in (False, True):
        ev = PatchEvaluator(teacher, student, lm, x)
        got[rebase] = (*orders.size_search(ev, rebase=rebase)[:2], ev.counts["blocks"])
    assert got[True][:2] == got[False][:2]
    assert got[True][2] < got[False][2]


def test_family_sizes_are_the_distinct_layer_counts():
    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))  # blocks 2, 2, 1, 1
    fam = B.Family(teacher, student, lm)
    sizes = fam.sizes
    assert [s.layers for s in sizes] == [4, 5, 6]
    assert [s.inference for s in sizes] == sorted(s.inference for s in sizes)
    assert sizes[0].patched == () and sizes[-1].layers == 6
    for s in sizes:
        model = fam.member(patched=s.patched)
        assert sum(p.numel() for p in model.parameters()) == s.trainable
    assert fam.ks == list(range(5)) and len(fam) == 5  # the default order (last) has M + 1 members


@pytest.mark.parametrize("name", ["similarity", "greedy-kl", "optimal", "size-aware"])
def test_orders_serialise_and_rebuild_identically(tmp_path, name):
    teacher, student, lm = make_pair("qwen3", 6, kept=(0, 2, 4, 5))
    x = ids(2, 10)
    po = resolve_order(name, lm, teacher=teacher, student=student, calibration=x)
    path = tmp_path / f"{name}.json"
    save_order(po, path)
    again = load_order(path)
    assert again == po and json.loads(path.read_text())["info"]["calibration"]["texts"] == 2
    assert resolve_order(str(path), lm) == po
    for k in range(po.n_members):
        a = B.patch(teacher, student, lm, num_patched=k, order=po)
        b = B.patch(teacher, student, lm, num_patched=k, order=again)
        assert torch.equal(_logits(a, x), _logits(b, x))


def test_resolve_order_errors():
    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    with pytest.raises(BoomerangError, match="calibration data"):
        resolve_order("greedy-kl", lm, teacher=teacher, student=student)
    with pytest.raises(BoomerangError, match=r"\[n_texts, length\]"):
        resolve_order("greedy-kl", lm, teacher=teacher, student=student, calibration=torch.zeros(5))
    with pytest.raises(BoomerangError, match="max_layers"):
        resolve_order("optimal", lm, teacher=teacher, student=student, calibration=ids(), max_layers=3)
    with pytest.raises(BoomerangError, match="unknown option"):
        resolve_order("greedy-kl", lm, teacher=teacher, student=student, calibration=ids(), beam=3)
    with pytest.raises(BoomerangError, match="layers"):
        resolve_order(
            "greedy-kl",
            B.LayerMap.from_kept([0, 2, 4], 6),
            teacher=teacher,
            student=student,
            calibration=ids(),
        )


# ---- CLI -------------------------------------------------------------------------------------------------------------


def _corpus(tmp_path, words=4000):
    g = torch.Generator().manual_seed(0)
    text = " ".join(f"w{int(i)}" for i in torch.randint(4, 96, (words,), generator=g))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def test_cli_order_writes_a_reusable_order(tmp_path):
    teacher, student, _lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    data = _corpus(tmp_path)
    out = tmp_path / "order.json"
    args = [
        "order",
        "--teacher",
        str(t_dir),
        "--student",
        str(s_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--calibration-texts",
        "4",
        "--calibration-length",
        "16",
    ]
    assert run([*args, "--order", "optimal"]) == 0
    po = load_order(out)
    assert po.name == "optimal" and len(po.subsets) == 5 and po.info["calibration"]["length"] == 16
    assert run([*args, "--order", "greedy-kl"]) == 2  # exists, no --force
    assert load_order(out).name == "optimal"
    assert run([*args, "--order", "greedy-kl", "--force"]) == 0
    assert load_order(out).name == "greedy-kl"
    assert run([*args, "--order", "sideways", "--force"]) == 2
    assert run([*args, "--order", "optimal", "--max-layers", "3", "--force"]) == 2


def test_cli_order_needs_data(tmp_path):
    teacher, student, _lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    tiny_tokenizer(t_dir)
    out = tmp_path / "o.json"
    assert run(["order", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out)]) == 2
    assert not out.exists()


def test_kl_searches_use_at_most_max_texts():
    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    x = ids(6, 8)
    assert torch.equal(subsample(x, 3), x[[0, 2, 5]]) and subsample(x, None) is x and subsample(x, 9) is x
    po = compute_order("greedy-kl", teacher, student, lm, x, max_texts=3)
    assert po.info["calibration"]["texts"] == 3
    assert po.info["kl"] == pytest.approx(order_scores(teacher, student, lm, po, x[[0, 2, 5]]), abs=1e-9)
    with pytest.raises(BoomerangError, match="max_texts"):
        compute_order("greedy-kl", teacher, student, lm, x, max_texts=0)


def test_cli_order_default_calibration_sizes(tmp_path):
    """Defaults sized for a 2-core CPU: KL searches on 4 blocks, similarity on up to 32 (KL --score on 4)."""
    from boomerang.analysis.orders import KL_TEXTS, SIMILARITY_TEXTS

    assert (KL_TEXTS, SIMILARITY_TEXTS) == (4, 32)
    teacher, student, _lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    data = _corpus(tmp_path, words=3000)  # 11 blocks of 256 tokens
    base = ["order", "--teacher", str(t_dir), "--student", str(s_dir), "--data", str(data)]
    assert run([*base, "--order", "greedy-kl", "--out", str(tmp_path / "g.json")]) == 0
    assert load_order(tmp_path / "g.json").info["calibration"] | {"sha256": None} == {
        "texts": 4, "length": 256, "sha256": None,
    }  # fmt: skip
    assert run([*base, "--order", "similarity", "--score", "--out", str(tmp_path / "s.json")]) == 0
    info = load_order(tmp_path / "s.json").info
    assert info["calibration"]["texts"] == 11 and info["kl_calibration"]["texts"] == 4


def test_data_orders_in_build_family_and_sweep(tmp_path):
    """build, family and sweep compute a data-driven order from --data and write it to their output."""
    from boomerang.data import calibration_ids
    from boomerang.pipelines.sweep import EvalSpec, sweep

    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    perturb(student, 0.3, seed=2)
    t_dir, s_dir = save_pair(tmp_path, teacher, student)
    data = _corpus(tmp_path, words=3000)
    tok = tiny_tokenizer()
    # what build, family and `boomerang order` compute: KL_TEXTS calibration blocks (orders.default_texts)
    expected = compute_order("greedy-kl", teacher, student, lm, calibration_ids(str(data), tok, n=KL_TEXTS))
    common = ["--teacher", str(t_dir), "--student", str(s_dir), "--order", "greedy-kl", "--data", str(data)]
    assert run(["build", *common, "-k", "2", "--no-stream", "--out", str(tmp_path / "b")]) == 0
    assert load_order(tmp_path / "b" / "order.json") == expected
    x = ids(2, 10)
    built = B.load_model(tmp_path / "b", dtype="float32")
    assert torch.equal(
        _logits(built, x), _logits(B.patch(teacher, student, lm, num_patched=2, order=expected), x)
    )
    assert run(["family", *common, "--sizes", "1,3", "--out", str(tmp_path / "f")]) == 0
    assert load_order(tmp_path / "f" / "order.json") == expected
    # sweep: the order is computed on the sweep's calibration blocks and saved with the results
    spec = EvalSpec(context=24, stride=12, max_tokens=48, batch_size=2)
    result = sweep(teacher, student, str(data), tmp_path / "s", tokenizer=tok, order="greedy-kl", spec=spec,
                   sizes=[1, 2], calibration_samples=3, calibration_length=16)  # fmt: skip
    po = load_order(tmp_path / "s" / "order.json")
    cal = calibration_ids(str(data), tok, n=3, length=16)
    assert po == compute_order("greedy-kl", teacher, student, lm, cal)
    assert [r["patched"] for r in result["rows"]] == [list(po.patched(1)), list(po.patched(2))]
