"""``LWVD``: the learnable Wigner-Ville layer as an ``nn.Module``.

Parameters are stored unconstrained and mapped to valid ranges on every call:

* centre  ``= (sample_rate / 2) * sigmoid(raw_center)``        Hz, inside (0, sr/2)
* time spread ``= exp(log_sigma_t)``                            seconds, > 0
* bandwidth (frequency spread) ``= exp(log_sigma_nu)``          Hz, > 0
* tilt ``rho = RHO_MAX * tanh(raw_rho)``                         |rho| < RHO_MAX < 1

so any gradient step leaves a valid filter. The op itself works in samples and cycles/sample.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import functional

__all__ = ["LWVD", "RHO_MAX", "hz_to_mel", "mel_to_hz"]

# |rho| -> 1 makes the Gaussian degenerate (1/(1-rho^2) blows up); keep a margin.
RHO_MAX = 0.99


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


class LWVD(nn.Module):
    """Learnable Wigner-Ville distribution: real ``(..., N)`` -> ``(..., n_filters, T)``.

    Args:
        sample_rate: Hz (> 0).
        n_filters: number of learned Gaussian filters ``F`` (>= 1).
        n_fft: lag window ``M``; the WVD has ``M`` bins over ``[0, sr/2)``.
        hop_length: samples between frames; ``T = 1 + N // hop_length``.
        f_min, f_max: Hz range of the initial centres (``0 <= f_min < f_max <= sr/2``;
            ``f_max=None`` means ``sr/2``).
        init: ``"mel"`` (default), ``"linear"`` or ``"geometric"`` spacing of a Gaussian-window power
            spectrogram (rho = 0; the untrained layer equals that spectrogram, SPEC §1).
        window_seconds: the spectrogram window length: a Gaussian of standard deviation
            ``window_seconds / 6`` (so +-3 std span the window).
        truncate: passed to :func:`lwvd_cuda.lwvd`.
    """

    def __init__(
        self,
        sample_rate: float,
        n_filters: int,
        n_fft: int = 512,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: Optional[float] = None,
        init: str = "mel",
        window_seconds: float = 0.025,
        truncate: Optional[float] = 4.0,
    ):
        super().__init__()
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not math.isfinite(sample_rate) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a finite number > 0, got {sample_rate!r}")
        if isinstance(n_filters, bool) or not isinstance(n_filters, int) or n_filters < 1:
            raise ValueError(f"n_filters must be an int >= 1, got {n_filters!r}")
        functional._check_int("n_fft", n_fft)
        functional._check_int("hop_length", hop_length)
        functional._check_truncate(truncate)
        nyquist = sample_rate / 2.0
        f_max = nyquist if f_max is None else f_max
        for name, v in (("f_min", f_min), ("f_max", f_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= nyquist):
                raise ValueError(f"{name} must lie in [0, sample_rate/2] = [0, {nyquist}], got {v!r}")
        if not f_min < f_max:
            raise ValueError(f"f_min must be < f_max, got f_min={f_min}, f_max={f_max}")
        if not (isinstance(window_seconds, (int, float)) and math.isfinite(window_seconds) and window_seconds > 0):
            raise ValueError(f"window_seconds must be a finite number > 0, got {window_seconds!r}")

        self.sample_rate = float(sample_rate)
        self.n_filters = n_filters
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.f_min, self.f_max = float(f_min), float(f_max)
        self.truncate = truncate
        self.init = init

        centers = self.grid(init, n_filters, self.f_min, self.f_max)
        window_std = window_seconds / 6.0  # seconds
        sigma_t = torch.full((n_filters,), window_std / math.sqrt(2.0), dtype=torch.float64)
        sigma_nu = torch.full((n_filters,), 1.0 / (2.0 * math.sqrt(2.0) * math.pi * window_std), dtype=torch.float64)
        self.raw_center = nn.Parameter(torch.zeros(n_filters))
        self.log_sigma_t = nn.Parameter(torch.zeros(n_filters))
        self.log_sigma_nu = nn.Parameter(torch.zeros(n_filters))
        self.raw_rho = nn.Parameter(torch.zeros(n_filters))
        self.set_filters(centers, sigma_t, sigma_nu, torch.zeros(n_filters, dtype=torch.float64))

    @staticmethod
    def grid(init: str, n: int, f_min: float, f_max: float) -> torch.Tensor:
        """Centre frequencies in Hz for ``init`` spacing, strictly inside (f_min, f_max)."""
        # Centres at the midpoints of n equal cells, so none sits on 0 or Nyquist (outside the sigmoid's range).
        u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if init == "linear":
            return f_min + (f_max - f_min) * u
        if init == "mel":
            lo, hi = hz_to_mel(f_min), hz_to_mel(f_max)
            return torch.tensor([mel_to_hz(lo + (hi - lo) * x) for x in u.tolist()], dtype=torch.float64)
        if init == "geometric":
            lo = max(f_min, 1e-3 * f_max)
            return lo * (f_max / lo) ** u
        raise ValueError(f"init must be one of 'mel', 'linear', 'geometric', got {init!r}")

    @torch.no_grad()
    def set_filters(self, center_hz, sigma_t_s, sigma_nu_hz, rho) -> None:
        """Set the filters from physical values (Hz, seconds, Hz, unitless), each ``(F,)``."""
        nyq = self.sample_rate / 2.0
        c = torch.as_tensor(center_hz, dtype=torch.float64) / nyq
        self.raw_center.copy_(_logit(c.clamp(1e-6, 1 - 1e-6)))
        self.log_sigma_t.copy_(torch.log(torch.as_tensor(sigma_t_s, dtype=torch.float64)))
        self.log_sigma_nu.copy_(torch.log(torch.as_tensor(sigma_nu_hz, dtype=torch.float64)))
        r = torch.as_tensor(rho, dtype=torch.float64) / RHO_MAX
        self.raw_rho.copy_(torch.atanh(r.clamp(-1 + 1e-6, 1 - 1e-6)))

    # Physical views of the parameters (differentiable).
    @property
    def center_hz(self) -> torch.Tensor:
        return (self.sample_rate / 2.0) * torch.sigmoid(self.raw_center)

    @property
    def sigma_t_seconds(self) -> torch.Tensor:
        return torch.exp(self.log_sigma_t)

    @property
    def sigma_nu_hz(self) -> torch.Tensor:
        return torch.exp(self.log_sigma_nu)

    @property
    def rho(self) -> torch.Tensor:
        return RHO_MAX * torch.tanh(self.raw_rho)

    def op_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(center, sigma_t, sigma_nu, rho) in the op's units: cycles/sample, samples, cycles/sample."""
        sr = self.sample_rate
        return self.center_hz / sr, self.sigma_t_seconds * sr, self.sigma_nu_hz / sr, self.rho

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` real ``(..., N)`` -> ``(..., F, T)`` (float64 for float64 input, else float32)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex():
            raise TypeError("x must be a real signal; call lwvd_cuda.lwvd directly with a complex analytic signal")
        real = torch.float64 if x.dtype == torch.float64 else torch.float32
        z = functional.analytic_signal(x.to(real))
        c, st, sn, r = (p.to(real) for p in self.op_parameters())
        return functional.lwvd(z, c, st, sn, r, n_fft=self.n_fft, hop_length=self.hop_length, truncate=self.truncate)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_filters={self.n_filters}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, f_min={self.f_min}, f_max={self.f_max}, init={self.init!r}, "
            f"truncate={self.truncate}"
        )
