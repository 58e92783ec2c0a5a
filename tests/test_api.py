"""Public API: shapes, dtypes, the backend choice, and every bad input of SPEC §5.

These go through ``lwvd_cuda.lwvd``, so they exercise whichever backend serves the CPU (the fused
kernels when compiled, else the reference)."""

import math
import warnings

import pytest
import torch

import lwvd_cuda
from lwvd_cuda import reference
from lwvd_cuda.testing import TOLERANCES, assert_rel_close, make_filters, make_signal


def _params(f=3, n_fft=16, dtype=torch.float64):
    return list(make_filters(f, n_fft=n_fft, dtype=dtype))


def call(z, params, n_fft=16, hop_length=5, truncate=4.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "running the reference" when not compiled
        return lwvd_cuda.lwvd(z, *params, n_fft=n_fft, hop_length=hop_length, truncate=truncate)


def test_import_reports_backends():
    assert isinstance(lwvd_cuda.has_cpu_kernels(), bool)
    assert isinstance(lwvd_cuda.has_cuda_kernels(), bool)
    backend, reason = lwvd_cuda.backend_for(torch.zeros(1, dtype=torch.complex64), 16)
    assert backend in ("kernels", "reference") and reason


@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
def test_output_shape_and_dtype(lead):
    z = make_signal(lead, 41)
    out = call(z, _params())
    assert out.shape == (*lead, 3, 1 + 41 // 5) and out.dtype == torch.float64
    out32 = call(z.to(torch.complex64), _params(dtype=torch.float32))
    assert out32.dtype == torch.float32


def test_real_input_is_made_analytic():
    x = torch.randn(2, 40, dtype=torch.float64)
    assert_rel_close(call(x, _params()), call(lwvd_cuda.analytic_signal(x), _params()), 1e-14, "real input")


def test_half_input_computes_in_float32():
    x = torch.randn(2, 40).to(torch.float16)
    out = call(x, _params(dtype=torch.float32))
    assert out.dtype == torch.float32
    assert_rel_close(out, call(x.float(), _params(dtype=torch.float32)), 1e-6, "half input")


def test_matches_reference():
    z = make_signal((2,), 60, seed=3)
    params = _params(4, 16)
    expected = reference.lwvd(z, *params, n_fft=16, hop_length=5)
    assert_rel_close(call(z, params), expected, TOLERANCES[torch.float64], "lwvd vs reference")


def test_non_contiguous_and_broadcast_inputs():
    base = make_signal((3,), 120, seed=4)
    z = base[:, ::2]  # non-contiguous
    params = _params()
    assert_rel_close(call(z, params), call(z.contiguous(), params), 1e-13, "non-contiguous z")
    zb = base[0, :60].expand(4, 60)  # broadcast (stride 0)
    out = call(zb, params)
    assert_rel_close(out[3], call(base[0, :60], params), 1e-13, "broadcast z")
    p_nc = [torch.stack([p, p], dim=1)[:, 0] for p in params]  # non-contiguous parameters
    assert_rel_close(call(z, p_nc), call(z, params), 1e-13, "non-contiguous params")


def test_nan_stays_in_its_batch_item():
    z = make_signal((3,), 64, seed=6)
    z[1, 10] = complex(float("nan"), 0.0)
    out = call(z, _params())
    assert torch.isnan(out[1]).any()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    clean = call(z[[0, 2]], _params())
    assert_rel_close(out[[0, 2]], clean, 1e-14, "items beside the NaN")


EXTREME = {
    "tiny spreads": dict(sigma_t=1e-6, sigma_nu=1e-9),
    "huge spreads": dict(sigma_t=1e7, sigma_nu=1e3),
    "rho near 1": dict(rho=0.999999),
    "centre outside [0, 1/2)": dict(center=-3.0),
}


@pytest.mark.parametrize("name", list(EXTREME))
def test_extreme_but_valid_parameters_are_finite(name):
    z = make_signal((2,), 33, seed=8).requires_grad_(True)
    params = [p.clone() for p in _params(2)]
    for i, key in enumerate(("center", "sigma_t", "sigma_nu", "rho")):
        if key in EXTREME[name]:
            params[i][0] = EXTREME[name][key]
    params = [p.requires_grad_(True) for p in params]
    out = call(z, params)
    assert torch.isfinite(out).all(), name
    out.sum().backward()
    for t in (z, *params):
        assert torch.isfinite(t.grad).all(), name


@pytest.mark.parametrize("n,n_fft,hop", [(1, 16, 1), (5, 64, 3), (20, 8, 50), (17, 1, 4), (9, 3, 2)])
def test_degenerate_sizes(n, n_fft, hop):
    z = make_signal((2,), n, seed=n)
    params = _params(2, n_fft)
    out = call(z, params, n_fft=n_fft, hop_length=hop)
    assert out.shape == (2, 2, 1 + n // hop) and torch.isfinite(out).all()
    assert_rel_close(out, reference.lwvd(z, *params, n_fft=n_fft, hop_length=hop), 1e-10, "degenerate")


def test_silent_input_gives_zero_and_finite_gradients():
    z = torch.zeros(2, 50, dtype=torch.complex128, requires_grad=True)
    params = [p.requires_grad_(True) for p in _params()]
    out = call(z, params)
    assert (out == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (z, *params))


# --- bad input: a clear error naming the argument -----------------------------------------


def _bad(exc, match, z=None, params=None, **kw):
    z = make_signal((2,), 30) if z is None else z
    params = _params() if params is None else params
    args = dict(n_fft=16, hop_length=5, truncate=4.0)
    args.update(kw)
    with pytest.raises(exc, match=match):
        lwvd_cuda.lwvd(z, *params, **args)


def test_bad_signal():
    _bad(TypeError, "z", z=[1.0, 2.0])
    _bad(TypeError, "z", z=torch.arange(10))
    _bad(ValueError, "z", z=torch.tensor(1.0 + 0j))
    _bad(ValueError, "N", z=torch.zeros(3, 0, dtype=torch.complex128))


@pytest.mark.parametrize("arg", ["n_fft", "hop_length"])
@pytest.mark.parametrize("value,exc", [(0, ValueError), (-4, ValueError), (2.5, TypeError), (True, TypeError), ("8", TypeError)])
def test_bad_integers(arg, value, exc):
    _bad(exc, arg, **{arg: value})


@pytest.mark.parametrize("value,exc", [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError), ("4", TypeError)])
def test_bad_truncate(value, exc):
    _bad(exc, "truncate", truncate=value)


@pytest.mark.parametrize(
    "index,value,name",
    [(0, math.nan, "center"), (0, math.inf, "center"), (1, 0.0, "sigma_t"), (1, -1.0, "sigma_t"), (1, math.nan, "sigma_t"),
     (2, 0.0, "sigma_nu"), (2, -0.1, "sigma_nu"), (3, 1.0, "rho"), (3, -1.5, "rho"), (3, math.inf, "rho")],
)
def test_bad_parameter_values(index, value, name):
    params = [p.clone() for p in _params()]
    params[index][1] = value
    _bad(ValueError, name, params=params)


def test_bad_parameter_shapes_types_devices():
    p = _params()
    _bad(ValueError, "sigma_t", params=[p[0], p[1][:2], p[2], p[3]])
    _bad(ValueError, "rho", params=[p[0], p[1], p[2], p[3][None]])
    _bad(TypeError, "sigma_nu", params=[p[0], p[1], 0.1, p[3]])
    _bad(TypeError, "center", params=[torch.arange(3), p[1], p[2], p[3]])
    _bad(ValueError, "sigma_t", params=[p[0], p[1].to("meta"), p[2], p[3]])
    _bad(ValueError, "F >= 1", params=[torch.zeros(0, dtype=torch.float64)] * 4)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(sample_rate=0), "sample_rate"),
        (dict(sample_rate=-16000), "sample_rate"),
        (dict(sample_rate=math.inf), "sample_rate"),
        (dict(n_filters=0), "n_filters"),
        (dict(n_filters=2.5), "n_filters"),
        (dict(f_min=-1.0), "f_min"),
        (dict(f_max=9000.0), "f_max"),
        (dict(f_min=5000.0, f_max=4000.0), "f_min"),
        (dict(n_fft=0), "n_fft"),
        (dict(hop_length=0), "hop_length"),
        (dict(init="bark"), "init"),
    ],
)
def test_bad_module_arguments(kwargs, name):
    args = dict(sample_rate=16000, n_filters=8, n_fft=64, hop_length=32)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        lwvd_cuda.LWVD(**args)


def test_module_forward_and_parameter_ranges():
    layer = lwvd_cuda.LWVD(16000, n_filters=6, n_fft=64, hop_length=32, f_min=100.0, f_max=7000.0)
    x = torch.randn(2, 3, 400)
    out = call_layer(layer, x)
    assert out.shape == (2, 3, 6, 1 + 400 // 32) and out.dtype == torch.float32
    c = layer.center_hz
    assert ((c > 100.0) & (c < 7000.0)).all()
    assert (layer.sigma_t_seconds > 0).all() and (layer.sigma_nu_hz > 0).all() and (layer.rho.abs() < 1).all()
    out.sum().backward()
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def call_layer(layer, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return layer(x)


# --- empty batches and the edges of issue 12 ------------------------------------------------


@pytest.mark.parametrize("lead", [(0,), (3, 0)])
def test_empty_batch_gives_empty_results_and_gradients(lead):
    """SPEC §5: a 0-size batch dimension gives an empty result of the right shape, through the op,
    the analytic signal, the layer and the backward (MKL's FFT used to reject it)."""
    params = [p.requires_grad_(True) for p in _params(2)]
    z = torch.zeros(*lead, 64, dtype=torch.complex128, requires_grad=True)
    out = call(z, params, n_fft=16, hop_length=4)
    assert out.shape == (*lead, 2, 17) and out.dtype == torch.float64
    out.sum().backward()
    assert z.grad.shape == z.shape
    assert all(p.grad is not None and (p.grad == 0).all() for p in params)

    x = torch.zeros(*lead, 64, requires_grad=True)
    assert lwvd_cuda.analytic_signal(x).shape == x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = lwvd_cuda.LWVD(16000, n_filters=4, n_fft=16, hop_length=8, window_seconds=0.001)
    y = call_layer(layer, x)
    assert y.shape == (*lead, 4, 9)
    y.sum().backward()
    assert x.grad.shape == x.shape and all(p.grad is not None for p in layer.parameters())


@pytest.mark.parametrize("x", [torch.tensor(1.0), torch.zeros(2, 0)], ids=["0-d", "N=0"])
def test_analytic_signal_and_layer_name_the_bad_input(x):
    """The two IndexError cases of the held-out bad-input corpus."""
    with pytest.raises(ValueError, match="x"):
        lwvd_cuda.analytic_signal(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = lwvd_cuda.LWVD(16000, n_filters=4, n_fft=16, hop_length=8, window_seconds=0.001)
    with pytest.raises(ValueError, match="x"):
        layer(x)


def test_meta_tensors_are_refused_by_name():
    p = _params()
    _bad(ValueError, "z is a meta tensor", z=torch.zeros(2, 30, dtype=torch.complex128, device="meta"),
         params=[q.to("meta") for q in p])
    with pytest.raises(ValueError, match="x is a meta tensor"):
        lwvd_cuda.analytic_signal(torch.zeros(2, 30, device="meta"))
    # The module too (it failed inside torch.autocast(device_type="meta") before reaching the check).
    with pytest.raises(ValueError, match="x is a meta tensor"):
        lwvd_cuda.LWVD(16000, 4)(torch.zeros(2, 400, device="meta"))


@pytest.mark.parametrize("arg,value", [("n_fft", 2**63), ("hop_length", 2**63), ("n_fft", 2**31), ("n_fft", 2**24 + 1)])
def test_integers_beyond_what_the_op_can_hold(arg, value):
    _bad(ValueError, arg, **{arg: value})


def _tie_filters(sigma_t, n_fft=16, dtype=torch.float64):
    """Centres exactly on bins, rho = 0: with truncate * sigma_t an integer d, the term (d, centre
    bin) has q = (d / sigma_t)^2 = truncate^2 up to the last bit, exactly on the truncation boundary."""
    two_m = 2 * n_fft
    center = torch.tensor([5.0, 9.0], dtype=dtype) / two_m
    st = torch.tensor([sigma_t, sigma_t], dtype=dtype)
    sn = torch.tensor([1.5, 1.2], dtype=dtype) / two_m  # 2.5 * 1.2 bins = 3 bins: a tie in frequency too
    return [center, st, sn, torch.zeros(2, dtype=dtype)]


@pytest.mark.skipif(not lwvd_cuda.has_cpu_kernels(), reason="the fused CPU kernels were not built")
@pytest.mark.parametrize("sigma_t", [9.2, 9.3, 4.4, 6.8, 11.6])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_truncation_ties_fall_on_the_same_side(sigma_t, dtype):
    """Issue 12 item 5: centre on a bin, sigma_t = 9.2, truncate = 2.5, rho = 0 differed by 9.6e-3
    between kernels and reference (q computed in two orders). Now one order (lwvd_math.cuh
    quad_form, mirrored by the reference), so they agree to rounding: TOLERANCES of testing.py."""
    z = make_signal((2,), 64, seed=21, dtype=dtype)
    params = _tie_filters(sigma_t, dtype=dtype)
    got = call(z, params, n_fft=16, hop_length=8, truncate=2.5)
    expected = reference.lwvd(z, *params, n_fft=16, hop_length=8, truncate=2.5)
    assert_rel_close(got, expected, TOLERANCES[dtype], f"kernels vs reference at a truncation tie, sigma_t={sigma_t}")
