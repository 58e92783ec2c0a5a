"""lwvd_cuda: a learnable Wigner-Ville distribution with fused CPU and CUDA kernels.

``lwvd`` is the op (SPEC §1), ``LWVD`` the layer, ``reference`` the pure-PyTorch oracle.
Importing never fails: without the compiled extension the op runs the reference and says so.
"""

from . import _extension, reference
from .functional import analytic_signal, backend_for, lwvd
from .modules import LWVD

__version__ = "0.1.0"

__all__ = ["LWVD", "analytic_signal", "lwvd", "reference", "backend_for", "has_cpu_kernels", "has_cuda_kernels", "__version__"]


def has_cpu_kernels() -> bool:
    """True when the fused CPU kernels were compiled and registered."""
    return _extension.has_kernel("CPU")


def has_cuda_kernels() -> bool:
    """True when the fused CUDA kernels were compiled and registered (a GPU is not needed to say so)."""
    return _extension.has_kernel("CUDA")
