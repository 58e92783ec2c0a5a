// lwvd_fwd.cuh — forward kernels: per-call preparation and the fused WVD + smoothing kernel.
//
// Shapes (all contiguous, 64-bit indexing):
//   z      (B, N, 2) scalar_t   the analytic signal, complex as interleaved (re, im)
//   params (F,)      scalar_t   center, sigma_t, sigma_nu, rho
//   out    (B, F, T) scalar_t   K[b, f, t]                          (forward)
//          (B * tiles, F, 6)    backward (kMoments = true): per block (b, tile of TT frames) and filter,
//                               sum over its frames t of G[b, f, t] * (S0, Sa, Sc, Saa, Sac, Scc)(f, t)
//                               (a = d / sigma_t, c = b - rho a: lwvd_math.cuh, add_moment_term)
// scalar_t is float or double. The host-side sequence of launches is lwvd_plan.cuh.
//
// Algorithm (docs/design.md, docs/cuda_kernels.md): a block owns frames [t0, t0 + TT) of one batch
// item (output-stationary) and walks the rows n those frames can reach (|n - t*hop| <= R, R the
// largest filter radius) in passes of 2*CR rows. A pass builds CR complex lag rows
// r_a[m] + i r_b[m] (two Hermitian rows per complex row) in shared memory, bit-reversed, FFTs them
// (fft.cuh) and so holds W[a, k] = 2 Re X[k], W[b, k] = 2 Im X[k]. Then warp w takes filters
// w, w + 16, ... and their frames in the tile that reach the pass, (filter, frame) pairs, and sums W * exp(-q/2) over the
// pair's ellipse rows in the pass with the lanes over (row, bin) (smooth_pair_rows: a warp scan of
// the rows' bin counts, 32 consecutive terms per warp trip). The warp's sum is reduced by shuffles
// in a fixed order and added by lane 0 to the pair's output (forward) or, G-weighted, to the
// filter's sum over the block's frames (backward): the block owns that output, the same lane of the
// same warp updates it every pass, so there are no atomics and the result is bitwise reproducible.
// The (B, N, M) WVD never leaves shared memory.
#pragma once

#include "cuda_compat.cuh"
#include "fft.cuh"
#include "launch_config.h"
#include "lwvd_math.cuh"

namespace lwvd {

// ---------------------------------------------------------------------------------------------
// Preparation: filter geometry (make_filter), FFT twiddles, largest time radius, and the value checks
// of the parameters. One block.
//
// Value checks on the device (no host sync): a filter whose parameters are not finite, or with
// sigma_t <= 0, sigma_nu <= 0 or |rho| >= 1, sets bits of `invalid` (one word per call) and gets a
// harmless placeholder geometry; every later kernel of the call reads `invalid` and, when it is not
// 0, writes NaN to all of its outputs instead of computing them. The same bits are OR-ed into the
// persistent `error_flags` word (when given), which the host reads on request
// (torch.ops.lwvd_cuda.cuda_error_flags; docs/cuda_kernels.md).
enum : unsigned {
  kInvalidNotFinite = 1u,  // a parameter is NaN or infinite
  kInvalidSigmaT = 2u,     // sigma_t <= 0
  kInvalidSigmaNu = 4u,    // sigma_nu <= 0
  kInvalidRho = 8u,        // |rho| >= 1
};

// x - x is 0 for every finite x and NaN for NaN and +-inf (no isfinite overload questions on either side).
__device__ __forceinline__ bool is_finite(double x) { return x - x == 0.0; }

template <typename scalar_t>
__device__ __forceinline__ unsigned invalid_bits(double c, double st, double sn, double r) {
  unsigned bad = 0;
  if (!(is_finite(c) && is_finite(st) && is_finite(sn) && is_finite(r))) bad |= kInvalidNotFinite;
  if (!(st > 0)) bad |= kInvalidSigmaT;
  if (!(sn > 0)) bad |= kInvalidSigmaNu;
  if (!(r > -1 && r < 1)) bad |= kInvalidRho;
  return bad;
}

template <typename scalar_t>
struct PrepareArgs {
  const scalar_t* center;
  const scalar_t* sigma_t;
  const scalar_t* sigma_nu;
  const scalar_t* rho;
  FilterGeometry<scalar_t>* geom;  // (F,)   out
  cplx<scalar_t>* twiddles;        // (n_fft/2,) out: exp(-2 i pi j / n_fft)
  int64_t* max_radius;             // (1,)   out: max_f geom[f].d_radius
  unsigned* invalid;               // (1,)   out: kInvalid* bits of this call's parameters (0: valid)
  unsigned* error_flags;           // (1,)   persistent, OR-ed with `invalid`; may be null
  int64_t n_filters;
  int64_t n_fft;
  int64_t d_limit;                 // N - 1 + (T - 1) * hop: the largest |d| that occurs
  double trunc2;                   // effective_trunc2<scalar_t>(truncate)
  // Stencil tables (launch_config.h, kStencil*): blocks 1 .. gridDim.x - 1 fill them.
  int* tab_rows;                   // (F, rows_cap + 1) out: term offsets per lag d + R_f; [0] = -1: no table
  scalar_t* tab_e;                 // (F, terms_cap) out: exp(-q / 2)
  scalar_t* tab_c;                 // (F, terms_cap) out: quad_form's c (the moments' coordinate)
  int* tab_idx;                    // (F, terms_cap) out: (d + R_f) << kStencilKBits | k
  int64_t terms_cap, rows_cap;
  double inv_two_m;                // 1 / (2 n_fft), exact
  // grad_z's window tables (launch_config.h kWindow*), after the stencil table of the same filter:
  int2* win_hdr;                   // (F, rows_cap) out: {entry of window 0, w_lo | nw << 16} per lag d + R_f
  scalar_t* win_e;                 // (F, win_cap, 16) out: dense norm * E of the lag's windows (0 off its run)
  int2* win_hull;                  // (F,) out: {lowest, highest} window of any lag; {-1, -1}: no table
                                   // (all window pointers null in a forward's prepare: no window tables)
  int64_t win_cap;
};

// Exclusive block scan of v over config::kStencilThreads threads (warp scans, then the warps' totals
// in `warp_total`; two barriers, 5 shuffles per warp). Returns the exclusive prefix; *total the sum.
__device__ __forceinline__ int stencil_block_scan(int v, int* warp_total, int* total) {
  constexpr int kW = config::kStencilThreads / kWarpSize;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize, warp = tid / kWarpSize;
  int incl = v;
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const int y = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == kWarpSize - 1) warp_total[warp] = incl;
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < kW; ++w) {
    const int t = warp_total[w];
    before += w < warp ? t : 0;
    sum += t;
  }
  __syncthreads();  // warp_total is rewritten by the next scan
  *total = sum;
  return before + incl - v;
}

// grad_z's window table of filter f (launch_config.h kWindow*), after its stencil table (which fits:
// rows[] and the entries are complete). Thread i of a chunk takes lag i: its run of terms
// [k_lo, k_lo + cnt) (consecutive bins) covers windows w_lo .. w_lo + nw - 1; a block scan of nw
// places the windows in the order of the lags; each window is written whole (norm * E on the run, the
// stencil table's E times the filter's norm rounded once; exactly 0 elsewhere: the same terms). Windows past win_cap: no window table ({-1, -1} hull: grad_z takes its scatter path).
template <typename scalar_t>
__device__ __forceinline__ void window_table_block(const PrepareArgs<scalar_t>& a, int64_t f, int nrows,
                                                   int* warp_total, scalar_t norm) {
  constexpr int kW = config::kStencilThreads / kWarpSize;
  constexpr int kWin = config::kWindow;
  constexpr int kMask = (1 << config::kStencilKBits) - 1;
  __shared__ int warp_lo[kW], warp_hi[kW];
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize, warp = tid / kWarpSize;
  __syncthreads();  // the stencil table of the other threads (global memory of this block) is complete
  const int* rows = a.tab_rows + f * (a.rows_cap + 1);
  const scalar_t* te = a.tab_e + f * a.terms_cap;
  const int* ti = a.tab_idx + f * a.terms_cap;
  int2* hdr = a.win_hdr + f * a.rows_cap;
  scalar_t* we = a.win_e + f * a.win_cap * kWin;
  const int wcap = static_cast<int>(a.win_cap);
  int wrun = 0;                          // windows of the lags before this chunk (block-uniform)
  int lo = 0x7fffffff, hi = -1;          // this thread's hull
  LWVD_NO_UNROLL
  for (int base = 0; base < nrows; base += config::kStencilThreads) {
    [[maybe_unused]] const int chunk = base / config::kStencilThreads;  // profile key
    LWVD_PROF_TRIP("win.chunk", chunk);
    const int i = base + tid;
    int e0 = 0, cnt = 0, k_lo = 0, w_lo = 0, nw = 0;
    if (i < nrows) {
      e0 = rows[i];
      cnt = rows[i + 1] - e0;
      if (cnt > 0) {
        k_lo = ti[e0] & kMask;
        w_lo = k_lo >> config::kWindowLog2;
        nw = ((k_lo + cnt - 1) >> config::kWindowLog2) - w_lo + 1;
      }
    }
    int total;
    const int start = wrun + stencil_block_scan(nw, warp_total, &total);
    if (wrun + total <= wcap) {  // block-uniform
      // .x: the absolute index (in windows, 32 bits: launch_config.h) of the lag's window 0, so that window
      // w of the lag is entry x + w (w_lo <= w < w_lo + nw)
      if (i < nrows) hdr[i] = make_int2(static_cast<int>(f * a.win_cap) + start - w_lo, w_lo | (nw << 16));
      if (nw > 0) {
        lo = w_lo < lo ? w_lo : lo;
        hi = w_lo + nw - 1 > hi ? w_lo + nw - 1 : hi;
      }
      LWVD_NO_UNROLL
      for (int q = 0; q < nw; ++q) {
        LWVD_PROF_TRIP("win.write", chunk, q);
        scalar_t* dst = we + (start + q) * kWin;
        const int k0 = (w_lo + q) * kWin - k_lo;  // run position of the window's first bin
        for (int j = 0; j < kWin; ++j) {
          const int e = k0 + j;
          dst[j] = e >= 0 && e < cnt ? norm * te[e0 + e] : scalar_t(0);
        }
      }
    }
    wrun += total;
    if (wrun > wcap) break;  // does not fit: no window table (block-uniform)
  }
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {  // the block's hull: warp butterflies, then the warps
    const int l2 = __shfl_xor_sync(kFullMask, lo, o), h2 = __shfl_xor_sync(kFullMask, hi, o);
    lo = l2 < lo ? l2 : lo;
    hi = h2 > hi ? h2 : hi;
  }
  if (lane == 0) {
    warp_lo[warp] = lo;
    warp_hi[warp] = hi;
  }
  __syncthreads();
  if (tid == 0) {
    LWVD_PROF_TRIP("win.end");
    for (int w = 0; w < kW; ++w) {
      lo = warp_lo[w] < lo ? warp_lo[w] : lo;
      hi = warp_hi[w] > hi ? warp_hi[w] : hi;
    }
    a.win_hull[f] = wrun > wcap ? make_int2(-1, -1) : make_int2(lo, hi);
  }
}

// One filter's stencil table, by one block of config::kStencilThreads threads (block-uniform control
// flow). Thread i of a chunk of lags takes lag d = i - R_f: bin_range (the candidate bins of every
// kernel) and, per candidate, quad_form in scalar_t exactly as the kernels evaluate it (d and k as
// scalar_t, v = k * (1/2M) - center: the same operations on the same values), keeping the terms with
// q <= trunc2: the truncation set of the table is bitwise the kernels' on-the-fly one. A block scan of
// the per-lag counts places the terms in the order (d, k). The filter's geometry is make_filter of
// the same inputs as block 0's (bitwise equal).
template <typename scalar_t>
__device__ __forceinline__ void stencil_table_block(const PrepareArgs<scalar_t>& a, int64_t f) {
  constexpr int kW = config::kStencilThreads / kWarpSize;
  __shared__ int warp_total[kW];
  const int tid = static_cast<int>(threadIdx.x);
  const double c = static_cast<double>(a.center[f]), st = static_cast<double>(a.sigma_t[f]);
  const double sn = static_cast<double>(a.sigma_nu[f]), r = static_cast<double>(a.rho[f]);
  const unsigned bad = invalid_bits<scalar_t>(c, st, sn, r);
  const FilterGeometry<scalar_t> g = make_filter<scalar_t>(c, st, sn, r, a.trunc2, a.n_fft, a.d_limit);
  int* rows = a.tab_rows + f * (a.rows_cap + 1);
  const int64_t radius = g.d_radius;
  if (bad || 2 * radius + 1 > a.rows_cap) {  // block-uniform
    if (tid == 0) {
      rows[0] = -1;
      if (a.win_hull != nullptr) a.win_hull[f] = make_int2(-1, -1);  // no window table either
    }
    return;
  }
  const int R = static_cast<int>(radius), nrows = 2 * R + 1;
  const int cap = static_cast<int>(a.terms_cap);
  const scalar_t trunc2 = static_cast<scalar_t>(a.trunc2);
  const scalar_t inv_two_m = static_cast<scalar_t>(a.inv_two_m);
  scalar_t* te = a.tab_e + f * a.terms_cap;
  scalar_t* tc = a.tab_c + f * a.terms_cap;
  int* ti = a.tab_idx + f * a.terms_cap;
  int running = 0;  // terms of the lags before this chunk (block-uniform)
  LWVD_NO_UNROLL
  for (int base = 0; base < nrows; base += config::kStencilThreads) {
    [[maybe_unused]] const int chunk = base / config::kStencilThreads;  // profile key
    LWVD_PROF_TRIP("tab.chunk", chunk);
    const int i = base + tid;
    int k_lo = 1, k_hi = 0;
    if (i < nrows) {
      int64_t lo, hi;
      bin_range(g, static_cast<int64_t>(i - R), a.trunc2, a.n_fft, &lo, &hi);
      k_lo = static_cast<int>(lo);
      k_hi = static_cast<int>(hi);
    }
    const scalar_t ds = static_cast<scalar_t>(i - R);
    int cnt = 0;
    LWVD_NO_UNROLL
    for (int k = k_lo; k <= k_hi; ++k) {
      LWVD_PROF_TRIP("tab.count", chunk, k - k_lo);
      const scalar_t v = static_cast<scalar_t>(k) * inv_two_m - g.center;
      cnt += quad_form(g, ds, v) <= trunc2 ? 1 : 0;
    }
    int total;  // block scan of the counts (the window tables' scan too)
    const int start = running + stencil_block_scan(cnt, warp_total, &total);
    if (i < nrows) rows[i] = start;
    if (running + total <= cap) {  // block-uniform
      int e = start;
      LWVD_NO_UNROLL
      for (int k = k_lo; k <= k_hi; ++k) {
        LWVD_PROF_TRIP("tab.write", chunk, k - k_lo);
        const scalar_t v = static_cast<scalar_t>(k) * inv_two_m - g.center;
        scalar_t qa, qc;
        const scalar_t q = quad_form(g, ds, v, &qa, &qc);
        if (q <= trunc2) {
          te[e] = lwvd_exp(scalar_t(-0.5) * q);
          tc[e] = qc;
          ti[e] = (i << config::kStencilKBits) | k;
          ++e;
        }
      }
    }
    running += total;
    if (running > cap) break;  // does not fit: the filter is evaluated on the fly (block-uniform)
  }
  if (tid == 0) {  // thread 0 wrote rows[0] itself
    LWVD_PROF_TRIP("tab.end");
    rows[nrows] = running;
    if (running > cap) rows[0] = -1;
  }
  if (a.win_hull == nullptr) return;  // a forward's prepare: no grad_z reads window tables (lwvd_plan.cuh)
  if (running > cap) {  // block-uniform: no stencil table, so no window table
    if (tid == 0) a.win_hull[f] = make_int2(-1, -1);
    return;
  }
  window_table_block(a, f, nrows, warp_total, g.norm);
}

template <typename scalar_t>
__global__ void __launch_bounds__(config::kPrepThreads) lwvd_prepare_kernel(const PrepareArgs<scalar_t> a) {
  static_assert(config::kStencilThreads == config::kPrepThreads, "one block size for both roles");
  if (blockIdx.x > 0) {  // the table role: filters blockIdx.x - 1, + (gridDim.x - 1), ...
    for (int64_t f = blockIdx.x - 1; f < a.n_filters; f += gridDim.x - 1) {
      LWVD_PROF_TRIP("tab.filter", (f - (blockIdx.x - 1)) / (gridDim.x - 1));
      stencil_table_block(a, f);
    }
    return;
  }
  __shared__ int64_t radius[config::kPrepThreads];
  __shared__ unsigned bad_bits[config::kPrepThreads];
  const int tid = static_cast<int>(threadIdx.x);
  int64_t rmax = 0;
  unsigned bad = 0;
  for (int64_t f = tid; f < a.n_filters; f += blockDim.x) {
    LWVD_PROF_TRIP("prep.filter", (f - tid) / config::kPrepThreads);
    const double c = static_cast<double>(a.center[f]), st = static_cast<double>(a.sigma_t[f]);
    const double sn = static_cast<double>(a.sigma_nu[f]), r = static_cast<double>(a.rho[f]);
    bad |= invalid_bits<scalar_t>(c, st, sn, r);
    // With invalid parameters the geometry is meaningless (d_radius still lies in [.., d_limit]), but
    // no kernel uses it: each one reads `invalid` first and writes NaN instead.
    const FilterGeometry<scalar_t> g = make_filter<scalar_t>(c, st, sn, r, a.trunc2, a.n_fft, a.d_limit);
    a.geom[f] = g;
    rmax = g.d_radius > rmax ? g.d_radius : rmax;
  }
  // Stored before the twiddle loop: nothing of the filter loop stays live across cos/sin (whose
  // out-of-line slow paths make ptxas spill what is live there).
  radius[tid] = rmax;
  bad_bits[tid] = bad;
  // Twiddles in double, rounded once: the float kernels get correctly rounded constants.
  const double two_pi = 6.283185307179586476925286766559;
  for (int64_t j = tid; j < a.n_fft / 2; j += blockDim.x) {
    LWVD_PROF_TRIP("prep.twiddle", (j - tid) / config::kPrepThreads);
    const double ang = -two_pi * static_cast<double>(j) / static_cast<double>(a.n_fft);
    a.twiddles[j] = cplx<scalar_t>{static_cast<scalar_t>(cos(ang)), static_cast<scalar_t>(sin(ang))};
  }
  __syncthreads();
  for (int s = config::kPrepThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      LWVD_PROF_TRIP("prep.reduce");
      radius[tid] = radius[tid + s] > radius[tid] ? radius[tid + s] : radius[tid];
      bad_bits[tid] |= bad_bits[tid + s];
    }
    __syncthreads();
  }
  // Invalid parameters: NaN twiddles as well, so that grad_z (which has no test of its own: one
  // made ptxas spill) turns every sample NaN through its FFT.
  if (bad_bits[0])
    for (int64_t j = tid; j < a.n_fft / 2; j += blockDim.x) a.twiddles[j] = cplx<scalar_t>{NAN, NAN};
  if (tid == 0) {
    *a.max_radius = radius[0];
    *a.invalid = bad_bits[0];
    if (bad_bits[0] && a.error_flags) atomicOr(a.error_flags, bad_bits[0]);
  }
}


// ---------------------------------------------------------------------------------------------
// Building one pass of lag rows (shared by the forward and the moments kernel).

// The pointer itself, hidden from the optimiser (nvcc only; the identity in the emulator): keeps a
// per-block base pointer in registers instead of letting the compiler fold it into every access as
// 64-bit base + (b * N + p) * 8 arithmetic, recomputed per trip.
template <typename T>
__device__ __forceinline__ const T* opaque_ptr(const T* p) {
#if defined(__CUDA_ARCH__)
  asm("" : "+l"(p));
#endif
  return p;
}

// A read-only load of one z element (ld.global.nc, as the compiler emits for zb[p] when it can see
// that zb is global and unwritten; through opaque_ptr it cannot).
__device__ __forceinline__ cplx<float> load_ro(const cplx<float>* p) {
#if defined(__CUDA_ARCH__)
  const float2 v = __ldg(reinterpret_cast<const float2*>(p));
  return cplx<float>{v.x, v.y};
#else
  return *p;
#endif
}
__device__ __forceinline__ cplx<double> load_ro(const cplx<double>* p) {
#if defined(__CUDA_ARCH__)
  const double2 v = __ldg(reinterpret_cast<const double2*>(p));
  return cplx<double>{v.x, v.y};
#else
  return *p;
#endif
}

// rows[c] (c < complex_rows) receives, bit-reversed, the lag row of samples a = r0 + 2c and b = a+1:
//   x[m mod M] = r_a[m] + i r_b[m],  r_n[m] = z[n+m] conj(z[n-m]),  |m| <= M/2 - 1, x[M/2] = 0,
// with z = 0 outside [0, N). Its DFT is R_a + i R_b with R_a, R_b real (Hermitian rows).
template <int kBlockThreads, typename scalar_t>
__device__ __forceinline__ void build_lag_rows(cplx<scalar_t>* rows, int complex_rows, int log2n,
                                               const cplx<scalar_t>* __restrict__ zb_in, int64_t n_samples,
                                               int64_t r0) {
  const cplx<scalar_t>* __restrict__ zb = opaque_ptr(zb_in);
  const int n = 1 << log2n;
  const int total = complex_rows * n;
  // Sample indices in 32 bits: the plan bounds N (and so every row and lag index) below 2^31
  // (lwvd_plan.cuh); unsigned compares test 0 <= p < N in one instruction.
  const unsigned n_s = static_cast<unsigned>(n_samples);
  const int r0i = static_cast<int>(r0);
  // Thread -> entry map. The stores go to bit-reversed positions: 32 consecutive j of one warp land
  // n/32 elements apart, all in one bank pair (32 wavefronts per float store at n = 512). Thread tid
  // therefore takes the entries first + k * kBlockThreads with first = tid with its bits {2, 3, 4}
  // and {5, 6, 7} swapped: a warp covers 8 runs of 4 consecutive j, 32 j apart, whose bit-reversed
  // positions fall in 8 bank pairs (4 wavefronts at n = 512; the z reads stay runs of 4 elements,
  // 32 B). A permutation of [0, kBlockThreads) that keeps the loop's stride, so the entries are the
  // same when total is a multiple of kBlockThreads (n_fft >= 8 at the rows budgets of launch_config.h);
  // otherwise the identity. The replay (benchmarks/kernel_counts.py _lag_thread_map) mirrors it.
  static_assert((kBlockThreads & (kBlockThreads - 1)) == 0, "a power of two: the map swaps bits");
  const int tid = static_cast<int>(threadIdx.x);
  const int first = (kBlockThreads >= 256 && (total & (kBlockThreads - 1)) == 0)
                        ? ((tid & ~0xFC) | (((tid >> 5) & 7) << 2) | (((tid >> 2) & 7) << 5))
                        : tid;
  LWVD_NO_UNROLL
  for (int i = first; i < total; i += kBlockThreads) {
    [[maybe_unused]] const int trip = (i - first) / kBlockThreads;  // profile key
    LWVD_PROF_TRIP("lag.entry", trip);
    const int c = i >> log2n;
    const int j = i & (n - 1);
    const int m = j < n / 2 ? j : j - n;  // j == n/2 is the unused lag M/2
    scalar_t re = 0, im = 0;
    if (j != n / 2) {
      // r_a = z[p] conj(z[q]) (h = 0), r_b = z[p + 1] conj(z[q + 1]) (h = 1); x = r_a + i r_b. The
      // unsigned compares test 0 <= p < N in one instruction (p + 1 wraps correctly from p = -1); the
      // addresses use the signed indices (z[p + 1] is z[p]'s address + one element).
      const int s = r0i + 2 * c;
      const int p = s + m, q = s - m;
      const unsigned up = static_cast<unsigned>(p), uq = static_cast<unsigned>(q);
      if (up < n_s && uq < n_s) {
        LWVD_PROF_GMEM("lag.zp", &zb[p], trip, 0);
        LWVD_PROF_GMEM("lag.zq", &zb[q], trip, 0);
        const cplx<scalar_t> zp = load_ro(zb + p), zq = load_ro(zb + q);
        re = zp.re * zq.re + zp.im * zq.im;  // z[p] * conj(z[q])
        im = zp.im * zq.re - zp.re * zq.im;
      }
      if (up + 1 < n_s && uq + 1 < n_s) {
        LWVD_PROF_GMEM("lag.zp", &zb[p + 1], trip, 1);
        LWVD_PROF_GMEM("lag.zq", &zb[q + 1], trip, 1);
        const cplx<scalar_t> zp = load_ro(zb + p + 1), zq = load_ro(zb + q + 1);
        re -= zp.im * zq.re - zp.re * zq.im;  // + i * r_b
        im += zp.re * zq.re + zp.im * zq.im;
      }
    }
    LWVD_PROF_SMEM("lag.store", &rows[c * n + bit_reverse(j, log2n)], trip);
    rows[c * n + bit_reverse(j, log2n)] = cplx<scalar_t>{re, im};
  }
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum(scalar_t v) {
  // Butterfly reduction: a fixed pairing, so every lane ends with the same, reproducible sum.
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// The terms of one (filter, frame) pair over rows [n_a, n_b] of a pass (rows r0 .. r0 + 2CR - 1 in
// shared memory, W[a, k] = 2 Re X[k], W[b, k] = 2 Im X[k] of complex row (s - r0) / 2), with the
// lanes over (row, bin): rows go in groups of up to 32 (at most two: 2CR <= 64); lane L holds row
// g0 + L's bin range (range0 for the first group, range1 for the second, computed by the caller
// before any accumulator is live: bin_range's slow-path calls there cost no spills), a warp scan of the range lengths numbers the group's terms 0 .. total - 1, and each warp trip takes
// 32 consecutive terms, lane e finding its row by a 5-step binary search over the scan (shuffles)
// and its bin from that row's offset. Every lane is busy but in the last trip of a group, whatever
// the ellipse's width; consecutive terms are consecutive bins of one row (conflict-light reads).
// The trip counts are warp-uniform (full-mask shuffles). Each lane's terms add to its own `acc`.
template <typename scalar_t, bool kMoments, int kAcc>
__device__ __forceinline__ void smooth_pair_rows(scalar_t (&acc)[kAcc], const FilterGeometry<scalar_t>& g,
                                                 const cplx<scalar_t>* rows, int n, int64_t r0, int64_t n_a,
                                                 int64_t n_b, int64_t c, int lane, int range0, int range1,
                                                 scalar_t trunc2, scalar_t inv_two_m, [[maybe_unused]] int ftrip,
                                                 [[maybe_unused]] int tt) {
  // The filter's coefficients in registers, once per pair (loaded inside the term loop they were
  // re-read from global memory every trip).
  FilterGeometry<scalar_t> gq;
  gq.center = g.center;
  gq.inv_sigma_t = g.inv_sigma_t;
  gq.inv_sigma_nu = g.inv_sigma_nu;
  gq.rho = g.rho;
  gq.inv_1mr2 = g.inv_1mr2;
  // Row offsets within the pass and from the frame centre fit 32 bits (|d| <= 2N + hop, checked by
  // the plan): 32-bit integer arithmetic in the term loop.
  const int dc0 = static_cast<int>(n_a - c), rr0 = static_cast<int>(n_a - r0);
  LWVD_NO_UNROLL
  for (int64_t g0 = n_a; g0 <= n_b; g0 += kWarpSize) {
    [[maybe_unused]] const int gi = static_cast<int>(g0 - n_a) / kWarpSize;  // profile key
    LWVD_PROF_TRIP("smooth.group", ftrip, tt, gi);
    const int dg = dc0 + gi * kWarpSize, rg = rr0 + gi * kWarpSize;  // d and pass row of lane 0's row
    const int range = gi == 0 ? range0 : range1;  // k_lo | k_hi << 16; empty: k_lo > k_hi
    const int k0 = range & 0xffff, k_hi = range >> 16;
    const int len = k0 <= k_hi ? k_hi - k0 + 1 : 0;
    int incl = len;  // inclusive scan of the lengths over the lanes
    for (int o = 1; o < kWarpSize; o <<= 1) {
      const int y = __shfl_up_sync(kFullMask, incl, o);
      if (lane >= o) incl += y;
    }
    const int total = __shfl_sync(kFullMask, incl, kWarpSize - 1);
    const int off = k0 - (incl - len);  // term e of lane L's row is bin e + off
    LWVD_NO_UNROLL  // rolled: one trip is what the profile's SASS weight counts
    for (int base = 0; base < total; base += kWarpSize) {
      LWVD_PROF_TRIP("smooth.term", ftrip, tt, gi, base / kWarpSize);
      const int e = base + lane;
      int pos = 0;  // the row of term e: the first lane whose inclusive count exceeds e
      for (int step = kWarpSize / 2; step > 0; step >>= 1) {
        const int v = __shfl_sync(kFullMask, incl, pos + step - 1);
        if (v <= e) pos += step;
      }
      const int k = e + __shfl_sync(kFullMask, off, pos);
      if (e < total) {
        const int r = rg + pos;
        const cplx<scalar_t>* row = rows + (r >> 1) * n;
        LWVD_PROF_SMEM("smooth.ldw", &row[k], ftrip, tt, gi, base / kWarpSize);
        const cplx<scalar_t> x = row[k];
        const scalar_t ds = static_cast<scalar_t>(dg + pos);
        const scalar_t v = static_cast<scalar_t>(k) * inv_two_m - gq.center;
        scalar_t qa, qc;  // quad_form's a and c: the moments' coordinates (lwvd_math.cuh)
        const scalar_t q = quad_form(gq, ds, v, &qa, &qc);
        if (q <= trunc2) {
          const scalar_t w = scalar_t(2) * ((r & 1) != 0 ? x.im : x.re);
          const scalar_t we = w * lwvd_exp(scalar_t(-0.5) * q);
          if constexpr (kMoments) add_moment_term(acc, we, qa, qc);
          else acc[0] += we;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward (kMoments = false) and backward moments (kMoments = true).

// The number of frames tt in [0, tt_n) with tt * hop <= x: 0 for x < 0, else min(tt_n, floor(x / hop)
// + 1). The quotient matters only up to tt_n <= 64, so x is clamped to tt_n * hop (< 2^31, the plan
// checks TT * hop) first: then a float estimate x * (1 / hop) is within one of floor(x / hop)
// (relative error < 2^-22 on a quotient <= 64) and one integer correction each way makes it exact
// (products <= 65 hop < 2^32 unsigned). No integer division (about 25 instructions each).
__device__ __forceinline__ int frames_below(int x, unsigned hop, float inv_hop, int tt_n) {
  if (x < 0) return 0;
  const unsigned cap = static_cast<unsigned>(tt_n) * hop;
  const unsigned xc = static_cast<unsigned>(x) < cap ? static_cast<unsigned>(x) : cap;
  unsigned q = static_cast<unsigned>(static_cast<float>(xc) * inv_hop);
  if (q * hop > xc) --q;
  else if ((q + 1) * hop <= xc) ++q;
  const int k = static_cast<int>(q) + 1;
  return k < tt_n ? k : tt_n;
}

template <typename scalar_t>
struct SmoothArgs {
  const cplx<scalar_t>* z;                   // (B, N)
  const FilterGeometry<scalar_t>* geom;      // (F,)
  const int64_t* max_radius;                 // (1,)
  const unsigned* invalid;                   // (1,) written by the prepare kernel
  const cplx<scalar_t>* twiddles;            // (M/2,)
  const scalar_t* grad_out;                  // (B, F, T) G (backward only; null in the forward)
  scalar_t* out;                             // (B, F, T) K, or (B * tiles, F, 6) G-weighted moments
  double* frame_moments;                     // (B, F, T, 6) the moments of every pair (kKeep only; else null)
  int64_t n_samples, n_filters, n_frames, hop, n_fft;
  int64_t frames_per_block, tiles_per_item;  // grid.x = B * tiles_per_item
  int log2_fft;
  int complex_rows;                          // CR: a pass covers 2*CR rows
  double trunc2;
  double inv_two_m;                          // 1 / (2 n_fft), exact (power of two), set on the host
  double inv_hop;                            // 1 / hop (frames_below's estimate), set on the host
  const int* tab_rows;                       // stencil tables of the prepare launch (PrepareArgs)
  const scalar_t* tab_e;
  const scalar_t* tab_c;
  const int* tab_idx;
  int64_t terms_cap, rows_cap;
};

// One term of smooth_pair_table: the table entry's packed index idx = (d + R_f) << kStencilKBits | k
// and weight E (and, for the moments, its c), read by the caller. The pass row of the entry is
// r = row_base + d + R_f, its W the re (r even) or im (r odd) half of complex element (r >> 1) * n + k.
// With S = log2 sizeof(scalar_t): u = (row_base << S) + (idx >> (kStencilKBits - S)) is r << S plus
// k's top S bits (below bit S: no carry), so u & sizeof(scalar_t) is the half's byte offset and
// u >> (S + 1) is r >> 1; one shift-add for r, no parity test and select.
template <typename scalar_t, bool kMoments, int kAcc>
__device__ __forceinline__ void smooth_table_term(scalar_t (&acc)[kAcc], int idx, scalar_t E,
                                                  [[maybe_unused]] scalar_t qc, const cplx<scalar_t>* rows, int n,
                                                  int row_base_s, [[maybe_unused]] scalar_t inv_sigma_t,
                                                  [[maybe_unused]] int radius) {
  constexpr int kMask = (1 << config::kStencilKBits) - 1;
  constexpr int kS = sizeof(scalar_t) == 8 ? 3 : 2;
  static_assert(sizeof(scalar_t) == (1u << kS), "float or double");
  const int u = row_base_s + (idx >> (config::kStencilKBits - kS));  // (r << S) | k >> (13 - S)
  const int elem = (u >> (kS + 1)) * n + (idx & kMask);              // complex element (r >> 1) * n + k
  const scalar_t w = *reinterpret_cast<const scalar_t*>(reinterpret_cast<const char*>(rows + elem) +
                                                          (u & static_cast<int>(sizeof(scalar_t))));
  const scalar_t we = w * E;
  if constexpr (kMoments) {
    const int dr = idx >> config::kStencilKBits;                                  // d + R_f
    const scalar_t qa = mul_rn(static_cast<scalar_t>(dr - radius), inv_sigma_t);  // quad_form's a
    add_moment_term(acc, we, qa, qc);
  } else {
    acc[0] += we;
  }
}

// The profile marks of the lane's entry at offset o of its pair (chunk j of 32 entries; the
// emulator's counters, nothing under nvcc).
#define LWVD_PROF_TABLE_TERM(o, j)                                                                        \
  do {                                                                                                    \
    LWVD_PROF_GMEM("smooth.tidx", &tip[o], ftrip, tt, j);                                                 \
    LWVD_PROF_GMEM("smooth.te", &tep[o], ftrip, tt, j);                                                   \
    LWVD_PROF_SMEM("smooth.tldw",                                                                         \
                   rows + (((row_base + (tip[o] >> config::kStencilKBits)) >> 1) << log2n) +              \
                       (tip[o] & ((1 << config::kStencilKBits) - 1)),                                     \
                   ftrip, tt, j);                                                                         \
    if constexpr (kMoments) LWVD_PROF_GMEM("smooth.tc", &tcp[o], ftrip, tt, j);                           \
  } while (0)

// The terms of one (filter, frame) pair over rows [n_a, n_b] of a pass from the filter's stencil table
// (PrepareArgs, stencil_table_block): the rows' terms are entries [e_lo, e_hi) of the table, in the
// order (d, k), read in chunks of 32 consecutive entries (one per lane: coalesced): no scan, no search,
// no bin_range, no exp. The warp trips take two chunks each (lane L: entries e_lo + 64 i + L and
// + 32; the loop's counter, test and branch and the address arithmetic shared by the two), then one
// single full chunk when their number is odd, both without a bounds test, and the last (partial)
// chunk with it. The lane's pointers into the table are formed once per pair, before the trips. Each
// lane adds W * E (forward) or the moment terms of W * E to its own `acc`, entry after entry (the
// same order in the forward and the moments kernel: K is bitwise equal); the caller doubles the sums
// (W = 2 Re/Im X: scaling by 2 is exact, so the sums are bitwise those of the 2x terms). Entry indices
// are 32-bit into the whole table (F * terms_cap < 2^31, launch_config.h). n = n_fft from the
// arguments, not 1 << log2n: a multiply-add forms (r >> 1) * n + k (a shift and an add otherwise).
template <typename scalar_t, bool kMoments, int kAcc>
__device__ __forceinline__ void smooth_pair_table(scalar_t (&acc)[kAcc], const scalar_t* __restrict__ te,
                                                  const scalar_t* __restrict__ tc, const int* __restrict__ ti,
                                                  unsigned toff, int e_lo, int e_hi, const cplx<scalar_t>* rows,
                                                  [[maybe_unused]] int log2n, int n, int row_base,
                                                  scalar_t inv_sigma_t, int radius,
                                                  int lane, [[maybe_unused]] int ftrip, [[maybe_unused]] int tt) {
  const unsigned g0 = toff + static_cast<unsigned>(e_lo + lane);
  const int row_base_s = row_base * static_cast<int>(sizeof(scalar_t));  // smooth_table_term's u
  const int cnt = e_hi - e_lo;
  const int full = cnt / kWarpSize;  // chunks of 32 entries
  const unsigned g_end = g0 + static_cast<unsigned>((full >> 1) * (2 * kWarpSize));  // after the trips of two
  LWVD_NO_UNROLL  // rolled: one trip is what the profile's SASS weight counts
  for (unsigned ge = g0; ge < g_end; ge += 2 * kWarpSize) {
    [[maybe_unused]] const int i = static_cast<int>((ge - g0) / (2 * kWarpSize));  // profile key
    LWVD_PROF_TRIP("smooth.tterm", ftrip, tt, i);
    const int* __restrict__ tip = ti + ge;  // one wide address per table and trip, + 32 entries as an offset
    const scalar_t* __restrict__ tep = te + ge;
    [[maybe_unused]] const scalar_t* __restrict__ tcp = tc + ge;
    LWVD_PROF_TABLE_TERM(0, 2 * i);
    LWVD_PROF_TABLE_TERM(kWarpSize, 2 * i + 1);
    const int idx0 = tip[0], idx1 = tip[kWarpSize];
    const scalar_t e0 = tep[0], e1 = tep[kWarpSize];
    scalar_t c0 = 0, c1 = 0;
    if constexpr (kMoments) {
      c0 = tcp[0];
      c1 = tcp[kWarpSize];
    }
    smooth_table_term<scalar_t, kMoments>(acc, idx0, e0, c0, rows, n, row_base_s, inv_sigma_t, radius);
    smooth_table_term<scalar_t, kMoments>(acc, idx1, e1, c1, rows, n, row_base_s, inv_sigma_t, radius);
  }
  if (full & 1) {  // the single chunk
    LWVD_PROF_TRIP("smooth.tterm1", ftrip, tt);
    const int* __restrict__ tip = ti + g_end;
    const scalar_t* __restrict__ tep = te + g_end;
    [[maybe_unused]] const scalar_t* __restrict__ tcp = tc + g_end;
    LWVD_PROF_TABLE_TERM(0, full - 1);
    const scalar_t c0 = kMoments ? tcp[0] : scalar_t(0);
    smooth_table_term<scalar_t, kMoments>(acc, tip[0], tep[0], c0, rows, n, row_base_s, inv_sigma_t, radius);
  }
  if (full * kWarpSize + lane < cnt) {  // the partial chunk
    LWVD_PROF_TRIP("smooth.ttail", ftrip, tt);
    const unsigned ge = g0 + static_cast<unsigned>(full * kWarpSize);
    const int* __restrict__ tip = ti + ge;
    const scalar_t* __restrict__ tep = te + ge;
    [[maybe_unused]] const scalar_t* __restrict__ tcp = tc + ge;
    LWVD_PROF_TABLE_TERM(0, full);
    const scalar_t c0 = kMoments ? tcp[0] : scalar_t(0);
    smooth_table_term<scalar_t, kMoments>(acc, tip[0], tep[0], c0, rows, n, row_base_s, inv_sigma_t, radius);
  }
}
#undef LWVD_PROF_TABLE_TERM

// kSmoothThreads = 512 threads, min 1 block per SM: a 128-register budget, as the former
// (256 threads, min 2) that keeps ptxas from the 48-register allocation which spilled 4 B on sm_90
// around bin_range's slow-path calls of the fallback path (and 8 B in smooth<double, moments> on sm_120
// with a min of 3). 72-98 registers (tools/resource_report.py): one 512-thread block per SM on sm_80 /
// sm_90 (registers; configuration S has 104 blocks, one per SM anyway) and on sm_86/89/120 (96 KiB of
// rows, 100 KiB per SM).
//
// kKeep (with kMoments; lwvd_fwd_moments, the training forward): K as the forward writes it (from the
// moments' S0, summed in the forward's order: bitwise the forward's K) and the six moments of every
// (item, filter, frame) in float64 to frame_moments, for lwvd_bwd_moments (one pass over the W rows
// per training step instead of two).
template <typename scalar_t, bool kMoments, bool kKeep = false>
__global__ void __launch_bounds__(config::kSmoothThreads, 1) lwvd_smooth_kernel(const SmoothArgs<scalar_t> a) {
  static_assert(kMoments || !kKeep, "kKeep keeps the moments: it needs kMoments");
  LWVD_DYNAMIC_SMEM(cplx<scalar_t>, rows);
  constexpr int kAcc = kMoments ? config::kMoments : 1;
  constexpr bool kGrad = kMoments && !kKeep;  // the backward's G-weighted per-block sums
  // 32-bit index arithmetic where the plan guarantees it fits (grid < 2^31 blocks, F * TT < 2^31):
  // a 64-bit division is a subroutine call in SASS, and its calling convention costs spills.
  const unsigned tiles = static_cast<unsigned>(a.tiles_per_item);
  const int64_t b = blockIdx.x / tiles;
  const int64_t tile = blockIdx.x % tiles;
  const int tt_count = static_cast<int>(a.frames_per_block);
  const int64_t t0 = tile * tt_count;
  const int64_t t_last = imin(a.n_frames - 1, t0 + tt_count - 1);
  const int t0i = static_cast<int>(t0), tt_n = static_cast<int>(t_last - t0) + 1;  // frames of the tile
  const int hop = static_cast<int>(a.hop);
  const unsigned uhop = static_cast<unsigned>(hop);
  const float inv_hop = static_cast<float>(a.inv_hop);
  const int c0 = t0i * hop;  // the tile's first frame centre
  if (*a.invalid) {  // invalid parameters: this block's outputs are NaN (block-uniform: no barrier is skipped)
    if (kGrad) {
      const int64_t o = static_cast<int64_t>(blockIdx.x) * a.n_filters * kAcc;
      fill_nan(a.out, o, o + a.n_filters * kAcc);
    } else {
      for (int64_t f = 0; f < a.n_filters; ++f) {
        const int64_t o = (b * a.n_filters + f) * a.n_frames;
        fill_nan(a.out, o + t0, o + t_last + 1);
        if (kKeep) fill_nan(a.frame_moments, (o + t0) * kAcc, (o + t_last + 1) * kAcc);
      }
    }
    return;
  }
  const int64_t radius = *a.max_radius;
  const int64_t row_lo = imax(0, t0 * a.hop - radius);
  const int64_t row_hi = imin(a.n_samples - 1, t_last * a.hop + radius);
  const int rows_per_pass = 2 * a.complex_rows;
  const cplx<scalar_t>* zb = a.z + b * a.n_samples;
  const int n = 1 << a.log2_fft;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int nwarps = config::kSmoothWarps;  // blockDim.x == config::kSmoothThreads (the plan launches that)
  const scalar_t trunc2 = static_cast<scalar_t>(a.trunc2);
  // bin_frequency(k) = k / (2M); 2M is a power of two, so k * (1 / 2M) is the same number, bit for
  // bit, without a division in the innermost loop.
  // (taken from the host: a division here would be a SASS subroutine call)
  const scalar_t inv_two_m = static_cast<scalar_t>(a.inv_two_m);

  // Passes start at r0 = row_lo, row_lo + 2*CR, ...; at least one pass runs, so that every output of
  // the tile is written even when no row is in reach (row_hi < row_lo). Few loop-carried values:
  // every register live across the bin_range slow-path calls is one that ptxas may have to spill.
  for (int64_t r0 = row_lo;; r0 += rows_per_pass) {
    LWVD_PROF_TRIP("smooth.pass");
    const bool first = r0 == row_lo;
    const bool last = r0 + rows_per_pass > row_hi;
    const int64_t pass_hi = imin(row_hi, r0 + rows_per_pass - 1);
    const int r0i = static_cast<int>(r0), phi = static_cast<int>(pass_hi);
    build_lag_rows<config::kSmoothThreads>(rows, a.complex_rows, a.log2_fft, zb, a.n_samples, r0);
    __syncthreads();
    block_fft_rows<config::kSmoothThreads>(rows, a.complex_rows, a.log2_fft, a.twiddles);  // ends with __syncthreads

    // Pairs (f, tt): warp w takes the filters f = w, w + nwarps, ... and each of their frames in the
    // tile, so one warp sees all of a filter's frames (the backward sums them, G-weighted, in
    // registers). Trip counts are warp-uniform: all 32 lanes run the same trips, so the shuffles see
    // full warps.
    for (int f = warp; f < static_cast<int>(a.n_filters); f += nwarps) {
      [[maybe_unused]] const int ftrip = (f - warp) / nwarps;  // profile key
      LWVD_PROF_TRIP("smooth.filter", ftrip);
      const FilterGeometry<scalar_t>& g = a.geom[f];
      const int d_radius = static_cast<int>(g.d_radius);
      // backward: per lane, sum over this pass's frames of G[b, f, t] * the lane's moment sums(f, t);
      // warp-summed once per filter and pass (below), not once per pair
      scalar_t gacc[kAcc];
      for (int i = 0; i < kAcc; ++i) gacc[i] = 0;
      bool any_rows = false;  // warp-uniform: a pair of this filter had rows in this pass
      // The frames whose reach [c - R_f, c + R_f] meets the pass rows [r0, phi] (c = (t0 + tt) hop):
      // c + R_f >= r0 and c - R_f <= phi, a range [tt_lo, tt_end) computed per filter and pass
      // (frames_in_reach) instead of a test per frame of the tile. (The pair's own test below stays:
      // with no row in the pass at all, phi < r0, it skips.)
      const int tt_lo = frames_below(r0i - d_radius - c0 - 1, uhop, inv_hop, tt_n);  // c + R_f < r0
      const int tt_end = frames_below(phi + d_radius - c0, uhop, inv_hop, tt_n);     // c - R_f <= phi
      for (int tt = tt_lo; tt < tt_end; ++tt) {
        LWVD_PROF_TRIP("smooth.pair", ftrip, tt);
        // 32-bit: frame centres, rows and c +- R stay below 2^31 (the plan checks
        // TT * hop + 2 * d_limit + 2 n_fft < 2^31)
        const int t = t0i + tt;
        const int c = t * hop;
        const int n_a = r0i > c - d_radius ? r0i : c - d_radius;
        const int n_b = phi < c + d_radius ? phi : c + d_radius;
        if (n_a > n_b) continue;  // no row of this pass is in the pair's reach: nothing to add
        scalar_t acc[kAcc];
        // The filter's stencil table, or on-the-fly terms when it has none (rows[0] = -1: did not fit;
        // warp-uniform). Read per pair (an L1 hit), and the table pointers formed here: nothing more
        // stays live across bin_range's slow-path calls of the fallback (registers that ptxas spills).
        if (a.tab_rows[f * (a.rows_cap + 1)] >= 0) {
          LWVD_PROF_TRIP("smooth.tpair", ftrip, tt);
          // Entries of lags n_a - c .. n_b - c (R_f = d_radius: the table's lag offset)
          const int* trows = a.tab_rows + f * (a.rows_cap + 1);
          const int e_lo = trows[n_a - c + d_radius], e_hi = trows[n_b - c + d_radius + 1];
          for (int i = 0; i < kAcc; ++i) acc[i] = 0;
          smooth_pair_table<scalar_t, kMoments>(acc, a.tab_e, a.tab_c, a.tab_idx,
                                                static_cast<unsigned>(f) * static_cast<unsigned>(a.terms_cap),
                                                e_lo, e_hi, rows, a.log2_fft, static_cast<int>(a.n_fft),
                                                c - d_radius - r0i, g.inv_sigma_t, d_radius, lane, ftrip, tt);
          for (int i = 0; i < kAcc; ++i) acc[i] = scalar_t(2) * acc[i];  // W = 2 Re/Im X (exact)
        } else {
          LWVD_PROF_TRIP("smooth.pairwork", ftrip, tt);
          // Bin ranges of the pair's rows in this pass (at most 2*kMaxComplexRows = 64 rows), one or
          // two per lane, each packed in one int (k_lo | k_hi << 16; bins < 8192 fit 13 bits),
          // computed before the pair's accumulators exist: bin_range's double division and sqrt have
          // out-of-line slow paths in SASS, and keeping those calls away from live accumulators keeps
          // the kernel free of register spills.
          static_assert(2 * config::kMaxComplexRows <= 2 * kWarpSize, "two rows per lane at most");
          int range0 = 1, range1 = 1;  // empty: k_lo = 1 > k_hi = 0
          {
            int64_t k_lo, k_hi;
            if (n_a + lane <= n_b) {
              LWVD_PROF_TRIP("smooth.binrange", ftrip, tt);
              bin_range(g, n_a + lane - c, a.trunc2, a.n_fft, &k_lo, &k_hi);
              range0 = static_cast<int>(k_lo) | (static_cast<int>(k_hi) << 16);
            }
            if (n_a + lane + kWarpSize <= n_b) {
              LWVD_PROF_TRIP("smooth.binrange2", ftrip, tt);
              bin_range(g, n_a + lane + kWarpSize - c, a.trunc2, a.n_fft, &k_lo, &k_hi);
              range1 = static_cast<int>(k_lo) | (static_cast<int>(k_hi) << 16);
            }
          }
          for (int i = 0; i < kAcc; ++i) acc[i] = 0;
          smooth_pair_rows<scalar_t, kMoments>(acc, g, rows, n, r0, n_a, n_b, c, lane, range0, range1, trunc2,
                                               inv_two_m, ftrip, tt);
        }
        {
          LWVD_PROF_TRIP("smooth.pairsum", ftrip, tt);
          if constexpr (kGrad) {
            const scalar_t G = a.grad_out[(b * a.n_filters + f) * a.n_frames + t];
            for (int i = 0; i < kAcc; ++i) gacc[i] += G * acc[i];
            any_rows = true;
          } else {
            for (int i = 0; i < kAcc; ++i) acc[i] = warp_sum(acc[i]);  // every lane holds the sums
          }
          if (!kGrad && lane == 0) {
            LWVD_PROF_TRIP("smooth.out", ftrip, tt);
            // The pair's first and last pass with rows in reach (every pair has one: R >= its radius).
            const bool pair_first = first || c - d_radius >= r0i;
            const bool pair_last = last || c + d_radius <= phi;
            const int64_t o = (b * a.n_filters + f) * a.n_frames + t;
            scalar_t v = pair_first ? acc[0] : a.out[o] + acc[0];
            if (pair_last) v *= g.norm;
            a.out[o] = v;
            if constexpr (kKeep) {  // the pair's moments, summed over its passes in float64
              LWVD_PROF_TRIP("smooth.kout", ftrip, tt);
              double* m = a.frame_moments + o * kAcc;
              for (int i = 0; i < kAcc; ++i)
                m[i] = pair_first ? static_cast<double>(acc[i]) : m[i] + static_cast<double>(acc[i]);
            }
          }
        }
      }
      if (kGrad && any_rows) {
        LWVD_PROF_TRIP("smooth.gsum", ftrip);
        for (int i = 0; i < kAcc; ++i) gacc[i] = warp_sum(gacc[i]);  // every lane holds the sums
      }
      if (kGrad && lane == 0) {
        // Backward: the block's G-weighted moments of filter f, summed over its frames and passes
        // (written every pass, so the first pass initialises them): (B * tiles, F, 6) in all, not
        // (B, F, T, 6) (issue 12 item 7). The parameter gradients are linear in the moments
        // (param_grads_from_moments), so the grad_z launch sums these over the blocks and applies
        // the formulas once per filter.
        LWVD_PROF_TRIP("smooth.gout", ftrip);
        scalar_t* dst = a.out + (static_cast<int64_t>(blockIdx.x) * a.n_filters + f) * kAcc;
        for (int i = 0; i < kAcc; ++i) dst[i] = first ? gacc[i] : dst[i] + gacc[i];
      }
    }
    __syncthreads();  // the next pass overwrites the rows
    if (last) break;
  }
}

}  // namespace lwvd
