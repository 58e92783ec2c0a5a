"""Per-trip SASS instruction weights of the profiled kernel sites, read from the built cubin.

Every ``LWVD_PROF_TRIP("site", ...)`` in ``csrc/kernels/*.cuh`` owns a *region*: the innermost brace
block around it (a loop body, or the body of an ``if``), minus the regions nested inside it. The
kernels are compiled torch-free (``tools/kernels_only.cu``) with ``-lineinfo`` for one arch, and
``nvdisasm -gi`` (bundled with the ``triton`` package that CUDA torch brings) prints each SASS
instruction with its source line and, for inlined code, the line it was inlined at. An instruction
counts for the innermost region that contains its own line, else the one that contains its
inlined-at line (helpers without marks, such as ``bin_range`` in lwvd_math.cuh, count where they are
called), else for the kernel's ``_entry`` (once per warp). Out-of-line slow paths (the
``$__internal_*`` subroutines of double division and sqrt), the divergent-warp fallback copies of
the shuffles that ptxas places after the last EXIT (reached through ``BRA.DIV`` only when a warp
arrives diverged, which the kernels' full-mask shuffles never do) and padding NOPs are not counted.

The weight of a site is the number of SASS instructions of its region: the warp instructions one
trip issues when every instruction of the body runs once (branches inside a body are counted as
taken; a loop inside a region without its own mark counts once). ``python benchmarks/sass_weights.py``
rebuilds the weights and rewrites ``benchmarks/sass_weights_sm90.json``, which the cost model reads
(so it needs no CUDA toolkit); tests/test_cuda_emulation.py checks that the file matches the source.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "csrc", "kernels")
WEIGHTS_JSON = os.path.join(ROOT, "benchmarks", "sass_weights_sm90.json")
TRIP_RE = re.compile(r'LWVD_PROF_TRIP\("([\w.]+)"')

# Kernel symbol (mangled) -> (kernel key of kernel_counts.py, dtype)
_KERNELS = [
    (r"lwvd_smooth_kernelIfLb0ELb0E", "smooth", "float32"),
    (r"lwvd_smooth_kernelIfLb1ELb0E", "moments", "float32"),
    (r"lwvd_smooth_kernelIfLb1ELb1E", "fwd_moments", "float32"),   # the training forward (kKeep)
    (r"lwvd_smooth_kernelIdLb0ELb0E", "smooth", "float64"),
    (r"lwvd_smooth_kernelIdLb1ELb0E", "moments", "float64"),
    (r"lwvd_smooth_kernelIdLb1ELb1E", "fwd_moments", "float64"),
    (r"lwvd_grad_z_kernelIfLb0E", "grad_z", "float32"),
    (r"lwvd_grad_z_kernelIfLb1E", "grad_z_frame", "float32"),      # lwvd_bwd_moments (kFrameMoments)
    (r"lwvd_grad_z_kernelIdLb0E", "grad_z", "float64"),
    (r"lwvd_grad_z_kernelIdLb1E", "grad_z_frame", "float64"),
    (r"lwvd_prepare_kernelIfE", "prepare", "float32"),
    (r"lwvd_prepare_kernelIdE", "prepare", "float64"),
]


def source_regions(kernel_dir: str = KERNEL_DIR) -> dict:
    """{basename: [(site, first_line, last_line)]}, 1-based inclusive."""
    out = {}
    for path in sorted(glob.glob(os.path.join(kernel_dir, "*.cuh"))):
        lines = open(path).read().splitlines()
        regions = []
        for i, line in enumerate(lines):
            m = TRIP_RE.search(line)
            if not m or line.lstrip().startswith("//") or "#define" in line:
                continue
            # innermost unmatched '{' before the mark, then its matching '}'
            code = [ln.split("//")[0] for ln in lines]
            depth, start = 0, None
            k, col = i, code[i].find("LWVD_PROF_TRIP")
            while start is None and k >= 0:
                for c in range(col - 1, -1, -1):
                    ch = code[k][c]
                    if ch == "}":
                        depth += 1
                    elif ch == "{":
                        if depth == 0:
                            start = (k, c)
                            break
                        depth -= 1
                k -= 1
                col = len(code[k]) if k >= 0 else 0
            if start is None:
                raise ValueError(f"{path}:{i + 1}: LWVD_PROF_TRIP outside a brace block")
            depth, end = 1, None
            k, c0 = start[0], start[1] + 1
            while end is None:
                for ch in code[k][c0:]:
                    depth += (ch == "{") - (ch == "}")
                    if depth == 0:
                        end = k
                        break
                k, c0 = k + 1, 0
            start = start[0]
            regions.append((m.group(1), start + 1, end + 1))
        if regions:
            out[os.path.basename(path)] = regions
    return out


def _innermost(regions, file, line):
    best = None
    for site, a, b in regions.get(file, ()):
        if a <= line <= b and (best is None or b - a < best[1]):
            best = (site, b - a)
    return best[0] if best else None


def tool(name: str) -> str:
    try:
        import triton  # noqa: F401

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (pip install triton brings it, or a CUDA toolkit)")
    return found


def build_cubin(arch: str = "sm_90", out_dir: str | None = None) -> str:
    out_dir = out_dir or tempfile.mkdtemp(prefix="lwvd_sass_")
    cubin = os.path.join(out_dir, f"kernels_{arch}.cubin")
    nvcc = shutil.which("nvcc")
    if not nvcc:
        raise RuntimeError("nvcc not found")
    cmd = [nvcc, "-std=c++20", f"-arch={arch}", "-lineinfo", "-cubin", f"-I{os.path.join(ROOT, 'csrc')}",
           os.path.join(ROOT, "tools", "kernels_only.cu"), "-o", cubin]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return cubin


def registers(cubin: str) -> dict:
    """{mangled kernel name: registers per thread} from cuobjdump -res-usage."""
    out = subprocess.run([tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    regs, name = {}, None
    for line in out.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
        m = re.search(r"REG:(\d+)", line)
        if m and name:
            regs[name] = int(m.group(1))
    return regs


def _divergent_fallback_starts(lines) -> set:
    """Line indices where a kernel's divergent-warp fallback code begins. For every warp-synchronous
    instruction (SHFL, VOTE, ...) ptxas emits ``BRA.DIV`` to a copy of it (WARPSYNC.COLLECTIVE ...)
    placed after the kernel's last EXIT; a warp that arrives converged (the kernels' full-mask
    shuffles: every lane runs the same trips) never runs it. The first such target label after the
    last EXIT starts code that is not counted, up to the next section."""
    starts = set()
    sec_start = None
    bounds = [i for i, ln in enumerate(lines) if ln.startswith(".text.")] + [len(lines)]
    for a, b in zip(bounds, bounds[1:]):
        targets = set()
        last_exit = None
        for i in range(a, b):
            ln = lines[i]
            m = re.search(r"BRA\.DIV\s+\S+,\s*`\((\.L_x_\d+)\)", ln)
            if m:
                targets.add(m.group(1))
            if re.search(r"\*/\s+(@!?U?P\w+\s+)?EXIT\b", ln):
                last_exit = i
        if last_exit is None or not targets:
            continue
        for i in range(last_exit + 1, b):
            if lines[i].rstrip(":") in targets:
                starts.add(i)
                break
    del sec_start
    return starts


def weights_from_cubin(cubin: str, kernel_dir: str = KERNEL_DIR) -> dict:
    regions = source_regions(kernel_dir)
    text = subprocess.run([tool("nvdisasm"), "-gi", cubin], capture_output=True, text=True, check=True).stdout
    regs = registers(cubin)
    result = {}
    section = None
    counts = None
    loc = None
    in_sub = False
    chain, chain_open = [], False
    line_re = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
    instr_re = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?);")

    def flush():
        if section is not None:
            for pat, key, dtype in _KERNELS:
                if re.search(pat, section):
                    reg = next((v for k, v in regs.items() if re.search(pat, k)), None)
                    result.setdefault(dtype, {})[key] = dict(weights=dict(counts), registers=reg)

    lines = text.splitlines()
    div_from = _divergent_fallback_starts(lines)
    for idx, raw in enumerate(lines):
        if raw.startswith(".text."):
            flush()
            section = raw[len(".text."):].rstrip(":")
            counts = defaultdict(int)
            loc, in_sub = None, False
            continue
        if section is None:
            continue
        if raw.startswith("$__internal") or idx in div_from:
            in_sub = True  # out-of-line slow-path subroutine / divergent-warp fallback: not counted
            continue
        m = line_re.search(raw)
        if m:
            # -gi prints the inlining chain innermost first, one comment line per level (each may add
            # its own "inlined at"); the chain restarts after an instruction.
            if not chain_open:
                chain, chain_open = [], True
            chain.append((os.path.basename(m.group(1)), int(m.group(2))))
            if m.group(3):
                chain.append((os.path.basename(m.group(3)), int(m.group(4))))
            loc = next((s for s in (_innermost(regions, f, ln) for f, ln in chain) if s), "_entry")
            continue
        m = instr_re.match(raw)
        chain_open = False
        if m and not in_sub:
            op = m.group(1).split()
            opcode = op[1] if op and op[0].startswith("@") and len(op) > 1 else (op[0] if op else "")
            if opcode == "NOP":
                continue
            counts[loc or "_entry"] += 1
    flush()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description="Rebuild benchmarks/sass_weights_sm90.json from the kernel source")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=WEIGHTS_JSON)
    args = ap.parse_args(argv)
    cubin = build_cubin(args.arch)
    w = weights_from_cubin(cubin)
    doc = dict(arch=args.arch, how="benchmarks/sass_weights.py: nvcc -lineinfo of tools/kernels_only.cu, nvdisasm -gi",
               kernels=w)
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
