"""Cost model of the CUDA kernels: FLOPs, bytes and a PREDICTED time on an H100 SXM.

Nothing here is a measurement. No GPU exists on this project's machines; the figures are what the
kernels' launch plan (``csrc/kernels/launch_config.h``, read from the header so the model follows it)
implies, divided by published peaks:

* FP32 (non-tensor) 67 TFLOP/s, FP64 (non-tensor) 34 TFLOP/s, HBM3 3.35 TB/s (H100 SXM5 datasheet);
* shared-memory bandwidth 33.4 TB/s, DERIVED, not published: 32 banks x 4 B per clock per SM x 132 SMs
  x 1.98 GHz boost clock. The radix-2 FFT in shared memory reads and writes every element at every
  stage, so this bound, not FLOPs, is usually the binding one.

The predicted time is the largest of the three bounds (a roofline), divided by the fraction of SMs
the grid can fill (min(1, blocks / SMs): a grid of 60 blocks leaves 72 of 132 SMs idle whatever the
per-block speed). It ignores occupancy within an SM, latency,
the SFU rate of exp, bank conflicts, tails and launch overhead, so real kernels will be slower.
It is printed as ``predicted_*`` everywhere; never report it as a timing.

Counting conventions (per term, documented so the numbers can be checked):
  butterfly            10 flops (complex multiply 6 + two complex adds 4); 4 complex shared accesses
  lag product entry    14 flops (two complex products z[n+m] conj(z[n-m]) and the i-packing)
  smoothing term       18 flops fwd (v, q = quad_form, exp counted as 8, multiply-add), 28 with moments
  grad_z A term        18 flops (same as fwd, scattered into the A row)
  grad_z gather term   12 flops (Ahat from X[m], X[-m]: 4, complex multiply-add: 8)
Terms visited follow each filter's ellipse (bin_range, with its 1-bin margins), as the kernels do;
the compute bound also charges the idle lanes of rows shorter than a warp (``lane_efficiency``).

    python benchmarks/cost_model.py                      # configuration S of PEERS.md
    python benchmarks/cost_model.py --batch 4 --n 16000 --n-fft 512 --hop 160 --filters 80 --dtype float64
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Optional, Sequence, Union

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_CONFIG = os.path.join(ROOT, "csrc", "kernels", "launch_config.h")

H100_SXM = {
    "name": "NVIDIA H100 SXM5 (published peaks; smem bandwidth derived)",
    "fp32_flops": 67e12,
    "fp64_flops": 34e12,
    "hbm_bytes_per_s": 3.35e12,
    "smem_bytes_per_s": 32 * 4 * 132 * 1.98e9,
    "sms": 132,
}

FLOPS_BUTTERFLY = 10
FLOPS_LAG = 14
FLOPS_SMOOTH = 18
FLOPS_MOMENTS = 28
FLOPS_GATHER = 12


def launch_config(path: str = LAUNCH_CONFIG) -> dict:
    """The constants of launch_config.h that the cost depends on (parsed, so the model cannot drift)."""
    text = open(path).read()

    def const(name):
        m = re.search(r"constexpr\s+[\w:]+\s+%s\s*=\s*([^;]+);" % name, text)
        if not m:
            raise ValueError(f"{name} not found in {path}")
        return int(eval(m.group(1).replace("std::size_t", ""), {}))  # e.g. "40 * 1024"

    return dict(threads=const("kThreads"), rows_smem_budget=const("kRowsSmemBudget"),
                max_complex_rows=const("kMaxComplexRows"), max_frames_per_block=const("kMaxFramesPerBlock"), min_blocks=const("kMinBlocks"),
                min_grad_tile=const("kMinGradTile"))


def _complex_rows(cfg, n_fft, scalar_bytes):
    return int(min(max(cfg["rows_smem_budget"] // (n_fft * 2 * scalar_bytes), 1), cfg["max_complex_rows"]))


def _fill(cfg, blocks):
    return 1.0 if blocks >= cfg["min_blocks"] else blocks / cfg["min_blocks"]


def _frames_per_block(cfg, n_fft, hop, batch, frames):
    """launch_config.h frames_per_block (same rule: minimise recompute / fill, R assumed n_fft/2)."""
    start = max(min(-(-2 * n_fft // hop), cfg["max_frames_per_block"]), 1)
    best, best_cost = start, None
    for tt in range(start, 0, -1):
        rows = float(tt * hop)
        cost = (rows + n_fft) / rows / _fill(cfg, batch * -(-frames // tt))
        if best_cost is None or cost < best_cost:
            best, best_cost = tt, cost
    return best


def _grad_tile(cfg, n_fft, batch, n_samples):
    """launch_config.h grad_tile (same rule)."""
    j = max(cfg["min_grad_tile"], 2 * n_fft)
    best, best_cost = j, None
    while j >= cfg["threads"]:
        cost = (j + n_fft) / j / _fill(cfg, batch * -(-n_samples // j))
        if best_cost is None or cost < best_cost:
            best, best_cost = j, cost
        j //= 2
    return best


def _effective_trunc2(truncate, scalar_bytes):
    if truncate is None or math.isinf(truncate):
        return 2.0 * 746.0 if scalar_bytes == 8 else 2.0 * 105.0
    return float(truncate) ** 2


def _terms_per_frame(n_fft, sigma_t, sigma_nu, rho, trunc2, d_limit):
    """Bins visited per frame by each filter: sum over |d| <= radius of the bin_range length."""
    out = np.zeros(len(sigma_t))
    slots = np.zeros(len(sigma_t))
    radii = np.zeros(len(sigma_t), dtype=np.int64)
    for i, (st, sn, r) in enumerate(zip(sigma_t, sigma_nu, rho)):
        radius = min(int(math.sqrt(trunc2) * st + 1.0), d_limit)
        radii[i] = radius
        d = np.arange(-radius, radius + 1, dtype=np.float64)
        rest = np.clip(trunc2 - (d / st) ** 2, 0.0, None)
        half_bins = sn * math.sqrt(1 - r * r) * np.sqrt(rest) * 2 * n_fft
        bins = np.minimum(2 * np.ceil(half_bins) + 3, n_fft)
        out[i] = bins.sum()
        slots[i] = (np.ceil(bins / 32) * 32).sum()  # a warp strides over a row's bins 32 at a time
    return out, slots, radii


def predict(
    batch: int,
    n_samples: int,
    n_fft: int,
    hop: int,
    sigma_t: Union[float, Sequence[float]],
    sigma_nu: Union[float, Sequence[float]],
    rho: Union[float, Sequence[float]] = 0.0,
    n_filters: Optional[int] = None,
    truncate: Optional[float] = 4.0,
    dtype: str = "float32",
    device: dict = H100_SXM,
) -> dict:
    """FLOPs, bytes and predicted times (seconds) of the forward and backward CUDA kernels.

    ``sigma_t`` (samples), ``sigma_nu`` (cycles/sample) and ``rho`` are per filter (arrays) or one
    value for ``n_filters`` filters. Returns a dict with ``forward`` and ``backward`` entries, each
    holding ``flops`` (by part), ``dram_bytes``, ``smem_bytes`` and ``predicted_s`` (roofline bound,
    not a measurement), plus the launch geometry used and the device figures.
    """
    if n_fft < 4 or n_fft > 8192 or n_fft & (n_fft - 1):
        raise ValueError(f"n_fft must be a power of two in [4, 8192] for the CUDA kernels, got {n_fft}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    arrays = [np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (sigma_t, sigma_nu, rho)]
    f = n_filters or max(len(a) for a in arrays)
    sigma_t, sigma_nu, rho = (np.broadcast_to(a, (f,)) for a in arrays)
    s = 8 if dtype == "float64" else 4
    cfg = launch_config()
    frames = 1 + n_samples // hop
    h = (n_fft - 1) // 2
    trunc2 = _effective_trunc2(truncate, s)
    d_limit = n_samples - 1 + (frames - 1) * hop
    terms_f, slots_f, radii = _terms_per_frame(n_fft, sigma_t, sigma_nu, rho, trunc2, d_limit)
    radius = int(radii.max())
    cr = _complex_rows(cfg, n_fft, s)
    rows_per_pass = 2 * cr
    log2n = int(math.log2(n_fft))

    # Forward / moments kernel: rows each frame tile recomputes, rounded up to whole passes.
    tt = _frames_per_block(cfg, n_fft, hop, batch, frames)
    tiles = -(-frames // tt)
    fwd_rows = 0
    for tile in range(tiles):
        t0, t1 = tile * tt, min(frames - 1, tile * tt + tt - 1)
        lo, hi = max(0, t0 * hop - radius), min(n_samples - 1, t1 * hop + radius)
        fwd_rows += max(1, -(-(hi - lo + 1) // rows_per_pass)) * rows_per_pass if hi >= lo else rows_per_pass
    fwd_rows *= batch
    complex_rows = fwd_rows / 2
    fft_flops = complex_rows * (n_fft // 2) * log2n * FLOPS_BUTTERFLY
    lag_flops = complex_rows * n_fft * FLOPS_LAG
    terms = batch * frames * terms_f.sum()
    # Lanes issued for those terms: rows shorter than 32 bins leave lanes idle. The compute bound
    # uses issued lanes; the flops reported are the useful ones.
    lane_efficiency = float(terms_f.sum() / max(1.0, slots_f.sum()))
    smem_fft = complex_rows * (n_fft // 2) * log2n * 4 * 2 * s  # 2 loads + 2 stores of complex per butterfly
    smem_rows = complex_rows * n_fft * 2 * s + terms * s  # lag-row stores + W reads by the smoothing
    fwd = dict(
        flops=dict(fft=fft_flops, lag_products=lag_flops, smoothing=terms * FLOPS_SMOOTH),
        dram_bytes=batch * n_samples * 2 * s + batch * f * frames * s + 4 * f * s,
        smem_bytes=smem_fft + smem_rows,
        rows_recomputed_factor=fwd_rows / max(1, batch * n_samples),
        blocks=batch * tiles,
        issued_flops_extra=terms * FLOPS_SMOOTH * (1 / lane_efficiency - 1),
    )

    # Backward: moments pass (same rows) + parameter reduction + grad_z tiles.
    tile_j = _grad_tile(cfg, n_fft, batch, n_samples)
    gz_rows = 0
    for j0 in range(0, n_samples, tile_j):
        j1 = min(n_samples - 1, j0 + tile_j - 1)
        lo, hi = max(0, j0 - h), min(n_samples - 1, j1 + h)
        gz_rows += -(-(hi - lo + 1) // rows_per_pass) * rows_per_pass
    gz_rows *= batch
    gz_complex = gz_rows / 2
    gather_terms = batch * n_samples * (2 * h + 1)  # upper bound: |m| <= h, clipped at the edges
    gz_fft = gz_complex * (n_fft // 2) * log2n * FLOPS_BUTTERFLY
    waste = 1 / lane_efficiency - 1
    kernels = {
        "moments": dict(flops=fft_flops + lag_flops + terms * FLOPS_MOMENTS, extra=terms * FLOPS_MOMENTS * waste,
                        dram=batch * n_samples * 2 * s + batch * f * frames * 6 * s,
                        smem=smem_fft + smem_rows + terms * 5 * s, blocks=batch * tiles),
        "param_grad": dict(flops=batch * f * frames * 40, extra=0.0, dram=batch * f * frames * 7 * s, smem=0.0,
                           blocks=f),
        "grad_z": dict(flops=gz_fft + terms * FLOPS_SMOOTH + gather_terms * FLOPS_GATHER,
                       extra=terms * FLOPS_SMOOTH * waste,
                       dram=2 * batch * n_samples * 2 * s + batch * f * frames * s,
                       smem=gz_complex * (n_fft // 2) * log2n * 4 * 2 * s + gather_terms * 2 * 2 * s + terms * 2 * s,
                       blocks=batch * -(-n_samples // tile_j)),
    }
    bwd = dict(
        flops=dict(
            fft=fft_flops + gz_fft,
            lag_products=lag_flops,
            moments=terms * FLOPS_MOMENTS,
            grad_z_scatter=terms * FLOPS_SMOOTH,
            grad_z_gather=gather_terms * FLOPS_GATHER,
            param_reduce=batch * f * frames * 40,
        ),
        dram_bytes=sum(k["dram"] for k in kernels.values()),
        smem_bytes=sum(k["smem"] for k in kernels.values()),
        rows_recomputed_factor=(fwd_rows + gz_rows) / max(1, batch * n_samples),
        blocks=sum(k["blocks"] for k in kernels.values()),
        issued_flops_extra=sum(k["extra"] for k in kernels.values()),
    )
    peak = device["fp64_flops"] if s == 8 else device["fp32_flops"]

    def kernel_time(flops, extra, dram, smem, blocks):
        bounds = dict(compute=(flops + extra) / peak, dram=dram / device["hbm_bytes_per_s"],
                      smem=smem / device["smem_bytes_per_s"])
        fill = min(1.0, blocks / device["sms"])
        return bounds, fill, max(bounds.values()) / fill

    # Forward: one kernel (prepare is one tiny block). Backward: the kernels run one after another, so
    # their predicted times add, each with its own SM fill.
    fwd_kernels = {"smooth": dict(flops=float(sum(fwd["flops"].values())), extra=fwd["issued_flops_extra"],
                                  dram=fwd["dram_bytes"], smem=fwd["smem_bytes"], blocks=fwd["blocks"])}
    for part, ks in ((fwd, fwd_kernels), (bwd, kernels)):
        part["flops_total"] = float(sum(part["flops"].values()))
        part["kernels"] = {}
        total_bounds = dict(compute=0.0, dram=0.0, smem=0.0)
        total = 0.0
        for name, k in ks.items():
            bounds, fill, t = kernel_time(k["flops"], k["extra"], k["dram"], k["smem"], k["blocks"])
            part["kernels"][name] = dict(blocks=k["blocks"], sm_fill=fill, predicted_s=t,
                                         predicted_limiter=max(bounds, key=bounds.get))
            for key in total_bounds:
                total_bounds[key] += bounds[key]
            total += t
        part["predicted_bounds_s"] = total_bounds
        part["predicted_s"] = total
        part["sm_fill"] = min(k["sm_fill"] for k in part["kernels"].values())
        part["predicted_limiter"] = max(total_bounds, key=total_bounds.get)
    return dict(
        config=dict(batch=batch, n_samples=n_samples, n_fft=n_fft, hop=hop, n_filters=f, truncate=truncate,
                    dtype=dtype, frames=frames),
        lane_efficiency=lane_efficiency,
        launch=dict(threads=cfg["threads"], complex_rows_per_pass=cr, frames_per_block=tt, grad_tile=tile_j,
                    max_radius=radius),
        forward=fwd,
        backward=bwd,
        device=device["name"],
        note="PREDICTION from published peaks (roofline lower bound), not a measurement; no GPU ran.",
    )


def spectrogram_widths(window_std: float) -> tuple[float, float]:
    """(sigma_t, sigma_nu) of the filter equal to a Gaussian-window spectrogram (SPEC §1)."""
    return window_std / math.sqrt(2.0), 1.0 / (2.0 * math.sqrt(2.0) * math.pi * window_std)


def format_prediction(p: dict) -> str:
    c = p["config"]
    lines = [f"{p['note']}", f"device model: {p['device']}",
             "config: B={batch} N={n_samples} n_fft={n_fft} hop={hop} F={n_filters} T={frames} "
             "truncate={truncate} {dtype}".format(**c),
             "launch: {threads} threads, {complex_rows_per_pass} complex rows/pass, {frames_per_block} frames/block, "
             "grad tile {grad_tile}, max radius {max_radius}".format(**p["launch"])
             + f"; smoothing lane efficiency {p['lane_efficiency']:.2f}"]
    for name in ("forward", "backward"):
        e = p[name]
        parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in e["flops"].items())
        b = e["predicted_bounds_s"]
        lines.append(
            f"{name}: {e['flops_total'] / 1e9:.2f} GFLOP ({parts}); DRAM {e['dram_bytes'] / 1e6:.2f} MB; "
            f"smem {e['smem_bytes'] / 1e9:.2f} GB; rows recomputed x{e['rows_recomputed_factor']:.2f}; "
            f"{e['blocks']} blocks")
        per_kernel = ", ".join(f"{k} {v['predicted_s'] * 1e3:.3f} ms ({v['blocks']} blocks, fill {v['sm_fill']:.2f}, "
                               f"{v['predicted_limiter']})" for k, v in e["kernels"].items())
        lines.append(
            f"  predicted {e['predicted_s'] * 1e3:.3f} ms [{per_kernel}]; summed bounds: compute "
            f"{b['compute'] * 1e3:.3f} ms, DRAM {b['dram'] * 1e3:.3f} ms, smem {b['smem'] * 1e3:.3f} ms")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Predicted cost of the lwvd CUDA kernels on an H100 SXM (not a measurement)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n", type=int, default=16000)
    ap.add_argument("--n-fft", type=int, default=512)
    ap.add_argument("--hop", type=int, default=160)
    ap.add_argument("--filters", type=int, default=80)
    ap.add_argument("--window-std", type=float, default=None,
                    help="filters equal to a Gaussian-window spectrogram of this std (samples); default n_fft/6")
    ap.add_argument("--truncate", type=float, default=4.0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    st, sn = spectrogram_widths(args.window_std or args.n_fft / 6)
    print(format_prediction(predict(args.batch, args.n, args.n_fft, args.hop, st, sn, 0.0, args.filters,
                                    args.truncate, args.dtype)))


if __name__ == "__main__":
    main()
