"""The reference against independent truths: a brute-force evaluation of SPEC §1 with plain loops,
scipy's analytic signal, the frequency marginal, and the spectrogram identity (Moyal's formula)."""

import cmath
import math

import pytest
import torch

from lwvd_cuda import reference
from lwvd_cuda.testing import (
    assert_rel_close,
    high_precision_param_grads,
    make_filters,
    make_signal,
    near_one_ridge,
    near_one_tolerance,
    rel_err,
    spectrogram_filters,
)


def brute_force_lwvd(z, center, sigma_t, sigma_nu, rho, n_fft, hop, truncate):
    """SPEC §1 term by term with Python floats: no FFT, no vectorisation, no shared code."""
    z = [complex(v) for v in z.tolist()]
    n_samples, m_size = len(z), n_fft
    zz = lambda i: z[i] if 0 <= i < n_samples else 0j  # noqa: E731
    w = [[0.0] * m_size for _ in range(n_samples)]
    for n in range(n_samples):
        for k in range(m_size):
            acc = 0j
            m = -m_size  # every integer m with |m| < M/2
            while m <= m_size:
                if abs(m) < m_size / 2:
                    acc += zz(n + m) * zz(n - m).conjugate() * cmath.exp(-2j * math.pi * k * m / m_size)
                m += 1
            w[n][k] = 2.0 * acc.real
    frames = 1 + n_samples // hop
    out = [[0.0] * frames for _ in range(len(center))]
    for f in range(len(center)):
        c, st, sn, r = float(center[f]), float(sigma_t[f]), float(sigma_nu[f]), float(rho[f])
        norm = (1.0 / (2 * m_size)) / (2 * math.pi * st * sn * math.sqrt(1 - r * r))
        for t in range(frames):
            acc = 0.0
            for n in range(n_samples):
                for k in range(m_size):
                    d, v = n - t * hop, k / (2 * m_size) - c
                    q = (d * d / (st * st) - 2 * r * d * v / (st * sn) + v * v / (sn * sn)) / (1 - r * r)
                    if truncate is None or q <= truncate * truncate:
                        acc += w[n][k] * math.exp(-q / 2)
            out[f][t] = norm * acc
    return torch.tensor(out, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)


BRUTE_CASES = [
    # (N, n_fft, hop, F, filter kind, truncate)
    (12, 8, 3, 2, "mixed", 4.0),
    (13, 8, 4, 2, "mixed", None),  # odd N, every term
    (9, 6, 2, 2, "untilted", 4.0),  # n_fft not a power of two
    (7, 16, 2, 2, "mixed", 2.5),  # N < n_fft
    (10, 8, 25, 2, "mixed", 4.0),  # hop > N: a single frame
    (11, 5, 3, 2, "narrow", 4.0),  # odd n_fft, below the Heisenberg box
    (8, 4, 1, 1, "wide", None),  # wide filters, hop 1
    (1, 4, 1, 1, "mixed", None),  # N = 1
]


@pytest.mark.parametrize("n,n_fft,hop,f,kind,truncate", BRUTE_CASES)
def test_reference_matches_brute_force(n, n_fft, hop, f, kind, truncate):
    z = make_signal((), n, seed=n + n_fft)
    params = make_filters(f, seed=hop, kind=kind, n_fft=n_fft)
    expected, w_expected = brute_force_lwvd(z, *params, n_fft, hop, truncate)
    assert_rel_close(reference.wigner_ville(z, n_fft), w_expected, 1e-12, "W")
    got = reference.lwvd(z, *params, n_fft=n_fft, hop_length=hop, truncate=truncate)
    assert got.shape == (f, 1 + n // hop)
    # Float64 rounding of O(N * M) terms: 1e-12 is ~1e4 ulps, far below any formula error.
    assert_rel_close(got, expected, 1e-12, f"K n={n} n_fft={n_fft} hop={hop} kind={kind} truncate={truncate}")


def test_truncation_changes_the_result():
    """The truncation rule is really applied (the brute force with a tiny truncate differs)."""
    z = make_signal((), 12, seed=1)
    params = make_filters(2, seed=2, n_fft=8)
    full = reference.lwvd(z, *params, n_fft=8, hop_length=3, truncate=None)
    cut = reference.lwvd(z, *params, n_fft=8, hop_length=3, truncate=1.0)
    assert rel_err(cut, full) > 1e-3
    expected, _ = brute_force_lwvd(z, *params, 8, 3, 1.0)
    assert_rel_close(cut, expected, 1e-12, "truncate=1")


@pytest.mark.parametrize("n", [1, 2, 7, 8, 33])
def test_analytic_signal_matches_scipy(n):
    signal = pytest.importorskip("scipy.signal")
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = torch.from_numpy(signal.hilbert(x.numpy(), axis=-1))
    assert_rel_close(reference.analytic_signal(x), expected, 1e-13, f"analytic signal N={n}")


@pytest.mark.parametrize("n_fft", [4, 7, 16, 64])
def test_frequency_marginal(n_fft):
    """sum_k W[n, k] / (2M) = |z[n]|^2: the factor 2 of the lag step makes the marginal exact."""
    z = make_signal((2,), 40, seed=3)
    w = reference.wigner_ville(z, n_fft)
    assert_rel_close(w.sum(-1) / (2 * n_fft), z.abs() ** 2, 1e-12, "frequency marginal")


def _gaussian_spectrogram(z, centers, s, hop):
    """|sum_j z[j] g[j - t*hop] exp(-2 i pi c j)|^2 with the unit-energy Gaussian window of std s."""
    n = z.shape[-1]
    j = torch.arange(n, dtype=torch.float64)
    t = torch.arange(1 + n // hop, dtype=torch.float64)
    g = (math.pi * s * s) ** -0.25 * torch.exp(-((j[None, :] - t[:, None] * hop) ** 2) / (2 * s * s))  # (T, N)
    phase = torch.exp(-2j * math.pi * centers[:, None].to(torch.float64) * j[None, :])  # (F, N)
    coeff = torch.einsum("tn,fn,...n->...ft", g.to(torch.complex128), phase, z)
    return coeff.abs() ** 2


@pytest.mark.parametrize("s,n_fft", [(5.0, 128), (8.0, 256)])
def test_spectrogram_identity(s, n_fft):
    """rho = 0, sigma_t = s/sqrt2, sigma_nu = 1/(2 sqrt2 pi s): the LWVD is the Gaussian spectrogram.

    Centres away from 0 and 1/2 (the WVD lives on [0, 1/2): a Gaussian cut there loses mass), frames
    away from the edges, n_fft/2 many times s (the lag window then covers the window's products).
    """
    hop = 8
    z = make_signal((2,), 320, seed=5, kind="noise")
    centers = torch.tensor([0.11, 0.2, 0.27, 0.35], dtype=torch.float64)
    params = spectrogram_filters(centers, s)
    got = reference.lwvd(z, *params, n_fft=n_fft, hop_length=hop, truncate=None)
    expected = _gaussian_spectrogram(z, centers, s, hop)
    edge = int(math.ceil(8 * s / hop))
    assert_rel_close(got[..., edge:-edge], expected[..., edge:-edge], 1e-6, "spectrogram identity")


def test_shapes_and_batch_dims():
    z = make_signal((2, 3), 50, seed=7)
    params = make_filters(4, n_fft=16)
    out = reference.lwvd(z, *params, n_fft=16, hop_length=7)
    assert out.shape == (2, 3, 4, 1 + 50 // 7)
    # Each batch item is computed independently.
    single = reference.lwvd(z[1, 2], *params, n_fft=16, hop_length=7)
    assert_rel_close(out[1, 2], single, 1e-14, "batch item")


def test_float32_agrees_with_float64():
    z = make_signal((2,), 300, seed=9)
    params = make_filters(5, n_fft=64)
    ref64 = reference.lwvd(z, *params, n_fft=64, hop_length=10)
    ref32 = reference.lwvd(z.to(torch.complex64), *(p.float() for p in params), n_fft=64, hop_length=10)
    assert ref32.dtype == torch.float32
    # float32: eps 6e-8 grown by the FFT and sums of ~1e3 terms; 1e-4 (TOLERANCES) with a wide margin.
    assert_rel_close(ref32, ref64, 1e-4, "float32 reference")


def test_gradcheck_reference():
    z = make_signal((), 10, seed=11).requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in make_filters(2, seed=12, n_fft=8)]
    fn = lambda z, c, st, sn, r: reference.lwvd(z, c, st, sn, r, n_fft=8, hop_length=3, truncate=None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_reference_memory_is_bounded_at_configuration_s():
    """Configuration S runs the reference forward in well under 2 GiB of peak memory.

    Measured in a subprocess with ru_maxrss (the process high-water mark), minus its baseline after
    imports. No B x N x n_fft x F tensor may exist (that alone would be 21 GB in float64).
    """
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import resource, torch, math
        from lwvd_cuda import reference
        from lwvd_cuda.testing import make_signal
        torch.set_num_threads(2)
        z = make_signal((4,), 16000, dtype=torch.float64, kind="noise")
        f = 80
        c = torch.linspace(0.01, 0.49, f, dtype=torch.float64)
        s = 0.025 * 16000 / 6
        st = torch.full((f,), s / math.sqrt(2), dtype=torch.float64)
        sn = torch.full((f,), 1 / (2 * math.sqrt(2) * math.pi * s), dtype=torch.float64)
        rho = torch.zeros(f, dtype=torch.float64)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = reference.lwvd(z, c, st, sn, rho, n_fft=512, hop_length=160)
        assert out.shape == (4, 80, 101) and torch.isfinite(out).all()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    peak_mib = float(res.stdout.strip().splitlines()[-1])
    assert peak_mib < 2048, f"reference at S used {peak_mib:.0f} MiB above baseline"


# --- rho near +-1 against a high-precision evaluation (issue 12 item 6) -------------------------

RHO_NEAR_ONE = [1 - 1e-8, 1 - 1e-12, math.nextafter(1.0, 0.0), -(1 - 1e-12), 0.5]


def mpmath_smooth(w, center, sigma_t, sigma_nu, rho, n_fft, hop):
    """SPEC §1's smoothing with every operation in 50-digit arithmetic, from the exact float64 inputs
    (truncate=None: every term). ``w`` float64 (N, M), one filter."""
    import mpmath

    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 50
    c, st, sn, r = (mp.mpf(float(x)) for x in (center, sigma_t, sigma_nu, rho))
    n_samples, m_size = w.shape
    one_m_r2 = (1 - r) * (1 + r)
    norm = (mp.mpf(1) / (2 * m_size)) / (2 * mp.pi * st * sn * mp.sqrt(one_m_r2))
    wl = w.tolist()
    out = []
    for t in range(1 + n_samples // hop):
        acc = mp.mpf(0)
        for n in range(n_samples):
            a = mp.mpf(n - t * hop) / st
            for k in range(m_size):
                b = (mp.mpf(k) / (2 * m_size) - c) / sn
                q = (a * a - 2 * r * a * b + b * b) / one_m_r2
                acc += wl[n][k] * mp.exp(-q / 2)
        out.append(float(norm * acc))
    return torch.tensor(out, dtype=torch.float64)


def rho_tolerance(rho):
    """What rounding the inputs of q allows: a = d / sigma_t and b carry relative errors ~eps, which
    the residual (b - rho a) / sqrt(1 - rho^2) turns into an error of q of about
    2 eps |a| sqrt(q) / sqrt(1 - rho^2). With |a|, sqrt(q) <= ~6 on the terms that matter and a
    factor 2 for the sums, 150 eps / sqrt(1 - rho^2) (and at least 1e-12). The unstable form
    (a^2 - 2 rho a b + b^2) / (1 - rho^2) is off by eps (a^2 + b^2) / (1 - rho^2), orders above it."""
    eps = 2.0**-52
    return max(1e-12, 150 * eps / math.sqrt((1 - abs(rho)) * (1 + abs(rho))))


@pytest.mark.parametrize("rho", RHO_NEAR_ONE, ids=lambda r: repr(r))
def test_rho_near_one_against_high_precision(rho):
    n, n_fft, hop = 10, 8, 3
    z = make_signal((), n, seed=31)
    w = reference.wigner_ville(z, n_fft)  # no rho in it: float64 rounding only
    # A ridge that runs through the plane: slope rho * sigma_nu / sigma_t = 1 bin per 2 samples.
    st = torch.tensor([2.0], dtype=torch.float64)
    sn = torch.tensor([1.0 / (2 * n_fft)], dtype=torch.float64)
    center = torch.tensor([4.0 / (2 * n_fft)], dtype=torch.float64)
    r = torch.tensor([rho], dtype=torch.float64)
    expected = mpmath_smooth(w, center[0], st[0], sn[0], r[0], n_fft, hop)
    assert expected.abs().max() > 0
    got = reference.smooth(w[None], center, st, sn, r, hop_length=hop, truncate=None)[0, 0]
    tol = rho_tolerance(rho)
    assert_rel_close(got, expected, tol, f"reference at rho = {rho!r}")
    import lwvd_cuda

    if lwvd_cuda.has_cpu_kernels():
        k = torch.ops.lwvd_cuda.lwvd_fwd(z[None].contiguous(), center, st, sn, r, n_fft, hop, math.inf)[0, 0]
        # + the WVD's own rounding in the kernels' FFT (1e-14 relative, TOLERANCES' reasoning)
        assert_rel_close(k, expected, tol + 1e-13, f"CPU kernels at rho = {rho!r}")


# Parameter gradients near |rho| = 1 (issue 12 item 6): the reference's autograd (through its stable
# value form) and the CPU kernels' moment formulas (lwvd_math.cuh, param_grads_from_moments) against
# 50-digit mpmath. Before the kernels' moments moved to the (a, c) basis, their rho gradient was off
# by 2e-8 at 1 - 1e-8 and 6e-4 at -(1 - 1e-12) here; the others by 5e-10 (1e-8).
RHO_GRAD_NEAR_ONE = [0.99, -0.99, 1 - 1e-4, -(1 - 1e-4), 1 - 1e-8, -(1 - 1e-8), 1 - 1e-12, -(1 - 1e-12),
                     math.nextafter(1.0, 0.0)]


@pytest.mark.parametrize("rho", RHO_GRAD_NEAR_ONE, ids=lambda r: repr(r))
def test_parameter_gradients_near_rho_one_against_high_precision(rho):
    n, n_fft, hop = 10, 8, 3
    z = make_signal((), n, seed=31)
    w = reference.wigner_ville(z, n_fft)
    params = near_one_ridge(rho, n_fft)
    g = torch.randn(reference.num_frames(n, hop), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = torch.tensor(high_precision_param_grads(w, g, *params, hop), dtype=torch.float64)
    assert (expected != 0).all()
    tol = near_one_tolerance(rho)
    leaves = [p.clone().requires_grad_() for p in params]
    k = reference.smooth(w[None], *leaves, hop_length=hop, truncate=None)[0, 0]
    assert k.abs().max() > 0
    got = torch.stack(torch.autograd.grad((k * g).sum(), leaves)).flatten()
    for i, name in enumerate(("center", "sigma_t", "sigma_nu", "rho")):
        assert_rel_close(got[i : i + 1], expected[i : i + 1], tol, f"reference grad {name} at rho = {rho!r}")
    import lwvd_cuda

    if lwvd_cuda.has_cpu_kernels():
        out = torch.ops.lwvd_cuda.lwvd_bwd(g[None, None].contiguous(), z[None].contiguous(), *params, n_fft, hop,
                                           math.inf)
        got = torch.stack(out[1:]).flatten()
        for i, name in enumerate(("center", "sigma_t", "sigma_nu", "rho")):
            # + the WVD's own rounding in the kernels' FFT (1e-14 relative, as for the values above)
            assert_rel_close(got[i : i + 1], expected[i : i + 1], tol + 1e-13,
                             f"CPU kernels grad {name} at rho = {rho!r}")
