"""CI smoke run of ``python -m benchmarks.accuracy`` (the paper's table as a command): a few steps on a few clips.

It exercises the real code path end to end — data generation (espeak-ng when installed, else the
documented synthetic stand-in that ``--smoke`` allows), the fixed-stage cache, every front end
(LEAF when SpeechBrain imports), every kind of head, ``LWVD.parameter_groups``, the report (Markdown,
JSON, plot) and ``--resume``. The accuracy figures themselves are a benchmark, not a test.
"""

import json
import shutil
import sys
import warnings

import pytest
import torch

from benchmarks import accuracy, frontends, speech_digits


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lwvd_cuda: running the pure-PyTorch reference")
        yield


@pytest.fixture(autouse=True, scope="module")
def _forget_speechbrain():
    """Unload SpeechBrain after this file: its lazy modules in ``sys.modules`` raise on attribute access,
    which trips hypothesis's module scan and the benchmark test that checks the run imports no SpeechBrain."""
    yield
    for name in [m for m in sys.modules if m == "speechbrain" or m.startswith("speechbrain.")]:
        del sys.modules[name]


def test_accuracy_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("LWVD_CACHE", str(tmp_path / "cache"))  # hermetic: nothing outside tmp
    out = tmp_path / "acc"
    common = ["--smoke", "--out", str(out), "--no-progress"]
    accuracy.main(common + ["--frontends", "spectrogram,lwvd,mel", "--heads", "linear/log_pool,nonlinear/pcen_pool,joint/pool_log"])
    conv = "sinc,gabor" + (",leaf" if frontends.leaf_available() is None else "")
    result = accuracy.main(common + ["--frontends", conv, "--heads", "linear/log_pool", "--resume"])
    runs = result["runs"]
    assert {r["frontend"] for r in runs} == {"spectrogram", "lwvd", "mel", *conv.split(",")}
    assert len(runs) == 4 * 3 + len(conv.split(","))  # lwvd twice (filter lr x1 and x10)
    for r in runs:
        assert 0.0 <= r["test"] <= 100.0 and r["best_epoch"] >= 1
        assert r["seconds_per_epoch"] > 0
    frozen = [r for r in runs if r["frontend"] == "spectrogram"]
    learned = [r for r in runs if r["frontend"] == "lwvd"]
    assert all(r["movement"]["center_shift_over_spacing_max"] == 0 for r in frozen)
    assert all(r["movement"]["center_shift_over_spacing_max"] > 0 for r in learned), "the LWVD got no gradient"
    table = (out / "table.md").read_text()
    for column in ("spectrogram", "lwvd (filters x10)", "mel", "sinc", "gabor"):
        assert f"| {column} " in table or f" {column} |" in table, column
    assert "time mean of log" in table and "log of the time mean (paper)" in table
    assert json.loads((out / "runs.json").read_text())["meta"]["data"]
    if shutil.which("espeak-ng"):
        assert "espeak-ng" in result["meta"]["data"] and "SYNTHETIC" not in result["meta"]["data"]
    pytest.importorskip("matplotlib")
    assert (out / "accuracy.png").stat().st_size > 1000


def test_synthetic_fallback_and_missing_espeak_message(monkeypatch):
    monkeypatch.setattr(speech_digits.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng"):
        speech_digits.spoken_digits(8000, 0.25, (1, 1, 1), 1, progress=False)
    ds = speech_digits.spoken_digits(8000, 0.25, (2, 1, 1), 1, synthetic_fallback=True, progress=False)
    assert ds.x_train.shape == (20, 2000) and sorted(set(ds.y_train.tolist())) == list(range(10))
    assert "SYNTHETIC" in ds.description


def test_audio_folder(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    g = torch.Generator().manual_seed(0)
    for cls in ("bat", "bird"):
        (tmp_path / cls).mkdir()
        for i in range(8):
            soundfile.write(str(tmp_path / cls / f"{i}.wav"), torch.randn(3000, generator=g).numpy() * 0.1, 16000)
    ds = speech_digits.audio_folder(tmp_path, sample_rate=8000, seconds=0.25)
    assert ds.classes == ("bat", "bird")
    assert ds.x_train.shape[1] == 2000 and len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 16
    assert len(ds.y_val) == len(ds.y_test) == 2  # 15 % of 8 per class, at least one
    with pytest.raises(ValueError, match="root"):
        speech_digits.audio_folder(tmp_path / "missing")


def test_head_feature_norm():
    """``classifier/features/bn`` standardises each pooled feature over the batch before the classifier."""
    assert accuracy.parse_head("linear/log_pool") == ("linear", "log_pool", "")
    assert accuracy.parse_head("nonlinear/pcen_pool/bn") == ("nonlinear", "pcen_pool", "bn")
    for bad in ("linear", "linear/log_pool/zz", "mlp/log_pool", "linear/log/bn", "linear/log_pool/bn/x"):
        with pytest.raises(ValueError, match="--heads"):
            accuracy.parse_head(bad)
    g = torch.Generator().manual_seed(0)
    # Channels with very different levels (offsets of several log units), as raw log energies have.
    u = torch.rand(64, 6, 30, generator=g) * torch.logspace(-3, 3, 6)[None, :, None]
    head = accuracy.Head("linear", "log_pool", 6, 30, 10, 1e-4, "bn").train()
    z = head.norm(head.features(u))
    torch.testing.assert_close(z.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)  # BatchNorm's eps = 1e-5
    plain = accuracy.Head("linear", "log_pool", 6, 30, 10, 1e-4).train()
    assert isinstance(plain.norm, torch.nn.Identity) and plain(u).shape == (64, 10)
    assert not any(True for _ in head.norm.parameters())  # no affine: the classifier does the scaling


def test_sinc_band_stays_positive_past_nyquist():
    """A low cut-off trained past Nyquist keeps a band of at least ``min_band_hz`` (it went negative before)."""
    bank = frontends.build("sinc", sample_rate=8000, n_filters=8, n_fft=128, hop=80, window_seconds=0.025,
                           f_min=0.0, f_max=4000.0)
    with torch.no_grad():
        bank.low[-1] = 0.6  # 0.6 of the sample rate: 4800 Hz, above Nyquist
    f1, f2 = bank.cutoffs()
    assert float(f1.max()) <= 4000.0 - bank.min_band_hz
    assert float((f2 - f1).min()) >= bank.min_band_hz - 1e-3
    assert torch.isfinite(bank.filters()).all()
