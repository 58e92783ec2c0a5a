"""The layer's torchaudio conventions: ``center=False``, ``win_length`` / ``n_mels`` / ``mel_scale``.

``center=False`` is checked against two independent truths: the frame count of
``torch.stft(center=False)``, and the same layer with ``hop_length=1`` (every sample a frame
centre), read at the samples ``n_fft // 2 + t * hop`` where ``torch.stft(center=False)`` centres
its frames - a different frame grid, so the padding that aligns the grid is checked, not reused.
"""


import pytest
import torch

import lwvd_cuda
from lwvd_cuda import LWVD
from lwvd_cuda.testing import TOLERANCES, assert_rel_close

SR = 8000.0


pytestmark = pytest.mark.usefixtures("quiet_reference_warning")


@pytest.mark.parametrize("n,n_fft,hop", [(700, 128, 50), (700, 128, 64), (513, 64, 7), (128, 128, 40)])
def test_center_false_returns_the_frames_of_torch_stft_center_false(n, n_fft, hop):
    torch.manual_seed(0)
    x = torch.randn(2, n, dtype=torch.float64)
    kw = dict(sample_rate=SR, n_filters=5, n_fft=n_fft, window_seconds=0.006)
    out = LWVD(hop_length=hop, center=False, **kw).double()(x)
    frames = torch.stft(x, n_fft, hop_length=hop, window=torch.ones(n_fft, dtype=x.dtype), center=False, return_complex=True).shape[-1]
    assert out.shape == (2, 5, frames) == (2, 5, 1 + (n - n_fft) // hop)
    dense = LWVD(hop_length=1, **kw).double()(x)  # frame t centred on sample t
    want = dense[..., n_fft // 2 + hop * torch.arange(frames)]
    assert_rel_close(out, want, TOLERANCES[torch.float64], "center=False vs hop=1 read at n_fft//2 + t*hop")


def test_center_true_is_the_default_and_matches_torch_stft_frame_count():
    x = torch.randn(1, 700, dtype=torch.float64)
    layer = LWVD(SR, 4, n_fft=128, hop_length=50, window_seconds=0.01).double()
    assert layer.center is True and "center" not in repr(layer)
    assert layer(x).shape[-1] == torch.stft(x, 128, hop_length=50, window=torch.ones(128, dtype=x.dtype), center=True, return_complex=True).shape[-1]
    assert "center=False" in repr(LWVD(SR, 4, n_fft=128, hop_length=50, window_seconds=0.01, center=False))


def test_center_false_needs_n_fft_samples_and_a_bool():
    layer = LWVD(SR, 4, n_fft=128, hop_length=50, window_seconds=0.01, center=False)
    with pytest.raises(ValueError, match="center=False needs at least n_fft=128"):
        layer(torch.randn(100))
    with pytest.raises(TypeError, match="center must be True or False"):
        LWVD(SR, 4, center="yes")


def test_torchaudio_spellings_mean_the_same_as_lwvd_ones():
    a = LWVD(sample_rate=16000, n_mels=40, n_fft=512, hop_length=160, win_length=400)
    b = LWVD(sample_rate=16000, n_filters=40, n_fft=512, hop_length=160, window_seconds=0.025)
    assert a.n_filters == 40 and a.window_seconds == pytest.approx(0.025)
    for p, q in zip(a.op_parameters(), b.op_parameters()):
        torch.testing.assert_close(p, q)
    assert LWVD(16000, 8, n_fft=512, mel_scale="htk").window_seconds == 0.025  # the default window


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_filters=40, n_mels=80), "n_mels .* and n_filters .* name the same thing"),
    (dict(n_mels=8, win_length=400, window_seconds=0.01), "win_length=400 samples and window_seconds=0.01 disagree"),
    (dict(n_mels=8, win_length=0), "win_length must be an int >= 1"),
    (dict(n_mels=8, win_length=400.0), "win_length must be an int >= 1"),
    (dict(n_mels=8, mel_scale="slaney"), "mel_scale: only 'htk'"),
])
def test_torchaudio_spellings_reject_conflicts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LWVD(16000, **kwargs)


def test_n_filters_or_n_mels_is_required():
    with pytest.raises(TypeError, match="n_filters"):
        LWVD(16000)


def test_non_power_of_two_n_fft_is_exact_on_the_cpu():
    # torchaudio's default n_fft is 400: the CPU kernels take it (through ATen's FFT), exactly.
    x = torch.randn(1, 900, dtype=torch.float64)
    layer = LWVD(16000, 6, n_fft=400, hop_length=160).double()
    z = lwvd_cuda.analytic_signal(x)
    ref = lwvd_cuda.reference.lwvd(z, *(p.detach() for p in layer.op_parameters()), n_fft=400, hop_length=160)
    assert_rel_close(layer(x).detach(), ref, TOLERANCES[torch.float64], "n_fft=400")
