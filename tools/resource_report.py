#!/usr/bin/env python
"""Resource usage of the CUDA kernels per architecture, with offline occupancy. Needs nvcc, no GPU.

Compiles ``tools/kernels_only.cu`` (every kernel the plan launches, float and double, no torch
headers: seconds) for each architecture with ``-Xptxas -v``, parses registers, stack, spill bytes
and static shared memory per kernel, and computes occupancy with the toolkit's ``cuda_occupancy.h``
(``tools/occupancy.cpp``, the same code as ``cudaOccupancyMaxActiveBlocksPerMultiprocessor``, run on
the published limits of the A100 / H100 SXM). The row kernels' dynamic shared memory depends on
n_fft and the dtype (``launch_config.h``); occupancy is shown at ``--n-fft`` (default 512 and 8192).

Exits 1 when any kernel spills (spill stores or loads > 0) on any architecture, 2 when nvcc or a
compiler is missing. ``report()`` returns the rows for tests and the benchmark suite.

    python tools/resource_report.py [--arch 80 90] [--n-fft 512 8192] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tools", "kernels_only.cu")
OCC_SOURCE = os.path.join(ROOT, "tools", "occupancy.cpp")
DEFAULT_ARCHS = (80, 90)

# Mangled kernel name -> (readable name, kind for the occupancy helper, scalar bytes)
_KERNELS = {
    "lwvd_prepare_kernel": "prep",
    "lwvd_smooth_kernel": "rows",
    "lwvd_grad_z_kernel": "rows",
    "lwvd_param_grad_kernel": "reduce",
}


class ToolMissing(RuntimeError):
    pass


def find_nvcc() -> str:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise ToolMissing("nvcc not found (put it on PATH or set CUDA_HOME)")
    return nvcc


def toolkit_include(nvcc: str) -> str:
    """The toolkit's include folder (the nvcc on PATH may be a wrapper: ask nvcc -v for TOP)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "p.cu")
        with open(probe, "w") as fh:
            fh.write("int main(){return 0;}\n")
        out = subprocess.run([nvcc, "-v", "-E", probe, "-o", os.devnull], capture_output=True, text=True)
    m = re.search(r"#\$ TOP=(\S+)", out.stdout + out.stderr)
    top = os.path.realpath(m.group(1)) if m else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    inc = os.path.join(top, "include")
    if not os.path.exists(os.path.join(inc, "cuda_occupancy.h")):
        raise ToolMissing(f"cuda_occupancy.h not found under {inc}")
    return inc


def _readable(mangled: str) -> tuple[str, str, int]:
    """('smooth<float,fwd>', kind, scalar bytes) from a mangled lwvd kernel name."""
    m = re.match(r"_ZN4lwvd\d+(\w+?)I([fd])(?:Lb([01])E)?E", mangled)
    if not m:
        return mangled, "reduce", 4
    base, t, flag = m.group(1), m.group(2), m.group(3)
    dtype = "float" if t == "f" else "double"
    name = base.replace("lwvd_", "").replace("_kernel", "")
    if flag is not None:
        name += "<%s,%s>" % (dtype, "moments" if flag == "1" else "fwd")
    else:
        name += "<%s>" % dtype
    return name, _KERNELS.get(base, "reduce"), 4 if t == "f" else 8


def compile_and_parse(nvcc: str, arch: int) -> list[dict]:
    # The flags of the extension build (setup.py / torch) that matter to code generation.
    cmd = [nvcc, "-std=c++20", f"-arch=sm_{arch}", "-O3", "--expt-relaxed-constexpr", "-Xptxas", "-v", "-I", os.path.join(ROOT, "csrc"),
           "-c", SOURCE, "-o", os.devnull]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{out.stderr}")
    rows, cur = [], None
    for line in out.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)'", line)
        if m:
            name, kind, sbytes = _readable(m.group(1))
            cur = dict(arch=arch, kernel=name, mangled=m.group(1), kind=kind, scalar_bytes=sbytes,
                       regs=0, stack=0, spill_stores=0, spill_loads=0, static_smem=0)
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and "Function properties" not in line:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["static_smem"] = int(s.group(1)) if s else 0
            cur = None  # the "Used" line closes an entry
    return rows


def occupancy(rows: list[dict], include: str, n_ffts) -> None:
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise ToolMissing("no host C++ compiler for tools/occupancy.cpp")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "occupancy")
        subprocess.run([cxx, "-std=c++17", "-O1", "-I", include, "-I", os.path.join(ROOT, "csrc"), OCC_SOURCE, "-o", exe],
                       check=True, capture_output=True, text=True)
        queries = []
        for r in rows:
            for n in n_ffts:
                queries.append((r, n, f"{r['arch']} {r['regs']} {r['static_smem']} {r['kind']} {r['scalar_bytes']} {n}"))
        out = subprocess.run([exe], input="\n".join(q[2] for q in queries) + "\n", capture_output=True, text=True,
                             check=True).stdout.split("\n")
        for (r, n, _), line in zip(queries, out):
            threads, dyn, blocks, pct, lim = line.split()
            r["threads"] = int(threads)
            r.setdefault("occupancy", {})[n] = dict(dyn_smem=int(dyn), blocks_per_sm=int(blocks), percent=float(pct),
                                                    limiter=lim)


def report(archs=DEFAULT_ARCHS, n_ffts=(512, 8192)) -> list[dict]:
    """One dict per (arch, kernel): regs, stack, spill_stores, spill_loads, static_smem, threads and
    occupancy[n_fft] = {dyn_smem, blocks_per_sm, percent, limiter}. Raises ToolMissing without nvcc."""
    nvcc = find_nvcc()
    include = toolkit_include(nvcc)
    rows = []
    for arch in archs:
        rows += compile_and_parse(nvcc, arch)
    occupancy(rows, include, n_ffts)
    return rows


def format_table(rows: list[dict], n_ffts) -> str:
    head = ["arch", "kernel", "threads", "regs", "stack B", "spill st/ld B", "static smem B"]
    for n in n_ffts:
        head += [f"dyn smem B @{n}", f"blocks/SM @{n}", f"occ % @{n}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"sm_{r['arch']}", r["kernel"], str(r["threads"]), str(r["regs"]), str(r["stack"]),
                 f"{r['spill_stores']}/{r['spill_loads']}", str(r["static_smem"])]
        for n in n_ffts:
            o = r["occupancy"][n]
            cells += [str(o["dyn_smem"]), str(o["blocks_per_sm"]), f"{o['percent']:.1f} ({o['limiter']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS))
    ap.add_argument("--n-fft", type=int, nargs="+", default=[512, 8192])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        rows = report(args.arch, args.n_fft)
    except ToolMissing as exc:
        print(f"resource_report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("Offline figures (compiler output + cuda_occupancy.h on A100/H100 SXM limits); nothing ran on a GPU.")
        print(format_table(rows, args.n_fft))
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    for r in spills:
        print(f"SPILL: sm_{r['arch']} {r['kernel']}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded",
              file=sys.stderr)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
