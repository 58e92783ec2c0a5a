"""``lwvd_cuda.plotting`` as a user calls it: what it returns, that nothing is clipped at the default
size, and that an untrained (mel-init) layer's filters are visible."""

import warnings

import pytest
import torch

from lwvd_cuda import LWVD

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lwvd_cuda.plotting import plot_filters, plot_lwvd  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lwvd_cuda: running the pure-PyTorch reference")
        yield
    plt.close("all")


def _inside(fig, artist):
    fig.canvas.draw()
    box, page = artist.get_window_extent(), fig.bbox
    return box.x0 >= page.x0 - 0.5 and box.y0 >= page.y0 - 0.5 and box.x1 <= page.x1 + 0.5 and box.y1 <= page.y1 + 0.5


@pytest.mark.parametrize("draw", ["filters", "lwvd"])
def test_returns_the_figure_and_lays_out_without_clipping(draw):
    layer = LWVD.for_speech(n_filters=20)
    fig = plot_filters(layer) if draw == "filters" else plot_lwvd(layer, torch.randn(4000))
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    labels = [ax.xaxis.label, ax.yaxis.label, fig.axes[-1].yaxis.label]  # last axes: the colour bar
    assert all(label.get_text() for label in labels)
    for label in labels + ([ax.title] if ax.title.get_text() else []):
        assert _inside(fig, label), f"{label.get_text()!r} is clipped"


def test_draws_into_a_given_axes_and_returns_its_figure():
    fig, axes = plt.subplots(1, 2)
    layer = LWVD.for_speech(n_filters=8)
    assert plot_filters(layer, ax=axes[0]) is fig
    assert plot_lwvd(layer, torch.randn(2000), ax=axes[1], title="x") is fig


def test_mel_init_filters_are_visible():
    layer = LWVD.for_speech(n_filters=80)  # every filter on the bound: the colour map's pale middle
    ax = plot_filters(layer).axes[0]
    edges = [p.get_edgecolor() for p in ax.patches]
    assert len(edges) == 80
    # Outlines dark enough to see on white (luminance well below the pale fill's ~0.87).
    assert max(0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b, _ in edges) < 0.6
    # A 25 ms filter is ~27 Hz tall on an 8 kHz axis: a dot marks every centre.
    dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(dots) == 80 and sorted(float(d.get_ydata()[0]) for d in dots) == pytest.approx(
        sorted(layer.center_hz.detach().double().tolist()), rel=1e-6)
