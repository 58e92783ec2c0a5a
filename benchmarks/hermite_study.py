"""Hermite fast path at S: interleaved CPU-time medians and errors (``python -m benchmarks.hermite_study``).

Timing: one thread, process CPU time, every entry's repeats interleaved in one process (the entries
of ``registry``: ``lwvd`` / ``lwvd_<set>`` = the exact kernels with the config's ``truncate=4``,
``hermite`` / ``hermite_<set>`` = ``method="hermite", rtol=1e-4``, forward under ``no_grad`` with the
inference cache of the prepared windows (fixed filters), ``..._nocache`` the same forward with the
cache off (new filter values every call, as in a training step), and the spectrogram peers).
Errors (float64): the Hermite path against the exact kernels with ``truncate=None`` and an
``n_fft`` whose lag window does not cut (the operator the fast path computes; the kernels agree
with the reference to 1e-10), on B=1 and a shorter signal; ``rel_err`` = max |a - b| / max |b|
over the whole (F, T) output, the bound of docs/hermite.md. Also the difference to the exact
operator at S's own ``n_fft`` and ``truncate`` (a different operator: lag window and truncation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lwvd_cuda
from lwvd_cuda import hermite, testing

from . import registry as R


def _time_interleaved(fns: dict, repeats: int) -> dict:
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[k].append(time.process_time() - t0)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


def errors(n: int = 4000, n_fft_oracle: int = 1024, rtol: float = 1e-4) -> list:
    cfg = R.standard_config(batch=1, n=n)
    inputs = R.build_inputs(cfg, dtype=torch.float64)
    rows = []
    for kind in R.HERMITE_FILTER_SETS:
        params = R.hermite_filter_set(kind, inputs.params64, cfg.seed)
        got = lwvd_cuda.lwvd(inputs.z64, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, method="hermite", rtol=rtol)
        oracle = lwvd_cuda.lwvd(inputs.z64, *params, n_fft=n_fft_oracle, hop_length=cfg.hop, truncate=None)
        at_s = lwvd_cuda.lwvd(inputs.z64, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate)
        area = hermite.plan(*params, rtol=rtol).area
        rows.append(dict(
            set=kind, area=f"{float(area.min()):.2f}-{float(area.max()):.2f}",
            plan=hermite.plan(*params, rtol=rtol).summary(),
            err_vs_untruncated=testing.rel_err(got, oracle),
            err_vs_exact_at_S=testing.rel_err(got, at_s),
        ))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-errors", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = R.standard_config()
    inputs = R.build_inputs(cfg, dtype=torch.float32)
    names = ["lwvd", "hermite", "hermite_nocache", "lwvd_melcell", "hermite_melcell", "lwvd_trained", "hermite_trained",
             "hermite_trained_nocache", "stft_spectrogram", "nnaudio_stft", "nnaudio_mel"]
    print(f"# Hermite fast path at {cfg.label()}, float32, 1 thread, CPU-time medians of {args.repeats} "
          f"interleaved repeats; load average at start {open('/proc/loadavg').read().split()[:3]}")
    for mode in ("fwd", "fwd+bwd"):
        fns, notes = {}, {}
        for e in R.get_entries(",".join(names)):
            if e.mode != mode:
                continue
            try:
                prepared = e.prepare(cfg, inputs, "cpu", torch.float32)
            except R.Unavailable as why:
                notes[e.name] = f"not run: {why}"
                continue
            fns[e.name], notes[e.name] = prepared.fn, prepared.note
        res = _time_interleaved(fns, args.repeats)
        print(f"\n| entry | mode | median | [min, max] | vs its exact | note |\n|---|---|---:|---|---:|---|")
        for name in names:
            if name not in res:
                if name in notes:
                    print(f"| {name} | {mode} | — | | | {notes[name]} |")
                continue
            med, lo, hi = res[name]
            exact = {"hermite": "lwvd", "hermite_nocache": "lwvd", "hermite_melcell": "lwvd_melcell",
                     "hermite_trained": "lwvd_trained", "hermite_trained_nocache": "lwvd_trained"}.get(name)
            ratio = f"{res[exact][0] / med:.1f}x faster" if exact in res else ""
            print(f"| {name} | {mode} | {med * 1e3:.1f} ms | [{lo * 1e3:.1f}, {hi * 1e3:.1f}] | {ratio} | {notes.get(name, '')} |")
    print(f"\nload average at end {open('/proc/loadavg').read().split()[:3]}")
    if not args.no_errors:
        print("\n| filter set | area ratios | plan (rtol 1e-4) | rel err vs untruncated, no lag window | vs exact at S (n_fft 512, truncate 4) |")
        print("|---|---|---|---:|---:|")
        for r in errors():
            print(f"| {r['set']} | {r['area']} | {r['plan']} | {r['err_vs_untruncated']:.1e} | {r['err_vs_exact_at_S']:.1e} |")


if __name__ == "__main__":
    main()
