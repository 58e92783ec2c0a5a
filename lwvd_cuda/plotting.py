"""Pictures of what an ``LWVD`` layer learned, in physical units (seconds, Hz).

matplotlib is imported inside the functions, so ``import lwvd_cuda`` never needs it.

* :func:`plot_filters` — each filter's Gaussian as an ellipse on the time-frequency plane, coloured by
  its area against the Heisenberg bound (blue below: super-resolution; grey on it: a spectrogram or
  chirplet window; red above: smoother than any window).
* :func:`plot_lwvd` — a signal's LWVD as an image, one row per filter at its centre frequency.

Both draw into ``ax=`` when given, else into a new figure laid out with matplotlib's constrained
layout (so no label is clipped), and return the ``Figure`` (``fig.axes[0]`` is the plot).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["filter_ellipses", "plot_filters", "plot_lwvd"]

# Ellipse outlines are drawn in a darker shade of their fill: the colour of a filter on the bound
# (area ratio 1, every filter of an untrained layer) is the near-white middle of the colour map.
_EDGE_SHADE = 0.55


def _new_axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    fig = plt.figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


@torch.no_grad()
def filter_ellipses(module, n_sigma: float = 1.0, n_points: int = 100) -> torch.Tensor:
    """Outline of each filter's ``n_sigma`` ellipse: ``(F, n_points, 2)`` float64 (seconds, Hz).

    The ellipse ``{(t, f): q <= n_sigma^2}`` of the Gaussian with covariance
    ``[[st^2, rho st sn], [rho st sn, sn^2]]``, centred on (0 s, centre Hz). Traced as
    ``mean + n_sigma * L (cos a, sin a)`` with ``L`` the Cholesky factor of the covariance, so it is
    exact in data coordinates whatever the axes' aspect ratio (a matplotlib ``Ellipse`` patch with an
    angle is not, on axes whose units differ by 10^5).
    """
    st = module.sigma_t_seconds.detach().double().cpu()
    sn = module.sigma_nu_hz.detach().double().cpu()
    r = module.rho.detach().double().cpu()
    c = module.center_hz.detach().double().cpu()
    a = torch.linspace(0.0, 2.0 * math.pi, n_points, dtype=torch.float64)
    u, w = torch.cos(a)[None, :], torch.sin(a)[None, :]
    # L = [[st, 0], [rho sn, sn sqrt(1 - rho^2)]]
    t = n_sigma * st[:, None] * u
    f = c[:, None] + n_sigma * sn[:, None] * (r[:, None] * u + torch.sqrt(1.0 - r * r)[:, None] * w)
    return torch.stack([t, f], dim=-1)


def plot_filters(
    module,
    ax=None,
    n_sigma: float = 1.0,
    title: Optional[str] = None,
    colorbar: bool = True,
    relative: bool = False,
    chirp_rates: Optional[Sequence[float]] = None,
):
    """Draw every filter of ``module`` as its ``n_sigma`` ellipse (default 1 std; use
    ``module.truncate`` for the truncation ellipse) at time offset 0 and its centre frequency.

    A tilted ellipse follows a chirp: rising to the right (``rho > 0``) for up-sweeps. The colour is
    the area ratio ``sigma_t sigma_nu sqrt(1 - rho^2) / (1/(4 pi))`` on a log scale centred on 1
    (blue: sub-Heisenberg; grey: a spectrogram / chirplet window; red: smoother).

    ``relative=True`` draws every ellipse around its own centre (frequency offset in Hz on the y
    axis): tilts of a few Hz per ms are invisible on a 0..Nyquist axis but clear there.
    ``chirp_rates`` (Hz/s) adds dashed reference lines ``f = rate * t`` through the centres
    (e.g. the sweep rates in the data, to compare the learned tilts with).

    Each filter also gets a dot at its centre: a spectrogram-init filter (a 25 ms window is about
    30 Hz tall) is a thin sliver on a 0..Nyquist axis, and the dot keeps it visible. Returns the
    ``Figure`` (draws into ``ax`` when given).
    """
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    ax = _new_axes(ax, (5.5, 4.2))
    outline = filter_ellipses(module, n_sigma)
    if relative:
        outline[..., 1] -= module.center_hz.detach().double().cpu()[:, None]
    ratio = module.area_ratio.detach().double().cpu()
    span = max(2.0, float(torch.exp(torch.log(ratio).abs().max())))
    norm = colors.LogNorm(vmin=1.0 / span, vmax=span)
    cmap = plt.get_cmap("coolwarm")
    order = torch.argsort(ratio, descending=True)  # small (sharp) ellipses drawn last, on top
    centres = [0.0] * outline.shape[0] if relative else module.center_hz.detach().double().cpu().tolist()
    for i in order.tolist():
        col = cmap(norm(float(ratio[i])))
        edge = tuple(_EDGE_SHADE * c for c in col[:3])
        ax.fill(outline[i, :, 0] * 1e3, outline[i, :, 1], facecolor=col, alpha=0.3 if relative else 0.45, edgecolor=edge,
                linewidth=1.3)
        ax.plot([0.0], [centres[i]], "o", ms=2.5, color=edge, zorder=3)
    if chirp_rates is not None:
        t_max = float(outline[..., 0].abs().max())
        tt = torch.tensor([-t_max, t_max], dtype=torch.float64)
        centres = [0.0] if relative else module.center_hz.detach().double().cpu().tolist()
        for rate in chirp_rates:
            for c in centres:
                ax.plot((tt * 1e3).tolist(), (c + rate * tt).tolist(), "--", color="0.3", linewidth=0.8)
    ax.set_xlabel("time offset from the frame centre (ms)")
    ax.set_ylabel("frequency offset from the centre (Hz)" if relative else "frequency (Hz)")
    if not relative:
        ax.set_ylim(0, module.sample_rate / 2)
    ax.set_title(title if title is not None else f"{outline.shape[0]} filters, {n_sigma:g}-sigma ellipses")
    if colorbar:
        plt.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="area / Heisenberg bound")
    return ax.figure


@torch.no_grad()
def plot_lwvd(module, x: torch.Tensor, ax=None, db: bool = True, dynamic_range_db: float = 60.0, title: Optional[str] = None):
    """Plot ``module(x)`` for one real signal ``x`` ``(N,)`` as an image (seconds x Hz).

    Rows are drawn at the filters' centre frequencies (sorted; each row spans half-way to its
    neighbours), so a learned, irregular grid shows where it sits. ``db=True`` shows
    ``10 log10(K)`` over ``dynamic_range_db`` below the peak; negative values (possible for
    sub-Heisenberg filters) are drawn at the floor. Returns the ``Figure`` (draws into ``ax`` when
    given).
    """
    import matplotlib.pyplot as plt

    if x.dim() != 1:
        raise ValueError(f"x must be one signal of shape (N,), got {tuple(x.shape)}")
    k = module(x[None].to(module.raw_center.device))[0].detach().double().cpu()  # (F, T)
    c = module.center_hz.detach().double().cpu()
    order = torch.argsort(c)
    c, k = c[order], k[order]
    if db:
        floor = k.max().clamp_min(1e-30) * 10 ** (-dynamic_range_db / 10)
        k = 10 * torch.log10(torch.maximum(k, floor))
    nyq = module.sample_rate / 2
    if c.numel() > 1:
        mid = (c[1:] + c[:-1]) / 2
        edges = torch.cat([(2 * c[:1] - mid[:1]).clamp_min(0), mid, (2 * c[-1:] - mid[-1:]).clamp_max(nyq)])
    else:
        edges = torch.tensor([0.0, nyq], dtype=torch.float64)
    hop = module.hop_length / module.sample_rate
    t_edges = (torch.arange(k.shape[1] + 1, dtype=torch.float64) - 0.5) * hop
    ax = _new_axes(ax, (6.5, 3.8))
    mesh = ax.pcolormesh(t_edges.numpy(), edges.numpy(), k.numpy(), shading="flat", cmap="magma")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title is not None:
        ax.set_title(title)
    plt.colorbar(mesh, ax=ax, label="dB" if db else "LWVD")
    return ax.figure
