"""The layer inside real training: DDP, torch.compile, state_dict, autocast, hostile inputs.

Sizes are tiny (the op may be running the pure-PyTorch reference); every check compares against an
independent computation (a single-process step, the eager model, a float32 call) rather than a
stored number.
"""

import datetime
import os
import socket
import time
import warnings

import pytest
import torch
from torch import nn

from lwvd_cuda import LWVD
from lwvd_cuda.modules import RHO_MAX

SR = 8000.0
N = 400


@pytest.fixture(autouse=True)
def _quiet_reference_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lwvd_cuda: running the pure-PyTorch reference")
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        yield


def small_layer(**kw):
    args = dict(n_fft=64, hop_length=50, f_min=300, f_max=3700, window_seconds=0.006)
    args.update(kw)
    return LWVD(SR, 4, **args)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.front = small_layer(init="linear")
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        k = self.front(x)  # (B, F, T)
        return self.head(torch.log(k.clamp_min(0) + 1e-3).mean(-1))


def batch(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N, generator=g), torch.randint(0, 3, (n,), generator=g)


def sgd_step(model, x, y, lr=0.1):
    loss = nn.functional.cross_entropy(model(x), y)
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return loss


# --------------------------------------------------------------------------- DDP

def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's)
        model = DDP(Model())
        x, y = batch(seed=100 + rank)  # different data per rank
        sgd_step(model, x, y)
        flat = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        torch.save(torch.stack(gathered), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo not available")
    world = 2
    ctx = mp.start_processes(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("DDP workers did not finish within 180 s")
    finally:
        for p in ctx.processes:  # only the two workers this test started
            if p.is_alive():
                p.kill()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    # Every rank saw every rank's parameters after the step: they must be identical.
    for res in results:
        for r in range(1, world):
            torch.testing.assert_close(res[r], res[0], rtol=0, atol=0)
    # And equal to one process stepping on the mean of the two ranks' losses (DDP averages gradients).
    # float32, different reduction order: 1e-5 relative.
    torch.manual_seed(0)
    model = Model()
    xs, ys = zip(*(batch(seed=100 + r) for r in range(world)))
    loss = sum(nn.functional.cross_entropy(model(x), y) for x, y in zip(xs, ys)) / world
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    want = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(results[0][0], want, rtol=1e-5, atol=1e-6)
    # The layer's parameters did move (the test is not vacuous).
    fresh = torch.cat([p.detach().reshape(-1) for p in (torch.manual_seed(0), Model())[1].parameters()])
    assert (results[0][0][:16] - fresh[:16]).abs().max() > 1e-6


# --------------------------------------------------------------------------- compile, state_dict

def test_torch_compile_matches_eager():
    # backend="aot_eager" traces forward and backward through AOTAutograd (what inductor would get)
    # without code generation, so it is fast; fullgraph is not required: the reference op reads
    # parameter values (float()) to size its loops, which breaks the graph.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Model()
    compiled = torch.compile(model, backend="aot_eager")
    x, y = batch(seed=1)
    out_e = nn.functional.cross_entropy(model(x), y)
    grads_e = torch.autograd.grad(out_e, list(model.parameters()))
    out_c = nn.functional.cross_entropy(compiled(x), y)
    grads_c = torch.autograd.grad(out_c, list(model.parameters()))
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)


def test_torch_compile_fullgraph_with_kernels():
    import lwvd_cuda

    if not lwvd_cuda.has_cpu_kernels():
        pytest.skip("fullgraph needs the compiled op (the reference graph-breaks by design)")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, _ = batch(seed=1)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip():
    a = small_layer(init="mel")
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = small_layer(init="cqt")  # different values, same shapes
    missing, unexpected = b.load_state_dict(a.state_dict())
    assert not missing and not unexpected
    assert set(a.state_dict()) == {"raw_center", "log_sigma_t", "log_sigma_nu", "raw_rho"}
    x = torch.randn(2, N)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_and_autocast_compute_in_float32(dtype):
    layer = small_layer()
    x = torch.randn(2, N).to(dtype)
    want = layer(x.float())  # the same (rounded) samples, in float32
    got = layer(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_ac = layer(x)
        got_ac32 = layer(x.float())
    assert got_ac.dtype == torch.float32 and got_ac32.dtype == torch.float32
    # Under autocast the layer must still compute in float32: bitwise the eager float32 result.
    torch.testing.assert_close(got_ac, want, rtol=0, atol=0)
    torch.testing.assert_close(got_ac32, want, rtol=0, atol=0)


# --------------------------------------------------------------------------- hostile inputs

def _finite_grads(layer, x, loss_fn):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    assert torch.isfinite(out).all(), "non-finite output"
    loss = loss_fn(out)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()], allow_unused=True)
    for name, g in zip(["x", *(n for n, _ in layer.named_parameters())], grads):
        assert g is None or torch.isfinite(g).all(), f"non-finite gradient for {name}"
    return out, grads


def test_silent_input_gives_finite_gradients():
    layer = small_layer()
    x = torch.zeros(2, N)
    out, grads = _finite_grads(layer, x, lambda k: torch.log(k.clamp_min(0) + 1e-3).sum())
    assert (out == 0).all()
    out, grads = _finite_grads(layer, x, lambda k: k.sum())


@pytest.mark.parametrize(
    "name, value",
    [  # the extremes the bounded maps allow ("low" / "high": layer.sigma_*_bounds)
        ("sigma_t_s", "low"),  # 0.1 sample: one row inside the ellipse
        ("sigma_t_s", "high"),  # 2 max(n_fft, hop) = 128 samples, against a 400-sample signal
        ("sigma_nu_hz", "low"),  # a tenth of one WVD bin (62.5 Hz)
        ("sigma_nu_hz", "high"),  # Nyquist: the whole band
        ("rho", RHO_MAX),  # the margin
        ("rho", -RHO_MAX),
    ],
)
def test_extreme_valid_parameters_give_finite_gradients(name, value):
    layer = small_layer()
    bounds = dict(sigma_t_s=layer.sigma_t_bounds_s, sigma_nu_hz=layer.sigma_nu_bounds_hz)
    if isinstance(value, str):
        value = bounds[name][0 if value == "low" else 1]
    phys = dict(center_hz=layer.center_hz, sigma_t_s=layer.sigma_t_seconds, sigma_nu_hz=layer.sigma_nu_hz, rho=layer.rho)
    phys[name] = value
    layer.set_filters(**phys)
    x = torch.randn(2, N)
    _finite_grads(layer, x, lambda k: (k * torch.linspace(-1, 1, k.shape[-1])).sum())


def test_saturated_raw_parameters_give_finite_gradients():
    layer = small_layer()
    with torch.no_grad():
        layer.raw_rho.fill_(50.0)  # tanh == 1 exactly: rho == RHO_MAX
        layer.raw_center.copy_(torch.tensor([-50.0, -3.0, 3.0, 50.0]))  # centres on 0 Hz and Nyquist
    _finite_grads(layer, torch.randn(2, N), lambda k: k.square().sum())


def test_nan_in_one_item_stays_in_that_item():
    layer = small_layer()
    x = torch.randn(3, N)
    clean = layer(x)
    x_bad = x.clone()
    x_bad[1, 123] = float("nan")
    out = layer(x_bad)
    assert torch.isnan(out[1]).any(), "NaN must propagate in its own item"
    torch.testing.assert_close(out[[0, 2]], clean[[0, 2]], rtol=0, atol=0)
    # The input gradient of a clean item does not see the NaN either.
    x_bad.requires_grad_(True)
    (g,) = torch.autograd.grad(layer(x_bad)[0].sum(), [x_bad])
    assert torch.isfinite(g[0]).all() and torch.isfinite(g[2]).all()


def test_nan_in_one_item_leaves_parameter_gradients_of_others_finite():
    import lwvd_cuda

    if not lwvd_cuda.has_cpu_kernels():
        pytest.xfail("the reference's einsum backward multiplies the NaN item by a zero gradient (0 * NaN)")
    layer = small_layer()
    x = torch.randn(3, N)
    x[1, 123] = float("nan")
    grads = torch.autograd.grad(layer(x)[[0, 2]].sum(), list(layer.parameters()))
    for (name, _), g in zip(layer.named_parameters(), grads):
        assert torch.isfinite(g).all(), f"{name}: NaN from item 1 reached the gradient of items 0 and 2"


def test_example_runs(tmp_path):
    # The worked example, a few steps: it must run end to end (train both front ends, print the
    # table, save the figure). Accuracy is not asserted at this size.
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "examples", "chirp_classification.py")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, script, "--steps", "2", "--batch", "8", "--test", "20", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "learned LWVD:" in res.stdout and "chirp Hz/s" in res.stdout
    if "matplotlib not installed" not in res.stdout:
        assert (tmp_path / "chirp_filters.png").stat().st_size > 1000


# --------------------------------------------------------------------------- absurd learning rates

def _assert_valid_filters(layer):
    for name, p in layer.named_parameters():
        assert torch.isfinite(p).all(), f"{name} became non-finite: {p}"
    (t_lo, t_hi), (n_lo, n_hi) = layer.sigma_t_bounds_s, layer.sigma_nu_bounds_hz
    st, sn = layer.sigma_t_seconds.detach().double(), layer.sigma_nu_hz.detach().double()
    c, r = layer.center_hz.detach().double(), layer.rho.detach().double()
    assert ((st >= t_lo * (1 - 1e-5)) & (st <= t_hi * (1 + 1e-5))).all(), st
    assert ((sn >= n_lo * (1 - 1e-5)) & (sn <= n_hi * (1 + 1e-5))).all(), sn
    assert ((c > 0) & (c < SR / 2)).all(), c
    assert (r.abs() <= RHO_MAX * (1 + 1e-6)).all(), r  # float32 rounds 0.99 up by 1e-8


@pytest.mark.parametrize("make_opt", [
    lambda params: torch.optim.SGD(params, lr=100.0),
    lambda params: torch.optim.SGD(params, lr=1e6),
    lambda params: torch.optim.Adam(params, lr=10.0),
], ids=["sgd-100", "sgd-1e6", "adam-10"])
@pytest.mark.parametrize("compression", ["log", "pcen"])
def test_any_finite_step_leaves_valid_filters(make_opt, compression):
    # The failure: one SGD step at lr = 100 sent exp(log_sigma) to inf and the next forward
    # raised "sigma_t must be finite". With the bounded maps every step leaves a valid filter; the
    # loss is a cross-entropy through a fixed head, so every gradient is finite (the log's is
    # bounded by 1/floor) and only the filters' parametrisation decides whether training survives.
    torch.manual_seed(0)
    layer = small_layer(init="mel", compression=compression)
    head = torch.randn(4, 3)
    opt = make_opt(layer.parameters())
    for step in range(6):
        x, y = batch(seed=step)
        loss = nn.functional.cross_entropy(layer(x).mean(-1) @ head, y)
        assert torch.isfinite(loss), step
        opt.zero_grad()
        loss.backward()
        opt.step()
        _assert_valid_filters(layer)
    assert torch.isfinite(layer(batch(seed=99)[0])).all()
