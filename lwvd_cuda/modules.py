"""``LWVD``: the learnable Wigner-Ville layer as an ``nn.Module``.

Parameters are stored unconstrained and mapped to valid ranges on every call:

* centre  ``= (sample_rate / 2) * sigmoid(raw_center)``        Hz, inside [0, sr/2]
* time spread ``= exp(log_sigma_t)``                            seconds, > 0
* bandwidth (frequency spread) ``= exp(log_sigma_nu)``          Hz, > 0
* tilt ``rho = RHO_MAX * tanh(raw_rho)``                         |rho| <= RHO_MAX < 1

so any gradient step leaves a valid filter. (In float32 the sigmoid saturates to exactly 0 or 1 for
``|raw_center| > ~17``; a centre on 0 Hz or Nyquist is still a valid filter for the op.) The op itself
works in samples and cycles/sample; :meth:`LWVD.op_parameters` converts.

Reading a filter (SPEC §1): the Gaussian has covariance
``[[sigma_t^2, rho sigma_t sigma_nu], [rho sigma_t sigma_nu, sigma_nu^2]]`` on the (seconds, Hz) plane.
Its ridge — the frequency where it peaks, as a function of the time offset — moves at
``rho * sigma_nu / sigma_t`` Hz/s (the chirp rate it is tuned to). Its area
``sigma_t * sigma_nu * sqrt(1 - rho^2)`` against the Heisenberg bound ``1/(4 pi)`` says what it is:
exactly on the bound it is a spectrogram (``rho = 0``) or a chirplet transform (``rho != 0``: a
spectrogram with a chirped Gaussian window); above it, a smoother (still non-negative) version; below
it, no window can produce it and the output may go negative — the "super-resolution" regime.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
from torch import nn

from . import functional

__all__ = ["LWVD", "RHO_MAX", "INITS", "FilterTable", "hz_to_mel", "mel_to_hz", "HEISENBERG_BOUND"]

# |rho| -> 1 makes the Gaussian degenerate (1/(1-rho^2) blows up); keep a margin.
RHO_MAX = 0.99
# sigma_t * sigma_nu (seconds x Hz, or samples x cycles/sample) of the WVD of any Gaussian window.
HEISENBERG_BOUND = 1.0 / (4.0 * math.pi)
INITS = ("mel", "linear", "geometric", "cqt")
# The spectrogram window the mel/linear/geometric inits equal when neither window_seconds nor
# win_length is given: 25 ms, the usual speech frame.
DEFAULT_WINDOW_SECONDS = 0.025
# FWHM of a Gaussian = this many standard deviations (used to turn a Q factor into sigma_nu).
_FWHM_PER_STD = 2.0 * math.sqrt(2.0 * math.log(2.0))
# |rho| below this reads as "untilted" in describe(); a tilt that small moves the ridge by < 5% of
# sigma_nu per sigma_t, invisible on any plot.
_TILT_WORD_THRESHOLD = 0.05


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


def _is_real_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(float(v))


class FilterTable(list):
    """``LWVD.describe()``'s result: a list of dicts (one per filter) that prints as an aligned table.

    Keys: ``filter``, ``center_hz``, ``time_spread_s`` (sigma_t), ``bandwidth_hz`` (sigma_nu),
    ``rho``, ``chirp_rate_hz_per_s`` (the ridge slope ``rho sigma_nu / sigma_t``), ``area_ratio``
    (``sigma_t sigma_nu sqrt(1-rho^2)`` over ``1/(4 pi)``) and ``kind`` (``"spectrogram-like"``,
    ``"chirplet"`` or ``"sub-Heisenberg"``).
    """

    columns = (
        ("filter", "filter", "{:d}"),
        ("center_hz", "center Hz", "{:.1f}"),
        ("time_spread_s", "time spread s", "{:.3e}"),
        ("bandwidth_hz", "bandwidth Hz", "{:.1f}"),
        ("rho", "rho", "{:+.3f}"),
        ("chirp_rate_hz_per_s", "chirp Hz/s", "{:+.4g}"),
        ("area_ratio", "area/bound", "{:.3f}"),
        ("kind", "kind", "{}"),
    )

    def column(self, key: str) -> list:
        """One column as a list, e.g. ``table.column("chirp_rate_hz_per_s")``."""
        return [row[key] for row in self]

    def __str__(self) -> str:
        header = [title for _, title, _ in self.columns]
        body = [[fmt.format(row[key]) for key, _, fmt in self.columns] for row in self]
        widths = [max(len(c) for c in col) for col in zip(header, *body)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(header, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
        return "\n".join(lines)


class LWVD(nn.Module):
    """Learnable Wigner-Ville distribution: real ``(..., N)`` -> ``(..., n_filters, T)``.

    ``T = 1 + N // hop_length`` frames centred on ``t * hop_length`` (like ``torch.stft(center=True)``;
    ``center=False`` gives the frames of ``torch.stft(center=False)``).
    Each output row is the signal's Wigner-Ville distribution averaged by one learned 2-D Gaussian
    (SPEC §1); the four numbers per filter are exposed in Hz and seconds (:attr:`center_hz`,
    :attr:`sigma_t_seconds`, :attr:`sigma_nu_hz`, :attr:`rho`) and read by :meth:`describe`.

    Args:
        sample_rate: Hz (> 0).
        n_filters: number of learned Gaussian filters ``F`` (>= 1).
        n_fft: lag window ``M``: lags ``|m| < M/2`` (a span of about ``M`` samples, like an STFT
            frame of ``n_fft``), and the WVD has ``M`` bins over ``[0, sr/2)``, ``sr / (2 M)`` Hz apart
            (torchaudio's ``n_fft`` is an FFT size with ``n_fft // 2 + 1`` bins over ``[0, sr/2]``,
            ``sr / n_fft`` apart). The op costs one FFT of ``n_fft`` per *sample* (not per hop):
            keep it as small as the longest window needs. Any ``n_fft >= 1`` is exact; powers of two
            are the fast path: on the CPU another length goes through ATen's FFT instead of the
            kernels' own (README, "Coming from torchaudio", gives the measured cost), and on CUDA
            the kernels take powers of two from 4 to 8192 only - any other ``n_fft`` runs the
            pure-PyTorch reference (with one warning; much slower, and memory of a few
            ``B x N x n_fft`` planes).
        hop_length: samples between frames.
        f_min, f_max: Hz range of the initial centres (``0 <= f_min < f_max <= sr/2``;
            ``f_max=None`` means ``sr/2``). Centres sit at the middles of ``n_filters`` equal cells of
            the chosen scale, so none lies on ``f_min`` or ``f_max``.
        init: the transform the untrained layer equals (all with ``rho = 0``):

            * ``"mel"`` (default), ``"linear"``, ``"geometric"``: a power spectrogram with a Gaussian
              window of ``window_seconds`` (std ``window_seconds / 6``) at centres spaced on that
              scale. With ``truncate=None`` and ``n_fft`` at least the window length in samples,
              the layer equals ``|STFT|^2`` with the unit-energy Gaussian window (SPEC §1).
            * ``"cqt"``: constant-Q, wavelet-like (a Gabor scalogram): geometric centres, bandwidth
              ``sigma_nu = center / (q_factor * 2 sqrt(2 ln 2))`` (``q_factor`` = centre / FWHM of
              each filter's power response), time spread ``sigma_t = 1 / (4 pi sigma_nu)`` (on the
              Heisenberg bound: each filter is a spectrogram with its own window length).
              ``window_seconds`` is ignored. Low-frequency filters get long windows: ``n_fft``
              must reach their length for the equality to be exact (a warning says when not).
        window_seconds: the spectrogram window length: a Gaussian of standard deviation
            ``window_seconds / 6`` (so +-3 std span the window). Default 25 ms.
        q_factor: for ``init="cqt"``: centre / FWHM bandwidth. ``None`` picks the Q at which
            neighbouring filters cross at half power, ``1 / (r - 1)`` for a grid ratio ``r``.
        truncate: passed to :func:`lwvd_cuda.lwvd` (terms with ``q > truncate^2`` are dropped;
            ``None`` keeps all).
        center: ``True`` (default): ``T = 1 + N // hop_length`` frames centred on samples
            ``t * hop_length`` (``torch.stft(center=True, pad_mode="constant")``: the signal is zero
            outside ``[0, N)``). ``False``: ``T = 1 + (N - n_fft) // hop_length`` frames centred on
            samples ``n_fft // 2 + t * hop_length`` - the frame centres of ``torch.stft(center=False)``
            (``N >= n_fft`` required). Either way each value is computed from the whole signal: a
            frame reads samples within about ``truncate * sigma_t + n_fft / 2`` of its centre (its
            filter's time support plus the lag window), not only those of one STFT window.
        win_length, n_mels, mel_scale: torchaudio spellings. ``win_length`` (samples) is
            ``window_seconds * sample_rate`` (the span of +-3 std of the Gaussian window, where
            torchaudio's is a Hann window of that length); ``n_mels`` is ``n_filters``;
            ``mel_scale`` must be ``"htk"`` (the only mel grid here). Giving a value under both
            names with different values raises.
        method, rtol: passed to :func:`lwvd_cuda.lwvd`: ``method="hermite"`` computes the untruncated
            operator without the lag window as a few spectrograms per filter, within ``rtol``
            (``docs/hermite.md``); ``truncate`` is then not used.

    Input dtypes: float32/float64 compute in their own precision; half/bfloat16 input (including
    under ``torch.autocast``) is computed in float32 and the result is float32 — autocast is
    disabled inside the layer, because a WVD in 8 bits of mantissa is noise.

    Recipes: :meth:`for_speech` (16 kHz, mel, 25 ms / 10 ms) and :meth:`for_bioacoustics`
    (96-384 kHz, linear grid, 2 ms windows).
    """

    def __init__(
        self,
        sample_rate: float,
        n_filters: Optional[int] = None,
        n_fft: int = 512,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: Optional[float] = None,
        init: str = "mel",
        window_seconds: Optional[float] = None,
        q_factor: Optional[float] = None,
        truncate: Optional[float] = 4.0,
        *,
        center: bool = True,
        win_length: Optional[int] = None,
        n_mels: Optional[int] = None,
        mel_scale: str = "htk",
        method: str = "exact",
        rtol: float = 1e-4,
    ):
        super().__init__()
        self.method, self.rtol = functional._check_method(method, rtol)
        n_filters, window_seconds = _torchaudio_spellings(
            sample_rate, n_filters, window_seconds, win_length=win_length, n_mels=n_mels, mel_scale=mel_scale
        )
        if not isinstance(center, bool):
            raise TypeError(f"center must be True or False (as in torch.stft), got {center!r}")
        if not _is_real_number(sample_rate) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a finite number > 0, got {sample_rate!r}")
        if isinstance(n_filters, bool) or not isinstance(n_filters, numbers.Integral) or n_filters < 1:
            raise ValueError(f"n_filters must be an int >= 1, got {n_filters!r}")
        n_fft = functional._check_int("n_fft", n_fft)
        hop_length = functional._check_int("hop_length", hop_length)
        truncate = functional._check_truncate(truncate)
        nyquist = sample_rate / 2.0
        f_max = nyquist if f_max is None else f_max
        for name, v in (("f_min", f_min), ("f_max", f_max)):
            if not _is_real_number(v) or not (0.0 <= v <= nyquist):
                raise ValueError(f"{name} must lie in [0, sample_rate/2] = [0, {nyquist}], got {v!r}")
        if not f_min < f_max:
            raise ValueError(f"f_min must be < f_max, got f_min={f_min}, f_max={f_max}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not _is_real_number(window_seconds) or window_seconds <= 0:
            raise ValueError(f"window_seconds must be a finite number > 0, got {window_seconds!r}")
        if q_factor is not None and (not _is_real_number(q_factor) or q_factor <= 0):
            raise ValueError(f"q_factor must be a finite number > 0 or None, got {q_factor!r}")

        self.sample_rate = float(sample_rate)
        self.n_filters = int(n_filters)
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.f_min, self.f_max = float(f_min), float(f_max)
        self.truncate = truncate
        self.center = center
        self.init = init
        self.window_seconds = float(window_seconds)

        self.raw_center = nn.Parameter(torch.zeros(self.n_filters))
        self.log_sigma_t = nn.Parameter(torch.zeros(self.n_filters))
        self.log_sigma_nu = nn.Parameter(torch.zeros(self.n_filters))
        self.raw_rho = nn.Parameter(torch.zeros(self.n_filters))

        self._q_factor_arg = q_factor
        self.q_factor: Optional[float] = None
        sigma_t = self.reset_parameters()
        self._warn_if_lag_window_short(sigma_t)

    @torch.no_grad()
    def reset_parameters(self) -> torch.Tensor:
        """(Re)initialise the filters to the ``init`` transform; returns the time spreads (s, float64).

        The values are computed in float64 and rounded once into the parameters' dtype, so
        ``layer.double().reset_parameters()`` gives an exact float64 init (e.g. for testing the
        spectrogram equality to 1e-8 rather than to float32 rounding).
        """
        n = self.n_filters
        if self.init == "cqt":
            centers = self.grid("geometric", n, self.f_min, self.f_max)
            q_factor = self._q_factor_arg
            if q_factor is None:
                ratio = (centers[1] / centers[0]).item() if n > 1 else 2.0
                q_factor = 1.0 / (ratio - 1.0)
            self.q_factor = float(q_factor)
            sigma_nu = centers / (self.q_factor * _FWHM_PER_STD)
            sigma_t = HEISENBERG_BOUND / sigma_nu
        else:
            centers = self.grid(self.init, n, self.f_min, self.f_max)
            window_std = self.window_seconds / 6.0  # seconds
            sigma_t = torch.full((n,), window_std / math.sqrt(2.0), dtype=torch.float64)
            sigma_nu = torch.full((n,), 1.0 / (2.0 * math.sqrt(2.0) * math.pi * window_std), dtype=torch.float64)
        self.set_filters(centers, sigma_t, sigma_nu, torch.zeros(n, dtype=torch.float64))
        return sigma_t

    # ------------------------------------------------------------------ recipes
    @classmethod
    def for_speech(cls, n_filters: int = 80, sample_rate: float = 16000.0, **kwargs) -> "LWVD":
        """Speech front end: mel grid over [0, sr/2], 25 ms Gaussian window, 10 ms hop, n_fft 512 at 16 kHz.

        The untrained layer is the usual log-mel's power spectrogram (with a Gaussian window; take
        ``log`` yourself). ``n_fft`` scales with ``sample_rate`` (the next power of two >= the window
        length in samples, so the lag window covers it). Any argument of ``LWVD`` can be overridden.
        """
        window = kwargs.pop("window_seconds", 0.025)
        n_fft = kwargs.pop("n_fft", _next_pow2(window * sample_rate))
        hop = kwargs.pop("hop_length", max(1, round(0.010 * sample_rate)))
        kwargs.setdefault("init", "mel")
        return cls(sample_rate, n_filters, n_fft=n_fft, hop_length=hop, window_seconds=window, **kwargs)

    @classmethod
    def for_bioacoustics(
        cls, sample_rate: float, n_filters: int = 64, f_min: float = 1000.0, **kwargs
    ) -> "LWVD":
        """High-rate front end (bird song at 96 kHz, bat echolocation at 192-384 kHz).

        Linear grid from ``f_min`` (1 kHz: below it is wind and handling noise) to Nyquist, 2 ms
        Gaussian windows (short calls sweep tens of kHz in a few ms: long windows smear them; the
        learned tilts then follow the sweeps), hop 0.5 ms, ``n_fft`` the next power of two >= the
        window length (256 at 96 kHz, 1024 at 384 kHz). Cost: one FFT of ``n_fft`` per sample, i.e.
        384k FFTs of 1024 per second of audio at 384 kHz — crop to the calls.
        """
        window = kwargs.pop("window_seconds", 0.002)
        n_fft = kwargs.pop("n_fft", _next_pow2(window * sample_rate))
        hop = kwargs.pop("hop_length", max(1, round(0.0005 * sample_rate)))
        kwargs.setdefault("init", "linear")
        return cls(sample_rate, n_filters, n_fft=n_fft, hop_length=hop, f_min=f_min, window_seconds=window, **kwargs)

    # ------------------------------------------------------------------ grids and parameters
    @staticmethod
    def grid(init: str, n: int, f_min: float, f_max: float) -> torch.Tensor:
        """Centre frequencies in Hz (float64) for ``init`` spacing, strictly inside (f_min, f_max)."""
        # Centres at the midpoints of n equal cells, so none sits on 0 or Nyquist.
        u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if init == "linear":
            return f_min + (f_max - f_min) * u
        if init == "mel":
            lo, hi = hz_to_mel(f_min), hz_to_mel(f_max)
            return torch.tensor([mel_to_hz(lo + (hi - lo) * x) for x in u.tolist()], dtype=torch.float64)
        if init in ("geometric", "cqt"):
            # A geometric grid cannot start at 0 Hz: start three decades below f_max at the lowest.
            lo = max(f_min, 1e-3 * f_max)
            return lo * (f_max / lo) ** u
        raise ValueError(f"init must be one of {INITS}, got {init!r}")

    def _warn_if_lag_window_short(self, sigma_t_seconds: torch.Tensor) -> None:
        # A filter on the Heisenberg bound is a spectrogram with a window of std s = sqrt(2) sigma_t;
        # the lag window |m| < n_fft/2 (tau = 2m) covers that window's WVD when n_fft >= 6 s (the
        # neglected terms then weigh < exp(-9) ~ 1e-4 of the largest).
        window_samples = 6.0 * math.sqrt(2.0) * sigma_t_seconds * self.sample_rate
        too_long = window_samples > self.n_fft
        if bool(too_long.any()):
            warnings.warn(
                f"LWVD: {int(too_long.sum())} of {self.n_filters} initial windows are longer than n_fft="
                f"{self.n_fft} (longest {float(window_samples.max()):.0f} samples): the lag window cuts "
                f"them, so the untrained layer is a smoothed pseudo-WVD close to, but not exactly, the "
                f"'{self.init}' transform. Raise n_fft to {_next_pow2(float(window_samples.max()))} for exactness"
                + (" or f_min (long windows belong to the lowest centres)." if self.init == "cqt" else "."),
                UserWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def set_filters(self, center_hz, sigma_t_s, sigma_nu_hz, rho) -> None:
        """Set the filters from physical values (Hz, seconds, Hz, unitless), each ``(F,)`` or scalar.

        ``center_hz`` in ``[0, sr/2]`` (stored clamped to ``[1e-6, 1 - 1e-6] * sr/2``, where the
        sigmoid is invertible), spreads ``> 0``, ``|rho| <= RHO_MAX``.
        """
        nyq = self.sample_rate / 2.0
        vals = {}
        for name, v in (("center_hz", center_hz), ("sigma_t_s", sigma_t_s), ("sigma_nu_hz", sigma_nu_hz), ("rho", rho)):
            t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v, dtype=torch.float64).cpu()
            if t.dim() == 0:
                t = t.expand(self.n_filters)
            if t.shape != (self.n_filters,):
                raise ValueError(f"{name} must have shape ({self.n_filters},), got {tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite")
            vals[name] = t
        if bool(((vals["center_hz"] < 0) | (vals["center_hz"] > nyq)).any()):
            raise ValueError(f"center_hz must lie in [0, sample_rate/2] = [0, {nyq}]")
        for name in ("sigma_t_s", "sigma_nu_hz"):
            if bool((vals[name] <= 0).any()):
                raise ValueError(f"{name} must be > 0, got min {vals[name].min().item()}")
        # A float32 0.99 reads back as 0.9900000095: allow float32 rounding above RHO_MAX (then clamped).
        if bool((vals["rho"].abs() > RHO_MAX * (1 + 1e-6)).any()):
            raise ValueError(f"rho must lie in [-{RHO_MAX}, {RHO_MAX}] (RHO_MAX), got max |rho| = {vals['rho'].abs().max().item()}")
        c = vals["center_hz"] / nyq
        self.raw_center.copy_(_logit(c.clamp(1e-6, 1 - 1e-6)))
        self.log_sigma_t.copy_(torch.log(vals["sigma_t_s"]))
        self.log_sigma_nu.copy_(torch.log(vals["sigma_nu_hz"]))
        # |rho| = RHO_MAX exactly (what a saturated tanh reads back as) maps to a large finite raw value.
        self.raw_rho.copy_(torch.atanh((vals["rho"] / RHO_MAX).clamp(-1 + 1e-12, 1 - 1e-12)))

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

    @property
    def chirp_rate_hz_per_s(self) -> torch.Tensor:
        """Slope of each filter's ridge, ``rho * sigma_nu / sigma_t`` (Hz/s; > 0 follows rising chirps)."""
        return self.rho * self.sigma_nu_hz / self.sigma_t_seconds

    @property
    def area_ratio(self) -> torch.Tensor:
        """``sigma_t sigma_nu sqrt(1 - rho^2) / (1/(4 pi))``: 1 = a (chirped) spectrogram, < 1 = sub-Heisenberg."""
        return self.sigma_t_seconds * self.sigma_nu_hz * torch.sqrt(1.0 - self.rho**2) / HEISENBERG_BOUND

    def op_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(center, sigma_t, sigma_nu, rho) in the op's units: cycles/sample, samples, cycles/sample."""
        sr = self.sample_rate
        return self.center_hz / sr, self.sigma_t_seconds * sr, self.sigma_nu_hz / sr, self.rho

    @torch.no_grad()
    def describe(self) -> FilterTable:
        """One row per filter in physical units; ``print(layer.describe())`` gives an aligned table.

        ``kind``: ``"sub-Heisenberg"`` when the area ratio is below 1 (by more than float32 rounding:
        the output may be negative there), else ``"chirplet"`` when ``|rho| >= 0.05``, else
        ``"spectrogram-like"``.
        """
        cols = [
            p.detach().to(torch.float64).cpu().tolist()
            for p in (self.center_hz, self.sigma_t_seconds, self.sigma_nu_hz, self.rho, self.chirp_rate_hz_per_s, self.area_ratio)
        ]
        table = FilterTable()
        for i, (c, st, sn, r, rate, area) in enumerate(zip(*cols)):
            if area < 1.0 - 1e-4:  # float32 parameters round a ratio of exactly 1 by ~1e-7
                kind = "sub-Heisenberg"
            elif abs(r) >= _TILT_WORD_THRESHOLD:
                kind = "chirplet"
            else:
                kind = "spectrogram-like"
            table.append(
                dict(filter=i, center_hz=c, time_spread_s=st, bandwidth_hz=sn, rho=r,
                     chirp_rate_hz_per_s=rate, area_ratio=area, kind=kind)
            )
        return table

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` real ``(..., N)`` -> ``(..., F, T)``: float64 for float64 input, float32 otherwise."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex():
            raise TypeError("x must be a real signal; call lwvd_cuda.lwvd directly with a complex analytic signal")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        real = torch.float64 if x.dtype == torch.float64 else torch.float32
        # Autocast would run the reference's einsum (and any matmul) in half precision: keep float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = functional.analytic_signal(x.to(real))
            z, frames = _align_frames(z, self.n_fft, self.hop_length, self.center)
            c, st, sn, r = (p.to(real) for p in self.op_parameters())
            out = functional.lwvd(z, c, st, sn, r, n_fft=self.n_fft, hop_length=self.hop_length, truncate=self.truncate,
                                  method=self.method, rtol=self.rtol)
            return out if frames is None else out[..., frames]

    def extra_repr(self) -> str:
        q = f", q_factor={self.q_factor:.3g}" if self.q_factor is not None else ""
        return (
            f"sample_rate={self.sample_rate}, n_filters={self.n_filters}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, f_min={self.f_min}, f_max={self.f_max}, init={self.init!r}{q}, "
            f"truncate={self.truncate}" + ("" if self.center else ", center=False")
            + (f", method={self.method!r}, rtol={self.rtol:g}" if self.method != "exact" else "")
        )


def _next_pow2(v: float) -> int:
    return 1 << max(2, math.ceil(math.log2(max(1.0, v))))


def _torchaudio_spellings(sample_rate, n_filters, window_seconds, *, win_length, n_mels, mel_scale):
    """Map the torchaudio spellings (``n_mels``, ``win_length`` in samples, ``mel_scale``) onto
    ``n_filters`` and ``window_seconds``; a spelling given twice with different values is an error."""
    if n_mels is not None:
        if n_filters is not None and n_filters != n_mels:
            raise ValueError(f"n_mels ({n_mels!r}) and n_filters ({n_filters!r}) name the same thing: give one")
        n_filters = n_mels
    if n_filters is None:
        raise TypeError("LWVD needs n_filters (torchaudio spelling: n_mels)")
    if win_length is not None:
        if isinstance(win_length, bool) or not isinstance(win_length, numbers.Integral) or win_length < 1:
            raise ValueError(f"win_length must be an int >= 1 (samples), got {win_length!r}")
        if not _is_real_number(sample_rate) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a finite number > 0, got {sample_rate!r}")
        if window_seconds is not None and abs(window_seconds * sample_rate - win_length) > 1e-9 * win_length:
            raise ValueError(f"win_length={win_length} samples and window_seconds={window_seconds} disagree: give one")
        window_seconds = win_length / float(sample_rate)
    if window_seconds is None:
        window_seconds = DEFAULT_WINDOW_SECONDS
    if mel_scale != "htk":
        raise ValueError(f"mel_scale: only 'htk' is implemented (the centre grid of init='mel'), got {mel_scale!r}")
    return n_filters, window_seconds


def _align_frames(z: torch.Tensor, n_fft: int, hop_length: int, center: bool):
    """``(z, None)`` for ``center=True``. For ``center=False``: ``z`` zero-padded on the left so that
    sample ``n_fft // 2`` falls on the op's frame grid, and the index of the frames to keep - those
    centred on ``n_fft // 2 + t * hop_length`` for ``t = 0 .. (N - n_fft) // hop_length`` (the frames
    of ``torch.stft(center=False)``). The op treats samples outside the signal as zero, so the left
    padding changes no value: it only moves the frame grid."""
    if center:
        return z, None
    n = z.shape[-1]
    if n < n_fft:
        raise ValueError(f"x: center=False needs at least n_fft={n_fft} samples, got N={n}")
    pad = (-(n_fft // 2)) % hop_length
    first = (n_fft // 2 + pad) // hop_length
    frames = torch.arange(first, first + 1 + (n - n_fft) // hop_length, device=z.device)
    return (torch.nn.functional.pad(z, (pad, 0)) if pad else z), frames
