"""The CUDA kernel SOURCE, executed on the CPU by the project's emulator (tests/cuda_emu/).

No GPU exists on the machines of this project, so nothing here says anything about timing or about
what the compiled SASS does on silicon. What it does check, on the same kernel source nvcc compiles:

* answers: forward and backward of ``csrc/kernels/lwvd_plan.cuh`` (the launch sequence the CUDA
  extension runs) against ``lwvd_cuda.reference`` and its autograd gradients, float64 and float32;
* determinism: two runs are bitwise equal;
* races: a ThreadSanitizer build of the real kernels is clean, and the same build reports a
  ``__syncthreads`` removed from a copy of the real FFT (so a clean report means something);
* memory: an AddressSanitizer(+UBSan) build is clean, and reports a dynamic shared-memory buffer
  one element short;
* the emulator itself, on toy kernels whose answers the host computes another way: barriers,
  shuffles (xor/down/idx with widths), votes, a shared-memory FFT, and the aborts on misuse
  (partial masks, exited or missing lanes, divergent call sites, a deadlock ended by the watchdog).

Binaries are built once per session with the system g++ (C++20, no torch: seconds each), lazily, so
a ``-k`` selection builds only what it runs. Timings of the build, sanitizer and emulation parts are
printed at the end of the session (and kept in ``timings.json`` of the build directory).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lwvd_cuda import _extension, reference
from lwvd_cuda.testing import (
    TOLERANCES,
    Case,
    assert_rel_close,
    rel_err,
    high_precision_param_grads,
    make_signal,
    near_one_ridge,
    near_one_tolerance,
    overflowing_slope_params,
    check_overflowing_slope,
)

ROOT = Path(__file__).resolve().parents[1]
EMU_DIR = ROOT / "tests" / "cuda_emu"
KERNEL_DIR = ROOT / "csrc" / "kernels"
PLAN_HEADER = KERNEL_DIR / "lwvd_plan.cuh"
CXX = shutil.which(os.environ.get("CXX", "g++"))

pytestmark = [
    pytest.mark.skipif(CXX is None, reason="no g++ on the PATH: the CUDA emulation harness builds C++20 test programs with it"),
    # reference.lwvd reads float(sigma_t) of a leaf that requires grad (radius bookkeeping only).
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar"),
]
needs_plan = pytest.mark.skipif(
    not PLAN_HEADER.exists(), reason=f"{PLAN_HEADER.relative_to(ROOT)} (the CUDA launch sequence) is not in this tree"
)

BASE_FLAGS = ["-std=c++20", "-pthread", "-O1", "-g", "-fno-omit-frame-pointer"]
SANITIZERS = {
    "plain": [],
    "tsan": ["-fsanitize=thread"],
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
}
SAN_ENV = {
    # exitcode: a report makes the run fail even when the program itself succeeded.
    "TSAN_OPTIONS": "halt_on_error=0:exitcode=66:report_signal_unsafe=0",
    # Leak checking needs ptrace, often unavailable in containers, and leaks are not what we test.
    "ASAN_OPTIONS": "detect_leaks=0:exitcode=67",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}

TIMINGS: dict[str, float] = {}


def _timed(key: str, seconds: float) -> None:
    TIMINGS[key] = TIMINGS.get(key, 0.0) + seconds


# ---------------------------------------------------------------------------------------------
# Building and running
# ---------------------------------------------------------------------------------------------
class Builds:
    """Lazily built test programs, one per (program, sanitizer, planted-bug variant)."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[tuple, Path] = {}

    def get(self, program: str, sanitizer: str = "plain", defines: tuple = (), kernel_dir: Path | None = None,
            tag: str = "") -> Path:
        key = (program, sanitizer, defines, str(kernel_dir), tag)
        if key in self._cache:
            return self._cache[key]
        name = "_".join(filter(None, [program, sanitizer, tag] + [d.lower() for d in defines]))
        exe = self.root / name
        cmd = [CXX, *BASE_FLAGS, *SANITIZERS[sanitizer], *[f"-D{d}" for d in defines], f"-I{EMU_DIR}"]
        # The kernel directory (or a planted-bug copy of it) comes before the project's include path.
        cmd += [f"-I{kernel_dir or KERNEL_DIR}", f"-I{ROOT / 'csrc'}", str(EMU_DIR / f"{program}.cpp"), "-o", str(exe)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        _timed(f"build {sanitizer}", time.perf_counter() - t0)
        if proc.returncode != 0:
            raise AssertionError(f"building {name} failed:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}")
        self._cache[key] = exe
        return exe


@pytest.fixture(scope="session")
def builds(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("cuda_emu_build")
    yield Builds(root)
    if TIMINGS:
        (root / "timings.json").write_text(json.dumps(TIMINGS, indent=2))
        lines = ["", "CUDA emulation timings (CPU only, no GPU involved; wall seconds summed per part):"]
        lines += [f"  {key:<28s} {TIMINGS[key]:7.2f} s" for key in sorted(TIMINGS)]
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # session teardown runs under output capture
                for line in lines:
                    reporter.write_line(line)


def run(exe: Path, *args, sanitizer: str = "plain", part: str = "", env: dict | None = None, timeout: float = 300):
    """Run a test program; under ThreadSanitizer retry with ASLR off if its shadow mapping fails."""
    full_env = dict(os.environ, **SAN_ENV, **(env or {}))
    cmd = [str(exe), *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if sanitizer == "tsan" and "unexpected memory mapping" in proc.stderr and shutil.which("setarch"):
        # Kernels with high mmap randomisation break TSan's fixed shadow layout; setarch -R fixes it.
        proc = subprocess.run(["setarch", os.uname().machine, "-R", *cmd], capture_output=True, text=True,
                              env=full_env, timeout=timeout)
    _timed(part or f"run {sanitizer}", time.perf_counter() - t0)
    return proc


def marker_line(path: Path, marker: str) -> int:
    """1-based line of the first line of ``path`` containing ``marker``."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if marker in line:
            return i
    raise AssertionError(f"{marker!r} not found in {path}")


# ---------------------------------------------------------------------------------------------
# The emulator on toy kernels
# ---------------------------------------------------------------------------------------------
TOYS = EMU_DIR / "toy_kernels.cuh"


@pytest.mark.parametrize("name", ["barrier", "shuffle", "reduce", "fft"])
def test_emulator_toy_kernel_answers(builds, name):
    proc = run(builds.get("driver"), "--selftest", name, part="selftest plain")
    assert proc.returncode == 0 and f"PASS {name}" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "name, message",
    [
        ("partial_mask", "only the full mask 0xffffffff is emulated"),
        ("exited_lane", "names lanes that have exited"),
        ("shuffle_sites", "lanes of one warp arrived from different call sites"),
        ("barrier_sites", "met at __syncthreads() from different call sites"),
        ("short_warp", "which do not exist"),
    ],
)
def test_emulator_aborts_on_misuse(builds, name, message):
    proc = run(builds.get("driver"), "--selftest", name, part="selftest plain")
    assert proc.returncode != 0, f"{name}: the emulator accepted a malformed kernel\n{proc.stdout}"
    assert message in proc.stderr, proc.stderr
    assert "toy_kernels.cuh:" in proc.stderr, "the message must name the kernel source line"


def test_emulator_watchdog_ends_a_deadlock(builds):
    # Half the block waits at __syncthreads, the other half waits for a flag set after it: a hang on
    # any GPU. With a 1 s watchdog the run must end with a message, not hang the test session.
    t0 = time.perf_counter()
    proc = run(builds.get("driver"), "--selftest", "deadlock", env={"LWVD_EMU_WATCHDOG_S": "1"}, timeout=60,
               part="selftest plain")
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "WATCHDOG" in proc.stderr and "32 of 64 threads arrived" in proc.stderr, proc.stderr
    assert elapsed < 30.0


def test_emulator_block_order_switch_takes_effect(builds):
    # The block-order test of the real kernels below means something only if the order changes.
    last = {}
    for order in ["forward", "reverse", "shuffle:7"]:
        proc = run(builds.get("driver"), "--selftest", "last_block", env={"LWVD_EMU_BLOCK_ORDER": order},
                   part="selftest plain")
        assert proc.returncode == 0, proc.stderr
        last[order] = int(proc.stdout.split()[-1])
    assert last["forward"] == 15 and last["reverse"] == 0 and 0 <= last["shuffle:7"] < 16, last


def test_emulator_tsan_clean_on_toy_kernels(builds):
    exe = builds.get("driver", "tsan")
    for name in ["barrier", "shuffle", "reduce", "fft"]:
        proc = run(exe, "--selftest", name, sanitizer="tsan", part="tsan toys")
        assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-4000:]


def test_tsan_reports_planted_race_in_toy_kernel(builds):
    # block_sum_kernel without the barrier between the shared fill and the tree: thread t reads
    # s[t + stride] that thread t + stride may not have written yet. TSan must point at the line.
    proc = run(builds.get("driver", "tsan"), "--selftest", "reduce_race", sanitizer="tsan", part="tsan toys")
    line = marker_line(TOYS, "planted race: reads")
    assert proc.returncode != 0
    assert "ThreadSanitizer: data race" in proc.stderr, proc.stderr[-4000:]
    assert f"toy_kernels.cuh:{line}" in proc.stderr, proc.stderr[-4000:]


def test_emulator_asan_clean_on_toy_kernels(builds):
    exe = builds.get("driver", "asan")
    for name in ["barrier", "shuffle", "reduce", "fft"]:
        proc = run(exe, "--selftest", name, sanitizer="asan", part="asan toys")
        assert proc.returncode == 0 and "ERROR: AddressSanitizer" not in proc.stderr, proc.stderr[-4000:]


def test_asan_reports_planted_smem_overflow_in_toy_kernel(builds):
    proc = run(builds.get("driver", "asan"), "--selftest", "fft_oob", sanitizer="asan", part="asan toys")
    fill_line = marker_line(TOYS, "buf[i] = i < n ? xb[r]")
    assert proc.returncode != 0
    assert "heap-buffer-overflow" in proc.stderr and "0 bytes to the right of 1024-byte region" in proc.stderr, (
        proc.stderr[-4000:]
    )
    assert f"toy_kernels.cuh:{fill_line}" in proc.stderr, proc.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# The real kernels through csrc/kernels/lwvd_plan.cuh
# ---------------------------------------------------------------------------------------------
class EmuCase(Case):
    """A ``testing.Case`` with one batch dimension of ``b`` signals (the driver takes ``(B, N)``)."""

    def __init__(self, b: int, n: int, n_fft: int, hop: int, f: int, kind: str = "mixed",
                 truncate: float | None = 4.0, seed: int = 0):
        super().__init__((b,), n, n_fft, hop, f, kind, truncate, seed)

    @property
    def b(self) -> int:
        return self.batch[0]

    def __str__(self):
        t = "None" if self.truncate is None else f"{self.truncate:g}"
        return f"B{self.b}-N{self.n}-M{self.n_fft}-hop{self.hop}-F{self.f}-{self.kind}-trunc{t}"


# Small enough for the emulator, chosen for coverage. Cost is dominated by warp exchanges (every
# shuffle is a barrier of 32 OS threads, ~0.1-0.3 ms on 2 cores) and block barriers (~0.3-0.5 ms).
CASES = [
    EmuCase(1, 37, 16, 5, 3),                              # odd N, hop not dividing N
    EmuCase(2, 11, 32, 3, 2),                              # N < n_fft: every lag row touches both edges
    EmuCase(1, 24, 16, 4, 2, "untilted", None),            # truncate=None: every term (exp underflow bound)
    EmuCase(1, 50, 8, 7, 5, "narrow", 4.0, seed=3),        # below the Heisenberg box, tiny ellipses
    EmuCase(1, 45, 16, 9, 3, "wide", 4.0, seed=4),         # radius beyond N: the whole signal per frame
    EmuCase(2, 45, 8, 3, 3, "mixed", 3.0, seed=5),         # several frame tiles per signal (T=16, one frame each)
    EmuCase(1, 40, 4, 1, 2, "mixed", 4.0, seed=6),         # smallest n_fft, hop 1: T = N + 1, 6 tiles
    EmuCase(1, 33, 64, 16, 2, "mixed", None, seed=7),      # N < n_fft with every term
    EmuCase(1, 1, 16, 1, 2, "mixed", 4.0, seed=8),         # N = 1
    EmuCase(1, 20, 16, 50, 2, "mixed", 4.0, seed=9),       # hop > N: one frame
    EmuCase(1, 12, 16, 6, 33, "mixed", 4.0, seed=10),      # F = 33: not a multiple of any warp/tile count
    EmuCase(1, 70, 128, 10, 3, "untilted", 4.0, seed=11),  # larger n_fft (7 FFT stages)
    EmuCase(2, 1100, 4, 50, 2, "mixed", 4.0, seed=13),     # N > grad_z tile (1024): several grad_z tiles
]
MULTI_TILE_CASE = CASES[-1]


class Problem:
    """Writes one problem for tests/cuda_emu/driver.cpp, runs it, reads the results back."""

    def __init__(self, case: EmuCase, dtype: torch.dtype, workdir: Path, seed: int = 0):
        self.case, self.dtype, self.dir = case, dtype, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.z, self.params = case.inputs(dtype)
        self.t = reference.num_frames(case.n, case.hop)
        g = torch.Generator().manual_seed(1000 + seed)
        self.grad_out = torch.randn(case.b, case.f, self.t, generator=g, dtype=torch.float64).to(dtype)
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        torch.view_as_real(self.z).numpy().astype(np_dtype).tofile(workdir / "z.bin")
        for name, p in zip(("center", "sigma_t", "sigma_nu", "rho"), self.params):
            p.numpy().astype(np_dtype).tofile(workdir / f"{name}.bin")
        self.grad_out.numpy().astype(np_dtype).tofile(workdir / "grad_out.bin")
        self.np_dtype = np_dtype

    def write_spec(self, mode: str, need_z: bool = True) -> None:
        c = self.case
        truncate = "inf" if c.truncate is None else repr(float(c.truncate))
        dt = "f64" if self.dtype == torch.float64 else "f32"
        lines = [f"mode {mode}", f"dtype {dt}", f"B {c.b}", f"N {c.n}", f"n_fft {c.n_fft}", f"hop {c.hop}",
                 f"F {c.f}", f"truncate {truncate}", f"need_z {int(need_z)}"]
        (self.dir / "problem.txt").write_text("\n".join(lines) + "\n")

    def run(self, exe: Path, mode: str = "both", sanitizer: str = "plain", part: str = "", env=None,
            need_z: bool = True):
        self.write_spec(mode, need_z)
        for f in self.dir.glob("out_*.bin"):
            f.unlink()
        return run(exe, self.dir, sanitizer=sanitizer, part=part or f"real kernels {sanitizer}", env=env)

    def read(self, name: str, shape) -> torch.Tensor:
        data = np.fromfile(self.dir / f"out_{name}.bin", dtype=self.np_dtype)
        assert data.size == math.prod(shape), f"out_{name}.bin: {data.size} values, expected {math.prod(shape)}"
        return torch.from_numpy(data.reshape(shape).copy())

    def outputs(self):
        c = self.case
        k = self.read("forward", (c.b, c.f, self.t))
        gz = torch.view_as_complex(self.read("grad_z", (c.b, c.n, 2)))
        gp = [self.read(f"grad_{n}", (c.f,)) for n in ("center", "sigma_t", "sigma_nu", "rho")]
        return k, gz, gp

    def expected(self):
        """Reference forward and autograd gradients, in float64 from the (possibly float32) inputs."""
        c = self.case
        z = self.z.to(torch.complex128).detach().requires_grad_(True)
        params = [p.to(torch.float64).detach().requires_grad_(True) for p in self.params]
        k = reference.lwvd(z, *params, n_fft=c.n_fft, hop_length=c.hop, truncate=c.truncate)
        grads = torch.autograd.grad(k, [z, *params], grad_outputs=self.grad_out.to(torch.float64))
        return k.detach(), grads[0], list(grads[1:])


def check_against_reference(problem: Problem, tol: float) -> None:
    k, gz, gp = problem.outputs()
    k_ref, gz_ref, gp_ref = problem.expected()
    assert_rel_close(k, k_ref, tol, f"{problem.case} forward")
    # As real (B, N, 2) pairs: both parts of the complex gradient are compared.
    assert_rel_close(torch.view_as_real(gz), torch.view_as_real(gz_ref), tol, f"{problem.case} grad z")
    for name, a, e in zip(("center", "sigma_t", "sigma_nu", "rho"), gp, gp_ref):
        assert_rel_close(a, e, tol, f"{problem.case} grad {name}")


def launches(proc) -> list[tuple[int, int, int]]:
    """(grid.x, threads per block, dynamic smem bytes) of every launch, in order."""
    out = []
    for m in re.finditer(r"^LAUNCH grid (\d+) (\d+) (\d+) block (\d+) (\d+) (\d+) smem (\d+)$", proc.stdout, re.M):
        g = [int(x) for x in m.groups()]
        out.append((g[0] * g[1] * g[2], g[3] * g[4] * g[5], g[6]))
    return out


def driver_ok(proc) -> None:
    assert proc.returncode == 0, f"driver failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@needs_plan
@pytest.mark.parametrize("case", CASES, ids=str)
def test_real_kernels_float64_match_reference(builds, tmp_path, case):
    # float64 tolerance 1e-10 (TOLERANCES): summation order and FFT rounding differ from the
    # reference's, at ~1e-14; any wrong or missing term is orders of magnitude larger.
    p = Problem(case, torch.float64, tmp_path)
    proc = p.run(builds.get("driver"), part="real kernels plain")
    driver_ok(proc)
    check_against_reference(p, TOLERANCES[torch.float64])
    if case in (CASES[5], CASES[6], MULTI_TILE_CASE):
        # Several output tiles per signal really happened: the row kernels got more blocks than B
        # (plan order, lwvd_plan.cuh: fwd prepare, smooth; bwd prepare, moments, grad_z + param_grad).
        grid = launches(proc)
        assert len(grid) == 5, grid
        assert grid[1][0] >= 2 * case.b and grid[3][0] == grid[1][0], grid
        if case is MULTI_TILE_CASE:
            assert grid[4][0] >= 2 * case.b, f"grad_z should have several tiles per signal: {grid}"


@needs_plan
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5], CASES[10]], ids=str)
def test_real_kernels_float32_match_reference(builds, tmp_path, case):
    # float32 kernels against the float64 reference evaluated on the same (float32-rounded) inputs:
    # only the kernels' float32 arithmetic is measured. TOLERANCES[float32] = 1e-4 allows the
    # ~1e2-1e3 eps growth of an FFT of log2(M) stages and sums of ~1e4 terms (see testing.py).
    p = Problem(case, torch.float32, tmp_path)
    driver_ok(p.run(builds.get("driver"), part="real kernels plain"))
    check_against_reference(p, TOLERANCES[torch.float32])


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_real_kernels_deterministic(builds, tmp_path, dtype):
    p = Problem(CASES[5], dtype, tmp_path)
    exe = builds.get("driver")
    names = ["forward", "grad_z", "grad_center", "grad_sigma_t", "grad_sigma_nu", "grad_rho"]
    runs = []
    for _ in range(2):
        driver_ok(p.run(exe, part="real kernels plain"))
        runs.append({n: (tmp_path / f"out_{n}.bin").read_bytes() for n in names})
    for n in names:
        assert runs[0][n] == runs[1][n], f"{n}: two runs differ bitwise"


@needs_plan
def test_real_kernels_independent_of_block_order(builds, tmp_path):
    # Blocks never overlap in the emulator, so TSan cannot see inter-block races; what it can check is
    # that the grid's result does not depend on the order blocks run in (as on a GPU, where they run
    # in any order and concurrently): reversed and shuffled orders must give the same bits. The case
    # has several blocks in every launch but the one-block prepare kernel.
    p = Problem(MULTI_TILE_CASE, torch.float64, tmp_path)
    exe = builds.get("driver")
    names = ["forward", "grad_z", "grad_center", "grad_sigma_t", "grad_sigma_nu", "grad_rho"]
    results = {}
    for order in ["forward", "reverse", "shuffle:7"]:
        driver_ok(p.run(exe, part="real kernels plain", env={"LWVD_EMU_BLOCK_ORDER": order}))
        results[order] = {n: (tmp_path / f"out_{n}.bin").read_bytes() for n in names}
    for order in ["reverse", "shuffle:7"]:
        for n in names:
            assert results[order][n] == results["forward"][n], f"{n}: block order {order} changes the result"


@needs_plan
def test_plan_rejects_unsupported_n_fft(builds, tmp_path):
    # The plan's own last line of defence (the torch side routes such n_fft elsewhere): a clear error,
    # no launch.
    p = Problem(EmuCase(1, 10, 16, 2, 2), torch.float64, tmp_path)
    p.case = EmuCase(1, 10, 12, 2, 2)
    proc = p.run(builds.get("driver"), part="real kernels plain")
    assert proc.returncode != 0 and "n_fft" in proc.stderr and "LAUNCH" not in proc.stdout, proc.stderr


SAN_CASE = EmuCase(1, 21, 16, 5, 3, "mixed", 4.0, seed=12)  # small: TSan costs 3-10x


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_tsan_clean_on_real_kernels(builds, tmp_path, dtype):
    # Forward and backward (every kernel of the plan), both instantiations.
    p = Problem(SAN_CASE, dtype, tmp_path)
    proc = p.run(builds.get("driver", "tsan"), sanitizer="tsan", part="tsan real kernels")
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-8000:]
    driver_ok(proc)
    check_against_reference(p, TOLERANCES[dtype])


def _copy_kernels_without_barrier(dst: Path, header: str, pattern: str) -> tuple[Path, int, int, int]:
    """Copy csrc/kernels to ``dst`` and delete the last ``__syncthreads();`` in the body of the
    function of ``header`` whose signature matches ``pattern``.
    Returns (dir, removed line, first and last line of the function), 1-based."""
    shutil.copytree(KERNEL_DIR, dst)
    path = dst / header
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if re.search(pattern, l))
    depth, end = 0, None
    for i in range(start, len(lines)):
        depth += lines[i].count("{") - lines[i].count("}")
        if depth == 0 and "}" in lines[i] and i > start:
            end = i
            break
    assert end is not None, f"could not find the end of {pattern} in {header}"
    hits = [i for i in range(start, end) if "__syncthreads();" in lines[i]]
    assert hits, f"no __syncthreads() in {pattern} of {header}"
    removed = hits[-1]
    lines[removed] = lines[removed].replace("__syncthreads();", "/* planted: barrier removed */")
    path.write_text("".join(lines))
    return dst, removed + 1, start + 1, end + 1


# (header, function signature pattern, plan mode that runs it). The last __syncthreads of each:
#   block_fft_rows: the barrier ending each FFT stage; without it stage s+1 reads elements another
#     thread is still writing in stage s;
#   param_grad_block (the parameter-gradient role of lwvd_grad_z_kernel): the barrier of its shared-memory tree
#     reduction (backward).
PLANTED_BARRIERS = [
    ("fft.cuh", r"void block_fft_rows\(", "fwd"),
    ("lwvd_bwd.cuh", r"void param_grad_block\(", "bwd"),
]


@needs_plan
@pytest.mark.parametrize("header, pattern, mode", PLANTED_BARRIERS, ids=[h for h, _, _ in PLANTED_BARRIERS])
def test_tsan_reports_barrier_removed_from_real_kernel(builds, tmp_path, header, pattern, mode):
    # The check that a clean TSan run of the real kernels means something.
    kdir, line, first, last = _copy_kernels_without_barrier(tmp_path / "kernels", header, pattern)
    exe = builds.get("driver", "tsan", kernel_dir=kdir, tag=f"nobarrier_{header.split('.')[0]}")
    p = Problem(SAN_CASE, torch.float64, tmp_path / "run")
    proc = p.run(exe, mode=mode, sanitizer="tsan", part="tsan planted barrier")
    assert "ThreadSanitizer: data race" in proc.stderr, (
        f"TSan missed the barrier removed at {header}:{line}\n{proc.stderr[-4000:]}"
    )
    # The racing accesses (top frames of each report) lie inside the function that lost its barrier.
    racing = [int(x) for x in re.findall(rf"#0 [^\n]*{re.escape(str(kdir / header))}:(\d+)", proc.stderr)]
    assert racing and all(first <= r <= last for r in racing), (
        f"race reported outside lines {first}-{last} of {header}: {racing}\n{proc.stderr[-4000:]}"
    )


@needs_plan
def test_asan_clean_on_real_kernels(builds, tmp_path):
    p = Problem(SAN_CASE, torch.float64, tmp_path)
    proc = p.run(builds.get("driver", "asan"), sanitizer="asan", part="asan real kernels")
    assert "ERROR: AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-8000:]
    driver_ok(proc)
    check_against_reference(p, TOLERANCES[torch.float64])


@needs_plan
def test_asan_reports_dynamic_smem_one_element_short(builds, tmp_path):
    # The driver's launcher hands the kernels a dynamic shared-memory buffer 16 bytes (one complex
    # double) shorter than the plan asked for: the off-by-one a wrong size formula would make.
    p = Problem(SAN_CASE, torch.float64, tmp_path)
    proc = p.run(builds.get("driver", "asan"), mode="fwd", sanitizer="asan", part="asan real kernels",
                 env={"LWVD_EMU_SMEM_SHRINK": "16"})
    assert proc.returncode != 0
    assert "heap-buffer-overflow" in proc.stderr, proc.stderr[-4000:]
    assert re.search(r"csrc/kernels/\w+\.cuh:\d+", proc.stderr), "the report must name the kernel source line"


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_real_kernels_agree_with_reference_at_truncation_ties(builds, tmp_path, dtype):
    """Issue 12 item 5 on the CUDA source: centres on bins, rho = 0, truncate * sigma_t = 23 samples
    (sigma_t = 9.2, truncate = 2.5) and truncate * sigma_nu = 3 bins: terms exactly on q = truncate^2.
    One q evaluation order (lwvd_math.cuh quad_form, mirrored by the reference) puts them on the
    same side; before, the kernels and the reference differed by 1e-2 here. TOLERANCES per dtype.
    (In float32 the device tests q in float32, the reference and the CPU kernels in float64: the
    same order, but a term within float32 rounding of the boundary can still fall otherwise there.)"""
    case = EmuCase(1, 64, 16, 8, 2, "untilted", 2.5, seed=21)
    p = Problem(case, dtype, tmp_path)
    two_m = 2 * case.n_fft
    p.params = (
        (torch.tensor([5.0, 9.0], dtype=torch.float64) / two_m).to(dtype),
        torch.tensor([9.2, 9.2], dtype=dtype),
        (torch.tensor([1.5, 1.2], dtype=torch.float64) / two_m).to(dtype),
        torch.zeros(2, dtype=dtype),
    )
    for name, v in zip(("center", "sigma_t", "sigma_nu", "rho"), p.params):
        v.numpy().astype(p.np_dtype).tofile(tmp_path / f"{name}.bin")
    driver_ok(p.run(builds.get("driver"), part="real kernels plain"))
    check_against_reference(p, TOLERANCES[dtype])


NEAR_ONE_CASES = [(r, torch.float64) for r in (0.99, -0.99, 1 - 1e-4, -(1 - 1e-8), 1 - 1e-12, -(1 - 1e-12))]
NEAR_ONE_CASES += [(r, torch.float32) for r in (0.99, -(1 - 1e-4))]


def _check_near_rho_one(builds, tmp_path, rho, dtype, mode: str = "both") -> None:
    """K and the four parameter gradients of the ridge geometry (testing.near_one_ridge) at rho near
    +-1 against 50-digit mpmath: float64 near_one_tolerance (+1e-13 for the WVD's FFT rounding),
    float32 TOLERANCES. mode="train": the training pair (run_forward_moments / run_backward_moments)."""
    case = EmuCase(1, 10, 8, 3, 1, "mixed", None)
    p = Problem(case, dtype, tmp_path)
    p.z = make_signal((1,), case.n, seed=31).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    p.params = tuple(x.to(dtype) for x in near_one_ridge(rho, case.n_fft))
    torch.view_as_real(p.z).numpy().tofile(tmp_path / "z.bin")
    for name, v in zip(("center", "sigma_t", "sigma_nu", "rho"), p.params):
        v.numpy().tofile(tmp_path / f"{name}.bin")
    driver_ok(p.run(builds.get("driver"), mode=mode, part="real kernels plain"))
    k, _, gp = p.outputs()
    k_ref, _, _ = p.expected()
    assert k_ref.abs().max() > 0
    tol = near_one_tolerance(rho) + 1e-13 if dtype == torch.float64 else TOLERANCES[dtype]
    assert_rel_close(k, k_ref, tol, f"forward at rho = {rho!r}")
    w = reference.wigner_ville(p.z[0].to(torch.complex128), case.n_fft)
    expected = high_precision_param_grads(w, p.grad_out[0, 0].double(), *(x.double() for x in p.params), case.hop)
    for name, got, e in zip(("center", "sigma_t", "sigma_nu", "rho"), gp, expected):
        assert e != 0
        assert_rel_close(got, torch.tensor([e], dtype=torch.float64), tol, f"grad {name} at rho = {rho!r}")


@needs_plan
@pytest.mark.parametrize("rho, dtype", NEAR_ONE_CASES, ids=lambda x: repr(x) if isinstance(x, float) else str(x)[6:])
def test_real_kernels_parameter_gradients_near_rho_one(builds, tmp_path, rho, dtype):
    """Issue 12 item 6 on the CUDA source: the moments kernel accumulates (S0, Sa, Sc, Saa, Sac, Scc)
    in q's own coordinates a = d / sigma_t, c = b - rho a, and param_grad applies the formulas of
    lwvd_math.cuh (shared with the CPU kernels); against 50-digit mpmath (on the inputs rounded to
    dtype) on the ridge geometry of tests/test_reference.py (testing.near_one_ridge). float64:
    testing.near_one_tolerance (+1e-13 for the WVD's FFT rounding); float32: TOLERANCES. The (d, v)
    moments were off in the rho gradient by 9e-9 at -(1 - 1e-8), 2e-4 at 1 - 1e-12 (float64)."""
    _check_near_rho_one(builds, tmp_path, rho, dtype)


# --- the training pair: run_forward_moments / run_backward_moments (lwvd_fwd_moments / lwvd_bwd_moments) ---

# + pairs whose rows span several passes (n_fft 256: 24 / 48 rows a pass in float64 / float32; wide
# filters reach the whole signal): the kept moments are summed over passes.
MULTI_PASS_CASE = EmuCase(1, 200, 256, 25, 2, "wide", 4.0, seed=14)
TRAIN_CASES = [CASES[0], CASES[2], CASES[5], CASES[6], CASES[10], MULTI_TILE_CASE, MULTI_PASS_CASE]


def _cpu_moments(p: Problem):
    """K and the (B, F, T, 6) float64 moments of the CPU op lwvd_fwd_moments on the same inputs."""
    c = p.case
    trunc = math.inf if c.truncate is None else float(c.truncate)
    return torch.ops.lwvd_cuda.lwvd_fwd_moments(p.z, *p.params, c.n_fft, c.hop, trunc)


needs_cpu_moments = pytest.mark.skipif(
    not (_extension.is_loaded() and hasattr(torch.ops.lwvd_cuda, "lwvd_fwd_moments")),
    reason="needs the built extension's CPU lwvd_fwd_moments")


@needs_plan
@needs_cpu_moments
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", TRAIN_CASES, ids=str)
def test_real_kernels_training_pair_match_cpu_and_reference(builds, tmp_path, case, dtype):
    """The CUDA forward that keeps the per-frame moments (smooth<.., true, true>) and the backward from
    them (grad_z + G-weighted moment sums, no pass over the W rows): K bitwise the plain CUDA forward's
    (same terms, same order); the moments against the CPU op lwvd_fwd_moments (the same six sums over
    the same truncation set in another order: TOLERANCES of the dtype, relative to the largest |moment|
    of each kind); K and all five gradients against the float64 reference (TOLERANCES, as the plain
    pair); 2 launches each way."""
    p = Problem(case, dtype, tmp_path)
    exe = builds.get("driver")
    proc = p.run(exe, mode="train", part="real kernels plain")
    driver_ok(proc)
    assert [g[0] > 0 for g in launches(proc)] == [True] * 4, launches(proc)  # fwd 2 + bwd 2
    check_against_reference(p, TOLERANCES[dtype])
    k_train = p.read("forward", (case.b, case.f, p.t))
    mom = torch.from_numpy(np.fromfile(tmp_path / "out_moments.bin", dtype=np.float64).reshape(case.b, case.f, p.t, 6))
    driver_ok(p.run(exe, mode="fwd", part="real kernels plain"))
    assert torch.equal(k_train, p.read("forward", (case.b, case.f, p.t))), "K differs from the plain forward's"
    _, mom_cpu = _cpu_moments(p)
    tol = TOLERANCES[dtype]
    for i in range(6):
        scale = mom_cpu[..., i].abs().max().clamp_min(1e-300)
        err = ((mom[..., i] - mom_cpu[..., i]).abs().max() / scale).item()
        assert err <= tol, f"{case} moment {i}: max error {err:.3g} of the largest |moment| (tol {tol:g})"


@needs_plan
def test_real_kernels_training_pair_without_z_gradient(builds, tmp_path):
    """need_z = false: only the F parameter blocks run (grad_z untouched: still the driver's NaN
    poison), and the parameter gradients are bitwise those with grad_z."""
    p = Problem(MULTI_TILE_CASE, torch.float64, tmp_path)
    exe = builds.get("driver")
    names = ["grad_center", "grad_sigma_t", "grad_sigma_nu", "grad_rho"]
    driver_ok(p.run(exe, mode="train", part="real kernels plain"))
    with_z = {n: (tmp_path / f"out_{n}.bin").read_bytes() for n in names}
    proc = p.run(exe, mode="train", part="real kernels plain", need_z=False)
    driver_ok(proc)
    assert launches(proc)[-1][0] == MULTI_TILE_CASE.f, launches(proc)
    assert torch.isnan(p.read("grad_z", (p.case.b, p.case.n, 2))).all()
    for n in names:
        assert (tmp_path / f"out_{n}.bin").read_bytes() == with_z[n], n


@needs_plan
@pytest.mark.parametrize("rho, dtype", [(1 - 1e-12, torch.float64), (-(1 - 1e-8), torch.float64),
                                        (0.99, torch.float32)], ids=lambda x: repr(x) if isinstance(x, float) else str(x)[6:])
def test_real_kernels_training_pair_near_rho_one(builds, tmp_path, rho, dtype):
    """The moments kept by the forward give the parameter gradients at rho near +-1 as the moments
    kernel does (against 50-digit mpmath; the tolerances of test_real_kernels_parameter_gradients_near_rho_one)."""
    _check_near_rho_one(builds, tmp_path, rho, dtype, mode="train")


@needs_plan
def test_real_kernels_training_pair_invalid_parameters_give_nan(builds, tmp_path):
    """Invalid parameters (|rho| >= 1): K, the moments and every gradient NaN, the error bits set."""
    case = EmuCase(1, 30, 16, 5, 2, "mixed", 4.0, seed=2)
    p = _with_params(Problem(case, torch.float64, tmp_path), ([0.1, 0.2], [4.0, 3.0], [0.02, 0.03], [0.2, 1.0]))
    proc = p.run(builds.get("driver"), mode="train", part="real kernels plain")
    driver_ok(proc)
    assert "ERROR_FLAGS forward 8" in proc.stdout and "ERROR_FLAGS backward 8" in proc.stdout, proc.stdout
    k, gz, gp = p.outputs()
    mom = np.fromfile(tmp_path / "out_moments.bin", dtype=np.float64)
    assert torch.isnan(k).all() and np.isnan(mom).all() and torch.isnan(gz).all()
    assert all(torch.isnan(g).all() for g in gp)


def _with_params(p: Problem, params) -> Problem:
    p.params = tuple(torch.tensor(v, dtype=p.dtype) for v in params)
    for name, v in zip(("center", "sigma_t", "sigma_nu", "rho"), p.params):
        v.numpy().tofile(p.dir / f"{name}.bin")
    return p


@needs_plan
def test_real_kernels_tiny_sigma_nu_give_zero_gradients_not_nan(builds, tmp_path):
    """Issue 12 item 9 on the CUDA source: sigma_nu <= ~1e-108, every weight underflows and the output
    is exactly 0. param_grad multiplied all-zero moments by 1/sigma_nu^3 = inf (NaN gradients); the
    shared param_grads_from_moments now gives exactly 0, as the reference's autograd does."""
    case = EmuCase(1, 60, 16, 10, 3, "mixed", 4.0, seed=1)
    p = _with_params(Problem(case, torch.float64, tmp_path),
                     ([0.1234, 0.3, 0.2], [5.0, 5.0, 3.0], [1e-120, 1e-109, 1e-200], [0.0, 0.3, -0.5]))
    driver_ok(p.run(builds.get("driver"), part="real kernels plain"))
    k, gz, gp = p.outputs()
    assert torch.equal(k, torch.zeros_like(k))
    assert torch.equal(gz, torch.zeros_like(gz))
    leaves = [x.clone().requires_grad_() for x in p.params]
    k_ref = reference.lwvd(p.z, *leaves, n_fft=case.n_fft, hop_length=case.hop, truncate=case.truncate)
    assert torch.equal(k_ref.detach(), k)
    gp_ref = torch.autograd.grad(k_ref, leaves, grad_outputs=p.grad_out)
    for name, a, e in zip(("center", "sigma_t", "sigma_nu", "rho"), gp, gp_ref):
        assert torch.equal(a, torch.zeros_like(a)) and torch.equal(e, a), f"grad {name}: {a} (reference {e})"


@needs_plan
@pytest.mark.parametrize("truncate", [4.0, None], ids=["trunc4", "truncNone"])
def test_real_kernels_overflowing_slope_match_reference(builds, tmp_path, truncate):
    """Issue 12 item 9, second half, on the CUDA source: rho sigma_nu / sigma_t overflows (tiny sigma_t,
    huge sigma_nu), so bin_range's row centre center + slope * d was inf * 0 = NaN at d = 0 and the
    output exactly 0 where the reference is not; bin_range (lwvd_math.cuh, every backend) now hands
    such rows every bin and the per-term q test decides. Forward and gradients, TOLERANCES."""
    case = EmuCase(1, 60, 16, 10, 3, "mixed", truncate, seed=1)
    p = _with_params(Problem(case, torch.float64, tmp_path), overflowing_slope_params())
    driver_ok(p.run(builds.get("driver"), part="real kernels plain"))
    check_overflowing_slope(*p.outputs(), *p.expected(), p.grad_out, p.params, TOLERANCES[torch.float64])


def _q_float32_quad_form(d, k, n_fft, center, sigma_t, sigma_nu, divide=False):
    """q of lwvd_math.cuh quad_form for rho = 0 in float32 (numpy, each operation rounded once), as the
    float32 device code evaluates it: reciprocals rounded from double (make_filter), v = k * (1/2M) -
    center in float32. ``divide``: d / sigma_t and v / sigma_nu instead (the order before issue 12)."""
    f32 = np.float32
    v = f32(k) * f32(1.0 / (2 * n_fft)) - f32(center)
    if divide:
        a, b = f32(d) / f32(sigma_t), v / f32(sigma_nu)
    else:
        a, b = f32(d) * f32(1.0 / float(sigma_t)), v * f32(1.0 / float(sigma_nu))
    return a * a + (b * b) * f32(1.0)


def _masked_lwvd(z, params, mask_fn, n_fft, hop):
    """SPEC §1 in float64 with the truncation decided by ``mask_fn(d, k, n_fft, c, st, sn) -> bool``
    (rho = 0 filters), differentiable in z and the parameters: the oracle for a given tie rule."""
    w = reference.wigner_ville(z, n_fft)[0]  # (N, M), z (1, N)
    n = w.shape[0]
    frames = reference.num_frames(n, hop)
    nu = torch.arange(n_fft, dtype=torch.float64) / (2 * n_fft)
    out = []
    for f in range(params[0].shape[0]):
        c, st, sn, r = (x[f] for x in params)
        radius = int(math.floor(2.5 * float(st))) + 1
        d = torch.arange(-radius, radius + 1, dtype=torch.float64)
        mask = torch.tensor([[bool(mask_fn(int(dd), k, n_fft, float(c), float(st), float(sn))) for k in range(n_fft)]
                             for dd in d.tolist()])
        a, res = (d / st)[:, None], ((nu - c) / sn)[None, :] - r * (d / st)[:, None]
        one_m_r2 = (1 - r) * (1 + r)
        weight = torch.where(mask, torch.exp(-0.5 * (a * a + res * res / one_m_r2)), torch.zeros(()))
        norm = (1.0 / (2 * n_fft)) / (2 * math.pi * st * sn * torch.sqrt(one_m_r2))
        padded = torch.cat([w.new_zeros(radius, n_fft), w, w.new_zeros(radius + frames * hop, n_fft)])
        out.append(torch.stack([norm * (padded[t * hop : t * hop + 2 * radius + 1] * weight).sum()
                                for t in range(frames)]))
    return torch.stack(out)[None]


@needs_plan
def test_real_kernels_float32_ties_follow_quad_form_order_in_float32(builds, tmp_path):
    """Issue 12 item 5 in float32 on the CUDA source: the float32 kernels evaluate q in quad_form's
    order in float32 (the CPU kernels and the reference evaluate the same order in float64). Two
    filters with terms within float32 rounding of q = truncate^2 (centres on bins, rho = 0,
    truncate * sigma_t and truncate * sigma_nu whole numbers): sigma_t = 14, 2 bins: float32 quad_form
    excludes d = +-21, k = 0, 8, which float64 and float32 division include; sigma_t = 6, 2.8 bins:
    it includes d = 0, k = 8, which float64 excludes. Forward and all gradients equal the oracle with
    that float32 rule (TOLERANCES), and the division and float64 rules are > 3x the tolerance away on
    those filters, so the check sees which rule the kernels apply. Where the float32 and float64 rules differ the
    float32 CUDA kernels and the float32 CPU kernels / reference (float64 q) still differ: by design,
    docs/design.md ("One evaluation of q")."""
    case = EmuCase(1, 64, 16, 8, 2, "untilted", 2.5, seed=21)
    p = Problem(case, torch.float32, tmp_path)
    two_m = 2 * case.n_fft
    p = _with_params(p, ([4.0 / two_m, 1.0 / two_m], [14.0, 6.0], [2.0 / two_m, 2.8 / two_m], [0.0, 0.0]))
    driver_ok(p.run(builds.get("driver"), part="real kernels plain"))
    k, gz, gp = p.outputs()
    z = p.z.to(torch.complex128).requires_grad_(True)
    params = [x.to(torch.float64).requires_grad_(True) for x in p.params]
    f32t2 = np.float32(6.25)
    rules = {
        "float32 quad_form": lambda *a: _q_float32_quad_form(*a) <= f32t2,
        "float32 division": lambda *a: _q_float32_quad_form(*a, divide=True) <= f32t2,
        "float64": lambda d, kk, m, c, st, sn: ((d * (1.0 / st)) ** 2 + ((kk / (2 * m) - c) * (1.0 / sn)) ** 2) <= 6.25,
    }
    ks = {name: _masked_lwvd(z, params, rule, case.n_fft, case.hop) for name, rule in rules.items()}
    tol = TOLERANCES[torch.float32]
    # The other rules are > 3 tol away on the filter where they differ (kernels applying one of them
    # would fail by > 2 tol; their own float32 error here is ~1e-6).
    for f, name in ((0, "float32 division"), (1, "float64")):
        gap = rel_err(ks[name][:, f], ks["float32 quad_form"][:, f])
        assert gap > 3 * tol, f"the {name} rule puts no tie elsewhere on filter {f} ({gap:.1e})"
    k_ref = ks["float32 quad_form"]
    for f in range(case.f):
        assert_rel_close(k[:, f], k_ref[:, f].detach(), tol, f"forward filter {f}, float32 rule")
    grads = torch.autograd.grad(k_ref, [z, *params], grad_outputs=p.grad_out.to(torch.float64))
    assert_rel_close(torch.view_as_real(gz), torch.view_as_real(grads[0]), tol, "grad z, float32 rule")
    for name, a, e in zip(("center", "sigma_t", "sigma_nu", "rho"), gp, grads[1:]):
        assert_rel_close(a, e, tol, f"grad {name}, float32 rule")


# ---------------------------------------------------------------------------------------------
# The profile: emulator counters vs the cost model's replay (benchmarks/kernel_counts.py)
# ---------------------------------------------------------------------------------------------
def emulator_profile(proc) -> list[dict]:
    """Per launch (plan order): block_barriers, warp_exchanges and {site: [trips, lanes, wavefronts, sectors]}."""
    launches = {}
    for m in re.finditer(r"^PROFLAUNCH (\d+) block_barriers (\d+) warp_exchanges (\d+)$", proc.stdout, re.M):
        launches[int(m.group(1))] = dict(block_barriers=int(m.group(2)), warp_exchanges=int(m.group(3)), sites={})
    for m in re.finditer(r"^PROF (\d+) (\S+) warp_trips (\d+) lanes (\d+) wavefronts (\d+) sectors (\d+)$",
                         proc.stdout, re.M):
        launches[int(m.group(1))]["sites"][m.group(2)] = [int(x) for x in m.groups()[2:]]
    return [launches[i] for i in sorted(launches)]


def replayed_profile(problem: Problem, parts=("forward", "backward")) -> list[dict]:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cost_model
    import kernel_counts

    c = problem.case
    center, st, sn, rho = (tuple(x.numpy().tolist()) for x in problem.params)
    kp = kernel_counts.Problem(c.b, c.n, c.n_fft, c.hop, center, st, sn, rho, c.truncate,
                               "float64" if problem.dtype == torch.float64 else "float32")
    counts = kernel_counts.plan_counts(kp, cost_model.launch_config())
    return [launch for part in parts for launch in counts[part]]


def _profile_mismatches(emu, rep) -> list:
    """(launch, kernel, counter or site, emulator, replay) for every count where the two differ."""
    bad = []
    for i, (e, r) in enumerate(zip(emu, rep)):
        for k in ("block_barriers", "warp_exchanges"):
            if e[k] != r[k]:
                bad.append((i, r["kernel"], k, e[k], r[k]))
        for site in sorted(set(e["sites"]) | set(r["sites"])):
            if e["sites"].get(site) != r["sites"].get(site):
                bad.append((i, r["kernel"], site, e["sites"].get(site), r["sites"].get(site)))
    return bad


# Cases that exercise every counted path: several tiles and passes, edges, N < n_fft, truncate=None,
# F = 33 (two filter chunks), the largest emulated n_fft, several grad_z tiles, float32 and float64.
PROFILE_CASES = [CASES[0], CASES[1], CASES[5], CASES[7], CASES[10], CASES[11]]


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", PROFILE_CASES, ids=str)
def test_profile_replay_matches_emulator(builds, tmp_path, case, dtype):
    # The cost model's counts (warp trips, active lanes, shared-memory wavefronts from the real
    # addresses, global-memory sectors, block barriers, warp shuffles; per launch and per site) must
    # equal the emulator's counters of the real kernel source exactly: the replay is what scales the
    # profile to sizes the emulator cannot run (configuration S).
    p = Problem(case, dtype, tmp_path)
    proc = p.run(builds.get("driver"), part="profile plain", env={"LWVD_EMU_PROFILE": "1"})
    driver_ok(proc)
    emu = emulator_profile(proc)
    rep = replayed_profile(p)
    assert len(emu) == len(rep), (len(emu), [r["kernel"] for r in rep])
    bad = _profile_mismatches(emu, rep)
    assert not bad, "emulator vs replay (launch, kernel, counter, emulator, replay):\n" + "\n".join(map(str, bad))
    assert any(e["sites"] for e in emu), "the profile counted nothing"


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[10], MULTI_PASS_CASE], ids=str)
def test_profile_replay_matches_emulator_training_pair(builds, tmp_path, case, dtype):
    # The same exact match for the training pair (driver mode train: run_forward_moments, then
    # run_backward_moments with grad_z): kernel_counts.plan_counts' train_forward + train_backward.
    p = Problem(case, dtype, tmp_path)
    proc = p.run(builds.get("driver"), mode="train", part="profile plain", env={"LWVD_EMU_PROFILE": "1"})
    driver_ok(proc)
    emu = emulator_profile(proc)
    rep = replayed_profile(p, ("train_forward", "train_backward"))
    assert len(emu) == len(rep), (len(emu), [r["kernel"] for r in rep])
    bad = _profile_mismatches(emu, rep)
    assert not bad, "emulator vs replay (launch, kernel, counter, emulator, replay):\n" + "\n".join(map(str, bad))
    assert "smooth.kout" in emu[1]["sites"] and "pg.fterm" in emu[3]["sites"]


# A stencil budget (launch_config.h LWVD_STENCIL_BUDGET) small enough that some of CASES[10]'s 33
# filters get a table and the others are evaluated on the fly: float64 per-filter capacity 112 terms
# (28 lags: the 31-lag filters fall back by lags, the others above 112 terms by terms), float32 184.
SMALL_STENCIL_BUDGET = 112 * 33 * 20


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_stencil_tables_with_partial_fallback_match_reference_and_replay(builds, tmp_path, dtype):
    # Filters whose stencil does not fit the host-chosen capacity use the on-the-fly path in the same
    # launches; values must still equal the reference (TOLERANCES) and the profile the replay.
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cost_model
    import kernel_counts

    exe = builds.get("driver", defines=(f"LWVD_STENCIL_BUDGET={SMALL_STENCIL_BUDGET}u",))
    p = Problem(CASES[10], dtype, tmp_path)
    proc = p.run(exe, part="profile plain", env={"LWVD_EMU_PROFILE": "1"})
    driver_ok(proc)
    check_against_reference(p, TOLERANCES[dtype])
    c = p.case
    center, st, sn, rho = (tuple(x.numpy().tolist()) for x in p.params)
    kp = kernel_counts.Problem(c.b, c.n, c.n_fft, c.hop, center, st, sn, rho, c.truncate,
                               "float64" if dtype == torch.float64 else "float32")
    cfg = dict(cost_model.launch_config(), stencil_budget=SMALL_STENCIL_BUDGET)
    stencil = kernel_counts.Stencil(kp, cfg, kernel_counts.Geometry(kp))
    assert 0 < int(stencil.fits.sum()) < c.f, f"expected a mix of table and fallback filters: {stencil.fits}"
    counts = kernel_counts.plan_counts(kp, cfg)
    rep, emu = counts["forward"] + counts["backward"], emulator_profile(proc)
    bad = _profile_mismatches(emu, rep)
    assert len(emu) == len(rep) and not bad, "emulator vs replay:\n" + "\n".join(map(str, bad))
    for site in ("smooth.tterm", "smooth.term", "gz.tbin", "gz.bin"):  # both paths ran
        assert any(site in e["sites"] for e in emu), site


# A window budget (launch_config.h LWVD_WINDOW_BUDGET) of 15 windows per filter for CASES[0]'s 3
# filters, which need 9, 11 and 23: the third has no window table, so grad_z takes its scatter path.
# (CASES[10] takes it by its list overflow: 33 filters cover its one window, list_cap is 32.)
SMALL_WINDOW_BUDGET = {torch.float64: 15 * 3 * 16 * 8, torch.float32: 15 * 3 * 16 * 4}


@needs_plan
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_grad_z_window_path_and_its_fallback_match_reference_and_replay(builds, tmp_path, dtype):
    # grad_z's window path (every filter has a window table) and its scatter path (a filter without
    # one: the block-uniform fallback) on the same problem: values equal the reference (TOLERANCES),
    # the profile equals the replay, and each build ran the path it should.
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cost_model
    import kernel_counts

    c = CASES[0]
    budget = SMALL_WINDOW_BUDGET[dtype]
    for defines, windows in (((), True), ((f"LWVD_WINDOW_BUDGET={budget}u",), False)):
        exe = builds.get("driver", defines=defines)
        p = Problem(c, dtype, tmp_path / ("win" if windows else "scatter"))
        proc = p.run(exe, part="profile plain", env={"LWVD_EMU_PROFILE": "1"})
        driver_ok(proc)
        check_against_reference(p, TOLERANCES[dtype])
        center, st, sn, rho = (tuple(x.numpy().tolist()) for x in p.params)
        kp = kernel_counts.Problem(c.b, c.n, c.n_fft, c.hop, center, st, sn, rho, c.truncate,
                                   "float64" if dtype == torch.float64 else "float32")
        cfg = cost_model.launch_config()
        if not windows:
            cfg = dict(cfg, window_budget=budget)
        geom = kernel_counts.Geometry(kp)
        win = kernel_counts.Windows(kp, cfg, kernel_counts.Stencil(kp, cfg, geom))
        assert bool(win.fits.all()) == windows and win.fits.any(), win.fits
        counts = kernel_counts.plan_counts(kp, cfg)
        rep, emu = counts["forward"] + counts["backward"], emulator_profile(proc)
        bad = _profile_mismatches(emu, rep)
        assert len(emu) == len(rep) and not bad, "emulator vs replay:\n" + "\n".join(map(str, bad))
        gz = emu[-1]["sites"]
        assert ("gzw.win" in gz) == windows and ("gz.tbin" in gz) == (not windows), sorted(gz)
        # the backward's prepare wrote window tables in both builds, the forward's none (lwvd_plan.cuh)
        n_fwd = len(counts["forward"])
        assert "win.write" in emu[n_fwd]["sites"] and not any(k.startswith("win.") for k in emu[0]["sites"])


@needs_plan
def test_profile_aborts_on_a_mis_keyed_site(builds, tmp_path):
    # The counters mean something only if one lane cannot log one warp instruction twice: a mark
    # whose key misses a loop index must abort. Planted: the FFT's radix-4 butterfly mark without its trip.
    kdir = tmp_path / "kernels"
    shutil.copytree(KERNEL_DIR, kdir)
    fft = kdir / "fft.cuh"
    fft.write_text(fft.read_text().replace('LWVD_PROF_TRIP("fft.bfly4", trip);', 'LWVD_PROF_TRIP("fft.bfly4");'))
    exe = builds.get("driver", kernel_dir=kdir, tag="miskeyed")
    # n_fft 128: 32 complex rows x 32 radix-4 butterflies = 2 trips per stage of a 512-thread smooth block
    p = Problem(EmuCase(1, 40, 128, 8, 2), torch.float64, tmp_path / "run")
    proc = p.run(exe, mode="fwd", part="profile plain", env={"LWVD_EMU_PROFILE": "1"})
    assert proc.returncode != 0 and "mis-keyed site" in proc.stderr, proc.stderr[-3000:]


def test_sass_weights_cover_every_profiled_site():
    # Every LWVD_PROF_TRIP region of the kernel source has a weight in the committed SASS table
    # (benchmarks/sass_weights_sm90.json, rebuilt by `python benchmarks/sass_weights.py`), and the
    # table was built from this source: rebuilt here when nvcc and nvdisasm exist.
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import sass_weights

    table = json.loads((ROOT / "benchmarks" / "sass_weights_sm90.json").read_text())["kernels"]
    sites = {s for regions in sass_weights.source_regions().values() for s, _, _ in regions}
    have = {s for per_dtype in table.values() for k in per_dtype.values() for s in k["weights"]}
    assert sites <= have, f"sites without a SASS weight: {sorted(sites - have)}"
    try:
        sass_weights.tool("nvdisasm")
        has_tools = shutil.which("nvcc") is not None
    except RuntimeError:
        has_tools = False
    if has_tools:
        fresh = sass_weights.weights_from_cubin(sass_weights.build_cubin())
        assert fresh == table, "benchmarks/sass_weights_sm90.json is stale: run python benchmarks/sass_weights.py"


@needs_plan
@pytest.mark.parametrize("bad, bit", [("sigma_t", 2), ("rho", 8), ("center", 1)])
def test_invalid_parameters_give_nan_outputs_and_error_flags(builds, tmp_path, bad, bit):
    # The CUDA path checks parameter values on the device (no host sync): every output of the call
    # is NaN and the launcher's error word gets the kInvalid* bit (1 non-finite, 2 sigma_t <= 0,
    # 4 sigma_nu <= 0, 8 |rho| >= 1; csrc/kernels/lwvd_fwd.cuh).
    p = Problem(CASES[0], torch.float64, tmp_path)
    values = {"sigma_t": -1.0, "rho": 1.0, "center": float("nan")}
    name_index = ("center", "sigma_t", "sigma_nu", "rho").index(bad)
    arr = p.params[name_index].numpy().astype(np.float64).copy()
    arr[1] = values[bad]
    arr.tofile(tmp_path / f"{bad}.bin")
    proc = p.run(builds.get("driver"), part="real kernels plain")
    driver_ok(proc)
    assert f"ERROR_FLAGS forward {bit}" in proc.stdout and f"ERROR_FLAGS backward {bit}" in proc.stdout, proc.stdout
    c = p.case
    k = p.read("forward", (c.b, c.f, p.t))
    gz = p.read("grad_z", (c.b, c.n, 2))
    gp = [p.read(f"grad_{n}", (c.f,)) for n in ("center", "sigma_t", "sigma_nu", "rho")]
    for name, x in [("forward", k), ("grad_z", gz)] + list(zip(("center", "sigma_t", "sigma_nu", "rho"), gp)):
        assert torch.isnan(x).all(), f"{name}: not every element is NaN"


@needs_plan
def test_backward_workspace_is_per_block_not_per_frame(builds, tmp_path):
    """Issue 12 item 7 on the CUDA source: the backward's moments are summed G-weighted over each
    moments block's TT frames (lwvd_fwd.cuh), so its workspace holds 6 * B * ceil(T / TT) * F
    scalars, not 6 * B * F * T. Measured as the bytes the plan asks the launcher for in the backward
    beyond the forward (which allocates the same geometry, twiddles and flags), on a problem whose
    B * T = 402 frames make the wave rule of launch_config.h take TT = 4 (102 parts instead of 402
    frames: blocks of kSmoothThreads = 512); the values are checked against the reference at the same
    time."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cost_model
    import kernel_counts

    case = EmuCase(2, 200, 8, 1, 3, "mixed", 4.0, seed=24)
    p = Problem(case, torch.float64, tmp_path)
    proc = p.run(builds.get("driver"), part="real kernels plain")
    driver_ok(proc)
    check_against_reference(p, TOLERANCES[torch.float64])
    ws = {m.group(1): int(m.group(2)) for m in re.finditer(r"^WORKSPACE (forward|backward) (\d+)$", proc.stdout, re.M)}
    cfg = cost_model.launch_config()
    tt = kernel_counts.frames_per_block(cfg, case.n_fft, case.hop, case.b, p.t)
    assert tt == 4, tt  # the case exists for its multi-frame tiles
    parts = case.b * -(-p.t // tt)
    moments = 8 * 6 * parts * case.f

    def a16(x):
        return -(-x // 16) * 16

    # + grad_z's window tables, which only the backward's prepare allocates (headers, windows, hulls)
    center, st, sn, rho = (tuple(x.numpy().tolist()) for x in p.params)
    kp = kernel_counts.Problem(case.b, case.n, case.n_fft, case.hop, center, st, sn, rho, case.truncate, "float64")
    _, rows_cap = kernel_counts.stencil_caps(cfg, kp)
    win_cap = kernel_counts.Windows(kp, cfg, kernel_counts.Stencil(kp, cfg, kernel_counts.Geometry(kp))).win_cap
    windows = a16(8 * case.f * rows_cap) + a16(8 * 16 * case.f * win_cap) + a16(8 * case.f)
    assert ws["backward"] - ws["forward"] == a16(moments) + windows, (ws, moments, windows)
    per_frame = 8 * 6 * case.b * case.f * p.t
    assert a16(moments) <= 0.51 * per_frame, (moments, per_frame)  # the moments part of that difference
