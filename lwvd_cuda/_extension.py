"""Loads the compiled extension (``lwvd_cuda._C``) if it was built, and says what it provides.

``import lwvd_cuda`` must succeed without it: the op then runs ``reference.py`` (and says so).
Importing ``_C`` runs its static ``TORCH_LIBRARY`` registrations, which define
``torch.ops.lwvd_cuda.lwvd_fwd`` / ``lwvd_bwd`` and their CPU / CUDA implementations.
"""

from __future__ import annotations

import torch

import importlib.util

if importlib.util.find_spec(f"{__package__}._C") is None:
    _C = None
    _LOAD_ERROR = "lwvd_cuda._C was not built (run `make build` or `pip install --no-build-isolation .`)"
else:
    try:
        from . import _C  # noqa: F401

        _LOAD_ERROR = None
    except ImportError as exc:  # e.g. built against another torch
        _C = None
        _LOAD_ERROR = f"lwvd_cuda._C failed to load: {exc}"

OPS = ("lwvd_fwd", "lwvd_bwd")


def is_loaded() -> bool:
    """True when the compiled extension imported (its op schemas exist)."""
    return _C is not None


def _probe(dispatch_key: str) -> bool:
    return _C is not None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"lwvd_cuda::{op}", dispatch_key) for op in OPS
    )


# Every implementation registers statically when _C is imported, so the answer is fixed from here
# on. Caching it as plain Python data also lets torch.compile(fullgraph=True) trace the public op:
# Dynamo cannot trace the torch._C dispatcher query (a non-Tensor result), but it reads a dict.
_HAS_KERNEL = {key: _probe(key) for key in ("CPU", "CUDA")}


def has_kernel(dispatch_key: str) -> bool:
    """True when both ops have an implementation for ``dispatch_key`` ("CPU" or "CUDA")."""
    if dispatch_key not in _HAS_KERNEL:
        return _probe(dispatch_key)
    return _HAS_KERNEL[dispatch_key]


def load_error() -> str | None:
    """Why the extension did not load, or None."""
    return _LOAD_ERROR
