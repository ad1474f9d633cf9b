"""Patching on tiny random models of every supported decoder architecture."""

import pytest
import torch
from tiny import DECODERS, ids, make_pair, make_student, make_teacher, tiny_config
from transformers import AutoModelForCausalLM

import boomerang as B
from boomerang.core.plan import make_plan


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(params=DECODERS)
def pair(request):
    return make_pair(request.param)


def test_extremes_are_exact(pair):
    teacher, student, lm = pair
    x = ids()
    for order in ("last", "first"):
        assert torch.equal(
            logits(B.patch(teacher, student, lm, num_patched=lm.n_student, order=order), x),
            logits(teacher, x),
        )
        assert torch.equal(
            logits(B.patch(teacher, student, lm, num_patched=0, order=order), x), logits(student, x)
        )


def _hand_assembled(teacher, student, lm, patched):
    """Build the patched model by hand: rename state-dict keys and load into a fresh model."""
    arch = B.get_arch(teacher.config)
    pre = arch.layers + "."
    layers = []
    for i in range(lm.n_student):
        layers += [("t", j) for j in lm.block(i)] if i in patched else [("s", i)]
    cfg = teacher.config.to_dict()
    key = "n_layer" if "n_layer" in cfg else "num_hidden_layers"
    cfg[key] = len(layers)
    if isinstance(cfg.get("layer_types"), list):
        cfg["layer_types"] = [
            teacher.config.layer_types[j] if w == "t" else student.config.layer_types[j] for w, j in layers
        ]
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = sum(
            1 for w, j in layers if j < (teacher if w == "t" else student).config.max_window_layers
        )
    embed_src = teacher if 0 in patched else student
    head_src = teacher if lm.n_student - 1 in patched else student
    cfg["tie_word_embeddings"] = embed_src is head_src and bool(head_src.config.tie_word_embeddings)
    cfg.pop("boomerang", None)
    model = AutoModelForCausalLM.from_config(type(teacher.config).from_dict(cfg)).eval()
    sd = {}
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for k in model.state_dict():
        if k.startswith(pre):
            n, rest = k[len(pre) :].split(".", 1)
            w, j = layers[int(n)]
            sd[k] = (t_sd if w == "t" else s_sd)[f"{pre}{j}.{rest}"]
        elif arch.side(k) == "head":
            sd[k] = head_src.state_dict()[k]
        else:
            sd[k] = embed_src.state_dict()[k]
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize("patched", [{1}, {0, 2}, {1, 3}, {0, 3}])
def test_arbitrary_patched_set_equals_hand_assembly(pair, patched):
    teacher, student, lm = pair
    x = ids()
    built = B.patch(teacher, student, lm, patched)
    expected = _hand_assembled(teacher, student, lm, patched)
    assert torch.allclose(logits(built, x), logits(expected, x), atol=1e-6, rtol=0)
    assert built.config.tie_word_embeddings == expected.config.tie_word_embeddings


def test_layer_idx_renumbered_and_sources_recorded(pair):
    teacher, student, lm = pair
    m = B.patch(teacher, student, lm, {1})
    arch = B.get_arch(teacher.config)
    layers = m.get_submodule(arch.layers)
    assert [layer.get_submodule(arch.attention).layer_idx for layer in layers] == list(range(len(layers)))
    sec = m.config.boomerang
    assert sec["patched_student_layers"] == [1]
    assert sec["layer_sources"] == [
        ["student", 0],
        ["teacher", 2],
        ["teacher", 3],
        ["student", 2],
        ["student", 3],
    ]
    assert sec["teacher_layers"] == [0, 2, 3, 4, 5]


def test_patch_shares_tensors_unless_copied(pair):
    teacher, student, lm = pair
    arch = B.get_arch(teacher.config)
    m = B.patch(teacher, student, lm, {1})
    t_layer = teacher.get_submodule(arch.layers)[2]
    m_layer = m.get_submodule(arch.layers)[1]
    for (_, a), (_, b) in zip(t_layer.named_parameters(), m_layer.named_parameters(), strict=True):
        assert a.data_ptr() == b.data_ptr()
    c = B.patch(teacher, student, lm, {1}, copy=True)
    c_layer = c.get_submodule(arch.layers)[1]
    assert all(
        a.data_ptr() != b.data_ptr() for a, b in zip(t_layer.parameters(), c_layer.parameters(), strict=True)
    )


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("tie", [True, False])
def test_save_reload_is_exact(tmp_path, arch, tie):
    teacher, student, lm = make_pair(arch, tie=tie)
    x = ids()
    for k in (0, 1, 2, lm.n_student):
        m = B.patch(teacher, student, lm, num_patched=k)
        d = tmp_path / f"k{k}"
        m.save_pretrained(d)
        again = AutoModelForCausalLM.from_pretrained(d).eval()
        assert torch.equal(logits(again, x), logits(m, x)), f"K={k}"
        mixed = m.config.boomerang["embedding_from"] != m.config.boomerang["head_from"]
        assert again.config.tie_word_embeddings == (tie and not mixed)
        if tie and mixed:  # embedding and head differ: untied and both saved
            assert not torch.equal(again.get_input_embeddings().weight, again.get_output_embeddings().weight)


def _greedy_without_cache(model, x, steps):
    seq = x
    for _ in range(steps):
        nxt = logits_nocache(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


def logits_nocache(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


@pytest.mark.parametrize("patched", [{1}, {0, 3}, {2, 3}])
def test_generate_with_kv_cache_matches_cache_free_loop(pair, patched):
    teacher, student, lm = pair
    m = B.patch(teacher, student, lm, patched)
    x = ids(batch=1, length=6)
    steps = 10  # longer than the tiny sliding windows (4-6 tokens)
    m.generation_config.eos_token_id = None  # generate exactly `steps` tokens, like the loop
    with torch.no_grad():
        out = m.generate(x, max_new_tokens=steps, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(out, _greedy_without_cache(m, x, steps))


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "gemma3_text"])
def test_layer_types_are_subset(arch):
    teacher, student, lm = make_pair(arch, n_layers=8, kept=(0, 2, 4, 6, 7))
    assert student.config.layer_types == [teacher.config.layer_types[j] for j in lm.kept]
    m = B.patch(teacher, student, lm, {1, 2})
    tl = m.config.boomerang["teacher_layers"]
    assert tl == [0, 2, 3, 4, 5, 6, 7]
    assert m.config.layer_types == [teacher.config.layer_types[j] for j in tl]
    assert m.config.num_hidden_layers == 7
    for layer, kind in zip(m.model.layers, m.config.layer_types, strict=True):
        assert layer.self_attn.layer_type == kind
        assert (layer.self_attn.sliding_window is not None) == (kind == "sliding_attention")
    if arch != "gemma3_text":
        mwl = teacher.config.max_window_layers
        assert m.config.max_window_layers == sum(1 for j in tl if j < mwl)
        assert student.config.max_window_layers == sum(1 for j in lm.kept if j < mwl)


def test_gemma3_mixed_types_actually_subset():
    _teacher, student, _lm = make_pair("gemma3_text", n_layers=8, kept=(0, 2, 4, 6, 7))
    assert set(student.config.layer_types) == {"sliding_attention", "full_attention"}


def test_hidden_states_output_not_duplicated(pair):
    teacher, student, lm = pair
    x = ids()
    teacher(x, output_hidden_states=True)  # installs capture hooks on the teacher's modules
    m = B.patch(teacher, student, lm, {1})
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
    assert len(hs) == m.config.boomerang["teacher_layers"].__len__() + 1


@pytest.mark.parametrize("arch", DECODERS)
def test_param_accounting_matches_built_models(arch):
    teacher, student, lm = make_pair(arch, tie=True)
    for order in ("last", "first"):
        table = B.family_table(teacher.config, student.config, lm, B.resolve_order(order, lm))
        for row in table:
            m = B.patch(teacher, student, lm, num_patched=row["K"], order=order)
            counted = B.count_params(m)
            assert (row["trainable"], row["inference"]) == (counted.trainable, counted.inference)
    # tied student: K=0 counts the vocabulary once for training, twice at inference
    k0 = table[0]
    head = teacher.get_output_embeddings().weight.numel()
    assert k0["inference"] - k0["trainable"] == head
    # once embedding and head come from different models, both are real tensors
    mixed = B.family_table(teacher.config, student.config, lm, B.resolve_order("last", lm))[1]
    assert mixed["inference"] == mixed["trainable"]


def test_incompatible_pairs_fail_clearly():
    teacher = make_teacher("llama")
    lm = B.LayerMap.from_kept([0, 2, 4, 5], 6)
    other = make_student(make_teacher("llama", hidden_size=64), lm)
    with pytest.raises(B.BoomerangError, match="hidden_size"):
        B.patch(teacher, other, lm, {1})
    vocab = make_student(make_teacher("llama", vocab_size=80), lm)
    with pytest.raises(B.BoomerangError, match="vocab_size"):
        B.patch(teacher, vocab, lm, {1})
    qwen = make_student(make_teacher("qwen3"), lm)
    with pytest.raises(B.BoomerangError, match="different architectures"):
        B.patch(teacher, qwen, lm, {1})


def test_bad_requests_fail_clearly():
    teacher, student, lm = make_pair("llama")
    with pytest.raises(B.BoomerangError, match="out of range"):
        B.patch(teacher, student, lm, num_patched=5)
    with pytest.raises(B.BoomerangError, match=r"\[7\] do not exist"):
        B.patch(teacher, student, lm, [7])
    with pytest.raises(B.BoomerangError, match="exactly one"):
        make_plan(lm)
    with pytest.raises(B.BoomerangError, match="unknown patch order"):
        B.patch(teacher, student, lm, num_patched=1, order="middle")
    with pytest.raises(B.BoomerangError, match="8-layer teacher, but the teacher has 6 layers"):
        B.patch(teacher, student, B.LayerMap.from_kept([0, 2, 4, 6], 8), {1})
    with pytest.raises(B.BoomerangError, match="same dtype"):
        B.patch(teacher, student.to(torch.bfloat16), lm, {1})


def test_unsupported_model_type_lists_supported():
    cfg = tiny_config("llama")
    cfg.model_type = "falcon"
    with pytest.raises(B.BoomerangError, match=r"Supported model types: .*gemma3_text.*llama"):
        B.get_arch(cfg)


def test_layer_map_read_from_student_config():
    teacher, student, lm = make_pair("llama")
    m = B.patch(teacher, student, num_patched=1)  # layer map from the student's config
    assert m.config.boomerang["layer_map"]["kept"] == list(lm.kept)
    student.config.boomerang = None
    with pytest.raises(B.BoomerangError, match="carries no layer map"):
        B.patch(teacher, student, num_patched=1)


def test_new_architecture_is_a_few_lines_of_data():
    arch = B.register(
        B.Arch(
            model_type="llama_copy_for_test",
            layers="model.layers",
            embed=("model.embed_tokens",),
            head=("model.norm", "lm_head"),
            shared=("model.rotary_emb",),
        )
    )
    try:
        assert B.get_arch("llama_copy_for_test") is arch
    finally:
        B.ARCHS.pop("llama_copy_for_test")
