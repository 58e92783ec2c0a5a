"""The CUDA path without a GPU: build, registration, schemas on fake CUDA tensors, resource usage,
the cost model; and, where a CUDA device exists, the real kernels against the reference.

What runs where (say so, never imply a GPU ran):
* registration / fake tensors: need the compiled extension (skipped when it was not built);
* resource usage and the spill gate: tests/test_resources.py;
* the real-kernel tests: need a CUDA device; on this project's machines they are skipped
  ("no CUDA device"). The same kernel source runs on the CPU in tests/test_cuda_emulation.py.
"""

from __future__ import annotations

import copy
import glob
import math
import os
import re
import shutil
import sys
import warnings

import pytest
import torch

import lwvd_cuda
from lwvd_cuda import _extension, reference
from lwvd_cuda.testing import TOLERANCES, Case, assert_rel_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

needs_ext = pytest.mark.skipif(not _extension.is_loaded(), reason=f"extension not built: {_extension.load_error()}")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _built_with_cuda() -> bool:
    """Whether the compiled _C holds the CUDA launcher, read from the binary (not from the registry,
    which is what the test checks)."""
    for so in glob.glob(os.path.join(os.path.dirname(lwvd_cuda.__file__), "_C*.so")):
        with open(so, "rb") as fh:
            if b"lwvd_fwd_cuda" in fh.read():
                return True
    return False


@needs_ext
def test_cuda_kernels_registered_when_built_with_cuda():
    if not _built_with_cuda():
        pytest.skip("extension built CPU-only (no nvcc / CPU torch / LWVD_BUILD=cpu)")
    assert lwvd_cuda.has_cuda_kernels()
    for op in ("lwvd_fwd", "lwvd_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lwvd_cuda::{op}", "CUDA"), op


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_schema_on_fake_cuda_tensors(dtype):
    """Shapes/dtypes/devices of both ops on fake device='cuda' tensors (register_fake), no GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    b, n, f, hop = 3, 101, 5, 7
    with FakeTensorMode(allow_non_fake_inputs=False):
        z = torch.empty(b, n, dtype=cdtype, device="cuda")
        params = [torch.empty(f, dtype=dtype, device="cuda") for _ in range(4)]
        out = torch.ops.lwvd_cuda.lwvd_fwd(z, *params, 64, hop, 4.0)
        assert out.shape == (b, f, 1 + n // hop) and out.dtype == dtype and out.device.type == "cuda"
        grads = torch.ops.lwvd_cuda.lwvd_bwd(torch.empty_like(out), z, *params, 64, hop, math.inf)
        assert [tuple(g.shape) for g in grads] == [(b, n), (f,), (f,), (f,), (f,)]
        assert grads[0].dtype == cdtype and all(g.dtype == dtype for g in grads[1:])
        assert all(g.device.type == "cuda" for g in grads)


def _cuobjdump() -> str | None:
    """cuobjdump from the toolkit, else the copy triton (a dependency of CUDA torch) bundles."""
    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    try:
        import triton
    except ImportError:
        return None
    cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return cand if os.access(cand, os.X_OK) else None


@needs_ext
def test_fatbinary_holds_every_arch_and_ptx_of_the_newest():
    """The built _C carries a cubin for every architecture of TORCH_CUDA_ARCH_LIST (setup.py's
    DEFAULT_ARCHS when unset: sm_80, 86, 89, 90, 100, 120) and PTX of the newest when it says +PTX,
    so a GPU newer than the list still gets a kernel. Read from the binary, no GPU needed. A build
    made with another TORCH_CUDA_ARCH_LIST than this process sees fails here: rebuild."""
    import subprocess

    import resource_report

    if not _built_with_cuda():
        pytest.skip("extension built CPU-only (no nvcc / CPU torch / LWVD_BUILD=cpu)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton's bundled copy)")
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or resource_report._setup_module().DEFAULT_ARCHS
    (so,) = glob.glob(os.path.join(os.path.dirname(lwvd_cuda.__file__), "_C*.so"))
    elf = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", so], capture_output=True, text=True, check=True).stdout
    cubins = sorted({int(a) for a in re.findall(r"\.sm_(\d+)a?\.cubin", elf)})
    ptxs = sorted({int(a) for a in re.findall(r"\.sm_(\d+)a?\.ptx", ptx)})
    want = sorted(resource_report.parse_arch_list(arch_list))
    assert cubins == want, f"cubins {cubins} != TORCH_CUDA_ARCH_LIST {arch_list!r}"
    want_ptx = [want[-1]] if arch_list.strip().endswith("+PTX") else []
    assert ptxs == want_ptx, f"PTX for {ptxs}, expected {want_ptx} ({arch_list!r})"


def test_cost_model_counts_follow_launch_config():
    import cost_model

    cfg = cost_model.launch_config()
    assert cfg["threads"] % 32 == 0
    # B=1, N=64, n_fft=16, hop=64: T=2 frames; frames/block = ceil(2*16/64) = 1, so two tiles; a
    # narrow filter (radius int(4*0.2 + 1) = 1): tile 0 needs rows [0, 1], tile 1 row [63, 63] (clipped
    # at N-1); each fits in one pass of 2*cr rows, and a pass always computes all of its rows.
    p = cost_model.predict(1, 64, 16, 64, sigma_t=0.2, sigma_nu=0.01, rho=0.0, n_filters=1, truncate=4.0)
    cr = p["launch"]["complex_rows_per_pass"]
    assert cr == min(cfg["smooth_rows_smem_budget"] // (16 * 2 * 4), cfg["max_complex_rows"])
    assert p["launch"]["frames_per_block"] == 1
    assert p["launch"]["max_radius"] == 1
    rows = 2 * (2 * cr)
    assert p["forward"]["flops"]["fft"] == pytest.approx(rows / 2 * 8 * 4 * cost_model.FLOPS_BUTTERFLY)
    for part in ("forward", "backward"):
        assert p[part]["predicted_s"] > 0
    assert "not a measurement" in p["note"]
    with pytest.raises(ValueError, match="n_fft"):
        cost_model.predict(1, 64, 24, 8, 1.0, 0.1)


# ------------------------------------------------------------------------------------------------
# Real kernels on a CUDA device (skipped on this project's machines: no GPU).

GPU_CASES = [
    Case((2,), 257, 64, 16, 5, "mixed", 4.0, seed=1),
    Case((1,), 1000, 512, 160, 7, "mixed", 4.0, seed=2),
    Case((3,), 90, 16, 7, 4, "untilted", None, seed=3),
    Case((1,), 40, 8192, 10, 3, "wide", 4.0, seed=4),
    Case((2,), 33, 32, 50, 2, "narrow", 4.0, seed=5),
]


@needs_ext
@needs_gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_real_cuda_kernels_match_reference(case, dtype):
    z, params = case.inputs(dtype, device="cuda")
    z = z.requires_grad_(True)
    params = [p.requires_grad_(True) for p in params]
    out = torch.ops.lwvd_cuda.lwvd_fwd(z, *params, case.n_fft, case.hop, math.inf if case.truncate is None else case.truncate)
    z64 = z.detach().cpu().to(torch.complex128).requires_grad_(True)
    p64 = [p.detach().cpu().double().requires_grad_(True) for p in params]
    ref = reference.lwvd(z64, *p64, n_fft=case.n_fft, hop_length=case.hop, truncate=case.truncate)
    tol = TOLERANCES[dtype]
    assert_rel_close(out.cpu(), ref.to(out.dtype), tol, "forward")
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(out, [z, *params], g.to(device="cuda", dtype=dtype))
    ref_grads = torch.autograd.grad(ref, [z64, *p64], g)
    for name, a, e in zip(["z", "center", "sigma_t", "sigma_nu", "rho"], grads, ref_grads):
        assert_rel_close(a.cpu(), e.to(a.dtype), 10 * tol, f"grad {name}")


@needs_ext
@needs_gpu
def test_real_cuda_kernels_bitwise_deterministic():
    case = GPU_CASES[1]
    z, params = case.inputs(torch.float32, device="cuda")
    outs, grads = [], []
    for _ in range(2):
        out = torch.ops.lwvd_cuda.lwvd_fwd(z, *params, case.n_fft, case.hop, 4.0)
        g = torch.ops.lwvd_cuda.lwvd_bwd(torch.ones_like(out), z, *params, case.n_fft, case.hop, 4.0)
        outs.append(out)
        grads.append(g)
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(grads[0], grads[1]):
        assert torch.equal(a, b)


@needs_ext
@needs_gpu
def test_real_cuda_rejects_unsupported_n_fft():
    z, params = Case((1,), 50, 16, 5, 2).inputs(torch.float32, device="cuda")
    with pytest.raises(ValueError, match="n_fft"):
        torch.ops.lwvd_cuda.lwvd_fwd(z, *params, 24, 5, 4.0)


# ------------------------------------------------------------------------------------------------
# Host overhead of the CUDA path (issue 10, item 4), GPU only. They fail until the value checks are
# sync-free and the launches fused; they must not be weakened to pass.


def _require_cuda_kernels():
    if not lwvd_cuda.has_cuda_kernels():
        pytest.skip("extension built without the CUDA kernels")


def _gpu_device_activities(prof) -> list[str]:
    """Names of the work the GPU ran under the profiler: kernels, memsets and memcpys."""
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@needs_ext
@needs_gpu
def test_cuda_forward_backward_do_not_sync_and_launch_at_most_3_each():
    """No device-to-host sync in the public op's forward or backward (torch's sync debug mode raises
    on one), and at most 3 GPU operations (kernels, memsets, copies) per pass, counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    _require_cuda_kernels()
    case = Case((2,), 4000, 512, 160, 16, "mixed", 4.0, seed=7)
    z, params = case.inputs(torch.float32, device="cuda")
    leaves = [t.detach().requires_grad_(True) for t in (z, *params)]
    kw = dict(n_fft=case.n_fft, hop_length=case.hop, truncate=case.truncate)
    g = torch.randn((2, case.f, 1 + case.n // case.hop), device="cuda")
    # Warm-up outside the checks: first-call work (module loading, the shared-memory opt-in) is not a pass.
    torch.autograd.grad(lwvd_cuda.lwvd(leaves[0], *leaves[1:], **kw), leaves, g)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = lwvd_cuda.lwvd(leaves[0], *leaves[1:], **kw)
        torch.autograd.grad(out, leaves, g)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as fwd_prof:
        out = lwvd_cuda.lwvd(leaves[0], *leaves[1:], **kw)
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as bwd_prof:
        torch.autograd.grad(out, leaves, g)
        torch.cuda.synchronize()
    fwd, bwd = _gpu_device_activities(fwd_prof), _gpu_device_activities(bwd_prof)
    assert fwd, "the profiler saw no GPU work in the forward: the count below would be meaningless"
    assert len(fwd) <= 3, f"forward: {len(fwd)} GPU operations: {fwd}"
    assert len(bwd) <= 3, f"backward: {len(bwd)} GPU operations: {bwd}"


@needs_ext
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cuda_training_pair_matches_plain_pair_and_cpu(dtype):
    """lwvd_fwd_moments / lwvd_bwd_moments on CUDA (issue 10): K bitwise lwvd_fwd's (same terms, same
    order), grad_z bitwise lwvd_bwd's (the same grad_z tiles), the parameter gradients within
    TOLERANCES of lwvd_bwd's (another summation order of the same moments), the moments within
    TOLERANCES of the CPU op's; eager autograd of the public op routes CUDA to the pair."""
    _require_cuda_kernels()
    case = GPU_CASES[1]
    z, params = case.inputs(dtype, device="cuda")
    args = (case.n_fft, case.hop, 4.0)
    k_plain = torch.ops.lwvd_cuda.lwvd_fwd(z, *params, *args)
    k, mom = torch.ops.lwvd_cuda.lwvd_fwd_moments(z, *params, *args)
    assert mom.dtype == torch.float64 and mom.shape == (*k.shape, 6)
    assert torch.equal(k, k_plain)
    _, mom_cpu = torch.ops.lwvd_cuda.lwvd_fwd_moments(z.cpu(), *(p.cpu() for p in params), *args)
    tol = TOLERANCES[dtype]
    for i in range(6):
        scale = mom_cpu[..., i].abs().max().clamp_min(1e-300)
        assert ((mom.cpu()[..., i] - mom_cpu[..., i]).abs().max() / scale).item() <= tol, f"moment {i}"
    g = torch.randn(k.shape, dtype=dtype, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    plain = torch.ops.lwvd_cuda.lwvd_bwd(g, z, *params, *args)
    pair = torch.ops.lwvd_cuda.lwvd_bwd_moments(g, z, *params, mom, *args, True)
    assert torch.equal(pair[0], plain[0])
    for name, a, e in zip(["center", "sigma_t", "sigma_nu", "rho"], pair[1:], plain[1:]):
        assert_rel_close(a.cpu(), e.cpu(), tol, f"grad {name}")
    no_z = torch.ops.lwvd_cuda.lwvd_bwd_moments(g, z, *params, mom, *args, False)
    assert torch.equal(no_z[0], torch.zeros_like(no_z[0]))
    for a, b in zip(no_z[1:], pair[1:]):
        assert torch.equal(a, b)
    leaves = [p.detach().requires_grad_(True) for p in params]
    out = lwvd_cuda.lwvd(z, *leaves, n_fft=case.n_fft, hop_length=case.hop, truncate=4.0)
    node = out.grad_fn
    while type(node).__name__.startswith(("View", "Reshape", "Unsafe")):  # below lwvd's reshape
        node = node.next_functions[0][0]
    assert type(node).__name__.startswith("_LwvdForwardMomentsBackward"), type(node).__name__


@needs_ext
@needs_gpu
def test_cuda_graph_captures_a_training_step():
    """Forward + backward + optimizer step of a model with an LWVD front end, captured once in a CUDA
    graph and replayed on new batches, matches the same steps run eagerly on a copy of the model."""
    _require_cuda_kernels()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lag-window-length note of the untrained layer
        layer = lwvd_cuda.LWVD(16000.0, n_filters=16, n_fft=256, hop_length=160)
    model = torch.nn.ModuleDict(dict(front=layer, head=torch.nn.Linear(16, 3))).cuda()
    twin = copy.deepcopy(model)

    def loss_of(m, x, y):
        feats = torch.log1p(m["front"](x).clamp_min(0)).mean(-1)  # (B, F)
        return torch.nn.functional.cross_entropy(m["head"](feats), y)

    opt = torch.optim.Adam(model.parameters(), lr=1e-2, capturable=True)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2, capturable=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(4, 4000, device="cuda", generator=gen), torch.randint(0, 3, (4,), device="cuda", generator=gen))
               for _ in range(6)]

    def eager_step(m, o, x, y):
        o.zero_grad(set_to_none=True)
        loss = loss_of(m, x, y)
        loss.backward()
        o.step()
        return loss.detach()

    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches[:3]:
            static_x.copy_(x)
            static_y.copy_(y)
            eager_step(model, opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    for x, y in batches[:3]:
        eager_step(twin, twin_opt, x, y)

    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_of(model, static_x, static_y)
        static_loss.backward()
        opt.step()

    before = [p.detach().clone() for p in model.parameters()]
    for x, y in batches[3:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        want = eager_step(twin, twin_opt, x, y)
        torch.testing.assert_close(static_loss.detach(), want)
    torch.cuda.synchronize()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "replays changed no parameter"
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# More launch geometries through the CPU emulator (tests/cuda_emu, helper branch cuda-harness). The
# cases of test_cuda_emulation.py are small (B*T < 132: one frame per block under the SM-fill rule)
# and stop at n_fft = 128; these add multi-frame tiles, a halved grad_z tile, and 1-2 complex rows
# per pass (n_fft 8192 and 1024): many passes per tile, 10-13 FFT stages, > 48 KiB of dynamic shared
# memory. Tolerances: lwvd_cuda.testing.TOLERANCES (see there).

_EMU = os.path.join(ROOT, "tests", "test_cuda_emulation.py")
LARGE_FFT_CASES = [
    # B*T = 402 frames: the wave rule of launch_config.h picks 2 frames per block (multi-frame tiles)
    ((2, 200, 8, 1, 3, "mixed", 4.0, 24), torch.float64),
    # N = 600, B = 1: two grad_z tiles of 512 samples, the second partial (88 samples)
    ((1, 600, 16, 50, 2, "mixed", 4.0, 25), torch.float64),
    ((1, 40, 1024, 10, 2, "mixed", 4.0, 21), torch.float64),
    ((1, 24, 8192, 8, 2, "wide", 4.0, 22), torch.float32),
    ((1, 30, 8192, 10, 2, "untilted", None, 23), torch.float64),
]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    """(harness module, driver executable), built once for this module."""
    if not os.path.exists(_EMU):
        pytest.skip("the CUDA emulation harness (tests/cuda_emu) is not in this tree")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the CUDA emulation harness")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    harness = pytest.importorskip("test_cuda_emulation")
    return harness, harness.Builds(tmp_path_factory.mktemp("emu_build")).get("driver")


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")
@pytest.mark.parametrize("spec,dtype", LARGE_FFT_CASES, ids=lambda v: str(v))
def test_emulated_kernels_large_n_fft(emu, tmp_path, spec, dtype):
    harness, driver = emu
    b, n, n_fft, hop, f, kind, truncate, seed = spec
    case = harness.EmuCase(b, n, n_fft, hop, f, kind, truncate, seed=seed)
    problem = harness.Problem(case, dtype, tmp_path / "run")
    harness.driver_ok(problem.run(driver))
    harness.check_against_reference(problem, TOLERANCES[dtype])
