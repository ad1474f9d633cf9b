"""The training attention (train.attention, boomerang/train/attention.py): exact where it takes over, SDPA elsewhere."""

import pytest
import torch
import torch.nn.functional as F
from tiny import make_teacher, tiny_recipe, tiny_run_setup

from boomerang.train import attention
from boomerang.train.recipe import parse_recipe
from boomerang.train.trainer import Distiller


def _reference(q, k, v, scale):
    """Causal attention in float64 with the key/value heads repeated: ``[B, H, T, D]``."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) * scale
    t = q.shape[2]
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def _qkv(dtype, b=2, h=6, kv=2, t=24, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda heads: torch.randn(b, heads, t, d, generator=g).to(dtype).requires_grad_(True)  # noqa: E731
    return make(h), make(kv), make(kv)


def _ours(q, k, v, scale):
    """``matmul_attention`` as transformers calls it, back in ``[B, H, T, D]``."""
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = attention.matmul_attention(module, q, k, v, None, scaling=scale)
    return out.transpose(1, 2)


def _grads(fn, q, k, v, scale, dout):
    out = fn(q, k, v, scale)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), dout.to(out.dtype))
    return out, gq, gk, gv


def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)


@pytest.mark.parametrize("scale", [0.3, 0.125], ids=["scores-scaled", "queries-scaled"])
@pytest.mark.parametrize("group", [1, 3])
def test_the_autograd_function_is_causal_attention_with_its_exact_gradients(group, scale):
    """The function itself (any dtype) in float64: forward and the hand-written backward equal autograd's."""
    q, k, v = _qkv(torch.float64, h=2 * group, kv=2)
    dout = torch.randn(q.shape, dtype=torch.float64)
    b, h, t, d = q.shape
    mine = attention.MatmulAttention.apply(q.reshape(b, 2, group * t, d), k, v, scale).view(b, h, t, d)
    got = torch.autograd.grad(mine, (q, k, v), dout)
    ref = _reference(q, k, v, scale)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-10)
    for a, b_ in zip(got, want, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "head_dim", [8, 16]
)  # a scale of 8**-0.5, and 16**-0.5 = 0.25 (exact on the queries)
def test_bf16_outputs_and_gradients_are_as_close_to_float64_as_sdpa_is(head_dim):
    """In bf16 (where it takes over) its error against float64 is of SDPA's own size, outputs and gradients."""
    q, k, v = _qkv(torch.bfloat16, d=head_dim)
    scale = head_dim**-0.5
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    ref = _grads(_reference, q, k, v, scale, dout.double())
    ours = _grads(_ours, q, k, v, scale, dout)
    sdpa = _grads(_sdpa, q, k, v, scale, dout)
    for name, o, s, r in zip(("out", "dq", "dk", "dv"), ours, sdpa, ref, strict=True):
        err_ours = float((o.detach().double() - r.detach()).abs().max())
        err_sdpa = float((s.detach().double() - r.detach()).abs().max())
        scale_r = float(r.detach().abs().max())
        assert err_ours <= max(2 * err_sdpa, 0.01 * scale_r), (name, err_ours, err_sdpa)


def test_it_takes_over_only_causal_bf16_cpu_calls_with_autograd_on():
    q, k, _ = _qkv(torch.bfloat16)
    assert attention.takes(q, k, None, 0.0, {})
    with torch.no_grad():
        assert not attention.takes(q, k, None, 0.0, {})  # validation, the frozen teacher's forward
    assert not attention.takes(q.float(), k.float(), None, 0.0, {})  # fp32
    assert not attention.takes(q, k, torch.zeros(1), 0.0, {})  # a padding mask
    assert not attention.takes(q, k, None, 0.1, {})  # dropout
    assert not attention.takes(q, k, None, 0.0, {"sliding_window": 4})
    assert not attention.takes(q, k, None, 0.0, {"softcap": 50.0})
    assert not attention.takes(q[:, :, :1], k, None, 0.0, {})  # one query (decoding)


def test_under_autocast_it_takes_fp32_queries_and_computes_in_bf16_as_sdpa_does():
    """The trainer runs the student under autocast, where transformers' rotary embedding hands attention fp32
    queries and keys; SDPA would run in bf16 there (autocast casts it), and so does this, with fp32 gradients."""
    q, k, v = _qkv(torch.float32, d=16)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention.takes(q, k, None, 0.0, {})
        ours = _grads(_ours, q, k, v, 0.25, dout)
        sdpa = _grads(_sdpa, q, k, v, 0.25, dout)
    ref = _grads(_reference, q, k, v, 0.25, dout.double())
    assert ours[0].dtype == sdpa[0].dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in ours[1:])
    for o, s_, r in zip(ours, sdpa, ref, strict=True):
        err_ours = float((o.detach().double() - r.detach()).abs().max())
        err_sdpa = float((s_.detach().double() - r.detach()).abs().max())
        assert err_ours <= max(2 * err_sdpa, 0.01 * float(r.detach().abs().max())), (err_ours, err_sdpa)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_model_switched_to_it_trains_like_sdpa_and_evaluates_identically(arch, monkeypatch):
    """A tiny bf16 model: with autograd its logits and weight gradients are as close to the fp32 model's as
    SDPA's are; without (and with a padding mask) every call goes to SDPA, so the logits are bit-identical."""
    fp32 = make_teacher(arch, 3)
    sdpa = make_teacher(arch, 3).to(torch.bfloat16)
    ours = make_teacher(arch, 3).to(torch.bfloat16)
    attention.use(ours)
    assert ours.config._attn_implementation == attention.ATTENTION
    ids = torch.randint(3, 90, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(sdpa(ids).logits, ours(ids).logits)
        mask = torch.ones_like(ids)
        mask[0, :4] = 0
        assert torch.equal(sdpa(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits)
    calls = []
    forward = attention.MatmulAttention.forward
    monkeypatch.setattr(
        attention.MatmulAttention, "forward", staticmethod(lambda *a: calls.append(1) or forward(*a))
    )
    got = {}
    for name, m in (("fp32", fp32), ("sdpa", sdpa), ("ours", ours)):
        logits = m(ids).logits
        logits.float().logsumexp(-1).mean().backward()
        got[name] = (logits.detach().float(), {n: p.grad.float() for n, p in m.named_parameters()})
    assert len(calls) == 3  # it took over every layer's attention of the bf16 model with autograd on
    ref_logits, ref_grads = got["fp32"]

    def errors(name: str) -> list[float]:
        logits, grads = got[name]
        out = [float((logits - ref_logits).norm() / ref_logits.norm())]
        return out + [float((g - ref_grads[n]).norm() / ref_grads[n].norm()) for n, g in grads.items()]

    for e_ours, e_sdpa in zip(errors("ours"), errors("sdpa"), strict=True):
        assert e_ours <= 1.5 * e_sdpa + 2e-3, (e_ours, e_sdpa)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory.mktemp("attention"))


def test_training_uses_it_in_bf16_by_default_and_saves_a_student_with_its_own_attention(
    root, tmp_path, monkeypatch, capsys
):
    """``train.attention: auto`` switches the trained model and the teacher in bf16 (not in fp32); the loss
    follows SDPA's run; the saved student and the returned one are back on SDPA."""
    losses = {}
    calls = []
    forward = attention.MatmulAttention.forward
    monkeypatch.setattr(
        attention.MatmulAttention, "forward", staticmethod(lambda *a: calls.append(1) or forward(*a))
    )
    for setting in ("auto", "sdpa"):
        r = parse_recipe(tiny_recipe(root, train={"precision": "bf16", "steps": 6, "attention": setting}))
        d = Distiller(r, out=tmp_path / setting)
        d.setup()
        impl = d.models.trained.config._attn_implementation
        assert (impl == attention.ATTENTION) == (setting == "auto")
        assert d.models.attention == ("matmul" if setting == "auto" else "sdpa")
        assert (d.teacher.config._attn_implementation == attention.ATTENTION) == (setting == "auto")
        calls.clear()
        losses[setting] = torch.tensor([d.train_step()["loss"] for _ in range(6)])
        # every step runs the student's layers through it (4 micro-batches of 4 layers); none under sdpa
        assert len(calls) == (6 * 4 * d.layer_map.n_student if setting == "auto" else 0), len(calls)
        if setting == "auto":
            d.run()
            assert d.student.config._attn_implementation != attention.ATTENTION
            saved = (tmp_path / setting / "student" / "config.json").read_text()
            assert attention.ATTENTION not in saved
    rel = ((losses["auto"] - losses["sdpa"]).abs() / losses["sdpa"]).max()
    assert rel < 0.01, rel
    for setting in ("auto", "matmul"):  # fp32: SDPA (asked for matmul, the run says so)
        capsys.readouterr()
        train = {"precision": "fp32", "steps": 1, "attention": setting}
        fp32 = Distiller(parse_recipe(tiny_recipe(root, train=train)), out=tmp_path / f"fp32-{setting}")
        fp32.setup()
        assert fp32.models.attention == "sdpa"
        assert fp32.models.trained.config._attn_implementation != attention.ATTENTION
        said = "computes bf16 attention on a CPU only" in " ".join(capsys.readouterr().err.split())
        assert said == (setting == "matmul")
