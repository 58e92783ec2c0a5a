"""Python side of the ``torch.ops.lwvd_cuda`` custom ops: fake (meta) kernels, autograd, vmap.

The schemas are defined in C++ (``csrc/ops.cpp``); each backend registers its own implementation
(``csrc/cpu``, ``csrc/cuda``). Here we add what ``torch.compile``, ``torch.library.opcheck`` and
``torch.func`` need:

* shape-only fake implementations;
* the autograd of both ops. ``lwvd_fwd``'s first derivative is the fused ``lwvd_bwd`` kernel.
  Everything beyond it -- the derivative of ``lwvd_bwd`` (double backward, gradient penalties,
  ``hessian``) and forward mode (``jvp``, ``jacfwd``, ``torch.autograd.forward_ad``) -- is
  computed from ``reference.lwvd`` by ``torch.func``: exact, but at the reference's speed. Each op's
  Autograd kernel is an ``autograd.Function`` with ``setup_context`` and ``jvp``, so the same
  formulas serve plain autograd, ``torch.autograd.forward_ad`` and every ``torch.func`` transform;
  the kernels' truncation mask is a constant of the parameters' values, as in the reference;
* batching rules (``torch.library.register_vmap``) so ``torch.func.vmap`` needs no slow fallback.

Op contract (every backend): ``z`` complex64/complex128 ``(B, N)`` contiguous; ``center``,
``sigma_t``, ``sigma_nu``, ``rho`` real ``(F,)`` of ``z``'s real dtype; ``truncate`` a positive
float, ``inf`` meaning "every term". ``lwvd_fwd`` returns ``(B, F, T)``; ``lwvd_bwd`` returns the
gradients for ``z`` and the four parameters.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from . import _extension, reference
from .reference import num_frames

_N_TENSORS = 5  # z, center, sigma_t, sigma_nu, rho


def _reference_fn(n_fft, hop_length, truncate):
    """``(z, center, sigma_t, sigma_nu, rho) -> K`` by the reference, with the op's static arguments."""
    trunc = None if math.isinf(truncate) else truncate

    def fn(z, center, sigma_t, sigma_nu, rho):
        return reference.lwvd(z, center, sigma_t, sigma_nu, rho, n_fft=n_fft, hop_length=hop_length, truncate=trunc)

    return fn


def _reference_vjp_fn(n_fft, hop_length, truncate):
    """``(grad_out, z, center, sigma_t, sigma_nu, rho) -> the 5 gradients``: what ``lwvd_bwd`` computes."""
    fn = _reference_fn(n_fft, hop_length, truncate)

    def vjp(grad_out, *inputs):
        return torch.func.vjp(fn, *inputs)[1](grad_out)

    return vjp


def _jvp_of(fn, primals, tangents):
    """Forward derivative of ``fn`` at ``primals`` along ``tangents`` (None: no tangent).

    Computed as the transpose of the (linear) pullback, ``J v = vjp(u -> J^T u)(v)``: reverse mode
    only, so it also runs inside ``torch.autograd.forward_ad``, where a nested ``torch.func.jvp``
    would raise "Nested forward mode AD is not supported".
    """
    idx = [i for i, t in enumerate(tangents) if t is not None]
    if not idx:
        return None

    def partial(*moving):
        full = list(primals)
        for i, x in zip(idx, moving):
            full[i] = x
        return fn(*full)

    moving = tuple(primals[i] for i in idx)
    out = partial(*moving)  # the output's structure for the zero cotangent (values are not used)
    zeros = _zeros_like(out)

    def pullback(u):
        return torch.func.vjp(partial, *moving)[1](u)

    return torch.func.vjp(pullback, zeros)[1](tuple(tangents[i] for i in idx))[0]


def _zeros_like(out):
    return tuple(torch.zeros_like(o) for o in out) if isinstance(out, tuple) else torch.zeros_like(out)


def _vjp_of(fn, primals, cotangents, needs):
    """Reverse derivative of ``fn`` at ``primals`` for the inputs flagged in ``needs`` (others None)."""
    idx = [i for i, n in enumerate(needs) if n]
    out = [None] * len(primals)
    if not idx:
        return tuple(out)

    def partial(*moving):
        full = list(primals)
        for i, x in zip(idx, moving):
            full[i] = x
        return fn(*full)

    grads = torch.func.vjp(partial, *(primals[i] for i in idx))[1](tuple(cotangents))
    for i, g in zip(idx, grads):
        out[i] = g
    return tuple(out)


class _LwvdBackward(torch.autograd.Function):
    """``lwvd_bwd`` below autograd; its own derivatives come from the reference (second order)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.lwvd_cuda.lwvd_bwd(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tensors = inputs[:6]
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.static = inputs[6:9]

    @staticmethod
    def backward(ctx, *grads):
        primals = ctx.saved_tensors
        vjp = _reference_vjp_fn(*ctx.static)
        return (*_vjp_of(vjp, primals, grads, ctx.needs_input_grad[:6]), None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        primals = ctx.saved_tensors
        out = _jvp_of(_reference_vjp_fn(*ctx.static), primals, tangents[:6])
        return tuple(out)


class _LwvdForward(torch.autograd.Function):
    """``lwvd_fwd`` below autograd; backward by the fused ``lwvd_bwd``, forward mode by the reference."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.lwvd_cuda.lwvd_fwd(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tensors = inputs[:_N_TENSORS]
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.static = inputs[5:8]

    @staticmethod
    def backward(ctx, grad_out):
        # _LwvdBackward (not the bare kernel), so that a recorded graph (create_graph=True) and
        # torch.func see lwvd_bwd with its own derivatives.
        grads = _LwvdBackward.apply(grad_out.contiguous(), *ctx.saved_tensors, *ctx.static)
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        return _jvp_of(_reference_fn(*ctx.static), ctx.saved_tensors, tangents[:_N_TENSORS])


# The six moments per (item, filter, frame) that the CPU and CUDA forwards can keep for the backward
# (issues #13, #10):
# 48 B F T bytes, 6 F / hop times the size of z in complex64 (1.6 MB at B=4, N=16000, F=80, hop=160;
# keeping W instead would be n_fft / 2 times z: 131 MB there). Past the cap the backward recomputes
# them from W (its parameter-gradient pass), with memory independent of F x T (issue #12).
# LWVD_CPU_MOMENTS_BYTES overrides the cap (0: never keep them), on both devices.
SAVED_MOMENTS_MAX_BYTES = int(os.environ.get("LWVD_CPU_MOMENTS_BYTES", 256 << 20))


@functools.lru_cache(maxsize=None)  # the registrations are made once, when the extension loads
def _has_moments_pair(device_type: str) -> bool:
    """Whether this build has ``lwvd_fwd_moments`` / ``lwvd_bwd_moments`` kernels for the device
    (CPU: csrc/cpu; CUDA: csrc/cuda, only in builds with the CUDA kernels)."""
    if not hasattr(torch.ops.lwvd_cuda, "lwvd_fwd_moments"):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"lwvd_cuda::{op}", key)
        for op in ("lwvd_fwd_moments", "lwvd_bwd_moments")
    )


def _keeps_moments(z, params, hop_length) -> bool:
    """Whether the forward keeps the moments for the backward: plain eager autograd on CPU or CUDA
    (no torch.func wrapper, no forward-mode tangent) with a parameter that needs its gradient, the
    device's pair of ops built, and the moments within ``SAVED_MOMENTS_MAX_BYTES``."""
    if not torch.is_grad_enabled() or not any(p.requires_grad for p in params):
        return False
    if torch.jit.is_tracing():  # a trace records lwvd_fwd (the moments are an eager-autograd detail)
        return False
    if not _has_moments_pair(z.device.type):
        return False
    tensors = (z, *params)
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        return False
    if any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        return False
    nbytes = 48 * z.shape[0] * params[0].shape[0] * num_frames(z.shape[1], hop_length)
    return nbytes <= SAVED_MOMENTS_MAX_BYTES


class _LwvdForwardMoments(torch.autograd.Function):
    """``lwvd_fwd`` that also keeps the six moments of every (item, filter, frame) (CPU or CUDA,
    ``lwvd_fwd_moments``), so that the backward (``lwvd_bwd_moments``) runs only the grad_z pass and
    a reduction of the moments with the upstream gradient: the parameter-gradient pass over the W
    rows (as costly as a forward) is gone. A recorded backward (``create_graph=True``) takes
    ``_LwvdBackward`` as ``_LwvdForward`` does. K comes from the moments' S0: the same terms, summed
    in another order on CPU (float32: ~1e-7 relative from the plain forward's K); on CUDA bitwise the
    plain forward's K (the same terms in the same order)."""

    @staticmethod
    def forward(ctx, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
        with torch._C._AutoDispatchBelowAutograd():
            k, mom = torch.ops.lwvd_cuda.lwvd_fwd_moments(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)
        ctx.save_for_backward(z, center, sigma_t, sigma_nu, rho)
        ctx.moments = mom  # neither input nor output, never differentiated
        ctx.static = (n_fft, hop_length, truncate)
        return k

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: lwvd_bwd with its own derivatives
            grads = _LwvdBackward.apply(grad_out.contiguous(), *saved, *ctx.static)
        else:
            grads = torch.ops.lwvd_cuda.lwvd_bwd_moments(
                grad_out.contiguous(), *saved, ctx.moments, *ctx.static, bool(ctx.needs_input_grad[0])
            )
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None, None)


def lwvd_fwd(z, center, sigma_t, sigma_nu, rho, n_fft: int, hop_length: int, truncate: float) -> torch.Tensor:
    """The fused forward with every derivative: what ``functional.lwvd`` calls.

    Eager: the autograd.Function itself (``torch.func`` transforms need it called from Python, not
    from inside the dispatcher's Autograd kernel). Under ``torch.compile`` the op: Dynamo cannot
    trace a Function with a custom ``jvp``, and it treats the op as one node whose Autograd kernel
    (below) holds the same Function.
    """
    if torch.compiler.is_compiling():
        return torch.ops.lwvd_cuda.lwvd_fwd(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)
    if _keeps_moments(z, (center, sigma_t, sigma_nu, rho), hop_length):
        return _LwvdForwardMoments.apply(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)
    return _LwvdForward.apply(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)


def _apply_from_dispatcher(fn, name, args):
    # torch.func cannot run an autograd.Function from inside an op's Autograd kernel (its
    # custom_function_call has no kernel there): say what to call instead of PyTorch's
    # "could not find kernel for HigherOrderOperator custom_function_call".
    try:
        return fn.apply(*args)
    except NotImplementedError as exc:
        if "custom_function_call" not in str(exc):
            raise
        raise RuntimeError(
            f"torch.ops.lwvd_cuda.{name} called directly under a torch.func transform: call "
            "lwvd_cuda.lwvd (or lwvd_cuda.ops.lwvd_fwd), which supports torch.func"
        ) from exc


def _fwd_autograd(keyset, *args):
    return _apply_from_dispatcher(_LwvdForward, "lwvd_fwd", args)


def _bwd_autograd(keyset, *args):
    return _apply_from_dispatcher(_LwvdBackward, "lwvd_bwd", args)


# --- batching rules (torch.func.vmap) ---------------------------------------------------------


def _front(x, dim, size):
    """``x`` with its vmapped dimension first (expanded when it is not vmapped)."""
    return x.movedim(dim, 0) if dim is not None else x.expand(size, *x.shape)


def _fwd_vmap(info, in_dims, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
    op = torch.ops.lwvd_cuda.lwvd_fwd
    size, z_dim, p_dims = info.batch_size, in_dims[0], in_dims[1:_N_TENSORS]
    params = (center, sigma_t, sigma_nu, rho)
    if all(d is None for d in p_dims):  # one filter bank: the vmapped signals are more batch rows
        zz = _front(z, z_dim, size)
        out = op(zz.reshape(-1, zz.shape[-1]).contiguous(), *params, n_fft, hop_length, truncate)
        return out.reshape(size, zz.shape[1], *out.shape[1:]), 0
    if z_dim is None:  # one signal batch, vmapped filter banks: more filters
        pp = [_front(p, d, size).reshape(-1) for p, d in zip(params, p_dims)]
        out = op(z, *(p.contiguous() for p in pp), n_fft, hop_length, truncate)  # (B, V*F, T)
        return out.reshape(out.shape[0], size, -1, out.shape[-1]), 1
    zz = _front(z, z_dim, size)
    pp = [_front(p, d, size) for p, d in zip(params, p_dims)]
    outs = [op(zz[i].contiguous(), *(p[i].contiguous() for p in pp), n_fft, hop_length, truncate) for i in range(size)]
    return torch.stack(outs), 0


def _bwd_vmap(info, in_dims, grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
    op = torch.ops.lwvd_cuda.lwvd_bwd
    size = info.batch_size
    g_dim, z_dim, p_dims = in_dims[0], in_dims[1], in_dims[2:6]
    params = (center, sigma_t, sigma_nu, rho)
    if z_dim is None and all(d is None for d in p_dims):
        # Only the cotangent is vmapped (jacrev, hessian): the gradient for z of V cotangents is that
        # of V times more batch rows; the parameters' gradients, summed over rows by the kernel, are
        # those of V times more filters. Two calls instead of V.
        gg = _front(grad_out, g_dim, size)  # (V, B, F, T)
        v, b, f, t = gg.shape
        gz = op(gg.reshape(v * b, f, t).contiguous(), z.repeat(v, 1), *params, n_fft, hop_length, truncate)[0]
        tiled = [p.repeat(v) for p in params]
        gp = op(gg.permute(1, 0, 2, 3).reshape(b, v * f, t).contiguous(), z, *tiled, n_fft, hop_length, truncate)[1:]
        return (gz.reshape(v, b, -1), *(g.reshape(v, f) for g in gp)), (0,) * _N_TENSORS
    gg, zz = _front(grad_out, g_dim, size), _front(z, z_dim, size)
    pp = [_front(p, d, size) for p, d in zip(params, p_dims)]
    outs = [
        op(gg[i].contiguous(), zz[i].contiguous(), *(p[i].contiguous() for p in pp), n_fft, hop_length, truncate)
        for i in range(size)
    ]
    return tuple(torch.stack(parts) for parts in zip(*outs)), (0,) * _N_TENSORS


if _extension.is_loaded():

    @torch.library.register_fake("lwvd_cuda::lwvd_fwd")
    def _lwvd_fwd_fake(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
        real = z.real.dtype if z.is_complex() else z.dtype
        return z.new_empty((z.shape[0], center.shape[0], num_frames(z.shape[1], hop_length)), dtype=real)

    @torch.library.register_fake("lwvd_cuda::lwvd_bwd")
    def _lwvd_bwd_fake(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
        return (
            torch.empty_like(z),
            torch.empty_like(center),
            torch.empty_like(sigma_t),
            torch.empty_like(sigma_nu),
            torch.empty_like(rho),
        )

    # The moments pair (CPU and CUDA kernels): shapes only, so that fake / meta tracing of an eager
    # training step on CUDA (FakeTensorMode with parameters that need grad) sees the pair's outputs.
    @torch.library.register_fake("lwvd_cuda::lwvd_fwd_moments")
    def _lwvd_fwd_moments_fake(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate):
        real = z.real.dtype if z.is_complex() else z.dtype
        shape = (z.shape[0], center.shape[0], num_frames(z.shape[1], hop_length))
        return z.new_empty(shape, dtype=real), z.new_empty((*shape, 6), dtype=torch.float64)

    @torch.library.register_fake("lwvd_cuda::lwvd_bwd_moments")
    def _lwvd_bwd_moments_fake(grad_out, z, center, sigma_t, sigma_nu, rho, moments, n_fft, hop_length, truncate,
                               need_z):
        return _lwvd_bwd_fake(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)

    # The same registration torch.library.register_autograd makes, with a Function that also has
    # setup_context (torch.func) and jvp (forward mode); register_autograd's generated Function has
    # neither, so torch.func raised and forward mode silently dropped the tangent.
    _LIB = torch.library.Library("lwvd_cuda", "IMPL")  # noqa: TOR901 (kept alive at module scope)
    _LIB.impl("lwvd_fwd", _fwd_autograd, "Autograd", with_keyset=True)
    _LIB.impl("lwvd_bwd", _bwd_autograd, "Autograd", with_keyset=True)

    torch.library.register_vmap("lwvd_cuda::lwvd_fwd", _fwd_vmap)
    torch.library.register_vmap("lwvd_cuda::lwvd_bwd", _bwd_vmap)
