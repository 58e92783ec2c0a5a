"""Hermite fast path: the untruncated LWVD as a weighted sum of a few spectrograms per filter.

``lwvd_cuda.lwvd(..., method="hermite", rtol=1e-4)`` calls :func:`lwvd_hermite`. Derivation and
error bound: ``docs/hermite.md``. In short, with ``d = (u+w)/2``, ``m = (u-w)/2`` and the frame
``y_t[u] = z[t*hop + u] exp(-2 i pi c u) exp(-i pi beta u^2)``, ``beta = rho sigma_nu / sigma_t``,
summing the Gaussian over every frequency (no band edges) and every lag (no lag window) gives

    K[t] ~= sum_{u, w} y_t[u] conj(y_t[w]) A(u, w),
    A(u, w) = exp(-(u+w)^2 / (8 sigma_t^2) - 2 pi^2 s^2 (u-w)^2) / (sqrt(2 pi) sigma_t),  s = sigma_nu sqrt(1-rho^2)

and Mehler's formula, a pointwise identity (so it holds on the integer lattice exactly), splits ``A``:

    A(u, w) = sum_k lam_k psi_k(u) psi_k(w),   psi_k(u) = h_k(u / L) / sqrt(L),   lam_k = (1 - r) r^k
    r = (a - 1) / (a + 1),  a = 4 pi sigma_t s (the area ratio),  L^2 = sigma_t / (2 pi s)

(``h_k`` the orthonormal Hermite functions). So ``K[t] = sum_k lam_k |<y_t, psi_k>|^2``: a spectrogram
per term with a chirped Hermite window, needed only at the hop frames. ``sum_k lam_k = 1``; terms are
kept until the tail ``sum_{k >= K} |lam_k| = |1-r| |r|^K / (1-|r|)`` is below ``rtol / 2``.

Each inner product is taken in the frequency domain (Parseval on a length-``P`` frame): the chirped
Hermite windows' spectra are themselves chirped Hermite functions of scale
``Lam^2 = sigma_nu / (2 pi sigma_t sqrt(1-rho^2))``, so only ``~ 2 Lam (sqrt(2K-1) + X) P`` bins around
the centre matter, where ``X`` is a Gaussian-tail margin set by ``rtol``. Everything is torch ops:
differentiable in ``z`` and the four parameters by autograd; the integer choices (terms, frame
length, bins) are made on detached values.

Filters that would need more than ``max_terms`` terms (far below the Heisenberg bound), or whose
windows are too short in time to be sampled (their spectra would alias) or too long to frame, are
computed by the exact kernels with ``truncate=None`` (the ``exact`` callable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["MAX_TERMS", "MAX_HALF_WINDOW", "HermitePlan", "plan", "lwvd_hermite"]

# Beyond this many terms a filter goes to the exact kernels: area ratio ~0.1 (r = -0.82) or ~20
# (r = 0.9) at rtol 1e-4. Each term is one more spectrogram; at 32 the exact path is no slower.
MAX_TERMS = 32
# Half-length (samples) of the longest Hermite window framed; longer filters go to the exact path.
MAX_HALF_WINDOW = 1 << 15


def _tail_margin(rtol: float) -> float:
    """Gaussian-tail margin ``X`` (in Hermite scale units, beyond the last turning point).

    The window is cut at ``L (sqrt(2K-1) + X)`` in time and ``Lam (sqrt(2K-1) + X)`` in frequency;
    the energy cut off is ~``erfc(X) <= (rtol/20)^2``, so each inner product moves by a relative
    ``rtol/20`` at most and ``|c|^2`` by ``rtol/10``.
    """
    return math.sqrt(2.0 * math.log(20.0 / rtol))


def terms_needed(r: torch.Tensor, area: torch.Tensor, rtol: float) -> torch.Tensor:
    """Smallest ``K >= 1`` with ``sqrt(a) |1-r| |r|^K / (1-|r|) <= rtol/2`` (int64, shape of ``r``).

    ``|1-r| |r|^K / (1-|r|)`` is the eigenvalue tail ``sum_{k>=K} |lam_k|``; ``sqrt(a)`` bounds each
    dropped term's ``|<y, psi_k>|^2`` by the filter's peak response (docs/hermite.md, "Error bound").
    """
    ar = r.abs().clamp(min=1e-300)
    need = torch.log(rtol / 2.0 * (1.0 - ar) / ((1.0 - r).abs() * torch.sqrt(area))) / torch.log(ar)
    k = torch.ceil(need.clamp(min=1.0, max=1e6))
    return torch.where(ar < 1e-15, torch.ones_like(k), k).to(torch.int64)


def _fast_len(n: int) -> int:
    """Smallest 5-smooth integer >= n (a fast FFT length)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


@dataclass
class HermitePlan:
    """Per-filter decomposition (float64, detached): what :func:`lwvd_hermite` will do."""

    area: torch.Tensor  # 4 pi sigma_t sigma_nu sqrt(1 - rho^2)
    r: torch.Tensor  # eigenvalue ratio (a-1)/(a+1): lam_k = (1-r) r^k
    scale_t: torch.Tensor  # L (samples)
    scale_nu: torch.Tensor  # Lam (cycles/sample)
    terms: torch.Tensor  # K per filter (int64)
    hermite: torch.Tensor  # bool: True = Hermite path, False = exact kernels
    margin: float  # X

    def summary(self) -> str:
        n = int(self.hermite.sum())
        k = self.terms[self.hermite]
        ks = f", terms {int(k.min())}-{int(k.max())} (mean {float(k.double().mean()):.1f})" if n else ""
        return f"{n}/{self.hermite.numel()} filters on the Hermite path{ks}; {self.hermite.numel() - n} exact"


def plan(center, sigma_t, sigma_nu, rho, *, rtol: float, max_terms: int = MAX_TERMS) -> HermitePlan:
    """Decide, per filter, the number of Hermite terms for ``rtol`` and whether it falls back."""
    st, sn, r_ = (p.detach().to(torch.float64) for p in (sigma_t, sigma_nu, rho))
    cos = torch.sqrt(1.0 - r_ * r_)
    s = sn * cos
    area = 4.0 * math.pi * st * s
    r = (area - 1.0) / (area + 1.0)
    scale_t = torch.sqrt(st / (2.0 * math.pi * s))
    scale_nu = torch.sqrt(sn / (2.0 * math.pi * st * cos))
    terms = terms_needed(r, area, rtol)
    x = _tail_margin(rtol)
    reach = torch.sqrt(2.0 * terms.to(torch.float64) - 1.0) + x
    hermite = (
        (terms <= max_terms)
        & (2.0 * scale_nu * reach <= 1.0)  # the windows' spectra fit in one period: sampling is exact
        & (scale_t * reach <= MAX_HALF_WINDOW)
    )
    return HermitePlan(area, r, scale_t, scale_nu, terms, hermite, x)


def _hermite_functions(x: torch.Tensor, n_terms: int) -> torch.Tensor:
    """Orthonormal Hermite functions ``h_0 .. h_{n_terms-1}`` at ``x`` (..., P) -> (..., n_terms, P).

    The three-term recurrence ``h_{k+1} = sqrt(2/(k+1)) x h_k - sqrt(k/(k+1)) h_{k-1}`` is stable;
    it runs in float64 so that ``h_0`` does not underflow where higher terms still matter.
    """
    h = [math.pi**-0.25 * torch.exp(-0.5 * x * x)]
    if n_terms > 1:
        h.append(math.sqrt(2.0) * x * h[0])
    for k in range(1, n_terms - 1):
        h.append(math.sqrt(2.0 / (k + 1)) * x * h[k] - math.sqrt(k / (k + 1)) * h[k - 1])
    return torch.stack(h, dim=-2)


class _BandedProduct(torch.autograd.Function):
    """``out[e] = spec[f_e, :, a_e : a_e + w_e] @ y[b_e : b_e + w_e]`` for each entry ``e``.

    ``spec`` (F, K, P') complex window spectra, ``y`` (P', C) complex frame spectra (rows = bins),
    both already extended past ``P`` so that no band wraps. Each band is a view: nothing of size
    bands x frames is gathered, and the backward accumulates in place into one buffer per input
    (autograd of ``F`` slices would allocate a full-size gradient per slice). Output (E, K, C),
    zero past each entry's own ``k_e`` rows. First-order only.
    """

    @staticmethod
    def forward(ctx, spec, y, entries):
        ctx.entries = entries
        ctx.save_for_backward(spec, y)
        out = y.new_zeros(len(entries), spec.shape[1], y.shape[1])
        for e, (f, a, b, w, k) in enumerate(entries):
            torch.matmul(spec[f, :k, a : a + w], y[b : b + w], out=out[e, :k])
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        spec, y = ctx.saved_tensors
        grad_spec = torch.zeros_like(spec) if ctx.needs_input_grad[0] else None
        grad_y = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        for e, (f, a, b, w, k) in enumerate(ctx.entries):
            g = grad[e, :k]
            if grad_spec is not None:  # d/d spec of <grad, spec @ y> (PyTorch's conjugate convention)
                grad_spec[f, :k, a : a + w] += g @ y[b : b + w].conj().transpose(0, 1)
            if grad_y is not None:
                grad_y[b : b + w] += spec[f, :k, a : a + w].conj().transpose(0, 1) @ g
        return grad_spec, grad_y, None


def _hermite_part(z, center, sigma_t, sigma_nu, rho, terms, scale_nu_d, margin, hop_length):
    """``(B, F, T)`` by the Hermite sum for filters that all take this path (``terms``: (F,) int64)."""
    bsz, n = z.shape
    t_count = 1 + n // hop_length
    f_count = center.shape[0]
    c, st, sn, rh = (p.to(torch.float64) for p in (center, sigma_t, sigma_nu, rho))
    cos = torch.sqrt(1.0 - rh * rh)
    s = sn * cos
    area = 4.0 * math.pi * st * s
    r = (area - 1.0) / (area + 1.0)
    scale_t = torch.sqrt(st / (2.0 * math.pi * s))  # L
    beta = rh * sn / st  # chirp rate of the windows (cycles/sample^2)

    k_max = int(terms.max())
    reach = torch.sqrt(2.0 * terms.to(torch.float64) - 1.0) + margin  # last turning point + margin
    half = int(math.ceil(float((scale_t.detach() * reach).max()))) + 1  # R: window u in [-R, R]
    p_len = 2 * _fast_len(half + 1)  # >= 2R + 1, even (see the alias term)

    # Windows w_fk(u) = psi_k(u) exp(-2 i pi c u - i pi beta u^2), u = i - R on the frame's P samples.
    u = torch.arange(p_len, dtype=torch.float64, device=z.device) - half
    psi = _hermite_functions(u[None, :] / scale_t[:, None], k_max) / torch.sqrt(scale_t)[:, None, None]
    angle = -(2.0 * math.pi * c[:, None] * u[None, :] + math.pi * beta[:, None] * u[None, :] ** 2)
    phase = torch.complex(torch.cos(angle), torch.sin(angle))
    # sum_i y[i] w[i] = sum_xi fft(y)[xi] * ifft(w)[xi]  (Parseval on the length-P frame)
    spec = torch.fft.ifft(psi * phase[:, None, :], dim=-1)  # (F, K, P)

    # Eigenvalues lam_k = (1 - r) r^k, zero past each filter's own K.
    powers = torch.cumprod(torch.cat([torch.ones_like(r)[:, None], r[:, None].expand(f_count, k_max - 1)], 1), 1)
    keep = torch.arange(k_max, device=z.device)[None, :] < terms[:, None]
    lam = torch.where(keep, (1.0 - r)[:, None] * powers, torch.zeros_like(powers))

    zc = z.dtype
    real = z.real.dtype
    padded = torch.cat([z.new_zeros(bsz, half), z, z.new_zeros(bsz, p_len)], dim=-1)
    frames = padded.unfold(-1, p_len, hop_length)[:, :t_count]  # (B, T, P): z[t*hop - R + i]
    # Frame spectra with the bin as the leading axis, so that a band is a block of rows: (P, B*T).
    y = torch.fft.fft(frames, dim=-1).reshape(bsz * t_count, p_len).transpose(0, 1)
    # The lag step 2 pairs only samples of equal parity: 1[u = w mod 2] = (1 + (-1)^u (-1)^w) / 2, so
    # K = Q(y) + Q((-1)^u y). The second ("alias") form is the first at centre c + 1/2: the same window
    # spectra against the frame spectrum shifted by P/2 bins (P is even). It is ~0 except within a
    # window of the signal's ends, where the jump from 0 is broadband.
    shift = p_len // 2
    # Each filter's band: the bins where its windows' spectra live, around its centre bin.
    widths = torch.clamp(2 * torch.ceil(scale_nu_d * reach * p_len).to(torch.int64) + 3, max=p_len)
    starts = torch.remainder(torch.round(c.detach() * p_len).to(torch.int64) - widths // 2, p_len)
    w_max = int(widths.max())
    entries = []
    for f, (a0, w, k) in enumerate(zip(starts.tolist(), widths.tolist(), terms.tolist())):
        entries.append((f, a0, a0, w, k))  # Q(y)
        entries.append((f, a0, (a0 - shift) % p_len, w, k))  # Q((-1)^u y): rows xi - P/2
    wrap = lambda t, dim: torch.cat([t, t.narrow(dim, 0, w_max)], dim=dim)  # noqa: E731  (bands never wrap)
    coef = _BandedProduct.apply(wrap(spec.to(zc), -1), wrap(y, 0), entries)  # (2F, K, B*T)
    power = (coef.real * coef.real + coef.imag * coef.imag).reshape(f_count, 2, k_max, -1).sum(1)
    out = torch.matmul(lam.to(real)[:, None, :], power).reshape(f_count, bsz, t_count)  # (F, B, T)
    return out.transpose(0, 1)


def lwvd_hermite(
    z: torch.Tensor,
    center: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_nu: torch.Tensor,
    rho: torch.Tensor,
    *,
    hop_length: int,
    rtol: float,
    exact: Optional[Callable[..., torch.Tensor]] = None,
    max_terms: int = MAX_TERMS,
) -> torch.Tensor:
    """Untruncated LWVD of ``z`` ``(B, N)`` (validated, complex) by the Hermite sum; ``(B, F, T)``.

    ``exact(z, center, sigma_t, sigma_nu, rho)`` computes the filters the plan sends to the exact
    path (``lwvd_cuda.lwvd`` passes its kernels with ``truncate=None``); it is only called when some
    filter needs it, and its absence then raises.
    """
    p = plan(center, sigma_t, sigma_nu, rho, rtol=rtol, max_terms=max_terms)
    params = (center, sigma_t, sigma_nu, rho)
    on = torch.nonzero(p.hermite).flatten().to(center.device)
    off = torch.nonzero(~p.hermite).flatten().to(center.device)
    parts = []
    if on.numel():
        sub = [q.index_select(0, on) for q in params]
        parts.append(
            _hermite_part(z, *sub, p.terms[p.hermite].to(z.device), p.scale_nu[p.hermite].to(z.device),
                          p.margin, hop_length)
        )
    if off.numel():
        if exact is None:
            raise ValueError(
                f"lwvd_hermite: {off.numel()} filter(s) need the exact path ({p.summary()}) but no exact callable was given"
            )
        parts.append(exact(z, *[q.index_select(0, off) for q in params]))
    if not off.numel():
        return parts[0]
    if not on.numel():
        return parts[0]
    order = torch.cat([on, off])
    return torch.cat(parts, dim=1).index_select(1, torch.argsort(order))
