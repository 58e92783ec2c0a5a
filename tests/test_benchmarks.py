"""Smoke tests of the benchmark suite: registry, inputs, measurement and the runner on tiny sizes.

They check the suite's own logic (that the entries compute what they claim, that a run writes its
three files and reports the device honestly), not any timing.
"""

import json
import math
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

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
    speechbrain_already_imported = "speechbrain" in sys.modules  # e.g. by tests/test_accuracy_smoke.py
    args = ["--quick", "--device", "cpu", "--sizes", "1x700", "--n-list", "500,1000", "--repeats", "2",
            "--warmup", "1", "--budget", "0.5", "--no-plot", "--out", str(tmp_path), "--n-filters", "6",
            "--grad-check-n", "500", "--stft-check-n", "900",
            "--entries", "lwvd,reference,naive,fft_floor,stft_spectrogram,torchaudio_mel,dstft"]
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
    # The peers are rows whether or not they are installed here (then "not run: import ... failed").
    # (SpeechBrain's LEAF is checked in a subprocess: see test_leaf_entry_in_its_own_process.)
    for key in [(p, m) for p in ("torchaudio_mel", "dstft") for m in ("fwd", "fwd+bwd")]:
        assert rows[key]["status"] == "ok" or rows[key]["status"].startswith("not run"), rows[key]
    assert env["omp_wait_policy"] and env["omp_wait_policy_source"] and env["cores_available"] >= 1
    # Interleaved: every timed row records the round of each call; ratios are paired per round.
    assert rows[("fft_floor", "fwd")]["rounds"] == [0, 1] and "ratio_to_lwvd" in rows[("fft_floor", "fwd")]
    assert all(isinstance(r["flags"], list) for r in data["rows"] + data["scaling"])
    assert data["spectrogram_identity"]["rel_err_window_2n_fft"] < 1e-5
    md = (tmp_path / "bench_cpu.md").read_text()
    assert "torchaudio_mel" in md and "float64 reference" in md
    if not speechbrain_already_imported:  # the environment report reads its version from metadata
        assert "speechbrain" not in sys.modules
    assert {r["n"] for r in data["scaling"]} == {500, 1000}


def test_measure_interleaved_rotates_rounds_and_honours_budgets():
    calls = []

    def f(name):
        return lambda: calls.append(name)

    plans = {k: M.Plan(f(k), repeats=3, warmup=2, budget_s=10.0) for k in "abc"}
    plans["once"] = M.Plan(f("once"), repeats=3, warmup=0, budget_s=0.0)
    plans["broken"] = M.Plan(lambda: 1 / 0, repeats=3, warmup=1, budget_s=10.0)
    res = M.measure_interleaved(plans, device="cpu")
    # Phase 1: first call + one more warm-up each; phase 2: rounds starting at entry r mod n.
    assert calls[:7] == ["a", "a", "b", "b", "c", "c", "once"]
    assert calls[7:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [res[k].rounds for k in "abc"] == [[0, 1, 2]] * 3
    assert len(res["a"].cpu_samples) == 3 and all(c >= 0 for c in res["a"].cpu_samples)
    assert len(res["once"].samples) == 1 and "single call" in res["once"].note
    assert isinstance(res["broken"], ZeroDivisionError)


def _row(entry, mode, samples, rounds=None, config="S", n=16000):
    s = sorted(samples)
    q1, q3 = (statistics.quantiles(s, n=4, method="inclusive")[::2] if len(s) >= 4 else (s[0], s[-1]))
    return {"entry": entry, "mode": mode, "config": config, "n": n, "samples_s": samples,
            "rounds": rounds if rounds is not None else list(range(len(samples))), "median_s": statistics.median(samples),
            "q1_s": q1, "q3_s": q3, "repeats": len(samples)}


def test_paired_ratio_cancels_load_common_to_a_round():
    # Rounds 1 and 3 were slowed 10x for both entries (a burst of other work): the paired ratio is
    # exact, and so steady that it is not flagged; the wall times themselves are flagged as spread.
    base = _row("lwvd", "fwd", [1.0, 10.0, 1.0, 10.0, 1.0])
    peer = _row("peer", "fwd", [2.0, 20.0, 2.0, 20.0, 2.0])
    ratio, (q1, q3) = run_mod.paired_ratio(peer, base)
    assert ratio == pytest.approx(2.0) and q1 == pytest.approx(2.0) and q3 == pytest.approx(2.0)
    peer.update(ratio_to_lwvd=ratio, ratio_q1=q1, ratio_q3=q3)
    run_mod.flag_rows([base, peer], [], cores=2)
    assert any("spread" in f for f in peer["flags"]) and not any("ratio spread" in f for f in peer["flags"])
    # Without shared rounds (a single first call) it falls back to median / median.
    single = _row("naive", "fwd", [30.0], rounds=[])
    assert run_mod.paired_ratio(single, base)[0] == pytest.approx(30.0)


def test_flag_rows_marks_impossible_rows_only():
    fwd = _row("nnaudio_mel", "fwd", [2.0e-3] * 5)
    bwd = _row("nnaudio_mel", "fwd+bwd", [1.5e-3] * 5)  # faster than its own forward: impossible
    ok_fwd, ok_bwd = _row("lwvd", "fwd", [0.07] * 5), _row("lwvd", "fwd+bwd", [0.28] * 5)
    scaling = [_row("stft", "fwd", [t] * 5, config=f"N={n}", n=n) for n, t in ((1000, 1e-4), (10000, 3e-4), (100000, 1e-4))]
    summary = run_mod.flag_rows([fwd, bwd, ok_fwd, ok_bwd], scaling, cores=2)
    assert any("impossible" in f for f in bwd["flags"]) and any("impossible" in f for f in fwd["flags"])
    assert ok_fwd["flags"] == [] and ok_bwd["flags"] == []
    assert scaling[0]["flags"] == [] and scaling[1]["flags"] == []
    assert scaling[2]["flags"] == ["non-monotone: N=100000 faster than N=10000"]
    assert summary["flagged"] == 3


def test_busy_warning_only_above_the_core_count():
    env = {"cores_available": 2, "load_average_at_start": (1.5, 1.0, 1.0), "load_average_at_end": 1.9}
    assert run_mod.busy_warning(env, {"load_max": 1.8, "flagged": 0}) is None
    env["load_average_at_end"] = 7.5
    msg = run_mod.busy_warning(env, {"load_max": 3.0, "flagged": 4})
    assert msg.startswith("WARNING: BUSY MACHINE") and "7.5 on 2 cores" in msg and "4 rows" in msg


@pytest.mark.parametrize("name,module", [("torchaudio_mel", "torchaudio"), ("dstft", "dstft"), ("dstft_freq", "dstft")])
def test_peer_entries_run_on_the_shared_inputs(name, module):
    pytest.importorskip(module)
    cfg = replace(R.standard_config(batch=2, n=1600), n_filters=8)
    inputs = R.build_inputs(cfg, dtype=torch.float32)
    for entry in R.get_entries(name):
        out = entry.prepare(cfg, inputs, "cpu", torch.float32).fn()
        assert out.shape[0] == 2 and bool(torch.isfinite(out).all()), (entry.key, out.shape)


def test_wall_ratio_flagged_when_it_disagrees_with_the_cpu_ratio_beyond_the_threads():
    # Seen under a competing load (benchmarks/README.md): a 25 ms peer next to a 2 s lwvd call kept
    # its time while lwvd's doubled, so its wall ratio fell 3x; its CPU-time ratio did not move.
    base = _row("lwvd", "fwd+bwd", [2.0] * 5)
    moved = dict(_row("nnaudio_mel", "fwd+bwd", [0.025] * 5), ratio_to_lwvd=0.009, cpu_ratio_to_lwvd=0.0285)
    parallel = dict(_row("fft_floor", "fwd+bwd", [0.5] * 5), ratio_to_lwvd=0.25, cpu_ratio_to_lwvd=0.14)  # 1.8x: parallelism
    run_mod.flag_rows([base, moved, parallel], [], cores=2, threads=2)
    assert moved["flags"] == ["wall vs cpu ratio differ 3.2x > 2"]
    assert parallel["flags"] == []
    one = dict(_row("stft", "fwd", [0.01] * 5), ratio_to_lwvd=0.0101, cpu_ratio_to_lwvd=0.01)
    run_mod.flag_rows([one], [], cores=2, threads=1)  # at one thread: the floor of 2, not 1
    assert one["flags"] == []


LEAF_CHECK = """
import sys, torch
from dataclasses import replace
from pathlib import Path
from benchmarks import registry as R
cfg = replace(R.standard_config(batch=2, n=1600), n_filters=8)
inputs = R.build_inputs(cfg, dtype=torch.float32)
for entry in R.get_entries("speechbrain_leaf"):
    try:
        prepared = entry.prepare(cfg, inputs, "cpu", torch.float32)
    except R.Unavailable as exc:
        assert str(exc).startswith("not run: import speechbrain"), exc
        print("unavailable", entry.key); continue
    out = prepared.fn()
    assert out.shape[0] == 2 and bool(torch.isfinite(out).all()), (entry.key, out.shape)
    print("ok", entry.key, tuple(out.shape))
"""


def test_leaf_entry_in_its_own_process():
    # Importing speechbrain puts lazy modules into sys.modules whose attribute access raises
    # ImportError (e.g. speechbrain.integrations.k2_fsa without k2); hypothesis walks sys.modules
    # and then fails every later property test in the process. So LEAF runs in a child process.
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "-c", LEAF_CHECK], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.split("\n")
    assert sum(line.startswith(("ok speechbrain_leaf", "unavailable speechbrain_leaf")) for line in lines) == 2, res.stdout
