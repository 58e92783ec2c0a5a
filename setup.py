"""Build lwvd_cuda._C: the op schemas, the fused CPU kernels and (when possible) the CUDA kernels.

Which extension is built:
  LWVD_BUILD=auto (default)  CUDA when torch is a CUDA build and nvcc is found, else CPU-only
  LWVD_BUILD=cuda            CUDA or fail with the reason
  LWVD_BUILD=cpu             CPU-only CppExtension
No GPU is needed to build the CUDA extension. torch must already be installed
(`pip install --no-build-isolation .`): the extension is built against that torch. Without it
(or inside pip's isolated build environment, which has no torch) the build stops with the steps
to take (`require_build_tools` below). Metadata and dependencies live in pyproject.toml.

Traps handled (see ../shared/GPULESS.md): a wrapper `nvcc` on PATH (CUDA_HOME resolved from
`nvcc -v`), no visible GPU for arch detection (TORCH_CUDA_ARCH_LIST defaults to DEFAULT_ARCHS), torch 2.14
needing C++20 (we never pass -std), and cusparse/cublas headers living in torch's nvidia wheels.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Every current data-centre and desktop architecture (A100, A10/RTX 30xx, L4/L40/RTX 40xx, H100/H200,
# B200, RTX 50xx), and PTX of the newest so that a GPU after it still gets a kernel (JIT-compiled by
# the driver at first use). A cubin also runs on later minors of its major (sm_80 on sm_87, sm_100
# on sm_103). An explicit TORCH_CUDA_ARCH_LIST (e.g. "9.0" for one H100) wins.
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def log(msg: str) -> None:
    print(f"[lwvd_cuda setup] {msg}", flush=True)


INSTALL_STEPS = """\
  1. install torch first (the extension is compiled against the torch you will run it with):
       pip install torch
     (a CPU-only torch: pip install torch --index-url https://download.pytorch.org/whl/cpu)
  2. then build lwvd_cuda in that same environment, without pip's isolated build environment:
       pip install -U pip setuptools wheel ninja
       pip install --no-build-isolation .        (editable: pip install --no-build-isolation -e .)"""


def require_build_tools() -> None:
    """Stop with the install steps when torch (or, for a wheel, bdist_wheel) is missing.

    pip builds a pyproject.toml project in an isolated environment holding only the build-system
    requirements; torch is not one of them on purpose (a second torch there could differ from the
    one installed), so `pip install .` reaches this check and gets the instructions, instead of a
    bare ModuleNotFoundError deep in pip's output.
    """
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(
            "\n[lwvd_cuda setup] ERROR: torch is not importable here "
            f"({type(exc).__name__}: {exc}).\n"
            "Either torch is not installed, or pip is building in an isolated environment "
            "(plain `pip install .`), which has no torch.\n" + INSTALL_STEPS + "\n\n"
        )
        raise SystemExit("lwvd_cuda: install torch first, then `pip install --no-build-isolation .`") from None
    wants_wheel = any(a in ("bdist_wheel", "editable_wheel", "dist_info") for a in sys.argv)
    if wants_wheel:
        import importlib.util

        # setuptools >= 70.1 has bdist_wheel built in; older ones need the `wheel` package (torch
        # 2.11's environments ship such a setuptools: "error: invalid command 'bdist_wheel'").
        if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
            raise SystemExit("lwvd_cuda: this setuptools cannot build wheels (no bdist_wheel): "
                             "`pip install -U pip setuptools wheel ninja`, then retry.\n" + INSTALL_STEPS)


def resolve_cuda_home() -> str | None:
    """The toolkit folder holding bin/nvcc and include/cuda.h, or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    # The nvcc on PATH may be a wrapper script; nvcc -v prints the real toolkit as `#$ TOP=...`.
    probe = os.path.join(ROOT, "build", "_probe.cu")
    os.makedirs(os.path.dirname(probe), exist_ok=True)
    with open(probe, "w") as fh:
        fh.write("int main() { return 0; }\n")
    try:
        out = subprocess.run([nvcc, "-v", "-E", probe, "-o", os.devnull], capture_output=True, text=True, timeout=120)
        match = re.search(r"#\$ TOP=(\S+)", out.stdout + out.stderr)
        if match:
            home = os.path.realpath(match.group(1))
            if os.path.exists(os.path.join(home, "include", "cuda.h")):
                return home
    except (OSError, subprocess.SubprocessError):
        pass
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return home if os.path.exists(os.path.join(home, "include", "cuda.h")) else None


def nvidia_wheel_includes() -> list[str]:
    """Header folders of torch's nvidia-* dependency wheels (cusparse.h, cublas_v2.h live there)."""
    out = []
    for site in sys.path:
        for cand in glob.glob(os.path.join(site, "nvidia", "*", "include")):
            if os.path.exists(os.path.join(cand, "cusparse.h")) or os.path.exists(os.path.join(cand, "cublas_v2.h")):
                out.append(cand)
    return sorted(set(out))


def nvcc_flags() -> list[str]:
    """nvcc flags of the CUDA kernels (the architectures come from TORCH_CUDA_ARCH_LIST, see extensions()).

    A register spill is reported, not fatal: ptxas prints a warning per spilling kernel and arch
    (--warn-on-spills) and tools/resource_report.py gates on the spills that matter (a float32
    kernel on sm_80 / sm_90, CI); a few bytes spilled by a float64 kernel on a desktop part must not
    cost a user the whole build. Full per-kernel resource usage: `python tools/resource_report.py`.

    --threads: nvcc runs the per-architecture device passes (each re-parses the torch headers,
    ~17 s of CPU apiece) in parallel instead of one after another; LWVD_NVCC_THREADS overrides
    (each pass peaks at ~1.5 GB of memory).
    """
    threads = os.environ.get("LWVD_NVCC_THREADS") or str(max(1, min(os.cpu_count() or 1, 4)))
    return ["-O3", "-lineinfo", "-Xptxas=--warn-on-spills", f"--threads={threads}"]


def choose_mode() -> tuple[str, str | None]:
    import torch

    want = os.environ.get("LWVD_BUILD", "auto").lower()
    if want not in ("auto", "cuda", "cpu"):
        raise SystemExit(f"LWVD_BUILD must be auto, cuda or cpu, got {want!r}")
    if want == "cpu":
        return "cpu", None
    reason = None
    cuda_home = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU build"
    else:
        cuda_home = resolve_cuda_home()
        if cuda_home is None:
            reason = "nvcc / the CUDA toolkit was not found (set CUDA_HOME)"
    if reason is None:
        return "cuda", cuda_home
    if want == "cuda":
        raise SystemExit(f"LWVD_BUILD=cuda but the CUDA extension cannot be built: {reason}")
    log(f"building CPU-only: {reason}")
    return "cpu", None


def extensions():
    mode, cuda_home = choose_mode()
    if mode == "cuda":
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    # Import after CUDA_HOME is set: torch.utils.cpp_extension reads it at import time.
    from torch.utils import cpp_extension

    if mode == "cuda":
        cpp_extension.CUDA_HOME = cuda_home
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx = ["-O3", "-fno-math-errno"]
    link = []
    # at::parallel_for is an inline template: it runs in parallel only in a translation unit
    # compiled with OpenMP (_OPENMP defined), otherwise it silently runs the whole range on one
    # thread. torch's Linux wheels use libgomp (bundled as libgomp.so.1, the soname the compiler's
    # -fopenmp links against, so one OpenMP runtime is loaded).
    import torch

    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    define_macros = []
    if mode == "cuda":
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += nvidia_wheel_includes()
        nvcc = nvcc_flags()
        define_macros.append(("LWVD_WITH_CUDA", "1"))
        log(f"building CUDA + CPU extension: CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        ext = cpp_extension.CUDAExtension(
            "lwvd_cuda._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        log("building CPU-only extension")
        ext = cpp_extension.CppExtension(
            "lwvd_cuda._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return [ext], cpp_extension.BuildExtension


def main():
    require_build_tools()
    ext_modules, build_ext = extensions()
    # Name, version, dependencies and extras: pyproject.toml's [project] table.
    setup(
        packages=find_packages(include=["lwvd_cuda", "lwvd_cuda.*"]),
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
