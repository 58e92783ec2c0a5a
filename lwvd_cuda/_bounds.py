"""Smooth bounded maps for parameters that must stay valid under any finite gradient step.

``soft_clamp(p, lo, hi) = lo + softplus(p - lo) - softplus(p - hi)`` is monotone, equals ``p`` to
within ``exp(-distance to the nearer bound)`` in the interior, and tends to ``lo`` / ``hi`` as
``p -> -inf`` / ``+inf``. So a parameter stored as ``p`` and read as ``exp(soft_clamp(p, log a,
log b))`` keeps the gradient of a plain ``exp(p)`` where it matters and can never leave ``[a, b]``,
whatever step an optimiser takes (also ``p = +-inf`` after a float32 overflow).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Beyond this many units outside a bound the soft clamp equals the bound to exp(-30) ~ 1e-13: a hard
# clamp there first keeps softplus(p - lo) - softplus(p - hi) free of cancellation for huge |p|.
_SATURATED = 30.0


def soft_clamp(p: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``lo + softplus(p - lo) - softplus(p - hi)``: smooth, monotone, in ``[lo, hi]`` for any ``p`` but NaN."""
    p = p.clamp(lo - _SATURATED, hi + _SATURATED)
    return lo + F.softplus(p - lo) - F.softplus(p - hi)


def soft_clamp_inverse(y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The ``p`` with ``soft_clamp(p, lo, hi) == y`` for ``lo < y < hi`` (float64 recommended).

    ``exp(y - lo) = (1 + exp(p - lo)) / (1 + exp(p - hi))`` solved for ``exp(p)``.
    """
    return lo + torch.log(torch.expm1(y - lo)) - torch.log(-torch.expm1(y - hi))


def inside(y: torch.Tensor, lo: float, hi: float, margin: float = 1e-9) -> torch.Tensor:
    """``y`` moved just inside ``(lo, hi)`` so that :func:`soft_clamp_inverse` is finite."""
    span = (hi - lo) * margin
    return y.clamp(lo + span, hi - span)
