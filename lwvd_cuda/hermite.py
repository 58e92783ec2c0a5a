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
per term with a chirped Hermite window, needed only at the hop frames, plus the same at ``c + 1/2``
(the lag step 2 pairs only samples of equal parity; that "alias" form lives near the signal's ends).
``sum_k lam_k = 1``; terms are kept until ``sqrt(a)`` times the tail ``sum_{k >= K} |lam_k|`` is
below ``rtol / 2``.

Each inner product is taken in the frequency domain (Parseval on a length-``P`` frame): the chirped
Hermite windows' spectra are themselves chirped Hermite functions of scale
``Lam^2 = sigma_nu / (2 pi sigma_t sqrt(1-rho^2))``, so only ``~ 2 Lam (sqrt(2K-1) + X) P`` bins around
the centre matter (``X`` a Gaussian-tail margin set by ``rtol``), and those come from the window
sampled every ``D``-th sample. Everything is torch ops plus one autograd Function (banded real GEMMs
on views): differentiable in ``z`` and the four parameters; the integer choices (terms, frame
length, bands) are made on detached values.

Filters that would need more than ``max_terms`` terms (far below the Heisenberg bound or far above
it), or whose windows are too short in time to be sampled (their spectra would alias) or too long
to frame, are computed by the exact path with ``truncate=None`` (the ``exact`` callable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["MAX_TERMS", "MAX_HALF_WINDOW", "HermitePlan", "plan", "lwvd_hermite"]

# Beyond this many terms a filter goes to the exact path: area ratio below 0.17 or above 6.0 at
# rtol 1e-4 (docs/hermite.md). Each term is one more spectrogram.
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
    alias: torch.Tensor  # bool: the odd-parity ("alias") form is added (False near 0 and 1/2)
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
    # The alias form is the operator's periodic image at c + 1/2. The reference sums the Gaussian over
    # [0, 1/2) only, so for a filter whose Gaussian reaches 0 or 1/2 that image (the other band
    # edge) is not in it: leave it out there (docs/hermite.md, "Band edges").
    c = center.detach().to(torch.float64)
    edge = torch.minimum(c, 0.5 - c) / sn
    alias = edge >= math.sqrt(2.0 * math.log(1.0 / rtol))
    return HermitePlan(area, r, scale_t, scale_nu, terms, hermite, alias, x)


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
    """``out[e] = sum over pieces (a, b, w) of mat[f_e, :2 k_e, a : a + w] @ y[b : b + w]``.

    The complex band products ``spec[f, :k, band] @ y[band]`` as real GEMMs (faster than complex
    ones here): ``y`` (P, 2C) is ``view_as_real`` of the (P, C) complex frame spectra (rows = bins,
    columns = frames, re/im interleaved), ``mat`` (F, 2K, W) the window spectra with rows ``2t, 2t+1``
    the real and imaginary parts of term ``t`` (:func:`_split_parts` combines the four real
    products). A band that wraps past bin ``P`` is two pieces. Each piece is a view: nothing of size
    bands x frames is gathered or copied, and the backward accumulates in place into one buffer per
    input (autograd of slices would allocate a full-size gradient per slice).
    ``entries``: ``(f, k, pieces)``. Output (E, 2K, 2C), zero past each entry's own ``2k`` rows.
    First-order only.
    """

    @staticmethod
    def forward(ctx, mat, y, entries):
        ctx.entries = entries
        ctx.save_for_backward(mat, y)
        out = y.new_zeros(len(entries), mat.shape[1], y.shape[1])
        for e, (f, k, pieces) in enumerate(entries):
            for i, (a, b, w) in enumerate(pieces):
                lhs, rhs = mat[f, : 2 * k, a : a + w], y[b : b + w]
                if i == 0:
                    torch.mm(lhs, rhs, out=out[e, : 2 * k])
                else:
                    out[e, : 2 * k].addmm_(lhs, rhs)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        mat, y = ctx.saved_tensors
        grad_mat = torch.zeros_like(mat) if ctx.needs_input_grad[0] else None
        grad_y = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        for e, (f, k, pieces) in enumerate(ctx.entries):
            g = grad[e, : 2 * k]
            for a, b, w in pieces:
                if grad_mat is not None:
                    grad_mat[f, : 2 * k, a : a + w].addmm_(g, y[b : b + w].transpose(0, 1))
                if grad_y is not None:
                    grad_y[b : b + w].addmm_(mat[f, : 2 * k, a : a + w].transpose(0, 1), g)
        return grad_mat, grad_y, None


def _split_parts(prod: torch.Tensor) -> torch.Tensor:
    """``|spec @ y|^2`` per term from the real products: (E, 2K, 2C) -> (E, K, C).

    ``prod[e, 2t + s, 2c + q] = sum_j part_s(spec[t, j]) part_q(y[j, c])`` (s, q: 0 real, 1 imag), so
    ``Re = P00 - P11`` and ``Im = P01 + P10``.
    """
    e, k2, c2 = prod.shape
    p = prod.reshape(e, k2 // 2, 2, c2 // 2, 2)
    re = p[:, :, 0, :, 0] - p[:, :, 1, :, 1]
    im = p[:, :, 0, :, 1] + p[:, :, 1, :, 0]
    return re * re + im * im


def _band_pieces(start: int, width: int, p_len: int) -> tuple:
    """``(spec_offset, bin_offset, width)`` pieces of the band ``[start, start + width)`` mod ``P``."""
    first = min(width, p_len - start)
    if first == width:
        return ((0, start, width),)
    return ((0, start, first), (first, 0, width - first))


def _hermite_part(z, center, sigma_t, sigma_nu, rho, terms, scale_nu_d, alias, margin, hop_length):
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
    # Frame length P >= 2R + 1 and each filter's band (the bins where its windows' spectra live).
    # The windows are band-limited to W << P bins, so their in-band spectra come from the windows
    # sampled every D-th sample (a length-P/D transform; the images D folds in are the out-of-band
    # tails, below the same margin): P = D * Pd, Pd even and >= the widest band.
    p_min = 2 * half + 1
    band = scale_nu_d * reach  # half-width of each band, cycles/sample
    w_min = int(2 * math.ceil(float(band.max()) * p_min) + 3)
    dec = max(1, p_min // (w_min + w_min // 4 + 8))
    while _fast_len(dec) != dec:  # keep P = D * Pd 5-smooth (a fast frame FFT)
        dec -= 1
    p_dec = 2 * _fast_len(-(-p_min // dec) // 2 + 1)
    p_len = dec * p_dec  # even (see the alias term)
    widths = torch.clamp(2 * torch.ceil(band * p_len).to(torch.int64) + 3, max=p_len)
    if int(widths.max()) > p_dec:  # cannot happen with the margins above; keep the exact layout then
        dec, p_dec = 1, p_len
    starts = torch.remainder(torch.round(c.detach() * p_len).to(torch.int64) - widths // 2, p_len)
    w_max = int(widths.max())

    # Windows w_fk(u) = psi_k(u) exp(-2 i pi c u - i pi beta u^2) at u = j*D - R, each times
    # exp(2 i pi a_f j / Pd) so that its band starts at bin 0; then
    # sum_i y[i] w[i] = sum_xi fft(y)[xi] * ifft(w)[xi]  (Parseval on the length-P frame) and
    # ifft_P(w)[a_f + xi] = ifft_Pd(w[::D] exp(2 i pi a_f j / Pd))[xi] for the in-band xi.
    j = torch.arange(p_dec, dtype=torch.float64, device=z.device)
    u = j * dec - half
    psi = _hermite_functions(u[None, :] / scale_t[:, None], k_max) / torch.sqrt(scale_t)[:, None, None]
    shift_phase = torch.remainder(starts.to(torch.float64)[:, None] * j[None, :], p_dec) * (2.0 * math.pi / p_dec)
    angle = shift_phase - (2.0 * math.pi * c[:, None] * u[None, :] + math.pi * beta[:, None] * u[None, :] ** 2)
    phase = torch.complex(torch.cos(angle), torch.sin(angle))
    spec = torch.fft.ifft(psi * phase[:, None, :], dim=-1)[..., :w_max]  # (F, K, W)

    # Eigenvalues lam_k = (1 - r) r^k, zero past each filter's own K.
    powers = torch.cumprod(torch.cat([torch.ones_like(r)[:, None], r[:, None].expand(f_count, k_max - 1)], 1), 1)
    keep = torch.arange(k_max, device=z.device)[None, :] < terms[:, None]
    lam = torch.where(keep, (1.0 - r)[:, None] * powers, torch.zeros_like(powers))

    zc = z.dtype
    real = z.real.dtype
    padded = torch.cat([z.new_zeros(bsz, half), z, z.new_zeros(bsz, p_len)], dim=-1)
    frames = padded.unfold(-1, p_len, hop_length)[:, :t_count]  # (B, T, P): z[t*hop - R + i]
    # Frame spectra, bins as rows (a band is a block of rows), re/im interleaved in columns: (P, 2BT).
    y = torch.view_as_real(torch.fft.fft(frames, dim=-1)).reshape(bsz * t_count, p_len, 2)
    y = y.transpose(0, 1).reshape(p_len, 2 * bsz * t_count)
    # The lag step 2 pairs only samples of equal parity: 1[u = w mod 2] = (1 + (-1)^u (-1)^w) / 2, so
    # K = Q(y) + Q((-1)^u y). The second ("alias") form is the first at centre c + 1/2: the same window
    # spectra against the frame spectrum shifted by P/2 bins (P is even). It is ~0 except within a
    # window of the signal's ends, where the jump from 0 is broadband (or for a z that is not analytic).
    # Entries [0, F): Q(y); [F, 2F): Q((-1)^u y), the band moved by P/2 bins.
    entries = []
    for shift in (0, p_len // 2):
        for f, (a0, w, k) in enumerate(zip(starts.tolist(), widths.tolist(), terms.tolist())):
            k = k if (shift == 0 or alias[f]) else 0
            entries.append((f, k, _band_pieces((a0 - shift) % p_len, w, p_len)))
    spec = spec.to(zc)
    mat = torch.stack([spec.real, spec.imag], dim=2).reshape(f_count, 2 * k_max, -1)  # rows 2t, 2t+1
    power = _split_parts(_BandedProduct.apply(mat, y, entries))  # (2F, K, BT)
    power = power[:f_count] + power[f_count:]  # (F, K, BT)
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
    if z.shape[0] == 0:  # an empty batch: an empty result of the right shape (MKL rejects 0 FFTs)
        return z.real.new_zeros(0, center.shape[0], 1 + z.shape[-1] // hop_length)
    p = plan(center, sigma_t, sigma_nu, rho, rtol=rtol, max_terms=max_terms)
    params = (center, sigma_t, sigma_nu, rho)
    on = torch.nonzero(p.hermite).flatten().to(center.device)
    off = torch.nonzero(~p.hermite).flatten().to(center.device)
    parts = []
    if on.numel():
        sub = [q.index_select(0, on) for q in params]
        parts.append(
            _hermite_part(z, *sub, p.terms[p.hermite].to(z.device), p.scale_nu[p.hermite].to(z.device),
                          p.alias[p.hermite].tolist(), p.margin, hop_length)
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
