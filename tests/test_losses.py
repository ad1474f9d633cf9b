"""Each loss term against a plain reference computation; chunking, padding and normalisation."""

import pytest
import torch
import torch.nn.functional as F
from tiny import ids, make_pair

from boomerang.core.layermap import LayerMap
from boomerang.train.losses import (
    DistillLoss,
    LossConfig,
    cosine_distance_sum,
    head_ce_kl,
    logits_ce_kl,
    model_outputs,
    next_token_labels,
    token_counts,
)

torch.manual_seed(0)


def _ref_ce_sum(logits, labels):
    return F.cross_entropy(logits.double(), labels, ignore_index=-100, reduction="sum")


def _ref_kl_sum(zs, zt, real, tau):
    """Σ_real KL(softmax(zt/τ) ‖ softmax(zs/τ)), written out plainly."""
    p = torch.softmax(zt.double() / tau, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(zs.double() / tau, -1))).sum(-1)
    return (kl * real).sum()


def _data(t=23, d=8, v=50, pad_from=18, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(t, d, generator=g, dtype=dtype, requires_grad=True)
    w_s = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    h_t, w_t = torch.randn(t, d, generator=g, dtype=dtype), torch.randn(v, d, generator=g, dtype=dtype)
    labels = torch.randint(0, v, (t,), generator=g)
    real = torch.ones(t, dtype=torch.bool)
    real[pad_from:] = False
    labels[pad_from - 1 :] = -100
    labels[3] = -100
    return h_s, w_s, h_t, w_t, labels, real


@pytest.mark.parametrize("tau", [1.0, 2.5])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_head_ce_kl_matches_reference_values_and_gradients(tau, chunk):
    h_s, w_s, h_t, w_t, labels, real = _data()
    ce_w, kl_w = 0.7, 0.3
    loss, ce_sum, kl_sum = head_ce_kl(
        h_s, w_s, labels, real, h_t=h_t, w_t=w_t, ce_scale=ce_w, kl_scale=kl_w, tau=tau, chunk=chunk
    )
    gh, gw = torch.autograd.grad(loss, (h_s, w_s))
    zs, zt = h_s @ w_s.T, h_t @ w_t.T
    ref_ce, ref_kl = _ref_ce_sum(zs, labels), _ref_kl_sum(zs, zt, real, tau)
    ref = ce_w * ref_ce + kl_w * ref_kl
    rh, rw = torch.autograd.grad(ref, (h_s, w_s))
    torch.testing.assert_close(ce_sum, ref_ce.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kl_sum, ref_kl.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh.double(), rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-6)


def test_logits_path_matches_reference():
    h_s, w_s, h_t, w_t, labels, real = _data()
    zs = (h_s @ w_s.T).detach().float().requires_grad_(True)
    zt = (h_t @ w_t.T).float()
    zt_before = zt.clone()
    loss, _, _ = logits_ce_kl(zs, labels, real, z_t=zt, ce_scale=0.5, kl_scale=2.0, tau=1.7, chunk=4)
    (g,) = torch.autograd.grad(loss, zs)
    ref = 0.5 * _ref_ce_sum(zs, labels) + 2.0 * _ref_kl_sum(zs, zt, real, 1.7)
    (rg,) = torch.autograd.grad(ref, zs)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
    assert torch.equal(zt, zt_before)  # inputs are never modified in place


def test_chunked_equals_unchunked_in_float32():
    t, d, v = 300, 32, 997
    g = torch.Generator().manual_seed(1)
    h_s = torch.randn(t, d, generator=g).requires_grad_(True)
    w_s = torch.randn(v, d, generator=g).div_(4).requires_grad_(True)
    h_t, w_t = torch.randn(t, d, generator=g), torch.randn(v, d, generator=g) / 4
    labels = torch.randint(0, v, (t,), generator=g)
    real = torch.ones(t, dtype=torch.bool)
    kw = dict(h_t=h_t, w_t=w_t, ce_scale=1 / t, kl_scale=0.1 / t, tau=1.0)
    full = head_ce_kl(h_s, w_s, labels, real, chunk=t, **kw)
    chunked = head_ce_kl(h_s, w_s, labels, real, chunk=17, **kw)
    assert abs(full[0].item() - chunked[0].item()) < 1e-5
    g_full = torch.autograd.grad(full[0], (h_s, w_s))
    g_chunk = torch.autograd.grad(chunked[0], (h_s, w_s))
    for a, b in zip(g_full, g_chunk, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # and against the plain fp32 computation on materialised logits
    zs, zt = h_s @ w_s.T, h_t @ w_t.T
    plain = F.cross_entropy(zs, labels, reduction="mean") + 0.1 * F.kl_div(
        torch.log_softmax(zs, -1), torch.log_softmax(zt, -1), log_target=True, reduction="batchmean"
    )
    assert abs(plain.item() - chunked[0].item()) < 1e-5


def test_kl_is_forward_kl_teacher_to_student():
    zs = torch.tensor([[2.0, 0.0, -1.0]])
    zt = torch.tensor([[0.0, 1.0, 0.5]])
    _, _, kl = logits_ce_kl(
        zs.clone().requires_grad_(True),
        torch.tensor([-100]),
        torch.tensor([True]),
        z_t=zt,
        ce_scale=0,
        kl_scale=1.0,
    )
    p, q = torch.softmax(zt, -1), torch.softmax(zs, -1)
    assert abs(float(kl) - float((p * (p / q).log()).sum())) < 1e-6
    assert abs(float(kl) - float((q * (q / p).log()).sum())) > 1e-3


def test_cosine_distance_sum_reference():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    real = torch.tensor([1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    ref = sum(1 - (a[i] @ b[i]) / (a[i].norm() * b[i].norm()) for i in range(7) if real[i])
    assert abs(float(cosine_distance_sum(a, b, real)) - float(ref)) < 1e-6


def test_cosine_distance_sum_gradients_match_autograd():
    """The hand-written backward equals autograd's through F.cosine_similarity, for both inputs (fp64 gradcheck
    too), and bf16 inputs get bf16 gradients close to the fp32 ones."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    real = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    ref = ((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)) * real).sum()
    ga, gb = torch.autograd.grad(ref, (a, b))
    ours = cosine_distance_sum(a, b, real)
    oa, ob = torch.autograd.grad(ours, (a, b))
    assert abs(float(ours) - float(ref)) < 1e-6
    assert torch.allclose(oa, ga, atol=1e-6) and torch.allclose(ob, gb, atol=1e-6)
    assert oa[2].abs().max() == 0  # padding rows get no gradient
    w = real.to(torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: cosine_distance_sum(x, y, w.bool()), (a, b))
    a16 = a.detach().bfloat16().requires_grad_()
    (g16,) = torch.autograd.grad(cosine_distance_sum(a16, b.detach().bfloat16(), real), (a16,))
    assert g16.dtype == torch.bfloat16
    assert torch.allclose(g16.double(), oa, atol=2e-2, rtol=2e-2)


def test_labels_and_counts_skip_padding():
    x = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert next_token_labels(x, mask).tolist() == [[6, 7, 8, -100], [10, -100, -100, -100]]
    assert token_counts(x, mask) == (4, 6)
    assert token_counts(x, None) == (6, 8)


def _reference_eq1(student, teacher, lm, x, mask, cfg: LossConfig):
    """Eq. 1 the straightforward way: full logits, output_hidden_states, masked means."""
    s = student(input_ids=x, attention_mask=mask, output_hidden_states=True)
    with torch.no_grad():
        t = teacher(input_ids=x, attention_mask=mask, output_hidden_states=True)
    labels = next_token_labels(x, mask)
    real = mask.bool().reshape(-1)
    ce = F.cross_entropy(s.logits.reshape(-1, s.logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    tau = cfg.temperature
    kl_rows = F.kl_div(
        torch.log_softmax(s.logits / tau, -1),
        torch.log_softmax(t.logits / tau, -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    kl = kl_rows.reshape(-1)[real].mean()
    m = lm.n_student
    # hidden_states[0] is the embedding output, [i+1] the output of layer i, [-1] is after the final norm
    pairs = [(i + 1, lm.target(i) + 1) for i in range(m - 1)] + [(m, lm.n_teacher)]
    if cfg.align_embeddings:
        pairs.append((0, 0))
    cos = 0
    for a, b in pairs:
        hs, ht = s.hidden_states[a], t.hidden_states[b]
        c = F.cosine_similarity(hs, ht, dim=-1).reshape(-1)[real]
        cos = cos + (1 - c).mean()
    return cfg.ce * ce + cfg.kl * tau**2 * kl + cfg.cos_weight(m) * cos


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("mode", ["head", "logits"])
def test_distill_loss_equals_the_straightforward_implementation(arch, mode):
    # eval mode: GPT-2 dropout would differ per pass
    teacher, student, lm = make_pair(arch, tie=arch == "llama")
    x = ids(3, 10)
    mask = torch.ones_like(x)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    cfg = LossConfig(temperature=2.0, align_embeddings=True, align_final="normed")
    dl = DistillLoss(cfg, lm)
    s_out = model_outputs(student, x, mask, dl.keys(0), mode=mode)
    with torch.no_grad():
        t_out = model_outputs(teacher, x, mask, dl.keys(1), mode=mode)
    n_ce, n_tok = token_counts(x, mask)
    out = dl(s_out, t_out, x, mask, n_ce=n_ce, n_tok=n_tok)
    ref = _reference_eq1(student, teacher, lm, x, mask, cfg)
    assert abs(out.loss.item() - ref.item()) < 1e-5
    params = [p for p in student.parameters() if p.requires_grad]
    g = torch.autograd.grad(out.loss, params, allow_unused=True)
    rg = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g, rg, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    terms = dl.summarise(out.sums)
    assert abs(terms["loss"] - ref.item()) < 1e-5


def test_padding_never_contributes():
    teacher, student, lm = make_pair("llama")
    dl = DistillLoss(LossConfig(align_embeddings=True, align_final="both"), lm)
    x = ids(1, 8)
    padded = torch.cat([x, torch.tensor([[0, 0, 0]])], 1)
    other = torch.cat([x, torch.tensor([[50, 60, 70]])], 1)  # different junk in the padded slots
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 3)], 1).long()

    def run(inp, m):
        student.zero_grad()
        s = model_outputs(student, inp, m, dl.keys(0))
        with torch.no_grad():
            t = model_outputs(teacher, inp, m, dl.keys(1))
        n_ce, n_tok = token_counts(inp, m)
        out = dl(s, t, inp, m, n_ce=n_ce, n_tok=n_tok)
        out.loss.backward()
        return out.loss.item(), [p.grad.clone() for p in student.parameters()], out.sums

    base, g0, sums = run(x, None)
    for inp in (padded, other):
        loss, g1, s1 = run(inp, mask)
        assert abs(loss - base) < 1e-6
        assert s1["n_tok"] == sums["n_tok"] == 8 and s1["n_ce"] == 7
        for a, b in zip(g0, g1, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_micro_batches_with_global_counts_sum_to_the_global_mean():
    teacher, student, lm = make_pair("qwen3")
    dl = DistillLoss(LossConfig(), lm)
    x = ids(4, 9, seed=5)
    mask = torch.ones_like(x)
    mask[0, 5:] = 0
    mask[3, 2:] = 0  # micro-batches with very different token counts

    def loss(inp, m, n_ce, n_tok):
        s = model_outputs(student, inp, m, dl.keys(0))
        with torch.no_grad():
            t = model_outputs(teacher, inp, m, dl.keys(1))
        return dl(s, t, inp, m, n_ce=n_ce, n_tok=n_tok)

    n_ce, n_tok = token_counts(x, mask)
    whole = loss(x, mask, n_ce, n_tok)
    parts = [loss(x[i : i + 2], mask[i : i + 2], n_ce, n_tok) for i in (0, 2)]
    assert abs(whole.loss.item() - sum(p.loss.item() for p in parts)) < 1e-6
    summed = {k: sum(p.sums[k] for p in parts) for k in parts[0].sums}
    assert abs(dl.summarise(summed)["loss"] - whole.loss.item()) < 1e-5


@pytest.mark.parametrize(
    "weights,expect",
    [
        (dict(kl=0, cos=0), {"kl": 0.0, "cos": 0.0}),
        (dict(ce=0, cos=0), {"ce_term": 0.0}),
        (dict(kl=0), {"kl": 0.0}),
        (dict(ce=0, kl=0), {"ce_term": 0.0, "kl": 0.0}),
    ],
)
def test_terms_switch_off(weights, expect):
    teacher, student, lm = make_pair("llama")
    cfg = LossConfig(**weights)
    dl = DistillLoss(cfg, lm)
    x = ids(2, 8)
    s = model_outputs(student, x, None, dl.keys(0))
    t = model_outputs(teacher, x, None, dl.keys(1)) if dl.needs_teacher else None
    n_ce, n_tok = token_counts(x, None)
    out = dl(s, t, x, None, n_ce=n_ce, n_tok=n_tok)
    terms = dl.summarise(out.sums)
    assert abs(terms["loss"] - out.loss.item()) < 1e-5
    if "kl" in expect:
        assert out.sums["kl"] == 0.0
    if "cos" in expect:
        assert out.sums["cos"] == 0.0 and not dl.pairs
    if "ce_term" in expect:
        assert abs(terms["loss"] - (cfg.kl * terms["kl"] + dl.cos_weight * terms["cos"])) < 1e-6
    assert dl.needs_teacher == (cfg.kl > 0 or cfg.cos != 0)
    # CE is measured whatever its weight: the logs and validation perplexity report it (it once read 0 at ce=0)
    with torch.no_grad():
        ref = F.cross_entropy(student(x).logits[:, :-1].flatten(0, 1).double(), x[:, 1:].reshape(-1))
    assert terms["ce"] == pytest.approx(ref.item(), rel=1e-5)


def test_default_cos_weight_and_pairs():
    lm = LayerMap.every(30)
    dl = DistillLoss(LossConfig(), lm)
    assert dl.cos_weight == pytest.approx(2 / 17)
    assert len(dl.pairs) == 16 and dl.pairs[0] == ("out:0", "out:1") and dl.pairs[-1] == ("out:15", "out:29")
    ref = DistillLoss(LossConfig(align_embeddings=True, align_final="normed"), lm)
    assert len(ref.pairs) == 17 and ("norm", "norm") in ref.pairs and ("out:15", "out:29") not in ref.pairs
    with pytest.raises(ValueError, match="every loss term is switched off"):
        LossConfig(ce=0, kl=0, cos=0)


def test_kl_with_minus_infinity_teacher_logits_is_finite():
    zs = torch.tensor([[1.0, 0.5, -0.5, 2.0]], requires_grad=True)
    zt = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])
    loss, _, kl = logits_ce_kl(
        zs, torch.tensor([-100]), torch.tensor([True]), z_t=zt, ce_scale=0, kl_scale=1.0
    )
    p = torch.softmax(zt, -1)
    ref = (p[p > 0] * (p[p > 0].log() - torch.log_softmax(zs, -1)[p > 0])).sum()
    assert torch.isfinite(kl) and abs(float(kl) - ref.item()) < 1e-6
    (g,) = torch.autograd.grad(loss, zs)
    torch.testing.assert_close(g, torch.softmax(zs.detach(), -1) - p)


# ---- the teacher-context term -----------------------------------------------------------------------------------


def _ctx_setup(kept=(0, 2, 4, 5), arch="llama"):
    from tiny import ids, make_pair

    from boomerang.core.layermap import LayerMap
    from boomerang.train.losses import DistillLoss, LossConfig, model_outputs

    teacher, student, layer_map = make_pair(arch, 6, kept=kept)
    assert isinstance(layer_map, LayerMap)
    cfg = LossConfig(ce=0, kl=0, cos=0, ctx=1.0, ctx_mse=0.5)
    loss_fn = DistillLoss(cfg, layer_map)
    x = ids(2, 12)
    with torch.no_grad():  # as in training: the teacher is frozen
        t_out = model_outputs(teacher.requires_grad_(False), x, None, loss_fn.keys(1))
    s_out = model_outputs(student, x, None, loss_fn.keys(0), ctx=loss_fn.ctx_inputs(t_out))
    return teacher, student, layer_map, loss_fn, x, t_out, s_out


def test_ctx_pass_runs_each_student_layer_on_the_teachers_block_input():
    """ctx:i is student layer i applied to the teacher's state entering its block (layer l_i - 1's output)."""
    from boomerang.core.spans import run_span

    teacher, student, layer_map, loss_fn, x, t_out, s_out = _ctx_setup()
    with torch.no_grad():
        for i, first in enumerate(layer_map.kept):
            h_in = run_span(teacher, x, stop=first) if first else None
            if h_in is None:
                from boomerang.core.spans import embedding_output

                h_in = embedding_output(teacher, x)
            want = run_span(student, x, start=i, stop=i + 1, hidden=h_in)
            torch.testing.assert_close(s_out.states[f"ctx:{i}"], want)
            target = run_span(teacher, x, stop=layer_map.target(i) + 1)
            torch.testing.assert_close(t_out.states[loss_fn.ctx_pairs[i][1]], target)


def test_ctx_term_is_zero_for_a_student_that_is_the_teacher():
    """With every teacher layer kept and copied unchanged, each student layer reproduces its block exactly."""
    from tiny import ids, make_teacher

    from boomerang.core.layermap import LayerMap
    from boomerang.train.initialise import init_student
    from boomerang.train.losses import DistillLoss, LossConfig, model_outputs

    teacher = make_teacher("llama", 4)
    student = init_student(teacher, [0, 1, 2, 3])
    lm = LayerMap(n_teacher=4, kept=(0, 1, 2, 3))
    loss_fn = DistillLoss(LossConfig(ce=0, kl=0, cos=0, ctx=1.0, ctx_mse=1.0), lm)
    x = ids(2, 10)
    t_out = model_outputs(teacher, x, None, loss_fn.keys(1))
    s_out = model_outputs(student, x, None, loss_fn.keys(0), ctx=loss_fn.ctx_inputs(t_out))
    out = loss_fn(s_out, t_out, x, None, n_ce=18, n_tok=20)
    assert out.sums["ctx"] < 1e-5 and out.sums["ctx_mse"] < 1e-10


def test_ctx_gradient_reaches_only_the_student_layers():
    """The teacher-context term trains each student layer alone: no gradient reaches the embedding, the final
    norm or the head, and every layer gets one."""
    teacher, student, _layer_map, loss_fn, x, t_out, s_out = _ctx_setup()
    out = loss_fn(s_out, t_out, x, None, n_ce=22, n_tok=24)
    # CE is measured (reported) at weight 0, but gives no gradient: the head and embedding get none below
    assert out.sums["ctx"] > 0 and out.sums["ctx_mse"] > 0 and out.sums["ce"] > 0
    out.loss.backward()
    for name, p in student.named_parameters():
        in_layer = name.startswith("model.layers.")
        got = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert got == in_layer, name
    assert all(p.grad is None for p in teacher.parameters())


def test_the_member_loss_keeps_the_loss_settings():
    """The mixed-context member's loss is the main loss's CE and KL scaled by ``mixed``, at the same temperature
    and chunking; a new loss setting must be decided for it here (one was once dropped silently)."""
    cfg = LossConfig(ce=0.0, kl=1.0, mixed=0.5, temperature=2.0, chunk_tokens=64)
    m = DistillLoss(cfg, LayerMap.every(6)).member_loss().config
    assert (m.ce, m.kl, m.temperature, m.chunk_tokens, m.cos, m.mixed) == (0, 0.5, 2.0, 64, 0, 0)
    # carried over or set for the member; then those with no meaning there (no hidden-state terms)
    decided = {"ce", "kl", "temperature", "cos", "mixed", "chunk_tokens"}
    unused = {"align_embeddings", "align_final", "ctx", "ctx_mse", "mixed_draw"}
    assert set(LossConfig.model_fields) == decided | unused
