"""tools/gpu_check.sh without a GPU: the dry run, the plan it would run, and the comparison
machinery exercised on the CPU kernels (the CPU plays the device's part at reduced sizes).

The GPU stages themselves run only on a machine with a GPU (`tools/gpu_check.sh` there); here they
must say "no GPU", and nothing may suggest a GPU ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lwvd_cuda import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gpu_check  # noqa: E402

GPU_STAGES = ["build", "tests", "compare", "timing", "memcheck", "racecheck", "synccheck"]


def test_dry_run_writes_one_json_saying_no_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert list(data["stages"]) == ["env"] + GPU_STAGES
    assert data["stages"]["env"]["status"] == "pass"
    assert data["env"]["torch"] and "nvcc" in data["env"] and "compute_sanitizer" in data["env"]
    for name in GPU_STAGES:
        assert data["stages"][name]["status"] == "no GPU", (name, data["stages"][name])
        assert f"{name}: no GPU" in proc.stdout
    assert data["stages"]["compare"]["would_run"]["n_configs"] >= 40
    # compute-sanitizer: a path, or a loud MISSING with the places looked at (never silence)
    cs = data["env"]["compute_sanitizer"]
    if cs == "MISSING":
        assert "MISSING" in data["stages"]["memcheck"]["tool"] and data["env"]["compute_sanitizer_looked_in"]
    else:
        assert os.access(cs, os.X_OK)
    assert os.path.exists(str(out)[: -len(".json")] + ".log")
    assert data["total_s"] < 240  # about 10 s here; the margin is for a heavily loaded machine


def test_plan_covers_what_issue_10_asks():
    plan = gpu_check.compare_configs()
    assert len(plan) >= 40
    names = {c["name"] for c in plan}
    assert {c["n_fft"] for c in plan} >= {2**p for p in range(2, 14)}
    assert {c["dtype"] for c in plan} == {"float32", "float64"}
    assert any(c["n"] == 10**7 for c in plan)
    big = [c for c in plan if c["name"].startswith("offsets_past_2^31")]
    assert big and all(2 * c["batch"][0] * c["n"] > 2**31 for c in big)  # interleaved (re, im) offsets
    assert {"side_stream_float32", "noncontiguous_float32", "noncontiguous_float64"} <= names
    assert any(c["hop"] > c["n"] for c in plan) and any(c["n"] == 1 for c in plan)
    assert any(c["truncate"] is None for c in plan) and any(len(c["batch"]) > 1 for c in plan)
    assert gpu_check.DEFAULT_BUDGET_S < 480  # 8 minutes, with the wrapper's hard stop at 475 s


@pytest.mark.skipif(not _extension.is_loaded() or not _extension.has_kernel("CPU"), reason="CPU kernels not built")
def test_comparison_machinery_on_the_cpu_kernels(tmp_path):
    """The windowed reference check (N = 10^7 and offsets past 2^31, shrunk), the non-contiguous
    and NaN cases, run with the CPU kernels in the device's part: every check passes, and grad_z
    outside the windows is exactly zero."""
    out = tmp_path / "compare.json"
    only = "N1e7_float32|offsets_past|noncontiguous_float64|g19_float32|g06_float64"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--stage", "compare",
                           "--device", "cpu", "--small", "--only", only, "--stage-out", str(out)],
                          capture_output=True, text=True, timeout=300)
    data = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr + json.dumps(data, indent=1)[:4000]
    assert data["done"] == data["passed"] == 5
    for name in ("N1e7_float32", "offsets_past_2^31_float32"):
        entry = data["configs"][name]
        assert entry["grad_z_max_abs_outside_windows"] == 0.0
        assert len(entry["windows"]) >= 3 and "params" in entry["errors"]
    assert data["configs"]["g19_float32"]["nan_item0_forward_has_nan"]


def test_sanitizer_summaries_are_read():
    clean = "========= COMPUTE-SANITIZER\nSANITIZE-CASE OK\n========= ERROR SUMMARY: 0 errors\n"
    assert gpu_check.parse_sanitizer(clean)["errors"] == 0
    race = ("========= Error: Race reported between Write access at lwvd_fft+0x1a0\n"
            "========= RACECHECK SUMMARY: 3 hazards displayed (2 errors, 1 warning)\n")
    got = gpu_check.parse_sanitizer(race)
    assert (got["hazards"], got["errors"], got["warnings"]) == (3, 2, 1) and got["first_reports"]
    # a tool that could not run prints no summary: reported as "tool failed", never as a pass
    assert "errors" not in gpu_check.parse_sanitizer("========= Device not supported\n")


def test_a_stage_past_its_timeout_is_killed_with_its_children():
    t0 = time.monotonic()
    r = gpu_check.run_cmd(["bash", "-c", "sleep 60 & sleep 60"], timeout=1)
    assert r["timed_out"] and time.monotonic() - t0 < 20
