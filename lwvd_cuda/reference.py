"""The learnable Wigner-Ville distribution in plain PyTorch, straight from the formulas of SPEC §1.

This is the oracle every backend is tested against, and the fallback when no compiled kernel
serves a device. It favours being obviously right over being fast, with two concessions that do
not change a single term: the lag products are built in chunks of rows (bounded memory), and each
filter is evaluated only on the bounding box of its truncation ellipse (the terms outside have
``q > truncate^2`` and count zero by definition).

Shapes: ``z`` complex ``(..., N)``; ``center, sigma_t, sigma_nu, rho`` real ``(F,)``;
result real ``(..., F, T)`` with ``T = 1 + N // hop_length``. Units: samples and cycles/sample.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["analytic_signal", "wigner_ville", "smooth", "lwvd", "num_frames"]

# Elements of the complex lag-product buffer built at once (about 64 MiB in complex128).
_LAG_CHUNK_ELEMENTS = 1 << 22
# Elements of the unfolded (frame, d, k) windows built at once by ``smooth``.
_WINDOW_CHUNK_ELEMENTS = 1 << 23


def num_frames(n_samples: int, hop_length: int) -> int:
    """Frame count ``T = 1 + N // hop`` (that of ``torch.stft(center=True)``)."""
    return 1 + n_samples // hop_length


def analytic_signal(x: torch.Tensor) -> torch.Tensor:
    """Analytic signal of a real ``(..., N)`` tensor, the convention of ``scipy.signal.hilbert``.

    ``Z = fft(x)``; bin 0 times 1, bins ``1..ceil(N/2)-1`` times 2, bin ``N/2`` times 1 when ``N`` is
    even, the rest times 0; ``z = ifft(Z)``. Differentiable. half/bfloat16 are computed in float32.
    A complex input is returned unchanged.
    """
    if x.is_complex():
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    n = x.shape[-1]
    h = torch.zeros(n, dtype=x.dtype, device=x.device)
    h[0] = 1.0
    h[1 : (n + 1) // 2] = 2.0
    if n % 2 == 0:
        h[n // 2] = 1.0
    if x.numel() == 0:  # a 0-size batch: MKL's FFT rejects it ("MKL FFT error"); the result is empty
        return (x * h).to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return torch.fft.ifft(torch.fft.fft(x, dim=-1) * h, dim=-1)


def wigner_ville(z: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Discrete pseudo WVD ``W[..., n, k]`` of SPEC §1, real ``(..., N, n_fft)``.

    ``W[n, k] = 2 Re sum_{|m| < M/2} z[n+m] conj(z[n-m]) exp(-2 i pi k m / M)``, ``z = 0`` outside
    ``[0, N)``. Lag ``m`` sits at FFT index ``m mod M``.
    """
    lead, n = z.shape[:-1], z.shape[-1]
    zf = z.reshape(-1, n)
    h = (n_fft - 1) // 2
    zp = torch.cat([zf.new_zeros(zf.shape[0], h), zf, zf.new_zeros(zf.shape[0], h)], dim=-1)
    m = torch.arange(-h, h + 1, device=z.device)
    cols = torch.remainder(m, n_fft)
    rows_per_chunk = max(1, _LAG_CHUNK_ELEMENTS // max(1, zf.shape[0] * n_fft))
    parts = []
    for n0 in range(0, n, rows_per_chunk):
        nn = torch.arange(n0, min(n, n0 + rows_per_chunk), device=z.device)
        plus = zp[:, (nn[:, None] + m[None, :]) + h]  # z[n + m]
        minus = zp[:, (nn[:, None] - m[None, :]) + h]  # z[n - m]
        lag = zf.new_zeros(zf.shape[0], nn.numel(), n_fft).index_copy(-1, cols, plus * minus.conj())
        # (an empty batch: MKL's FFT rejects it; the DFT of no rows is no rows)
        parts.append(2.0 * (torch.fft.fft(lag, dim=-1) if lag.numel() else lag).real)
    w = torch.cat(parts, dim=1) if parts else zf.real.new_zeros(zf.shape[0], 0, n_fft)
    return w.reshape(*lead, n, n_fft)


def smooth(
    w: torch.Tensor,
    center: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_nu: torch.Tensor,
    rho: torch.Tensor,
    *,
    hop_length: int,
    truncate: Optional[float] = 4.0,
) -> torch.Tensor:
    """Gaussian smoothing of a WVD ``w`` ``(B, N, M)`` by each filter, sampled at frames ``t*hop``.

    ``K[b, f, t] = norm_f * sum_{n,k} W[b, n, k] exp(-q_f(n - t*hop, nu_k - c_f)/2)`` over the terms
    with ``q_f <= truncate^2`` (all terms when ``truncate is None``). Returns ``(B, F, T)``.
    """
    bsz, n, n_fft = w.shape
    t_count = num_frames(n, hop_length)
    f64 = torch.float64
    # The truncation test and the weights are computed in float64 whatever w's dtype, in exactly the
    # kernels' order (csrc/kernels/lwvd_math.cuh, quad_form): the CPU kernels do so in both dtypes,
    # and a term on the boundary q = truncate^2 must fall on the same side in every backend.
    nu = torch.arange(n_fft, device=w.device, dtype=f64) / (2 * n_fft)
    d_limit = n - 1 + (t_count - 1) * hop_length  # largest |d| = |n - t*hop| that occurs
    trunc2 = None if truncate is None else float(truncate) * float(truncate)
    out = []
    for f in range(center.shape[0]):
        c, st, sn, r = center[f], sigma_t[f], sigma_nu[f], rho[f]
        c64, st64, sn64, r64 = (x.to(f64) for x in (c, st, sn, r))
        if trunc2 is None:
            radius = d_limit
        else:  # q >= a^2, so |d| / sigma_t <= truncate on the ellipse; +1 guards rounding (the q test decides)
            radius = min(d_limit, int(math.floor(truncate * float(st.detach()))) + 1)
        d = torch.arange(-radius, radius + 1, device=w.device, dtype=f64)
        # q = a^2 + (b - rho a)^2 / (1 - rho^2): the form that stays accurate as |rho| -> 1, with
        # 1 - rho^2 = (1 - rho)(1 + rho); each product by a reciprocal, as in the kernels.
        one_m_r2 = (1.0 - r64) * (1.0 + r64)
        a = (d * (1.0 / st64))[:, None]
        b = ((nu - c64) * (1.0 / sn64))[None, :]
        res = b - r64 * a
        q = a * a + res * res * (1.0 / one_m_r2)
        weight = torch.exp(-0.5 * q)
        if trunc2 is not None:
            inside = q <= trunc2
            weight = torch.where(inside, weight, torch.zeros_like(weight))
            cols = torch.nonzero(inside.any(dim=0)).flatten()
            if cols.numel() == 0:  # the ellipse misses every bin: the filter sees nothing
                out.append(w.new_zeros(bsz, t_count) * (c + st + sn + r))
                continue
            k0, k1 = int(cols[0]), int(cols[-1]) + 1
        else:
            k0, k1 = 0, n_fft
        norm = (1.0 / (2 * n_fft)) / (2.0 * math.pi * st64 * sn64 * torch.sqrt(one_m_r2))
        weight, norm = weight[:, k0:k1].to(w.dtype), norm.to(w.dtype)
        # Rows t*hop + d for d in [-radius, radius]: pad so every frame's window exists ((T-1)*hop <= N).
        wk = w[:, :, k0:k1]
        padded = torch.cat(
            [wk.new_zeros(bsz, radius, k1 - k0), wk, wk.new_zeros(bsz, radius + 1, k1 - k0)], dim=1
        )
        frames = []
        per_frame = max(1, bsz * (2 * radius + 1) * (k1 - k0))
        step = max(1, _WINDOW_CHUNK_ELEMENTS // per_frame)
        for t0 in range(0, t_count, step):
            t1 = min(t_count, t0 + step)
            start, stop = t0 * hop_length, (t1 - 1) * hop_length + 2 * radius + 1
            win = padded[:, start:stop].unfold(1, 2 * radius + 1, hop_length)  # (B, t1-t0, K, 2R+1)
            frames.append(torch.einsum("btkd,dk->bt", win, weight))
        out.append(norm * torch.cat(frames, dim=1))
    if not out:
        return w.new_zeros(bsz, 0, t_count)
    return torch.stack(out, dim=1)


def lwvd(
    z: torch.Tensor,
    center: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_nu: torch.Tensor,
    rho: torch.Tensor,
    *,
    n_fft: int,
    hop_length: int,
    truncate: Optional[float] = 4.0,
) -> torch.Tensor:
    """The operator of SPEC §1 on an analytic signal ``z`` ``(..., N)``; returns ``(..., F, T)``.

    No argument checking: ``lwvd_cuda.lwvd`` validates and then calls this or a kernel. All tensors
    must share ``z``'s device and real dtype (float32 or float64).
    """
    lead, n = z.shape[:-1], z.shape[-1]
    w = wigner_ville(z.reshape(-1, n), n_fft)
    k = smooth(w, center, sigma_t, sigma_nu, rho, hop_length=hop_length, truncate=truncate)
    return k.reshape(*lead, center.shape[0], k.shape[-1])
