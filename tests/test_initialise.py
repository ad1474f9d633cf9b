"""Student initialisation: every / explicit / random / similarity, exact config fields, `boomerang init`."""

import itertools
import json

import pytest
import torch
from tiny import ids, make_teacher, tiny_corpus, tiny_tokenizer
from transformers import AutoModelForCausalLM

from boomerang.cli.app import run
from boomerang.core.layermap import LayerMap
from boomerang.errors import BoomerangError
from boomerang.io.sidecar import read_layer_map
from boomerang.train.initialise import block_similarities, init_student, save_student, similarity_layers


def _layer(model, i):
    return {k: v for k, v in model.model.layers[i].state_dict().items()}


def test_every_copies_the_kept_layers_and_records_the_map():
    teacher = make_teacher("llama", 6, tie=True)
    student = init_student(teacher, teacher_name="tiny-teacher")
    lm = LayerMap.from_kept([0, 2, 4, 5], 6)
    cfg = student.config
    assert cfg.num_hidden_layers == 4 and cfg.tie_word_embeddings
    assert cfg.boomerang == {
        "role": "student",
        "layer_map": {"n_teacher": 6, "kept": [0, 2, 4, 5]},
        "teacher": "tiny-teacher",
        "init": {"strategy": "every", "every": 2, "keep_first": 1, "keep_last": 2},
    }
    for i, j in enumerate(lm.kept):
        a, b = _layer(student, i), _layer(teacher, j)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied
    # the student owns its tensors and is trainable; the teacher is untouched
    t_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert not any(p.data_ptr() in t_ptrs for p in student.parameters())
    assert all(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        student.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(
        student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight
    )


def test_qwen2_per_layer_fields_follow_the_kept_layers():
    teacher = make_teacher("qwen2", 8)  # layers 0..3 full attention, 4..7 sliding
    student = init_student(teacher, [0, 1, 3, 6, 7], patch_order="first")
    cfg = student.config
    assert cfg.layer_types == [teacher.config.layer_types[j] for j in (0, 1, 3, 6, 7)]
    assert cfg.max_window_layers == 3 and cfg.num_hidden_layers == 5
    assert cfg.boomerang["init"] == {"strategy": "layers"} and cfg.boomerang["patch_order"] == "first"
    x = ids()
    with torch.no_grad():
        assert student(x).logits.shape == (2, 12, teacher.config.vocab_size)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2", "gemma3_text"])
def test_every_matches_layermap_every_for_each_architecture(arch):
    teacher = make_teacher(arch, 7)
    student = init_student(teacher, every=3, keep_first=2, keep_last=1)
    assert LayerMap.from_config(student.config) == LayerMap.every(7, every=3, keep_first=2, keep_last=1)
    with torch.no_grad():
        assert torch.isfinite(student(ids()).logits).all()


def test_random_keeps_the_map_and_reinitialises_every_weight():
    teacher = make_teacher("llama", 6, tie=True)
    every = init_student(teacher)
    rand = init_student(teacher, "random", seed=3)
    again = init_student(teacher, "random", seed=3)
    other = init_student(teacher, "random", seed=4)
    assert LayerMap.from_config(rand.config) == LayerMap.from_config(every.config)
    assert rand.config.boomerang["init"] == {
        "strategy": "random",
        "every": 2,
        "keep_first": 1,
        "keep_last": 2,
        "seed": 3,
    }
    a, b = dict(rand.named_parameters()), dict(every.named_parameters())
    for k, v in a.items():
        if v.dim() > 1:  # matrices differ from the teacher's (norm weights initialise to ones)
            assert not torch.equal(v, b[k]), k
    assert all(torch.equal(v, dict(again.named_parameters())[k]) for k, v in a.items())
    assert not torch.equal(rand.model.layers[0].mlp.up_proj.weight, other.model.layers[0].mlp.up_proj.weight)
    assert rand.lm_head.weight is rand.model.embed_tokens.weight
    state = torch.get_rng_state()
    init_student(teacher, "random", seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def _brute_force(sim, size):
    n = sim.shape[0]
    best = None
    for rest in itertools.combinations(range(1, n), size - 1):
        kept = [0, *rest]
        scores = block_similarities(sim, kept)
        key = (round(min(scores), 9), round(sum(scores), 9))
        if best is None or key > best[0]:
            best = (key, kept)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_similarity_selection_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    n = 9
    sim = torch.rand(n, n, generator=g)
    sim = (sim + sim.T) / 2
    sim.fill_diagonal_(1.0)
    for size in (1, 3, 5, 9):
        kept = similarity_layers(sim, size)
        assert len(kept) == size and kept[0] == 0 and kept == sorted(kept)
        scores = block_similarities(sim, kept)
        (best_min, best_sum), _ = _brute_force(sim, size)
        assert round(min(scores), 9) == best_min and round(sum(scores), 9) == pytest.approx(best_sum)


def test_similarity_keeps_dissimilar_layers_in_their_own_blocks():
    # layers 0-3 are alike, 4 is an outlier, 5-7 are alike: a 3-layer student keeps 0, 4, 5
    n = 8
    group = [0, 0, 0, 0, 1, 2, 2, 2]
    sim = torch.tensor([[0.95 if group[i] == group[j] else 0.2 for j in range(n)] for i in range(n)])
    assert similarity_layers(sim, 3) == [0, 4, 5]
    with pytest.raises(BoomerangError, match="out of range"):
        similarity_layers(sim, 9)


def test_similarity_init_on_a_teacher():
    teacher = make_teacher("llama", 6)
    calib = ids(4, 16, seed=2)
    student = init_student(teacher, "similarity", size=3, calibration=calib)
    info = student.config.boomerang["init"]
    assert info["strategy"] == "similarity" and info["calibration_shape"] == [4, 16]
    lm = LayerMap.from_config(student.config)
    assert lm.n_student == 3 and lm.kept[0] == 0
    from boomerang.core.similarity import similarity_matrix

    sim = similarity_matrix(teacher, calib)
    assert lm.kept == tuple(similarity_layers(sim, 3))
    assert info["min_block_similarity"] == pytest.approx(
        min(block_similarities(sim.fill_diagonal_(1), lm.kept)), abs=1e-5
    )
    with pytest.raises(BoomerangError, match="calibration"):
        init_student(teacher, "similarity", size=3)


def test_bad_strategies():
    teacher = make_teacher("llama", 6)
    with pytest.raises(BoomerangError, match="unknown init strategy"):
        init_student(teacher, "sometimes")
    with pytest.raises(BoomerangError, match="must be 0"):
        init_student(teacher, [1, 3])
    with pytest.raises(BoomerangError, match="out of range"):
        init_student(teacher, [0, 7])
    with pytest.raises(BoomerangError, match="8-layer teacher"):
        init_student(teacher, LayerMap.every(8))


def test_save_student_is_atomic_and_complete(tmp_path):
    teacher = make_teacher("llama", 6, tie=True)
    student = init_student(teacher)
    out = tmp_path / "s"
    save_student(student, out, tokenizer=tiny_tokenizer())
    assert {"config.json", "model.safetensors", "student_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "student_config.json").read_text()) == {
        "pruned_teacher_layers": [1, 3],
        "copied_teacher_layers": [0, 2, 4, 5],
    }
    again = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(again(ids()).logits, student(ids()).logits)
    with pytest.raises(BoomerangError, match="already exists"):
        save_student(student, out)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary leftovers


@pytest.fixture
def teacher_dir(tmp_path):
    teacher = make_teacher("llama", 6, tie=True)
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer(tmp_path / "teacher")
    return tmp_path / "teacher"


def test_cli_init_strategies(teacher_dir, tmp_path, capsys):
    out = tmp_path / "every"
    assert run(["init", "--teacher", str(teacher_dir), "--out", str(out)]) == 0
    assert read_layer_map(out) == LayerMap.from_kept([0, 2, 4, 5], 6)
    assert (out / "tokenizer.json").is_file() and (out / "student_config.json").is_file()
    out2 = tmp_path / "explicit"
    assert run(["init", "--teacher", str(teacher_dir), "--out", str(out2), "--layers", "0,1,5"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out2).config.boomerang["layer_map"]["kept"] == [0, 1, 5]
    out3 = tmp_path / "random"
    assert run(["init", "--teacher", str(teacher_dir), "--out", str(out3), "--strategy", "random"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out3).config.boomerang["init"]["strategy"] == "random"
    corpus = tiny_corpus(tmp_path / "calib", 6)
    out4 = tmp_path / "sim"
    args = ["init", "--teacher", str(teacher_dir), "--out", str(out4), "--strategy", "similarity"]
    args += ["--size", "3", "--data", str(corpus), "--calibration-texts", "4", "--calibration-length", "16"]
    assert run(args) == 0
    assert "min block similarity" in capsys.readouterr().out
    assert len(read_layer_map(out4).kept) == 3


def test_cli_init_bad_input(teacher_dir, tmp_path, capsys):
    base = ["init", "--teacher", str(teacher_dir)]
    out = tmp_path / "o"
    cases = [
        (["--out", str(out), "--strategy", "sometimes"], "unknown --strategy"),
        (["--out", str(out), "--layers", "0,x"], "cannot read --layers"),
        (["--out", str(out), "--layers", "1,2"], "must be 0"),
        (["--out", str(out), "--strategy", "random", "--layers", "0,2"], "cannot be combined"),
        (["--out", str(out), "--strategy", "similarity"], "needs calibration texts"),
        (["--out", str(out), "--size", "3"], "only apply to --strategy similarity"),
        (["--out", str(out), "--patch-order", "middle"], "--patch-order must be"),
        (["--out", str(out), "--every", "0"], "--every must be at least 1"),
    ]
    for args, msg in cases:
        assert run(base + args) == 2, args
        assert msg in capsys.readouterr().err, msg
        assert not out.exists()
    assert run(["init", "--teacher", str(tmp_path / "nope"), "--out", str(out)]) == 2
    out.mkdir()
    assert run([*base, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run([*base, "--out", str(out), "--force"]) == 0


# ---- shortgpt: the layers ShortGPT keeps, optionally with a cap on block length ---------------------------------


def _shortgpt_brute_force(bi, size, max_block, alone=()):
    """Least summed BI of the dropped layers over every kept set, with blocks of at most ``max_block`` layers and
    each layer of ``alone`` dropped alone in [r − 1, r + 1)."""
    n = len(bi)
    best = None
    for rest in itertools.combinations(range(1, n), size - 1):
        kept = [0, *rest]
        blocks = list(zip(kept, [*kept[1:], n], strict=True))
        if max_block is not None and any(b - a > max_block for a, b in blocks):
            continue
        if any((r - 1, r + 1) not in blocks for r in alone):
            continue
        cost = sum(bi[j] for j in range(1, n) if j not in rest)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, kept)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_shortgpt_selection_is_exact(seed):
    from boomerang.train.initialise import block_influence_from_similarity, shortgpt_layers

    g = torch.Generator().manual_seed(seed)
    n = 9
    sim = torch.rand(n, n, generator=g)
    sim = (sim + sim.T) / 2
    bi = block_influence_from_similarity(sim)
    assert bi[3] == pytest.approx(1 - float(sim[2, 3]))
    for size, cap in [(3, None), (4, None), (5, 2), (4, 3), (3, 3)]:
        kept = shortgpt_layers(sim, size, cap)
        cost, _ = _shortgpt_brute_force(bi, size, cap)
        assert sum(bi[j] for j in range(1, n) if j not in kept) == pytest.approx(cost)
        if cap is None:  # unconstrained: the size-1 layers with the largest BI (besides layer 0)
            top = sorted(range(1, n), key=lambda j: -bi[j])[: size - 1]
            assert kept == [0, *sorted(top)]
        else:
            ends = [*kept[1:], n]
            assert max(b - a for a, b in zip(kept, ends, strict=True)) <= cap
    with pytest.raises(BoomerangError, match="cannot cover"):
        shortgpt_layers(sim, 3, 2)


def test_shortgpt_init_matches_the_shortgpt_baseline():
    """The init keeps exactly the layers the ShortGPT pruning baseline keeps (its BI measured with hooks)."""
    from boomerang.analysis.baselines import shortgpt

    teacher = make_teacher("llama", 8)
    calib = ids(4, 16, seed=3)
    student = init_student(teacher, "shortgpt", size=5, calibration=calib)
    info = student.config.boomerang["init"]
    assert info["strategy"] == "shortgpt" and info["max_block"] is None
    assert list(LayerMap.from_config(student.config).kept) == shortgpt(teacher, 5, calib).kept
    capped = init_student(teacher, "shortgpt", size=5, calibration=calib, max_block=2)
    kept = list(LayerMap.from_config(capped.config).kept)
    assert max(b - a for a, b in zip(kept, [*kept[1:], 8], strict=True)) <= 2
    with pytest.raises(BoomerangError, match="max_block only applies to"):
        init_student(teacher, "similarity", size=3, calibration=calib, max_block=2)
    # without a size: as many layers as the every-other-layer student (0,2,4,6,7 of 8 -> 5), for both strategies
    for strategy in ("shortgpt", "similarity"):
        default = init_student(
            teacher, strategy, calibration=calib, max_block=2 if strategy == "shortgpt" else None
        )
        assert LayerMap.from_config(default.config).n_student == LayerMap.every(8).n_student == 5


def test_cli_and_recipe_shortgpt_init(teacher_dir, tmp_path, capsys):
    from boomerang.train.recipe import parse_recipe

    corpus = tiny_corpus(tmp_path / "calib", 6)
    out = tmp_path / "sg"
    args = ["init", "--teacher", str(teacher_dir), "--out", str(out), "--strategy", "shortgpt", "--size", "3"]
    args += [
        "--max-block",
        "2",
        "--data",
        str(corpus),
        "--calibration-texts",
        "4",
        "--calibration-length",
        "16",
    ]
    assert run(args) == 0
    kept = list(read_layer_map(out).kept)
    assert len(kept) == 3 and max(b - a for a, b in zip(kept, [*kept[1:], 6], strict=True)) <= 2
    bad = ["init", "--teacher", str(teacher_dir), "--out", str(tmp_path / "x"), "--max-block", "2"]
    assert run(bad) == 2 and "--max-block only applies" in capsys.readouterr().err
    base = {"name": "r", "teacher": "t", "data": {"train": "x"}}
    assert parse_recipe({**base, "init": {"strategy": "shortgpt"}}).init.size is None  # default: as every
    with pytest.raises(Exception, match="max_block only applies"):
        parse_recipe({**base, "init": {"strategy": "every", "max_block": 2}})
    assert (
        parse_recipe({**base, "init": {"strategy": "shortgpt", "size": 16, "max_block": 3}}).init.max_block
        == 3
    )


# ---- shortgpt with isolated layers: the largest members start as ShortGPT's ------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_isolated_layers_sit_alone_in_two_layer_blocks_at_least_cost(seed):
    from boomerang.train.initialise import block_influence_from_similarity, isolated_layers, shortgpt_layers

    g = torch.Generator().manual_seed(seed)
    n = 10
    sim = torch.rand(n, n, generator=g)
    sim = (sim + sim.T) / 2
    bi = block_influence_from_similarity(sim)
    order = sorted(range(1, n), key=lambda j: bi[j])
    for size, cap, k in [(5, 3, 1), (6, 3, 2), (4, None, 1), (5, None, 2)]:
        alone = isolated_layers(bi, k)
        assert len(alone) == k and alone[0] == min(alone) and order[0] in alone  # ShortGPT's first drop
        kept = shortgpt_layers(sim, size, cap, isolate=k)
        blocks = list(zip(kept, [*kept[1:], n], strict=True))
        assert all((r - 1, r + 1) in blocks for r in alone)
        cost = sum(bi[j] for j in range(1, n) if j not in kept)
        assert cost == pytest.approx(_shortgpt_brute_force(bi, size, cap, alone)[0])
    assert shortgpt_layers(sim, 5, 3, isolate=0) == shortgpt_layers(sim, 5, 3)
    with pytest.raises(BoomerangError, match="isolated layers"):
        shortgpt_layers(sim, n - 1, None, isolate=2)  # one dropped layer cannot make two 2-layer blocks


def test_with_isolate_the_member_one_layer_short_is_shortgpts_model():
    """Patched everywhere but the isolated block, the untrained student is ShortGPT's pruned model, logit for logit."""
    from boomerang.analysis.baselines import prune_shortgpt
    from boomerang.family import patch

    teacher = make_teacher("llama", 8)
    calib = ids(4, 16, seed=3)
    student = init_student(teacher, "shortgpt", size=4, calibration=calib, max_block=3, isolate=1)
    lm = LayerMap.from_config(student.config)
    (r,) = student.config.boomerang["init"]["isolated"]
    i = next(i for i in range(lm.n_student) if list(lm.block(i)) == [r - 1, r])
    member = patch(teacher, student, lm, patched=set(range(lm.n_student)) - {i})
    pruned = prune_shortgpt(teacher, 7, calib)
    x = ids(2, 12, seed=5)
    with torch.no_grad():
        assert torch.equal(member(x).logits, pruned(x).logits)
    with pytest.raises(BoomerangError, match="isolate only applies to"):
        init_student(teacher, "similarity", size=3, calibration=calib, isolate=1)


def test_cli_and_recipe_take_isolate(teacher_dir, tmp_path, capsys):
    from boomerang.train.recipe import parse_recipe

    corpus = tiny_corpus(tmp_path / "calib", 6)
    base = [
        "init",
        "--teacher",
        str(teacher_dir),
        "--strategy",
        "shortgpt",
        "--size",
        "3",
        "--data",
        str(corpus),
    ]
    base += ["--calibration-texts", "4", "--calibration-length", "16"]
    out = tmp_path / "iso"
    assert run([*base, "--isolate", "1", "--out", str(out)]) == 0
    kept = list(read_layer_map(out).kept)
    assert any(b - a == 2 for a, b in zip(kept, [*kept[1:], 6], strict=True))
    for bad, msg in [
        (["--isolate", "9"], "--isolate 9 is out of range"),
        (["--isolate", "-1"], "at least 0"),
    ]:
        assert run([*base, *bad, "--out", str(tmp_path / "x")]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    every = ["init", "--teacher", str(teacher_dir), "--out", str(tmp_path / "y"), "--isolate", "1"]
    assert run(every) == 2 and "--isolate only applies" in capsys.readouterr().err
    recipe = {"name": "r", "teacher": "t", "data": {"train": "x"}}
    assert parse_recipe({**recipe, "init": {"strategy": "shortgpt", "isolate": 1}}).init.isolate == 1
    with pytest.raises(Exception, match="isolate only applies"):
        parse_recipe({**recipe, "init": {"strategy": "every", "isolate": 1}})
