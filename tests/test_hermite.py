"""The Hermite fast path (``lwvd(..., method="hermite")``) against the reference with ``truncate=None``.

The fast path computes the untruncated operator without the lag window; the reference is run with
``n_fft`` large enough that the lag window does not cut (``2 pi^2 s^2 n_fft^2 >> 1``, ``s = sigma_nu
sqrt(1-rho^2)``: here >= 30) and with centres >= 5 sigma_nu inside ``(0, 1/2)`` (the reference sums the
Gaussian over ``[0, 1/2)`` only; the fast path over every frequency). The stated bound
(docs/hermite.md): ``max |K_hermite - K| <= rtol * max |K|`` over a bank of filters of one shape that
covers the signal's components (the error of each filter is bounded by ``rtol/2`` times the peak
response a filter of its shape gives to the signal's strongest component).
"""

import math

import pytest
import torch

import lwvd_cuda
from lwvd_cuda import hermite, reference
from lwvd_cuda.reference import analytic_signal
from lwvd_cuda.testing import rel_err


def shaped(area: float, rho: float, scale_t: float):
    """(sigma_t, sigma_nu) of a filter with this area ratio, tilt and Hermite time scale L (samples)."""
    sigma_t = scale_t * math.sqrt(area / 2.0)  # L^2 = sigma_t / (2 pi s), area = 4 pi sigma_t s
    s = area / (4.0 * math.pi * sigma_t)
    return sigma_t, s / math.sqrt(1.0 - rho * rho)


def bank(shapes, offsets=(-2, -1, 0, 1, 2), centre=0.25):
    """Per shape (area, rho, L) a bank of filters at centre + offset * sigma_nu, float64 (F,) each."""
    rows = []
    for area, rho, scale_t in shapes:
        st, sn = shaped(area, rho, scale_t)
        rows += [(centre + o * sn, st, sn, rho) for o in offsets]
    return tuple(torch.tensor(col, dtype=torch.float64) for col in zip(*rows))


def tone_signal(n: int, seed: int = 0, dtype=torch.float64):
    """Analytic (1, n) signal: a slow chirp through 0.25 cycles/sample, a tone, and weak noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64)
    x = torch.cos(2 * math.pi * (0.24 * t + 0.5 * (0.02 / n) * t * t)) + 0.5 * torch.cos(2 * math.pi * 0.27 * t + 1.0)
    x = x + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    return analytic_signal(x)[None].to(torch.complex128 if dtype == torch.float64 else torch.complex64)


N, N_FFT, HOP, L = 256, 256, 16, 16.0
AREAS = (0.5, 0.8, 1.3, 2.0, 4.0)


@pytest.mark.parametrize("rho", [0.0, 0.5, -0.9])
@pytest.mark.parametrize("rtol", [1e-3, 1e-4])
def test_matches_untruncated_reference(rho, rtol):
    params = bank([(a, rho, L) for a in AREAS], offsets=(-1, 0, 1))
    z = tone_signal(N)
    plan = hermite.plan(*params, rtol=rtol)
    assert bool(plan.hermite.all()), plan.summary()  # every filter here takes the fast path
    got = lwvd_cuda.lwvd(z, *params, n_fft=N_FFT, hop_length=HOP, method="hermite", rtol=rtol)
    ref = reference.lwvd(z, *params, n_fft=N_FFT, hop_length=HOP, truncate=None)
    for i, area in enumerate(AREAS):  # one bank (shape) at a time: the bound is per shape
        sel = slice(3 * i, 3 * i + 3)
        err = rel_err(got[:, sel], ref[:, sel])
        assert err <= rtol, f"area {area}, rho {rho}: error {err:.2e} > rtol {rtol:g} ({plan.summary()})"


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_on_the_bound_is_one_exact_spectrogram(rho):
    """Area ratio 1: the kernel has rank 1 (r = 0), one (chirped Gaussian) window is exact."""
    params = bank([(1.0, rho, 6.0)], offsets=(-3, 0, 2))
    z = tone_signal(128)
    plan = hermite.plan(*params, rtol=1e-4)
    assert plan.terms.tolist() == [1, 1, 1]
    got = lwvd_cuda.lwvd(z, *params, n_fft=256, hop_length=8, method="hermite")
    ref = reference.lwvd(z, *params, n_fft=256, hop_length=8, truncate=None)
    assert rel_err(got, ref) <= 1e-8


def test_terms_follow_the_eigenvalue_decay():
    """lam_k = (1-r) r^k with r = (a-1)/(a+1): more terms away from the bound and for smaller rtol."""
    st = torch.tensor([5.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    area = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    sn = area / (4 * math.pi * st)
    rho = torch.zeros(4, dtype=torch.float64)
    p3, p6 = (hermite.plan(st, st, sn, rho, rtol=r) for r in (1e-3, 1e-6))
    torch.testing.assert_close(p3.r, (area - 1) / (area + 1))
    assert p3.terms[1] == 1 and bool((p6.terms >= p3.terms).all()) and p6.terms[3] > p3.terms[3] > p3.terms[2]


def test_far_below_the_bound_falls_back_to_the_exact_path():
    """A filter needing more than MAX_TERMS terms is computed exactly (truncate=None); the others not."""
    z = tone_signal(96)
    st_sub, sn_sub = shaped(0.05, 0.3, 4.0)
    st_ok, sn_ok = shaped(1.2, -0.2, 6.0)
    params = tuple(torch.tensor(v, dtype=torch.float64) for v in ([0.25, 0.26], [st_ok, st_sub], [sn_ok, sn_sub], [-0.2, 0.3]))
    plan = hermite.plan(*params, rtol=1e-4)
    assert plan.hermite.tolist() == [True, False]
    got = lwvd_cuda.lwvd(z, *params, n_fft=256, hop_length=8, method="hermite")
    exact = lwvd_cuda.lwvd(z, *params, n_fft=256, hop_length=8, truncate=None)
    torch.testing.assert_close(got[:, 1], exact[:, 1], rtol=0, atol=0)  # the same computation
    assert rel_err(got[:, 0], exact[:, 0]) <= 1e-4


def test_gradcheck_float64():
    z = tone_signal(48, seed=2).clone().requires_grad_(True)
    st, sn = zip(shaped(0.8, 0.3, 4.0), shaped(1.6, -0.2, 4.0))
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in ([0.2, 0.3], st, sn, [0.3, -0.2])]
    assert bool(hermite.plan(*params, rtol=1e-3).hermite.all())

    def op(z, *p):
        return lwvd_cuda.lwvd(z, *p, n_fft=64, hop_length=8, method="hermite", rtol=1e-3)

    assert torch.autograd.gradcheck(op, (z, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_float32_batch_dims_and_module():
    z = tone_signal(200, dtype=torch.float32).expand(2, 3, 200)
    params = tuple(p.float() for p in bank([(1.1, 0.1, 8.0)]))
    got = lwvd_cuda.lwvd(z, *params, n_fft=128, hop_length=20, method="hermite")
    assert got.shape == (2, 3, 5, 11) and got.dtype == torch.float32
    ref = reference.lwvd(z[0, :1].to(torch.complex128), *(p.double() for p in params), n_fft=128, hop_length=20, truncate=None)
    assert rel_err(got[0, :1], ref) <= 1e-4

    layer = lwvd_cuda.LWVD(16000, 8, n_fft=512, hop_length=160, method="hermite", rtol=1e-3)
    x = torch.randn(2, 1600)
    out = layer(x)
    c, st, sn, r = layer.op_parameters()
    expected = lwvd_cuda.lwvd(analytic_signal(x), c, st, sn, r, n_fft=512, hop_length=160, method="hermite", rtol=1e-3)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bad_method_and_rtol():
    z = tone_signal(32)
    params = bank([(1.0, 0.0, 3.0)], offsets=(0,))
    with pytest.raises(ValueError, match="method"):
        lwvd_cuda.lwvd(z, *params, n_fft=32, hop_length=4, method="fast")
    for bad in (0.0, 1.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="rtol"):
            lwvd_cuda.lwvd(z, *params, n_fft=32, hop_length=4, method="hermite", rtol=bad)
    with pytest.raises(TypeError, match="rtol"):
        lwvd_cuda.lwvd(z, *params, n_fft=32, hop_length=4, method="hermite", rtol="1e-4")
    with pytest.raises(ValueError, match="method"):
        lwvd_cuda.LWVD(16000, 4, method="Hermite")


def test_extreme_but_valid_inputs():
    """Empty batch, N = 1, hop > N, silent input (finite gradients), NaN confined to its batch item."""
    params = [torch.tensor([v]) for v in (0.2, 5.0, 0.02, 0.1)]
    for shape, hop in (((0, 100), 10), ((3, 1), 1), ((2, 7), 50)):
        out = lwvd_cuda.lwvd(torch.randn(*shape, dtype=torch.complex64), *params, n_fft=64, hop_length=hop, method="hermite")
        assert out.shape == (shape[0], 1, 1 + shape[1] // hop) and bool(torch.isfinite(out).all())
    z = torch.zeros(2, 100, dtype=torch.complex64, requires_grad=True)
    leaves = [p.clone().requires_grad_(True) for p in params]
    lwvd_cuda.lwvd(z, *leaves, n_fft=64, hop_length=10, method="hermite").sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in [z, *leaves])
    z = torch.randn(2, 100, dtype=torch.complex64)
    z[0, 50] = float("nan")
    out = lwvd_cuda.lwvd(z, *params, n_fft=64, hop_length=10, method="hermite")
    assert bool(torch.isnan(out[0]).any()) and bool(torch.isfinite(out[1]).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alias_form_dropped_only_where_bounded(monkeypatch, dtype):
    """The alias form is computed only at frames that reach past a signal end when z is analytic
    (its bound at interior frames is then below rtol/20 of each filter's output): the result equals
    the one with the alias form everywhere to rounding, and with a z that is not analytic nothing
    is dropped."""
    n, hop = 2000, 20
    params = tuple(p.to(dtype) for p in bank([(1.0, 0.0, 12.0), (1.3, 0.2, 10.0), (0.8, -0.2, 14.0)]))
    z = tone_signal(n, dtype=dtype)
    seen = []
    orig = hermite._alias_frames

    def spy(*args):
        rows = orig(*args)
        seen.append(rows)
        return rows

    monkeypatch.setattr(hermite, "_alias_frames", spy)
    got = hermite.lwvd_hermite(z, *params, hop_length=hop, rtol=1e-4)
    t_count = 1 + n // hop
    assert seen[-1] is not None and 0 < seen[-1].numel() < t_count // 2, seen[-1]
    monkeypatch.setattr(hermite, "_alias_frames", lambda *a: None)
    full = hermite.lwvd_hermite(z, *params, hop_length=hop, rtol=1e-4)
    assert rel_err(got, full) <= (1e-12 if dtype == torch.float64 else 1e-6), rel_err(got, full)
    # Not analytic: white complex noise has as much energy at negative frequencies.
    monkeypatch.setattr(hermite, "_alias_frames", spy)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(1, n, dtype=torch.float64, generator=g) + 1j * torch.randn(1, n, dtype=torch.float64, generator=g)
    hermite.lwvd_hermite(noise.to(z.dtype), *params, hop_length=hop, rtol=1e-4)
    assert seen[-1] is None


def test_gradcheck_float64_alias_forms_at_edge_frames(monkeypatch):
    """gradcheck where the alias forms are dropped at interior frames and computed at the edge
    frames as extra (moved) rows of the frame spectra (the path of analytic signals)."""
    z = tone_signal(160, seed=4).clone().requires_grad_(True)
    st, sn = zip(shaped(0.9, 0.2, 6.0), shaped(1.2, -0.1, 6.0))
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in ([0.22, 0.27], st, sn, [0.2, -0.1])]
    extra = []
    orig = hermite._FrameSpectra.apply
    monkeypatch.setattr(hermite._FrameSpectra, "apply", lambda *a: extra.append(len(a[-1])) or orig(*a))
    rows = []
    orig_rows = hermite._alias_frames
    monkeypatch.setattr(hermite, "_alias_frames", lambda *a: rows.append(orig_rows(*a)) or rows[-1])

    def op(z, *p):
        return lwvd_cuda.lwvd(z, *p, n_fft=64, hop_length=10, method="hermite", rtol=1e-3)

    op(z, *params)
    assert extra[-1] > 0 and rows[-1] is not None and 0 < rows[-1].numel() < 17, (extra, rows)
    assert torch.autograd.gradcheck(op, (z, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_inference_cache_reuses_only_equal_filters_and_never_under_grad(monkeypatch):
    """Without gradients the prepared windows are reused for equal filter values (compared by value:
    an in-place change or a new tensor with other values rebuilds them); a call that needs
    gradients neither reads nor fills the cache; cached and uncached results are identical."""
    z = tone_signal(400, dtype=torch.float32)
    params = [p.float() for p in bank([(1.1, 0.1, 8.0), (0.9, -0.2, 8.0)])]
    builds = []
    orig = hermite._prepare
    monkeypatch.setattr(hermite, "_prepare", lambda *a: builds.append(1) or orig(*a))
    monkeypatch.setattr(hermite, "_PREPARED", {})

    def run(*p):
        return lwvd_cuda.lwvd(z, *p, n_fft=128, hop_length=20, method="hermite", rtol=1e-4)

    with torch.no_grad():
        first = run(*params)
        again = run(*[p.clone() for p in params])  # equal values, other tensors: reused
    assert len(builds) == 1
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    monkeypatch.setattr(hermite, "INFERENCE_CACHE", False)
    with torch.no_grad():
        torch.testing.assert_close(run(*params), first, rtol=0, atol=0)
    assert len(builds) == 2
    monkeypatch.setattr(hermite, "INFERENCE_CACHE", True)
    with torch.no_grad():
        params[1].mul_(1.01)  # in place: other values, rebuilt
        moved = run(*params)
    assert len(builds) == 3 and not torch.equal(moved, first)
    leaves = [p.clone().requires_grad_(True) for p in params]
    out = run(*leaves)  # needs gradients: built afresh (a graph to the parameters), not cached
    assert len(builds) == 4 and out.grad_fn is not None
    torch.testing.assert_close(out.detach(), moved, rtol=0, atol=0)
    out.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()) for p in leaves)
    with torch.no_grad():
        run(*params)
    assert len(builds) == 4  # the no-grad entry is still the one cached before
