"""Compression of an energy map ``K`` ``(..., F, T)``: a floored log and a learnable per-channel PCEN.

Why a floor, and why ``max(K, 0)``: ``LWVD`` outputs an energy density that is >= 0 while every filter
is at or above the Heisenberg bound, but a learned sub-Heisenberg filter (area ratio < 1, the
"super-resolution" regime) may output negative values, and silence outputs exact zeros. A plain
``log(K + 1e-6)`` is then NaN or -inf. Both compressions below read ``max(K, 0)``, so they are finite
for every finite ``K`` (negative, zero, or as large as the dtype holds), with finite gradients:

* :class:`Log`: ``log(max(K, 0) + floor)``, values ``>= log(floor)``, gradient ``<= 1 / floor``.
* :class:`PCEN`: per-channel energy normalisation as in LEAF (Zeghidour et al., 2021):
  ``M_t = (1 - s) M_{t-1} + s E_t`` (``M_0 = E_0``), ``PCEN = (E / (floor + M)^alpha + delta)^(1/r) - delta^(1/r)``
  with ``E = max(K, 0)`` and learnable per-channel ``alpha, delta, r, s``, each stored unconstrained
  and read through a bounded map (so any finite optimiser step leaves a valid PCEN):
  ``alpha`` in (0, 1), ``delta`` in [1e-2, 1e2], ``r`` in [1, 10], ``s`` in [1e-3, 0.5].

The floors are in the units of ``K``. ``LWVD``'s ``K`` is an energy density of the input: for a
waveform scaled to a peak of about 1, speech frames read about 1e-5..1e-1 and the default
``floor=1e-6`` sits below them; rescale the floor with the input (``K`` scales with its square).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import nn

from ._bounds import soft_clamp, soft_clamp_inverse

__all__ = ["Log", "PCEN", "COMPRESSIONS", "make_compression"]

COMPRESSIONS = (None, "log", "pcen")

# PCEN bounds (lo, hi) in natural units; the per-channel values are soft-clamped in log space.
_PCEN_BOUNDS = {"delta": (1e-2, 1e2), "root": (1.0, 10.0), "smooth": (1e-3, 0.5)}
# Above this many frames the EMA runs as a recurrence instead of one (F, T, T) weight tensor.
_EMA_MATRIX_MAX_FRAMES = 1024


def _check_floor(floor) -> float:
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not math.isfinite(floor) or floor <= 0:
        raise ValueError(f"floor must be a finite number > 0, got {floor!r}")
    return float(floor)


class Log(nn.Module):
    """``log(max(K, 0) + floor)``: finite for every finite ``K`` (also negative), gradient <= 1/floor."""

    def __init__(self, floor: float = 1e-6):
        super().__init__()
        self.floor = _check_floor(floor)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return torch.log(k.clamp_min(0.0) + self.floor)

    def extra_repr(self) -> str:
        return f"floor={self.floor:g}"


class PCEN(nn.Module):
    """Learnable per-channel energy normalisation (LEAF's), on ``(..., F, T)`` with ``F = n_channels``.

    Defaults are LEAF's initial values (alpha 0.96, delta 2, root 2, smoothing 0.04). The smoother is
    a first-order IIR filter along time, evaluated exactly (as one weighted sum per frame for up to
    1024 frames, else as the recurrence), in float64 on CPU (float32 energies near 3e38 would
    overflow its gradient); the result has the input's dtype.
    """

    def __init__(
        self,
        n_channels: int,
        alpha: float = 0.96,
        delta: float = 2.0,
        root: float = 2.0,
        smooth_coef: float = 0.04,
        floor: float = 1e-6,
        learnable: bool = True,
    ):
        super().__init__()
        if isinstance(n_channels, bool) or not isinstance(n_channels, numbers.Integral) or n_channels < 1:
            raise ValueError(f"n_channels must be an int >= 1, got {n_channels!r}")
        if not (isinstance(alpha, numbers.Real) and 0.0 < alpha < 1.0):
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
        self.n_channels = int(n_channels)
        self.floor = _check_floor(floor)
        init = {"delta": delta, "root": root, "smooth": smooth_coef}
        raw = {}
        for name, value in init.items():
            lo, hi = _PCEN_BOUNDS[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo < value < hi:
                arg = "smooth_coef" if name == "smooth" else name
                raise ValueError(f"{arg} must lie in ({lo}, {hi}), got {value!r}")
            raw[name] = float(soft_clamp_inverse(torch.tensor(math.log(value), dtype=torch.float64), math.log(lo), math.log(hi)))
        a = torch.full((self.n_channels,), math.log(alpha) - math.log1p(-alpha))
        tensors = {
            "raw_alpha": a,
            "raw_log_delta": torch.full((self.n_channels,), raw["delta"]),
            "raw_log_root": torch.full((self.n_channels,), raw["root"]),
            "raw_log_smooth": torch.full((self.n_channels,), raw["smooth"]),
        }
        for name, t in tensors.items():
            if learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    # Physical views (differentiable), each (F,).
    def _bounded(self, raw: torch.Tensor, name: str) -> torch.Tensor:
        lo, hi = _PCEN_BOUNDS[name]
        return torch.exp(soft_clamp(raw, math.log(lo), math.log(hi)))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.raw_alpha)

    @property
    def delta(self) -> torch.Tensor:
        return self._bounded(self.raw_log_delta, "delta")

    @property
    def root(self) -> torch.Tensor:
        return self._bounded(self.raw_log_root, "root")

    @property
    def smooth_coef(self) -> torch.Tensor:
        return self._bounded(self.raw_log_smooth, "smooth")

    def smoother(self, e: torch.Tensor) -> torch.Tensor:
        """``M_t = (1 - s) M_{t-1} + s E_t``, ``M_0 = E_0``, along the last axis of ``e`` ``(..., F, T)``."""
        s = self.smooth_coef.to(e.dtype)
        t_count = e.shape[-1]
        if t_count > _EMA_MATRIX_MAX_FRAMES:
            out = [e[..., 0]]
            for t in range(1, t_count):
                out.append((1 - s) * out[-1] + s * e[..., t])
            return torch.stack(out, dim=-1)
        # M_t = sum_j w[t, j] E_j with w[t, j] = s (1-s)^(t-j) for 1 <= j <= t, w[t, 0] = (1-s)^t.
        t = torch.arange(t_count, device=e.device, dtype=e.dtype)
        lag = (t[:, None] - t[None, :]).clamp_min(0)  # (T, T)
        decay = torch.exp(lag[None] * torch.log1p(-s)[:, None, None])  # (F, T, T); s <= 0.5: log1p finite
        causal = (t[:, None] >= t[None, :]).to(e.dtype)
        first = torch.zeros(t_count, dtype=e.dtype, device=e.device)
        first[0] = 1.0
        w = decay * causal * torch.where(first.bool()[None, None, :], torch.ones_like(s)[:, None, None], s[:, None, None])
        return torch.einsum("...fj,ftj->...ft", e, w)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        if k.shape[-2] != self.n_channels:
            raise ValueError(f"k: expected {self.n_channels} channels at dim -2, got shape {tuple(k.shape)}")
        # float64 inside: the smoother's gradient multiplies energies by decay derivatives, which
        # overflows float32 for energies near its maximum (3e38) and would give inf * 0 = NaN.
        wide = torch.float64 if k.device.type == "cpu" or k.dtype == torch.float64 else torch.float32
        e = k.to(wide).clamp_min(0.0)
        m = self.smoother(e)
        alpha, delta = self.alpha.to(wide)[:, None], self.delta.to(wide)[:, None]
        inv_root = 1.0 / self.root.to(wide)[:, None]
        out = (e / (self.floor + m) ** alpha + delta) ** inv_root - delta**inv_root
        return out.to(k.dtype)

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, floor={self.floor:g}"


def make_compression(kind: Optional[str], n_channels: int, floor: Optional[float] = None) -> Optional[nn.Module]:
    """``None`` -> ``None``; ``"log"`` -> :class:`Log`; ``"pcen"`` -> :class:`PCEN` of ``n_channels``."""
    if kind is None:
        return None
    kw = {} if floor is None else {"floor": floor}
    if kind == "log":
        return Log(**kw)
    if kind == "pcen":
        return PCEN(n_channels, **kw)
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {kind!r}")
