"""Smoke tests of the benchmark suite: registry, inputs, measurement and the runner on tiny sizes.

They check the suite's own logic (that the entries compute what they claim, that a run writes its
three files and reports the device honestly), not any timing.
"""

import json
import math
from dataclasses import replace

import pytest
import torch

from lwvd_cuda import reference, testing

from benchmarks import measure as M
from benchmarks import registry as R
from benchmarks import run as run_mod


def test_standard_config_is_S():
    cfg = R.standard_config()
    assert (cfg.batch, cfg.n, cfg.n_fft, cfg.hop, cfg.n_filters, cfg.frames) == (4, 16000, 512, 160, 80, 101)
    s = 0.025 * 16000 / 6
    assert cfg.sigma_t == pytest.approx(s / math.sqrt(2))
    assert cfg.sigma_nu == pytest.approx(1 / (2 * math.sqrt(2) * math.pi * s))
    c, st, sn, rho = R.config_filters(cfg)
    assert c.shape == (80,) and bool((rho == 0).all())
    # HTK mel midpoints: strictly increasing, inside (0, 8000 Hz), denser at low frequency.
    hz = c * 16000
    assert bool((hz[1:] > hz[:-1]).all()) and 0 < hz[0] < 100 and 7500 < hz[-1] < 8000
    assert (hz[1] - hz[0]) < (hz[-1] - hz[-2])
    _, _, _, rho_t = R.config_filters(R.standard_config(tilted=True))
    assert rho_t[:4].tolist() == [0.5, -0.5, 0.5, -0.5]


def test_build_inputs_share_the_signal():
    cfg = R.standard_config(batch=2, n=300)
    a = R.build_inputs(cfg, dtype=torch.float32)
    b = R.build_inputs(cfg, dtype=torch.float64)
    assert a.z.dtype == torch.complex64 and b.z.dtype == torch.complex128
    assert testing.rel_err(torch.view_as_real(a.z), torch.view_as_real(b.z)) < 1e-6
    assert torch.equal(b.z, a.z64) and a.grad_out.shape == (2, 80, cfg.frames)
    torch.testing.assert_close(a.x.double(), b.z.real, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tilted", [False, True])
def test_naive_matches_reference(tilted):
    cfg = R.standard_config(batch=1, n=400, tilted=tilted)
    cfg = replace(cfg, n_filters=6)
    inp = R.build_inputs(cfg, dtype=torch.float64)
    params = tuple(p[:6] for p in R.config_filters(R.standard_config(tilted=tilted)))
    ref = reference.lwvd(inp.z64, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=4.0)
    got = R.naive_lwvd(inp.z64, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=4.0)
    testing.assert_rel_close(got, ref, 1e-10, "naive vs reference")


def test_model_flops_counts_the_ellipses():
    cfg = R.standard_config()
    params = R.config_filters(cfg)
    # Spectrogram widths: sigma_t*sigma_nu = 1/(4 pi), so each ellipse holds pi*16/(4 pi)*1024 = 4096 terms.
    assert R.ellipse_terms(cfg, params) == pytest.approx(80 * 4096, rel=1e-9)
    # At S every lag row is needed (R = 189 > hop / 2); two real rows share one complex FFT.
    assert R.operator_rows(cfg, params) == 16000
    fft_part = 4 * 16000 * (6 * 256 + 5 * 512 * 9 / 2)
    assert R.lwvd_model_flops(cfg, params) == pytest.approx(fft_part + 2 * 4 * 101 * 80 * 4096)


def test_operator_rows_skips_rows_no_filter_reaches():
    cfg = replace(R.standard_config(), n=1000, hop=500)
    params = R.config_filters(cfg)  # R = floor(4 * 47.1 + 1) = 189: frames 0, 500, 1000
    r = int(R.filter_radii(cfg, params).max())
    assert r == 189
    # rows 0..189 (frame 0), 311..689 (frame 1), 811..999 (frame 2 at n = 1000, past the signal)
    assert R.operator_rows(cfg, params) == 190 + 379 + 189


def test_stft_entry_matches_lwvd_identity():
    res = R.stft_agreement(torch.float64, n=900, n_filters=3)
    assert res["rel_err_window_2n_fft"] < 1e-6, res
    # With the n_fft window the Gaussian is cut at +-3.8 std: the check must see that difference.
    assert res["rel_err_window_n_fft"] > 10 * res["rel_err_window_2n_fft"]


def test_measure_statistics_and_memory():
    calls = []
    t = M.measure(lambda: calls.append(torch.ones(4 << 20)) or calls[-1], device="cpu", repeats=5, warmup=2, budget_s=10)
    assert len(t.samples) == 5 and len(calls) == 1 + 1 + 5
    d = t.as_dict()
    assert d["min_s"] <= d["q1_s"] <= d["median_s"] <= d["q3_s"] <= d["max_s"]
    if M.rss_peak_supported():  # a 16 MiB tensor is allocated and touched during the first call
        assert 12 * 2**20 < t.peak_bytes < 64 * 2**20
    slow = M.measure(lambda: sum(range(200000)), device="cpu", repeats=5, warmup=1, budget_s=0.0)
    assert len(slow.samples) == 1 and "single call" in slow.note


def test_entry_selection():
    names = {e.name for e in R.get_entries("lwvd,fft_floor")}
    assert names == {"lwvd", "fft_floor"}
    assert [e.key for e in R.get_entries("lwvd[fwd]")] == ["lwvd[fwd]"]
    with pytest.raises(ValueError, match="unknown"):
        R.get_entries("nope")


def test_runner_tiny(tmp_path):
    args = ["--quick", "--device", "cpu", "--sizes", "1x700", "--n-list", "500,1000", "--repeats", "2",
            "--warmup", "1", "--budget", "0.5", "--no-plot", "--out", str(tmp_path), "--n-filters", "6",
            "--grad-check-n", "500", "--stft-check-n", "900",
            "--entries", "lwvd,reference,naive,fft_floor,stft_spectrogram,speechbrain_leaf"]
    assert run_mod.main(args) == 0
    data = json.loads((tmp_path / "bench_cpu.json").read_text())
    env = data["environment"]
    assert env["device"] == "cpu" and env["gpu_model"] is None and env["torch_threads"] >= 1
    rows = {(r["entry"], r["mode"]): r for r in data["rows"]}
    assert rows[("lwvd", "fwd")]["ratio_to_lwvd"] == 1.0
    # Every LWVD-computing entry agrees with the float64 oracle at float32 accuracy.
    for key in [("lwvd", "fwd"), ("reference", "fwd"), ("naive", "fwd")]:
        assert rows[key]["status"] == "ok" and rows[key]["rel_err"] < testing.TOLERANCES[torch.float32], rows[key]
    assert rows[("lwvd", "fwd+bwd")]["grad_rel_err"] < 1e-3
    assert rows[("speechbrain_leaf", "fwd")]["status"].startswith("not run")  # reported, never dropped
    assert data["spectrogram_identity"]["rel_err_window_2n_fft"] < 1e-5
    md = (tmp_path / "bench_cpu.md").read_text()
    assert "speechbrain_leaf" in md and "float64 reference" in md
    assert {r["n"] for r in data["scaling"]} == {500, 1000}
