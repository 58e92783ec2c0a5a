"""``LWVD``: the learnable Wigner-Ville layer as an ``nn.Module``.

Parameters are stored unconstrained and read through bounded maps in physical units, so that **any
finite gradient step leaves a valid filter** (also a step of SGD at lr = 100, or a float32 overflow
of a raw value to +-inf):

* centre ``= (sr/2) * (m + (1 - 2m) * sigmoid(raw_center))``, ``m = 1e-6``:  Hz, inside (0, sr/2)
* time spread ``= exp(soft_clamp(log_sigma_t, log lo_t, log hi_t))``:  seconds, in
  ``[lo_t, hi_t] = [0.1 sample, 2 * max(n_fft, hop_length) samples]`` (:attr:`LWVD.sigma_t_bounds_s`)
* bandwidth ``= exp(soft_clamp(log_sigma_nu, log lo_nu, log hi_nu))``:  Hz, in
  ``[lo_nu, hi_nu] = [0.1 WVD bin, sr/2]`` (one bin is ``sr / (2 n_fft)``; :attr:`LWVD.sigma_nu_bounds_hz`)
* tilt ``rho = RHO_MAX * tanh(raw_rho)``:  ``|rho| <= RHO_MAX < 1``

``soft_clamp(p, lo, hi) = lo + softplus(p - lo) - softplus(p - hi)`` (``_bounds.py``) is the identity
to within ``exp(-distance to the nearer bound)`` inside the range, so ``log_sigma_t`` and
``log_sigma_nu`` are the logs of the spreads wherever a filter normally lives, with the gradient of
a plain log parametrisation; near a bound the step shrinks smoothly to zero. The bounds are the
physically meaningful range: a time spread below a tenth of a sample or above twice the lag window
(or hop) and a bandwidth below a tenth of a WVD bin or above Nyquist describe no useful filter, and
an unbounded spread also makes the op's cost (which follows each filter's support) unbounded.
The op itself works in samples and cycles/sample; :meth:`LWVD.op_parameters` converts.

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
from ._bounds import inside, soft_clamp, soft_clamp_inverse
from .compression import COMPRESSIONS, make_compression

__all__ = ["LWVD", "RHO_MAX", "INITS", "FilterTable", "hz_to_mel", "mel_to_hz", "HEISENBERG_BOUND"]

# |rho| -> 1 makes the Gaussian degenerate (1/(1-rho^2) blows up); keep a margin.
RHO_MAX = 0.99
# sigma_t * sigma_nu (seconds x Hz, or samples x cycles/sample) of the WVD of any Gaussian window.
HEISENBERG_BOUND = 1.0 / (4.0 * math.pi)
# Band-covering filterbanks (bandwidth from the grid spacing), the window-bandwidth spectrograms
# (every filter the window's bandwidth: the plain Gaussian-window spectrogram at those centres), and
# the constant-Q scalogram.
INITS = ("mel", "linear", "geometric", "mel_window", "linear_window", "geometric_window", "cqt")
# Centres stay this fraction of Nyquist inside (0, sr/2) however far raw_center saturates.
_CENTER_MARGIN = 1e-6
# The band-covering inits keep each filter's support (|nu - centre| <= this many sigma_nu, the
# truncation ellipse's extent at zero time offset) inside [f_min, f_max] when truncate is None.
_SUPPORT_SIGMAS_UNTRUNCATED = 4.0
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
        f_min, f_max: Hz band of the initial filterbank (``0 <= f_min < f_max <= sr/2``;
            ``f_max=None`` means ``sr/2``). Centres sit at the middles of ``n_filters`` equal cells of
            the chosen scale, so none lies on ``f_min`` or ``f_max``; the band-covering inits shrink
            the cells' range until every filter's support lies inside ``[f_min, f_max]`` (below).
        init: the transform the untrained layer equals (all with ``rho = 0``):

            * ``"mel"`` (default), ``"linear"``, ``"geometric"``: a **band-covering filterbank**, like
              a mel filterbank's triangles: centres equally spaced on that scale, each bandwidth
              following the local spacing so that neighbours cross at half power
              (``sigma_nu = spacing / (2 sqrt(2 ln 2))``, FWHM = spacing), but never narrower than the
              window's (``sigma_nu >= 1 / (2 sqrt(2) pi s)``, ``s = window_seconds / 6``); time spread
              the window's (``sigma_t = s / sqrt(2)``). So every area ratio is >= 1: each filter is the
              Gaussian-window power spectrogram, exactly (area ratio 1, where the window's bandwidth
              already covers the spacing) or further smoothed along frequency by a Gaussian of
              variance ``sigma_nu^2 - sigma_nu_window^2`` (area ratio > 1) — non-negative either way.
              No filter's support (``|nu - centre| <= truncate * sigma_nu``; 4 sigma_nu when
              ``truncate=None``) reaches below ``f_min`` or above ``f_max``: the centres' range is
              shrunk until the outer supports end on those edges (the discrete WVD has no bins below
              0 Hz, and a Gaussian cut there is no longer a smoothing kernel: the output can go
              negative). A band too narrow for that raises a ValueError.
            * ``"mel_window"``, ``"linear_window"``, ``"geometric_window"``: the plain Gaussian-window
              power spectrogram (window ``window_seconds``) at centres on that scale over
              ``(f_min, f_max)``: every filter has the window's bandwidth, whatever the spacing (with
              few filters, most of the spectrum falls between them), and the lowest or highest
              filters' supports may reach past 0 Hz or Nyquist (there the output can be negative).
              With ``truncate=None`` and ``n_fft`` at least the window length in samples, the layer
              equals ``|STFT|^2`` with the unit-energy Gaussian window (SPEC §1).
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
        compression: ``None`` (the energy density ``K``), ``"log"`` (:class:`~lwvd_cuda.compression.Log`:
            ``log(max(K, 0) + floor)``, finite for any ``K``) or ``"pcen"`` (learnable per-channel
            :class:`~lwvd_cuda.compression.PCEN` as in LEAF), applied to the output; held in
            :attr:`compression` (its parameters, if any, are part of the module).
        compression_floor: the floor of ``"log"`` / ``"pcen"`` in the units of ``K`` (default 1e-6).
        min_area_ratio: ``None`` (default: any area ratio the bounds allow, sub-Heisenberg filters
            included) or a number ``a > 0``: every filter's bandwidth is read as
            ``max(sigma_nu, a / (4 pi sigma_t sqrt(1 - rho^2)))`` (capped at Nyquist), so its area
            ratio never drops below ``a``. With ``a >= 1`` every filter is a (chirped, smoothed)
            spectrogram and ``K >= 0`` everywhere: no negative values for a log or PCEN to floor.
            Where the floor is active the stored bandwidth gets no gradient (the floor's does, through
            ``sigma_t`` and ``rho``), as with any ``max``.

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
        compression: Optional[str] = None,
        compression_floor: Optional[float] = None,
        min_area_ratio: Optional[float] = None,
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
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if min_area_ratio is not None and (not _is_real_number(min_area_ratio) or min_area_ratio <= 0):
            raise ValueError(f"min_area_ratio must be None or a finite number > 0, got {min_area_ratio!r}")
        self.min_area_ratio = None if min_area_ratio is None else float(min_area_ratio)

        self.sample_rate = float(sample_rate)
        self.n_filters = int(n_filters)
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.f_min, self.f_max = float(f_min), float(f_max)
        self.truncate = truncate
        self.center = center
        self.init = init
        self.window_seconds = float(window_seconds)
        # Ranges the bounded maps keep the spreads in (module docstring), as (low, high).
        self.sigma_t_bounds_s = (0.1 / self.sample_rate, 2.0 * max(n_fft, hop_length) / self.sample_rate)
        self.sigma_nu_bounds_hz = (0.1 * self.sample_rate / (2.0 * n_fft), nyquist)

        self.raw_center = nn.Parameter(torch.zeros(self.n_filters))
        self.log_sigma_t = nn.Parameter(torch.zeros(self.n_filters))
        self.log_sigma_nu = nn.Parameter(torch.zeros(self.n_filters))
        self.raw_rho = nn.Parameter(torch.zeros(self.n_filters))

        self._q_factor_arg = q_factor
        self.q_factor: Optional[float] = None
        sigma_t = self.reset_parameters()
        self._warn_if_lag_window_short(sigma_t)
        self.compression = make_compression(compression, self.n_filters, compression_floor)

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
            window_std = self.window_seconds / 6.0  # seconds
            sigma_t = torch.full((n,), window_std / math.sqrt(2.0), dtype=torch.float64)
            window_sigma_nu = 1.0 / (2.0 * math.sqrt(2.0) * math.pi * window_std)
            if self.init.endswith("_window"):
                centers = self.grid(self.init[: -len("_window")], n, self.f_min, self.f_max)
                sigma_nu = torch.full((n,), window_sigma_nu, dtype=torch.float64)
            else:
                centers, sigma_nu = self._band_covering(self.init, window_sigma_nu)
        self.set_filters(centers, sigma_t, sigma_nu, torch.zeros(n, dtype=torch.float64))
        return sigma_t

    # ------------------------------------------------------------------ recipes
    @classmethod
    def for_speech(cls, n_filters: int = 80, sample_rate: float = 16000.0, **kwargs) -> "LWVD":
        """Speech front end: mel grid over [0, sr/2], 25 ms Gaussian window, 10 ms hop, n_fft 512 at 16 kHz.

        The untrained layer is a mel filterbank on a Gaussian-window power spectrogram (band-covering:
        neighbours cross at half power; pass ``compression="log"`` for a log-mel). ``n_fft`` scales with ``sample_rate`` (the next power of two >= the window
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

    def _band_covering(self, scale: str, min_sigma_nu: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres on ``scale`` and bandwidths ``max(spacing / FWHM, min_sigma_nu)``, supports inside [f_min, f_max].

        Solves for the cells' range ``(lo, hi)`` such that the lowest filter's support starts at
        ``f_min`` and the highest one's ends at ``f_max`` (a damped fixed-point iteration; both
        edges move monotonically with ``lo`` and ``hi``).
        """
        reach = _SUPPORT_SIGMAS_UNTRUNCATED if self.truncate is None else self.truncate
        lo, hi = self.f_min, self.f_max
        if scale == "geometric":
            lo = max(lo, 1e-3 * hi)
        # A step of 0.5 settles many filters in a few dozen iterations; with few filters each edge
        # moves with the other edge (the spacing is the whole band), so the step shrinks.
        step = 0.5 * self.n_filters / (self.n_filters + 2.0 * reach / _FWHM_PER_STD)
        for _ in range(2000):
            centers = self.grid(scale, self.n_filters, lo, hi)
            sigma_nu = (_local_spacing(centers, hi - lo) / _FWHM_PER_STD).clamp_min(min_sigma_nu)
            low_edge = float(centers[0] - reach * sigma_nu[0])
            high_edge = float(centers[-1] + reach * sigma_nu[-1])
            err_lo, err_hi = self.f_min - low_edge, high_edge - self.f_max
            if max(abs(err_lo), abs(err_hi)) <= 1e-9 * self.f_max:
                return centers, sigma_nu
            lo, hi = lo + step * err_lo, hi - step * err_hi
            if not (self.f_min <= lo < hi <= self.f_max):
                break
        raise ValueError(
            f"init={self.init!r}: {self.n_filters} filters at least {min_sigma_nu:.1f} Hz wide (the bandwidth of "
            f"window_seconds={self.window_seconds}) with supports of +-{reach:g} sigma_nu do not fit in "
            f"[f_min, f_max] = [{self.f_min}, {self.f_max}] Hz: widen the band, lengthen window_seconds, "
            f"or use init='{scale}_window'"
        )

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

        ``center_hz`` in ``[0, sr/2]`` (stored clamped to ``[2e-6, 1 - 2e-6] * sr/2``, inside the
        centre map's range), spreads inside :attr:`sigma_t_bounds_s` / :attr:`sigma_nu_bounds_hz`
        (a value on a bound is stored a hair inside it), ``|rho| <= RHO_MAX``.
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
        # float32 read-backs of values on a bound may sit a rounding outside it (the log of the bound
        # is rounded to float32: ~1e-6 relative after exp): allow 1e-5 relative.
        for name, (lo, hi), hint in (
            ("sigma_t_s", self.sigma_t_bounds_s, "0.1 sample .. 2 max(n_fft, hop_length) samples"),
            ("sigma_nu_hz", self.sigma_nu_bounds_hz, "0.1 WVD bin (sr / (2 n_fft)) .. sample_rate / 2"),
        ):
            if bool(((vals[name] < lo * (1 - 1e-5)) | (vals[name] > hi * (1 + 1e-5))).any()):
                raise ValueError(
                    f"{name} must lie in [{lo:.4g}, {hi:.4g}] ({hint}), got [{vals[name].min().item():.4g}, "
                    f"{vals[name].max().item():.4g}]"
                )
        # A float32 0.99 reads back as 0.9900000095: allow float32 rounding above RHO_MAX (then clamped).
        if bool((vals["rho"].abs() > RHO_MAX * (1 + 1e-6)).any()):
            raise ValueError(f"rho must lie in [-{RHO_MAX}, {RHO_MAX}] (RHO_MAX), got max |rho| = {vals['rho'].abs().max().item()}")
        m = _CENTER_MARGIN
        c = (vals["center_hz"] / nyq).clamp(2 * m, 1 - 2 * m)
        self.raw_center.copy_(_logit((c - m) / (1 - 2 * m)))
        for param, name, (lo, hi) in (
            (self.log_sigma_t, "sigma_t_s", self.sigma_t_bounds_s),
            (self.log_sigma_nu, "sigma_nu_hz", self.sigma_nu_bounds_hz),
        ):
            lo, hi = math.log(lo), math.log(hi)
            param.copy_(soft_clamp_inverse(inside(torch.log(vals[name]), lo, hi), lo, hi))
        # |rho| = RHO_MAX exactly (what a saturated tanh reads back as) maps to a large finite raw value.
        self.raw_rho.copy_(torch.atanh((vals["rho"] / RHO_MAX).clamp(-1 + 1e-12, 1 - 1e-12)))

    # Physical views of the parameters (differentiable).
    @property
    def center_hz(self) -> torch.Tensor:
        m = _CENTER_MARGIN
        return (self.sample_rate / 2.0) * (m + (1.0 - 2.0 * m) * torch.sigmoid(self.raw_center))

    @property
    def sigma_t_seconds(self) -> torch.Tensor:
        lo, hi = self.sigma_t_bounds_s
        return torch.exp(soft_clamp(self.log_sigma_t, math.log(lo), math.log(hi)))

    @property
    def sigma_nu_hz(self) -> torch.Tensor:
        lo, hi = self.sigma_nu_bounds_hz
        nu = torch.exp(soft_clamp(self.log_sigma_nu, math.log(lo), math.log(hi)))
        if self.min_area_ratio is None:
            return nu
        # The bandwidth at which the area ratio equals min_area_ratio for this sigma_t and rho.
        floor = self.min_area_ratio * HEISENBERG_BOUND / (self.sigma_t_seconds * torch.sqrt((1.0 - self.rho) * (1.0 + self.rho)))
        return torch.maximum(nu, floor.clamp(max=hi))

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

    def filter_parameters(self) -> list[nn.Parameter]:
        """The four per-filter parameter tensors (not the compression's)."""
        return [self.raw_center, self.log_sigma_t, self.log_sigma_nu, self.raw_rho]

    def parameter_groups(self, lr: float, filter_lr_scale: float = 10.0) -> list[dict]:
        """Optimizer parameter groups: the filters at ``lr * filter_lr_scale``, the compression at ``lr``.

        Why: Adam moves each raw parameter about ``lr`` per step whatever its gradient's size, and the
        filters have only four raw numbers each, on scales of order 1 (a log spread, a logit centre,
        an atanh tilt), where a head's weights need steps of ``lr``. At ``lr = 1e-3`` for 1000 steps
        a filter can move at most ~1 unit (a factor e in spread); with noisy gradients the typical
        move is a few hundredths, i.e. nothing visible. Ten times the head's rate lets the filters
        move measurably while the bounded maps keep any step valid. Use as
        ``torch.optim.Adam(layer.parameter_groups(lr) + [{"params": head.parameters()}], lr=lr)``.

        Moving is not the same as helping: on the project's spoken digits with converged heads at
        ``lr = 5e-3`` (README, "Does it learn?"), filters at 10x read 55.0 % against 57.4 % at 1x and
        63.3 % at 0.1x (the frozen init: 63.2 %). The 10x default is for the paper's small rates
        (<= 1e-3); at larger rates pass ``filter_lr_scale=1`` or less.
        """
        if not _is_real_number(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not _is_real_number(filter_lr_scale) or filter_lr_scale <= 0:
            raise ValueError(f"filter_lr_scale must be a finite number > 0, got {filter_lr_scale!r}")
        groups = [{"params": self.filter_parameters(), "lr": lr * filter_lr_scale, "name": "lwvd_filters"}]
        if self.compression is not None and any(True for _ in self.compression.parameters()):
            groups.append({"params": list(self.compression.parameters()), "lr": lr, "name": "lwvd_compression"})
        return groups

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
        # (autocast knows cpu and cuda only: a meta x must reach analytic_signal's own check.)
        with torch.autocast(device_type="cuda" if x.is_cuda else "cpu", enabled=False):
            z = functional.analytic_signal(x.to(real))
            z, frames = _align_frames(z, self.n_fft, self.hop_length, self.center)
            c, st, sn, r = (p.to(real) for p in self.op_parameters())
            out = functional.lwvd(z, c, st, sn, r, n_fft=self.n_fft, hop_length=self.hop_length, truncate=self.truncate,
                                  method=self.method, rtol=self.rtol)
            if frames is not None:
                out = out[..., frames]
            return out if self.compression is None else self.compression(out)

    def extra_repr(self) -> str:
        q = f", q_factor={self.q_factor:.3g}" if self.q_factor is not None else ""
        return (
            f"sample_rate={self.sample_rate}, n_filters={self.n_filters}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, f_min={self.f_min}, f_max={self.f_max}, init={self.init!r}{q}, "
            f"truncate={self.truncate}" + ("" if self.center else ", center=False")
            + (f", method={self.method!r}, rtol={self.rtol:g}" if self.method != "exact" else "")
            + (f", min_area_ratio={self.min_area_ratio:g}" if self.min_area_ratio is not None else "")
        )


def _local_spacing(centers: torch.Tensor, band: float) -> torch.Tensor:
    """Per-filter spacing to the neighbours: central difference inside, one-sided at the ends (``band`` for one filter)."""
    n = centers.shape[0]
    if n == 1:
        return torch.full((1,), float(band), dtype=centers.dtype)
    gaps = centers[1:] - centers[:-1]
    return torch.cat([gaps[:1], 0.5 * (gaps[1:] + gaps[:-1]), gaps[-1:]])


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
