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


def complex_rows(cfg, n_fft, scalar_bytes, budget="rows_smem_budget"):
    """launch_config.h complex_rows_per_pass (grad_z); budget="smooth_rows_smem_budget":
    smooth_complex_rows_per_pass (the smoothing kernels)."""
    return int(min(max(cfg[budget] // (n_fft * 2 * scalar_bytes), 1), cfg["max_complex_rows"]))


def smooth_complex_rows(cfg, n_fft, scalar_bytes):
    return complex_rows(cfg, n_fft, scalar_bytes, "smooth_rows_smem_budget")


def windows_per_row(n_fft, window=16):
    return -(-n_fft // window)


def grad_complex_rows(cfg, n_fft, scalar_bytes):
    """launch_config.h grad_complex_rows_per_pass: the CR in [1, complex_rows] whose 2 CR n_fft/16
    window items fill the grad_z block's threads best (items per thread trip), ties to the larger."""
    top = complex_rows(cfg, n_fft, scalar_bytes)
    nwin = windows_per_row(n_fft, cfg.get("window", 16))
    gt = cfg.get("grad_threads", cfg["threads"])
    best, bi, bt = top, 0, 1
    for c in range(top, 0, -1):
        items = 2 * c * nwin
        trips = -(-items // gt)
        if items * bt > bi * trips:
            best, bi, bt = c, items, trips
    return best


def window_list_cap(cfg, n_fft):
    """launch_config.h window_list_cap."""
    nwin = windows_per_row(n_fft, cfg.get("window", 16))
    return int(min(max(cfg.get("win_list_bytes", 8192) // (4 * nwin) - 1, 1), cfg.get("win_list_max", 32)))


def _busiest(cfg, blocks, threads=None):
    """launch_config.h busiest_sm_blocks: max(ceil(blocks / kSms), kMinBlocksPerSm blocks of kThreads
    counted in blocks of `threads`)."""
    threads = threads or cfg["threads"]
    min_blocks = -(-(cfg["min_blocks_per_sm"] * cfg["threads"]) // threads)
    return max(-(-blocks // cfg["min_blocks"]), min_blocks)


def frames_per_block(cfg, n_fft, hop, batch, frames):
    """launch_config.h frames_per_block: minimise busiest_sm_blocks(blocks of kSmoothThreads) x (TT*hop + n_fft)."""
    top = max(min(-(-4 * n_fft // hop), cfg["max_frames_per_block"]), 1)
    best, best_cost = 1, None
    for tt in range(1, top + 1):
        cost = _busiest(cfg, batch * -(-frames // tt), cfg["smooth_threads"]) * (tt * hop + n_fft)
        if best_cost is None or cost < best_cost:
            best, best_cost = tt, cost
    return best


def grad_tile(cfg, n_fft, batch, n_samples):
    """launch_config.h grad_tile: minimise ceil(blocks / SMs) x (J + n_fft) over powers of two."""
    top = max(cfg["min_grad_tile"], 4 * n_fft)
    gt = cfg.get("grad_threads", cfg["threads"])
    best, best_cost, j = gt, None, gt
    while j <= top:
        cost = _busiest(cfg, batch * -(-n_samples // j), gt) * (j + n_fft)
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
# Stencil tables (launch_config.h kStencil*, lwvd_fwd.cuh stencil_table_block)
# --------------------------------------------------------------------------------------------
STENCIL_K_BITS = 13
STENCIL_MAX_ROWS = 1 << 18
STENCIL_THREADS = 256
STENCIL_MAX_BLOCKS = 4096


def stencil_caps(cfg, p: Problem):
    """(terms_cap, rows_cap) of launch_config.h stencil_terms_cap / stencil_rows_cap."""
    per_term = 2 * p.scalar_bytes + 4
    cap = cfg["stencil_budget"] // (p.f * per_term)
    cap &= ~7
    cap = min(cap, 1 << 30)
    d_limit = p.n_samples - 1 + (p.frames - 1) * p.hop
    rows = min(cap // 4, 2 * d_limit + 1, STENCIL_MAX_ROWS - 1)
    return int(cap), int(rows)


class Stencil:
    """Per filter: the terms q <= trunc2 of every lag d in [-R_f, R_f] within bin_range, with q in the
    kernels' scalar type (quad_form: each operation rounded once), their offsets in the table and
    whether the filter's table fits (else the kernels evaluate it on the fly)."""

    def __init__(self, p: Problem, cfg, geom: Geometry):
        self.terms_cap, self.rows_cap = stencil_caps(cfg, p)
        ft = np.float32 if p.dtype == "float32" else np.float64
        sigma_t = _cast(p.sigma_t, p.dtype)
        sigma_nu = _cast(p.sigma_nu, p.dtype)
        rho = _cast(p.rho, p.dtype)
        inv_st = (1.0 / sigma_t).astype(ft)
        inv_sn = (1.0 / sigma_nu).astype(ft)
        rho_s = rho.astype(ft)
        inv_1mr2 = (1.0 / ((1.0 - rho) * (1.0 + rho))).astype(ft)
        center = geom.center_s.astype(ft)
        inv_two_m = ft(1.0 / (2.0 * p.n_fft))
        trunc2 = ft(geom.trunc2)
        self.fits, self.lens, self.k0, self.e_lo, self.cand, self.total = [], [], [], [], [], []
        for f in range(p.f):
            R = int(geom.d_radius[f])
            d = np.arange(-R, R + 1)
            k_lo, k_hi = geom.bin_range(np.full(d.shape, f), d)
            cand = np.maximum(0, k_hi - k_lo + 1)
            row = np.repeat(np.arange(len(d)), cand)
            k = np.repeat(k_lo, cand) + (np.arange(len(row)) - np.repeat(np.cumsum(cand) - cand, cand))
            with np.errstate(over="ignore", invalid="ignore"):
                v = k.astype(ft) * inv_two_m - center[f]
                a = d[row].astype(ft) * inv_st[f]
                b = v * inv_sn[f]
                c = b - rho_s[f] * a
                q = a * a + (c * c) * inv_1mr2[f]
            keep = q <= trunc2
            lens = np.bincount(row[keep], minlength=len(d)).astype(np.int64)
            first = np.full(len(d), 0, dtype=np.int64)
            if keep.any():
                kk, rr = k[keep], row[keep]
                idx = np.cumsum(lens) - lens
                has = lens > 0
                first[has] = kk[idx[has]]
                # the kernels rely on each lag's terms being consecutive bins (q monotone on each side)
                assert np.all(kk - first[rr] == np.arange(len(kk)) - idx[rr]), "stencil row not contiguous"
            total = int(lens.sum())
            self.fits.append(2 * R + 1 <= self.rows_cap and total <= self.terms_cap)
            self.lens.append(lens)
            self.k0.append(first)
            self.e_lo.append(np.cumsum(lens) - lens)
            self.cand.append(cand)
            self.total.append(total)
        self.fits = np.array(self.fits, dtype=bool)


class Windows:
    """grad_z's window tables (launch_config.h kWindow*, lwvd_fwd.cuh window_table_block): per filter
    with a stencil table, per lag the windows w_lo .. w_lo + nw - 1 of its run of terms, their offsets
    (the lags' windows in order), whether they fit win_cap, and the window hull."""

    def __init__(self, p: Problem, cfg, st: Stencil):
        self.window = W = cfg.get("window", 16)
        self.win_cap = int(cfg.get("window_budget", 16 << 20) // (p.f * W * p.scalar_bytes))
        self.nw, self.wlo, self.start, self.fits, self.hull, self.chunks = [], [], [], [], [], []
        for f in range(p.f):
            lens, k0 = st.lens[f], st.k0[f]
            nw = np.where(lens > 0, (k0 + lens - 1) // W - k0 // W + 1, 0).astype(np.int64)
            wlo = np.where(lens > 0, k0 // W, 0).astype(np.int64)
            self.nw.append(nw)
            self.wlo.append(wlo)
            self.start.append(np.cumsum(nw) - nw)
            ok = bool(st.fits[f])
            chunks = []  # (chunk, written) of window_table_block's loop
            if ok:
                wrun = 0
                for base in range(0, len(nw), STENCIL_THREADS):
                    total = int(nw[base:base + STENCIL_THREADS].sum())
                    chunks.append((base, wrun + total <= self.win_cap))
                    wrun += total
                    if wrun > self.win_cap:
                        break
                ok = wrun <= self.win_cap
            self.chunks.append(chunks)
            self.fits.append(ok)
            if ok and (lens > 0).any():
                self.hull.append((int(wlo[lens > 0].min()), int((wlo + nw - 1)[lens > 0].max())))
            elif ok:
                self.hull.append((0x7FFFFFFF, -1))
            else:
                self.hull.append((-1, -1))
        self.fits = np.array(self.fits, dtype=bool)


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
def _stencil_block_counts(p: Problem, geom: Geometry, st: Stencil, sites, windows: bool = True):
    """The table role of the prepare launch (lwvd_fwd.cuh stencil_table_block): blocks 1 .. min(F, 4096)
    take filters b - 1, + blocks, ...; returns (blocks, block barriers, warp exchanges)."""
    nb = min(p.f, STENCIL_MAX_BLOCKS)
    t = STENCIL_THREADS
    nw = t // WARP
    bars = exch = 0
    for f in range(p.f):
        _add(sites, "tab.filter", nw, t)
        R = int(geom.d_radius[f])
        nrows = 2 * R + 1
        if nrows > st.rows_cap:
            continue
        cand, lens = st.cand[f], st.lens[f]
        running = 0
        for base in range(0, nrows, t):
            _add(sites, "tab.chunk", nw, t)
            c = np.zeros(t, dtype=np.int64)
            seg = cand[base:base + t]
            c[:len(seg)] = seg
            per_warp = c.reshape(nw, WARP)
            tr, ln = int(per_warp.max(axis=1).sum()), int(c.sum())
            _add(sites, "tab.count", tr, ln)
            exch += 5 * nw
            bars += 2
            total = int(lens[base:base + t].sum())
            if running + total <= st.terms_cap:
                _add(sites, "tab.write", tr, ln)
            running += total
            if running > st.terms_cap:
                break
        _add(sites, "tab.end", 1, 1)
        if not windows or running > st.terms_cap:
            continue
        # window_table_block: a barrier, per chunk a block scan (+ the window writes), the hull reduction
        win = st.windows
        bars += 1
        for base, written in win.chunks[f]:
            chunk = base // t
            _add(sites, "win.chunk", nw, t)
            exch += 5 * nw
            bars += 2
            if written:
                c = np.zeros(t, dtype=np.int64)
                seg = win.nw[f][base:base + t]
                c[:len(seg)] = seg
                _add(sites, "win.write", int(c.reshape(nw, WARP).max(axis=1).sum()), int(c.sum()))
        exch += 10 * nw
        bars += 1
        _add(sites, "win.end", 1, 1)
    return nb, bars, exch


def prepare_counts(p: Problem, cfg, geom: Geometry = None, st: Stencil = None, windows: bool = True):
    """The prepare launch; windows=False: a forward's (lwvd_plan.cuh: no window tables)."""
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
    geom = geom or Geometry(p)
    if st is None:
        st = Stencil(p, cfg, geom)
        st.windows = Windows(p, cfg, st)
    nb, bars, exch = _stencil_block_counts(p, geom, st, sites, windows)
    return dict(kernel="prepare", blocks=1 + nb, threads=t, smem=0, block_barriers=1 + levels + bars,
                warp_exchanges=exch, sites=sites)


def _fft_pass_counts(p: Problem, cfg, cr, esize_c, threads=None):
    """Counts of one block_fft_rows call (identical every pass) by blocks of `threads` (kThreads):
    a radix-2 stage first when log2(n) is odd, then radix-4 steps of two stages. Returns the sites
    and the call's block barriers (one per step)."""
    sites = _counts()
    n, threads = p.n_fft, threads or cfg["threads"]
    log2n = n.bit_length() - 1
    half_n = n // 2
    barriers = 0
    s = 1
    if log2n & 1:
        _add(sites, "fft.stage", threads // WARP, threads)
        total = cr * half_n
        i = np.arange(total)
        group = (i // threads) * (threads // WARP) + (i % threads) // WARP
        trips = int(group.max()) + 1
        _add(sites, "fft.bfly", trips, total)
        base = 2 * i
        wa = group_smem_wavefronts(group, base * esize_c, esize_c)
        wb = group_smem_wavefronts(group, (base + 1) * esize_c, esize_c)
        for name, wf in (("fft.lda", wa), ("fft.ldb", wb), ("fft.sta", wa), ("fft.stb", wb)):
            _add(sites, name, trips, total, wf)
        barriers += 1
        s = 2
    quarter_n = half_n // 2
    total4 = cr * quarter_n
    i = np.arange(total4)
    group = (i // threads) * (threads // WARP) + (i % threads) // WARP
    while s < log2n:
        _add(sites, "fft.stage4", threads // WARP, threads)
        lh = s - 1
        h = 1 << lh
        shift2 = log2n - s - 1
        row = i >> (log2n - 2)
        q = i & (quarter_n - 1)
        j = q & (h - 1)
        base = (row << log2n) + ((q >> lh) << (lh + 2)) + j
        trips = int(group.max()) + 1
        _add(sites, "fft.bfly4", trips, total4)
        for name, idx in (("fft.tw1", j << (shift2 + 1)), ("fft.tw2", j << shift2), ("fft.tw3", (j + h) << shift2)):
            _add(sites, name, trips, total4, 0, group_gmem_sectors(group, idx * esize_c, esize_c))
        for k in range(4):
            wf = group_smem_wavefronts(group, (base + k * h) * esize_c, esize_c)
            _add(sites, f"fft.ld{k}", trips, total4, wf)
            _add(sites, f"fft.st{k}", trips, total4, wf)
        barriers += 1
        s += 2
    return sites, barriers


def _bitrev(x, bits):
    r = np.zeros_like(x)
    for b in range(bits):
        r = (r << 1) | ((x >> b) & 1)
    return r


def _bitrev_pass_counts(p: Problem, cfg, cr, esize_c, threads=None):
    """Counts of one block_bitrev_rows call over cr complex rows (identical every pass)."""
    sites = _counts()
    n, threads = p.n_fft, threads or cfg["threads"]
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


def _lag_thread_map(total, threads):
    """build_lag_rows' index -> thread map: thread tid takes the entries lag_first(tid) + k * threads,
    lag_first swapping tid bits {2, 3, 4} with {5, 6, 7} when total is a multiple of threads (>= 256),
    else the identity. Returns lag_first as an array over tid (an involution)."""
    tid = np.arange(threads)
    if threads < 256 or total % threads:
        return tid
    lo, hi = (tid >> 2) & 7, (tid >> 5) & 7
    return (tid & ~np.int64(0xFC)) | (hi << 2) | (lo << 5)


def _lag_groups(i, total, threads):
    """Warp-instruction ids (trip * warps + warp) of the entries i of build_lag_rows."""
    first = _lag_thread_map(total, threads)
    tid = first[i % threads]  # the thread that takes entry i (lag_first is an involution)
    return (i // threads) * (threads // WARP) + tid // WARP


def _lag_store_counts(p: Problem, cfg, cr, esize_c):
    n, threads = p.n_fft, cfg["smooth_threads"]
    log2n = n.bit_length() - 1
    i = np.arange(cr * n)
    group = _lag_groups(i, cr * n, threads)
    c, j = i >> log2n, i & (n - 1)
    wf = group_smem_wavefronts(group, (c * n + _bitrev(j, log2n)) * esize_c, esize_c)
    return int(group.max()) + 1, len(i), wf


def _lag_gmem(p: Problem, cfg, cr, esize_c, b, passes_r0):
    """lag.zp / lag.zq warp trips, lanes, sectors for the passes starting at rows passes_r0."""
    n, threads, N = p.n_fft, cfg["smooth_threads"], p.n_samples
    log2n = n.bit_length() - 1
    i = np.arange(cr * n)
    c, j = i >> log2n, i & (n - 1)
    m = np.where(j < n // 2, j, j - n)
    keep = j != n // 2
    i, c, m = i[keep], c[keep], m[keep]
    wgroup = _lag_groups(i, cr * n, threads)
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


# smooth and moments count the same sites (only the warp_sum shuffles differ): tiles counted once
_SMOOTH_MEMO: dict = {}


def smooth_counts(p: Problem, cfg, geom: Geometry, moments: bool, keep: bool = False):
    """One smooth launch: the forward (moments=False), the backward's G-weighted moments
    (moments=True), or the training forward that keeps every pair's moments and writes K (keep=True:
    lwvd_smooth_kernel<.., true, true>; six warp sums and lane 0's K + moments per pair with rows)."""
    assert moments or not keep
    s_bytes = p.scalar_bytes
    esize_c, words_c = 2 * s_bytes, 2 * s_bytes // 4
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    cr = smooth_complex_rows(cfg, n, s_bytes)
    rp = 2 * cr
    tt = frames_per_block(cfg, n, hop, p.batch, T)
    tiles = -(-T // tt)
    R = geom.max_radius
    kacc = 6 if moments else 1
    sites = _counts()
    barriers = exchanges = 0
    fft_sites, fft_bars = _fft_pass_counts(p, cfg, cr, esize_c, cfg["smooth_threads"])
    ls_trips, ls_lanes, ls_wf = _lag_store_counts(p, cfg, cr, esize_c)
    memo = _SMOOTH_MEMO.setdefault((p, tuple(sorted(cfg.items()))), {})
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
                                   (ls_trips, ls_lanes, ls_wf))
                memo[key] = res
            tsites, npasses, texch, twork, fwork = res
            if moments and not keep:  # per lane G-weighted sums, warp-summed once per (filter, pass) with rows
                texch += fwork * 5 * kacc
                _add(sites, "smooth.gsum", fwork, fwork * WARP)
            else:  # warp_sum of K (keep: of the six moments) per (pair, pass) with rows
                texch += twork * 5 * kacc
            if moments and not keep:  # lane 0 of a filter's warp: the block's G-weighted moments, every pass
                _add(sites, "smooth.gout", p.f * npasses, p.f * npasses)
            else:  # lane 0 of a pair's warp: K (keep: and the pair's moments), every pass with rows
                _add(sites, "smooth.out", twork, twork)
                if keep:
                    _add(sites, "smooth.kout", twork, twork)
            for k, v in tsites.items():
                if k != "smooth.tc" or moments:
                    sites[k] += v
            for k, v in fft_sites.items():
                sites[k] += v * npasses
            barriers += npasses * (fft_bars + 2)
            exchanges += texch
    kernel = "fwd_moments" if keep else ("moments" if moments else "smooth")
    return dict(kernel=kernel, blocks=p.batch * tiles, threads=cfg["smooth_threads"],
                smem=cr * n * esize_c, block_barriers=barriers, warp_exchanges=exchanges, sites=sites,
                passes_per_block=None)


def _pair_terms(p: Problem, geom: Geometry, f_idx, c, n_a, n_b, r0, esize_c, words_c):
    """smooth_pair_rows of lwvd_fwd.cuh for the pairs (f_idx, c) with rows [n_a, n_b] (all non-empty)
    of the pass starting at row r0: lanes over (row, bin) in groups of up to 32 rows, 32 consecutive
    terms per warp trip. Returns (groups, binrange lanes of group 0 / group 1, term trips, active
    term lanes, wavefronts of the W loads)."""
    n = p.n_fft
    R = geom.max_radius
    nr = n_b - n_a + 1
    groups = -(-nr // WARP)
    pr = np.repeat(np.arange(len(nr)), nr)  # (pair, row) entries
    first = np.repeat(np.cumsum(nr) - nr, nr)
    off = np.arange(len(pr)) - first  # row offset within the pair
    s = np.repeat(n_a, nr) + off
    d = s - np.repeat(c, nr)
    k_lo, k_hi = geom.bin_range(f_idx[pr], d)
    ln = np.maximum(0, k_hi - k_lo + 1)
    gid = np.repeat(np.cumsum(groups) - groups, nr) + off // WARP  # global group id per row
    ngroups = int(groups.sum())
    total = np.bincount(gid, weights=ln, minlength=ngroups).astype(np.int64)
    trips = int((-(-total // WARP)).sum())
    lanes = int(total.sum())
    # terms: row entry per term, e within the group, k
    tr_row = np.repeat(np.arange(len(pr)), ln)
    if len(tr_row) == 0:
        return ngroups, trips, lanes, 0
    row_first_term = np.cumsum(ln) - ln
    within_row = np.arange(len(tr_row)) - row_first_term[tr_row]
    # exclusive count of terms before each row inside its group
    cs = np.cumsum(ln) - ln  # over all rows; groups are contiguous runs of rows
    gstart_row = np.searchsorted(gid, np.arange(ngroups))  # first row entry of each group
    excl = cs - cs[gstart_row[gid]]
    e = excl[tr_row] + within_row
    tgroup = np.cumsum(-(-total // WARP)) - (-(-total // WARP))  # first trip id of each group
    trip_id = tgroup[gid[tr_row]] + e // WARP
    k = k_lo[tr_row] + within_row
    r = (s[tr_row] - r0)
    addr = ((r >> 1) * n + k) * esize_c
    wf = group_smem_wavefronts(trip_id, addr, esize_c)
    return ngroups, trips, lanes, wf


def _smooth_tile(p, cfg, geom, b, t0, t_last, row_lo, row_hi, rp, tt, cr, esize_c, kacc, lag_store):
    threads = cfg["smooth_threads"]
    nwarps = threads // WARP
    F, hop = p.f, p.hop
    words_c = esize_c // 4
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
    # filters (one warp trip each per pass), then the frames of the tile whose reach meets the pass
    # rows (a per-filter range: c + R_f >= r0 and c - R_f <= pass_hi); a pair of that range with no
    # row (only when the pass has none) stops right after its trip
    ntt = min(tt, p.frames - t0)
    _add(sites, "smooth.filter", F, F * WARP, times=npasses)
    f_idx = np.repeat(np.arange(F), ntt)
    t = t0 + np.tile(np.arange(ntt), F)
    c = t * hop
    dr = geom.d_radius[f_idx]
    exch_rows = 0  # shuffles of the groups and term trips
    work = 0       # pairs with rows in a pass (warp_sum + output each)
    fwork = 0      # (filter, pass) with a pair with rows (moments: one warp_sum of the G-weighted sums)
    for r0 in r0s:
        pass_hi = min(row_hi, r0 + rp - 1)
        in_range = int(((c + dr >= r0) & (c - dr <= pass_hi)).sum())
        _add(sites, "smooth.pair", in_range, in_range * WARP)
        n_a = np.maximum(r0, c - dr)
        n_b = np.minimum(pass_hi, c + dr)
        has = n_b >= n_a
        nw = int(has.sum())
        if nw == 0:
            continue
        work += nw
        fwork += len(np.unique(f_idx[has]))
        _add(sites, "smooth.pairsum", nw, nw * WARP)
        tab = has & geom.stencil.fits[f_idx]
        nt = int(tab.sum())
        if nt:
            _add(sites, "smooth.tpair", nt, nt * WARP)
            # smooth.tc (moments only) is always counted here: the tiles are memoised for both kernels
            for name, v in _pair_table_terms(p, geom, f_idx[tab], c[tab], n_a[tab], n_b[tab], r0, esize_c,
                                             True).items():
                _add(sites, name, *v)
        has = has & ~geom.stencil.fits[f_idx]
        nw = int(has.sum())
        if nw == 0:
            continue
        rows = (n_b - n_a + 1)[has]
        l1 = np.minimum(WARP, rows)
        l2 = np.maximum(0, np.minimum(WARP, rows - WARP))
        _add(sites, "smooth.pairwork", nw, nw * WARP)
        _add(sites, "smooth.binrange", int((l1 > 0).sum()), int(l1.sum()))
        _add(sites, "smooth.binrange2", int((l2 > 0).sum()), int(l2.sum()))
        ngroups, trips, lanes, wf = _pair_terms(p, geom, f_idx[has], c[has], n_a[has], n_b[has], r0, esize_c,
                                                words_c)
        _add(sites, "smooth.group", ngroups, ngroups * WARP)
        _add(sites, "smooth.term", trips, trips * WARP)
        _add(sites, "smooth.ldw", trips, lanes, wf)
        exch_rows += ngroups * 6 + trips * 6  # scan (5) + total; search (5) + bin offset
    return sites, npasses, exch_rows, work, fwork


def _table_sectors(group, entry, nbytes):
    """Sectors of warp accesses `group` to entries `entry` of a table whose filter parts start on
    32-byte sectors (terms_cap is a multiple of 8; workspaces 256-byte aligned)."""
    return group_gmem_sectors(group, entry * nbytes, nbytes)


def _pair_table_terms(p: Problem, geom: Geometry, f_idx, c, n_a, n_b, r0, esize_c, moments):
    """smooth_pair_table of lwvd_fwd.cuh for the pairs (f_idx, c) with rows [n_a, n_b] of the pass at
    r0 (all with a table): entries [e_lo, e_hi) in trips of 32. Returns {site: (trips, lanes, wf, sec)}."""
    st = geom.stencil
    n = p.n_fft
    sb = p.scalar_bytes
    cap = st.terms_cap
    out = {}
    R = geom.d_radius[f_idx]
    # per pair: the lags and their terms
    nr = n_b - n_a + 1
    pr = np.repeat(np.arange(len(nr)), nr)
    off = np.arange(len(pr)) - np.repeat(np.cumsum(nr) - nr, nr)
    d = np.repeat(n_a - c, nr) + off
    fr = f_idx[pr]
    dr = d + R[pr]
    lens = np.empty(len(pr), dtype=np.int64)
    k0 = np.empty(len(pr), dtype=np.int64)
    el = np.empty(len(pr), dtype=np.int64)
    for f in np.unique(fr):
        m = fr == f
        lens[m] = st.lens[f][dr[m]]
        k0[m] = st.k0[f][dr[m]]
        el[m] = st.e_lo[f][dr[m]]
    tot = np.bincount(pr, weights=lens, minlength=len(nr)).astype(np.int64)
    trips_pp = -(-tot // WARP)
    lanes = int(tot.sum())
    full = tot // WARP  # chunks of 32 terms: trips of two (no bounds test), a single one when odd,
    dbl = full // 2     # then one partial chunk with the rest (with the test)
    out["smooth.tterm"] = (int(dbl.sum()), int(dbl.sum()) * WARP, 0, 0)
    odd = int((full % 2).sum())
    out["smooth.tterm1"] = (odd, odd * WARP, 0, 0)
    rest = tot % WARP
    out["smooth.ttail"] = (int((rest > 0).sum()), int(rest.sum()), 0, 0)
    if lanes == 0:
        for name in ("smooth.tidx", "smooth.te", "smooth.tldw", "smooth.ttail") + (("smooth.tc",) if moments else ()):
            out[name] = (0, 0, 0, 0)
        return out
    # terms: (lag entry, bin)
    tl = np.repeat(np.arange(len(pr)), lens)
    within = np.arange(len(tl)) - np.repeat(np.cumsum(lens) - lens, lens)
    k = k0[tl] + within
    e = el[tl] + within                       # entry within the filter's table
    pair = pr[tl]
    first_lag = np.cumsum(nr) - nr
    e_first = el[first_lag]
    rel = e - e_first[pair]
    trip_id = (np.cumsum(trips_pp) - trips_pp)[pair] + rel // WARP
    ntrips_touched = len(np.unique(trip_id))
    gidx = fr[tl] * cap + e
    sec4 = _table_sectors(trip_id, gidx, 4)
    secs = sec4 if sb == 4 else _table_sectors(trip_id, gidx, sb)
    out["smooth.tidx"] = (ntrips_touched, lanes, 0, sec4)
    out["smooth.te"] = (ntrips_touched, lanes, 0, secs)
    if moments:
        out["smooth.tc"] = (ntrips_touched, lanes, 0, secs)
    row = c[pair] + d[tl] - r0  # the sample row within the pass
    addr = ((row >> 1) * n + k) * esize_c
    out["smooth.tldw"] = (ntrips_touched, lanes, group_smem_wavefronts(trip_id, addr, esize_c), 0)
    return out


def smooth_parts(p: Problem, cfg) -> int:
    """Blocks of the moments launch (lwvd_plan.cuh smooth_blocks): the parts param_grad sums over."""
    if p.batch == 0:
        return 0
    return p.batch * -(-p.frames // frames_per_block(cfg, p.n_fft, p.hop, p.batch, p.frames))


def param_grad_counts(p: Problem, cfg, frame: bool = False):
    """The parameter-gradient role; frame=True: from the forward's per-frame moments (B * T pairs per
    filter, param_grad_block<.., true>) instead of the moments launch's per-block sums."""
    sites = _counts()
    t = cfg["reduce_threads"]
    if frame:
        tr, ln = _strided_trips(p.batch * p.frames, t, t)
        _add(sites, "pg.fterm", tr, ln, times=p.f)
    else:
        tr, ln = _strided_trips(smooth_parts(p, cfg), t, t)
        _add(sites, "pg.term", tr, ln, times=p.f)
    _add(sites, "pg.formula", p.f, p.f)
    s, levels = t // 2, 0
    while s > 0:
        _add(sites, "pg.reduce", -(-s // WARP), s, times=p.f)
        s //= 2
        levels += 1
    return dict(kernel="param_grad", blocks=p.f, threads=t, smem=6 * t * p.scalar_bytes, block_barriers=p.f * (1 + levels),
                warp_exchanges=0, sites=sites)


HALF = WARP // 2


def _scatter_table(p: Problem, geom: Geometry):
    """The grad_z scatter, two real rows (d, d + 1 at one frame) per warp, 16 lanes per row, for each
    d = dA in [-R - 1, R] of the even row, summed over filters; index 0 of the last axis: both rows
    built, 1: the odd row absent (the pass ends at the even row). Returns {site: (nd, 2, 4) array of
    trips, lanes, wavefronts, sectors} for the scatter of the filters without a stencil table (gz.bin,
    gz.scatter_*: the bin_range bins), of those with one (gz.tbin, gz.te, gz.tscatter_*: the table's
    terms of the lag), and the per-16-filter-chunk lanes of bin_range (gz.binrange) / table lookup
    (gz.trange, gz.tk).
    Wavefronts: a half's 16 consecutive bins k hit banks (2k + h) * words mod 32 (h = re/im part, the
    complex row's base is common to the warp), so a trip costs max over the halves of ceil(bins / (16 /
    words per scalar))."""
    R = geom.max_radius
    st = geom.stencil
    sb = p.scalar_bytes
    wps = sb // 4
    q = HALF // wps
    dA = np.arange(-R - 1, R + 1)
    nd = len(dA)
    names = ("gz.bin", "gz.scatter_ld", "gz.scatter_st", "gz.binrange", "gz.ffilter", "gz.tbin", "gz.tbin2", "gz.te",
             "gz.tscatter_ld", "gz.tscatter_st", "gz.trange", "gz.tk")
    out = {n: np.zeros((nd, 2, 4), dtype=np.int64) for n in names}
    jmax = -(-p.n_fft // HALF)
    j = np.arange(jmax)
    per_f = []
    for f in range(p.f):
        la = []
        fits = bool(st.fits[f])
        for dd in (dA, dA + 1):
            inside = np.abs(dd) <= geom.d_radius[f]
            if fits:
                dr = np.clip(dd + geom.d_radius[f], 0, 2 * geom.d_radius[f])
                ln_ = np.where(inside, st.lens[f][dr], 0)
                el = np.where(inside, st.e_lo[f][dr], 0)
            else:
                k_lo, k_hi = geom.bin_range(np.full(dd.shape, f), dd)
                ln_ = np.where(inside, np.maximum(0, k_hi - k_lo + 1), 0)
                el = np.zeros_like(ln_)
            la.append((ln_, inside, el))
        per_f.append(la)
        (lnA, inA, eA), (lnB, inB, eB) = la
        tA, tB = -(-lnA // HALF), -(-lnB // HALF)
        cA = np.clip(lnA[:, None] - HALF * j[None, :], 0, HALF)  # bins of each trip
        cB = np.clip(lnB[:, None] - HALF * j[None, :], 0, HALF)
        wA, wB = -(-cA // q), -(-cB // q)
        pre = "gz.t" if fits else "gz."
        for site in ("bin", "scatter_ld", "scatter_st"):
            o = out[pre + site]
            o[:, 0, 0] += np.maximum(tA, tB)
            o[:, 1, 0] += tA
            o[:, 0, 1] += lnA + lnB
            o[:, 1, 1] += lnA
            if site != "bin":
                o[:, 0, 2] += np.maximum(wA, wB).sum(axis=1)
                o[:, 1, 2] += wA.sum(axis=1)
        if fits:  # gz.tbin: the first bin trip (written out), gz.tbin2: the others
            o1, o2 = out["gz.tbin"], out["gz.tbin2"]
            oA, oB = (lnA > 0).astype(np.int64), (lnB > 0).astype(np.int64)
            o1[:, 0, 0] -= np.maximum(tA, tB) - (oA | oB)
            o1[:, 1, 0] -= tA - oA
            o1[:, 0, 1] -= lnA + lnB - np.minimum(lnA, HALF) - np.minimum(lnB, HALF)
            o1[:, 1, 1] -= lnA - np.minimum(lnA, HALF)
            o2[:, 0, 0] += np.maximum(tA, tB) - (oA | oB)
            o2[:, 1, 0] += tA - oA
            o2[:, 0, 1] += lnA + lnB - np.minimum(lnA, HALF) - np.minimum(lnB, HALF)
            o2[:, 1, 1] += lnA - np.minimum(lnA, HALF)
            o = out["gz.te"]
            o[:, 0, 0] += np.maximum(tA, tB)
            o[:, 1, 0] += tA
            o[:, 0, 1] += lnA + lnB
            o[:, 1, 1] += lnA
            base = f * st.terms_cap
            # sectors of trip j: half A entries eA + 16 j .. + cA - 1, half B likewise (union)
            def rng(e, cnt):
                lo = (base + e[:, None] + HALF * j[None, :]) * sb // 32
                hi = (base + e[:, None] + HALF * j[None, :] + cnt - 1) * sb // 32
                return lo, hi, cnt > 0
            loA, hiA, okA = rng(eA, cA)
            loB, hiB, okB = rng(eB, cB)
            nA = np.where(okA, hiA - loA + 1, 0)
            nB = np.where(okB, hiB - loB + 1, 0)
            ov = np.where(okA & okB, np.maximum(0, np.minimum(hiA, hiB) - np.maximum(loA, loB) + 1), 0)
            o[:, 0, 3] += (nA + nB - ov).sum(axis=1)
            o[:, 1, 3] += nA.sum(axis=1)
            out["gz.trange"][:, 0, 1] += inA.astype(np.int64) + inB
            out["gz.trange"][:, 1, 1] += inA
            out["gz.tk"][:, 0, 1] += (lnA > 0).astype(np.int64) + (lnB > 0)
            out["gz.tk"][:, 1, 1] += lnA > 0
        else:
            out["gz.binrange"][:, 0, 1] += inA.astype(np.int64) + inB
            out["gz.binrange"][:, 1, 1] += inA
            # the fallback's per-filter region: the lanes with a bin of their own (min(len, 16) a half)
            o = out["gz.ffilter"]
            o[:, 0, 0] += (lnA > 0) | (lnB > 0)
            o[:, 1, 0] += lnA > 0
            o[:, 0, 1] += np.minimum(lnA, HALF) + np.minimum(lnB, HALF)
            o[:, 1, 1] += np.minimum(lnA, HALF)
    for ch in range(-(-p.f // HALF)):
        fs = range(ch * HALF, min(p.f, (ch + 1) * HALF))
        anyA = {k: np.zeros(nd, dtype=bool) for k in ("b", "t", "k")}
        anyB = {k: np.zeros(nd, dtype=bool) for k in ("b", "t", "k")}
        secA, secB = [], []
        for f in fs:
            (lnA, inA, eA), (lnB, inB, eB) = per_f[f]
            if st.fits[f]:
                anyA["t"] |= inA
                anyB["t"] |= inB
                anyA["k"] |= lnA > 0
                anyB["k"] |= lnB > 0
                base = f * st.terms_cap
                secA.append(np.where(lnA > 0, (base + eA) * 4 // 32, -1))
                secB.append(np.where(lnB > 0, (base + eB) * 4 // 32, -1))
            else:
                anyA["b"] |= inA
                anyB["b"] |= inB
        for key, site in (("b", "gz.binrange"), ("t", "gz.trange"), ("k", "gz.tk")):
            out[site][:, 0, 0] += anyA[key] | anyB[key]
            out[site][:, 1, 0] += anyA[key]
        if secA:
            SA, SB = np.stack(secA, axis=1), np.stack(secB, axis=1)
            for cls, S in ((0, np.concatenate([SA, SB], axis=1)), (1, SA)):
                S = np.sort(S, axis=1)
                distinct = (S >= 0) & np.concatenate([np.ones((nd, 1), bool), S[:, 1:] != S[:, :-1]], axis=1)
                out["gz.tk"][:, cls, 3] += distinct.sum(axis=1)
    return out


def grad_z_counts(p: Problem, cfg, geom: Geometry):
    s_bytes = p.scalar_bytes
    esize_c, words_c = 2 * s_bytes, 2 * s_bytes // 4
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    threads = cfg.get("grad_threads", cfg["threads"])
    nwarps = threads // WARP
    cr = grad_complex_rows(cfg, n, s_bytes)
    rp = 2 * cr
    J = grad_tile(cfg, n, p.batch, N)
    tiles = -(-N // J)
    h = (n - 1) // 2
    R = geom.max_radius
    sites = _counts()
    fft_sites, fft_bars = _fft_pass_counts(p, cfg, cr, esize_c, threads)
    bitrev_sites = _bitrev_pass_counts(p, cfg, cr, esize_c, threads)
    win = geom.stencil.windows
    wl = _window_lists(p, cfg, win)
    # grad_z_block's block-uniform choice: every filter has a window table, no window list overflows
    windows = bool(win.fits.all()) and not wl["walk"].any()
    scatter = None if windows else _scatter_table(p, geom)
    nchunks = -(-F // HALF)
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
                if windows:
                    tsites, passes, texch = _grad_z_tile_windows(p, cfg, geom, win, wl, b, j0, j1, h, rp, cr,
                                                                 esize_c)
                else:
                    tsites, passes, texch = _grad_z_tile(p, cfg, geom, b, j0, j1, h, rp, cr, esize_c, words_c,
                                                         scatter, nchunks)
                memo[key] = (tsites, passes, texch)
            for k, v in tsites.items():
                sites[k] += v
            for k, v in wl["sites"].items():
                sites[k] += v
            for k, v in fft_sites.items():
                sites[k] += v * passes
            barriers += 2  # the window lists, thread 0's flag
            if windows:
                barriers += passes * (fft_bars + 2)  # A rows, FFT steps, end of pass
            else:
                barriers += passes * (fft_bars + 4)  # row zero, A rows, bit reversal, FFT steps, end of pass
                for k, v in bitrev_sites.items():
                    sites[k] += v * passes
            exchanges += texch
    smem = cr * n * esize_c + windows_per_row(n) * (1 + window_list_cap(cfg, n)) * 4
    return dict(kernel="grad_z", blocks=p.batch * tiles, threads=threads, smem=smem,
                block_barriers=barriers, warp_exchanges=exchanges, sites=sites)


def _window_lists(p: Problem, cfg, win: Windows):
    """grad_z_block's per-window filter lists (once per block: sites) and, per window, the covered
    filters in order and whether the window walks all filters (more than list_cap)."""
    n = p.n_fft
    threads = cfg.get("grad_threads", cfg["threads"])
    nwin = windows_per_row(n, win.window)
    cap = window_list_cap(cfg, n)
    sites = _counts()
    tr, ln = _strided_trips(nwin, threads, threads)
    _add(sites, "gzw.list", tr, ln)
    _add(sites, "gzw.hull", tr * p.f, ln * p.f)
    _add(sites, "gzw.flag", nwin, nwin)  # thread 0's pass over the list counts
    lo = np.array([h[0] for h in win.hull], dtype=np.int64)
    hi = np.array([h[1] for h in win.hull], dtype=np.int64)
    lists = [np.nonzero((lo <= w) & (w <= hi))[0] for w in range(nwin)]
    walk = np.array([len(x) > cap for x in lists], dtype=bool)
    return dict(sites=sites, lists=lists, walk=walk, nwin=nwin, cap=cap, lo=lo, hi=hi)


def _grad_z_tile_windows(p, cfg, geom, win, wl, b, j0, j1, h, rp, cr, esize_c):
    """One grad_z tile on the window path (lwvd_bwd.cuh grad_z_block, `windows`)."""
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    sb = p.scalar_bytes
    threads = cfg.get("grad_threads", cfg["threads"])
    nwarps = threads // WARP
    R = geom.max_radius
    W = win.window
    nwin, cap = wl["nwin"], wl["cap"]
    st = geom.stencil
    rows_cap = st.rows_cap
    sites = _counts()
    row_lo, row_hi, passes = _grad_tile_start(sites, N, b, j0, j1, h, rp, threads, esize_c)
    items = rp * nwin
    it_tr, it_ln = _strided_trips(items, threads, threads)
    _add(sites, "gzw.item", it_tr, it_ln, times=passes)
    halves = 2 if sb == 8 else 1  # double: the window in two halves of 8 bins
    _add(sites, "gzw.half", it_tr * halves, it_ln * halves, times=passes)
    if n < W:  # n_fft 4 or 8: the store of the bins j < n in a region of its own
        _add(sites, "gzw.st_small", it_tr * halves, it_ln * halves, times=passes)
    # per item: row slot, window, group (warp, item trip)
    it = np.arange(items)
    lw = nwin.bit_length() - 1
    wi = it // rp
    r_it = it - wi * rp  # rows fastest, bits 0 and 1 of the window index swapped
    w_it = (wi & ~3) | ((wi & 1) << 1) | ((wi >> 1) & 1) if lw > 1 else wi
    g_it = (it // threads) * nwarps + (it % threads) // WARP
    # stores: every item, bins j < min(16, n), bit-reversed (identical every pass)
    log2n = n.bit_length() - 1
    nj = min(W, n)
    jj = np.arange(nj)
    kk = (w_it[:, None] * W + jj[None, :]).ravel()
    kr = np.array([_bitrev(int(k), log2n) for k in range(n)], dtype=np.int64)[kk]
    rr = np.repeat(r_it, nj)
    addr = ((rr >> 1) * n + kr) * esize_c + (rr & 1) * sb
    gst = np.repeat(g_it, nj) * W + np.tile(jj, items)
    _add(sites, "gzw.st", len(np.unique(gst)), len(gst), group_smem_wavefronts(gst, addr, sb), times=passes)
    cnt_base = cr * n * esize_c  # wcnt, then wlist, after the rows
    list_base = cnt_base + 4 * nwin
    lens = np.array([len(x) for x in wl["lists"]], dtype=np.int64)
    walk = wl["walk"]
    lo, hi = wl["lo"], wl["hi"]
    radius = geom.d_radius.astype(np.int64)
    for k in range(passes):
        r0 = row_lo + k * rp
        pass_hi = min(row_hi, r0 + rp - 1)
        _window_pass(sites, p, geom, win, wl, r0, pass_hi, r_it, w_it, g_it, lens, radius, cnt_base, list_base)
        _gather_pass(sites, p, threads, b, j0, j1, h, r0, pass_hi, esize_c)
    return sites, passes, 0


def _window_pass(sites, p, geom, win, wl, r0, pass_hi, r_it, w_it, g_it, lens, radius, cnt_base, list_base):
    """The window items of one pass: their filters, frames, header reads and window reads."""
    hop, T, F, sb = p.hop, p.frames, p.f, p.scalar_bytes
    R = geom.max_radius
    W = win.window
    nwin, walk, lo, hi = wl["nwin"], wl["walk"], wl["lo"], wl["hi"]
    rows_cap = geom.stencil.rows_cap
    if True:
        act = r0 + r_it <= pass_hi
        if not act.any():
            return
        ia = np.nonzero(act)[0]
        s_a = r0 + r_it[ia]
        wa, ga = w_it[ia], g_it[ia]
        _add(sites, "gzw.cnt", len(np.unique(ga)), len(ia), group_smem_wavefronts(ga, cnt_base + 4 * wa, 4))
        halves = 2 if sb == 8 else 1  # the filter loop runs once per half (the same trips)
        t_lo = np.where(s_a - R > 0, -(-(s_a - R) // hop), 0)
        t_hi = np.minimum(T - 1, (s_a + R) // hop)
        nt = np.maximum(0, t_hi - t_lo + 1)
        nl = lens[wa]
        # (item, li) pairs
        rep = np.repeat(np.arange(len(ia)), nl)
        li = np.arange(len(rep)) - np.repeat(np.cumsum(nl) - nl, nl)
        gli = ga[rep] * (F + 1) + li
        _add(sites, "gzw.filter", len(np.unique(gli)), len(rep), times=halves)
        wr = wa[rep]
        if len(rep):
            _add(sites, "gzw.lst", len(np.unique(gli)), len(rep),
                 group_smem_wavefronts(gli, list_base + 4 * (li * nwin + wr), 4), times=halves)
        fl = np.empty(len(rep), dtype=np.int64)
        for wv in np.unique(wr):
            sel = wr == wv
            fl[sel] = wl["lists"][wv][li[sel]]
        # (item, li, frame) triples
        ntr = nt[rep]
        r2 = np.repeat(np.arange(len(rep)), ntr)
        tt = np.arange(len(r2)) - np.repeat(np.cumsum(ntr) - ntr, ntr)
        maxt = int(nt.max()) + 1 if len(nt) else 1
        key = gli[r2] * maxt + tt
        _add(sites, "gzw.frame", len(np.unique(key)), len(r2), times=halves)
        f3 = fl[r2]
        d = s_a[rep[r2]] - (t_lo[rep[r2]] + tt) * hop
        ind = np.abs(d) <= radius[f3]
        key, f3, d, w3 = key[ind], f3[ind], d[ind], wr[r2][ind]
        if len(key) == 0:
            return
        hdr_addr = 8 * (f3 * rows_cap + radius[f3] + d)
        _add(sites, "gzw.hdr", len(np.unique(key)), len(key), 0, group_gmem_sectors(key, hdr_addr, 8), times=halves)
        dr = d + radius[f3]
        wlo = np.empty(len(f3), dtype=np.int64)
        nw = np.empty(len(f3), dtype=np.int64)
        off = np.empty(len(f3), dtype=np.int64)
        for fv in np.unique(f3):
            sel = f3 == fv
            wlo[sel] = win.wlo[fv][dr[sel]]
            nw[sel] = win.nw[fv][dr[sel]]
            off[sel] = win.start[fv][dr[sel]]
        q = w3 - wlo
        hit = (q >= 0) & (q < nw)
        if not hit.any():
            return
        key, f3, q, off = key[hit], f3[hit], q[hit], off[hit]
        _add(sites, "gzw.win", len(np.unique(key)), len(key), times=halves)
        base = (f3 * win.win_cap * W + (off + q) * W) * sb
        nv = W * sb // 16
        kv = np.concatenate([key * 8 + c for c in range(nv)])
        av = np.concatenate([base + 16 * c for c in range(nv)])
        _add(sites, "gzw.wld", len(np.unique(kv)), len(kv), 0, group_gmem_sectors(kv, av, 16))


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


def _grad_tile_start(sites, N, b, j0, j1, h, rp, threads, esize_c):
    """What every grad_z tile does first (lwvd_bwd.cuh grad_z_block, both paths): the zero-fill of its
    owned samples and the pass loop's trips; returns (row_lo, row_hi, passes)."""
    row_lo, row_hi = max(0, j0 - h), min(N - 1, j1 + h)
    passes = (row_hi - row_lo + rp) // rp
    j, g = _owned_groups(j0, j1, j0, threads)
    ng = len(np.unique(g))
    _add(sites, "gz.zero", ng, len(j))
    _add(sites, "gz.zero_st", ng, len(j), 0, group_gmem_sectors(g, (b * N + j) * esize_c, esize_c))
    _add(sites, "gz.pass", threads // WARP, threads, times=passes)
    return row_lo, row_hi, passes


def _grad_z_tile(p, cfg, geom, b, j0, j1, h, rp, cr, esize_c, words_c, tables, nchunks):
    scatter = tables
    n, hop, N, T, F = p.n_fft, p.hop, p.n_samples, p.frames, p.f
    threads = cfg.get("grad_threads", cfg["threads"])
    nwarps = threads // WARP
    R = geom.max_radius
    sites = _counts()
    row_lo, row_hi, passes = _grad_tile_start(sites, N, b, j0, j1, h, rp, threads, esize_c)
    rz_tr, rz_ln = _strided_trips(cr * n, threads, threads)
    _add(sites, "gz.rowzero", rz_tr, rz_ln, times=passes)
    _add(sites, "gz.rowzero_st", rz_tr, rz_ln, rz_tr * words_c, times=passes)
    _add(sites, "gz.row", cr, cr * WARP, times=passes)
    exch = 0
    for k in range(passes):
        r0 = row_lo + k * rp
        pass_hi = min(row_hi, r0 + rp - 1)
        s_a = np.arange(r0, pass_hi + 1, 2)  # even rows: one complex row each, with its odd row
        if len(s_a):
            both = (s_a + 1 <= pass_hi).astype(np.int64)
            s_b = np.minimum(s_a + 1, pass_hi)
            t_lo = np.where(s_a - R > 0, -(-(s_a - R) // hop), 0)
            t_hi = np.minimum(T - 1, (s_b + R) // hop)
            nf = np.maximum(0, t_hi - t_lo + 1)
            _add(sites, "gz.frame", int(nf.sum()), int(nf.sum()) * WARP)
            _add(sites, "gz.chunk", int(nf.sum()) * nchunks, int(nf.sum()) * nchunks * WARP)
            _add(sites, "gz.filter", int(nf.sum()) * F, int(nf.sum()) * F * WARP)
            exch += int(nf.sum()) * F * 3  # packed range, weight and table offset per filter
            ss = np.repeat(s_a, nf)
            cls = 1 - np.repeat(both, nf)  # 0: both rows, 1: odd row absent
            tt = np.concatenate([np.arange(a, bb + 1) for a, bb in zip(t_lo, t_hi) if bb >= a]) if nf.sum() else ss
            d = ss - tt * hop + R + 1
            for site, arr in scatter.items():
                _add(sites, site, *(int(x) for x in arr[d, cls].sum(axis=0)))
        _gather_pass(sites, p, threads, b, j0, j1, h, r0, pass_hi, esize_c)
    return sites, passes, exch


def _gather_pass(sites, p, threads, b, j0, j1, h, r0, pass_hi, esize_c):
    """The gather of one grad_z pass: the owned samples j reached by rows r0 .. pass_hi."""
    n, N = p.n_fft, p.n_samples
    rp_pass = pass_hi - r0 + 1
    rp = rp_pass
    if True:
        jw_lo, jw_hi = max(j0, r0 - h), min(j1, pass_hi + h)
        j, g = _owned_groups(jw_lo, jw_hi, j0, threads)
        if len(j) == 0:
            return
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


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def _grad_launch(p: Problem, cfg, geom: Geometry, frame: bool, with_z: bool = True) -> dict:
    """The grad_z + parameter-gradient launch (lwvd_plan.cuh detail::grad_launch)."""
    # grad_z and the parameter gradients are one launch (lwvd_bwd.cuh lwvd_grad_z_kernel): block i
    # builds grad_z tile i (i < gz_blocks), then the gradients of filters i, i + grid, ...
    pg = param_grad_counts(p, cfg, frame)
    gthreads = cfg.get("grad_threads", cfg["threads"])
    warps = gthreads // WARP
    if p.batch > 0 and with_z:
        gz = grad_z_counts(p, cfg, geom)
        gz_blocks = gz["blocks"]
        _add(gz["sites"], "grad.role_gz", gz_blocks * warps, gz_blocks * gthreads)
    else:
        gz = dict(kernel="grad_z", blocks=0, threads=gthreads, smem=0, block_barriers=0, warp_exchanges=0,
                  sites=_counts())
        gz_blocks = 0
    for k, v in pg["sites"].items():
        gz["sites"][k] += v
    _add(gz["sites"], "grad.role_pg", p.f * warps, p.f * gthreads)
    gz["blocks"] = max(gz_blocks, p.f)
    gz["block_barriers"] += pg["block_barriers"] + p.f  # + the barrier before each filter's reduction
    gz["warp_exchanges"] += pg["warp_exchanges"]
    gz["smem"] = max(gz["smem"], pg["smem"])
    if frame:
        gz["kernel"] = "grad_z_frame"
    return gz


def plan_counts(p: Problem, cfg) -> dict:
    """{'forward': [launch, ...], 'backward': [...], 'train_forward': [...], 'train_backward': [...]}
    in plan order (lwvd_plan.cuh: run_forward, run_backward, run_forward_moments, run_backward_moments
    with need_z); each launch a dict with kernel, blocks, threads, smem, block_barriers,
    warp_exchanges and sites {name: [trips, lanes, wavefronts, sectors]}."""
    geom = Geometry(p)
    st = Stencil(p, cfg, geom)
    st.windows = Windows(p, cfg, st)
    geom.stencil = st
    fwd = [prepare_counts(p, cfg, geom, st, windows=False)]
    bwd = [prepare_counts(p, cfg, geom, st)]
    tfwd = [prepare_counts(p, cfg, geom, st, windows=False)] if p.batch > 0 else []
    tbwd = [prepare_counts(p, cfg, geom, st)]
    if p.batch > 0:
        fwd.append(smooth_counts(p, cfg, geom, moments=False))
        bwd.append(smooth_counts(p, cfg, geom, moments=True))
        tfwd.append(smooth_counts(p, cfg, geom, moments=True, keep=True))
    bwd.append(_grad_launch(p, cfg, geom, frame=False))
    tbwd.append(_grad_launch(p, cfg, geom, frame=True))
    for part in (fwd, bwd, tfwd, tbwd):
        for launch in part:
            launch["sites"] = {k: [int(x) for x in v] for k, v in launch["sites"].items() if v[0] > 0}
    return dict(forward=fwd, backward=bwd, train_forward=tfwd, train_backward=tbwd)
