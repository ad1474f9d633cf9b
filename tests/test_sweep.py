"""Family sweeps: prefix reuse is exact, outputs are complete, interrupted sweeps resume, bad input fails fast."""

import csv
import json
import random
import struct

import pytest
import torch
from test_encoders import distil_from_bert
from test_evaluation import mlm_tokenizer
from tiny import DECODERS, make_pair, make_student, make_teacher, perturb, save_pair, tiny_tokenizer

import boomerang as B
from boomerang.cli.app import run
from boomerang.core.hooks import layer_list
from boomerang.core.patching import assemble
from boomerang.core.plan import PatchPlan
from boomerang.evaluate.perplexity import Document, batch_nll, causal_batches, mlm_batches
from boomerang.evaluate.reuse import Scored, layers_key, plan_key, schedule, score, work
from boomerang.pipelines.sweep import EvalSpec, Sweep, TaskOptions, partial_dir, sweep


def family_models(teacher, student, lm, order, random_student=None):
    """Every member, its naive baseline and (optionally) the random-student member, with their keys."""
    po = B.resolve_order(order, lm)
    out = []
    for k in range(lm.n_student + 1):
        plan = PatchPlan(layer_map=lm, patched=po.patched(k), order=po.name)
        out.append(Scored(f"K={k}", B.build(teacher, student, plan), plan_key(plan)))
        naive = assemble(
            {"teacher": teacher},
            [("teacher", j) for j in plan.teacher_layers],
            "teacher",
            "teacher",
            section=None,
        )
        out.append(Scored(f"naive K={k}", naive, layers_key("teacher", plan.teacher_layers)))
        if random_student is not None:
            rnd = B.build(teacher, random_student, plan)
            out.append(Scored(f"random K={k}", rnd, plan_key(plan, {"student": "random"})))
    return out


def count_layer_calls(models):
    calls = [0]
    handles = [
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in models
        for layer in layer_list(m.model)
    ]
    return calls, handles


def docs(n=2, length=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Document(f"d{i}", torch.randint(4, 96, (length,), generator=g).tolist(), 0, length) for i in range(n)
    ]


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("order", ["last", "first", [2, 0, 3, 1]])
def test_prefix_reuse_equals_member_by_member(arch, order):
    teacher, student, lm = make_pair(arch)
    rnd = perturb(make_student(teacher, lm, seed=7), 0.5, seed=8) if order == "last" else None
    models = family_models(teacher, student, lm, order, random_student=rnd)
    batches = causal_batches(docs(1, 24), context=16, stride=8, batch_size=2)  # one batch of two windows
    steps = schedule([m.key for m in models])
    expected = work([m.key for m in models], [len(m.key[1]) for m in models])
    for batch in batches:
        fn = lambda model, b=batch: batch_nll(model, b)  # noqa: E731
        calls, handles = count_layer_calls(models)
        shared = score(models, fn, steps=steps)
        for h in handles:
            h.remove()
        separate = score(models, fn, reuse=False)
        # bit-identical: a shared prefix is the same computation on the same input with the same tensors
        assert all(torch.equal(a, b) for a, b in zip(shared, separate, strict=True))
        assert calls[0] == expected["layers_shared"] < expected["layers_separately"]
    if order == "last":
        assert expected["distinct_models"] < expected["models"]  # naive K=M and random K=M are the teacher


def test_prefix_reuse_on_the_bert_pair_with_pseudo_perplexity():
    bert = make_teacher("bert", n_layers=12)
    lm = B.LayerMap.preset("distilbert")
    distil = distil_from_bert(bert, lm)
    tok = mlm_tokenizer()
    models = family_models(bert, distil, lm, "last")
    batches = mlm_batches(docs(1, 12), tok, context=8, batch_size=6)
    for batch in batches:
        fn = lambda model, b=batch: batch_nll(model, b)  # noqa: E731
        calls, handles = count_layer_calls(models)
        shared = score(models, fn)
        for h in handles:
            h.remove()
        assert all(torch.equal(a, b) for a, b in zip(shared, score(models, fn, reuse=False), strict=True))
        assert calls[0] == work([m.key for m in models], [len(m.key[1]) for m in models])["layers_shared"]


def test_schedule_computes_each_distinct_prefix_once():
    s = lambda i: ("student", i)  # noqa: E731
    t = lambda j: ("teacher", j)  # noqa: E731
    e, h = ("student", "embed"), ("teacher", "head")
    keys = [
        (e, (s(0), s(1), s(2)), ("student", "head")),
        (e, (s(0), s(1), t(5)), h),
        (e, (s(0), t(3), t(4), t(5)), h),
        (e, (s(0), s(1), t(5)), h),  # a duplicate
        (("teacher", "embed"), (t(0), t(1)), h),
    ]
    steps = schedule(keys)
    assert [(st.start, st.capture, st.alias_of) for st in steps] == [
        (0, (1, 2), None),
        (2, (), None),
        (1, (), None),
        (0, (), 1),
        (0, (), None),
    ]
    assert work(keys, [3, 3, 4, 3, 2])["layers_shared"] == 3 + 1 + 3 + 2


def corpus(path, seed=0, paragraphs=6):
    rng = random.Random(seed)
    path.write_text(
        "\n\n".join(
            " ".join(f"w{rng.randint(4, 40)}" + ("." if rng.random() < 0.15 else "") for _ in range(50))
            for _ in range(paragraphs)
        )
    )
    return path


SPEC = EvalSpec(context=24, stride=12, max_tokens=72, batch_size=2)  # 5 windows: 3 batches


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_sweep_writes_complete_results(tmp_path):
    teacher, student, lm = make_pair("llama")
    rnd = perturb(make_student(teacher, lm, seed=7), 0.5, seed=8)
    text = corpus(tmp_path / "t.txt")
    out = tmp_path / "sweep"
    result = sweep(
        teacher, student, text, out, tokenizer=tiny_tokenizer(), baselines=["naive", "random-student"],
        random_student=rnd, spec=SPEC, sizes=[0, 1, 3, 4],
    )  # fmt: skip
    rows = result["rows"]
    assert [(r["method"], r["K"]) for r in rows] == [
        (m, k) for m in ("boomerang", "naive", "random-student") for k in (0, 1, 3, 4)
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "order.json", "results.csv", "results.json", "results.md", "sweep.png",
    ]  # fmt: skip
    assert not partial_dir(out).exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"method", "K", "layers", "trainable", "inference", "ppl"} <= set(
        table[0]
    )
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == len(rows) + 1
    width, height = png_size(out / "sweep.png")
    assert width > 500 and height > 300 and (out / "sweep.png").stat().st_size > 10_000
    by = {(r["method"], r["K"]): r for r in rows}
    assert by[("boomerang", 0)]["role"] == "student" and by[("boomerang", 4)]["role"] == "teacher"
    # K = M is the teacher for every method; the naive baseline keeps the member's teacher layers
    assert by[("naive", 4)]["ppl"] == by[("boomerang", 4)]["ppl"] == by[("random-student", 4)]["ppl"]
    assert by[("naive", 3)]["teacher_layers"] == by[("boomerang", 3)]["teacher_layers"] == [0, 2, 3, 4, 5]
    assert (
        by[("boomerang", 3)]["inference"]
        == B.count_params(B.patch(teacher, student, lm, num_patched=3)).inference
    )
    # member-by-member evaluation gives bit-identical numbers, and so does a plain perplexity call
    plain = sweep(
        teacher, student, text, tmp_path / "plain", tokenizer=tiny_tokenizer(), baselines=["naive", "random-student"],
        random_student=rnd, spec=SPEC, sizes=[0, 1, 3, 4], reuse=False,
    )  # fmt: skip
    assert [r["ppl"] for r in plain["rows"]] == [r["ppl"] for r in rows]
    direct = B.perplexity(
        B.patch(teacher, student, lm, num_patched=3),
        text,
        tiny_tokenizer(),
        context=24,
        stride=12,
        max_tokens=72,
    )
    assert by[("boomerang", 3)]["ppl"] == pytest.approx(direct.value, rel=1e-6)
    assert json.loads((out / "order.json").read_text())["name"] == "last"


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    teacher, student, _ = make_pair("qwen3")
    text = corpus(tmp_path / "t.txt")
    kw = dict(tokenizer=tiny_tokenizer(), baselines=["naive"], spec=SPEC, order="first", checkpoint_seconds=0)
    full = sweep(teacher, student, text, tmp_path / "full", **kw)
    seen = []

    def stop_after_two(group, done, total):
        seen.append(done)
        if done == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        sweep(teacher, student, text, out, on_batch=stop_after_two, **kw)
    assert not out.exists() and (partial_dir(out) / "state.json").is_file()
    state = json.loads((partial_dir(out) / "state.json").read_text())
    assert state["groups"]["family"]["next_batch"] == 2
    seen.clear()
    resumed = sweep(teacher, student, text, out, on_batch=lambda g, d, t: seen.append(d), **kw)
    assert seen[0] == 3 and seen[-1] == len(seen) + 2  # batches 1-2 were not recomputed
    assert [r["ppl"] for r in resumed["rows"]] == [r["ppl"] for r in full["rows"]]  # exactly
    # other settings do not silently resume someone else's progress
    with pytest.raises(KeyboardInterrupt):
        sweep(teacher, student, text, tmp_path / "x", on_batch=stop_after_two, **kw)
    with pytest.raises(B.BoomerangError, match="different"):
        sweep(teacher, student, text, tmp_path / "x", **{**kw, "spec": EvalSpec(context=16, max_tokens=100)})
    assert sweep(teacher, student, text, tmp_path / "x", restart=True, **kw)["rows"]


def test_pruned_baselines_at_member_sizes(tmp_path):
    teacher, student, _ = make_pair("llama", n_layers=8, kept=(0, 2, 4, 6, 7))
    text = corpus(tmp_path / "t.txt", paragraphs=12)
    result = sweep(
        teacher, student, text, tmp_path / "out", tokenizer=tiny_tokenizer(), baselines=["shortgpt", "laco"],
        spec=SPEC, sizes=[0, 2, 5], calibration_samples=8,
    )  # fmt: skip
    rows = {(r["method"], r["K"]): r for r in result["rows"]}
    members = {k: rows[("boomerang", k)]["layers"] for k in (0, 2, 5)}
    for method in ("shortgpt", "laco"):
        for k in (0, 2, 5):
            r = rows[(method, k)]
            if "error" in r:  # LaCo cannot always reach a size; the row says why
                assert method == "laco" and r["error"]
                continue
            assert r["layers"] == members[k] and r["ppl"] > 1
    assert rows[("shortgpt", 5)]["ppl"] == rows[("boomerang", 5)]["ppl"]  # nothing pruned: the teacher


def test_shortgpt_models_share_prefixes_exactly(tmp_path):
    """ShortGPT only chooses teacher layers: its models are keyed like naive ones and evaluated with the family,
    sharing prefixes of teacher layers (an equal naive model is the same unit), with the numbers of running each
    alone; LaCo's merged models stay opaque, each in its own group."""
    teacher, student, _ = make_pair("llama", n_layers=8, kept=(0, 2, 4, 6, 7))
    perturb(teacher, 0.5, seed=2)  # distinct block influences, so ShortGPT drops a definite set
    text = corpus(tmp_path / "t.txt", paragraphs=12)
    kw = dict(
        tokenizer=tiny_tokenizer(), baselines=["naive", "shortgpt", "laco"], spec=SPEC, sizes=[0, 1, 2, 3, 4, 5],
        calibration_samples=8,
    )  # fmt: skip
    shared = sweep(teacher, student, text, tmp_path / "shared", **kw)
    alone = sweep(teacher, student, text, tmp_path / "alone", reuse=False, **kw)
    assert [r.get("ppl") for r in shared["rows"]] == [r.get("ppl") for r in alone["rows"]]
    groups = set(shared["seconds"])
    assert not any(g.startswith("shortgpt") for g in groups) and any(g.startswith("laco") for g in groups)
    keyed = shared["work"]
    assert keyed["layers_shared"] < keyed["layers_separately"]
    rows = [r for r in shared["rows"] if r["method"] == "shortgpt" and "ppl" in r]
    assert len(rows) == 6 and all(r["teacher_layers"] for r in rows if r["layers"] < 8)


def test_pruned_baselines_measure_once_per_cache(tmp_path, monkeypatch):
    """A sweep measures ShortGPT once for all its sizes; sweeps given one cache measure once between them."""
    import boomerang.analysis.baselines as bl

    calls = []
    real = bl._measure
    monkeypatch.setattr(bl, "_measure", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    teacher, student, _ = make_pair("llama", n_layers=8, kept=(0, 2, 4, 6, 7))
    text = corpus(tmp_path / "t.txt", paragraphs=12)
    kw = dict(
        tokenizer=tiny_tokenizer(), baselines=["shortgpt"], spec=SPEC, sizes=[0, 3, 4], calibration_samples=8
    )
    first = sweep(teacher, student, text, tmp_path / "own", **kw)
    assert len({r["layers"] for r in first["rows"] if r["method"] == "shortgpt"}) == 3 and len(calls) == 1
    cache = bl.BaselineCache()
    for out in ("a", "b"):
        again = sweep(teacher, student, text, tmp_path / out, baseline_cache=cache, **kw)
        assert [r["ppl"] for r in again["rows"]] == [r["ppl"] for r in first["rows"]]
    assert len(calls) == 2 and len(cache) == 1  # the second sweep measured nothing


def test_bert_family_sweep_uses_pseudo_perplexity(tmp_path):
    bert = make_teacher("bert", n_layers=12)
    lm = B.LayerMap.preset("distilbert")
    distil = distil_from_bert(bert, lm)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{5 + (i * 7) % 90}" for i in range(24)))
    result = sweep(
        bert, distil, text, tmp_path / "out", layer_map=lm, tokenizer=mlm_tokenizer(), baselines=["naive"],
        spec=EvalSpec(context=14, batch_size=16), sizes=[0, 2, 6],
    )  # fmt: skip
    assert result["metric"]["name"] == "pppl"
    assert [(r["method"], r["K"], r["layers"]) for r in result["rows"]] == [
        ("boomerang", 0, 6), ("boomerang", 2, 7), ("boomerang", 6, 12),
        ("naive", 0, 6), ("naive", 2, 7), ("naive", 6, 12),
    ]  # fmt: skip
    k2 = B.pseudo_perplexity(B.patch(bert, distil, lm, num_patched=2), text, mlm_tokenizer(), context=14)
    assert result["rows"][1]["pppl"] == pytest.approx(k2.value, rel=1e-6)


def test_bad_input_fails_before_loading(tmp_path):
    teacher, student, lm = make_pair("llama")
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    text = corpus(tmp_path / "t.txt")
    # checkpoints without weights: anything that got as far as loading would fail differently
    bare = {}
    for name, src in (("teacher", t_dir), ("student", s_dir)):
        bare[name] = tmp_path / f"bare-{name}"
        bare[name].mkdir()
        for f in ("config.json", "student_config.json"):
            if (src / f).is_file():
                (bare[name] / f).write_text((src / f).read_text())
    other = make_teacher("llama", n_layers=4, intermediate_size=48)
    other.save_pretrained(tmp_path / "other")
    T, S = str(bare["teacher"]), str(bare["student"])
    cases = {
        "does not exist": dict(data=tmp_path / "missing"),
        "does not match the teacher": dict(student=str(tmp_path / "other")),
        "unknown baseline": dict(baselines=["bogus"]),
        "needs the random-init student": dict(baselines=["random-student"]),
        "out of range": dict(sizes=[0, 9]),
        "causal LM: pseudo-perplexity": dict(spec=EvalSpec(metric="pppl")),
        "unknown lm-eval task": dict(tasks=TaskOptions(tasks=["hellaswagg"])),
        "unknown patch order": dict(order="sideways"),
    }
    for message, change in cases.items():
        args = {"teacher": T, "student": S, "data": text, "out": tmp_path / "o", **change}
        with pytest.raises(B.BoomerangError, match=message):
            Sweep(args.pop("teacher"), args.pop("student"), args.pop("data"), args.pop("out"), **args)
    (tmp_path / "exists").mkdir()
    with pytest.raises(B.BoomerangError, match="already exists"):
        Sweep(T, S, text, tmp_path / "exists")
    base = ["sweep", "--teacher", T, "--student", S, "--data", str(text), "--out", str(tmp_path / "o")]
    assert run([*base[:6], str(tmp_path / "missing"), *base[7:]]) == 2
    assert run([*base, "--tasks", "nope_task_xyz"]) == 2


def test_cli_sweep(tmp_path):
    teacher, student, lm = make_pair("gpt2")
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    text = corpus(tmp_path / "t.txt")
    out = tmp_path / "out"
    args = ["sweep", "--teacher", str(t_dir), "--student", str(s_dir), "--data", str(text), "--out", str(out)]
    opts = [
        "--baselines",
        "naive",
        "--sizes",
        "0,2-4",
        "--context",
        "24",
        "--max-tokens",
        "80",
        "--order",
        "[3,2,1,0]",
    ]
    assert run([*args, *opts]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["K"]) for r in result["rows"]] == [
        (m, k) for m in ("boomerang", "naive") for k in (0, 2, 3, 4)
    ]
    assert result["order"]["info"]["sequence"] == [3, 2, 1, 0]
    assert run([*args, *opts]) == 2  # exists
    assert run([*args, *opts, "--force", "--no-reuse"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["ppl"] for r in again["rows"]] == [r["ppl"] for r in result["rows"]]


def test_sweep_with_lm_eval_tasks_labels_them_and_resumes_without_rerunning(tmp_path, monkeypatch):
    from boomerang.evaluate.lmeval import LMEval, run_lm_eval

    teacher, student, lm = make_pair("llama")
    text = corpus(tmp_path / "t.txt", paragraphs=10)
    builtin = dict(n=4, n_fewshot=1, context_words=12)
    tasks = TaskOptions(tasks=["boomerang_cloze"], limit=4, batch_size=4, builtin=builtin)
    kw = dict(tokenizer=tiny_tokenizer(), spec=SPEC, sizes=[0, 4], tasks=tasks, checkpoint_seconds=0)
    real_run, calls = LMEval.run, []

    def counting(self, model, tok):
        calls.append(model.config.num_hidden_layers)
        if len(calls) == 2 and stop[0]:
            raise KeyboardInterrupt
        return real_run(self, model, tok)

    stop = [True]
    monkeypatch.setattr(LMEval, "run", counting)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # stopped during lm-eval of the second member
        sweep(teacher, student, text, out, **kw)
    assert calls == [4, 6] and not out.exists()
    stop[0], batches = False, []
    result = sweep(teacher, student, text, out, on_batch=lambda *a: batches.append(a), **kw)
    assert calls == [4, 6, 6] and batches == []  # neither perplexity batches nor the first lm-eval run again
    by = {r["K"]: r for r in result["rows"]}
    direct = run_lm_eval(
        B.patch(teacher, student, lm, num_patched=0), tiny_tokenizer(), ["boomerang_cloze"], data=text,
        limit=4, batch_size=4, **builtin,
    )["boomerang_cloze"]  # fmt: skip
    assert {m: by[0][f"boomerang_cloze/{m}"] for m in direct} == direct
    assert 0 <= by[4]["boomerang_cloze/acc"] <= 1 and by[4]["ppl"] > 1
    labels = json.loads((out / "results.json").read_text())["lm_eval_labels"]
    assert labels["boomerang_cloze/perplexity"].startswith("lm-eval target-word perplexity")
    md = (out / "results.md").read_text()
    assert "`boomerang_cloze/perplexity`: lm-eval target-word perplexity" in md and "token perplexity" in md
    assert "boomerang_cloze/acc" in (out / "results.csv").read_text().splitlines()[0]
    assert (out / "sweep-boomerang_cloze-acc.png").is_file()


def test_sweep_options_gathers_the_flat_keywords():
    from boomerang.pipelines.sweep import BaselineOptions, CalibrationOptions, RunOptions, sweep_options

    flat = dict(
        baselines=["naive", "laco"], random_student="rnd/", baseline_params={"laco": {"merge_layers": 2}},
        calibration="cal.txt", calibration_samples=3, calibration_length=16, restart=True, checkpoint_seconds=0,
        spec=SPEC, sizes=[0, 2],
    )  # fmt: skip
    assert sweep_options(flat) == {
        "spec": SPEC,
        "sizes": [0, 2],
        "baselines": BaselineOptions(["naive", "laco"], "rnd/", {"laco": {"merge_layers": 2}}),
        "calibration": CalibrationOptions("cal.txt", 3, 16),
        "run": RunOptions(restart=True, checkpoint_seconds=0),
    }
    objects = {"baselines": BaselineOptions(["naive"]), "calibration": CalibrationOptions(samples=4)}
    assert sweep_options(objects) == objects  # option objects pass through as they are
    assert sweep_options({"baselines": ["naive"]}) == {"baselines": BaselineOptions(["naive"])}
    with pytest.raises(TypeError, match="flat keywords"):
        sweep_options({"run": RunOptions(), "restart": True})
