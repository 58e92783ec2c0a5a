"""Timing and peak-memory measurement, CPU and CUDA.

Timing: wall clock of one call, ``time.perf_counter`` on the CPU; on a GPU a pair of CUDA events
around the call followed by ``torch.cuda.synchronize`` (so queued kernels are counted, launch
overhead included). Statistics: median, quartiles, min and max of the timed repeats.

Peak memory of one call (the first call of each measurement, which is also where one-time
allocations happen):

* CPU: growth of the process's peak resident set during the call. Before the call freed heap
  memory is returned to the OS (``malloc_trim(0)``) and the kernel's high-water mark is reset
  (``echo 5 > /proc/self/clear_refs``); after it ``VmHWM - VmRSS(before)``. This counts every
  page the call touched for the first time - tensors, allocator slack, MKL/FFT workspaces,
  NumPy buffers - and excludes the inputs, which exist before. Page granularity, so values under
  about 1 MiB are noise. Where ``clear_refs`` is not writable the figure is reported as missing.
* CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the call,
  after ``reset_peak_memory_stats`` (tensors only: the caching allocator's reserve and cuFFT
  plans are not counted).
"""

from __future__ import annotations

import ctypes
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = ["Timing", "measure", "rss_peak_supported"]


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim, the measure is then an upper bound of the growth
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_peak_supported() -> bool:
    """True when the CPU peak-memory measure works here (Linux with a writable clear_refs)."""
    return _status_kib("VmHWM") is not None and _reset_hwm()


class _PeakMemory:
    """Context manager: ``.bytes`` is the peak growth during the block (see module docstring)."""

    def __init__(self, device: str):
        self.device = device
        self.bytes: Optional[float] = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _malloc_trim()
            self._ok = _reset_hwm()
            self._base = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = float(torch.cuda.max_memory_allocated() - self._base)
        elif self._ok and self._base is not None:
            hwm = _status_kib("VmHWM")
            self.bytes = None if hwm is None else max(0.0, (hwm - self._base) * 1024.0)
        return False


def _time_once(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Timing:
    """Seconds of the timed repeats (``samples``) plus the first call and its memory."""

    samples: list
    first_call_s: float
    peak_bytes: Optional[float]
    warmup: int
    note: str = ""
    output: object = field(default=None, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantiles(self) -> tuple[float, float]:
        s = sorted(self.samples)
        if len(s) < 4:
            return s[0], s[-1]
        q = statistics.quantiles(s, n=4, method="inclusive")
        return q[0], q[2]

    def as_dict(self) -> dict:
        q1, q3 = self.quantiles()
        return {
            "median_s": self.median,
            "q1_s": q1,
            "q3_s": q3,
            "min_s": min(self.samples),
            "max_s": max(self.samples),
            "repeats": len(self.samples),
            "warmup": self.warmup,
            "first_call_s": self.first_call_s,
            "peak_bytes": self.peak_bytes,
            "timing_note": self.note,
            "samples_s": list(self.samples),
        }


def measure(fn: Callable[[], object], *, device: str, repeats: int, warmup: int, budget_s: float) -> Timing:
    """Time ``fn``: one first call (memory measured, output kept), more warm-up calls, then repeats.

    ``budget_s`` bounds the time spent on the repeats of one measurement: with a first call of
    ``t0`` seconds, ``min(repeats, budget_s // t0)`` repeats are run (at least 1 when ``t0`` is
    under the budget). When even one more call would not fit, the first call is the only sample,
    and ``note`` says so - it includes one-time costs (allocation, plan creation), so it is an
    upper bound.
    """
    with _PeakMemory(device) as mem:
        t0 = time.perf_counter()
        output = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
    extra_warmup = max(0, warmup - 1) if first * max(1, warmup - 1) <= budget_s / 4 else 0
    for _ in range(extra_warmup):
        fn()
    n_rep = min(repeats, int(budget_s // max(first, 1e-9)))
    if n_rep < 1:
        return Timing([first], first, mem.bytes, warmup=0,
                      note=f"single call (first call took {first:.1f} s > budget {budget_s:g} s): includes one-time costs",
                      output=output)
    samples = [_time_once(fn, device) for _ in range(n_rep)]
    note = "" if n_rep == repeats else f"repeats cut to {n_rep} by the {budget_s:g} s budget"
    return Timing(samples, first, mem.bytes, warmup=1 + extra_warmup, note=note, output=output)
