"""The ``LWVD`` layer as users meet it: inits against independent truths, arguments, reading filters.

The central check (SPEC §1): the untrained layer *is* a Gaussian-window power spectrogram. The
spectrogram is computed here from its definition, ``|sum_j z[j] g[j - t hop] exp(-2i pi nu j)|^2``,
with no code shared with the package beyond the analytic signal, so an error anywhere in the chain
(WVD, smoothing, normalisation, the module's unit conversions or init) shows up.
"""

import math
import subprocess
import sys
import warnings

import pytest
import torch

import lwvd_cuda
import lwvd_cuda.testing
from lwvd_cuda import LWVD
from lwvd_cuda.modules import HEISENBERG_BOUND, RHO_MAX, FilterTable, hz_to_mel

SR = 8000.0


pytestmark = pytest.mark.usefixtures("quiet_reference_warning")


def gaussian_spectrogram(x, center_hz, window_std_samples, hop):
    """``|STFT|^2`` with the unit-energy Gaussian window of std ``s`` (per filter), float64, from the definition.

    ``x`` real ``(B, N)``; ``center_hz`` ``(F,)``; ``window_std_samples`` ``(F,)``. Returns ``(B, F, T)``.
    """
    z = lwvd_cuda.analytic_signal(x.double())
    n = x.shape[-1]
    j = torch.arange(n, dtype=torch.float64)
    t = torch.arange(1 + n // hop, dtype=torch.float64) * hop
    s = window_std_samples.double()[:, None, None]
    g = (math.pi * s * s) ** -0.25 * torch.exp(-((j[None, None, :] - t[None, :, None]) ** 2) / (2 * s * s))  # (F,T,N)
    nu = center_hz.double() / SR
    e = torch.exp(-2j * math.pi * nu[:, None] * j[None, :])  # (F, N)
    return (z[:, None, None, :] * g[None] * e[None, :, None, :]).sum(-1).abs() ** 2


def interior(a, margin):
    return a[..., margin:-margin]


# --------------------------------------------------------------------------- inits = spectrograms

@pytest.mark.parametrize("init", ["mel_window", "linear_window", "geometric_window"])
def test_untrained_layer_is_gaussian_spectrogram(init):
    # window 8 ms = 64 samples -> std s = 10.7 samples; n_fft = 128 covers +-6 s of lag (neglected
    # terms ~exp(-36)); centres within [800, 3200] Hz keep >= 12 sigma_nu (56 Hz) from 0 and Nyquist
    # (the discrete WVD is periodic in frequency); frames 8 hops (128 samples = 12 s) from the edges.
    # What remains is float64 rounding (measured ~1e-14); 1e-8 is SPEC §1's figure, 1e-6 the brief's.
    torch.manual_seed(0)
    hop = 16
    layer = LWVD(SR, 6, n_fft=128, hop_length=hop, f_min=800, f_max=3200, init=init, window_seconds=0.008, truncate=None)
    layer = layer.double()
    layer.reset_parameters()  # exact float64 values (the float32 init is rounded once per parameter)
    x = torch.randn(2, 512, dtype=torch.float64)
    got = layer(x)
    s = torch.full((6,), 0.008 / 6 * SR, dtype=torch.float64)
    want = gaussian_spectrogram(x, layer.center_hz.detach(), s, hop)
    lwvd_cuda.testing.assert_rel_close(interior(got, 8), interior(want, 8), 1e-8, f"init={init}")
    assert (layer.rho == 0).all()
    torch.testing.assert_close(layer.area_ratio, torch.ones(6, dtype=torch.float64), rtol=1e-12, atol=0)


def test_float32_init_is_spectrogram_to_float32_rounding():
    # The default float32 layer rounds each parameter once (rel 6e-8); through exp and the
    # normalisation that is a ~1e-6 relative change of the output; the op's float32 arithmetic adds
    # ~1e-5 (testing.TOLERANCES); 1e-4 bounds both and still fails on any real mismatch.
    torch.manual_seed(1)
    layer = LWVD(SR, 4, n_fft=128, hop_length=16, f_min=800, f_max=3200, init="linear_window", window_seconds=0.008, truncate=None)
    x = torch.randn(1, 512)
    want = gaussian_spectrogram(x.double(), layer.center_hz.detach().double(), torch.full((4,), 0.008 / 6 * SR), 16)
    lwvd_cuda.testing.assert_rel_close(interior(layer(x), 8), interior(want, 8), 1e-4)


def test_cqt_init_is_constant_q_scalogram():
    # Constant Q: bandwidth / centre fixed, sigma_t sigma_nu on the Heisenberg bound, geometric
    # centres; then each filter is a spectrogram with its own window std s_f = sqrt(2) sigma_t_f.
    q = 4.0
    layer = LWVD(SR, 4, n_fft=128, hop_length=16, f_min=1000, f_max=2500, init="cqt", q_factor=q, truncate=None)
    layer = layer.double()
    layer.reset_parameters()
    c, st, sn = layer.center_hz.detach(), layer.sigma_t_seconds.detach(), layer.sigma_nu_hz.detach()
    fwhm = 2 * math.sqrt(2 * math.log(2)) * sn
    torch.testing.assert_close(c / fwhm, torch.full_like(c, q), rtol=1e-12, atol=0)
    torch.testing.assert_close(st * sn, torch.full_like(c, HEISENBERG_BOUND), rtol=1e-12, atol=0)
    ratios = c[1:] / c[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios), rtol=1e-12, atol=0)
    assert (st[1:] < st[:-1]).all(), "time spread must shrink as the centre rises"
    torch.manual_seed(2)
    x = torch.randn(2, 512, dtype=torch.float64)
    # Largest window std: s = sqrt(2) st * SR ~ 7.3 samples, 6 s = 44 < n_fft; highest centre + 6
    # sigma_nu stays below Nyquist.
    want = gaussian_spectrogram(x, c, math.sqrt(2.0) * st * SR, 16)
    lwvd_cuda.testing.assert_rel_close(interior(layer(x), 8), interior(want, 8), 1e-8, "cqt")


def test_cqt_default_q_crosses_at_half_power():
    layer = LWVD(SR, 8, n_fft=256, hop_length=32, f_min=500, f_max=3500, init="cqt")
    c = layer.center_hz.detach().double()
    fwhm = 2 * math.sqrt(2 * math.log(2)) * layer.sigma_nu_hz.detach().double()
    # Default Q = 1/(r - 1): the FWHM of filter i equals the gap up to filter i+1.
    torch.testing.assert_close(fwhm[:-1], c[1:] - c[:-1], rtol=1e-5, atol=0)


@pytest.mark.parametrize("init", ["mel", "linear", "geometric", "cqt", "mel_window"])
def test_grid_honours_f_min_f_max(init):
    f_min, f_max = 300.0, 3300.0
    c = LWVD(SR, 10, n_fft=256, f_min=f_min, f_max=f_max, init=init, window_seconds=0.02).center_hz.detach().double()
    assert (c > f_min).all() and (c < f_max).all(), c
    assert (c[1:] > c[:-1]).all()
    cells = {
        "mel_window": torch.tensor([hz_to_mel(v) for v in c.tolist()], dtype=torch.float64),
        "linear": c,
        "mel": torch.tensor([hz_to_mel(v) for v in c.tolist()], dtype=torch.float64),
        "geometric": torch.log(c),
        "cqt": torch.log(c),
    }[init]
    gaps = cells[1:] - cells[:-1]
    torch.testing.assert_close(gaps, gaps[:1].expand_as(gaps), rtol=1e-4, atol=0)


def test_recipes():
    speech = LWVD.for_speech()
    assert (speech.sample_rate, speech.n_filters, speech.n_fft, speech.hop_length, speech.init) == (16000.0, 80, 512, 160, "mel")
    bats = LWVD.for_bioacoustics(384000)
    assert (bats.n_fft, bats.hop_length, bats.f_min, bats.f_max) == (1024, 192, 1000.0, 192000.0)
    birds = LWVD.for_bioacoustics(96000, n_filters=32, init="mel")
    assert (birds.n_fft, birds.hop_length, birds.init, birds.n_filters) == (256, 48, "mel", 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recipes' n_fft covers their windows: no warning
        LWVD.for_speech(40, sample_rate=22050)
        LWVD.for_bioacoustics(192000)


def test_warns_when_lag_window_shorter_than_window():
    with pytest.warns(UserWarning, match="n_fft=64"):
        LWVD(SR, 4, n_fft=64, window_seconds=0.025)
    with pytest.warns(UserWarning, match="f_min"):
        LWVD(SR, 8, n_fft=128, f_min=50, init="cqt")


# --------------------------------------------------------------------------- arguments

@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sample_rate=0), "sample_rate"),
        (dict(sample_rate=-8000), "sample_rate"),
        (dict(sample_rate=float("nan")), "sample_rate"),
        (dict(n_filters=0), "n_filters"),
        (dict(n_filters=2.5), "n_filters"),
        (dict(f_min=-1.0), "f_min"),
        (dict(f_max=5000.0), "f_max"),
        (dict(f_min=3000.0, f_max=1000.0), "f_min"),
        (dict(init="bark"), "init"),
        (dict(window_seconds=0.0), "window_seconds"),
        (dict(q_factor=-1.0, init="cqt"), "q_factor"),
        (dict(n_fft=0), "n_fft"),
        (dict(hop_length=0), "hop_length"),
        (dict(truncate=-1.0), "truncate"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(sample_rate=SR, n_filters=4, n_fft=128, hop_length=32)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        LWVD(**args)


def test_bad_inputs():
    layer = LWVD(SR, 2, n_fft=64, hop_length=32, window_seconds=0.004)
    with pytest.raises(TypeError, match="x"):
        layer(torch.zeros(100, dtype=torch.complex64))
    with pytest.raises(TypeError, match="x"):
        layer(torch.zeros(100, dtype=torch.int64))
    with pytest.raises(ValueError, match="center_hz"):
        layer.set_filters([1000.0, 5000.0], 1e-3, 50.0, 0.0)
    with pytest.raises(ValueError, match="sigma_t_s"):
        layer.set_filters(1000.0, [1e-3, 0.0], 50.0, 0.0)
    with pytest.raises(ValueError, match="rho"):
        layer.set_filters(1000.0, 1e-3, 50.0, 0.999)
    with pytest.raises(ValueError, match="sigma_nu_hz"):
        layer.set_filters(1000.0, 1e-3, [50.0, 60.0, 70.0], 0.0)


# --------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_set_filters_round_trips(dtype, tol):
    # float32: one rounding of each raw parameter, amplified by at most a few through exp / sigmoid
    # / tanh (the rho derivative 1/(1 - r^2) at r = 0.9 is ~5): 2e-6 relative.
    g = torch.Generator().manual_seed(0)
    f = 16
    c = 4000.0 * (0.02 + 0.96 * torch.rand(f, generator=g, dtype=torch.float64))
    st = 10 ** (-4 + 2 * torch.rand(f, generator=g, dtype=torch.float64))
    sn = 10 ** (1 + 2 * torch.rand(f, generator=g, dtype=torch.float64))
    r = 0.9 * (2 * torch.rand(f, generator=g, dtype=torch.float64) - 1)
    layer = LWVD(SR, f, n_fft=256, window_seconds=0.01).to(dtype)
    layer.set_filters(c, st, sn, r)
    for got, want in ((layer.center_hz, c), (layer.sigma_t_seconds, st), (layer.sigma_nu_hz, sn), (layer.rho, r)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.detach().double(), want, rtol=tol, atol=tol * 1e-3)
    # Reading back and setting again changes nothing (the physical values are a faithful view).
    before = [p.detach().clone() for p in layer.parameters()]
    layer.set_filters(layer.center_hz, layer.sigma_t_seconds, layer.sigma_nu_hz, layer.rho)
    for a, b in zip(before, layer.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=tol, atol=tol)


def test_extreme_raw_parameters_stay_valid():
    layer = LWVD(SR, 3, n_fft=64, hop_length=32, window_seconds=0.004)
    with torch.no_grad():
        layer.raw_center.copy_(torch.tensor([-200.0, 0.0, 200.0]))  # sigmoid saturates to 0 / 1
        layer.raw_rho.copy_(torch.tensor([-200.0, 0.0, 200.0]))
        layer.log_sigma_t.copy_(torch.tensor([-1e30, 0.0, float("inf")]))
        layer.log_sigma_nu.copy_(torch.tensor([float("-inf"), 1e30, 3.0]))
    c = layer.center_hz
    assert (c > 0).all() and (c < SR / 2).all(), c  # strictly inside, however far the sigmoid saturates
    assert layer.rho.abs().max() <= RHO_MAX
    (t_lo, t_hi), (n_lo, n_hi) = layer.sigma_t_bounds_s, layer.sigma_nu_bounds_hz
    st, sn = layer.sigma_t_seconds.detach().double(), layer.sigma_nu_hz.detach().double()
    torch.testing.assert_close(st[[0, 2]], torch.tensor([t_lo, t_hi], dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(sn[[0, 1]], torch.tensor([n_lo, n_hi], dtype=torch.float64), rtol=1e-5, atol=0)
    y = layer(torch.randn(2, 300))
    assert torch.isfinite(y).all()
    layer.set_filters(layer.center_hz, layer.sigma_t_seconds, layer.sigma_nu_hz, layer.rho)  # accepted


# --------------------------------------------------------------------------- reading the filters

def _ridge_slope_numeric(st, sn, r):
    """Slope (Hz/s) of the argmax-in-frequency of SPEC §1's q at time offsets +-st, on a fine grid."""
    v = torch.linspace(-6 * sn, 6 * sn, 200001, dtype=torch.float64)
    peaks = []
    for d in (-st, st):
        q = (d * d / st**2 - 2 * r * d * v / (st * sn) + v * v / sn**2) / (1 - r * r)
        peaks.append(v[torch.argmin(q)])
    return float((peaks[1] - peaks[0]) / (2 * st))


def test_describe_reads_physical_units():
    layer = LWVD(SR, 4, n_fft=256, window_seconds=0.01).double()
    layer.set_filters([500.0, 1000.0, 2000.0, 3000.0], [2e-3, 1e-3, 4e-4, 1e-3], [40.0, 100.0, 100.0, 300.0], [0.0, 0.6, -0.8, 0.02])
    table = layer.describe()
    assert isinstance(table, FilterTable) and len(table) == 4
    for row, st, sn, r in zip(table, [2e-3, 1e-3, 4e-4, 1e-3], [40.0, 100.0, 100.0, 300.0], [0.0, 0.6, -0.8, 0.02]):
        assert math.isclose(row["time_spread_s"], st, rel_tol=1e-12)
        assert math.isclose(row["bandwidth_hz"], sn, rel_tol=1e-12)
        # chirp rate == slope of the filter's ridge, found numerically from the quadratic form
        assert math.isclose(row["chirp_rate_hz_per_s"], _ridge_slope_numeric(st, sn, r), rel_tol=1e-3, abs_tol=1e-6)
        assert math.isclose(row["area_ratio"], st * sn * math.sqrt(1 - r * r) * 4 * math.pi, rel_tol=1e-12)
    # area ratios: 2e-3*40*4pi = 1.005 (untilted); 1e-3*100*0.8*4pi = 1.005 (tilted); 4e-4*100*0.6*4pi = 0.30;
    # 1e-3*300*4pi = 3.8 with a negligible tilt
    assert [row["kind"] for row in table] == ["spectrogram-like", "chirplet", "sub-Heisenberg", "spectrogram-like"]
    text = str(table).splitlines()
    assert len(text) == 5 and len({len(line) for line in text}) == 1, "columns must be aligned"
    assert "chirp Hz/s" in text[0]


def test_describe_in_op_units_matches_op_parameters():
    # The Hz/s figure is the op's slope (cycles/sample per sample) times sr^2.
    layer = LWVD(SR, 3, n_fft=128, window_seconds=0.01)
    layer.set_filters([800.0, 1600.0, 2400.0], 1e-3, 150.0, [0.3, -0.5, 0.7])
    c, st, sn, r = (p.detach().double() for p in layer.op_parameters())
    rate = torch.tensor(layer.describe().column("chirp_rate_hz_per_s"), dtype=torch.float64)
    torch.testing.assert_close(rate, r * sn / st * SR**2, rtol=1e-6, atol=0)


def test_tilt_sign_follows_chirp_direction():
    # A rising chirp lights a filter tilted along it (rho > 0) more than the mirror filter; a
    # falling chirp the opposite. Same centre, same spreads: only the sign of rho differs. The
    # filters are chirplets matched to the sweep rate a: ridge slope rho sn / st = a and conditional
    # width sn sqrt(1 - rho^2) = 1/(4 pi st) (the WVD of a chirped Gaussian window of std sqrt(2) st).
    n = 800
    t = torch.arange(n, dtype=torch.float64) / SR
    rate = 20000.0  # Hz/s: 1 -> 3 kHz in 0.1 s
    up = torch.cos(2 * math.pi * (1000 * t + 0.5 * rate * t * t))
    down = torch.cos(2 * math.pi * (3000 * t - 0.5 * rate * t * t))
    st = 2.5e-3  # 20 samples; the chirped window's std 28 samples fits n_fft = 256 (+-128 lags)
    along, across = rate * st, 1.0 / (4 * math.pi * st)
    sn = math.hypot(along, across)
    rho = along / sn
    layer = LWVD(SR, 2, n_fft=256, hop_length=16, window_seconds=0.01).double()
    layer.set_filters([2000.0, 2000.0], st, sn, [rho, -rho])
    assert layer.describe()[0]["kind"] == "chirplet"
    assert math.isclose(layer.describe()[0]["chirp_rate_hz_per_s"], rate, rel_tol=1e-9)
    k_up, k_down = layer(up).amax(-1), layer(down).amax(-1)
    assert k_up[0] > 2.0 * k_up[1], k_up
    assert k_down[1] > 2.0 * k_down[0], k_down


# --------------------------------------------------------------------------- shapes, dtypes

def test_shapes_and_dtypes():
    layer = LWVD(SR, 5, n_fft=64, hop_length=50, window_seconds=0.004)
    x = torch.randn(2, 3, 401)
    y = layer(x)
    assert y.shape == (2, 3, 5, 1 + 401 // 50) and y.dtype == torch.float32
    assert layer(x[0, 0]).shape == (5, 9)
    y64 = layer.double()(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y, rtol=1e-4, atol=1e-4 * y.abs().max().item())


def test_core_import_does_not_need_matplotlib():
    code = "import sys, lwvd_cuda, lwvd_cuda.plotting; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plots(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lwvd_cuda.plotting import filter_ellipses, plot_filters, plot_lwvd

    layer = LWVD(SR, 4, n_fft=128, hop_length=32, f_min=500, f_max=3500, window_seconds=0.01)
    layer.set_filters(layer.center_hz, 1e-3, 150.0, [0.0, 0.5, -0.5, 0.9])
    e = filter_ellipses(layer, n_sigma=2.0)
    # Every outline point lies on q = n_sigma^2 (SPEC §1's quadratic form in physical units).
    st, sn, r = (p.detach().double()[:, None] for p in (layer.sigma_t_seconds, layer.sigma_nu_hz, layer.rho))
    d, v = e[..., 0], e[..., 1] - layer.center_hz.detach().double()[:, None]
    q = (d**2 / st**2 - 2 * r * d * v / (st * sn) + v**2 / sn**2) / (1 - r**2)
    torch.testing.assert_close(q, torch.full_like(q, 4.0), rtol=1e-9, atol=0)
    fig, axes = plt.subplots(1, 2)
    plot_filters(layer, ax=axes[0])
    plot_lwvd(layer, torch.randn(800), ax=axes[1])
    fig.savefig(tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").stat().st_size > 1000


# --------------------------------------------------------------------------- band-covering inits

def gaussian_stft_power(x, freqs_hz, window_std_samples, hop):
    """``|STFT(t, nu)|^2`` (unit-energy Gaussian window of std ``s``) at arbitrary frequencies, ``(B, K, T)`` float64."""
    z = lwvd_cuda.analytic_signal(x.double())
    n = x.shape[-1]
    j = torch.arange(n, dtype=torch.float64)
    t = torch.arange(1 + n // hop, dtype=torch.float64) * hop
    s = float(window_std_samples)
    g = (math.pi * s * s) ** -0.25 * torch.exp(-((j[None, :] - t[:, None]) ** 2) / (2 * s * s))  # (T, N)
    e = torch.exp(-2j * math.pi * (freqs_hz.double() / SR)[None, :] * j[:, None])  # (N, K)
    frames = z[:, None, :] * g[None]  # (B, T, N)
    return (frames.to(torch.complex128) @ e).abs().transpose(1, 2) ** 2


@pytest.mark.parametrize("init", ["mel", "linear", "geometric"])
def test_band_covering_init_is_frequency_smoothed_gaussian_spectrogram(init):
    # Every band-covering filter is the window's spectrogram (area ratio 1) or that spectrogram
    # smoothed along frequency by a Gaussian of variance sigma_nu^2 - sigma_nu_window^2 (area > 1).
    # The truth: |STFT(t, nu)|^2 with the explicit Gaussian window, integrated over nu against that
    # Gaussian on a grid of step <= min(1 Hz, std / 4) out to +-8 std (Riemann sum of a smooth
    # integrand: exact to rounding;
    # the tails beyond 8 std weigh exp(-32)). 40 filters over [300, 3700] Hz with a 16 ms window
    # (std s = 21 samples, sigma_nu_window 28 Hz; the lag window +-128 covers +-6 s, neglected lag
    # products weigh exp(-36)): the low mel / geometric
    # filters are window-limited (area ratio 1), the others not. Every 5th filter is checked.
    torch.manual_seed(3)
    hop, window = 16, 0.016
    layer = LWVD(SR, 40, n_fft=256, hop_length=hop, f_min=300, f_max=3700, init=init, window_seconds=window, truncate=None)
    layer = layer.double()
    layer.reset_parameters()
    s = window / 6 * SR
    window_sn = 1.0 / (2 * math.sqrt(2) * math.pi * (window / 6))
    sn = layer.sigma_nu_hz.detach()
    ratio = layer.area_ratio.detach()
    torch.testing.assert_close(ratio, sn / window_sn, rtol=1e-12, atol=0)
    assert (ratio >= 1 - 1e-12).all()
    if init == "linear":  # 85 Hz spacing: every filter window-limited (the pure spectrogram identity)
        assert (ratio < 1 + 1e-12).all()
    else:  # the dense low end window-limited, the top frequency-smoothed
        assert (ratio < 1 + 1e-12).any() and (ratio > 1.1).any()
    x = torch.randn(2, 640, dtype=torch.float64)
    checked = list(range(0, 40, 5)) + [39]
    got = layer(x)[:, checked]
    want = []
    for f in checked:
        c, extra = float(layer.center_hz[f].detach()), max(0.0, float(sn[f]) ** 2 - window_sn**2)
        if extra < 1e-9:
            want.append(gaussian_stft_power(x, torch.tensor([c], dtype=torch.float64), s, hop)[:, 0])
            continue
        sd = math.sqrt(extra)
        # Riemann step <= sd / 4: the sum's aliasing error is ~exp(-2 pi^2 (sd / step)^2) ~ 1e-137.
        step = min(1.0, sd / 4)
        nu = torch.arange(c - 8 * sd, c + 8 * sd, step, dtype=torch.float64)
        w = step * torch.exp(-0.5 * ((nu - c) / sd) ** 2) / (math.sqrt(2 * math.pi) * sd)
        want.append(torch.einsum("k,bkt->bt", w, gaussian_stft_power(x, nu, s, hop)))
    want = torch.stack(want, dim=1)
    # frames 12 hops (192 samples = 6 s) from the signal's edges, as in the window-init test.
    lwvd_cuda.testing.assert_rel_close(interior(got, 12), interior(want, 12), 1e-8, f"init={init}")


@pytest.mark.parametrize("init", ["mel", "linear", "geometric"])
@pytest.mark.parametrize("n_filters, window, truncate", [(40, 0.025, 4.0), (10, 0.008, None), (80, 0.016, 3.0), (1, 0.02, 4.0)])
def test_band_covering_supports_stay_inside_the_band(init, n_filters, window, truncate):
    # The support |nu - centre| <= truncate sigma_nu (4 sigma_nu untruncated) of every filter lies
    # in [f_min, f_max]; the outermost ones end on the edges (the band is used, not wasted).
    for f_min, f_max in ((0.0, SR / 2), (300.0, 3400.0)):
        layer = LWVD(SR, n_filters, n_fft=256, f_min=f_min, f_max=f_max, init=init, window_seconds=window, truncate=truncate)
        reach = 4.0 if truncate is None else truncate
        c, sn = layer.center_hz.detach().double(), layer.sigma_nu_hz.detach().double()
        lo, hi = c - reach * sn, c + reach * sn
        assert float(lo.min()) >= f_min - 1e-3 and float(hi.max()) <= f_max + 1e-3, (init, lo.min(), hi.max())
        assert math.isclose(float(lo[0]), f_min, abs_tol=0.05) and math.isclose(float(hi[-1]), f_max, abs_tol=0.05)
        assert (layer.area_ratio >= 1 - 1e-6).all()
        if n_filters > 1:
            assert (c[1:] > c[:-1]).all()


def test_band_covering_neighbours_cross_at_half_power():
    # A tone half-way between two neighbouring centres reads half the power of a tone on a centre
    # (linear grid: every bandwidth follows the common spacing). The window-bandwidth init reads
    # such a tone orders of magnitude weaker (the 1e-5): most of the spectrum unseen.
    n = 4000
    t = torch.arange(n, dtype=torch.float64) / SR
    cover = LWVD(SR, 10, n_fft=256, hop_length=200, init="linear", window_seconds=0.025, truncate=None).double()
    cover.reset_parameters()
    window = LWVD(SR, 10, n_fft=256, hop_length=200, init="linear_window", window_seconds=0.025, truncate=None).double()
    window.reset_parameters()

    def reading(layer, i, freq):
        return float(layer(torch.cos(2 * math.pi * freq * t)).detach()[i, 5:-5].mean())

    for layer, lo_ratio, hi_ratio in ((cover, 0.45, 0.55), (window, 0.0, 1e-3)):
        c = layer.center_hz.detach()
        i = 4
        mid = 0.5 * float(c[i] + c[i + 1])
        assert lo_ratio <= reading(layer, i, mid) / reading(layer, i, float(c[i])) <= hi_ratio, layer.init


def test_default_layer_is_non_negative_and_log_is_finite():
    # The case: torch.log(layer(x) + 1e-6) was NaN on the default layer (its lowest filter
    # reached below 0 Hz). Band-covering supports end inside the band: with truncate=None the output
    # is a (smoothed) spectrogram, >= 0 to rounding; the default truncate=4 cuts the Gaussian at
    # q = 16 (weight exp(-8) = 3e-4), which can leave a negative residue far below 1e-3 of the peak.
    torch.manual_seed(4)
    x = torch.randn(3, 4000)
    for truncate, tol in ((None, 1e-9), (4.0, 1e-3)):
        layer = LWVD(SR, 40, n_fft=256, hop_length=80, window_seconds=0.025, truncate=truncate)
        k = layer(x.double() if truncate is None else x)
        assert float(k.min()) >= -tol * float(k.max()), (truncate, k.min(), k.max())
    logk = LWVD(SR, 40, n_fft=256, hop_length=80, window_seconds=0.025, compression="log")(x)
    assert torch.isfinite(logk).all()


def test_band_covering_that_cannot_fit_raises():
    with pytest.raises(ValueError, match="window_seconds"):
        LWVD(SR, 4, n_fft=256, f_min=1000, f_max=1100, window_seconds=0.01)


def test_bounds_reject_out_of_range_filters():
    layer = LWVD(SR, 2, n_fft=128, hop_length=32, window_seconds=0.01)
    lo_t, hi_t = layer.sigma_t_bounds_s
    lo_nu, hi_nu = layer.sigma_nu_bounds_hz
    assert math.isclose(lo_t, 0.1 / SR) and math.isclose(hi_t, 2 * 128 / SR)
    assert math.isclose(lo_nu, 0.1 * SR / 256) and math.isclose(hi_nu, SR / 2)
    with pytest.raises(ValueError, match="sigma_t_s"):
        layer.set_filters(1000.0, 2 * hi_t, 100.0, 0.0)
    with pytest.raises(ValueError, match="sigma_nu_hz"):
        layer.set_filters(1000.0, 1e-3, 0.5 * lo_nu, 0.0)
    layer.set_filters(1000.0, hi_t, hi_nu, 0.0)  # values on the bounds are accepted
    torch.testing.assert_close(layer.sigma_t_seconds.detach().double(), torch.full((2,), hi_t, dtype=torch.float64), rtol=1e-5, atol=0)


def test_parameter_groups():
    layer = LWVD(SR, 4, n_fft=64, hop_length=32, window_seconds=0.006, compression="pcen")
    groups = layer.parameter_groups(1e-3, filter_lr_scale=5.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in layer.parameters()), "every parameter exactly once"
    assert [g["lr"] for g in groups] == [5e-3, 1e-3]
    assert len(LWVD(SR, 4, n_fft=64, hop_length=32, window_seconds=0.006).parameter_groups(1e-3)) == 1
    with pytest.raises(ValueError, match="lr"):
        layer.parameter_groups(0.0)
    torch.optim.Adam(groups, lr=1e-3)  # accepted by an optimizer as is


def test_min_area_ratio_keeps_filters_at_or_above_the_bound():
    plain = LWVD(8000, 6, n_fft=64, hop_length=32, window_seconds=0.008).double()
    floored = LWVD(8000, 6, n_fft=64, hop_length=32, window_seconds=0.008, min_area_ratio=1.0).double()
    # At init (area ratios >= 1) the floor changes nothing.
    torch.testing.assert_close(floored.sigma_nu_hz, plain.sigma_nu_hz, rtol=1e-12, atol=0)
    # Sub-Heisenberg requests (area 0.3) and tilted ones are read back at area ratio 1 exactly.
    st = torch.full((6,), 1e-3, dtype=torch.float64)
    nu = 0.3 * HEISENBERG_BOUND / st
    rho = torch.linspace(-0.9, 0.9, 6, dtype=torch.float64)
    for layer in (plain, floored):
        layer.set_filters(torch.linspace(500, 3000, 6), st, nu, rho)
    assert float(plain.area_ratio.detach().max()) < 0.5
    torch.testing.assert_close(floored.area_ratio, torch.ones(6, dtype=torch.float64), rtol=1e-9, atol=0)
    x = torch.randn(2, 800, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert float(floored(x).min()) > -1e-12 * float(floored(x).abs().max())  # K >= 0 at area >= 1
    # Where the floor is active, sigma_t and rho still learn through it; the stored bandwidth does not.
    floored.zero_grad()
    floored(x).sum().backward()
    assert floored.log_sigma_t.grad.abs().min() > 0 and floored.raw_rho.grad.abs().max() > 0
    assert float(floored.log_sigma_nu.grad.abs().max()) == 0.0
    assert "min_area_ratio=1" in repr(floored)
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="min_area_ratio"):
            LWVD(8000, 6, n_fft=64, hop_length=32, min_area_ratio=bad)
