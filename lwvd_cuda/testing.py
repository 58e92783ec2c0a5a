"""Input factories, tolerances and comparison helpers shared by the tests and the benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .reference import analytic_signal

__all__ = ["TOLERANCES", "rel_err", "assert_rel_close", "make_signal", "make_filters", "spectrogram_filters", "Case"]

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
        actual, expected = torch.view_as_real(actual.to(torch.complex128)), torch.view_as_real(expected.to(torch.complex128))
    else:
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
