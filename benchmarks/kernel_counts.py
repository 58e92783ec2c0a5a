"""Replay of the CUDA kernels' loop structure: the emulator's profile counts, for any problem size.

The kernels carry profiling marks (``csrc/kernels/lwvd_prof.cuh``); the CPU emulator
(``tests/cuda_emu``, ``LWVD_EMU_PROFILE=1``) turns them into per-launch counts per site:

* ``warp_trips``  warp instructions of the site (a warp issues a loop trip once for its active lanes)
* ``lanes``       active lanes summed over those warp trips
* ``wavefronts``  shared memory: per warp access, the most distinct 4-byte words in one of 32 banks
* ``sectors``     global memory: per warp access, the distinct 32-byte sectors

plus the block barriers and warp exchanges (shuffles) of each launch. This module computes the same
numbers from the launch plan (``csrc/kernels/launch_config.h`` + ``lwvd_plan.cuh``) and the filter
geometry (``csrc/kernels/lwvd_math.cuh``: ``make_filter`` / ``bin_range`` replayed in float64),
without running anything; ``tests/test_cuda_emulation.py::test_profile_replay_matches_emulator``
requires equality with the emulator on small problems, site by site. The counts depend on sizes and
filter parameters only, never on the signal's values. Large sizes stay cheap: per filter and lag d
the per-row quantities are tabulated once and summed with prefix sums, and tiles whose geometry
(clipped at the signal edges) and address alignment are equal are counted once.

Nothing here is a timing: ``cost_model.py`` turns the counts into a PREDICTION.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

WARP = 32
BANKS = 32


# --------------------------------------------------------------------------------------------
# Launch configuration (mirrors launch_config.h; cost_model.launch_config parses the constants)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    batch: int
    n_samples: int
    n_fft: int
    hop: int
    center: tuple
    sigma_t: tuple
    sigma_nu: tuple
    rho: tuple
    truncate: float | None = 4.0
    dtype: str = "float32"

    @property
    def f(self) -> int:
        return len(self.center)

    @property
    def scalar_bytes(self) -> int:
        return 8 if self.dtype == "float64" else 4

    @property
    def frames(self) -> int:
        return 1 + self.n_samples // self.hop


def _cast(x, dtype):
    return np.asarray(x, dtype=np.float64).astype(np.float32 if dtype == "float32" else np.float64).astype(np.float64)


def effective_trunc2(truncate, scalar_bytes: int) -> float:
    if truncate is None or math.isinf(truncate):
        return 2.0 * 746.0 if scalar_bytes == 8 else 2.0 * 105.0
    return float(truncate) ** 2


def complex_rows(cfg, n_fft, scalar_bytes):
    return int(min(max(cfg["rows_smem_budget"] // (n_fft * 2 * scalar_bytes), 1), cfg["max_complex_rows"]))


def _busiest(cfg, blocks):
    """launch_config.h busiest_sm_blocks: max(ceil(blocks / kSms), kMinBlocksPerSm)."""
    return max(-(-blocks // cfg["min_blocks"]), cfg["min_blocks_per_sm"])


def frames_per_block(cfg, n_fft, hop, batch, frames):
    """launch_config.h frames_per_block: minimise ceil(blocks / SMs) x (TT*hop + n_fft)."""
    top = max(min(-(-4 * n_fft // hop), cfg["max_frames_per_block"]), 1)
    best, best_cost = 1, None
    for tt in range(1, top + 1):
        cost = _busiest(cfg, batch * -(-frames // tt)) * (tt * hop + n_fft)
        if best_cost is None or cost < best_cost:
            best, best_cost = tt, cost
    return best


def grad_tile(cfg, n_fft, batch, n_samples):
    """launch_config.h grad_tile: minimise ceil(blocks / SMs) x (J + n_fft) over powers of two."""
    top = max(cfg["min_grad_tile"], 4 * n_fft)
    best, best_cost, j = cfg["threads"], None, cfg["threads"]
    while j <= top:
        cost = _busiest(cfg, batch * -(-n_samples // j)) * (j + n_fft)
        if best_cost is None or cost < best_cost:
            best, best_cost = j, cost
        j *= 2
    return best


# --------------------------------------------------------------------------------------------
# Filter geometry (lwvd_math.cuh make_filter / bin_range, float64 like the kernels)
# --------------------------------------------------------------------------------------------
class Geometry:
    def __init__(self, p: Problem):
        s = p.scalar_bytes
        self.trunc2 = effective_trunc2(p.truncate, s)
        center = _cast(p.center, p.dtype)
        sigma_t = _cast(p.sigma_t, p.dtype)
        sigma_nu = _cast(p.sigma_nu, p.dtype)
        rho = _cast(p.rho, p.dtype)
        one_m_r2 = 1.0 - rho * rho
        self.center_s = _cast(center, p.dtype)  # g.center is scalar_t
        self.cond_sd = sigma_nu * np.sqrt(one_m_r2)
        self.slope = rho * sigma_nu / sigma_t
        self.sigma_t = sigma_t
        d_limit = p.n_samples - 1 + (p.frames - 1) * p.hop
        with np.errstate(invalid="ignore"):  # make_filter: a slope * d that may overflow -> every bin
            wild = ~(np.abs(self.slope) * (float(d_limit) + 1.0) <= 1e300)
        self.slope = np.where(wild, 0.0, self.slope)
        self.cond_sd = np.where(wild, np.finfo(np.float64).max, self.cond_sd)
        r = math.sqrt(self.trunc2) * sigma_t + 1.0
        self.d_radius = np.where(r < d_limit, np.floor(np.minimum(r, d_limit)), d_limit).astype(np.int64)
        self.max_radius = int(self.d_radius.max())
        self.n_fft = p.n_fft

    def bin_range(self, f_idx, d):
        """(k_lo, k_hi) arrays; empty rows have k_hi < k_lo."""
        st, cs, sl, c = self.sigma_t[f_idx], self.cond_sd[f_idx], self.slope[f_idx], self.center_s[f_idx]
        d = d.astype(np.float64)
        a = d / st
        rest = self.trunc2 - a * a
        empty = (rest < 0.0) & (rest < -1e-9 * self.trunc2)
        half = cs * np.sqrt(np.where(rest > 0.0, rest, 0.0))
        mu = c + sl * d
        two_m = 2.0 * float(self.n_fft)
        lo = np.floor((mu - half) * two_m) - 1.0
        hi = np.ceil((mu + half) * two_m) + 1.0
        lo = np.where(lo < 0.0, 0.0, lo)
        hi = np.where(hi > float(self.n_fft - 1), float(self.n_fft - 1), hi)
        empty |= ~(lo <= hi)
        k_lo = np.where(empty, 1, lo).astype(np.int64)
        k_hi = np.where(empty, 0, hi).astype(np.int64)
        return k_lo, k_hi


# --------------------------------------------------------------------------------------------
# Counting helpers
# --------------------------------------------------------------------------------------------
def _counts():
    return defaultdict(lambda: np.zeros(4, dtype=np.int64))  # trips, lanes, wavefronts, sectors


def _add(sites, name, trips=0, lanes=0, wf=0, sec=0, times=1):
    sites[name] += np.array([trips, lanes, wf, sec], dtype=np.int64) * times


def group_smem_wavefronts(group, addr, nbytes):
    """Per group (warp access): max over banks of distinct 4-byte words. Returns total over groups."""
    if len(group) == 0:
        return 0
    words = [addr // 4 + w for w in range(max(1, nbytes // 4))]
    g = np.concatenate([group] * len(words))
    wd = np.concatenate(words)
    key = np.unique(g * (1 << 40) + wd)
    g, wd = key >> 40, key & ((1 << 40) - 1)
    gb, cnt = np.unique(g * BANKS + wd % BANKS, return_counts=True)
    per_group = np.zeros(int(g.max()) + 1, dtype=np.int64)
    np.maximum.at(per_group, gb // BANKS, cnt)
    return int(per_group.sum())


def group_gmem_sectors(group, addr, nbytes):
    if len(group) == 0:
        return 0
    first, last = addr // 32, (addr + nbytes - 1) // 32
    keys = [group * (1 << 40) + first]
    if np.any(last != first):
        keys.append(group * (1 << 40) + last)
    return int(len(np.unique(np.concatenate(keys))))


def _strided_trips(count, stride, threads):
    """Warp trips and lanes of `for (i = tid; i < count; i += stride)` over `threads` threads."""
    trips = lanes = 0
    for i0 in range(0, count, stride):
        n = min(threads, count - i0)
        trips += -(-n // WARP)
        lanes += n
    return trips, lanes


def _contig_wavefronts(lanes, words_per_lane):
    """Wavefronts of `lanes` lanes reading consecutive elements of `words_per_lane` words (any start)."""
    return -(-(lanes * words_per_lane) // BANKS)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
def prepare_counts(p: Problem, cfg):
    sites = _counts()
    t = cfg["prep_threads"]
    tr, ln = _strided_trips(p.f, t, t)
    _add(sites, "prep.filter", tr, ln)
    tr, ln = _strided_trips(p.n_fft // 2, t, t)
    _add(sites, "prep.twiddle", tr, ln)
    s, levels = t // 2, 0
    while s > 0:
        _add(sites, "prep.reduce", -(-s // WARP), s)
        s //= 2
        levels += 1
    return dict(kernel="prepare", blocks=1, threads=t, smem=0, block_barriers=1 + levels, warp_exchanges=0,
                sites=sites)


def _fft_pass_counts(p: Problem, cfg, cr, esize_c):
    """Counts of one block_fft_rows call (identical every pass)."""
    sites = _counts()
    n, threads = p.n_fft, cfg["threads"]
    log2n = n.bit_length() - 1
    half_n = n // 2
    total = cr * half_n
    for s in range(1, log2n + 1):
        _add(sites, "fft.stage", threads // WARP, threads)
        half = 1 << (s - 1)
        shift = log2n - s
        i = np.arange(total)
        trip = i // threads
        group = trip * (threads // WARP) + (i % threads) // WARP
        row = i >> (log2n - 1)
        bf = i & (half_n - 1)
        j = bf & (half - 1)
        base = row * n + ((bf >> (s - 1)) << s) + j
        trips = int(group.max()) + 1
        _add(sites, "fft.bfly", trips, total)
        tw_sec = group_gmem_sectors(group, (j << shift) * esize_c, esize_c)
        _add(sites, "fft.tw", trips, total, 0, tw_sec)
        wa = group_smem_wavefronts(group, base * esize_c, esize_c)
        wb = group_smem_wavefronts(group, (base + half) * esize_c, esize_c)
        for name, wf in (("fft.lda", wa), ("fft.ldb", wb), ("fft.sta", wa), ("fft.stb", wb)):
            _add(sites, name, trips, total, wf)
    return sites, log2n


def _bitrev(x, bits):
    r = np.zeros_like(x)
    for b in range(bits):
        r = (r << 1) | ((x >> b) & 1)
    return r


def _bitrev_pass_counts(p: Problem, cfg, cr, esize_c):
    """Counts of one block_bitrev_rows call over cr complex rows (identical every pass)."""
    sites = _counts()
    n, threads = p.n_fft, cfg["threads"]
    log2n = n.bit_length() - 1
    i = np.arange(cr * n)
    group = (i // threads) * (threads // WARP) + (i % threads) // WARP
    _add(sites, "fft.bitrev", int(group.max()) + 1, len(i))
    j = i & (n - 1)
    jr = _bitrev(j, log2n)
    sw = j < jr
    if sw.any():
        g, base = group[sw], (i - j)[sw]
        wa = group_smem_wavefronts(g, (base + j[sw]) * esize_c, esize_c)
        wb = group_smem_wavefronts(g, (base + jr[sw]) * esize_c, esize_c)
        tr, ln = len(np.unique(g)), int(sw.sum())
        for name, wf in (("fft.br_lda", wa), ("fft.br_ldb", wb), ("fft.br_sta", wa), ("fft.br_stb", wb)):
            _add(sites, name, tr, ln, wf)
    return sites


def _lag_store_counts(p: Problem, cfg, cr, esize_c):
    n, threads = p.n_fft, cfg["threads"]
    log2n = n.bit_length() - 1
    i = np.arange(cr * n)
    group = (i // threads) * (threads // WARP) + (i % threads) // WARP
    c, j = i >> log2n, i & (n - 1)
    wf = group_smem_wavefronts(group, (c * n + _bitrev(j, log2n)) * esize_c, esize_c)
    return int(group.max()) + 1, len(i), wf


def _lag_gmem(p: Problem, cfg, cr, esize_c, b, passes_r0):
    """lag.zp / lag.zq warp trips, lanes, sectors for the passes starting at rows passes_r0."""
    n, threads, N = p.n_fft, cfg["threads"], p.n_samples
    log2n = n.bit_length() - 1
    i = np.arange(cr * n)
    c, j = i >> log2n, i & (n - 1)
    m = np.where(j < n // 2, j, j - n)
    keep = j != n // 2
    i, c, m = i[keep], c[keep], m[keep]
    wgroup = (i // threads) * (threads // WARP) + (i % threads) // WARP
    ngroups = int(((cr * n - 1) // threads + 1) * (threads // WARP))
    out = np.zeros(3, dtype=np.int64)  # trips, lanes, sectors (same for zp and zq trips/lanes)
    sec_q = 0
    for k, r0 in enumerate(passes_r0):
        for h in (0, 1):
            s = r0 + 2 * c + h
            pp, qq = s + m, s - m
            ok = (pp >= 0) & (pp < N) & (qq >= 0) & (qq < N)
            if not ok.any():
                continue
            g = wgroup[ok] + (k * 2 + h) * ngroups
            out[0] += len(np.unique(g))
            out[1] += int(ok.sum())
            out[2] += group_gmem_sectors(g, (b * N + pp[ok]) * esize_c, esize_c)
            sec_q += group_gmem_sectors(g, (b * N + qq[ok]) * esize_c, esize_c)
    return out, sec_q


def _bin_tables(geom: Geometry, p: Problem, words_c):
    """Per filter, over d in [-R, R]: bin trips, lanes and contiguous-read wavefronts (prefix sums)."""
    R = geom.max_radius
    d = np.arange(-R, R + 1)
    F = p.f
    trips = np.zeros((F, 2 * R + 2), dtype=np.int64)
    lanes = np.zeros_like(trips)
    wf = np.zeros_like(trips)
    for f in range(F):
        k_lo, k_hi = geom.bin_range(np.full(d.shape, f), d)
        ln = np.maximum(0, k_hi - k_lo + 1)
        ln = np.where(np.abs(d) <= geom.d_radius[f], ln, 0)
        full, rem = ln // WARP, ln % WARP
        tr = full + (rem > 0)
        w = full * _contig_wavefronts(WARP, words_c) + np.where(rem > 0, -(-(rem * words_c) // BANKS), 0)
        trips[f, 1:] = np.cumsum(tr)
        lanes[f, 1:] = np.cumsum(ln)
        wf[f, 1:] = np.cumsum(w)
    return trips, lanes, wf


def smooth_counts(p: Problem, cfg, geom: Geometry, moments: bool):
    s_bytes = p.scalar_bytes
    esize_c, words_c = 2 * s_bytes, 2 * s_bytes // 4
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    cr = complex_rows(cfg, n, s_bytes)
    rp = 2 * cr
    tt = frames_per_block(cfg, n, hop, p.batch, T)
    tiles = -(-T // tt)
    R = geom.max_radius
    kacc = 6 if moments else 1
    sites = _counts()
    barriers = exchanges = 0
    fft_sites, log2n = _fft_pass_counts(p, cfg, cr, esize_c)
    ls_trips, ls_lanes, ls_wf = _lag_store_counts(p, cfg, cr, esize_c)
    btr, bln, bwf = _bin_tables(geom, p, words_c)
    memo = {}
    cap = 2 * (R + n + rp * 2 + tt * hop)
    for b in range(p.batch):
        for tile in range(tiles):
            t0 = tile * tt
            t_last = min(T - 1, t0 + tt - 1)
            row_lo = max(0, t0 * hop - R)
            row_hi = min(N - 1, t_last * hop + R)
            key = (t0 * hop - row_lo, min(t0 * hop, cap), min(N - 1 - t_last * hop, cap), t_last - t0,
                   min(T - 1 - t0, tt), row_hi - row_lo, ((b * N + row_lo) * esize_c) % 32)
            if key in memo:
                res = memo[key]
            else:
                res = _smooth_tile(p, cfg, geom, b, t0, t_last, row_lo, row_hi, rp, tt, cr, esize_c, kacc,
                                   (btr, bln, bwf), (ls_trips, ls_lanes, ls_wf))
                memo[key] = res
            tsites, npasses, texch = res
            for k, v in tsites.items():
                sites[k] += v
            for k, v in fft_sites.items():
                sites[k] += v * npasses
            barriers += npasses * (log2n + 2)
            exchanges += texch
    return dict(kernel="moments" if moments else "smooth", blocks=p.batch * tiles, threads=cfg["threads"],
                smem=cr * n * esize_c, block_barriers=barriers, warp_exchanges=exchanges, sites=sites,
                passes_per_block=None)


def _smooth_tile(p, cfg, geom, b, t0, t_last, row_lo, row_hi, rp, tt, cr, esize_c, kacc, tables, lag_store):
    btr, bln, bwf = tables
    threads = cfg["threads"]
    nwarps = threads // WARP
    R = geom.max_radius
    F, hop = p.f, p.hop
    sites = _counts()
    r0s = []
    r0 = row_lo
    while True:
        r0s.append(r0)
        if r0 + rp > row_hi:
            break
        r0 += rp
    npasses = len(r0s)
    _add(sites, "smooth.pass", nwarps, threads, times=npasses)
    lt, ll, lw = lag_store
    _add(sites, "lag.entry", lt, ll, times=npasses)
    _add(sites, "lag.store", lt, ll, lw, times=npasses)
    zp, sec_q = _lag_gmem(p, cfg, cr, esize_c, b, r0s)
    _add(sites, "lag.zp", zp[0], zp[1], 0, zp[2])
    _add(sites, "lag.zq", zp[0], zp[1], 0, sec_q)
    # pairs (f, tt): every pass, every pair is one warp trip; pairs past the last frame stop there
    pairs = F * tt
    _add(sites, "smooth.pair", pairs, pairs * WARP, times=npasses)
    f_idx = np.repeat(np.arange(F), tt)
    t = t0 + np.tile(np.arange(tt), F)
    valid = t < p.frames
    f_idx, t = f_idx[valid], t[valid]
    c = t * hop
    dr = geom.d_radius[f_idx]
    exch = 0
    for r0 in r0s:
        pass_hi = min(row_hi, r0 + rp - 1)
        n_a = np.maximum(r0, c - dr)
        n_b = np.minimum(pass_hi, c + dr)
        rows = np.maximum(0, n_b - n_a + 1)
        l1 = np.minimum(WARP, rows)
        l2 = np.maximum(0, np.minimum(WARP, rows - WARP))
        _add(sites, "smooth.binrange", int((l1 > 0).sum()), int(l1.sum()))
        _add(sites, "smooth.binrange2", int((l2 > 0).sum()), int(l2.sum()))
        _add(sites, "smooth.row", int(rows.sum()), int(rows.sum()) * WARP)
        has = rows > 0
        lo = (n_a - c + R)[has]
        hi = (n_b - c + R + 1)[has]
        fi = f_idx[has]
        tr = int((btr[fi, hi] - btr[fi, lo]).sum())
        ln = int((bln[fi, hi] - bln[fi, lo]).sum())
        wf = int((bwf[fi, hi] - bwf[fi, lo]).sum())
        _add(sites, "smooth.bin", tr, ln)
        _add(sites, "smooth.ldw", tr, ln, wf)
        _add(sites, "smooth.out", len(f_idx), len(f_idx))
        exch += int(rows.sum()) * 1 + len(f_idx) * 5 * kacc  # one shuffle per row, warp_sum per pair
    return sites, npasses, exch


def param_grad_counts(p: Problem, cfg):
    sites = _counts()
    t = cfg["reduce_threads"]
    tr, ln = _strided_trips(p.batch * p.frames, t, t)
    _add(sites, "pg.term", tr, ln, times=p.f)
    s, levels = t // 2, 0
    while s > 0:
        _add(sites, "pg.reduce", -(-s // WARP), s, times=p.f)
        s //= 2
        levels += 1
    return dict(kernel="param_grad", blocks=p.f, threads=t, smem=4 * t * p.scalar_bytes, block_barriers=p.f * (1 + levels),
                warp_exchanges=0, sites=sites)


def _row_period(p: Problem):
    """Rows r of a pass whose scatter addresses fall on the same banks repeat with this period: the
    complex row (r >> 1) starts (r >> 1) * 2n scalars in, which is a multiple of 32 words for
    2n * scalar_bytes >= 128, and r & 1 picks re or im."""
    words_per_crow = p.n_fft * 2 * p.scalar_bytes // 4
    return 2 * (BANKS // math.gcd(BANKS, words_per_crow))


def _scatter_table(p: Problem, geom: Geometry):
    """Per d in [-R, R] and row class r mod _row_period, summed over filters: the grad_z scatter's bin
    trips, lanes and wavefronts (bit-reversed addresses); per d, the filter chunks' bin_range trips and
    lanes."""
    n = p.n_fft
    log2n = n.bit_length() - 1
    s_bytes = p.scalar_bytes
    R = geom.max_radius
    Q = _row_period(p)
    d = np.arange(-R, R + 1)
    wf_cache = {}

    def wf(k0, cnt, rcls):
        key = (k0, cnt, rcls)
        if key not in wf_cache:
            words = set()
            for k in range(k0, k0 + cnt):
                idx = (rcls >> 1) * n * 2 + 2 * k + (rcls & 1)  # scalar index (natural order)
                words.update(range(idx * s_bytes // 4, (idx + 1) * s_bytes // 4))
            per_bank = [0] * BANKS
            for wd in words:
                per_bank[wd % BANKS] += 1
            wf_cache[key] = max(per_bank)
        return wf_cache[key]

    tr = np.zeros(2 * R + 1, dtype=np.int64)
    ln = np.zeros_like(tr)
    w = np.zeros((2 * R + 1, Q), dtype=np.int64)
    br_trips = np.zeros(2 * R + 1, dtype=np.int64)
    br_lanes = np.zeros(2 * R + 1, dtype=np.int64)
    for f in range(p.f):
        inside = np.abs(d) <= geom.d_radius[f]
        k_lo, k_hi = geom.bin_range(np.full(d.shape, f), d)
        cnt = np.where(inside, np.maximum(0, k_hi - k_lo + 1), 0)
        tr += -(-cnt // WARP)
        ln += cnt
        for di in np.nonzero(cnt)[0]:
            for rc in range(Q):
                kk, left = int(k_lo[di]), int(cnt[di])
                while left > 0:
                    m = min(WARP, left)
                    w[di, rc] += wf(kk, m, rc)
                    kk += m
                    left -= m
        br_lanes += inside
    for ch in range(-(-p.f // WARP)):
        any_in = np.zeros(2 * R + 1, dtype=bool)
        for f in range(ch * WARP, min(p.f, (ch + 1) * WARP)):
            any_in |= np.abs(d) <= geom.d_radius[f]
        br_trips += any_in
    return tr, ln, w, br_trips, br_lanes


def grad_z_counts(p: Problem, cfg, geom: Geometry):
    s_bytes = p.scalar_bytes
    esize_c, words_c = 2 * s_bytes, 2 * s_bytes // 4
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    threads = cfg["threads"]
    nwarps = threads // WARP
    cr = complex_rows(cfg, n, s_bytes)
    rp = 2 * cr
    J = grad_tile(cfg, n, p.batch, N)
    tiles = -(-N // J)
    h = (n - 1) // 2
    R = geom.max_radius
    sites = _counts()
    fft_sites, log2n = _fft_pass_counts(p, cfg, cr, esize_c)
    bitrev_sites = _bitrev_pass_counts(p, cfg, cr, esize_c)
    sc_tr, sc_ln, sc_wf, br_tr, br_ln = _scatter_table(p, geom)
    nchunks = -(-F // WARP)
    barriers = exchanges = 0
    memo = {}
    # Beyond `cap` samples from either end no index of the tile is clipped: tiles equal in the clipped
    # distances, length, frame phase (j0 mod hop) and sector alignment count the same.
    cap = 2 * h + R + hop + rp + 1
    for b in range(p.batch):
        for tile in range(tiles):
            j0 = tile * J
            j1 = min(N - 1, j0 + J - 1)
            key = (min(j0, cap), min(N - 1 - j1, cap), j1 - j0, ((b * N + j0) * esize_c) % 32, j0 % hop)
            if key in memo:
                tsites, passes, texch = memo[key]
            else:
                tsites, passes, texch = _grad_z_tile(p, cfg, geom, b, j0, j1, h, rp, cr, esize_c, words_c,
                                                     (sc_tr, sc_ln, sc_wf, br_tr, br_ln), nchunks)
                memo[key] = (tsites, passes, texch)
            for k, v in tsites.items():
                sites[k] += v
            for k, v in fft_sites.items():
                sites[k] += v * passes
            barriers += passes * (log2n + 4)  # row zero, A rows, bit reversal, FFT stages, end of pass
            for k, v in bitrev_sites.items():
                sites[k] += v * passes
            exchanges += texch
    return dict(kernel="grad_z", blocks=p.batch * tiles, threads=threads, smem=cr * n * esize_c,
                block_barriers=barriers, warp_exchanges=exchanges, sites=sites)


def _owned_groups(j_lo, j_hi, j0, threads):
    """For `for (j = first j >= j_lo owned by tid; j <= j_hi; j += threads)` with owner tid = (j-j0) % threads:
    per j, the (warp, lane-trip) group id and the arrays (j, group)."""
    j = np.arange(j_lo, j_hi + 1)
    if len(j) == 0:
        return j, j
    tid = (j - j0) % threads
    first = j_lo + ((tid - (j_lo - j0)) % threads)
    trip = (j - first) // threads
    group = trip * (threads // WARP) + tid // WARP
    return j, group


def _grad_z_tile(p, cfg, geom, b, j0, j1, h, rp, cr, esize_c, words_c, tables, nchunks):
    sc_tr, sc_ln, sc_wf, br_tr, br_ln = tables
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    threads = cfg["threads"]
    nwarps = threads // WARP
    R = geom.max_radius
    sites = _counts()
    row_lo, row_hi = max(0, j0 - h), min(N - 1, j1 + h)
    passes = (row_hi - row_lo + rp) // rp
    # zero-fill of the owned samples
    j, g = _owned_groups(j0, j1, j0, threads)
    ng = len(np.unique(g))
    _add(sites, "gz.zero", ng, len(j))
    _add(sites, "gz.zero_st", ng, len(j), 0, group_gmem_sectors(g, (b * N + j) * esize_c, esize_c))
    _add(sites, "gz.pass", nwarps, threads, times=passes)
    rz_tr, rz_ln = _strided_trips(cr * n, threads, threads)
    _add(sites, "gz.rowzero", rz_tr, rz_ln, times=passes)
    _add(sites, "gz.rowzero_st", rz_tr, rz_ln, rz_tr * words_c, times=passes)
    _add(sites, "gz.row", rp, rp * WARP, times=passes)
    exch = 0
    for k in range(passes):
        r0 = row_lo + k * rp
        pass_hi = min(row_hi, r0 + rp - 1)
        s = np.arange(r0, pass_hi + 1)
        if len(s):
            t_lo = np.where(s - R > 0, -(-(s - R) // hop), 0)
            t_hi = np.minimum(T - 1, (s + R) // hop)
            nf = np.maximum(0, t_hi - t_lo + 1)
            _add(sites, "gz.frame", int(nf.sum()), int(nf.sum()) * WARP)
            _add(sites, "gz.chunk", int(nf.sum()) * nchunks, int(nf.sum()) * nchunks * WARP)
            _add(sites, "gz.filter", int(nf.sum()) * F, int(nf.sum()) * F * WARP)
            exch += int(nf.sum()) * F * 2  # packed range + weight per filter
            ss = np.repeat(s, nf)
            tt = np.concatenate([np.arange(a, bb + 1) for a, bb in zip(t_lo, t_hi) if bb >= a]) if nf.sum() else ss
            d = ss - tt * hop + R
            rcls = (ss - r0) % sc_wf.shape[1]
            _add(sites, "gz.binrange", int(br_tr[d].sum()), int(br_ln[d].sum()))
            tr, ln, wf = int(sc_tr[d].sum()), int(sc_ln[d].sum()), int(sc_wf[d, rcls].sum())
            _add(sites, "gz.bin", tr, ln)
            _add(sites, "gz.scatter_ld", tr, ln, wf)
            _add(sites, "gz.scatter_st", tr, ln, wf)
        # gather
        jw_lo, jw_hi = max(j0, r0 - h), min(j1, pass_hi + h)
        j, g = _owned_groups(jw_lo, jw_hi, j0, threads)
        if len(j) == 0:
            continue
        ng = len(np.unique(g))
        _add(sites, "gz.gather_j", ng, len(j))
        sec = group_gmem_sectors(g, (b * N + j) * esize_c, esize_c)
        _add(sites, "gz.store_ld", ng, len(j), 0, sec)
        _add(sites, "gz.store_st", ng, len(j), 0, sec)
        s_lo = np.maximum(r0, j - h)
        s_hi = np.minimum(pass_hi, j + h)
        cnt = np.maximum(0, s_hi - s_lo + 1)
        jj = np.repeat(j, cnt)
        gg = np.repeat(g, cnt)
        off = np.arange(len(jj)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ss = np.repeat(s_lo, cnt) + off
        gs = gg * (2 * rp + 1) + off  # (warp, j-trip, s - s_lo)
        _add(sites, "gz.gather_s", len(np.unique(gs)), len(jj))
        zi = 2 * ss - jj
        ok = (zi >= 0) & (zi < N)
        if ok.any():
            gso, m, r = gs[ok], (jj - ss)[ok], (ss - r0)[ok]
            ng2, nl = len(np.unique(gso)), int(ok.sum())
            xbase = (r >> 1) * n
            wxp = group_smem_wavefronts(gso, (xbase + (m & (n - 1))) * esize_c, esize_c)
            wxm = group_smem_wavefronts(gso, (xbase + ((-m) & (n - 1))) * esize_c, esize_c)
            _add(sites, "gz.xp", ng2, nl, wxp)
            _add(sites, "gz.xm", ng2, nl, wxm)
            _add(sites, "gz.z", ng2, nl, 0, group_gmem_sectors(gso, (b * N + zi[ok]) * esize_c, esize_c))
    return sites, passes, exch


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def plan_counts(p: Problem, cfg) -> dict:
    """{'forward': [launch, ...], 'backward': [...]} in plan order (lwvd_plan.cuh); each launch a dict
    with kernel, blocks, threads, smem, block_barriers, warp_exchanges and sites {name: [trips, lanes,
    wavefronts, sectors]}."""
    geom = Geometry(p)
    fwd = [prepare_counts(p, cfg)]
    bwd = [prepare_counts(p, cfg)]
    if p.batch > 0:
        fwd.append(smooth_counts(p, cfg, geom, moments=False))
        bwd.append(smooth_counts(p, cfg, geom, moments=True))
    pg = param_grad_counts(p, cfg)
    _add(pg["sites"], "grad.role_pg", p.f * (cfg["reduce_threads"] // WARP), p.f * cfg["reduce_threads"])
    bwd.append(pg)
    if p.batch > 0:
        gz = grad_z_counts(p, cfg, geom)
        _add(gz["sites"], "grad.role_gz", gz["blocks"] * (cfg["threads"] // WARP), gz["blocks"] * cfg["threads"])
        bwd.append(gz)
    for part in (fwd, bwd):
        for launch in part:
            launch["sites"] = {k: [int(x) for x in v] for k, v in launch["sites"].items() if v[0] > 0}
    return dict(forward=fwd, backward=bwd)
