"""Pruning baselines: naive layer dropping, ShortGPT (Block Influence) and LaCo (layer merging)."""

import copy
import weakref

import pytest
import torch
from tiny import DECODERS, ids, make_teacher, tiny_tokenizer
from transformers import AutoModelForCausalLM

import boomerang as B
from boomerang.analysis.baselines import (
    LACO_THRESHOLDS,
    BaselineCache,
    Laco,
    block_influence,
    evenly_spaced,
    kept_layers,
    merged_tensors,
    naive_layers,
    prune_to,
    save_pruned,
    shortgpt,
)
from boomerang.cli.app import run
from boomerang.core.hooks import layer_list
from boomerang.errors import BoomerangError


def _logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


def similar_layers(arch, n, noise=0.05, seed=0):
    """A teacher whose layers are small perturbations of layer 0 (like adjacent layers of a real LLM)."""
    t = make_teacher(arch, n)
    layers = layer_list(t)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers[1:]:
            for p, p0 in zip(layer.parameters(), layers[0].parameters(), strict=True):
                if p.dim() > 1:
                    p.copy_(p0 + noise * torch.randn(p.shape, generator=g))
    return t


def dropped_reference(teacher, kept):
    """The teacher with layers deleted the obvious way: deep copy, delete modules, fix the config."""
    model = copy.deepcopy(teacher)
    layers = layer_list(model)
    for j in sorted(set(range(len(layers))) - set(kept), reverse=True):
        del layers[j]
    cfg = model.config
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [teacher.config.layer_types[j] for j in kept]
    cfg.num_hidden_layers = len(kept)
    return model


# ---- naive -----------------------------------------------------------------------------------------------------------


def test_naive_default_layers():
    lm = B.LayerMap.every(8)  # kept [0, 2, 4, 6, 7]
    assert naive_layers(8, 5) == [0, 2, 4, 6, 7]
    assert naive_layers(8, 6) == [0, 2, 4, 5, 6, 7]  # last-order member with 6 layers
    assert naive_layers(8, 6, layer_map=lm, order="first") == [0, 1, 2, 4, 6, 7]
    assert naive_layers(8, 8) == list(range(8))
    small = naive_layers(8, 3)  # below the default student's size: evenly spaced
    assert small == evenly_spaced(8, 3) and small[0] == 0 and small[-1] == 7 and len(set(small)) == 3
    for n in (5, 12, 30):
        for k in range(1, n + 1):
            got = evenly_spaced(n, k)
            assert (
                len(got) == len(set(got)) == k and got == sorted(got) and got[-1] == (n - 1 if k > 1 else 0)
            )
    assert naive_layers(8, layers=[7, 0, 3]) == [0, 3, 7]
    with pytest.raises(BoomerangError, match="no member"):
        naive_layers(8, 5, layer_map=B.LayerMap.from_kept([0, 3, 6, 7], 8))  # sizes 4, 6, 8
    with pytest.raises(BoomerangError, match="out of range"):
        naive_layers(8, 9)
    with pytest.raises(BoomerangError, match="distinct"):
        naive_layers(8, layers=[0, 0, 2])


def test_naive_follows_a_saved_order(tmp_path):
    from boomerang.io.order_files import save_order

    lm = B.LayerMap.every(8)  # kept [0, 2, 4, 6, 7]; blocks [0, 2) [2, 4) [4, 6) [6] [7]
    po = B.PatchOrder.from_sequence("custom", [1, 0, 2, 3, 4], 5)
    save_order(po, tmp_path / "o.json")
    assert naive_layers(8, 6, layer_map=lm, order=str(tmp_path / "o.json")) == [0, 2, 3, 4, 6, 7]
    model = prune_to(make_teacher("llama", 8), "naive", num_layers=6, layer_map=lm, order=po)
    assert model.config.boomerang["parameters"]["order"] == "custom"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text"])
def test_naive_equals_deleting_layers(arch):
    teacher = make_teacher(arch, 6)
    kept = [0, 1, 3, 5]
    model = prune_to(teacher, "naive", layers=kept)
    assert model.config.num_hidden_layers == 4
    assert model.config.boomerang["role"] == "baseline" and model.config.boomerang["teacher_layers"] == kept
    if arch == "qwen2":
        assert model.config.layer_types == [teacher.config.layer_types[j] for j in kept]
        assert model.config.max_window_layers == sum(j < teacher.config.max_window_layers for j in kept)
    x = ids()
    assert torch.allclose(_logits(model, x), _logits(dropped_reference(teacher, kept), x), atol=1e-6)
    assert torch.equal(_logits(prune_to(teacher, "naive", num_layers=6), x), _logits(teacher, x))


# ---- ShortGPT -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_block_influence_equals_hand_computation(arch):
    model = make_teacher(arch, 5)
    x = ids(3, 9)
    bi = block_influence(model, x, batch_size=2)
    arch_info = B.get_arch(model.config)
    last_in = {}
    hook = model.get_submodule(arch_info.final_norm).register_forward_pre_hook(
        lambda _m, a: last_in.__setitem__("h", a[0])
    )
    with torch.no_grad():
        hs = model(
            x, output_hidden_states=True, use_cache=False
        ).hidden_states  # [embeddings, out 0, ..., out 3, normed out 4]
    hook.remove()
    outputs = [*hs[1:5], last_in["h"]]
    for i in range(5):
        cos = torch.nn.functional.cosine_similarity(hs[i].double(), outputs[i].double(), dim=-1)
        assert bi[i] == pytest.approx(1 - float(cos.mean()), abs=1e-5)


def _identity_llama(n=8, identity=(2, 5), near=((3, 0.01), (6, 0.1))):
    """Layers made identities (output projections zeroed) or near-identities (scaled down)."""
    model = make_teacher("llama", n)
    with torch.no_grad():
        for j, scale in [*((j, 0.0) for j in identity), *near]:
            model.model.layers[j].self_attn.o_proj.weight.mul_(scale)
            model.model.layers[j].mlp.down_proj.weight.mul_(scale)
    return model


@pytest.mark.parametrize("recompute", [False, True])
def test_shortgpt_removes_the_least_influential_layers(recompute):
    model = _identity_llama()
    x = ids(4, 12)
    bi = block_influence(model, x)
    assert bi[2] == pytest.approx(0.0, abs=1e-6) and bi[5] == pytest.approx(0.0, abs=1e-6)
    r = shortgpt(model, 4, x, recompute=recompute)
    assert set(r.removed[:2]) == {2, 5} and r.removed[2:] == [3, 6]
    assert r.kept == [0, 1, 4, 7]
    pruned = prune_to(model, "shortgpt", num_layers=4, calibration=x, recompute=recompute)
    assert pruned.config.boomerang["removed"] == r.removed
    # what a sweep keys the model by before building it; merging (LaCo) keeps no plain teacher layers
    assert kept_layers(model, "shortgpt", num_layers=4, calibration=x, recompute=recompute) == r.kept
    assert pruned.config.boomerang["teacher_layers"] == r.kept
    assert kept_layers(model, "laco", num_layers=4, calibration=x) is None
    assert torch.allclose(_logits(pruned, x), _logits(dropped_reference(model, r.kept), x), atol=1e-6)
    if recompute:  # one measurement per removal, on the shrinking model
        assert len(r.block_influence) == 4
        assert sum(v == v for v in r.block_influence[-1]) == 5  # NaN for the three removed layers
    else:
        assert r.block_influence == [pytest.approx(bi, abs=1e-9)]


def _counting_measure(monkeypatch):
    """Count ShortGPT's block-influence measurements."""
    import boomerang.analysis.baselines as bl

    calls = []
    real = bl._measure

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(bl, "_measure", counting)
    return calls


@pytest.mark.parametrize("recompute", [False, True])
def test_shortgpt_measures_once_per_cache(monkeypatch, recompute):
    model = _identity_llama()
    x = ids(3, 10)
    calls = _counting_measure(monkeypatch)
    cache = BaselineCache()
    first = [shortgpt(model, k, x, recompute=recompute, cache=cache).removed for k in (6, 4)]
    n = len(calls)
    assert n == (4 if recompute else 1)  # recompute: one measurement per removal, from 8 layers down to 4
    assert len(cache) == 1
    again = [shortgpt(model, k, x, recompute=recompute, cache=cache).removed for k in (6, 4, 5)]
    prune_to(model, "shortgpt", num_layers=5, calibration=x, recompute=recompute, cache=cache)
    assert len(calls) == n and again[:2] == first  # the same cache: nothing measured again
    shortgpt(model, 6, x, recompute=recompute)
    shortgpt(model, 6, x, recompute=recompute, cache=BaselineCache())
    assert len(calls) == n + 2 * (2 if recompute else 1)  # no cache, or another: measured afresh
    shortgpt(model, 6, x, recompute=recompute, batch_size=2, cache=cache)  # another key: measured
    assert len(calls) > n + 2 * (2 if recompute else 1)
    cache.clear(model)
    assert len(cache) == 0
    m = len(calls)
    shortgpt(model, 6, x, recompute=recompute, cache=cache)
    assert len(calls) > m


def test_shortgpt_cache_follows_weight_changes(monkeypatch):
    model = _identity_llama(identity=(2,), near=())
    x = ids(3, 10)
    calls = _counting_measure(monkeypatch)
    cache = BaselineCache()
    assert shortgpt(model, 7, x, cache=cache).removed == [2]
    assert shortgpt(model, 7, x, cache=cache).removed == [2] and len(calls) == 1
    with torch.no_grad():  # in-place edit: layer 4 becomes the identity, layer 2 does not any more
        model.model.layers[4].mlp.down_proj.weight.zero_()
        model.model.layers[4].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.normal_(0, 0.2)
    assert shortgpt(model, 7, x, cache=cache).removed == [4] and len(calls) == 2
    with torch.no_grad():  # a replaced tensor invalidates too
        layer = model.model.layers[4].mlp.down_proj
        layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight) * 0.2)
    shortgpt(model, 7, x, cache=cache)
    assert len(calls) == 3


# ---- LaCo ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_laco_merge_arithmetic_is_exact(arch):
    teacher = make_teacher(arch, 6)
    with torch.no_grad():  # integer weights: the formula is exact in floating point whatever the order
        for p in teacher.parameters():
            p.copy_(torch.randint(-4, 5, p.shape, dtype=p.dtype))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    layers = layer_list(teacher)
    got = merged_tensors([layers[1], layers[2], layers[3]])
    linear = [
        n
        for n, m in layers[1].named_modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    ]
    assert sorted({k.rsplit(".", 1)[0] for k in got}) == sorted(linear)
    for name, tensor in got.items():
        t1, t2, t3 = (layers[j].get_parameter(name) for j in (1, 2, 3))
        assert torch.equal(tensor, t1 + (t2 - t1) + (t3 - t1))
    # a one-merge LaCo result: the merged layer carries those tensors, norms stay layer 1's, the rest is shared
    search = Laco(teacher, ids(2, 8))
    result = search.run(3, -2.0, lowest=1, highest=4)  # l = H - C = 1: merge layers 2, 3 into 1
    assert result.merges[0] == (1, 2)
    model = search.build(result)
    new = layer_list(model)
    for name, tensor in got.items():
        assert torch.equal(new[1].get_parameter(name), tensor)
    for name, p in new[1].named_parameters():
        if name not in got:  # norms (and anything that is not a linear layer) come from the base layer
            assert torch.equal(p, layers[1].get_parameter(name))
    assert (
        new[0].get_parameter(next(iter(got))).data_ptr()
        == layers[0].get_parameter(next(iter(got))).data_ptr()
    )
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher was never modified


def reference_laco(teacher, x, c, t, lowest, highest, interval):
    """LaCo's official loop with deep copies and full forward passes (and the paper's merge formula)."""

    def sim(model):
        with torch.no_grad():
            a = teacher(x, output_hidden_states=True, use_cache=False).hidden_states[-1]
            b = model(x, output_hidden_states=True, use_cache=False).hidden_states[-1]
        return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1).mean())

    def merge(model, base, k):
        k = min(k, len(model.model.layers) - base - 1)
        out = copy.deepcopy(model)
        theta = {n: p.detach().clone() for n, p in model.model.layers[base].named_parameters()}
        for diff in range(base + 1, base + 1 + k):
            for name in theta:
                if name.endswith("proj.weight"):
                    out.model.layers[base].get_parameter(name).data.add_(
                        model.model.layers[diff].get_parameter(name).data - theta[name]
                    )
        for diff in range(base + k, base, -1):
            del out.model.layers[diff]
        out.config.num_hidden_layers = len(out.model.layers)
        return out, k

    model, merges, pos = teacher, [], highest - c
    while pos >= lowest:
        candidate, k = merge(model, pos, c - 1)
        if sim(candidate) > t:
            model = candidate
            merges.append((pos, k))
            pos -= interval
            if pos >= len(model.model.layers):
                pos = len(model.model.layers) - 1 - c
        else:
            pos -= 1
    return model, merges


@pytest.mark.parametrize(("c", "t", "interval"), [(2, 0.9, 1), (3, 0.85, 1), (3, 0.7, 2), (4, 0.8, 1)])
def test_laco_matches_the_reference_loop(c, t, interval):
    teacher = similar_layers("llama", 10)
    x = ids(4, 12)
    ref_model, ref_merges = reference_laco(teacher, x, c, t, 0, 9, interval)
    search = Laco(teacher, x, batch_size=3)
    result = search.run(c, t, interval=interval)
    assert result.merges == ref_merges and result.n_layers == len(ref_model.model.layers)
    model = search.build(result)
    assert torch.allclose(_logits(model, x), _logits(ref_model, x), atol=1e-5)
    for a in result.attempts:  # the acceptance rule, attempt by attempt
        assert a["accepted"] == (a["similarity"] > t)
    with torch.no_grad():  # the recorded similarity is the final model's
        h0 = teacher(x, output_hidden_states=True, use_cache=False).hidden_states[-1].flatten(1)
        h1 = model(x, output_hidden_states=True, use_cache=False).hidden_states[-1].flatten(1)
    assert result.similarity == pytest.approx(
        float(torch.nn.functional.cosine_similarity(h0, h1).mean()), abs=1e-5
    )


def test_laco_thresholds_and_sweep():
    teacher = similar_layers("llama", 10)
    x = ids(4, 12)
    search = Laco(teacher, x)
    assert search.run(3, 1.0).n_layers == 10  # a merge never reaches similarity above 1
    everything = search.run(3, -1.0)
    assert all(a["accepted"] for a in everything.attempts) and everything.n_layers < 6
    sizes = [search.run(3, t).n_layers for t in LACO_THRESHOLDS]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 2
    best, tried = search.sweep(6)
    assert best.n_layers <= 6
    assert best.n_layers == max(r.n_layers for r in tried if r.n_layers <= 6)
    model = prune_to(teacher, "laco", num_layers=6, calibration=x)
    section = model.config.boomerang
    assert section["num_layers"] == best.n_layers == model.config.num_hidden_layers
    assert section["parameters"]["merge_layers"] == best.merge_layers
    assert sorted(j for g in section["merged_groups"] for j in g) == list(range(10))
    with pytest.raises(BoomerangError, match="reaches only"):
        search.sweep(1, merge_grid=(2,), thresholds=(0.99,))


def test_caches_do_not_keep_the_teacher_alive():
    import gc
    import weakref

    cache = BaselineCache()
    teacher = similar_layers("llama", 6)
    prune_to(teacher, "laco", calibration=ids(2, 8), merge_layers=3, threshold=0.5, cache=cache)
    prune_to(teacher, "shortgpt", num_layers=4, calibration=ids(2, 8), recompute=True, cache=cache)
    assert len(cache) == 1
    ref = weakref.ref(teacher)
    del teacher
    gc.collect()
    assert ref() is None and len(cache) == 0


def test_laco_searches_are_shared_through_the_cache():
    from boomerang.analysis.baselines import laco_search

    teacher = similar_layers("llama", 8)
    x = ids(2, 8)
    cache = BaselineCache()
    search = laco_search(teacher, x, cache=cache)
    assert laco_search(teacher, x, cache=cache) is search
    assert (
        laco_search(teacher, x) is not search
        and laco_search(teacher, x, batch_size=1, cache=cache) is not search
    )
    prune_to(teacher, "laco", calibration=x, merge_layers=3, threshold=0.5, cache=cache)
    n = search.evaluations
    assert n > 0  # the cached search did the work
    prune_to(teacher, "laco", calibration=x, merge_layers=3, threshold=0.5, cache=cache)
    assert search.evaluations == n  # the same run again: nothing scored
    with torch.no_grad():
        teacher.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    assert laco_search(teacher, x, cache=cache) is not search  # edited weights: a new search


def test_the_module_keeps_no_cache():
    import boomerang.analysis.baselines as bl

    assert not hasattr(bl, "_MEMO") and not hasattr(bl, "clear_cache")
    state = [
        name
        for name, v in vars(bl).items()
        if not name.startswith("__") and isinstance(v, (dict, list, set, weakref.WeakKeyDictionary))
    ]
    assert state == []


def test_laco_scores_are_shared_across_runs():
    teacher = similar_layers("llama", 10)
    search = Laco(teacher, ids(4, 12))
    search.run(3, 0.95)
    n = search.evaluations
    search.run(3, 0.95)
    assert search.evaluations == n  # cached run
    search.run(3, 0.94)  # same decisions until a score falls between the thresholds
    assert search.evaluations <= n + 1


# ---- checkpoints -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox"])
def test_pruned_checkpoints_reload_and_generate(tmp_path, arch):
    teacher = similar_layers(arch, 8)
    x = ids(4, 12)
    models = {
        "naive": prune_to(teacher, "naive", num_layers=5),
        "shortgpt": prune_to(teacher, "shortgpt", num_layers=5, calibration=x),
        "laco": prune_to(teacher, "laco", calibration=x, merge_layers=3, threshold=-1.0),
    }
    for method, model in models.items():
        out = save_pruned(model, tmp_path / method, tokenizer=tiny_tokenizer())
        again = AutoModelForCausalLM.from_pretrained(out).eval()
        assert again.config.boomerang["method"] == method
        assert torch.allclose(_logits(again, x), _logits(model, x), atol=1e-6)
        with torch.no_grad():
            gen = again.generate(x[:1, :5], max_new_tokens=4, do_sample=False)
        assert gen.shape == (1, 9)
    with pytest.raises(BoomerangError, match="already exists"):
        save_pruned(models["naive"], tmp_path / "naive")


def test_prune_to_rejects_bad_input():
    teacher = make_teacher("llama", 6)
    with pytest.raises(BoomerangError, match="unknown pruning method"):
        prune_to(teacher, "magic", num_layers=3)
    with pytest.raises(BoomerangError, match="chooses the layers itself"):
        prune_to(teacher, "shortgpt", layers=[0, 1], calibration=ids())
    with pytest.raises(BoomerangError, match="calibration"):
        prune_to(teacher, "shortgpt", num_layers=3)
    with pytest.raises(BoomerangError, match="unknown parameter"):
        prune_to(teacher, "naive", num_layers=3, threshold=0.5)
    with pytest.raises(BoomerangError, match="out of range"):
        prune_to(teacher, "shortgpt", num_layers=0, calibration=ids())
    with pytest.raises(BoomerangError, match="needs num_layers"):
        prune_to(teacher, "laco", calibration=ids())
    with pytest.raises(BoomerangError, match="merge_layers"):
        prune_to(teacher, "laco", calibration=ids(), merge_layers=1, threshold=0.5)


# ---- CLI ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def teacher_dir(tmp_path):
    teacher = similar_layers("llama", 8)
    d = tmp_path / "teacher"
    teacher.save_pretrained(d)
    tiny_tokenizer(d)
    g = torch.Generator().manual_seed(0)
    (tmp_path / "corpus.txt").write_text(
        " ".join(f"w{int(i)}" for i in torch.randint(4, 96, (3000,), generator=g))
    )
    return d


def test_cli_prune_methods(tmp_path, teacher_dir):
    data = str(tmp_path / "corpus.txt")
    base = ["prune", "--teacher", str(teacher_dir)]
    assert run([*base, "--method", "naive", "-n", "5", "--out", str(tmp_path / "naive")]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "naive").config.boomerang["teacher_layers"] == [
        0,
        2,
        4,
        6,
        7,
    ]
    assert (tmp_path / "naive" / "tokenizer.json").exists()
    assert (
        run(
            [
                *base,
                "--method",
                "shortgpt",
                "-n",
                "5",
                "--data",
                data,
                "--calibration-texts",
                "4",
                "--calibration-length",
                "16",
                "--out",
                str(tmp_path / "sg"),
            ]
        )
        == 0
    )
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "sg").config.num_hidden_layers == 5
    assert (
        run(
            [
                *base,
                "--method",
                "laco",
                "-C",
                "3",
                "-T",
                "0.5",
                "--data",
                data,
                "--out",
                str(tmp_path / "laco"),
            ]
        )
        == 0
    )
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "laco").config.boomerang["method"] == "laco"


def test_cli_prune_bad_input(tmp_path, teacher_dir):
    base = ["prune", "--teacher", str(teacher_dir)]
    out = tmp_path / "out"
    assert run([*base, "--method", "magic", "-n", "3", "--out", str(out)]) == 2
    assert run([*base, "--method", "shortgpt", "-n", "3", "--out", str(out)]) == 2  # no --data
    assert run([*base, "--method", "naive", "--out", str(out)]) == 2  # no size
    assert run([*base, "--method", "shortgpt", "--layers", "0,1", "--out", str(out)]) == 2
    assert run([*base, "--method", "naive", "-n", "99", "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    out.mkdir()
    assert run([*base, "--method", "naive", "-n", "3", "--out", str(out)]) == 2  # exists, no --force
    assert run([*base, "--method", "naive", "-n", "3", "--out", str(out), "--force"]) == 0


@pytest.mark.parametrize("arch", DECODERS)
def test_shortgpt_on_every_architecture(arch):
    teacher = make_teacher(arch, 6)
    x = ids(2, 8)
    model = prune_to(teacher, "shortgpt", num_layers=4, calibration=x)
    kept = model.config.boomerang["teacher_layers"]
    bi = block_influence(teacher, x)
    assert sorted(model.config.boomerang["removed"]) == sorted(sorted(range(6), key=lambda j: (bi[j], j))[:2])
    assert len(kept) == 4 and _logits(model, x).shape[1] == 8


# ---- the real teacher ----------------------------------------------------------------------------------------------------


@pytest.mark.real
def test_shortgpt_on_the_real_teacher(real_teacher_dir, corpora):
    from boomerang.data import calibration_ids

    teacher = B.load_model(real_teacher_dir, dtype="float32")
    tok = B.load_tokenizer(real_teacher_dir)
    x = calibration_ids(corpora / "validation", tok, n=2, length=48)
    bi = block_influence(teacher, x)
    assert len(bi) == 30 and all(0.0 <= v <= 2.0 for v in bi) and min(bi) < 0.1  # BI = 1 - cos
    with torch.no_grad():
        hs = teacher(x, output_hidden_states=True, use_cache=False).hidden_states
    for i in (0, 10, 28):  # hidden_states[i] enters layer i; hidden_states[i + 1] leaves it (i < 29)
        cos = torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean()
        assert bi[i] == pytest.approx(1 - float(cos), abs=1e-4)
    model = prune_to(teacher, "shortgpt", num_layers=27, calibration=x)
    removed = model.config.boomerang["removed"]
    assert sorted(removed) == sorted(sorted(range(30), key=lambda j: (bi[j], j))[:3])
    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == prompt.shape[1] + 4


def test_laco_keeps_one_working_model_and_never_deep_copies(monkeypatch):
    """LaCo holds at most one model besides the teacher: no deep copy, one model built per run, and the working
    model shares every teacher tensor except those of merged layers."""
    import boomerang.analysis.baselines as bl

    teacher = similar_layers("llama", 10)
    x = ids(4, 12)
    real_deepcopy = copy.deepcopy

    def no_module_deepcopy(obj, *args, **kwargs):
        assert not isinstance(obj, torch.nn.Module), "LaCo deep-copied a model"
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_module_deepcopy)
    built = []
    real_init = type(teacher).__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(type(teacher), "__init__", counting_init)
    working = []
    real_working = bl._Working.__init__

    def track(self, t):
        real_working(self, t)
        working.append(self)

    monkeypatch.setattr(bl._Working, "__init__", track)
    search = Laco(teacher, x)
    result = search.run(3, 0.5)
    assert result.merges and len(result.attempts) > len(result.merges)  # some merges accepted, some undone
    assert len(built) == 1 and len(working) == 1  # one working model for the whole run, however many attempts
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    merged_positions = {pos for pos, _ in result.merges}
    for pos, layer in enumerate(layer_list(working[0].model)):
        for name, p in layer.named_parameters():
            own = p.data_ptr() not in teacher_ptrs
            assert own == (pos in merged_positions and name.endswith("proj.weight")), (pos, name)
