"""Benchmark runner: ``python -m benchmarks.run [--quick] [--device cpu|cuda|auto] ...``.

Writes ``<out>/bench_<device>.json`` (every measurement plus the environment), a Markdown table
``<out>/bench_<device>.md`` (also printed) and ``<out>/bench_<device>_scaling.png`` (time and peak
memory against N, B = 1, log-log). Timings are only comparable within one run on one device.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

# OpenMP threads that spin at barriers while their partner is descheduled by other work inflate
# small ops up to 100-fold on a busy machine (PEERS.md: a 0.26 ms torch.stft read 56 ms). PASSIVE
# makes them sleep instead. libgomp reads OMP_WAIT_POLICY once, when torch loads it: so it is set
# here, before `import torch`, unless the user chose one (reported in the environment either way).
if "OMP_WAIT_POLICY" in os.environ:
    _WAIT_POLICY_SOURCE = "from the environment"
elif "torch" in sys.modules:
    _WAIT_POLICY_SOURCE = "not set: torch was imported before benchmarks.run (libgomp default: spin, then sleep)"
else:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    _WAIT_POLICY_SOURCE = "set by benchmarks.run before torch loaded"

import torch

import lwvd_cuda
from lwvd_cuda import reference, testing

from . import registry as R
from .measure import Plan, load_average, measure_interleaved, rss_peak_supported

try:
    from tqdm.auto import tqdm
except ImportError:  # the suite must still run without the progress bar
    tqdm = None

# Gradient errors are measured on this small configuration: the float64 reference's backward at
# S takes about a minute and a GiB, far more than the rest of the check is worth.
GRAD_CHECK_BATCH = 1

DEFAULTS = dict(sizes="4x16000", n_list="1000,10000,100000,1000000", repeats=7, warmup=2, budget=6.0,
                max_point_s=30.0, tilted=True, stft_check_n=2000, grad_check_n=1600)
QUICK = dict(sizes="1x4000", n_list="1000,10000,100000", repeats=3, warmup=1, budget=2.0,
             max_point_s=3.0, tilted=False, stft_check_n=1200, grad_check_n=800)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                   help="auto: the CPU, plus the GPU when torch.cuda.is_available()")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--sizes", help="main-table sizes as BxN, comma-separated (default 4x16000 = S)")
    p.add_argument("--n-list", dest="n_list", help="signal lengths of the scaling plot (B=1); 'none' skips it")
    p.add_argument("--repeats", type=int, help="timed calls per measurement (default 7)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 2; the first also measures memory)")
    p.add_argument("--budget", type=float, help="seconds of timed calls per measurement; fewer repeats when slower")
    p.add_argument("--max-point-s", dest="max_point_s", type=float,
                   help="scaling plot: skip a point whose time, extrapolated linearly in N, exceeds this")
    p.add_argument("--mem-limit-gb", dest="mem_limit_gb", type=float, default=3.0,
                   help="skip a size whose estimated working set exceeds this (default 3 GiB)")
    p.add_argument("--entries", help="comma-separated entry names (or name[mode]); default all")
    p.add_argument("--no-tilted", dest="tilted", action="store_false", default=None,
                   help="skip the tilted (rho = +-0.5) configuration")
    p.add_argument("--skip-naive-above", dest="naive_max", type=int, default=None,
                   help="run the naive entry only where B*N <= this (default: always, once at S)")
    p.add_argument("--n-filters", dest="n_filters", type=int, default=80, help="filters F (default 80)")
    p.add_argument("--grad-check-n", dest="grad_check_n", type=int, help="N of the gradient check (B=1)")
    p.add_argument("--stft-check-n", dest="stft_check_n", type=int, help="N of the spectrogram-identity check (B=1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", default="results", help="results directory (default results/)")
    p.add_argument("--quick", action="store_true", help="about a minute: smaller sizes, fewer repeats")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.repeats < 1 or args.warmup < 0 or args.budget <= 0:
        p.error("--repeats must be >= 1, --warmup >= 0, --budget > 0")
    if args.n_filters < 1 or args.grad_check_n < 1 or args.stft_check_n < 1:
        p.error("--n-filters, --grad-check-n and --stft-check-n must be >= 1")
    args.size_list = _parse_sizes(p, args.sizes)
    args.n_values = [] if args.n_list.strip().lower() == "none" else _parse_ints(p, "--n-list", args.n_list)
    return args


def _parse_ints(p, name, text):
    try:
        vals = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        p.error(f"{name}: expected comma-separated integers, got {text!r}")
    if any(v < 1 for v in vals):
        p.error(f"{name}: values must be >= 1, got {vals}")
    return vals


def _parse_sizes(p, text):
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            b, n = item.split("x")
            out.append((int(b), int(float(n))))
        except ValueError:
            p.error(f"--sizes: expected BxN items like 4x16000, got {item!r}")
        if out[-1][0] < 1 or out[-1][1] < 1:
            p.error(f"--sizes: B and N must be >= 1, got {item!r}")
    return out


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``testing.rel_err`` on real views: it casts to float64 before testing for complex input,
    which would drop the imaginary part of a complex gradient (the gradient for z)."""
    if actual.is_complex() or expected.is_complex():
        actual = torch.view_as_real(actual.detach().to(torch.complex128))
        expected = torch.view_as_real(expected.detach().to(torch.complex128))
    return testing.rel_err(actual, expected)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (head or "unknown") + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def _version(module: str) -> Optional[str]:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - any import failure is "not available"
        return f"not importable ({type(exc).__name__})"


def _dist_version(dist: str) -> Optional[str]:
    """An installed distribution's version from its metadata, without importing it (importing
    speechbrain registers lazy modules in sys.modules that raise ImportError on attribute access,
    which breaks tools that walk sys.modules, e.g. hypothesis, in the same process)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(device: str, args) -> dict:
    env = {
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu_model": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cores_available": _cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "threads_source": "--threads" if args.threads else "torch's default (physical cores)",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "omp_wait_policy_source": _WAIT_POLICY_SOURCE,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": _version("numpy"),
        "lwvd_cuda": lwvd_cuda.__version__,
        "has_cpu_kernels": lwvd_cuda.has_cpu_kernels(),
        "has_cuda_kernels": lwvd_cuda.has_cuda_kernels(),
        "nnAudio": _version("nnAudio"),
        "tftb": _version("tftb"),
        "torchaudio": _dist_version("torchaudio"),
        "speechbrain": _dist_version("speechbrain"),
        "dstft": _dist_version("dstft"),
        "git_commit": _git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "dtype": args.dtype,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run"] + sys.argv[1:]),
        "memory_measure": ("torch.cuda.max_memory_allocated growth during the first call (tensors only)" if device == "cuda"
                           else "peak RSS growth during the first call (VmHWM reset via /proc/self/clear_refs after malloc_trim)"
                           if rss_peak_supported() else "not available (no writable /proc/self/clear_refs)"),
        "timer": "CUDA events + synchronize" if device == "cuda" else "time.perf_counter",
    }
    log = Path(args.out) / "peers_install.log"
    if log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        env["peers_install_log_tail"] = tail
    return env


def _cost_model_column():
    """``predict`` of ``benchmarks/cost_model.py`` (the CUDA kernels' time on an H100 PREDICTED from
    emulator-checked counts weighted with the sm_90 SASS, never a measurement) when it is in this
    checkout; returns (callable or None, note). fwd+bwd is the training pair CUDA autograd runs."""
    try:
        cm = importlib.import_module("benchmarks.cost_model")
        fn = cm.predict
    except (ImportError, AttributeError) as exc:
        return None, f"no H100-prediction column: benchmarks/cost_model.py not usable here ({type(exc).__name__}: {exc})"

    def predict(cfg: R.BenchConfig, dtype: str, backward: bool) -> float:
        c, st, sn, rho = R.config_filters(cfg)
        p = fn(cfg.batch, cfg.n, cfg.n_fft, cfg.hop, st.numpy(), sn.numpy(), rho.numpy(), n_filters=cfg.n_filters,
               truncate=cfg.truncate, dtype=dtype, center=c.numpy())
        if not backward:
            return p["forward"]["predicted_s"]
        # A training step on CUDA runs the moments pair (lwvd_fwd_moments + lwvd_bwd_moments, ops.py);
        # older cost models have only the plain pair.
        if "train_forward" in p:
            return p["train_forward"]["predicted_s"] + p["train_backward"]["predicted_s"]
        return p["forward"]["predicted_s"] + p["backward"]["predicted_s"]

    return predict, ("'H100 model' column: the CUDA kernels' time PREDICTED by benchmarks/cost_model.py (emulator-checked "
                     "counts of warp instructions, SASS-weighted, with shared-memory, latency and wave bounds) - not a "
                     "measurement, no GPU ran")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args, device: str):
        self.args, self.device = args, device
        self.dtype = getattr(torch, args.dtype)
        self.rows: list[dict] = []
        self.scaling: list[dict] = []
        self.oracle: dict = {}
        self.entries = R.get_entries(args.entries)
        self.log_lines: list[str] = []

    def log(self, msg: str):
        self.log_lines.append(msg.strip())
        (tqdm.write if tqdm else print)(msg)

    # -- tasks --
    def main_tasks(self):
        tasks = []
        for b, n in self.args.size_list:
            nf = self.args.n_filters
            configs = [R.standard_config(batch=b, n=n, n_filters=nf)]
            if self.args.tilted:
                configs.append(R.standard_config(batch=b, n=n, n_filters=nf, tilted=True))
            for cfg in configs:
                for e in self.entries:
                    if cfg.tilt and "tilted" not in e.tags:
                        continue
                    if cfg.tilt and e.name == "reference" and e.mode == "fwd+bwd":
                        continue  # its cost does not depend on the tilt worth a minute here
                    tasks.append(("main", cfg, e))
        for n in self.args.n_values:
            cfg = R.standard_config(batch=1, n=n, n_filters=self.args.n_filters, name=f"scaling N={n}")
            for e in self.entries:
                if e.scaling and e.mode == "fwd":
                    tasks.append(("scaling", cfg, e))
        return tasks

    def run(self):
        # The reference's one-time fallback warning (and autograd's notes on it) would interleave
        # with the progress bar; which backend ran is reported in every row instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._run()

    def _run(self):
        groups: list = []  # consecutive tasks of one configuration are timed together, interleaved
        for kind, cfg, entry in self.main_tasks():
            if groups and groups[-1][0] == kind and groups[-1][1] == cfg:
                groups[-1][2].append(entry)
            else:
                groups.append((kind, cfg, [entry]))
        bar = tqdm(total=len(groups) + 2, desc=f"bench {self.device}", unit="config", dynamic_ncols=True, mininterval=1.0) if tqdm else None
        last_point: dict = {}  # scaling: entry key -> (n, seconds)
        for kind, cfg, entries in groups:
            if bar:
                bar.set_postfix_str(f"{cfg.name}: {len(entries)} entries interleaved")
            inputs = R.build_inputs(cfg, dtype=self.dtype, device=self.device)
            rows = self.run_group(kind, cfg, entries, inputs, last_point)
            (self.rows if kind == "main" else self.scaling).extend(rows)
            del inputs
            if bar:
                bar.update(1)
        if bar:
            bar.set_postfix_str("gradient check")
        self.grad_check()
        if bar:
            bar.update(1)
            bar.set_postfix_str("spectrogram identity check")
        self.stft_check = self.spectrogram_check()
        if bar:
            bar.update(1)
            bar.close()
        self.add_ratios()
        self.flags = flag_rows(self.rows, self.scaling, _cores(), torch.get_num_threads())

    def _skip_reason(self, kind, cfg, entry, last_point) -> Optional[str]:
        if entry.cpu_only and self.device != "cpu":
            return "CPU only"
        est = entry.est_bytes(cfg)
        if est > self.args.mem_limit_gb * 2**30:
            return f"skipped: estimated working set {est / 2**30:.1f} GiB > --mem-limit-gb {self.args.mem_limit_gb:g}"
        if entry.name == "naive" and self.args.naive_max is not None and cfg.batch * cfg.n > self.args.naive_max:
            return f"skipped: B*N = {cfg.batch * cfg.n} > --skip-naive-above {self.args.naive_max}"
        if kind == "scaling" and entry.key in last_point:
            n0, t0 = last_point[entry.key]
            predicted = t0 * cfg.n / n0
            if predicted > self.args.max_point_s:
                return (f"skipped: about {predicted:.0f} s per call extrapolated from N={n0} "
                        f"(> --max-point-s {self.args.max_point_s:g})")
        return None

    def _oracle(self, cfg, inputs):
        """float64 reference output for ``cfg`` (computed once, timed once for the record)."""
        key = (cfg.batch, cfg.n, cfg.tilt)
        if key not in self.oracle:
            import time

            t0 = time.perf_counter()
            out = reference.lwvd(inputs.z64, *inputs.params64, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate)
            self.oracle[key] = (out, time.perf_counter() - t0)
        return self.oracle[key][0]

    def run_group(self, kind, cfg, entries, inputs, last_point) -> list[dict]:
        """Prepare every entry of one configuration, then time them interleaved (``measure_interleaved``)."""
        rows, plans, prepared = [], {}, {}
        for entry in entries:
            row = {"entry": entry.name, "mode": entry.mode, "config": cfg.name, "batch": cfg.batch, "n": cfg.n,
                   "tilt": cfg.tilt, "description": entry.description, "peer": entry.peer, "status": "ok"}
            rows.append(row)
            reason = self._skip_reason(kind, cfg, entry, last_point)
            if reason:
                row.update(status=reason)
                if kind == "scaling" and entry.key in last_point:
                    n0, t0 = last_point[entry.key]
                    row["extrapolated_s"] = t0 * cfg.n / n0
                if kind == "main" or not reason.startswith("skipped: about"):
                    self.log(f"  {entry.key} @ {cfg.name}: {reason}")
                continue
            try:
                prepared[entry.key] = entry.prepare(cfg, inputs, self.device, self.dtype)
            except R.Unavailable as exc:
                row.update(status=str(exc))
                self.log(f"  {entry.key}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - a failing entry is a row, not a crash
                row.update(status=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                self.log(f"  {entry.key} @ {cfg.name} FAILED: {type(exc).__name__}: {exc}")
                continue
            once = entry.name == "naive"  # run once by design (about 20 s at S)
            plans[entry.key] = Plan(prepared[entry.key].fn, repeats=1 if once else self.args.repeats,
                                    warmup=0 if once else self.args.warmup, budget_s=0.0 if once else self.args.budget)
        timings = measure_interleaved(plans, device=self.device)
        for entry, row in zip(entries, rows):
            if entry.key not in timings:
                continue
            timing, prep = timings[entry.key], prepared[entry.key]
            if isinstance(timing, Exception):
                row.update(status=f"failed: {type(timing).__name__}: {str(timing).splitlines()[0] if str(timing) else ''}")
                self.log(f"  {entry.key} @ {cfg.name} FAILED: {type(timing).__name__}: {timing}")
                continue
            row.update(timing.as_dict(), backend=prep.backend, note=prep.note)
            if entry.name == "naive":
                row["timing_note"] = "run once by design (about 20 s at S): the first and only call"
            if prep.output_comparable and kind == "main" and isinstance(timing.output, torch.Tensor):
                row["rel_err"] = _rel_err(timing.output, self._oracle(cfg, inputs))
            if entry.flops is not None:
                fl = entry.flops(cfg, inputs.params64)
                if fl:
                    row["flops"] = fl
                    row["gflops_per_s"] = fl / row["median_s"] / 1e9
            if kind == "scaling":
                last_point[entry.key] = (cfg.n, row["median_s"])
        return rows

    def grad_check(self):
        """Max relative gradient error (over z and the four parameters) against float64, on GRAD_CHECK."""
        self.grad_errors = {}
        cfg = R.standard_config(batch=GRAD_CHECK_BATCH, n=self.args.grad_check_n, n_filters=self.args.n_filters,
                                name="grad-check")
        inputs = R.build_inputs(cfg, dtype=self.dtype, device=self.device)
        leaves64 = [inputs.z64.clone().requires_grad_(True)] + [p.clone().requires_grad_(True) for p in inputs.params64]
        out64 = reference.lwvd(*leaves64, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate)
        g64 = torch.autograd.grad(out64, leaves64, inputs.grad_out.to(torch.float64))
        for e in self.entries:
            if e.mode != "fwd+bwd" or e.name not in ("lwvd", "reference"):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    grads = e.prepare(cfg, inputs, self.device, self.dtype).grad_fn()
                self.grad_errors[e.name] = max(_rel_err(g, r) for g, r in zip(grads, g64))
            except Exception as exc:  # noqa: BLE001
                self.grad_errors[e.name] = f"failed: {type(exc).__name__}: {exc}"
        for row in self.rows:
            if row["mode"] == "fwd+bwd" and row["entry"] in self.grad_errors and row["status"] == "ok":
                row["grad_rel_err"] = self.grad_errors[row["entry"]]

    def spectrogram_check(self) -> dict:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return R.stft_agreement(self.dtype, self.device, n=self.args.stft_check_n)
        except Exception as exc:  # noqa: BLE001
            return {"failed": f"{type(exc).__name__}: {exc}"}

    def add_ratios(self):
        """ratio_to_lwvd: the median over rounds of (entry time / lwvd time in the same round) - paired,
        so load that changes between rounds cancels; median / median where no round is shared
        (an entry timed by its first call only). ratio_q1/q3: the quartiles of the paired ratios."""
        for rows in (self.rows, self.scaling):
            base = {(r["config"], r["mode"]): r for r in rows if r["entry"] == "lwvd" and "median_s" in r}
            for r in rows:
                b = base.get((r["config"], "fwd" if r["entry"] == "tftb_spwvd" else r["mode"]))
                if b is None or "median_s" not in r:
                    continue
                ratio, quart = paired_ratio(r, b)
                r["ratio_to_lwvd"] = ratio
                if quart:
                    r["ratio_q1"], r["ratio_q3"] = quart
                if r.get("cpu_samples_s") and b.get("cpu_samples_s"):
                    r["cpu_ratio_to_lwvd"] = paired_ratio(r, b, key="cpu_samples_s")[0]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def paired_ratio(row: dict, base: dict, key: str = "samples_s") -> tuple[float, Optional[tuple[float, float]]]:
    """(median of per-round time ratios, their quartiles or None) of ``row`` over ``base``;
    ``key="cpu_samples_s"`` pairs the process CPU times instead of the wall times."""
    if row is base:
        return 1.0, None
    wb = dict(zip(base.get("rounds") or [], base.get(key) or []))
    pairs = [w / wb[r] for r, w in zip(row.get("rounds") or [], row.get(key) or []) if r in wb and wb[r] > 0]
    if not pairs:
        if key != "samples_s":
            return statistics.median(row[key]) / statistics.median(base[key]), None
        return row["median_s"] / base["median_s"], None
    pairs.sort()
    if len(pairs) >= 4:
        q = statistics.quantiles(pairs, n=4, method="inclusive")
        return statistics.median(pairs), (q[0], q[2])
    return statistics.median(pairs), (pairs[0], pairs[-1])


# A row is flagged (its "flags" list; the table's last column) when its time cannot be trusted.
SPREAD_FLAG = 1.5  # q3 / q1 of the timed calls above this: the calls disagree
RATIO_SPREAD_FLAG = 2.0  # q3 / q1 of the paired per-round ratios above this
MONOTONE_SLACK = 0.95  # scaling: a longer signal measured below this fraction of a shorter one's time


def flag_rows(rows: list, scaling: list, cores: int, threads: int = 1) -> dict:
    """Add ``flags`` to the rows whose figures are impossible or untrustworthy; return a summary.

    A load average above the core count is not a row flag (it concerns every row alike): it is the
    run's loud note (:func:`busy_warning`); ``load_max`` per row stays in the JSON.

    * ``fwd+bwd < fwd``: the forward + backward of an entry measured faster than its forward alone;
    * ``spread``: the timed calls' q3/q1 above SPREAD_FLAG (other work interfered);
    * ``ratio spread``: the per-round ratios to lwvd vary by more than RATIO_SPREAD_FLAG (q3/q1);
    * ``wall vs cpu ratio``: the wall-time ratio to lwvd and the CPU-time ratio differ by more than
      ``max(2, threads)``x. Undisturbed, a call's process CPU time lies between about 1x and
      ``threads``x its wall time, so parallelism alone moves the two ratios apart by at most
      ``threads``x (the floor of 2 leaves room for timer noise at one thread); more means that
      one of the two rows was descheduled by other work for part of its calls (a long call spans
      many scheduler slices, a short one few), and the wall ratio is distorted: read the cpu ratio;
    * ``non-monotone`` (scaling): a longer signal measured faster than a shorter one.
    """
    summary = {"cores": cores, "flagged": 0, "load_max": None}
    loads = [r["load_max"] for r in rows + scaling if r.get("load_max") is not None]
    summary["load_max"] = max(loads) if loads else None
    for r in rows + scaling:
        r.setdefault("flags", [])
        if "median_s" not in r:
            continue
        if r.get("repeats", 0) >= 4 and r["q1_s"] > 0 and r["q3_s"] / r["q1_s"] > SPREAD_FLAG:
            r["flags"].append(f"spread q3/q1 {r['q3_s'] / r['q1_s']:.1f}")
        if r.get("ratio_q1") and r["ratio_q1"] > 0 and r["ratio_q3"] / r["ratio_q1"] > RATIO_SPREAD_FLAG:
            r["flags"].append(f"ratio spread {r['ratio_q3'] / r['ratio_q1']:.1f}")
        w, c = r.get("ratio_to_lwvd"), r.get("cpu_ratio_to_lwvd")
        limit = max(2, threads)
        if w and c and max(w / c, c / w) > limit:
            r["flags"].append(f"wall vs cpu ratio differ {max(w / c, c / w):.1f}x > {limit}")
    by_key = {(r["entry"], r["config"], r["mode"]): r for r in rows if "median_s" in r}
    for (entry, config, mode), r in by_key.items():
        fwd = by_key.get((entry, config, "fwd"))
        if mode == "fwd+bwd" and fwd is not None and r["median_s"] < fwd["median_s"]:
            msg = f"impossible: fwd+bwd ({_fmt_time(r['median_s'])}) < fwd ({_fmt_time(fwd['median_s'])})"
            r["flags"].append(msg)
            fwd["flags"].append(msg)
    for name in dict.fromkeys(r["entry"] for r in scaling):
        pts = sorted((r for r in scaling if r["entry"] == name and "median_s" in r), key=lambda r: r["n"])
        for a, b in zip(pts, pts[1:]):
            if b["median_s"] < MONOTONE_SLACK * a["median_s"]:
                b["flags"].append(f"non-monotone: N={b['n']} faster than N={a['n']}")
    summary["flagged"] = sum(1 for r in rows + scaling if r.get("flags"))
    return summary


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _fmt_bytes(b: Optional[float]) -> str:
    if b is None:
        return "—"
    if b < 2**20:
        return "<1 MiB"
    if b < 2**30:
        return f"{b / 2**20:.0f} MiB"
    return f"{b / 2**30:.2f} GiB"


def _fmt_err(e) -> str:
    if e is None:
        return "—"
    if isinstance(e, str):
        return e
    return f"{e:.1e}"


def busy_warning(env: dict, flags: dict) -> Optional[str]:
    """The loud note when the load average exceeded the cores at start or while timing (else None)."""
    cores = env["cores_available"]
    start = (env.get("load_average_at_start") or [None])[0]
    worst = max([x for x in (start, flags.get("load_max"), env.get("load_average_at_end")) if x is not None], default=None)
    if worst is None or worst <= cores:
        return None
    return (f"WARNING: BUSY MACHINE - the 1-minute load average reached {worst:.1f} on {cores} cores during this run "
            f"(at start {start:.1f}). Other processes took CPU time from these measurements: absolute times are "
            f"inflated and vary. Entries were interleaved round by round and ratios are paired per round, which cancels "
            f"load that is common to the rounds; rows whose figures still cannot be trusted are flagged "
            f"({flags['flagged']} rows). For figures to quote, rerun on an idle machine, or compare at --threads 1.")


def markdown(env: dict, runner: Runner, notes: list[str]) -> str:
    lines = [f"# lwvd_cuda benchmarks — {env['device']}", ""]
    warning = busy_warning(env, runner.flags)
    if warning:
        lines += [f"> **{warning}**", ""]
    hw = env["gpu_model"] if env["device"] == "cuda" else f"{env['cpu_model']}, {env['cpu_count']} cores"
    load_end = env.get("load_average_at_end")
    lines += [
        f"Device: **{env['device']}** ({hw}); torch {env['torch']}; {env['torch_threads']} torch threads "
        f"({env['threads_source']}), OMP_WAIT_POLICY={env['omp_wait_policy']} ({env['omp_wait_policy_source']}); "
        f"dtype {env['dtype']}; {env['date_utc']}; commit {env['git_commit']}; command `{env['command']}`.",
        f"Load average (1 min) at start {', '.join(f'{x:.2f}' for x in env['load_average_at_start'] or [])}; "
        f"highest while timing {runner.flags['load_max'] if runner.flags['load_max'] is None else round(runner.flags['load_max'], 2)}"
        + (f"; at end {load_end:.2f}" if load_end is not None else "") + f" ({env['cores_available']} cores available).",
        f"Timer: {env['timer']}. Memory: {env['memory_measure']}.",
        "Time: median of the timed calls after warm-up, [q1, q3] (min/max when fewer than 4 calls); "
        "n = timed calls; entries of one configuration are timed interleaved, one call each per round. "
        "cpu: median process CPU time per call (all threads). "
        "Ratio: median over rounds of (time / `lwvd` time in the same round), same mode and configuration; "
        "cpu ratio: the same with process CPU times (less sensitive to being descheduled by other work). "
        "Error: max |out - ref| / max |ref| against the float64 reference; for fwd+bwd rows the gradient "
        f"error (max over z and the four parameters) at B={GRAD_CHECK_BATCH}, N={runner.args.grad_check_n}. "
        "Flags: figures that are impossible or untrustworthy (see benchmarks/README.md).",
        "",
    ]
    configs = []
    for r in runner.rows:
        if r["config"] not in configs:
            configs.append(r["config"])
    for c in configs:
        rows = [r for r in runner.rows if r["config"] == c]
        label = R.standard_config(batch=rows[0]["batch"], n=rows[0]["n"], tilted=bool(rows[0]["tilt"]),
                                  n_filters=runner.args.n_filters).label()
        model = any(r.get("cuda_predicted_s") for r in rows)
        cols = ["entry", "mode", "backend", "time", "[q1, q3]", "n", "cpu", "ratio", "cpu ratio", "peak mem", "GFLOP/s", "error"]
        cols += ["H100 model"] if model else []
        cols += ["flags"]
        align = ["---", "---", "---", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"] + (["---:"] if model else []) + ["---"]
        lines += [f"## {label}", "", "| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['entry']} | {r['mode']} | {r['status']} |" + " |" * (len(cols) - 3))
                continue
            err = r.get("grad_rel_err") if r["mode"] == "fwd+bwd" else r.get("rel_err")
            gf = f"{r['gflops_per_s']:.2f}" if "gflops_per_s" in r else "—"
            ratio = f"{r['ratio_to_lwvd']:.3g}×" if "ratio_to_lwvd" in r else "—"
            cells = [r["entry"], r["mode"], r["backend"], _fmt_time(r["median_s"]),
                     f"[{_fmt_time(r['q1_s'])}, {_fmt_time(r['q3_s'])}]", str(r["repeats"]),
                     _fmt_time(r.get("cpu_median_s")), ratio,
                     f"{r['cpu_ratio_to_lwvd']:.3g}×" if "cpu_ratio_to_lwvd" in r else "—",
                     _fmt_bytes(r["peak_bytes"]), gf, _fmt_err(err)]
            cells += [_fmt_time(r.get("cuda_predicted_s"))] if model else []
            cells += ["⚠ " + "; ".join(r["flags"]) if r.get("flags") else ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        row_notes = sorted({f"`{r['entry']}`: {r['note']}" for r in rows if r.get("note")}
                           | {f"`{r['entry']}[{r['mode']}]`: {r['timing_note']}" for r in rows if r.get("timing_note")})
        lines += [f"* {n}" for n in row_notes] + [""]
    if runner.scaling:
        lines += ["## Scaling with N (B=1, forward)", "", "| entry | " + " | ".join(f"N={n:g}" for n in runner.args.n_values) + " |",
                  "|---|" + "---:|" * len(runner.args.n_values)]
        for name in dict.fromkeys(r["entry"] for r in runner.scaling):
            cells = []
            for n in runner.args.n_values:
                r = next((r for r in runner.scaling if r["entry"] == name and r["n"] == n), None)
                if r is None or r["status"] != "ok":
                    cells.append("skipped" if r is not None else "—")
                else:
                    cells.append(f"{_fmt_time(r['median_s'])} / {_fmt_bytes(r['peak_bytes'])}"
                                 + (" ⚠" if r.get("flags") else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        flagged = [f"`{r['entry']}` N={r['n']}: {'; '.join(r['flags'])}" for r in runner.scaling if r.get("flags")]
        lines += ["", "Cells: median time / peak memory growth. 'skipped': see the JSON (extrapolated time or memory "
                  "over the limits; marked x in the plot). ⚠: flagged - " + ("; ".join(flagged) if flagged else "none") + ".", ""]
    sc = runner.stft_check
    lines += ["## Spectrogram identity (SPEC §1)", ""]
    if "failed" in sc:
        lines.append(f"Check failed to run: {sc['failed']}")
    else:
        lines.append(
            f"`lwvd_cuda.lwvd` ({sc['backend']}, {sc['dtype']}) with spectrogram widths vs |torch.stft|² with the same "
            f"Gaussian window: rel. error **{sc['rel_err_window_2n_fft']:.1e}** with a 2·n_fft window, "
            f"{sc['rel_err_window_n_fft']:.1e} with an n_fft window (the Gaussian cut at ±n_fft/2 ≈ ±3.8 std). {sc['config']}.")
    lines += ["", "## Notes", ""] + [f"* {n}" for n in notes] + [""]
    return "\n".join(lines)


def plot(runner: Runner, path: Path, env: dict) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.transforms import blended_transform_factory
    except ImportError as exc:
        return f"no plot: matplotlib not importable ({exc})"
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.6))
    marked_skip = marked_flag = False
    for name in dict.fromkeys(r["entry"] for r in runner.scaling):
        pts = [r for r in runner.scaling if r["entry"] == name and r["status"] == "ok"]
        skipped = [r for r in runner.scaling if r["entry"] == name and r["status"] != "ok"]
        if not pts and not skipped:
            continue
        label = name if name != "lwvd" or not pts else f"lwvd ({pts[0]['backend']})"
        line = ax_t.loglog([r["n"] for r in pts], [r["median_s"] for r in pts], "o-", label=label)[0] if pts else None
        color = line.get_color() if line is not None else None
        for r in pts:
            if r.get("flags"):
                ax_t.plot([r["n"]], [r["median_s"]], "o", mfc="none", mec="red", ms=11, mew=1.5,
                          label=None if marked_flag else "flagged point (see table)")
                marked_flag = True
        for r in skipped:
            # A skipped point: an x at its linear extrapolation when there is one, else on the top edge.
            kw = dict(marker="x", ms=9, mew=2, ls="none", color=color or "0.3",
                      label=None if marked_skip else "skipped (x: extrapolated, not run)")
            if r.get("extrapolated_s"):
                ax_t.plot([r["n"]], [r["extrapolated_s"]], **kw)
            else:
                ax_t.plot([r["n"]], [0.97], transform=blended_transform_factory(ax_t.transData, ax_t.transAxes), **kw)
            marked_skip = True
        mem = [(r["n"], r["peak_bytes"]) for r in pts if r["peak_bytes"]]
        if mem:
            ax_m.loglog([m[0] for m in mem], [max(m[1], 2**20) / 2**20 for m in mem], "o-", label=label, color=color)
    ns = runner.args.n_values
    if ns:
        ref_n = [min(ns), max(ns)]
        ax_t.loglog(ref_n, [1e-4 * n / ref_n[0] for n in ref_n], "k:", lw=0.8, label="slope 1 (guide)")
    hw = env["gpu_model"] if env["device"] == "cuda" else f"CPU: {env['cpu_model']}"
    ax_t.set(xlabel="N (samples), B=1", ylabel="time per forward call (s)", title=f"time — {hw}")
    what = "torch.cuda peak allocated" if env["device"] == "cuda" else "peak RSS growth of one call"
    ax_m.set(xlabel="N (samples), B=1", ylabel="peak memory growth (MiB, floor 1)", title=f"memory — {what}")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.title.set_fontsize(9)
    load = ""
    if env["device"] == "cpu":
        start = (env.get("load_average_at_start") or [None])[0]
        worst = runner.flags.get("load_max")
        load = f"; load avg {start:.1f} at start" + (f", up to {worst:.1f}" if worst is not None else "") + \
               f" on {env['cores_available']} cores" if start is not None else ""
        load += f"; {env['torch_threads']} threads, OMP_WAIT_POLICY={env['omp_wait_policy']}"
    fig.suptitle(f"lwvd_cuda scaling on {env['device']}: torch {env['torch']}, n_fft=512, hop=160, F={runner.args.n_filters}, "
                 f"{env['dtype']} — {env['date_utc']}\n{load.lstrip('; ')}", fontsize=9)
    if busy_warning(env, runner.flags):
        fig.text(0.5, 0.005, "BUSY MACHINE: load average above the core count - times inflated, see the table's flags",
                 ha="center", va="bottom", color="red", fontsize=9, weight="bold")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def run_device(args, device: str) -> dict:
    env = environment(device, args)
    runner = Runner(args, device)
    print(f"== lwvd_cuda benchmarks on {device}: {env['gpu_model'] or env['cpu_model']}, torch {env['torch']}, "
          f"{env['torch_threads']} threads, dtype {args.dtype}", flush=True)
    backend = lwvd_cuda.backend_for(torch.zeros(1, dtype=torch.complex64, device=device), 512)
    print(f"   lwvd backend: {backend[0]} ({backend[1]}); OMP_WAIT_POLICY={env['omp_wait_policy']} "
          f"({env['omp_wait_policy_source']})", flush=True)
    start_load = (env.get("load_average_at_start") or [0.0])[0]
    if device == "cpu" and start_load > env["cores_available"]:
        print(f"!! BUSY MACHINE: load average {start_load:.1f} > {env['cores_available']} cores at start: times will be "
              "inflated; entries are interleaved and untrustworthy rows flagged.", file=sys.stderr, flush=True)
    runner.run()
    env["load_average_at_end"] = load_average()
    cost_fn, cost_note = _cost_model_column()
    notes = [
        f"`lwvd` ran: {backend[0]} — {backend[1]}."
        + ("" if backend[0] == "kernels" else " Its rows therefore time the reference, not the fused kernels."),
        cost_note,
        "`naive` is run once at each main size (a first call, about 20 s at S): its time includes one-time allocation.",
        "`tftb_spwvd` times ONE signal (the others take B signals), float64 NumPy; no error column (different discretisation).",
        "FLOP/s: for the LWVD entries one model count of the exact operator's useful work (n_fft/2 complex lag products "
        "and one length-n_fft FFT per sample, 2 FLOPs per ellipse term per frame and filter), so they compare like with like; "
        "for fft_floor and stft the 5 L log2 L count of their FFTs.",
    ]
    if cost_fn is not None:
        for r in runner.rows:
            if r["entry"] == "lwvd" and r["status"] == "ok":
                try:
                    cfg = R.standard_config(batch=r["batch"], n=r["n"], tilted=bool(r["tilt"]), n_filters=args.n_filters)
                    r["cuda_predicted_s"] = float(cost_fn(cfg, args.dtype, backward=r["mode"] == "fwd+bwd"))
                except Exception as exc:  # noqa: BLE001 - e.g. launch_config.h missing from this checkout
                    notes[1] = f"no H100-prediction column: cost_model.predict failed ({type(exc).__name__}: {exc})"
                    for row in runner.rows:
                        row.pop("cuda_predicted_s", None)
                    break
    if device == "cpu" and args.device == "auto" and not torch.cuda.is_available():
        notes.append("CUDA: not timed — torch.cuda.is_available() is False on this machine (no GPU). "
                     "No figure here comes from a GPU.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(env, runner, notes + runner.log_lines)
    png = out / f"bench_{device}_scaling.png"
    plot_err = plot(runner, png, env) if (args.plot and runner.scaling) else "no scaling run"
    if plot_err:
        md += f"\n* plot: {plot_err}\n"
    else:
        md += f"\n![scaling]({png.name})\n"
    oracle_s = {f"B={k[0]},N={k[1]},tilt={k[2]}": v[1] for k, v in runner.oracle.items()}
    result = {"environment": env, "args": {k: v for k, v in vars(args).items()}, "rows": runner.rows,
              "scaling": runner.scaling, "grad_check": {"config": dict(batch=GRAD_CHECK_BATCH, n=args.grad_check_n), "rel_err": runner.grad_errors},
              "spectrogram_identity": runner.stft_check, "float64_oracle_seconds": oracle_s, "notes": notes,
              "flags": runner.flags, "busy_warning": busy_warning(env, runner.flags),
              "log": runner.log_lines}
    (out / f"bench_{device}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"bench_{device}.md").write_text(md)
    print(md, flush=True)
    warning = busy_warning(env, runner.flags)
    if warning:
        print("\n" + "!" * 100 + "\n" + warning + "\n" + "!" * 100, file=sys.stderr, flush=True)
    print(f"wrote {out / f'bench_{device}.json'}, {out / f'bench_{device}.md'}" + ("" if plot_err else f", {png}"), flush=True)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "auto"):
        devices.append("cpu")
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            print("--device cuda: torch.cuda.is_available() is False (no GPU here); nothing to run", file=sys.stderr)
            return 2
        devices.append("cuda")
    if args.device == "auto" and not torch.cuda.is_available():
        print("CUDA: skipped — torch.cuda.is_available() is False (no GPU on this machine); timing the CPU only.", flush=True)
    for device in devices:
        run_device(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
