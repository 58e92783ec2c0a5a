"""The public op: argument checks (SPEC §5), dtype policy, and the choice of backend.

``lwvd`` validates, flattens the leading dimensions, and runs either the fused kernels
(``torch.ops.lwvd_cuda.lwvd_fwd``, differentiable through ``ops.py``) or ``reference.lwvd``.
``backend_for`` says which one a call would use, and why.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch

from . import _extension, ops  # noqa: F401  (ops registers fake kernels and autograd)
from . import reference

__all__ = ["analytic_signal", "lwvd", "backend_for", "CUDA_N_FFT_SIZES"]

# The CUDA kernels hold the lag FFT in shared memory with a radix-2 transform: powers of two only.
CUDA_N_FFT_SIZES = tuple(2**p for p in range(2, 14))  # 4 .. 8192

_PARAM_NAMES = ("center", "sigma_t", "sigma_nu", "rho")
_warned: set = set()


# Largest n_fft: one lag row of n_fft complex values is built per sample (2**24 complex128 values are
# 256 MiB a row); beyond it allocation fails deep in a backend (std::bad_alloc at 2**31).
MAX_N_FFT = 2**24
# The op's integers are int64 (a larger Python int fails in the dispatcher with "Expected a value of
# type 'int' ... found type 'int'").
_INT64_MAX = 2**63 - 1


def _is_int(value) -> bool:
    # torch.SymInt: an integer that torch.compile(dynamic=True) traces symbolically.
    return not isinstance(value, bool) and isinstance(value, (numbers.Integral, torch.SymInt))


def _check_int(name: str, value, upper: int = _INT64_MAX) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if value > upper:
        why = "the op's integers are int64" if upper == _INT64_MAX else "one lag row of n_fft complex values is built per sample"
        raise ValueError(f"{name} must be <= {upper} ({why}), got {value}")
    return value if isinstance(value, torch.SymInt) else int(value)


def _check_truncate(truncate) -> Optional[float]:
    if truncate is None:
        return None
    if isinstance(truncate, bool) or not isinstance(truncate, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"truncate must be a positive float or None, got {type(truncate).__name__}")
    if isinstance(truncate, numbers.Real):
        truncate = float(truncate)
    # Comparisons, not math.isfinite: they also hold for a torch.SymFloat (torch.compile(dynamic=True)).
    if not (0 < truncate < math.inf):  # False for NaN too
        raise ValueError(f"truncate must be finite and > 0 (or None for every term), got {truncate}")
    return truncate


def compute_dtypes(z: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(complex, real) dtypes the op computes in: float64 stays, everything else is float32."""
    if z.dtype in (torch.float64, torch.complex128):
        return torch.complex128, torch.float64
    return torch.complex64, torch.float32


def _check_signal(z, name: str = "z") -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if not (z.is_complex() or z.is_floating_point()):
        raise TypeError(f"{name} must be a complex or real floating tensor, got dtype {z.dtype}")
    if z.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (..., N), got a 0-d tensor")
    if z.shape[-1] < 1:
        raise ValueError(f"{name}: signal length N = {name}.shape[-1] must be >= 1, got {z.shape[-1]}")
    if z.is_meta:
        raise ValueError(
            f"{name} is a meta tensor (shape only, no values): the op needs values; for shapes alone use "
            "torch.compile or torch.export, which trace it with fake tensors"
        )
    return z


def analytic_signal(x: torch.Tensor) -> torch.Tensor:
    """Analytic signal of a real ``(..., N)`` tensor (SPEC §1, ``scipy.signal.hilbert``'s convention).

    Checks ``x`` (a tensor with ``N >= 1`` values in its last dimension; a 0-size batch gives an
    empty result), then runs :func:`lwvd_cuda.reference.analytic_signal`. Complex input is returned
    unchanged. Differentiable.
    """
    return reference.analytic_signal(_check_signal(x, "x"))


def _check_params(params: dict, device: torch.device, real_dtype: torch.dtype) -> list[torch.Tensor]:
    out, n_filters = [], None
    for name, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (F,), got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"{name} must be a real floating tensor, got dtype {p.dtype}")
        if p.dim() != 1:
            raise ValueError(f"{name} must have shape (F,), got {tuple(p.shape)}")
        if p.device != device:
            raise ValueError(f"{name} is on {p.device} but z is on {device}")
        if n_filters is None:
            n_filters = p.shape[0]
        elif p.shape[0] != n_filters:
            raise ValueError(f"{name} has {p.shape[0]} filters but center has {n_filters}: shapes must match")
        out.append(p.to(real_dtype))
    if n_filters == 0:
        raise ValueError("center: need at least one filter (F >= 1), got F = 0")
    for name, p in zip(_PARAM_NAMES, out):
        if p.is_meta:
            raise ValueError(f"{name} is a meta tensor (shape only, no values): the op needs values")
    # Value checks read the data: a device-to-host sync on CUDA. On CUDA the kernels check the values
    # on the device instead (invalid parameters give NaN outputs and set the flags read by
    # torch.ops.lwvd_cuda.cuda_error_flags; docs/cuda_kernels.md), so no sync happens here.
    if device.type != "cuda":
        _check_param_values(out)
    return out


def _values(p: torch.Tensor) -> torch.Tensor:
    """The plain tensor under any torch.func wrappers: under vmap every vmapped value, readable."""
    p = p.detach()
    while torch._C._functorch.is_functorch_wrapped_tensor(p):
        p = torch._C._functorch.get_unwrapped(p)
    return p


def _check_param_values(params: list[torch.Tensor]) -> None:
    """The value checks of SPEC §5 (finite, sigma > 0, |rho| < 1): the one place they live.

    They read the data (a sync on CUDA). Under torch.compile they are left to the backends' own
    checks (csrc/lwvd.h), which run on the real values.
    """
    if torch.compiler.is_compiling():
        return
    center, sigma_t, sigma_nu, rho = (_values(p) for p in params)
    for name, p in zip(_PARAM_NAMES, (center, sigma_t, sigma_nu, rho)):
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"{name} must be finite, got {p.tolist() if p.numel() < 9 else 'non-finite values'}")
    if bool((sigma_t <= 0).any()):
        raise ValueError(f"sigma_t must be > 0 (samples), got min {sigma_t.min().item()}")
    if bool((sigma_nu <= 0).any()):
        raise ValueError(f"sigma_nu must be > 0 (cycles/sample), got min {sigma_nu.min().item()}")
    if bool((rho.abs() >= 1).any()):
        raise ValueError(f"rho must lie in (-1, 1), got max |rho| = {rho.abs().max().item()}")


def backend_for(z: torch.Tensor, n_fft: int) -> tuple[str, str]:
    """("kernels" | "reference", reason) for a signal on ``z.device`` and this ``n_fft``."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(z.device.type)
    if not _extension.is_loaded():
        return "reference", f"compiled extension not available ({_extension.load_error()})"
    if key is None or not _extension.has_kernel(key):
        return "reference", f"no compiled kernel for device type '{z.device.type}'"
    if key == "CUDA" and n_fft not in CUDA_N_FFT_SIZES:
        return "reference", (
            f"the CUDA kernels take n_fft in powers of two from 4 to 8192 (radix-2 FFT in shared memory), got {n_fft}"
        )
    return "kernels", f"fused {key} kernels"


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"lwvd_cuda: running the pure-PyTorch reference: {reason}", RuntimeWarning, stacklevel=3)


def lwvd(
    z: torch.Tensor,
    center: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_nu: torch.Tensor,
    rho: torch.Tensor,
    *,
    n_fft: int,
    hop_length: int,
    truncate: Optional[float] = 4.0,
    method: str = "exact",
    rtol: float = 1e-4,
) -> torch.Tensor:
    """Learnable Wigner-Ville distribution (SPEC §1).

    Args:
        z: ``(..., N)`` analytic signal (complex). A real tensor is first turned into its analytic
            signal with :func:`analytic_signal`. half/bfloat16 are computed in float32.
        center, sigma_t, sigma_nu, rho: ``(F,)`` per-filter centre frequency (cycles/sample), time
            spread (samples, > 0), frequency spread (cycles/sample, > 0) and correlation in (-1, 1).
        n_fft: ``M``: lags ``|m| < M/2``; ``M`` bins spanning ``[0, 1/2)`` cycles/sample.
        hop_length: frames are centred on ``t * hop_length``, ``t = 0 .. N // hop_length``.
        truncate: count only terms with ``q <= truncate^2``; ``None`` counts every term.
        method: ``"exact"`` (the fused kernels or the reference) or ``"hermite"``: the untruncated
            operator without the lag window, as a weighted sum of a few chirped-Hermite-window
            spectrograms per filter (``lwvd_cuda.hermite``, ``docs/hermite.md``); ``truncate`` is not
            used, and filters that would need too many terms run the exact path with ``truncate=None``.
        rtol: ``method="hermite"`` only: error bound relative to the filter's peak response.

    Returns:
        ``(..., F, T)`` real, ``T = 1 + N // hop_length``: float64 for float64/complex128 input,
        float32 otherwise. Differentiable in ``z`` and the four parameter tensors.
    """
    z = _check_signal(z)
    method, rtol = _check_method(method, rtol)
    if method == "hermite":
        with torch.autocast("cuda" if z.device.type == "cuda" else "cpu", enabled=False):
            return _lwvd_hermite(z, center, sigma_t, sigma_nu, rho, n_fft=n_fft, hop_length=hop_length, rtol=rtol)
    # The op computes in float32/float64 whatever autocast says (SPEC §3): without this the
    # reference path's einsum would run in bfloat16/float16 under torch.autocast.
    with torch.autocast("cuda" if z.device.type == "cuda" else "cpu", enabled=False):
        return _lwvd(z, center, sigma_t, sigma_nu, rho, n_fft=n_fft, hop_length=hop_length, truncate=truncate)


METHODS = ("exact", "hermite")


def _check_method(method, rtol) -> tuple[str, float]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
        raise TypeError(f"rtol must be a float in (0, 1), got {type(rtol).__name__}")
    rtol = float(rtol)
    if not (0.0 < rtol < 1.0):  # also rejects NaN
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    return method, rtol


def _lwvd_hermite(z, center, sigma_t, sigma_nu, rho, *, n_fft, hop_length, rtol):
    """``method="hermite"``: the checks of ``_lwvd``, then ``hermite.lwvd_hermite``."""
    from . import hermite

    n_fft = _check_int("n_fft", n_fft)
    hop_length = _check_int("hop_length", hop_length)
    complex_dtype, real_dtype = compute_dtypes(z)
    params = _check_params(dict(center=center, sigma_t=sigma_t, sigma_nu=sigma_nu, rho=rho), z.device, real_dtype)
    z = analytic_signal(z.to(real_dtype)) if not z.is_complex() else z.to(complex_dtype)
    lead, n = z.shape[:-1], z.shape[-1]

    def exact(z2, *p):
        return _lwvd(z2, *p, n_fft=n_fft, hop_length=hop_length, truncate=None)

    out = hermite.lwvd_hermite(z.reshape(-1, n), *params, hop_length=hop_length, rtol=rtol, exact=exact)
    return out.reshape(*lead, out.shape[-2], out.shape[-1])


def _lwvd(z, center, sigma_t, sigma_nu, rho, *, n_fft, hop_length, truncate):
    n_fft = _check_int("n_fft", n_fft, MAX_N_FFT)
    hop_length = _check_int("hop_length", hop_length)
    truncate = _check_truncate(truncate)
    complex_dtype, real_dtype = compute_dtypes(z)
    params = _check_params(
        dict(center=center, sigma_t=sigma_t, sigma_nu=sigma_nu, rho=rho), z.device, real_dtype
    )
    z = reference.analytic_signal(z.to(real_dtype)) if not z.is_complex() else z.to(complex_dtype)

    lead, n = z.shape[:-1], z.shape[-1]
    z2 = z.reshape(-1, n)
    backend, reason = backend_for(z, n_fft)
    if backend == "kernels" and z2.shape[0] > 0:  # (an empty batch: the reference, any device)
        out = ops.lwvd_fwd(
            z2.contiguous(), *params, n_fft, hop_length, math.inf if truncate is None else truncate
        )
    else:
        if backend == "reference":
            _warn_once(reason)
        out = reference.lwvd(z2, *params, n_fft=n_fft, hop_length=hop_length, truncate=truncate)
    return out.reshape(*lead, out.shape[-2], out.shape[-1])
