"""Python side of the ``torch.ops.lwvd_cuda`` custom ops: fake (meta) kernels and autograd.

The schemas are defined in C++ (``csrc/ops.cpp``); each backend registers its own implementation
(``csrc/cpu``, ``csrc/cuda``). Here we add what ``torch.compile`` and ``torch.library.opcheck``
need: shape-only fake implementations and the autograd formula (the backward is itself a
registered op, so no raw extension call sits inside the autograd graph).

Op contract (every backend): ``z`` complex64/complex128 ``(B, N)`` contiguous; ``center``,
``sigma_t``, ``sigma_nu``, ``rho`` real ``(F,)`` of ``z``'s real dtype; ``truncate`` a positive
float, ``inf`` meaning "every term". ``lwvd_fwd`` returns ``(B, F, T)``; ``lwvd_bwd`` returns the
gradients for ``z`` and the four parameters.
"""

from __future__ import annotations

import torch

from . import _extension
from .reference import num_frames

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

    def _setup_context(ctx, inputs, output):
        z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate = inputs
        ctx.save_for_backward(z, center, sigma_t, sigma_nu, rho)
        ctx.n_fft, ctx.hop_length, ctx.truncate = n_fft, hop_length, truncate

    def _backward(ctx, grad_out):
        z, center, sigma_t, sigma_nu, rho = ctx.saved_tensors
        grads = torch.ops.lwvd_cuda.lwvd_bwd(
            grad_out.contiguous(), z, center, sigma_t, sigma_nu, rho, ctx.n_fft, ctx.hop_length, ctx.truncate
        )
        return (*grads, None, None, None)

    torch.library.register_autograd("lwvd_cuda::lwvd_fwd", _backward, setup_context=_setup_context)
