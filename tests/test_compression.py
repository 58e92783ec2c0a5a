"""Compression (``lwvd_cuda.compression``): finite values and gradients on hostile energy maps; PCEN's smoother.

The inputs are what a front end really emits: exact zeros (silence), white noise, impulses, clipped
waveforms (through the layer), and negative values (sub-Heisenberg filters), plus the extremes of
float32. Every check is against a property that a bug would break (finiteness, the recurrence the
closed form must equal, the floor's bound), not against stored numbers.
"""

import math

import pytest
import torch

from lwvd_cuda import LWVD
from lwvd_cuda.compression import PCEN, Log, make_compression

SR = 8000.0


pytestmark = pytest.mark.usefixtures("quiet_reference_warning")


def _signals(n=1200):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, generator=g)
    impulse = torch.zeros(n)
    impulse[n // 3] = 1.0
    clipped = (3.0 * torch.sin(2 * math.pi * 440 * torch.arange(n) / SR)).clamp(-1, 1)
    return {"silence": torch.zeros(n), "white noise": noise, "impulse": impulse, "clipped": clipped}


@pytest.mark.parametrize("kind", ["log", "pcen"])
@pytest.mark.parametrize("signal", ["silence", "white noise", "impulse", "clipped"])
def test_layer_with_compression_is_finite_with_finite_gradients(kind, signal):
    x = _signals()[signal][None].repeat(2, 1).requires_grad_(True)
    layer = LWVD(SR, 6, n_fft=64, hop_length=40, window_seconds=0.006, compression=kind)
    y = layer(x)
    assert torch.isfinite(y).all(), (kind, signal)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), (kind, signal, name)


@pytest.mark.parametrize("module", [Log(1e-6), PCEN(3)])
def test_negative_zero_and_extreme_energies(module):
    # Sub-Heisenberg filters give negative K; silence exact zeros; float32's extremes must not overflow.
    k = torch.tensor([[-1e30, -1.0, -1e-30, 0.0, 1e-38, 1e-6, 1.0, 1e30, 3e38]]).repeat(3, 1)[None]  # (1, 3, 9)
    k = k.clone().requires_grad_(True)
    y = module(k)
    assert torch.isfinite(y).all(), y
    y.sum().backward()
    assert torch.isfinite(k.grad).all(), k.grad
    for p in module.parameters():
        assert torch.isfinite(p.grad).all()


def test_log_floor_bounds_value_and_gradient():
    floor = 1e-4
    k = torch.tensor([-5.0, 0.0, 1e-9, 2.0], dtype=torch.float64, requires_grad=True)
    y = Log(floor)(k)
    torch.testing.assert_close(y, torch.log(torch.tensor([0.0, 0.0, 1e-9, 2.0], dtype=torch.float64) + floor))
    y.sum().backward()
    assert float(k.grad.max()) <= 1.0 / floor
    assert float(k.grad[0]) == 0.0  # a negative energy reads as zero: no gradient pushes it further


def test_pcen_smoother_equals_the_recurrence():
    torch.manual_seed(0)
    p = PCEN(4).double()
    with torch.no_grad():
        p.raw_log_smooth.copy_(torch.tensor([-6.0, -3.0, -1.5, -0.8], dtype=torch.float64))  # several coefficients
    e = torch.rand(2, 4, 50, dtype=torch.float64)
    s = p.smooth_coef
    ref = [e[..., 0]]
    for t in range(1, 50):
        ref.append((1 - s) * ref[-1] + s * e[..., t])
    torch.testing.assert_close(p.smoother(e), torch.stack(ref, -1), rtol=1e-12, atol=1e-14)


def test_pcen_is_the_leaf_formula_and_learnable_per_channel():
    p = PCEN(2, alpha=0.9, delta=3.0, root=2.5, smooth_coef=0.1).double()
    torch.testing.assert_close(p.alpha, torch.full((2,), 0.9, dtype=torch.float64))
    torch.testing.assert_close(p.delta, torch.full((2,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(p.root, torch.full((2,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(p.smooth_coef, torch.full((2,), 0.1, dtype=torch.float64))
    e = torch.rand(1, 2, 7, dtype=torch.float64)
    m = p.smoother(e)
    want = (e / (p.floor + m) ** 0.9 + 3.0) ** (1 / 2.5) - 3.0 ** (1 / 2.5)
    torch.testing.assert_close(p(e), want)
    assert sum(q.numel() for q in p.parameters()) == 8  # 4 per channel


def test_pcen_parameters_stay_valid_after_any_step():
    p = PCEN(3)
    with torch.no_grad():
        for q, v in zip(p.parameters(), (1e30, -1e30, float("inf"), -float("inf"))):
            q.fill_(v)
    for name, lo, hi in (("alpha", 0.0, 1.0), ("delta", 1e-2, 1e2), ("root", 1.0, 10.0), ("smooth_coef", 1e-3, 0.5)):
        v = getattr(p, name)
        assert torch.isfinite(v).all() and (v >= lo * (1 - 1e-5)).all() and (v <= hi * (1 + 1e-5)).all(), (name, v)
    assert torch.isfinite(p(torch.rand(2, 3, 9))).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="floor"):
        Log(0.0)
    with pytest.raises(ValueError, match="floor"):
        Log(float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        PCEN(3, alpha=1.5)
    with pytest.raises(ValueError, match="smooth_coef"):
        PCEN(3, smooth_coef=0.9)
    with pytest.raises(ValueError, match="n_channels"):
        PCEN(0)
    with pytest.raises(ValueError, match="compression"):
        make_compression("sqrt", 3)
    with pytest.raises(ValueError, match="compression"):
        LWVD(SR, 2, n_fft=64, compression="db")
    with pytest.raises(ValueError, match="channels"):
        PCEN(3)(torch.rand(1, 4, 5))
