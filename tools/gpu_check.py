#!/usr/bin/env python
"""The one-shot check of the CUDA path on a machine with one GPU (``tools/gpu_check.sh`` runs this).

Stages, in order, each in its own process with its own timeout inside one overall budget (default
450 s, under 8 minutes on one H100/H200), results written to ONE JSON file after every stage (and,
inside the long stages, after every item), so a killed run still leaves what it measured:

  env        python / torch / GPU / driver / nvcc / compute-sanitizer (runs without a GPU too)
  build      ``setup.py build_ext --inplace`` for this GPU only (TORCH_CUDA_ARCH_LIST = its capability)
  tests      ``pytest tests/test_cuda_build.py`` (the CPU-emulator cases deselected: CI runs them)
  compare    CUDA kernels vs CPU kernels vs the float64 reference on >= 40 configurations: forward and
             all five gradients; n_fft 4..8192, N = 1, odd N, hop 1..>N, |rho| 0.9, truncate None,
             leading batch dims, a zero signal, NaN confined to its batch item, non-contiguous
             inputs, a side stream, N = 10^7 and B*N element offsets past 2^31 (the last two checked
             on windows of frames against the reference; see ``windowed_check``)
  timing     forward and forward + backward at configuration S (B=4, N=16000, n_fft=512, hop=160,
             F=80, float32; benchmarks/registry.py's filters), with CUDA events, eagerly and replaying
             a CUDA graph (a failed capture is recorded with its error)
  memcheck, racecheck, synccheck
             compute-sanitizer on a small case (``--stage sanitize-case``); the JSON says
             "tool missing" with the places searched when compute-sanitizer is not found

Without a GPU (``torch.cuda.is_available()`` False) or with ``--dry-run`` every stage after env
says "no GPU" and lists what it would run; the exit code is then 0. With a GPU: 0 when every stage
passed, 1 otherwise. ``--stage NAME`` runs one stage in this process (what the parent runs in its
children); ``--stage compare --device cpu --small`` runs the comparison machinery on the CPU kernels
at reduced sizes (the dry-run test uses it to check the windowed logic without a GPU).

    tools/gpu_check.sh [--out results/gpu_check.json] [--budget 450] [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_OUT = os.path.join(ROOT, "results", "gpu_check.json")
DEFAULT_BUDGET_S = 450.0
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")

# name -> (cap seconds, seconds kept back for it while earlier stages run). The caps add up to
# more than the budget on purpose: time a stage does not use rolls over to the next ones.
STAGE_LIMITS = {
    "env": (60, 0),
    "build": (240, 0),
    "tests": (120, 30),
    "compare": (150, 40),
    "timing": (90, 30),
    "memcheck": (75, 20),
    "racecheck": (75, 20),
    "synccheck": (75, 20),
}
GPU_STAGES = tuple(s for s in STAGE_LIMITS if s != "env")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: str, data) -> None:
    """Atomic: a reader (or a kill) never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def run_cmd(cmd, timeout: float, env=None, log=None) -> dict:
    """Run cmd in its own process group; on timeout kill the whole group (compute-sanitizer's
    child python too). Returns rc, seconds, timed_out and the output's tail."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, errors="replace")
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    seconds = time.monotonic() - t0
    if log is not None:
        log.write(f"\n===== {' '.join(map(str, cmd))}  (rc {proc.returncode}, {seconds:.1f} s"
                  f"{', TIMED OUT' if timed_out else ''})\n{out}\n")
        log.flush()
    return dict(rc=proc.returncode, seconds=round(seconds, 2), timed_out=timed_out, output=out or "",
                tail=(out or "")[-3000:])


# ------------------------------------------------------------------------------------------------
# Tools


def find_compute_sanitizer() -> tuple[str | None, list[str]]:
    """(path or None, the places looked at). The CUDA toolkit has it in bin/; pip's nvidia wheels
    (nvidia-cuda-sanitizer-api) put it under nvidia/**/compute-sanitizer/."""
    looked = []
    exe = shutil.which("compute-sanitizer")
    looked.append("PATH")
    if exe:
        return exe, looked
    homes = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    try:
        homes.append(_setup_module().resolve_cuda_home())
    except Exception:  # noqa: BLE001 - a probe; the list of places is reported either way
        pass
    homes += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*")) + sorted(glob.glob("/opt/nvidia/*"))
    for home in dict.fromkeys(h for h in homes if h):
        for cand in (os.path.join(home, "bin", "compute-sanitizer"),
                     os.path.join(home, "compute-sanitizer", "compute-sanitizer")):
            looked.append(cand)
            if os.access(cand, os.X_OK):
                return cand, looked
    for site in [p for p in sys.path if p.endswith("site-packages")]:
        pattern = os.path.join(site, "nvidia", "**", "compute-sanitizer")
        looked.append(pattern)
        for cand in sorted(glob.glob(pattern, recursive=True)):
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand, looked
    return None, looked


def _setup_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_lwvd_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------
# Stage: env (child)


def stage_env(out_path: str, args) -> int:
    info = dict(python=sys.version.split()[0], executable=sys.executable, cpu_count=os.cpu_count(), utc=utc_now())
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                            timeout=10).stdout.strip() or "unknown (no .git)"
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = "unknown (no git)"
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if info["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device_count=torch.cuda.device_count(), device=p.name, capability=list(torch.cuda.get_device_capability(0)),
                    sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = (q.stdout or q.stderr).strip()
    else:
        info["nvidia_smi"] = "nvidia-smi not found"
    try:
        home = _setup_module().resolve_cuda_home()
    except Exception as exc:  # noqa: BLE001
        home, info["cuda_home_error"] = None, repr(exc)
    info["cuda_home"] = home
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if nvcc and os.path.exists(nvcc):
        v = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        info["nvcc"] = (re.findall(r"release [^\n]*", v) or [v.strip()[-80:]])[0]
    else:
        info["nvcc"] = "nvcc not found: the build stage will fail"
    cs, looked = find_compute_sanitizer()
    info["compute_sanitizer"] = cs or "MISSING"
    if cs is None:
        info["compute_sanitizer_looked_in"] = looked
    else:
        try:
            v = subprocess.run([cs, "--version"], capture_output=True, text=True, timeout=30)
            info["compute_sanitizer_version"] = (v.stdout + v.stderr).strip().splitlines()[-1:]
            h = subprocess.run([cs, "--help"], capture_output=True, text=True, timeout=30)
            info["compute_sanitizer_options"] = [o for o in ("--report-api-errors", "--error-exitcode")
                                                 if o in h.stdout + h.stderr]
        except (OSError, subprocess.SubprocessError) as exc:
            info["compute_sanitizer_version"] = f"could not run it: {exc}"
    write_json(out_path, info)
    return 0


# ------------------------------------------------------------------------------------------------
# Stage: compare (child). Device-agnostic: with --device cpu the CPU kernels play the CUDA role
# (the dry-run test uses that to exercise the windowed logic without a GPU).


def compare_configs(small: bool = False) -> list[dict]:
    """The comparison plan. Each geometry runs in float32 and float64 (one configuration each),
    then the special configurations. small=True shrinks the two huge ones (CPU self-test)."""
    geo = [
        # batch, N, n_fft, hop, F, kind, truncate
        ((2,), 257, 64, 16, 5, "mixed", 4.0),
        ((1,), 1000, 512, 160, 7, "mixed", 4.0),
        ((3,), 90, 16, 7, 4, "untilted", None),
        ((1,), 40, 8192, 10, 3, "wide", 4.0),
        ((2,), 33, 32, 50, 2, "narrow", 4.0),  # hop > N: one frame
        ((2,), 50, 4, 1, 3, "mixed", 4.0),  # smallest n_fft, hop 1
        ((1,), 1, 8, 1, 2, "mixed", 4.0),  # N = 1
        ((1,), 2, 128, 3, 2, "narrow", None),
        ((2,), 511, 256, 64, 6, "wide", 4.0),  # odd N
        ((1,), 700, 1024, 100, 4, "mixed", None),
        ((1,), 200, 2048, 37, 3, "wide", 4.0),
        ((1,), 100, 4096, 25, 2, "untilted", 4.0),
        ((4,), 1600, 128, 160, 80, "mixed", 4.0),  # F = 80
        ((1,), 3000, 512, 1, 2, "mixed", 4.0),  # hop 1: 3001 frames
        ((1,), 999, 64, 2000, 3, "mixed", 4.0),  # hop > N
        ((1,), 400, 64, 8, 4, "rho0.9", 4.0),  # |rho| = 0.9, both signs
        ((1,), 3000, 64, 50, 2, "huge_t", 4.0),  # sigma_t of 300-600 samples: radius >> tile
        ((2, 3), 120, 32, 10, 3, "mixed", 4.0),  # leading batch dims
        ((1,), 100, 64, 10, 2, "zeros", 4.0),  # a silent signal
        ((2,), 100, 64, 10, 2, "nan_item0", 4.0),  # NaN in item 0 stays in item 0
    ]
    plan = []
    for i, (batch, n, n_fft, hop, f, kind, trunc) in enumerate(geo):
        for dt in ("float32", "float64"):
            plan.append(dict(name=f"g{i:02d}_{dt}", mode="full", batch=batch, n=n, n_fft=n_fft, hop=hop, f=f,
                             kind=kind, truncate=trunc, dtype=dt, seed=100 + i))
    for dt in ("float32", "float64"):
        plan.append(dict(name=f"noncontiguous_{dt}", mode="full", batch=(3,), n=300, n_fft=64, hop=16, f=4,
                         kind="mixed", truncate=4.0, dtype=dt, seed=200, layout="noncontiguous"))
    plan.append(dict(name="side_stream_float32", mode="full", batch=(2,), n=2000, n_fft=256, hop=40, f=8,
                     kind="mixed", truncate=4.0, dtype="float32", seed=201, layout="side_stream"))
    n7 = 20000 if small else 10**7
    for dt in ("float32", "float64"):
        plan.append(dict(name=f"N1e7_{dt}", mode="windowed", batch=(1,), n=n7, n_fft=64, hop=160, f=4, kind="mixed",
                         truncate=4.0, dtype=dt, seed=300, windows=[(0, 0, 8), (0, "mid", 8), (0, "end", 8)]))
    # B*N past 2^30 complex samples: interleaved (re, im) element offsets b*2N + 2n pass 2^31 in
    # batch item 1 (the "at2^31" window straddles offset 2^31 itself; "end" is ~2^31.0 + 2^24).
    nbig = 20000 if small else 2**29 + 2**20
    plan.append(dict(name="offsets_past_2^31_float32", mode="windowed", batch=(2,), n=nbig, n_fft=16, hop=4096 if not small else 64,
                     f=2, kind="mixed", truncate=4.0, dtype="float32", seed=301,
                     windows=[(0, 0, 4), (0, "end", 4), (1, 0, 4), (1, "at2^31", 4), (1, "end", 4)]))
    plan.append(dict(name="S_float32", mode="full", batch=(4,), n=16000 if not small else 1600, n_fft=512, hop=160,
                     f=80, kind="S", truncate=4.0, dtype="float32", seed=0))
    return plan


def _params(kind: str, f: int, n_fft: int, dtype, seed: int):
    import torch

    from lwvd_cuda import testing

    if kind == "S":
        from benchmarks import registry

        return tuple(p.to(dtype) for p in registry.config_filters(registry.standard_config(n_filters=f)))
    base = {"rho0.9": "mixed", "huge_t": "wide", "zeros": "mixed", "nan_item0": "mixed"}.get(kind, kind)
    c, st, sn, r = testing.make_filters(f, dtype=torch.float64, seed=seed, kind=base, n_fft=n_fft)
    if kind == "rho0.9":
        r = torch.tensor([0.9, -0.9] * (f // 2) + [0.9] * (f % 2), dtype=torch.float64)
    if kind == "huge_t":
        st = 300.0 + 300.0 * torch.rand(f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return tuple(p.to(dtype) for p in (c, st, sn, r))


def _signal(cfg, dtype):
    import torch

    from lwvd_cuda import testing

    z = testing.make_signal(cfg["batch"], cfg["n"], dtype=dtype, seed=cfg["seed"])
    if cfg["kind"] == "zeros":
        z = torch.zeros_like(z)
    if cfg["kind"] == "nan_item0":
        z = z.clone()
        z[0, cfg["n"] // 2] = complex(float("nan"), 0.0)
    return z


def _errors(names, actual, expected, cpu) -> dict:
    from lwvd_cuda.testing import rel_err

    out = {}
    for name, a, e, c in zip(names, actual, expected, cpu):
        a, e, c = a.detach().cpu(), e.detach().cpu(), c.detach().cpu()
        out[name] = dict(dev_vs_ref=rel_err(a, e.to(a.dtype)), cpu_vs_ref=rel_err(c, e.to(c.dtype)),
                         dev_vs_cpu=rel_err(a, c))
    return out


GRAD_NAMES = ("z", "center", "sigma_t", "sigma_nu", "rho")


def _tolerances(dtype):
    """Forward: lwvd_cuda.testing.TOLERANCES (justified there). Gradients: 10x, the bound of
    tests/test_cuda_build.py's real-device test: nvcc contracts multiply-adds into FMAs and the
    gradients are longer sums (over filters, frames and bins) than one output of the forward."""
    from lwvd_cuda.testing import TOLERANCES

    return TOLERANCES[dtype], 10 * TOLERANCES[dtype]


def _verdict(errs: dict, tol_fwd: float, tol_grad: float) -> bool:
    ok = True
    for name, e in errs.items():
        tol = tol_fwd if name == "forward" else tol_grad
        ok &= all(v <= tol for v in (e["dev_vs_ref"], e["cpu_vs_ref"]))
    return bool(ok)


def full_check(cfg, device: str) -> dict:
    """Forward and five gradients of the public op on `device` vs the CPU kernels vs the float64
    reference (its autograd) on the same (rounded) inputs."""
    import torch

    import lwvd_cuda
    from lwvd_cuda import reference

    dtype = getattr(torch, cfg["dtype"])
    z = _signal(cfg, dtype)
    params = _params(cfg["kind"], cfg["f"], cfg["n_fft"], dtype, cfg["seed"] + 1)
    kw = dict(n_fft=cfg["n_fft"], hop_length=cfg["hop"], truncate=cfg["truncate"])
    out_shape = (*cfg["batch"], cfg["f"], reference.num_frames(cfg["n"], cfg["hop"]))
    g = torch.randn(out_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(cfg["seed"] + 2))
    if cfg["kind"] == "nan_item0":
        g[0] = 0.0  # item 0's gradients are NaN by design; item 1's must be exact (checked below)

    def run(dev, layout="contiguous"):
        zd = z.to(dev)
        pd = [p.to(dev) for p in params]
        if layout == "noncontiguous":  # every input a strided view (z: every other sample, params: stride 3)
            zw = torch.zeros((*zd.shape[:-1], 2 * zd.shape[-1]), dtype=zd.dtype, device=dev)
            zw[..., ::2] = zd
            zd = zw[..., ::2]
            pd = [torch.stack([p, p, p], dim=1).reshape(-1)[::3] for p in pd]
            assert not zd.is_contiguous() and not pd[0].is_contiguous()
        leaves = [t.detach().requires_grad_(True) for t in (zd, *pd)]  # detach keeps the strides
        backend = lwvd_cuda.backend_for(leaves[0], cfg["n_fft"])
        gd = g.to(device=dev, dtype=dtype)
        if layout == "side_stream":
            return run_side_stream(leaves, gd, kw) + (backend,)
        out = lwvd_cuda.lwvd(leaves[0], *leaves[1:], **kw)
        grads = torch.autograd.grad(out, leaves, gd)
        return out, grads, {}, backend

    layout = cfg.get("layout", "contiguous")
    out_d, grads_d, extra, backend_d = run(device, layout)
    out_c, grads_c, _, backend_c = run("cpu", layout if layout == "noncontiguous" else "contiguous")
    z64 = z.to(torch.complex128).requires_grad_(True)
    p64 = [p.to(torch.float64).requires_grad_(True) for p in params]
    ref = reference.lwvd(z64, *p64, **kw)
    ref_grads = torch.autograd.grad(ref, [z64, *p64], g)
    names = ("forward",) + GRAD_NAMES
    res = dict(backend_dev=backend_d, backend_cpu=backend_c, **extra)
    if cfg["kind"] == "nan_item0":
        # item 0: NaN in, NaN out (forward); item 1 untouched by it, compared like any other item
        res["nan_item0_forward_has_nan"] = bool(torch.isnan(out_d[0].detach().cpu()).any())
        res["nan_item1_all_finite"] = bool(torch.isfinite(out_d[1].detach().cpu()).all())
        sel = lambda t: t[1]  # noqa: E731
        errs = _errors(names[:2], [sel(out_d), sel(grads_d[0])], [sel(ref), sel(ref_grads[0])],
                       [sel(out_c), sel(grads_c[0])])
        ok_nan = res["nan_item0_forward_has_nan"] and res["nan_item1_all_finite"]
    else:
        errs = _errors(names, [out_d, *grads_d], [ref, *ref_grads], [out_c, *grads_c])
        ok_nan = True
    tol_fwd, tol_grad = _tolerances(dtype)
    res.update(errors=errs, tol_forward=tol_fwd, tol_grad=tol_grad)
    kernels_used = backend_d[0] == "kernels" and backend_c[0] == "kernels"
    res["pass"] = bool(_verdict(errs, tol_fwd, tol_grad) and ok_nan and kernels_used and extra.get("side_stream_bitwise_equal_to_default_stream", True))
    if not kernels_used:
        res["why_not_pass"] = f"not the fused kernels: device {backend_d}, cpu {backend_c}"
    return res


def run_side_stream(leaves, gd, kw):
    """The op on a fresh (non-blocking) side stream whose input is written, on that stream, after a
    long sleep: kernels launched on any other stream than the current one read the NaN the buffer
    held before. Also compared bitwise with the same call on the default stream (determinism)."""
    import torch

    import lwvd_cuda

    z_src = leaves[0].detach()
    buf = torch.full_like(z_src, complex(float("nan"), float("nan")))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU clock cycles before the input exists
        buf.copy_(z_src)
        zl = buf.detach().requires_grad_(True)
        out = lwvd_cuda.lwvd(zl, *leaves[1:], **kw)
        grads = torch.autograd.grad(out, [zl, *leaves[1:]], gd)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    out0 = lwvd_cuda.lwvd(leaves[0], *leaves[1:], **kw)
    grads0 = torch.autograd.grad(out0, leaves, gd)
    equal = bool(torch.equal(out, out0) and all(torch.equal(a, b) for a, b in zip(grads, grads0)))
    return out, grads, dict(side_stream_bitwise_equal_to_default_stream=equal)


def _window_frames(spec, n_frames: int, n: int, hop: int) -> tuple[int, int]:
    b, where, w = spec
    if where == "end":
        t0 = n_frames - w
    elif where == "mid":
        t0 = n_frames // 2
    elif where == "at2^31":
        # frames around sample n with element offset (b*N + n)*2 == 2^31; the middle of the signal
        # when the signal is too short to reach it (the reduced CPU self-test)
        t_at = (2**30 - b * n) // hop - w // 2
        t0 = t_at if 0 <= t_at <= n_frames - w else n_frames // 2
    else:
        t0 = int(where)
    return t0, t0 + w


def windowed_check(cfg, device: str) -> dict:
    """For signals too long for the reference: the op runs on the whole (B, N) signal (random
    complex noise made on the device), with the output gradient G non-zero only on a few windows of
    frames, far apart. A frame's value depends only on samples within margin = ceil(truncate *
    max sigma_t) + n_fft/2 + 2 of its centre (|d| <= truncate*sigma_t on the ellipse, lags |m| <
    n_fft/2), so the reference on the segment [a, e) (a a multiple of hop) reproduces it exactly,
    and grad_z on [a, e) and the parameter gradients (summed over the windows) are those of the
    segments. grad_z outside every segment must be exactly 0."""
    import torch

    import lwvd_cuda
    from lwvd_cuda import reference

    dtype = getattr(torch, cfg["dtype"])
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    (b_count,), n, hop, n_fft = cfg["batch"], cfg["n"], cfg["hop"], cfg["n_fft"]
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    z = torch.randn((b_count, n), dtype=cdtype, device=device, generator=gen)
    params = [p.to(device) for p in _params(cfg["kind"], cfg["f"], n_fft, dtype, cfg["seed"] + 1)]
    kw = dict(n_fft=n_fft, hop_length=hop, truncate=cfg["truncate"])
    n_frames = reference.num_frames(n, hop)
    margin = math.ceil(cfg["truncate"] * float(params[1].max())) + n_fft // 2 + 2
    windows = []
    for spec in cfg["windows"]:
        t0, t1 = _window_frames(spec, n_frames, n, hop)
        a = max(0, t0 * hop - margin) // hop * hop
        e = min(n, (t1 - 1) * hop + margin + 1)
        windows.append(dict(b=spec[0], t0=t0, t1=t1, a=a, e=e,
                            max_element_offset=2 * (spec[0] * n + e) - 1))
    for i, w in enumerate(windows):  # disjoint segments, or one window's G would leak into another's grad_z
        for v in windows[i + 1:]:
            if w["b"] == v["b"] and w["a"] < v["e"] and v["a"] < w["e"]:
                raise ValueError(f"windows overlap: {w} and {v}")
    g = torch.zeros((b_count, cfg["f"], n_frames), dtype=dtype, device=device)
    gcpu = torch.Generator().manual_seed(cfg["seed"] + 2)
    for w in windows:
        g[w["b"], :, w["t0"]:w["t1"]] = torch.randn((cfg["f"], w["t1"] - w["t0"]), generator=gcpu, dtype=torch.float64).to(device=device, dtype=dtype)
    zl = z.requires_grad_(True)
    pl = [p.requires_grad_(True) for p in params]
    backend = lwvd_cuda.backend_for(zl, n_fft)
    t_start = time.monotonic()
    out = lwvd_cuda.lwvd(zl, *pl, **kw)
    grads = torch.autograd.grad(out, [zl, *pl], g)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds_op = time.monotonic() - t_start
    tol_fwd, tol_grad = _tolerances(dtype)
    res = dict(windows=windows, margin=margin, backend_dev=backend, seconds_fwd_bwd_full=round(seconds_op, 3),
               tol_forward=tol_fwd, tol_grad=tol_grad, errors={})
    ok = backend[0] == "kernels"
    p_sum_ref = [torch.zeros(cfg["f"], dtype=torch.float64) for _ in range(4)]
    p_sum_cpu = [torch.zeros(cfg["f"], dtype=torch.float64) for _ in range(4)]
    for i, w in enumerate(windows):
        b, a, e, t0, t1 = w["b"], w["a"], w["e"], w["t0"], w["t1"]
        s0, s1 = t0 - a // hop, t1 - a // hop  # the window's frames in the segment's numbering
        seg = z[b, a:e].detach().cpu()
        gseg = torch.zeros((cfg["f"], reference.num_frames(e - a, hop)), dtype=torch.float64)
        gseg[:, s0:s1] = g[b, :, t0:t1].cpu().double()
        z64 = seg.to(torch.complex128).requires_grad_(True)
        p64 = [p.detach().cpu().double().requires_grad_(True) for p in params]
        ref = reference.lwvd(z64, *p64, **kw)
        rg = torch.autograd.grad(ref, [z64, *p64], gseg)
        zc = seg.clone().requires_grad_(True)
        pc = [p.detach().cpu().clone().requires_grad_(True) for p in params]
        oc = lwvd_cuda.lwvd(zc, *pc, **kw)
        cg = torch.autograd.grad(oc, [zc, *pc], gseg.to(dtype))
        errs = _errors(("forward", "z"), [out[b, :, t0:t1], grads[0][b, a:e]], [ref[:, s0:s1], rg[0]],
                       [oc[:, s0:s1], cg[0]])
        res["errors"][f"window{i}"] = errs
        ok &= _verdict(errs, tol_fwd, tol_grad)
        for k in range(4):
            p_sum_ref[k] += rg[1 + k]
            p_sum_cpu[k] += cg[1 + k].double()
    res["errors"]["params"] = _errors(GRAD_NAMES[1:], grads[1:], p_sum_ref, p_sum_cpu)
    ok &= _verdict(res["errors"]["params"], tol_fwd, tol_grad)
    gz = grads[0].detach()
    for w in windows:
        gz[w["b"], w["a"]:w["e"]] = 0
    outside = float(torch.view_as_real(gz).abs().max()) if gz.numel() else 0.0
    res["grad_z_max_abs_outside_windows"] = outside
    ok &= outside == 0.0
    res["pass"] = bool(ok)
    return res


def stage_compare(out_path: str, args) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    plan = compare_configs(small=args.small)
    if args.only:
        plan = [c for c in plan if re.search(args.only, c["name"])]
    results = dict(device=device, n_configs=len(plan), done=0, passed=0, configs={})
    write_json(out_path, results)
    for cfg in plan:
        t0 = time.monotonic()
        entry = dict(cfg)
        try:
            if cfg.get("layout") == "side_stream" and device != "cuda":
                entry.update(skipped="a side stream needs CUDA", **{"pass": True})
            elif cfg["mode"] == "full":
                entry.update(full_check(cfg, device))
            else:
                entry.update(windowed_check(cfg, device))
        except Exception as exc:  # noqa: BLE001 - recorded, and the next configuration still runs
            entry.update(error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-3000:],
                         **{"pass": False})
            if device == "cuda" and "illegal" in str(exc).lower():
                entry["note"] = "the CUDA context is lost after an illegal access: later configurations fail too"
        entry["seconds"] = round(time.monotonic() - t0, 3)
        results["configs"][cfg["name"]] = entry
        results["done"] += 1
        results["passed"] += bool(entry["pass"])
        write_json(out_path, results)
        print(f"{cfg['name']}: {'pass' if entry['pass'] else 'FAIL'} ({entry['seconds']} s)", flush=True)
    return 0 if results["passed"] == results["done"] else 1


# ------------------------------------------------------------------------------------------------
# Stage: timing (child)


def stage_timing(out_path: str, args) -> int:
    import torch

    import lwvd_cuda
    from benchmarks import registry
    from lwvd_cuda import testing

    reps, warmup = 20, 3
    cfg = registry.standard_config()
    dtype = torch.float32
    z = testing.make_signal((cfg.batch,), cfg.n, dtype=dtype, seed=cfg.seed).cuda()
    params = [p.to(device="cuda", dtype=dtype) for p in registry.config_filters(cfg)]
    kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate)
    zg = z.detach().requires_grad_(True)
    pg = [p.detach().requires_grad_(True) for p in params]
    g = torch.randn((cfg.batch, cfg.n_filters, cfg.frames), device="cuda", dtype=dtype)
    res = dict(config=cfg.label(), dtype="float32", reps=reps, warmup=warmup, backend=lwvd_cuda.backend_for(z, cfg.n_fft),
               device=torch.cuda.get_device_name(0), utc=utc_now(), note="CUDA-event times of one GPU; "
               "'eager' includes the host work of the call (argument checks, any device-to-host syncs)")
    write_json(out_path, res)

    def fwd():
        return lwvd_cuda.lwvd(z, *params, **kw)

    def fwd_bwd():
        return torch.autograd.grad(lwvd_cuda.lwvd(zg, *pg, **kw), [zg, *pg], g)

    def events(fn):
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        times.sort()
        return dict(median_ms=times[len(times) // 2], min_ms=times[0], max_ms=times[-1])

    passes = (("forward", fwd), ("forward_backward", fwd_bwd))
    for name, fn in passes:  # eager first for both: a failed capture cannot spoil an eager figure
        entry = res.setdefault(name, {})
        try:
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            entry["eager"] = events(fn)
            entry["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except Exception as exc:  # noqa: BLE001
            entry["eager"] = dict(error=f"{type(exc).__name__}: {exc}"[:1000])
        write_json(out_path, res)
    for name, fn in passes:
        entry = res[name]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static = fn()
            for _ in range(warmup):
                graph.replay()
            entry["graph"] = events(graph.replay)
            eager = fn()
            static = static if isinstance(static, (tuple, list)) else (static,)
            eager = eager if isinstance(eager, (tuple, list)) else (eager,)
            entry["graph"]["replay_bitwise_equal_to_eager"] = bool(all(torch.equal(a, b) for a, b in zip(static, eager)))
        except Exception as exc:  # noqa: BLE001 - a capture that fails is a result (issue 10 item 4)
            entry["graph"] = dict(error=f"capture failed: {type(exc).__name__}: {exc}"[:1000])
            try:
                torch.cuda.synchronize()
            except Exception as exc2:  # noqa: BLE001
                entry["graph"]["after"] = f"synchronize after the failed capture: {exc2}"[:500]
        write_json(out_path, res)
    ok = all("error" not in res[k].get(m, {"error": 1}) for k in ("forward", "forward_backward") for m in ("eager", "graph"))
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------
# The small case run under compute-sanitizer (child of the sanitizer)


def stage_sanitize_case(out_path, args) -> int:
    """Forward + backward in float32 and float64 on small problems covering the code paths: many
    passes per tile, multi-frame tiles, hop > N, truncate=None, and n_fft 8192 (dynamic shared
    memory above 48 KiB: the opt-in path). Inputs are made on the CPU and copied, so the GPU runs
    little besides the lwvd kernels."""
    import torch

    import lwvd_cuda
    from lwvd_cuda import testing

    cases = [testing.Case((2,), 200, 64, 8, 3, "mixed", 4.0, seed=1), testing.Case((1,), 40, 16, 50, 2, "narrow", None, seed=2),
             testing.Case((1,), 16, 8192, 8, 1, "wide", 4.0, seed=3)]
    for case in cases:
        for dtype in (torch.float32, torch.float64):
            z, params = case.inputs(dtype)
            z = z.cuda().requires_grad_(True)
            params = [p.cuda().requires_grad_(True) for p in params]
            assert lwvd_cuda.backend_for(z, case.n_fft)[0] == "kernels"
            out = lwvd_cuda.lwvd(z, *params, n_fft=case.n_fft, hop_length=case.hop, truncate=case.truncate)
            grads = torch.autograd.grad(out, [z, *params], torch.ones_like(out))
            torch.cuda.synchronize()
            assert all(bool(torch.isfinite(t).all()) for t in (out, *grads))
    print("SANITIZE-CASE OK", flush=True)
    return 0


def parse_sanitizer(output: str) -> dict:
    res = {}
    m = re.search(r"ERROR SUMMARY: (\d+) error", output)
    if m:
        res["errors"] = int(m.group(1))
    m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", output)
    if m:
        res["hazards"], res["errors"], res["warnings"] = map(int, m.groups())
    res["first_reports"] = [ln for ln in output.splitlines() if ln.startswith("=========") and
                            re.search(r"Invalid|Race|hazard|Barrier|Error|error", ln)][:12]
    return res


# ------------------------------------------------------------------------------------------------
# Parent


def pytest_counts(output: str) -> dict:
    summary = ([ln for ln in output.splitlines() if re.search(r" in [\d.]+s", ln)] or [""])[-1]  # pytest's last line
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", summary)}
    counts["failed_tests"] = re.findall(r"^FAILED (\S+)", output, re.M)[:40]
    counts["skip_reasons"] = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", output, re.M)))[:20]
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="the JSON file (default results/gpu_check.json)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="overall seconds for all stages")
    ap.add_argument("--dry-run", action="store_true", help="run no GPU stage even where a GPU exists")
    ap.add_argument("--stage", help="(internal) run one stage in this process")
    ap.add_argument("--stage-out", help="(internal) the stage's JSON")
    ap.add_argument("--device", help="compare stage: the device under test (default cuda when available)")
    ap.add_argument("--small", action="store_true", help="compare stage: shrink the huge configurations")
    ap.add_argument("--only", help="compare stage: regex of configuration names")
    args = ap.parse_args(argv)
    if args.stage:
        fn = dict(env=stage_env, compare=stage_compare, timing=stage_timing, **{"sanitize-case": stage_sanitize_case})
        return fn[args.stage](args.stage_out, args)
    return run_all(args)


def run_all(args) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.budget
    out = os.path.abspath(args.out)
    log_path = os.path.splitext(out)[0] + ".log"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    log = open(log_path, "w")
    result = dict(tool="tools/gpu_check.sh", started_utc=utc_now(), budget_s=args.budget, out=out, log=log_path,
                  dry_run=bool(args.dry_run), stages={})
    write_json(out, result)
    py = sys.executable
    stage_json = lambda name: f"{os.path.splitext(out)[0]}.{name}.partial.json"  # noqa: E731

    def child(name, timeout, extra=()):
        path = stage_json(name)
        if os.path.exists(path):
            os.remove(path)
        r = run_cmd([py, os.path.abspath(__file__), "--stage", name, "--stage-out", path, *extra], timeout,
                    log=log)
        data = read_json(path)
        if os.path.exists(path):
            os.remove(path)
        return r, data

    def budget_for(name):
        cap, _ = STAGE_LIMITS[name]
        later = list(STAGE_LIMITS)[list(STAGE_LIMITS).index(name) + 1:]
        keep = sum(STAGE_LIMITS[s][1] for s in later)
        return min(cap, deadline - time.monotonic() - keep)

    def record(name, entry):
        result["stages"][name] = entry
        write_json(out, result)
        print(f"[gpu_check] {name}: {entry['status']}" + (f" ({entry['seconds']} s)" if "seconds" in entry else ""),
              flush=True)

    # env: always
    r, env = child("env", budget_for("env"))
    env = env or {}
    result["env"] = env
    record("env", dict(status="pass" if r["rc"] == 0 and env else "fail", seconds=r["seconds"],
                       **({} if r["rc"] == 0 else dict(tail=r["tail"]))))
    gpu = bool(env.get("cuda_available")) and not args.dry_run
    skip_status = "no GPU"
    no_gpu_reason = "--dry-run" if args.dry_run else "torch.cuda.is_available() is False"
    cap = env.get("capability") or [0, 0]
    arch = f"{cap[0]}.{cap[1]}"
    build_env = dict(os.environ, TORCH_CUDA_ARCH_LIST=arch, LWVD_BUILD="cuda",
                     MAX_JOBS=os.environ.get("MAX_JOBS", str(min(8, os.cpu_count() or 1))))
    sanitizer = env.get("compute_sanitizer")
    plans = dict(
        build=f"TORCH_CUDA_ARCH_LIST=<the GPU's capability> LWVD_BUILD=cuda {py} setup.py build_ext --inplace",
        tests=f"{py} -m pytest -q -rfs tests/test_cuda_build.py -k 'not emulated'",
        compare=dict(n_configs=len(compare_configs()), configs=[c["name"] for c in compare_configs()]),
        timing="configuration S, float32: forward and forward+backward, CUDA events, eager and CUDA graph",
    )
    for tool in SANITIZER_TOOLS:
        plans[tool] = (f"{sanitizer if sanitizer not in (None, 'MISSING') else 'compute-sanitizer (MISSING)'} --tool {tool} "
                       f"{py} tools/gpu_check.py --stage sanitize-case")

    for name in GPU_STAGES:
        if not gpu:
            entry = dict(status=skip_status, reason=no_gpu_reason, would_run=plans[name])
            if name in SANITIZER_TOOLS and sanitizer in (None, "MISSING"):
                entry["tool"] = "compute-sanitizer MISSING (looked in: %s)" % ", ".join(env.get("compute_sanitizer_looked_in", []))
            record(name, entry)
            continue
        timeout = budget_for(name)
        if timeout < 10:
            record(name, dict(status="skipped: overall time budget spent", budget_s=args.budget))
            continue
        entry = dict(timeout_s=round(timeout, 1))
        if name == "build":
            r = run_cmd([py, "setup.py", "build_ext", "--inplace"], timeout, env=build_env, log=log)
            entry.update(status="pass" if r["rc"] == 0 else ("timeout" if r["timed_out"] else "fail"),
                         seconds=r["seconds"], arch_list=arch,
                         spill_warnings=re.findall(r"ptxas warning : Registers are spilled[^\n]*", r["output"])[:20])
            if r["rc"] != 0:
                entry["tail"] = r["tail"]
            record(name, entry)
            if r["rc"] != 0:  # nothing after this can run the kernels
                gpu = False
                skip_status, no_gpu_reason = "not run", "the build failed: no kernel to run"
            continue
        if name == "tests":
            r = run_cmd([py, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "tests/test_cuda_build.py", "-k",
                         "not emulated"], timeout, env=build_env, log=log)
            entry.update(status="pass" if r["rc"] == 0 else ("timeout" if r["timed_out"] else "fail"),
                         seconds=r["seconds"], counts=pytest_counts(r["output"]), tail=r["tail"][-1500:])
        elif name in ("compare", "timing"):
            r, data = child(name, timeout)
            entry.update(status="pass" if r["rc"] == 0 else ("timeout" if r["timed_out"] else "fail"),
                         seconds=r["seconds"], result=data)
            if r["rc"] != 0:
                entry["tail"] = r["tail"][-2000:]
        else:  # a sanitizer
            if sanitizer in (None, "MISSING"):
                record(name, dict(status="tool missing", detail="compute-sanitizer not found (looked in: %s)"
                                  % ", ".join(env.get("compute_sanitizer_looked_in", []))))
                continue
            # Only the kernels' own errors matter here: API errors torch provokes and handles itself
            # are not reported (--report-api-errors no), where the tool has that option.
            opts = env.get("compute_sanitizer_options", [])
            cmd = [sanitizer, "--tool", name]
            cmd += ["--error-exitcode", "86"] if "--error-exitcode" in opts else []
            cmd += ["--report-api-errors", "no"] if "--report-api-errors" in opts else []
            cmd += [py, os.path.abspath(__file__), "--stage", "sanitize-case"]
            r = run_cmd(cmd, timeout, log=log)
            parsed = parse_sanitizer(r["output"])
            case_ok = "SANITIZE-CASE OK" in r["output"]
            if r["timed_out"]:
                status = "timeout"
            elif "errors" not in parsed:
                status = "tool failed (no summary; e.g. 'Device not supported' on this runtime)"
            elif parsed["errors"] == 0 and r["rc"] == 0 and case_ok:
                status = "pass"
            else:
                status = "fail"
            entry.update(status=status, seconds=r["seconds"], rc=r["rc"], case_ran=case_ok, **parsed)
            if status != "pass":
                entry["tail"] = r["tail"][-2000:]
        record(name, entry)

    result["finished_utc"] = utc_now()
    result["total_s"] = round(time.monotonic() - t_start, 1)
    statuses = {k: v["status"] for k, v in result["stages"].items()}
    result["summary"] = statuses
    write_json(out, result)
    log.close()
    print(f"[gpu_check] wrote {out} (log {log_path}) in {result['total_s']} s", flush=True)
    if all(v in ("pass", "no GPU") for v in statuses.values()):
        return 0  # a dry run (no GPU stage ran) or every stage passed
    return 1


if __name__ == "__main__":
    sys.exit(main())
