"""Input factories, tolerances and comparison helpers shared by the tests and the benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .reference import analytic_signal

__all__ = ["TOLERANCES", "rel_err", "assert_rel_close", "make_signal", "make_filters", "spectrogram_filters", "Case",
           "near_one_ridge", "high_precision_param_grads", "near_one_tolerance",
           "overflowing_slope_params", "check_overflowing_slope"]

# Relative error (max |a - b| / max |b|) allowed against the float64 reference, per compute dtype.
# float64: rounding of O(N M) sums and an FFT of length M is ~1e-14; 1e-10 leaves room for
# different summation orders. float32: eps = 6e-8; the FFT (log2 M stages), the lag products and sums
# of ~1e4 weighted terms grow that by 1e2-1e3, so 1e-4 bounds it with margin and still catches any
# wrong term (a single missing ellipse row is ~1e-2).
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual, expected = actual.detach(), expected.detach()
    # Complex first: .to(float64) of a complex tensor would silently drop the imaginary part.
    if actual.is_complex() or expected.is_complex():
        actual = torch.view_as_real(actual.to(torch.complex128))
        expected = torch.view_as_real(expected.to(torch.complex128))
    actual, expected = actual.to(torch.float64), expected.to(torch.float64)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Assert ``rel_err <= tol``; the message gives the error, the tolerance and the worst index."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    if not (err <= tol):
        a = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64)
        e = expected.detach().to(a.dtype)
        idx = torch.unravel_index(torch.argmax((a - e).abs()), a.shape)
        idx = tuple(int(i) for i in idx)
        raise AssertionError(
            f"{what}: relative error {err:.3e} > {tol:.1e} (worst at {idx}: got {a[idx].item()}, expected {e[idx].item()})"
        )


def make_signal(batch_shape, n: int, *, dtype=torch.float64, seed: int = 0, kind: str = "chirp", device="cpu"):
    """A complex analytic test signal ``(*batch_shape, n)``: a noisy chirp (default) or white noise."""
    g = torch.Generator().manual_seed(seed)
    batch_shape = tuple(batch_shape)
    real = torch.float64
    noise = torch.randn(*batch_shape, n, generator=g, dtype=real)
    if kind == "noise":
        x = noise
    elif kind == "chirp":
        t = torch.arange(n, dtype=real)
        f0 = 0.02 + 0.3 * torch.rand(*batch_shape, 1, generator=g, dtype=real)
        rate = (0.2 / max(n, 1)) * (torch.rand(*batch_shape, 1, generator=g, dtype=real) - 0.5)
        x = torch.cos(2 * math.pi * (f0 * t + 0.5 * rate * t * t)) + 0.1 * noise
    else:
        raise ValueError(f"kind must be 'chirp' or 'noise', got {kind!r}")
    z = analytic_signal(x)
    cdt = torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64
    return z.to(cdt).to(device)


def make_filters(f: int, *, dtype=torch.float64, seed: int = 0, kind: str = "mixed", n_fft: int = 64, device="cpu"):
    """(center, sigma_t, sigma_nu, rho), each ``(f,)``, in cycles/sample and samples.

    kind: "mixed" (random centres, widths around a few samples/bins, tilts in [-0.8, 0.8]),
    "untilted" (rho = 0), "narrow" (below the Heisenberg box), "wide" (many samples and bins).
    """
    g = torch.Generator().manual_seed(seed)
    u = lambda: torch.rand(f, generator=g, dtype=torch.float64)  # noqa: E731
    center = 0.5 * u()
    bin_width = 1.0 / (2 * n_fft)
    if kind in ("mixed", "untilted"):
        sigma_t = 0.7 + 4.0 * u()
        sigma_nu = bin_width * (0.7 + 4.0 * u())
        rho = 1.6 * u() - 0.8 if kind == "mixed" else torch.zeros(f, dtype=torch.float64)
    elif kind == "narrow":
        sigma_t = 0.3 + 0.4 * u()
        sigma_nu = bin_width * (0.3 + 0.4 * u())
        rho = 1.8 * u() - 0.9
    elif kind == "wide":
        sigma_t = 10.0 + 30.0 * u()
        sigma_nu = bin_width * (5.0 + 20.0 * u())
        rho = 1.2 * u() - 0.6
    else:
        raise ValueError(f"unknown filter kind {kind!r}")
    return tuple(p.to(dtype=dtype, device=device) for p in (center, sigma_t, sigma_nu, rho))


def spectrogram_filters(centers, s: float, *, dtype=torch.float64):
    """Filters for which the LWVD equals |STFT|^2 with a unit-energy Gaussian window of std ``s`` samples."""
    c = torch.as_tensor(centers, dtype=dtype)
    f = c.shape[0]
    return (
        c,
        torch.full((f,), s / math.sqrt(2.0), dtype=dtype),
        torch.full((f,), 1.0 / (2.0 * math.sqrt(2.0) * math.pi * s), dtype=dtype),
        torch.zeros(f, dtype=dtype),
    )


@dataclass(frozen=True)
class Case:
    """One test/benchmark configuration."""

    batch: tuple
    n: int
    n_fft: int
    hop: int
    f: int
    kind: str = "mixed"
    truncate: float | None = 4.0
    seed: int = 0

    def inputs(self, dtype=torch.float64, device="cpu"):
        z = make_signal(self.batch, self.n, dtype=dtype, seed=self.seed, device=device)
        params = make_filters(self.f, dtype=dtype, seed=self.seed + 1, kind=self.kind, n_fft=self.n_fft, device=device)
        return z, params


# --- rho near +-1 (issue 12 item 6): a geometry and a 50-digit truth for the parameter gradients ----
def near_one_ridge(rho: float, n_fft: int = 8, offset: float = 0.7):
    """One filter ``(center, sigma_t, sigma_nu, rho)`` (float64, shape (1,)) whose ellipse is a ridge of
    slope ``rho sigma_nu / sigma_t`` = 1 bin per 2 samples (sigma_t = 2, sigma_nu = 1 bin), shifted
    ``offset`` conditional standard deviations (``sqrt(1 - rho^2)`` bins) beside the bins it would
    pass through exactly. As ``|rho| -> 1`` the ridge gets thinner than a bin: only bins within a few
    conditional deviations of it count, so the offset keeps their residual ``c = b - rho a`` at
    ``~sqrt(1 - rho^2)``. With ``offset = 0``, ``c`` of those bins is ``O(1 - rho^2)`` and the exact
    gradients change by ``eps / (1 - rho^2)`` relative when ``sigma_t`` moves by one ulp (ill-conditioned:
    no float64 evaluation can do better there)."""
    s = (1 - abs(rho)) * (1 + abs(rho))
    f64 = torch.float64
    center = torch.tensor([(4.0 - offset * math.sqrt(s)) / (2 * n_fft)], dtype=f64)
    sigma_t, sigma_nu = torch.tensor([2.0], dtype=f64), torch.tensor([1.0 / (2 * n_fft)], dtype=f64)
    return center, sigma_t, sigma_nu, torch.tensor([rho], dtype=f64)


def high_precision_param_grads(w, grad_out, center, sigma_t, sigma_nu, rho, hop: int, dps: int = 50):
    """``sum_t grad_out[t] dK[t]/dtheta`` for theta = (center, sigma_t, sigma_nu, rho) of one filter on a
    float64 WVD ``w`` ``(N, M)``, every term of SPEC §1's sum (truncate=None) in ``dps``-digit arithmetic
    from the exact float64 inputs, differentiated numerically by ``mpmath.diff`` at that precision
    (independent of any gradient formula of the package). Returns four floats."""
    import mpmath

    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    old = mp.dps
    mp.dps = dps
    try:
        wl, gl = w.tolist(), [mp.mpf(float(g)) for g in grad_out.tolist()]
        n_samples, m_size = w.shape

        def loss(c, st, sn, r):
            one_m_r2 = (1 - r) * (1 + r)
            norm = (mp.mpf(1) / (2 * m_size)) / (2 * mp.pi * st * sn * mp.sqrt(one_m_r2))
            total = mp.mpf(0)
            for t, g in enumerate(gl):
                acc = mp.mpf(0)
                for n in range(n_samples):
                    a = mp.mpf(n - t * hop) / st
                    for k in range(m_size):
                        res = (mp.mpf(k) / (2 * m_size) - c) / sn - r * a
                        acc += wl[n][k] * mp.exp(-(a * a + res * res / one_m_r2) / 2)
                total += g * norm * acc
            return total

        x = [mp.mpf(float(v)) for v in (center, sigma_t, sigma_nu, rho)]
        out = []
        for i in range(4):
            def along(v, i=i):
                y = list(x)
                y[i] = v
                return loss(*y)

            out.append(float(mp.diff(along, x[i])))
        return out
    finally:
        mp.dps = old


def near_one_tolerance(rho: float) -> float:
    """What float64 rounding allows near ``|rho| = 1`` on ``near_one_ridge``: a and b carry relative
    errors ~eps, so the residual c = b - rho a (of size ~sqrt(1 - rho^2) on the terms that count) is
    known to ~eps / sqrt(1 - rho^2) relative, and so are the weights and each gradient term; with
    |a|, |b|, q <= ~6 there and sums of many terms, 150 eps / sqrt(1 - rho^2) (at least 1e-12). Moment
    formulas that cancel to O(1 - rho^2) and divide by it are off by eps / (1 - rho^2), orders above."""
    eps = 2.0**-52
    return max(1e-12, 150 * eps / math.sqrt((1 - abs(rho)) * (1 + abs(rho))))


# --- absurd but valid geometry (issue 12 item 9) ---------------------------------------------------
# Slopes rho sigma_nu / sigma_t that overflow: filter 0 has values ~1e289, filter 1 is ordinary, and
# filter 2 (sigma_t = 1e-300, sigma_nu = 1e300) only has its row d = 0, where b ~ 1e-300 and E = 1 on
# every bin, so K = norm sum_k W[t hop, k] with norm ~ 1 / (sigma_t sigma_nu sqrt(1 - rho^2)):
# dK/dsigma_t = -K / sigma_t, dK/dsigma_nu = -K / sigma_nu, dK/drho = rho K / (1 - rho^2), dK/dc = 0.
def overflowing_slope_params():
    """(center, sigma_t, sigma_nu, rho) lists of the three filters described above."""
    return ([0.2, 0.1, 0.3], [1e-300, 3.0, 1e-300], [1e10, 0.01, 1e300], [0.5, -0.9, 0.7])


def check_overflowing_slope(k, gz, gp, k_ref, gz_ref, gp_ref, grad_out, params, tol):
    """Kernel results ``k (B, F, T)``, ``gz``, ``gp`` (four (F,) gradients) against the reference's
    ``k_ref``, ``gz_ref``, ``gp_ref`` for upstream ``grad_out`` on ``overflowing_slope_params``."""
    for f in range(k.shape[1]):  # per filter: filter 0's values are ~1e289, the others' ~1
        assert k_ref[:, f].abs().max() > 0
        assert_rel_close(k[:, f], k_ref[:, f], tol, f"forward filter {f}")
    assert_rel_close(torch.view_as_real(gz), torch.view_as_real(gz_ref), tol, "grad z")
    # Filter 0's sigma_t, sigma_nu and rho gradients overflow (-K / sigma_t ~ 1e589): the reference
    # gives NaN or -inf there; not compared. Filter 2's sigma_t and rho gradients are finite, but the
    # reference's autograd gives NaN (0 * inf): they are checked against the closed forms above.
    assert_rel_close(gp[0][:1], gp_ref[0][:1], tol, "grad center, filter 0")
    for name, a, e in zip(("center", "sigma_t", "sigma_nu", "rho"), gp, gp_ref):
        assert_rel_close(a[1:2], e[1:2], tol, f"grad {name}, filter 1")
    gk = (grad_out[:, 2] * k_ref[:, 2]).sum()
    st, sn, r = params[1][2].item(), params[2][2].item(), params[3][2].item()
    assert gp[0][2].item() == 0.0
    for name, a, e in [("sigma_t", gp[1][2], -gk / st), ("sigma_nu", gp[2][2], -gk / sn),
                       ("rho", gp[3][2], gk * r / ((1 - r) * (1 + r)))]:
        assert_rel_close(a.reshape(1), e.reshape(1), tol, f"grad {name}, filter 2 (closed form)")
