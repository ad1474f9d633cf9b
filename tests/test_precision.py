"""``train.precision: auto``: bf16 only where the CPU computes it natively and faster; the losses agree."""

import pytest
import torch

from boomerang.train import precision as P


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\nmodel name : x\n")
    assert {"avx512_bf16", "avx512f"} <= P.cpu_flags(info)
    assert P.native_bf16(P.cpu_flags(info)) == ["avx512_bf16"]
    assert P.native_bf16({"amx_bf16", "avx512_bf16"}) == ["amx_bf16", "avx512_bf16"]
    assert P.native_bf16({"avx2", "avx512f"}) == []
    assert P.cpu_flags(tmp_path / "missing") == set()


def test_explicit_precision_is_kept():
    assert P.choose_precision("fp32").name == "fp32"
    assert P.choose_precision("bf16").bf16


@pytest.mark.parametrize(
    "flags,speedup,expected",
    [([], 3.0, "fp32"), (["avx512_bf16"], 2.3, "bf16"), (["amx_bf16"], 1.1, "fp32")],
)
def test_auto_on_cpu(monkeypatch, flags, speedup, expected):
    monkeypatch.setattr(P, "native_bf16", lambda: flags)
    monkeypatch.setattr(P, "bf16_speedup", lambda: speedup)
    choice = P.choose_precision("auto", cuda=False, processes=1)
    assert choice.name == expected
    assert (flags[0] if flags else "no native bf16") in choice.reason


def test_auto_with_several_processes_decides_by_flags_alone(monkeypatch):
    monkeypatch.setattr(P, "native_bf16", lambda: ["avx512_bf16"])
    monkeypatch.setattr(P, "bf16_speedup", lambda: pytest.fail("ranks must not time matmuls separately"))
    assert P.choose_precision("auto", cuda=False, processes=2).bf16


def test_the_probe_measures_a_ratio():
    assert P.bf16_speedup((64, 64, 64), repeats=2) > 0


def test_this_machine(capsys):
    """Not an assertion about the machine: shows what auto picks here (in -s output)."""
    choice = P.choose_precision("auto", cuda=False, processes=1)
    print(f"flags {P.native_bf16()}; auto -> {choice.name}: {choice.reason}")
    assert choice.name in ("fp32", "bf16")
    if not P.native_bf16():
        assert choice.name == "fp32"


def test_head_loss_bf16_tracks_fp32():
    """The fused CE/KL with bf16 matmuls (autocast) against the same loss in fp32: values and gradients."""
    from boomerang.train.losses import head_ce_kl

    g = torch.Generator().manual_seed(0)
    t, d, v = 96, 32, 3000
    h = torch.randn(t, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.2
    ht, wt = h + 0.1 * torch.randn(t, d, generator=g), w + 0.05 * torch.randn(v, d, generator=g)
    labels = torch.randint(0, v, (t,), generator=g)
    labels[-1] = -100
    real = torch.ones(t, dtype=torch.bool)
    out = {}
    for bf16 in (False, True):
        hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            teacher = (ht.bfloat16(), wt.bfloat16()) if bf16 else (ht, wt)
            loss, ce, kl = head_ce_kl(
                hs,
                ws,
                labels,
                real,
                h_t=teacher[0],
                w_t=teacher[1],
                ce_scale=1 / t,
                kl_scale=0.1 / t,
                chunk=40,
            )
        loss.backward()
        assert hs.grad.dtype == torch.float32 and ws.grad.dtype == torch.float32
        out[bf16] = (float(ce), float(kl), hs.grad, ws.grad)
    (ce32, kl32, gh32, gw32), (ce16, kl16, gh16, gw16) = out[False], out[True]
    assert ce16 == pytest.approx(ce32, rel=5e-3) and kl16 == pytest.approx(kl32, rel=5e-2, abs=1e-3)
    for a, b in ((gh32, gh16), (gw32, gw16)):
        assert float((a - b).norm() / a.norm()) < 2e-2
