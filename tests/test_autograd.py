"""Derivatives beyond the first, forward mode, torch.func, vmap, compile and scripting (issue 12 item
1, issue 11 item 4).

The first derivative of the fused op is the ``lwvd_bwd`` kernel; every higher or forward derivative
comes from the reference through ``torch.func`` (lwvd_cuda/ops.py). The oracles here are independent
of that code: finite differences, ``torch.autograd.gradgradcheck``, and the reference's own (native
PyTorch) autograd. All in float64 on small inputs (each test takes seconds).

Tolerances: central differences with step h have truncation error O(h^2 f''') ~ 1e-12 relative at
h = 1e-6 and rounding error eps |f| / h ~ 1e-10 relative: 1e-6 relative leaves margin and still
catches a missing term (a wrong or zero derivative is O(1) off). Autograd against autograd (reference
vs fused path, same formulas, other summation orders): 1e-9 relative.
"""

import warnings

import pytest
import torch

import lwvd_cuda
from lwvd_cuda import reference
from lwvd_cuda.testing import assert_rel_close, make_filters, make_signal

F64 = torch.float64
KW = dict(n_fft=8, hop_length=3, truncate=4.0)
AUTOGRAD_TOL = 1e-9
FD_TOL = 1e-6

needs_kernels = pytest.mark.skipif(not lwvd_cuda.has_cpu_kernels(), reason="the fused CPU kernels were not built")


@pytest.fixture(autouse=True)
def _quiet_reference_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "running the reference" when not compiled
        warnings.filterwarnings("ignore", message=".*initial windows are longer than n_fft")  # small test layers
        yield


def inputs(n=11, f=2, seed=0, batch=2):
    z = make_signal((batch,), n, seed=seed)
    return z, list(make_filters(f, n_fft=KW["n_fft"], seed=seed + 1))


def op(z, c, st, sn, r):
    return lwvd_cuda.lwvd(z, c, st, sn, r, **KW)


def ref(z, c, st, sn, r):
    return reference.lwvd(z, c, st, sn, r, **KW)


def central_difference(fn, args, i, direction, h=1e-6):
    plus = list(args)
    minus = list(args)
    plus[i] = args[i] + h * direction
    minus[i] = args[i] - h * direction
    return (fn(*plus) - fn(*minus)) / (2 * h)


# ---- double backward -----------------------------------------------------------------------


@pytest.mark.parametrize("fn", [op, "raw op"])
def test_gradgradcheck_z_and_all_four_parameters(fn):
    if fn == "raw op":
        if not lwvd_cuda.has_cpu_kernels():
            pytest.skip("the fused CPU kernels were not built")
        fn = lambda *a: torch.ops.lwvd_cuda.lwvd_fwd(*a, KW["n_fft"], KW["hop_length"], KW["truncate"])  # noqa: E731
    z, params = inputs(n=7, batch=1)
    args = [z.requires_grad_(True)] + [p.requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_penalty_reaches_every_parameter():
    """A gradient penalty (WGAN-GP style) through the layer gives the reference's parameter gradients."""
    layer = lwvd_cuda.LWVD(8000, n_filters=3, n_fft=16, hop_length=8, f_min=200.0, f_max=3000.0).double()
    x = torch.randn(2, 40, dtype=F64, generator=torch.Generator().manual_seed(3), requires_grad=True)

    def penalty(forward):
        (gx,) = torch.autograd.grad(forward(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(layer.parameters()))

    def forward_ref(x):
        z = lwvd_cuda.analytic_signal(x)
        return reference.lwvd(z, *layer.op_parameters(), n_fft=16, hop_length=8, truncate=layer.truncate)

    got, expected = penalty(layer), penalty(forward_ref)
    for name, g, e in zip([n for n, _ in layer.named_parameters()], got, expected):
        assert e.abs().max() > 0, name  # the penalty does depend on every parameter
        assert_rel_close(g, e, AUTOGRAD_TOL, f"gradient penalty, {name}")


# ---- forward mode --------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(5), ids=["z", "center", "sigma_t", "sigma_nu", "rho"])
def test_jvp_matches_finite_differences(i):
    z, params = inputs()
    args = [z, *params]
    gen = torch.Generator().manual_seed(10 + i)
    v = torch.randn(args[i].shape, dtype=args[i].dtype, generator=gen)
    if i == 2 or i == 3:
        v = v * args[i]  # relative steps keep the spreads positive
    if i == 4:
        v = 0.1 * v

    def moving(x):
        full = list(args)
        full[i] = x
        return op(*full)

    _, jvp = torch.func.jvp(moving, (args[i],), (v,))
    fd = central_difference(op, args, i, v)
    assert fd.abs().max() > 1e-3  # a real derivative, not a zero that a zero would match
    assert_rel_close(jvp, fd, FD_TOL, f"torch.func.jvp along input {i}")

    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = list(args)
        dual[i] = fwAD.make_dual(args[i], v)
        tangent = fwAD.unpack_dual(op(*dual)).tangent
    assert tangent is not None, "forward_ad returned no tangent"
    assert_rel_close(tangent, fd, FD_TOL, f"forward_ad along input {i}")


def test_jacfwd_equals_jacrev_of_the_reference():
    z, params = inputs()
    for i in range(1, 5):
        fn = lambda p: op(*[p if j == i else a for j, a in enumerate([z, *params])])  # noqa: E731
        fr = lambda p: ref(*[p if j == i else a for j, a in enumerate([z, *params])])  # noqa: E731
        expected = torch.func.jacrev(fr)(params[i - 1])
        assert expected.abs().max() > 0
        assert_rel_close(torch.func.jacfwd(fn)(params[i - 1]), expected, AUTOGRAD_TOL, f"jacfwd, parameter {i}")
        assert_rel_close(torch.func.jacrev(fn)(params[i - 1]), expected, AUTOGRAD_TOL, f"jacrev, parameter {i}")


def test_autograd_functional_jvp_and_hvp():
    z, params = inputs()
    st = params[1]
    fn = lambda s: op(z, params[0], s, params[2], params[3]).sum()  # noqa: E731
    fr = lambda s: ref(z, params[0], s, params[2], params[3]).sum()  # noqa: E731
    v = torch.ones_like(st)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the old failure: zeros with a UserWarning
        _, jvp = torch.autograd.functional.jvp(fn, st, v)
        _, hvp = torch.autograd.functional.hvp(fn, st, v)
    _, jvp_ref = torch.autograd.functional.jvp(fr, st, v)
    _, hvp_ref = torch.autograd.functional.hvp(fr, st, v)
    assert hvp_ref.abs().max() > 0
    assert_rel_close(jvp, jvp_ref, AUTOGRAD_TOL, "autograd.functional.jvp")
    assert_rel_close(hvp, hvp_ref, AUTOGRAD_TOL, "autograd.functional.hvp")


# ---- torch.func ----------------------------------------------------------------------------


def test_func_grad_vjp_jacrev_hessian():
    z, params = inputs()
    loss = lambda z, *p: op(z, *p).square().sum()  # noqa: E731
    loss_ref = lambda z, *p: ref(z, *p).square().sum()  # noqa: E731
    argnums = (0, 1, 2, 3, 4)
    for g, e in zip(torch.func.grad(loss, argnums)(z, *params), torch.func.grad(loss_ref, argnums)(z, *params)):
        assert_rel_close(g, e, AUTOGRAD_TOL, "torch.func.grad")

    out, pull = torch.func.vjp(op, z, *params)
    _, pull_ref = torch.func.vjp(ref, z, *params)
    u = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(5))
    for g, e in zip(pull(u), pull_ref(u)):
        assert_rel_close(g, e, AUTOGRAD_TOL, "torch.func.vjp")

    # Hessian in the four parameters at once (one (4F, 4F) matrix) against finite differences of
    # the reference's gradient.
    f = params[0].shape[0]
    flat = torch.cat(params)

    def loss_flat(fn):
        return lambda p: fn(z, *p.split(f)).square().sum()

    hess = torch.func.hessian(loss_flat(op))(flat)
    grad_ref = torch.func.grad(loss_flat(ref))
    h = 1e-6 * flat.abs().clamp(min=1e-3)
    fd = torch.stack([(grad_ref(flat + h[j] * e) - grad_ref(flat - h[j] * e)) / (2 * h[j]) for j, e in enumerate(torch.eye(4 * f, dtype=F64))], dim=1)
    assert_rel_close(hess, fd, FD_TOL, "torch.func.hessian vs finite differences")
    assert_rel_close(hess, hess.T, 1e-12, "Hessian symmetry")


# ---- vmap (issue 11 item 4) ----------------------------------------------------------------


class _no_fallback_warning:
    """vmap with PyTorch's slow per-item fallback switched off: an op without a batching rule raises
    (its warning goes to stderr from C++, which warnings.catch_warnings cannot see)."""

    def __enter__(self):
        self.was = torch._C._functorch._is_vmap_fallback_enabled()
        torch._C._functorch._set_vmap_fallback_enabled(False)

    def __exit__(self, *exc):
        torch._C._functorch._set_vmap_fallback_enabled(self.was)


@needs_kernels
def test_vmap_over_signals_parameters_and_gradients_has_batching_rules():
    z, params = inputs()
    with _no_fallback_warning():
        # over signals: (V, B, N)
        zz = torch.stack([z, 2 * z, z.conj()])
        got = torch.func.vmap(lambda x: op(x, *params))(zz)
        # over filter banks: (V, F) parameters
        banks = [torch.stack([p, p * 1.01]) for p in params]
        got_p = torch.func.vmap(lambda *p: op(z, *p))(*banks)
        # over both
        got_zp = torch.func.vmap(op)(zz[:2], *banks)
        # per-sample gradients: vmap over grad (runs lwvd_bwd's batching rule)
        per_sample = torch.func.vmap(torch.func.grad(lambda x, *p: op(x[None], *p).sum(), (0, 1)), in_dims=(0, None, None, None, None))(
            z, *params
        )
        # jacrev vmaps the backward over cotangents
        jac = torch.func.jacrev(lambda r: op(z, *params[:3], r))(params[3])
    for v in range(3):
        assert_rel_close(got[v], op(zz[v], *params), 1e-13, f"vmap over z, item {v}")
    for v in range(2):
        assert_rel_close(got_p[v], op(z, *(b[v] for b in banks)), 1e-13, f"vmap over parameters, item {v}")
        assert_rel_close(got_zp[v], op(zz[v], *(b[v] for b in banks)), 1e-13, f"vmap over both, item {v}")
    for b in range(2):
        gz, gc = torch.func.grad(lambda x, c: ref(x[None], c, *params[1:]).sum(), (0, 1))(z[b], params[0])
        assert_rel_close(per_sample[0][b], gz, AUTOGRAD_TOL, "per-sample gradient of z")
        assert_rel_close(per_sample[1][b], gc, AUTOGRAD_TOL, "per-sample gradient of center")
    assert_rel_close(jac, torch.func.jacrev(lambda r: ref(z, *params[:3], r))(params[3]), AUTOGRAD_TOL, "jacrev")


@needs_kernels
def test_vmap_of_the_layer():
    layer = lwvd_cuda.LWVD(8000, n_filters=3, n_fft=16, hop_length=8, f_min=200.0, f_max=3000.0)
    x = torch.randn(4, 2, 60)
    with _no_fallback_warning():
        got = torch.func.vmap(layer)(x)
    assert_rel_close(got, layer(x), 1e-6, "vmap(layer)")


# ---- compile, export, trace; TorchScript -----------------------------------------------------


def test_compile_dynamic_fullgraph_across_changing_n():
    if not lwvd_cuda.has_cpu_kernels():
        pytest.skip("fullgraph needs the compiled op (the reference graph-breaks by design)")
    layer = lwvd_cuda.LWVD(8000, n_filters=3, n_fft=16, hop_length=8, f_min=200.0, f_max=3000.0).double()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (60, 77, 101):
        x = torch.randn(2, n, dtype=F64)
        assert_rel_close(compiled(x), layer(x), 1e-13, f"compiled, N = {n}")


def test_export_and_trace_are_the_ways_to_serialise():
    """TorchScript (torch.jit.script, deprecated by PyTorch) is not supported; torch.export and
    torch.jit.trace are, and give the eager values (the README says so)."""
    layer = lwvd_cuda.LWVD(8000, n_filters=3, n_fft=16, hop_length=8, f_min=200.0, f_max=3000.0).double()
    x = torch.randn(2, 60, dtype=F64)
    exported = torch.export.export(layer, (x,)).module()
    assert_rel_close(exported(x), layer(x), 1e-13, "torch.export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: shapes are fixed in a trace, as documented
        traced = torch.jit.trace(layer, x)
    assert_rel_close(traced(x), layer(x), 1e-13, "torch.jit.trace")


@needs_kernels
def test_the_raw_op_gives_a_tangent_or_a_clear_error():
    """Direct callers of torch.ops.lwvd_cuda.lwvd_fwd: forward_ad gives the tangent (it was None);
    torch.func, which cannot run from inside the op's Autograd kernel, says what to call instead."""
    import torch.autograd.forward_ad as fwAD

    z, params = inputs()
    raw = lambda *p: torch.ops.lwvd_cuda.lwvd_fwd(z, *p, KW["n_fft"], KW["hop_length"], KW["truncate"])  # noqa: E731
    v = torch.ones_like(params[1])
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(raw(params[0], fwAD.make_dual(params[1], v), *params[2:])).tangent
    assert tangent is not None
    fd = central_difference(lambda *a: op(z, *a), params, 1, v)
    assert_rel_close(tangent, fd, FD_TOL, "raw op forward_ad")
    with pytest.raises(RuntimeError, match="lwvd_cuda.lwvd"):
        torch.func.grad(lambda c: raw(c, *params[1:]).sum())(params[0])
