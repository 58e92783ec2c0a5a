#!/usr/bin/env python
"""Resource usage of the CUDA kernels per architecture, with offline occupancy. Needs nvcc, no GPU.

Compiles ``tools/kernels_only.cu`` (every kernel the plan launches, float and double, no torch
headers) for each architecture the extension is built for (``setup.DEFAULT_ARCHS``) with the
extension's own nvcc flags (``setup.nvcc_flags()``) plus ``-Xptxas -v``, parses registers, stack,
spill bytes and static shared memory per kernel, and computes occupancy with the toolkit's
``cuda_occupancy.h`` (``tools/occupancy.cpp``: the same code as
``cudaOccupancyMaxActiveBlocksPerMultiprocessor``, run on the published limits of one GPU per
architecture). The row kernels' dynamic shared memory depends on n_fft and the dtype
(``launch_config.h``); occupancy is shown at ``--n-fft`` (default 512 and 8192).

The gate (CI, ``.ci/run``): exit 1 when a float32 kernel spills (spill stores or loads > 0) on a
gated architecture (sm_80, sm_90: the A100 and H100/H200 that training runs on). Any other spill,
for example a few bytes of a float64 kernel on sm_86, is reported ("allowed") but does not fail:
the extension builds with spills (setup.py), and a user of that GPU still gets a working kernel.
Kernels with no dtype template parameter count as float32 (they run in every float32 call).
Exit 2 when nvcc or a host compiler is missing. ``report()`` / ``gate_failures()`` return the rows
for tests and the benchmark suite. Nothing here runs on a GPU.

    python tools/resource_report.py [--arch 80 90] [--n-fft 512 8192] [--json] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
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
# A float32 kernel that spills on one of these fails CI (see the module docstring).
GATED_ARCHS = (80, 90)


def _setup_module():
    """setup.py as a module (its main() runs only as a script): the one place of archs and flags."""
    spec = importlib.util.spec_from_file_location("_lwvd_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_arch_list(arch_list: str) -> tuple[int, ...]:
    """TORCH_CUDA_ARCH_LIST syntax ("8.0;8.6 9.0+PTX") -> (80, 86, 90); the "+PTX" suffix and
    architecture-specific "a" variants map to their base compute capability."""
    out = []
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)a?(\+PTX)?", item)
        if not m:
            raise ValueError(f"cannot read architecture {item!r} in {arch_list!r}")
        cc = int(m.group(1)) * 10 + int(m.group(2))
        if cc not in out:
            out.append(cc)
    return tuple(out)


def default_archs() -> tuple[int, ...]:
    """The architectures of the extension's default build (setup.DEFAULT_ARCHS)."""
    return parse_arch_list(_setup_module().DEFAULT_ARCHS)


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


# Base kernel name -> the launch shape tools/occupancy.cpp knows (launch_config.h). A kernel not
# listed gets no occupancy figure (shown as "n/a"), never a guessed one.
OCCUPANCY_KIND = {
    "prepare": "prep",
    "smooth": "rows",
    "grad_z": "grad",
}


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled through c++filt (binutils); names it cannot read map to themselves."""
    filt = shutil.which("c++filt")
    if filt is None or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names) + "\n", capture_output=True, text=True).stdout.split("\n")
    return {n: (d.strip() or n) for n, d in zip(names, out)}


def readable(demangled: str) -> dict:
    """'void lwvd::lwvd_smooth_kernel<float, true>(lwvd::SmoothArgs<float>)' ->
    kernel 'smooth<float,moments>', base 'smooth', dtype 'float' (or 'double', or 'any' when no
    dtype is a template argument)."""
    m = re.match(r"(?:void\s+)?(?:\w+::)*(\w+?)(?:<(.*)>)?\(", demangled)
    if not m:
        return dict(kernel=demangled, base=demangled, dtype="any")
    base = re.sub(r"^lwvd_", "", m.group(1))
    base = re.sub(r"_kernel$", "", base)
    args = [a.strip() for a in m.group(2).split(",")] if m.group(2) else []
    dtypes = {a for a in args if a in ("float", "double")}
    dtype = "float" if "float" in dtypes else ("double" if "double" in dtypes else "any")
    # The smoothing kernel's bool parameter says whether it writes K or the backward's moments.
    # A third (kKeep: the training forward that keeps the per-frame moments) names it "keep";
    # grad_z's bool (kFrameMoments: lwvd_bwd_moments) "frame" (absent when false).
    if base == "smooth" and len(args) == 3 and args[2] in ("true", "false"):
        keep = args.pop() == "true"
        if keep and args[1] == "true":
            args[1] = "keep"
    if base == "smooth" and len(args) == 2 and args[1] in ("true", "false"):
        args[1] = "moments" if args[1] == "true" else "fwd"
    if base == "grad_z" and len(args) == 2 and args[1] in ("true", "false"):
        if args.pop() == "true":
            args.append("frame")
    name = base + ("<%s>" % ",".join(args) if args else "")
    return dict(kernel=name, base=base, dtype=dtype)


def nvcc_command(nvcc: str, arch: int) -> list[str]:
    """The extension's nvcc flags (setup.nvcc_flags) and the ones torch adds that change code
    generation (C++20, relaxed constexpr), for one real architecture, with ptxas' report."""
    flags = [f for f in _setup_module().nvcc_flags() if not f.startswith(("-Xptxas", "--threads"))]
    return [nvcc, "-std=c++20", f"-arch=sm_{arch}", "--expt-relaxed-constexpr", *flags,
            "-Xptxas=-v,--warn-on-spills", "-I", os.path.join(ROOT, "csrc"), "-c", SOURCE, "-o", os.devnull]


def parse_ptxas(text: str, arch: int) -> list[dict]:
    """Rows of the entry functions in ptxas -v output. Stack and spills are read from the
    "Function properties" block of the entry itself (not of a non-inlined callee)."""
    rows, by_name, props_of = [], {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)'", line)
        if m:
            row = dict(arch=arch, mangled=m.group(1), regs=0, stack=0, spill_stores=0, spill_loads=0, static_smem=0)
            rows.append(row)
            by_name[row["mangled"]] = row
            props_of = None
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props_of = by_name.get(m.group(1))
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            if props_of is not None:
                props_of["stack"], props_of["spill_stores"], props_of["spill_loads"] = map(int, m.groups())
            props_of = None
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and rows:
            rows[-1]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            rows[-1]["static_smem"] = int(s.group(1)) if s else 0
    names = demangle([r["mangled"] for r in rows])
    for r in rows:
        r.update(readable(names[r["mangled"]]))
        r["scalar_bytes"] = 8 if r["dtype"] == "double" else 4
        r["kind"] = OCCUPANCY_KIND.get(r["base"])
    return rows


def compile_and_parse(nvcc: str, arch: int) -> list[dict]:
    out = subprocess.run(nvcc_command(nvcc, arch), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{out.stderr}")
    rows = parse_ptxas(out.stderr, arch)
    if not rows:
        raise RuntimeError(f"no entry function in the ptxas output for sm_{arch}:\n{out.stderr}")
    return rows


def occupancy(rows: list[dict], include: str, n_ffts) -> None:
    """Adds threads and occupancy[n_fft] = {dyn_smem, blocks_per_sm, percent, limiter} to each row
    whose kind tools/occupancy.cpp knows; limiter "exceeds-optin" means the launch does not fit the
    device's shared memory at all (the launcher raises a ValueError naming n_fft there)."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise ToolMissing("no host C++ compiler for tools/occupancy.cpp")
    known = [r for r in rows if r["kind"] is not None]
    for r in rows:
        r["threads"], r["occupancy"] = None, {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "occupancy")
        built = subprocess.run([cxx, "-std=c++17", "-O1", "-I", include, "-I", os.path.join(ROOT, "csrc"), OCC_SOURCE,
                                "-o", exe], capture_output=True, text=True)
        if built.returncode != 0:
            # Occupancy is information; the spill gate must not depend on it. Say so loudly.
            first = next((ln for ln in built.stderr.splitlines() if "error" in ln), built.stderr.strip()[:300])
            print(f"resource_report: WARNING: no occupancy figures: tools/occupancy.cpp does not compile against "
                  f"launch_config.h ({first})", file=sys.stderr)
            return
        queries = [(r, n, f"{r['arch']} {r['regs']} {r['static_smem']} {r['kind']} {r['scalar_bytes']} {n}")
                   for r in known for n in n_ffts]
        out = subprocess.run([exe], input="\n".join(q[2] for q in queries) + "\n", capture_output=True, text=True,
                             check=True).stdout.split("\n")
    for (r, n, _), line in zip(queries, out):
        threads, dyn, blocks, pct, lim = line.split()
        r["threads"] = int(threads)
        r["occupancy"][n] = dict(dyn_smem=int(dyn), blocks_per_sm=int(blocks), percent=float(pct), limiter=lim)


def report(archs=None, n_ffts=(512, 8192), jobs=None) -> list[dict]:
    """One dict per (arch, kernel): kernel, base, dtype, regs, stack, spill_stores, spill_loads,
    static_smem, threads and occupancy[n_fft]. archs defaults to the extension's (setup.py).
    Raises ToolMissing without nvcc or a host compiler."""
    archs = tuple(archs) if archs else default_archs()
    nvcc = find_nvcc()
    include = toolkit_include(nvcc)
    jobs = jobs or int(os.environ.get("MAX_JOBS", 0)) or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(jobs, len(archs)))) as pool:
        per_arch = list(pool.map(lambda a: compile_and_parse(nvcc, a), archs))
    rows = [r for arch_rows in per_arch for r in sorted(arch_rows, key=lambda r: (r["base"], r["kernel"]))]
    occupancy(rows, include, n_ffts)
    return rows


def spills(row: dict) -> bool:
    return bool(row["spill_stores"] or row["spill_loads"])


def gate_failures(rows: list[dict]) -> list[dict]:
    """The rows that fail CI: a spill of a float32 (or dtype-free) kernel on a GATED_ARCHS arch."""
    return [r for r in rows if spills(r) and r["arch"] in GATED_ARCHS and r["dtype"] != "double"]


def format_table(rows: list[dict], n_ffts) -> str:
    head = ["arch", "kernel", "threads", "regs", "stack B", "spill st/ld B", "static smem B"]
    for n in n_ffts:
        head += [f"dyn smem B @{n}", f"blocks/SM @{n}", f"occ % @{n}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"sm_{r['arch']}", r["kernel"], str(r["threads"] or "n/a"), str(r["regs"]), str(r["stack"]),
                 f"{r['spill_stores']}/{r['spill_loads']}", str(r["static_smem"])]
        for n in n_ffts:
            o = r["occupancy"].get(n)
            if o is None:
                cells += ["n/a"] * 3
            else:
                cells += [str(o["dyn_smem"]), str(o["blocks_per_sm"]), f"{o['percent']:.1f} ({o['limiter']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=None,
                    help="compute capabilities as integers (default: the extension's, setup.DEFAULT_ARCHS)")
    ap.add_argument("--n-fft", type=int, nargs="+", default=[512, 8192])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--jobs", type=int, default=None, help="parallel nvcc runs (default MAX_JOBS or the core count)")
    args = ap.parse_args(argv)
    try:
        rows = report(args.arch, args.n_fft, args.jobs)
    except ToolMissing as exc:
        print(f"resource_report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("Offline figures (ptxas -v + cuda_occupancy.h on published per-arch limits: sm_80 A100, sm_86 A40,")
        print("sm_89 L40S, sm_90 H100 SXM, sm_100 B200, sm_120 RTX 5090); nothing ran on a GPU.")
        print(format_table(rows, args.n_fft))
    failing = gate_failures(rows)
    for r in rows:
        if spills(r):
            verdict = "FAILS the gate" if r in failing else "allowed (not a float32 kernel on sm_80/sm_90)"
            print(f"SPILL: sm_{r['arch']} {r['kernel']}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded"
                  f" -- {verdict}", file=sys.stderr)
    gated = sorted({r["arch"] for r in rows} & set(GATED_ARCHS))
    print(f"resource gate (float32 kernels on {', '.join(f'sm_{a}' for a in gated) or 'no gated arch'}): "
          f"{'FAIL' if failing else 'pass'}; {sum(map(spills, rows))} spilling kernel(s) of {len(rows)}",
          file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
