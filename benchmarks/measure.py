"""Timing and peak-memory measurement, CPU and CUDA.

Timing: wall clock of one call, ``time.perf_counter`` on the CPU; on a GPU a pair of CUDA events
around the call followed by ``torch.cuda.synchronize`` (so queued kernels are counted, launch
overhead included). On the CPU the process CPU time of the call (``time.process_time``: every
thread of the process) is recorded too. Statistics: median, quartiles, min and max of the timed
repeats.

Interleaving (:func:`measure_interleaved`): the entries of one configuration are timed in rounds,
one call of each entry per round (the order rotated every round), instead of one entry's repeats
after another's. A burst of load from other processes then hits every entry alike, and the ratio of
two entries can be taken round by round (paired); the 1-minute load average is sampled every round.

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
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = ["Timing", "measure", "measure_interleaved", "Plan", "rss_peak_supported", "load_average"]


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


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _time_once(fn: Callable[[], object], device: str) -> float:
    return _time_once_cpu(fn, device)[0]


def _time_once_cpu(fn: Callable[[], object], device: str) -> tuple[float, Optional[float]]:
    """(wall seconds, process CPU seconds or None on a GPU) of one call."""
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1000.0, None
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


@dataclass
class Timing:
    """Seconds of the timed repeats (``samples``) plus the first call and its memory."""

    samples: list
    first_call_s: float
    peak_bytes: Optional[float]
    warmup: int
    note: str = ""
    output: object = field(default=None, repr=False)
    cpu_samples: list = field(default_factory=list)  # process CPU seconds per timed call (CPU only)
    rounds: list = field(default_factory=list)  # interleaved: the round index of each sample
    load: list = field(default_factory=list)  # 1-minute load average at each timed call

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
            "cpu_median_s": statistics.median(self.cpu_samples) if self.cpu_samples else None,
            "cpu_samples_s": list(self.cpu_samples),
            "rounds": list(self.rounds),
            "load_max": max(self.load) if self.load else None,
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


@dataclass
class Plan:
    """How one entry of an interleaved measurement is timed: ``fn`` and its call counts."""

    fn: Callable[[], object]
    repeats: int
    warmup: int
    budget_s: float


def measure_interleaved(plans: dict, *, device: str) -> dict:
    """Time several callables in interleaved rounds; returns ``{key: Timing or Exception}``.

    Phase 1, per entry in turn: the first call (memory measured, output kept) and the warm-up calls,
    as :func:`measure` does; an exception there is that entry's result. The number of timed calls of
    an entry is ``min(repeats, budget_s // first_call)`` (0: its first call is its only sample, with a
    note, as in :func:`measure`). Phase 2: round ``r`` times one call of every entry that still has
    calls left, starting the round at entry ``r mod n`` so no entry always follows the same one.
    """
    first: dict = {}
    results: dict = {}
    for key, plan in plans.items():
        try:
            with _PeakMemory(device) as mem:
                c0, t0 = time.process_time(), time.perf_counter()
                output = plan.fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
            extra = max(0, plan.warmup - 1) if t_first * max(1, plan.warmup - 1) <= plan.budget_s / 4 else 0
            for _ in range(extra):
                plan.fn()
        except Exception as exc:  # noqa: BLE001 - reported by the caller as the entry's row
            results[key] = exc
            continue
        n_rep = min(plan.repeats, int(plan.budget_s // max(t_first, 1e-9)))
        first[key] = dict(t=t_first, cpu=None if device == "cuda" else c_first, peak=mem.bytes, output=output,
                          warmup=1 + extra, n=n_rep)
    timed = {k: [] for k in first}
    keys = list(first)
    for r in range(max([v["n"] for v in first.values()], default=0)):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        for key in order:
            if r >= first[key]["n"]:
                continue
            try:
                wall, cpu = _time_once_cpu(plans[key].fn, device)
            except Exception as exc:  # noqa: BLE001
                results[key] = exc
                first[key]["n"] = r  # no more calls for this entry
                continue
            timed[key].append((r, wall, cpu, load_average()))
    for key, f in first.items():
        if key in results:
            continue
        plan = plans[key]
        if f["n"] < 1:
            results[key] = Timing([f["t"]], f["t"], f["peak"], warmup=0, output=f["output"],
                                  note=f"single call (first call took {f['t']:.1f} s > budget {plan.budget_s:g} s): "
                                       "includes one-time costs", load=[x for x in [load_average()] if x is not None],
                                  cpu_samples=[] if f["cpu"] is None else [f["cpu"]])
            continue
        rows = timed[key]
        note = "" if f["n"] == plan.repeats else f"repeats cut to {f['n']} by the {plan.budget_s:g} s budget"
        results[key] = Timing([w for _, w, _, _ in rows], f["t"], f["peak"], warmup=f["warmup"], note=note,
                              output=f["output"], cpu_samples=[c for _, _, c, _ in rows if c is not None],
                              rounds=[r for r, _, _, _ in rows], load=[x for *_, x in rows if x is not None])
    return results
