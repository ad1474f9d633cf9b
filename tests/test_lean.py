"""Memory-lean gated MLPs (boomerang.train.lean): same values and gradients as the plain modules, less saved memory."""

import copy

import pytest
import torch
from tiny import DECODERS, ids, make_teacher

from boomerang.core.hooks import layer_list
from boomerang.train.lean import is_gated_mlp, lean_mlps

GATED = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks in both runs
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", DECODERS)
def test_lean_mlp_matches_autograd(arch):
    plain = make_teacher(arch, n_layers=3).train()
    lean = copy.deepcopy(plain)
    undo = lean_mlps(layer_list(lean))
    assert all(is_gated_mlp(layer.mlp) for layer in layer_list(lean)) == (arch in GATED)
    x = ids(batch=2, length=12)
    logits_a, grads_a = _loss_and_grads(plain, x)
    logits_b, grads_b = _loss_and_grads(lean, x)
    assert torch.equal(logits_a, logits_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-7, msg=name)
    undo()
    assert all("forward" not in layer.mlp.__dict__ for layer in layer_list(lean))


def test_lean_mlp_with_bias_and_under_checkpointing():
    from boomerang.train.lean import _lean_forward

    mlp = torch.nn.Module()
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16)
    mlp.down_proj, mlp.act_fn = torch.nn.Linear(16, 8), torch.nn.SiLU()
    x = torch.randn(3, 5, 8, requires_grad=True)
    wrt = (x, mlp.down_proj.bias, mlp.down_proj.weight, mlp.gate_proj.weight, mlp.up_proj.bias)
    ref = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
    want = torch.autograd.grad(ref.square().sum(), wrt)
    out = torch.utils.checkpoint.checkpoint(_lean_forward, mlp, x, use_reentrant=False)
    torch.testing.assert_close(out, ref)
    for got, expected in zip(torch.autograd.grad(out.square().sum(), wrt), want, strict=True):
        torch.testing.assert_close(got, expected)


def test_lean_mlp_saves_less_for_backward():
    plain = make_teacher("llama", n_layers=2, intermediate_size=256).train()
    lean = copy.deepcopy(plain)
    lean_mlps(layer_list(lean))
    x = ids(batch=4, length=64)

    def saved_bytes(model):
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=x).logits.sum()
        return sum(seen.values())

    per_mlp_tensor = 4 * 64 * 256 * 4  # one [tokens x intermediate] fp32 tensor
    assert saved_bytes(plain) - saved_bytes(lean) >= 2 * 2 * per_mlp_tensor  # two fewer per layer


def test_lean_mlp_under_bf16_autocast_matches_autograd():
    plain = make_teacher("llama", n_layers=2).train()
    lean = copy.deepcopy(plain)
    lean_mlps(layer_list(lean))
    x = ids(batch=2, length=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, ga = _loss_and_grads(plain, x)
        b, gb = _loss_and_grads(lean, x)
    assert torch.equal(a, b)
    for name in ga:
        assert gb[name].dtype == ga[name].dtype == torch.float32
        torch.testing.assert_close(gb[name], ga[name], rtol=2e-2, atol=1e-4, msg=name)
