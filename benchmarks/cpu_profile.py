"""CPU kernels against their floor, one thread, interleaved in one process (issue #13).

    python -m benchmarks.cpu_profile [--repeats 7] [--sweep] [--area4]

For each configuration: the fused forward, forward + backward, and the paired, cache-resident
``torch.fft`` floor (``registry.make_fft_floor``), each repeated ``--repeats`` times in turn (A B C A
B C ...), timed as process CPU time (``time.process_time``) at ``torch.set_num_threads(1)`` - the
steadiest figure on a shared machine; the load average is printed with the results. Ratios are
medians of the per-round ratios (each round runs floor, forward, forward + backward back to back),
with the ratios of the medians and the minima beside them. ``--sweep`` adds the issue's sweep (n_fft, F, hop, narrow/wide, rho 0.9, float64);
``--area4`` the truncate=4 vs truncate=None rows with area-4 filters (time per smoothing term).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

import lwvd_cuda
from benchmarks import registry as R


def _filters(cfg, scale=1.0, area=1.0, rho=None):
    c, st, sn, r = R.config_filters(cfg)
    st, sn = st * scale * area**0.5, sn / scale * area**0.5
    if rho is not None:
        r = torch.where(torch.arange(cfg.n_filters) % 2 == 0, rho, -rho).to(torch.float64)
    return c, st, sn, r


def _cases(sweep: bool):
    s = R.standard_config()
    yield "S", s, _filters(s), torch.float32
    if not sweep:
        return
    for m in (128, 1024, 4096):
        yield f"n_fft={m}", replace(s, n_fft=m), _filters(s), torch.float32
    for f in (20, 256):
        c = replace(s, n_filters=f)
        yield f"F={f}", c, _filters(c), torch.float32
    for h in (32, 512):
        yield f"hop={h}", replace(s, hop=h), _filters(s), torch.float32
    c = replace(s, n_filters=256, hop=32)
    yield "F=256,hop=32", c, _filters(c), torch.float32
    yield "narrow(/5)", s, _filters(s, scale=0.2), torch.float32
    yield "narrow,hop=512", replace(s, hop=512), _filters(s, scale=0.2), torch.float32
    yield "wide(x3)", s, _filters(s, scale=3.0), torch.float32
    yield "rho=0.9", s, _filters(s, rho=0.9), torch.float32
    yield "float64", s, _filters(s), torch.float64


def _timed(fn, repeats_out):
    t0 = time.process_time()
    fn()
    repeats_out.append(time.process_time() - t0)


def profile(name, cfg, p64, dtype, repeats, truncate=4.0):
    cfg = replace(cfg, truncate=truncate)
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    inp = R.build_inputs(cfg, dtype=dtype)
    z = inp.z.to(cdt)
    params = [p.to(dtype) for p in p64]
    floor, n_ffts = R.make_fft_floor(cfg, p64, dtype)
    kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=truncate)

    def fwd():
        with torch.no_grad():
            lwvd_cuda.lwvd(z, *params, **kw)

    leaves = [z.detach().clone().requires_grad_(True)] + [p.detach().clone().requires_grad_(True) for p in params]
    g = inp.grad_out.to(dtype)

    def fwdbwd():
        out = lwvd_cuda.lwvd(*leaves, **kw)
        torch.autograd.grad(out, leaves, g)

    fns = {"floor": floor, "fwd": fwd, "fwd+bwd": fwdbwd}
    for f in fns.values():  # warm-up (stencils, plans, allocator)
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _timed(f, times[k])
    med = {k: statistics.median(v) for k, v in times.items()}
    # Ratios paired per round (floor, fwd, fwd+bwd ran back to back): on a shared machine the load
    # drifts between rounds, and a ratio of medians can pair a quiet floor with a busy forward.
    r_fwd = statistics.median(f / c for f, c in zip(times["fwd"], times["floor"]))
    r_bwd = statistics.median(b / f for b, f in zip(times["fwd+bwd"], times["fwd"]))
    rows = R.operator_rows(cfg, p64)
    print(f"{name:16s} floor {med['floor'] * 1e3:8.1f} ms ({n_ffts} FFTs, rows {rows}/{cfg.n})  "
          f"fwd {med['fwd'] * 1e3:8.1f} ms = {r_fwd:5.2f}x floor  "
          f"fwd+bwd {med['fwd+bwd'] * 1e3:8.1f} ms = {r_bwd:5.2f}x fwd  (paired per round; "
          f"ratios of medians {med['fwd'] / med['floor']:.2f}, {med['fwd+bwd'] / med['fwd']:.2f}; "
          f"min: floor {min(times['floor']) * 1e3:.1f}, fwd {min(times['fwd']) * 1e3:.1f}, "
          f"fwd+bwd {min(times['fwd+bwd']) * 1e3:.1f} ms)", flush=True)
    return med


def area4(repeats):
    s = R.standard_config()
    p64 = R.area4_filters(s)
    z = R.build_inputs(s).z
    params = [p.float() for p in p64]
    res = {}
    for tr in (4.0, None):
        terms = R.ellipse_terms(replace(s, truncate=tr), p64) * s.frames * s.batch
        ts = []
        with torch.no_grad():
            lwvd_cuda.lwvd(z, *params, n_fft=s.n_fft, hop_length=s.hop, truncate=tr)
            for _ in range(repeats):
                _timed(lambda: lwvd_cuda.lwvd(z, *params, n_fft=s.n_fft, hop_length=s.hop, truncate=tr), ts)
        med = statistics.median(ts)
        res[tr] = med / terms
        print(f"area4 truncate={tr}: {med * 1e3:.1f} ms, {terms / 1e6:.0f} M terms, {med / terms * 1e9:.2f} ns/term",
              flush=True)
    print(f"area4: per-term cost untruncated / truncate=4 = {res[None] / res[4.0]:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--area4", action="store_true")
    ap.add_argument("--only", default="", help="configurations to run, separated by ';' (or ',' where no name has one)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, process CPU time, medians of {a.repeats} interleaved repeats; "
          f"loadavg {open('/proc/loadavg').read().split()[:3]}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, cfg, p64, dtype in _cases(a.sweep):
        if a.only and name not in a.only.split(";") and name not in a.only.split(","):
            continue
        profile(name, cfg, p64, dtype, a.repeats)
    if a.area4:
        area4(max(1, a.repeats // 3))
    print(f"loadavg after {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
