"""Where the Hermite forward's time goes at S (``python -m benchmarks.hermite_stages [--cache]``).

One thread, process CPU time. Each round runs the exact forward (``truncate`` of the config) and
then the Hermite forward (``rtol=1e-4``, trained-like filters, ``torch.no_grad``), so the Hermite
call finds the caches as the interleaved study (``benchmarks.hermite_study``) leaves them. Stage
times are means of the wrapped internal functions of ``lwvd_cuda.hermite`` (the wrappers add a few
microseconds each); totals are medians. ``--cache`` keeps the inference cache on (fixed filters);
by default it is off (every call builds the windows, as a forward with new filter values does).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

import lwvd_cuda
from lwvd_cuda import hermite

from . import registry as R

STAGES = (
    (hermite, "_split", "prepare: shape, plan, windows, eigenvalues, layouts, rhs gathers, weights (or cache look-up)"),
    (hermite._FrameSpectra, "apply", "frame FFTs (B T frames + moved edge rows of P)"),
    (hermite._GroupedPower, "apply", "grouped complex GEMMs + |.|^2"),
    (hermite, "_alias_frames", "alias check (FFT of z, energies, bound)"),
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--cache", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    acc = collections.defaultdict(float)
    saved = []
    for obj, name, label in STAGES:
        f = getattr(obj, name)
        saved.append((obj, name, f))

        def wrapped(*a, _f=f, _label=label, **k):
            t0 = time.process_time()
            try:
                return _f(*a, **k)
            finally:
                acc[_label] += time.process_time() - t0

        setattr(obj, name, wrapped)
    was = hermite.INFERENCE_CACHE
    hermite.INFERENCE_CACHE = args.cache
    try:
        cfg = R.standard_config()
        inputs = R.build_inputs(cfg, dtype=torch.float32)
        params = tuple(p.float() for p in R.hermite_filter_set("trained", inputs.params64, cfg.seed))
        kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop)
        herm, exact, th, te = (lambda: lwvd_cuda.lwvd(inputs.z, *params, method="hermite", rtol=1e-4, **kw),
                               lambda: lwvd_cuda.lwvd(inputs.z, *params, truncate=cfg.truncate, **kw), [], [])
        with torch.no_grad():
            for _ in range(2):
                herm(), exact()
            acc.clear()
            for _ in range(args.rounds):
                t0 = time.process_time()
                exact()
                te.append(time.process_time() - t0)
                t0 = time.process_time()
                herm()
                th.append(time.process_time() - t0)
    finally:
        hermite.INFERENCE_CACHE = was
        for obj, name, f in saved:
            setattr(obj, name, f)
    n = args.rounds
    mean = sum(th) / n * 1e3
    print(f"# {cfg.label()}, trained-like filters, 1 thread, inference cache {'on' if args.cache else 'off'}, "
          f"{n} rounds (exact, Hermite); load average {open('/proc/loadavg').read().split()[:3]}")
    print("\n| stage | mean |\n|---|---:|")
    for _, _, label in STAGES:
        print(f"| {label} | {acc[label] / n * 1e3:.2f} ms |")
    print(f"| the rest: weights GEMM, validation, index_add, Python | {mean - sum(acc.values()) / n * 1e3:.2f} ms |")
    hm, em = statistics.median(th) * 1e3, statistics.median(te) * 1e3
    print(f"\nHermite forward median {hm:.2f} ms (mean {mean:.2f}), exact forward median {em:.1f} ms: {em / hm:.1f}x")


if __name__ == "__main__":
    main()
