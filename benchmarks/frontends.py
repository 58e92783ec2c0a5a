"""Front ends compared by ``benchmarks/accuracy.py``: waveform ``(B, N)`` -> energy map ``U`` ``(B, F, T)``.

Each front end is split into a ``fixed`` stage (no parameters; evaluated once per clip and cached by
the harness) and a ``learned`` stage (run every step), so a frozen front end costs one pass over the
data, not one per step. All share the band (``f_min``..``f_max``), the number of filters, the hop,
and — where a window applies — the Gaussian window of std ``window_seconds / 6`` that the LWVD's
init uses, so that at initialisation they are as alike as their families allow.

* ``spectrogram``: the ``LWVD`` layer at its init, frozen (a band-covering Gaussian-window mel
  spectrogram: SPEC §1's identity, frequency-smoothed where the mel spacing is wider than the window's
  bandwidth). Entirely ``fixed``.
* ``lwvd``: the same layer, learned.
* ``lwvd_nonneg``: the same layer, learned with ``min_area_ratio=1``: every filter stays at or above
  the Heisenberg bound, so ``K >= 0`` (no sub-Heisenberg filter whose negative values the log floors).
* ``mel``: a learnable mel filterbank: ``|STFT|^2`` with the same Gaussian window (zero-padded to 4x
  the window's power of two, so the low triangles span several bins; fixed) times a free
  ``(F, bins)`` matrix initialised to HTK mel triangles over the band (learned, as nnAudio's
  ``trainable_mel``; entries may go negative — the compression floors the result).
* ``sinc``: SincNet-style band-pass filters (learnable low cut-off and bandwidth, Hann-apodised, unit
  L2 norm), mel-spaced at init; energy = squared output averaged over ``2 hop`` around each frame.
* ``gabor``: a learnable complex Gabor (Morlet) bank as in LEAF's filters: learnable centre and
  Gaussian time std, initialised to the LWVD's centres and window; energy = squared modulus averaged
  like ``sinc``.
* ``leaf``: SpeechBrain's ``Leaf`` (learnable Gabor filters + learnable Gaussian low-pass pooling),
  built with ``use_pcen=False`` so that the heads apply the same compression to it as to the rest;
  only when ``speechbrain`` imports.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from lwvd_cuda import LWVD
from lwvd_cuda.modules import hz_to_mel, mel_to_hz

FRONTENDS = ("spectrogram", "lwvd", "lwvd_nonneg", "mel", "sinc", "gabor", "leaf")


def leaf_available() -> Optional[str]:
    """None when SpeechBrain's Leaf imports, else the reason."""
    try:
        from speechbrain.lobes.features import Leaf  # noqa: F401
    except Exception as e:  # ImportError, or a broken torchaudio/speechbrain pairing
        return f"{type(e).__name__}: {e}"
    return None


def _odd(n: float) -> int:
    n = int(round(n))
    return n + 1 - n % 2


def _energy_frames(y2: torch.Tensor, hop: int) -> torch.Tensor:
    """``(B, F, N)`` squared outputs -> ``(B, F, 1 + N // hop)`` means over ``2 hop`` samples around ``t hop``."""
    return F.avg_pool1d(y2, kernel_size=2 * hop, stride=hop, padding=hop, count_include_pad=True)


class FrontEnd(nn.Module):
    """Base: ``forward(x) = learned(fixed(x))``; ``snapshot()`` returns the filters' physical numbers."""

    name = "frontend"

    def fixed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def learned(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learned(self.fixed(x))

    @property
    def has_fixed_stage(self) -> bool:
        return type(self).fixed is not FrontEnd.fixed

    def snapshot(self) -> dict:
        return {}


class LWVDFrontEnd(FrontEnd):
    """The LWVD layer, learned (``frozen=False``) or frozen at its init (``frozen=True``: the spectrogram)."""

    def __init__(self, layer: LWVD, frozen: bool, name: Optional[str] = None):
        super().__init__()
        self.layer = layer
        self.frozen = frozen
        self.name = name or ("spectrogram" if frozen else "lwvd")
        if frozen:
            self.layer.requires_grad_(False)

    def fixed(self, x):
        if self.frozen:
            with torch.no_grad():
                return self.layer(x)
        return x

    def learned(self, h):
        return h if self.frozen else self.layer(h)

    @property
    def has_fixed_stage(self) -> bool:
        return self.frozen

    def snapshot(self) -> dict:
        lay = self.layer
        return {k: v.detach().double().cpu() for k, v in dict(
            center_hz=lay.center_hz, time_spread_s=lay.sigma_t_seconds, bandwidth_hz=lay.sigma_nu_hz,
            rho=lay.rho, area_ratio=lay.area_ratio).items()}


def gaussian_window(n_fft: int, std_samples: float) -> torch.Tensor:
    """Unit-energy Gaussian window of ``n_fft`` samples centred at ``n_fft // 2`` (torch.stft's centre)."""
    j = torch.arange(n_fft, dtype=torch.float64) - n_fft // 2
    g = torch.exp(-(j**2) / (2 * std_samples**2))
    return (g / g.norm()).float()


def mel_triangles(n_bins: int, sample_rate: float, n_filters: int, f_min: float, f_max: float) -> torch.Tensor:
    """HTK mel triangles ``(F, n_bins)`` (peak 1) on the bins ``k sr / (2 (n_bins - 1))`` of an rfft."""
    freqs = torch.linspace(0, sample_rate / 2, n_bins, dtype=torch.float64)
    m = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_filters + 2, dtype=torch.float64)
    edges = torch.tensor([mel_to_hz(v) for v in m.tolist()], dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class LearnableMel(FrontEnd):
    name = "mel"

    def __init__(self, sample_rate, n_filters, hop, window_seconds, f_min, f_max):
        super().__init__()
        std = window_seconds / 6.0 * sample_rate
        # Zero-padded 4x beyond the window: 40 mel triangles at 8 kHz are ~30 Hz apart at the bottom,
        # narrower than the 62.5 Hz bins of an unpadded 128-sample window (empty, duplicated filters).
        self.n_fft = 4 << math.ceil(math.log2(max(8.0, window_seconds * sample_rate)))
        self.hop = hop
        self.register_buffer("window", gaussian_window(self.n_fft, std))
        self.weight = nn.Parameter(mel_triangles(self.n_fft // 2 + 1, sample_rate, n_filters, f_min, f_max))
        self.sample_rate = sample_rate

    def fixed(self, x):
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        return spec.abs() ** 2  # (B, bins, T)

    def learned(self, p):
        return torch.einsum("fk,bkt->bft", self.weight, p)

    def snapshot(self) -> dict:
        w = self.weight.detach().double().cpu()
        freqs = torch.linspace(0, self.sample_rate / 2, w.shape[1], dtype=torch.float64)
        pos = w.clamp_min(0)
        center = (pos * freqs).sum(1) / pos.sum(1).clamp_min(1e-12)
        return dict(center_hz=center, weight=w)


class SincBank(FrontEnd):
    """SincNet band-pass bank: ``f1 = f_min + |low|``, ``f2 = f1 + min_band + |band|``, Hann-apodised, unit norm.

    ``low`` and ``band`` are stored in units of the sample rate (SincNet's first release; its later
    Hz parameters move by ~lr Hz per Adam step, i.e. not at all at lr 1e-3).
    """

    name = "sinc"
    min_band_hz = 50.0

    def __init__(self, sample_rate, n_filters, hop, window_seconds, f_min, f_max):
        super().__init__()
        self.sample_rate, self.hop = float(sample_rate), hop
        self.kernel_size = _odd(window_seconds * sample_rate)
        m = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_filters + 1, dtype=torch.float64)
        edges = torch.tensor([mel_to_hz(v) for v in m.tolist()], dtype=torch.float64)
        self.f_floor = float(f_min)
        self.low = nn.Parameter(((edges[:-1] - f_min) / self.sample_rate).float())
        self.band = nn.Parameter(((edges[1:] - edges[:-1] - self.min_band_hz).clamp_min(1.0) / self.sample_rate).float())
        n = (torch.arange(self.kernel_size, dtype=torch.float32) - (self.kernel_size - 1) / 2) / self.sample_rate
        self.register_buffer("t", n)
        self.register_buffer("apod", torch.hann_window(self.kernel_size, periodic=False))

    def cutoffs(self):
        """(f1, f2) in Hz."""
        # The low cut-off is kept min_band_hz below Nyquist: SincNet clamps only the high one, so a low
        # cut-off trained past Nyquist - min_band gave f2 < f1, a negative band (a sign-flipped filter).
        nyq = self.sample_rate / 2
        f1 = (self.f_floor + self.sample_rate * self.low.abs()).clamp(max=nyq - self.min_band_hz)
        f2 = (f1 + self.min_band_hz + self.sample_rate * self.band.abs()).clamp(max=nyq)
        return f1, f2

    def filters(self):
        f1, f2 = self.cutoffs()
        t = self.t[None]
        h = 2 * f2[:, None] * torch.sinc(2 * f2[:, None] * t) - 2 * f1[:, None] * torch.sinc(2 * f1[:, None] * t)
        h = h * self.apod[None]
        return h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def learned(self, x):
        y = F.conv1d(x[:, None], self.filters()[:, None], padding=self.kernel_size // 2)
        return _energy_frames(y * y, self.hop)

    def snapshot(self) -> dict:
        f1, f2 = (v.detach().double().cpu() for v in self.cutoffs())
        return dict(center_hz=(f1 + f2) / 2, bandwidth_hz=f2 - f1)


class GaborBank(FrontEnd):
    """Complex Gabor filters ``exp(2 i pi c t) exp(-t^2 / (2 s^2))``, unit norm; learnable ``c`` (Hz) and ``s`` (s)."""

    name = "gabor"

    def __init__(self, sample_rate, n_filters, hop, window_seconds, centers_hz):
        super().__init__()
        self.sample_rate, self.hop = float(sample_rate), hop
        self.kernel_size = _odd(window_seconds * sample_rate)
        nyq = self.sample_rate / 2
        c = torch.as_tensor(centers_hz, dtype=torch.float64) / nyq
        self.raw_center = nn.Parameter(torch.log(c / (1 - c)).float())
        self.log_std_s = nn.Parameter(torch.full((n_filters,), math.log(window_seconds / 6.0)))
        n = (torch.arange(self.kernel_size, dtype=torch.float32) - (self.kernel_size - 1) / 2) / self.sample_rate
        self.register_buffer("t", n)
        # The kernel holds +-(kernel_size / 2) samples: keep the std within a third of that.
        self.max_std_s = (self.kernel_size / 2) / 3 / self.sample_rate
        self.min_std_s = 1.0 / self.sample_rate

    def params(self):
        c = self.sample_rate / 2 * torch.sigmoid(self.raw_center)
        s = torch.exp(self.log_std_s).clamp(self.min_std_s, self.max_std_s)
        return c, s

    def learned(self, x):
        c, s = self.params()
        t = self.t[None]
        env = torch.exp(-(t**2) / (2 * s[:, None] ** 2))
        re, im = env * torch.cos(2 * math.pi * c[:, None] * t), env * torch.sin(2 * math.pi * c[:, None] * t)
        norm = torch.sqrt((re**2 + im**2).sum(1, keepdim=True)).clamp_min(1e-12)
        k = torch.cat([re / norm, im / norm])[:, None]
        y = F.conv1d(x[:, None], k, padding=self.kernel_size // 2)
        n_f = c.shape[0]
        return _energy_frames(y[:, :n_f] ** 2 + y[:, n_f:] ** 2, self.hop)

    def snapshot(self) -> dict:
        c, s = (v.detach().double().cpu() for v in self.params())
        return dict(center_hz=c, time_spread_s=s)


class LeafFrontEnd(FrontEnd):
    name = "leaf"

    def __init__(self, sample_rate, n_filters, hop, window_seconds, f_min):
        super().__init__()
        from speechbrain.lobes.features import Leaf

        self.leaf = Leaf(out_channels=n_filters, window_len=1000 * window_seconds, window_stride=1000 * hop / sample_rate,
                         sample_rate=int(sample_rate), in_channels=1, min_freq=max(f_min, 1.0), use_pcen=False,
                         skip_transpose=True)

    def learned(self, x):
        return self.leaf(x[:, None])  # (B, F, T')


def build(name: str, *, sample_rate: float, n_filters: int, n_fft: int, hop: int, window_seconds: float,
          f_min: float, f_max: float, truncate: Optional[float] = 4.0) -> FrontEnd:
    """One front end by name (``FRONTENDS``), all with the same band, filter count, hop and window."""
    if name in ("spectrogram", "lwvd", "lwvd_nonneg"):
        layer = LWVD(sample_rate, n_filters, n_fft=n_fft, hop_length=hop, f_min=f_min, f_max=f_max,
                     init="mel", window_seconds=window_seconds, truncate=truncate,
                     min_area_ratio=1.0 if name == "lwvd_nonneg" else None)
        return LWVDFrontEnd(layer, frozen=(name == "spectrogram"), name=name)
    if name == "mel":
        return LearnableMel(sample_rate, n_filters, hop, window_seconds, f_min, f_max)
    if name == "sinc":
        return SincBank(sample_rate, n_filters, hop, window_seconds, f_min, f_max)
    if name == "gabor":
        ref = LWVD(sample_rate, n_filters, n_fft=n_fft, hop_length=hop, f_min=f_min, f_max=f_max,
                   init="mel", window_seconds=window_seconds, truncate=truncate)
        return GaborBank(sample_rate, n_filters, hop, window_seconds, ref.center_hz.detach())
    if name == "leaf":
        why = leaf_available()
        if why is not None:
            raise RuntimeError(f"leaf: SpeechBrain's Leaf is not importable ({why})")
        return LeafFrontEnd(sample_rate, n_filters, hop, window_seconds, f_min)
    raise ValueError(f"front end must be one of {FRONTENDS}, got {name!r}")
