"""Recipe validation: clear errors, overrides, the shipped recipes and their paper conventions."""

from pathlib import Path

import pytest
import yaml

from boomerang.core.layermap import LayerMap
from boomerang.errors import BoomerangError
from boomerang.train.recipe import OFFLINE_TEACHER, load_recipe, parse_recipe, resolve_model_spec

RECIPES = Path(__file__).resolve().parents[1] / "boomerang" / "recipes"  # shipped in the package
MINIMAL = {"teacher": "t", "data": {"train": "corpus/"}}


def _err(data, overrides=()):
    with pytest.raises(BoomerangError) as e:
        parse_recipe(data, list(overrides))
    return str(e.value)


def test_defaults_are_the_papers_table_2():
    r = parse_recipe(dict(MINIMAL))
    o, loss = r.optim, r.loss
    assert (o.lr, o.schedule, o.warmup_ratio, o.betas, o.eps, o.weight_decay, o.max_grad_norm) == (
        3e-4,
        "cosine",
        0.01,
        (0.9, 0.95),
        1e-8,
        0.1,
        1.0,
    )
    assert (loss.ce, loss.kl, loss.temperature, loss.cos) == (1.0, 0.1, 1.0, None)
    assert loss.cos_weight(19) == pytest.approx(0.1)
    assert r.train.precision == "auto" and r.init.strategy == "every" and r.patch_order == "last"


def test_unknown_keys_get_did_you_mean_suggestions():
    msg = _err({**MINIMAL, "optim": {"lr": 1e-4, "warmup": 0.1}, "trian": {}})
    assert "optim.warmup: unknown key; did you mean 'optim.warmup_ratio'?" in msg
    assert "trian: unknown key; did you mean 'train'?" in msg
    assert "did you mean 'optim.betas'" in _err(MINIMAL, ["train.betas=[0.9, 0.99]"])
    assert "did you mean 'loss.temperature'" in _err(MINIMAL, ["loss.temprature=2"])


def test_bad_values_name_the_key():
    cases = [
        (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
        (["optim.lr=fast"], "optim.lr: Input should be a valid number"),
        (["optim.schedule=exp"], "optim.schedule: Input should be 'cosine', 'linear' or 'constant'"),
        (["optim.betas=[0.9, 1.5]"], "betas must be in [0, 1)"),
        (["train.batch_size=10", "train.micro_batch_size=4"], "must be a multiple of train.micro_batch_size"),
        (["train.steps=null"], "set train.steps or train.max_tokens"),
        (["loss.ce=0", "loss.kl=0", "loss.cos=0"], "every loss term is switched off"),
        (["init.strategy=layers"], "needs init.layers"),
        (["init.layers=[0, 2]"], "use strategy: layers"),
        (["data.heldout_docs=5", "data.eval=val/"], "either data.eval or data.heldout_docs"),
        (["train.precision=fp8"], "train.precision: Input should be 'auto', 'fp32' or 'bf16'"),
    ]
    for overrides, expect in cases:
        assert expect in _err(dict(MINIMAL), overrides), overrides
    assert "data: required but missing" in _err({"teacher": "t"}) or "data.train" in _err({"teacher": "t"})
    assert "teacher: required but missing" in _err({"data": {"train": "x"}})


def test_overrides():
    r = parse_recipe(
        dict(MINIMAL), ["train.steps=7", "kl=0.5", "betas=[0.8, 0.9]", "loss.cos=null", "out=~/run"]
    )
    assert r.train.steps == 7 and r.loss.kl == 0.5 and r.optim.betas == (0.8, 0.9) and r.loss.cos is None
    assert r.out == str(Path.home() / "run")
    assert "ambiguous" in _err(MINIMAL, ["every=3"])
    assert "write key=value" in _err(MINIMAL, ["steps"])
    assert "unknown recipe key 'stepz'; did you mean 'train.steps'?" in _err(MINIMAL, ["stepz=3"])


def test_files(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(MINIMAL))
    r = load_recipe(f, ["steps=3"])
    assert r.name == "r" and r.train.steps == 3
    assert parse_recipe(yaml.safe_load(r.to_yaml())) == r  # round trip
    f.write_text("- a list\n")
    with pytest.raises(BoomerangError, match="must be a YAML mapping"):
        load_recipe(f)
    with pytest.raises(BoomerangError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_offline_teacher_alias():
    assert resolve_model_spec("some/dir") == "some/dir"
    from boomerang.io.loading import DEFAULT_CACHE

    if (DEFAULT_CACHE / "smollm2-135m-instruct" / "config.json").is_file():
        assert resolve_model_spec(OFFLINE_TEACHER) == str(DEFAULT_CACHE / "smollm2-135m-instruct")


PAPER = {
    # recipe: (teacher layers, kept layers, patch order)
    "qwen3-4b": (36, [*range(0, 35, 2), 35], "last"),
    "qwen3-8b": (36, [*range(0, 35, 2), 35], "last"),
    "pythia-2.8b": (32, [*range(0, 31, 2), 31], "last"),
    "llama-3.2-3b": (28, [0, *range(1, 28, 2)], "first"),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes(name):
    r = load_recipe(RECIPES / f"{name}.yaml")
    n, kept, order = PAPER[name]
    ini = r.init
    lm = LayerMap.every(n, every=ini.every, keep_first=ini.keep_first, keep_last=ini.keep_last)
    assert list(lm.kept) == kept and r.patch_order == order
    assert (r.optim.lr, r.optim.warmup_ratio, r.optim.betas, r.optim.weight_decay) == (
        3e-4,
        0.01,
        (0.9, 0.95),
        0.1,
    )
    assert (r.loss.kl, r.loss.temperature, r.loss.cos) == (0.1, 1.0, None)
    assert r.train.batch_size * r.data.seq_len * r.train.steps == 2048 * 2048 * 500  # 2.1B tokens
    assert r.data.train == "hf:EleutherAI/the_pile_deduplicated"


def test_cpu_recipe():
    r = load_recipe(RECIPES / "smollm2-cpu.yaml")
    assert r.teacher == OFFLINE_TEACHER and r.train.precision in ("auto", "fp32")
    assert r.data.train.endswith("corpora/train") and r.data.eval.endswith("corpora/validation")
    assert list(LayerMap.every(30, r.init.every, r.init.keep_first, r.init.keep_last).kept) == [
        *range(0, 29, 2),
        29,
    ]


@pytest.mark.parametrize("name", [*sorted(PAPER), "smollm2-cpu"])
def test_shipped_recipes_pass_the_cli_dry_run(name, capsys):
    from boomerang.cli.app import run

    assert run(["distill", str(RECIPES / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["name"] == name and parse_recipe(printed) == load_recipe(RECIPES / f"{name}.yaml")
    # what precision the run would use, and why (a YAML comment, so the output stays a recipe)
    chosen = out.strip().splitlines()[-1]
    assert chosen.startswith(f"# train.precision: {printed['train']['precision']} -> "), chosen
    assert chosen.endswith(")") and ("fp32 (" in chosen or "bf16 (" in chosen)


def test_packaged_recipes_load_by_name(tmp_path, monkeypatch, capsys):
    from boomerang.cli.app import run
    from boomerang.train.recipe import packaged_recipes

    assert packaged_recipes() == sorted(p.stem for p in RECIPES.glob("*.yaml"))
    monkeypatch.chdir(tmp_path)  # names work from any directory
    by_name = load_recipe("smollm2-cpu", ["steps=3"])
    assert by_name == load_recipe(RECIPES / "smollm2-cpu.yaml", ["steps=3"]) and by_name.name == "smollm2-cpu"
    assert load_recipe("qwen3-8b.yaml").name == "qwen3-8b"
    with pytest.raises(BoomerangError) as e:
        load_recipe("smollm2-cpo")
    assert "did you mean 'smollm2-cpu'?" in str(e.value)
    assert all(name in str(e.value) for name in packaged_recipes())
    (tmp_path / "smollm2-cpu").write_text(yaml.safe_dump({**MINIMAL, "name": "local"}))
    assert load_recipe("smollm2-cpu").name == "local"  # an existing file wins over a packaged name
    assert run(["distill", "pythia-2.8b", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "pythia-2.8b"
    assert run(["distill", "nope-recipe", "--dry-run"]) == 2
    assert "packaged recipe: llama-3.2-3b" in " ".join(capsys.readouterr().err.split())
