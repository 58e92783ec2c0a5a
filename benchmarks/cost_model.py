"""Cost model of the CUDA kernels: counted work, SASS-weighted, and a PREDICTED time on H100 / H200.

Nothing here is a measurement: no GPU exists on this project's machines. The model has three parts.

1. **Counts** (``kernel_counts.py``): per launch of the plan and per profiled site of the kernel
   source, the warp trips, active lanes, shared-memory wavefronts and global-memory sectors, and
   the block barriers and warp shuffles. They replay the kernels' loops exactly; the test
   ``tests/test_cuda_emulation.py::test_profile_replay_matches_emulator`` requires them to equal the
   counters of the CPU emulator running the real kernel source (``LWVD_EMU_PROFILE=1``), site by
   site, on small problems. The counts depend only on sizes and filter parameters.
2. **Weights** (``sass_weights.py`` -> ``sass_weights_sm90.json``): SASS instructions per trip of each
   site, read from the sm_90 cubin with ``nvdisasm -gi``. Warp instructions of a launch =
   sum over sites of trips x weight, + one ``_entry`` per warp.
3. **Bounds** per kernel, on the busiest SM (wave quantisation: ``ceil(blocks / SMs)`` blocks):
   * issue: 4 warp instructions per SM per clock (4 schedulers);
   * shared memory: 1 wavefront (32 banks x 4 B) per SM per clock;
   * L1: 4 global-memory sectors (128 B) per SM per clock;
   * DRAM: compulsory bytes (inputs read once, outputs written once) / HBM bandwidth;
   * latency (crude): resident blocks run together; each of a block's warps waits ``dep_cycles``
     (4) per instruction and every block barrier costs ``barrier_cycles`` (20): waves x that;
   predicted kernel time = the largest bound + ``launch_gap_s`` (2 us) per launch. The largest bound
   is reported as the kernel's limiter.
   Clock: the 1.98 GHz boost of the H100 SXM / H200; a sustained clock below it scales every
   bound but DRAM by the ratio.

What it ignores: instruction mixes that issue below 1/clock per scheduler (FP64 and MUFU pipes,
dual-issue limits), L2/DRAM traffic beyond the compulsory bytes, branch divergence inside a region
(all of a region's instructions are counted per trip), and anything the SASS does differently on
silicon. It prints ``predicted`` everywhere; never report it as a timing.

    python benchmarks/cost_model.py                      # configuration S, H100 and H200
    python benchmarks/cost_model.py --batch 4 --n 16000 --n-fft 512 --hop 160 --filters 80 --dtype float64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Optional, Sequence, Union

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_counts as kc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_CONFIG = os.path.join(ROOT, "csrc", "kernels", "launch_config.h")
WEIGHTS_JSON = os.path.join(ROOT, "benchmarks", "sass_weights_sm90.json")

_GH100 = dict(sms=132, clock_hz=1.98e9, issue_per_clk=4, smem_wavefronts_per_clk=1, l1_sectors_per_clk=4,
              smem_per_sm=228 * 1024, smem_reserved_per_block=1024, regs_per_sm=65536, max_threads_per_sm=2048,
              max_blocks_per_sm=32, dep_cycles=4, barrier_cycles=20, launch_gap_s=2e-6)
H100_SXM = dict(_GH100, name="NVIDIA H100 SXM5 (132 SMs, 1.98 GHz boost, HBM3 3.35 TB/s)", hbm_bytes_per_s=3.35e12)
H200 = dict(_GH100, name="NVIDIA H200 SXM (132 SMs, 1.98 GHz boost, HBM3e 4.8 TB/s)", hbm_bytes_per_s=4.8e12)
DEVICES = {"H100": H100_SXM, "H200": H200}

FLOPS_BUTTERFLY = 10  # kept for the flop summary: complex multiply 6 + two complex adds 4
_STATIC_SMEM = {"prepare": lambda s: 256 * 12}
# forward / backward: lwvd_fwd, lwvd_bwd (no-grad forward; the fallback pair); train_*: the pair CUDA
# eager autograd runs (lwvd_fwd_moments, lwvd_bwd_moments with grad_z; lwvd_cuda/ops.py).
PARTS = ("forward", "backward", "train_forward", "train_backward")
NOTE = ("PREDICTION from counted warp instructions (SASS-weighted), shared-memory wavefronts and sectors "
        "(counts checked against the CPU emulator's counters) - not a measurement; no GPU ran.")


def launch_config(path: str = LAUNCH_CONFIG) -> dict:
    """The constants of launch_config.h that the counts depend on (parsed, so the model cannot drift)."""
    text = open(path).read()

    def const(name):
        m = re.search(r"constexpr\s+[\w:]+\s+%s\s*=\s*([^;]+);" % name, text)
        if not m:
            raise ValueError(f"{name} not found in {path}")
        return int(eval(m.group(1).replace("std::size_t", ""), {}))  # e.g. "40 * 1024"

    return dict(threads=const("kThreads"), smooth_threads=const("kSmoothThreads"), grad_threads=const("kGradThreads"), rows_smem_budget=const("kRowsSmemBudget"),
                smooth_rows_smem_budget=const("kSmoothRowsSmemBudget"),
                max_complex_rows=const("kMaxComplexRows"), max_frames_per_block=const("kMaxFramesPerBlock"),
                min_blocks=const("kSms"), min_blocks_per_sm=const("kMinBlocksPerSm"), min_grad_tile=const("kMinGradTile"),
                prep_threads=const("kPrepThreads"), reduce_threads=const("kReduceThreads"),
                stencil_budget=stencil_budget(text), window_budget=stencil_budget(text, "LWVD_WINDOW_BUDGET"),
                window=const("kWindow"), win_list_bytes=const("kWinListBytes"), win_list_max=const("kWinListMax"))


def stencil_budget(text: str, macro: str = "LWVD_STENCIL_BUDGET") -> int:
    """The default of LWVD_STENCIL_BUDGET (or LWVD_WINDOW_BUDGET) in launch_config.h (bytes per call)."""
    m = re.search(r"#define\s+%s\s+(.+)" % macro, text)
    if not m:
        raise ValueError(f"{macro} not found in launch_config.h")
    return int(eval(re.sub(r"(\d)u\b", r"\1", m.group(1)), {}))


def sass_weights(path: str = WEIGHTS_JSON) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _trip_sites() -> set:
    import sass_weights

    return {site for regions in sass_weights.source_regions().values() for site, _, _ in regions}


def _occupancy(launch, regs, dev, scalar_bytes):
    threads = launch["threads"]
    smem = launch["smem"] + _STATIC_SMEM.get(launch["kernel"], lambda s: 0)(scalar_bytes)
    warps = -(-threads // 32)
    by_threads = dev["max_threads_per_sm"] // threads
    regs_per_warp = -(-max(regs or 32, 1) * 32 // 256) * 256
    by_regs = dev["regs_per_sm"] // (regs_per_warp * warps)
    by_smem = dev["smem_per_sm"] // (smem + dev["smem_reserved_per_block"])
    return max(1, min(dev["max_blocks_per_sm"], by_threads, by_regs, by_smem))


def _dram_bytes(kernel, p: kc.Problem):
    s = p.scalar_bytes
    z = p.batch * p.n_samples * 2 * s
    out = p.batch * p.f * p.frames * s
    mom = 6 * kc.smooth_parts(p, launch_config()) * p.f * s  # G-weighted moments per moments block
    frame_mom = 6 * 8 * p.batch * p.f * p.frames  # the training pair's per-frame moments, float64
    return {"prepare": 4 * p.f * s + p.f * 64 + p.n_fft * s, "smooth": z + out, "moments": z + out + mom,
            "grad_z": 2 * z + out + mom,  # grad_z + the parameter gradients (one launch)
            "fwd_moments": z + out + frame_mom, "grad_z_frame": 2 * z + out + frame_mom}.get(kernel, 0)


def kernel_prediction(launch, weights, p: kc.Problem, dev) -> dict:
    w = weights["weights"]
    unknown = sorted(k for k in set(launch["sites"]) - set(w) if k in _trip_sites())
    if unknown:
        raise ValueError(f"{launch['kernel']}: sites {unknown} have no SASS weight; rerun benchmarks/sass_weights.py")
    warps_per_block = -(-launch["threads"] // 32)
    blocks = launch["blocks"]
    # memory marks carry no weight of their own: their instructions are in the enclosing trip region
    per_site = {k: v[0] * w.get(k, 0) for k, v in launch["sites"].items()}
    per_site["_entry"] = blocks * warps_per_block * w.get("_entry", 0)
    instr = float(sum(per_site.values()))
    lanes = sum(v[1] for v in launch["sites"].values())
    trips = sum(v[0] for v in launch["sites"].values())
    wf = float(sum(v[2] for v in launch["sites"].values()))
    sec = float(sum(v[3] for v in launch["sites"].values()))
    occ = _occupancy(launch, weights.get("registers"), dev, p.scalar_bytes)
    per_sm = -(-blocks // dev["sms"])
    waves = -(-blocks // (dev["sms"] * occ))
    clk = dev["clock_hz"]
    ib, wb, sb = instr / blocks, wf / blocks, sec / blocks
    bars = launch["block_barriers"] / blocks
    bounds = dict(
        issue=per_sm * ib / (dev["issue_per_clk"] * clk),
        smem=per_sm * wb / (dev["smem_wavefronts_per_clk"] * clk),
        l1=per_sm * sb / (dev["l1_sectors_per_clk"] * clk),
        dram=_dram_bytes(launch["kernel"], p) / dev["hbm_bytes_per_s"],
        latency=waves * (ib / warps_per_block * dev["dep_cycles"] + bars * dev["barrier_cycles"]) / clk,
    )
    top_bound = max(bounds.values())
    # every bound within 2 % of the largest is named: "issue/latency" says both bind
    limiter = "/".join(k for k, v in sorted(bounds.items(), key=lambda kv: -kv[1]) if v >= 0.98 * top_bound)
    top = sorted(per_site.items(), key=lambda kv: -kv[1])[:4]
    return dict(kernel=launch["kernel"], blocks=blocks, blocks_per_sm_resident=occ, waves=waves,
                busiest_sm_blocks=per_sm, warp_instructions=instr, smem_wavefronts=wf, gmem_sectors=sec,
                lane_efficiency=lanes / max(1, 32 * trips), block_barriers=launch["block_barriers"],
                warp_exchanges=launch["warp_exchanges"], bounds_s=bounds, predicted_limiter=limiter,
                predicted_s=top_bound + dev["launch_gap_s"],
                instruction_share={k: v / instr for k, v in top})


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
    center: Union[None, float, Sequence[float]] = None,
) -> dict:
    """Counts and PREDICTED times (seconds) of the forward and backward CUDA launches.

    ``sigma_t`` (samples), ``sigma_nu`` (cycles/sample), ``rho`` and ``center`` (cycles/sample) are
    per filter (arrays) or one value for ``n_filters`` filters; ``center=None`` spreads the centres
    evenly over (0, 1/2). Returns ``forward`` / ``backward`` (the plain pair: lwvd_fwd, lwvd_bwd) and
    ``train_forward`` / ``train_backward`` (the training pair that CUDA eager autograd runs:
    lwvd_fwd_moments, lwvd_bwd_moments with grad_z) with ``predicted_s`` (sum over the pass's
    launches) and ``kernels`` (per launch: bounds, limiter, counts), plus the launch geometry and
    ``summary`` (fwd without grad, fwd with moments, bwd, fwd+bwd of the training path, seconds).
    """
    if n_fft < 4 or n_fft > 8192 or n_fft & (n_fft - 1):
        raise ValueError(f"n_fft must be a power of two in [4, 8192] for the CUDA kernels, got {n_fft}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    arrays = [np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (sigma_t, sigma_nu, rho)]
    f = n_filters or max(len(a) for a in arrays)
    if center is None:
        center = (np.arange(f) + 0.5) / (2.0 * f)
    arrays.append(np.atleast_1d(np.asarray(center, dtype=np.float64)))
    sigma_t, sigma_nu, rho, center = (np.broadcast_to(a, (f,)) for a in arrays)
    prob = kc.Problem(batch, n_samples, n_fft, hop, tuple(center), tuple(sigma_t), tuple(sigma_nu), tuple(rho),
                      truncate, dtype)
    cfg = launch_config()
    counts = kc.plan_counts(prob, cfg)
    weights = sass_weights()["kernels"][dtype]
    out = dict(config=dict(batch=batch, n_samples=n_samples, n_fft=n_fft, hop=hop, n_filters=f, truncate=truncate,
                           dtype=dtype, frames=prob.frames),
               device=device["name"], note=NOTE, counts=counts)
    geom = kc.Geometry(prob)
    s = prob.scalar_bytes
    out["launch"] = dict(threads=cfg["smooth_threads"], complex_rows_per_pass=kc.smooth_complex_rows(cfg, n_fft, s),
                         grad_complex_rows_per_pass=kc.complex_rows(cfg, n_fft, s),
                         frames_per_block=kc.frames_per_block(cfg, n_fft, hop, batch, prob.frames),
                         grad_threads=cfg["grad_threads"], grad_tile=kc.grad_tile(cfg, n_fft, batch, n_samples),
                         max_radius=geom.max_radius)
    for part in PARTS:
        ks = [kernel_prediction(L, weights[L["kernel"]], prob, device) for L in counts[part]]
        # radix-2 butterflies (a radix-4 step does four)
        bfly = sum(L["sites"].get("fft.bfly", [0, 0])[1] + 4 * L["sites"].get("fft.bfly4", [0, 0])[1]
                   for L in counts[part])
        out[part] = dict(kernels={k["kernel"]: k for k in ks}, launches=len(ks),
                         predicted_s=float(sum(k["predicted_s"] for k in ks)),
                         warp_instructions=float(sum(k["warp_instructions"] for k in ks)),
                         flops=dict(fft=float(bfly * FLOPS_BUTTERFLY)))
    out["summary"] = dict(fwd_no_grad=out["forward"]["predicted_s"],
                          fwd_with_moments=out["train_forward"]["predicted_s"],
                          bwd=out["train_backward"]["predicted_s"],
                          fwd_bwd=out["train_forward"]["predicted_s"] + out["train_backward"]["predicted_s"],
                          fwd_bwd_plain=out["forward"]["predicted_s"] + out["backward"]["predicted_s"])
    return out


def s_config_filters(n_filters: int = 80):
    """(center, sigma_t, sigma_nu, rho) of configuration S (benchmarks/registry.py), float64."""
    sys.path.insert(0, ROOT)
    from benchmarks import registry as R

    cfg = R.standard_config(n_filters=n_filters)
    return [t.numpy() for t in R.config_filters(cfg)], cfg


def format_prediction(p: dict) -> str:
    c = p["config"]
    lines = [p["note"], f"device model: {p['device']}",
             "config: B={batch} N={n_samples} n_fft={n_fft} hop={hop} F={n_filters} T={frames} truncate={truncate} "
             "{dtype}".format(**c),
             "launch: {threads} threads, {complex_rows_per_pass} complex rows/pass, {frames_per_block} frames/block, "
             "grad tile {grad_tile} ({grad_threads} threads), max radius {max_radius}".format(**p["launch"])]
    for part in PARTS:
        e = p[part]
        lines.append(f"{part}: predicted {e['predicted_s'] * 1e3:.3f} ms, {e['launches']} launches, "
                     f"{e['warp_instructions'] / 1e6:.1f} M warp instructions")
        for name, k in e["kernels"].items():
            b = ", ".join(f"{kk} {v * 1e3:.3f}" for kk, v in k["bounds_s"].items())
            share = ", ".join(f"{kk} {v:.0%}" for kk, v in k["instruction_share"].items())
            lines.append(f"  {name:<10s} predicted {k['predicted_s'] * 1e3:.3f} ms, limit: {k['predicted_limiter']} "
                         f"[bounds ms: {b}]; {k['blocks']} blocks ({k['blocks_per_sm_resident']}/SM resident, "
                         f"busiest SM {k['busiest_sm_blocks']}); {k['warp_instructions'] / 1e6:.1f} M warp instr "
                         f"(lanes busy {k['lane_efficiency']:.0%}; {share}); {k['smem_wavefronts'] / 1e6:.2f} M "
                         f"wavefronts, {k['gmem_sectors'] / 1e6:.2f} M sectors")
    sm = p["summary"]
    lines.append("training path (predicted): fwd (no grad) {:.3f} ms, fwd with moments {:.3f} ms, bwd {:.3f} ms, "
                 "fwd+bwd {:.3f} ms (plain pair lwvd_fwd + lwvd_bwd: {:.3f} ms)".format(
                     *(sm[k] * 1e3 for k in ("fwd_no_grad", "fwd_with_moments", "bwd", "fwd_bwd", "fwd_bwd_plain"))))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="PREDICTED cost of the lwvd CUDA kernels on H100 / H200 (not a measurement)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n", type=int, default=16000)
    ap.add_argument("--n-fft", type=int, default=512)
    ap.add_argument("--hop", type=int, default=160)
    ap.add_argument("--filters", type=int, default=80)
    ap.add_argument("--truncate", type=float, default=4.0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="H100,H200")
    args = ap.parse_args(argv)
    (center, st, sn, rho), _ = s_config_filters(args.filters)
    for dev in args.device.split(","):
        p = predict(args.batch, args.n, args.n_fft, args.hop, st, sn, rho, n_filters=args.filters,
                    truncate=args.truncate, dtype=args.dtype, device=DEVICES[dev], center=center)
        print(format_prediction(p))
        print()


if __name__ == "__main__":
    main()
