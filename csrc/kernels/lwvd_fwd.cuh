// lwvd_fwd.cuh — forward kernels: per-call preparation and the fused WVD + smoothing kernel.
//
// Shapes (all contiguous, 64-bit indexing):
//   z      (B, N, 2) scalar_t   the analytic signal, complex as interleaved (re, im)
//   params (F,)      scalar_t   center, sigma_t, sigma_nu, rho
//   out    (B, F, T) scalar_t   K[b, f, t]                          (forward)
//          (B, F, T, 6)         raw moments S0, Sa, Sc, Saa, Sac, Scc (backward, kMoments = true;
//                               a = d / sigma_t, c = b - rho a: lwvd_math.cuh, add_moment_term)
// scalar_t is float or double. The host-side sequence of launches is lwvd_plan.cuh.
//
// Algorithm (docs/design.md, docs/cuda_kernels.md): a block owns frames [t0, t0 + TT) of one batch
// item (output-stationary) and walks the rows n those frames can reach (|n - t*hop| <= R, R the
// largest filter radius) in passes of 2*CR rows. A pass builds CR complex lag rows
// r_a[m] + i r_b[m] (two Hermitian rows per complex row) in shared memory, bit-reversed, FFTs them
// (fft.cuh) and so holds W[a, k] = 2 Re X[k], W[b, k] = 2 Im X[k]. Then each warp takes (filter,
// frame) pairs and sums W * exp(-q/2) over that filter's ellipse rows in the pass, lanes striding
// over the bins of bin_range(d) (consecutive k: conflict-free shared reads). The warp's sum is reduced
// by shuffles in a fixed order and added by lane 0 to the pair's output: the block owns that output,
// the same lane of the same warp updates it every pass, so there are no atomics and the result is
// bitwise reproducible. The (B, N, M) WVD never leaves shared memory.
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
};

template <typename scalar_t>
__global__ void __launch_bounds__(config::kPrepThreads) lwvd_prepare_kernel(const PrepareArgs<scalar_t> a) {
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

// rows[c] (c < complex_rows) receives, bit-reversed, the lag row of samples a = r0 + 2c and b = a+1:
//   x[m mod M] = r_a[m] + i r_b[m],  r_n[m] = z[n+m] conj(z[n-m]),  |m| <= M/2 - 1, x[M/2] = 0,
// with z = 0 outside [0, N). Its DFT is R_a + i R_b with R_a, R_b real (Hermitian rows).
template <int kBlockThreads, typename scalar_t>
__device__ __forceinline__ void build_lag_rows(cplx<scalar_t>* rows, int complex_rows, int log2n,
                                               const cplx<scalar_t>* __restrict__ zb, int64_t n_samples,
                                               int64_t r0) {
  const int n = 1 << log2n;
  const int total = complex_rows * n;
  LWVD_NO_UNROLL
  for (int i = static_cast<int>(threadIdx.x); i < total; i += kBlockThreads) {
    [[maybe_unused]] const int trip = (i - static_cast<int>(threadIdx.x)) / kBlockThreads;  // profile key
    LWVD_PROF_TRIP("lag.entry", trip);
    const int c = i >> log2n;
    const int j = i & (n - 1);
    const int64_t m = j < n / 2 ? j : j - n;  // j == n/2 is the unused lag M/2
    scalar_t re = 0, im = 0;
    if (j != n / 2) {
      const int64_t sa = r0 + 2 * c;
      for (int h = 0; h < 2; ++h) {
        const int64_t s = sa + h;
        const int64_t p = s + m, q = s - m;
        scalar_t pr = 0, pi = 0;
        if (p >= 0 && p < n_samples && q >= 0 && q < n_samples) {
          LWVD_PROF_GMEM("lag.zp", &zb[p], trip, h);
          LWVD_PROF_GMEM("lag.zq", &zb[q], trip, h);
          const cplx<scalar_t> zp = zb[p], zq = zb[q];
          pr = zp.re * zq.re + zp.im * zq.im;  // z[p] * conj(z[q])
          pi = zp.im * zq.re - zp.re * zq.im;
        }
        if (h == 0) { re += pr; im += pi; }   // + r_a
        else { re -= pi; im += pr; }          // + i * r_b
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

// ---------------------------------------------------------------------------------------------
// Forward (kMoments = false) and backward moments (kMoments = true).

template <typename scalar_t>
struct SmoothArgs {
  const cplx<scalar_t>* z;                   // (B, N)
  const FilterGeometry<scalar_t>* geom;      // (F,)
  const int64_t* max_radius;                 // (1,)
  const unsigned* invalid;                   // (1,) written by the prepare kernel
  const cplx<scalar_t>* twiddles;            // (M/2,)
  scalar_t* out;                             // (B, F, T) or (B, F, T, 6)
  int64_t n_samples, n_filters, n_frames, hop, n_fft;
  int64_t frames_per_block, tiles_per_item;  // grid.x = B * tiles_per_item
  int log2_fft;
  int complex_rows;                          // CR: a pass covers 2*CR rows
  double trunc2;
  double inv_two_m;                          // 1 / (2 n_fft), exact (power of two), set on the host
};

template <typename scalar_t, bool kMoments>
__global__ void __launch_bounds__(config::kThreads) lwvd_smooth_kernel(const SmoothArgs<scalar_t> a) {
  LWVD_DYNAMIC_SMEM(cplx<scalar_t>, rows);
  constexpr int kAcc = kMoments ? config::kMoments : 1;
  // 32-bit index arithmetic where the plan guarantees it fits (grid < 2^31 blocks, F * TT < 2^31):
  // a 64-bit division is a subroutine call in SASS, and its calling convention costs spills.
  const unsigned tiles = static_cast<unsigned>(a.tiles_per_item);
  const int64_t b = blockIdx.x / tiles;
  const int64_t tile = blockIdx.x % tiles;
  const int tt_count = static_cast<int>(a.frames_per_block);
  const int64_t t0 = tile * tt_count;
  const int64_t t_last = imin(a.n_frames - 1, t0 + tt_count - 1);
  if (*a.invalid) {  // invalid parameters: this block's outputs are NaN (block-uniform: no barrier is skipped)
    for (int64_t f = 0; f < a.n_filters; ++f) {
      const int64_t o = (b * a.n_filters + f) * a.n_frames;
      fill_nan(a.out, (o + t0) * kAcc, (o + t_last + 1) * kAcc);
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
  const int nwarps = config::kWarps;  // blockDim.x == config::kThreads (the plan launches that)
  const scalar_t trunc2 = static_cast<scalar_t>(a.trunc2);
  const int pairs = static_cast<int>(a.n_filters) * tt_count;
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
    build_lag_rows<config::kThreads>(rows, a.complex_rows, a.log2_fft, zb, a.n_samples, r0);
    __syncthreads();
    block_fft_rows<config::kThreads>(rows, a.complex_rows, a.log2_fft, a.twiddles);  // ends with __syncthreads

    // Pairs are warp-uniform: all 32 lanes run the same loop trips, so the shuffles see full warps.
    // Pair p = f * TT + tt, visited as p = warp, warp + nwarps, ...; (f, tt) is advanced without a
    // division (one that stays live across the loop is what ptxas spilled).
    int f_cur = 0, tt_cur = warp;
    while (tt_cur >= tt_count) { tt_cur -= tt_count; ++f_cur; }
    for (int p = warp; p < pairs; p += nwarps) {
      [[maybe_unused]] const int ptrip = (p - warp) / nwarps;  // profile key
      LWVD_PROF_TRIP("smooth.pair", ptrip);
      const int64_t f = f_cur;
      const int64_t t = t0 + tt_cur;
      tt_cur += nwarps;
      while (tt_cur >= tt_count) { tt_cur -= tt_count; ++f_cur; }
      if (t >= a.n_frames) continue;
      const FilterGeometry<scalar_t>& g = a.geom[f];
      const int64_t c = t * a.hop;
      const int64_t n_a = imax(r0, c - g.d_radius);
      const int64_t n_b = imin(pass_hi, c + g.d_radius);
      // Bin ranges of the pair's rows in this pass (at most 2*kMaxComplexRows = 64 rows), one or two
      // per lane, computed before the accumulation loop: bin_range's double division and sqrt have
      // out-of-line slow paths in SASS, and keeping those calls out of the loop that holds the
      // accumulators is what keeps every kernel free of register spills.
      static_assert(2 * config::kMaxComplexRows <= 2 * kWarpSize, "two rows per lane at most");
      // Each range packed in one int (k_lo | k_hi << 16; bins < 8192 fit 13 bits): one shuffle per row.
      int range0 = 1, range1 = 1;  // empty: k_lo = 1 > k_hi = 0
      {
        int64_t k_lo, k_hi;
        if (n_a + lane <= n_b) {
          LWVD_PROF_TRIP("smooth.binrange", ptrip);
          bin_range(g, n_a + lane - c, a.trunc2, a.n_fft, &k_lo, &k_hi);
          range0 = static_cast<int>(k_lo) | (static_cast<int>(k_hi) << 16);
        }
        if (n_a + lane + kWarpSize <= n_b) {
          LWVD_PROF_TRIP("smooth.binrange2", ptrip);
          bin_range(g, n_a + lane + kWarpSize - c, a.trunc2, a.n_fft, &k_lo, &k_hi);
          range1 = static_cast<int>(k_lo) | (static_cast<int>(k_hi) << 16);
        }
      }
      scalar_t acc[kAcc];
      for (int i = 0; i < kAcc; ++i) acc[i] = 0;
      for (int64_t s = n_a; s <= n_b; ++s) {
        const int idx = static_cast<int>(s - n_a);  // warp-uniform: full-mask shuffles are safe
        LWVD_PROF_TRIP("smooth.row", idx);
        // idx is warp-uniform, so every lane picks the same register before the one shuffle
        const int range = __shfl_sync(kFullMask, idx < kWarpSize ? range0 : range1, idx & (kWarpSize - 1));
        const int k_lo = range & 0xffff;
        const int k_hi = range >> 16;
        const int64_t d = s - c;
        const int r = static_cast<int>(s - r0);
        const cplx<scalar_t>* row = rows + (r >> 1) * n;
        const bool odd = (r & 1) != 0;
        const scalar_t ds = static_cast<scalar_t>(d);
        LWVD_NO_UNROLL  // rolled: ~1 trip per row at typical widths; the profile weighs one trip
        for (int k = k_lo + lane; k <= k_hi; k += kWarpSize) {
          LWVD_PROF_TRIP("smooth.bin", idx, (k - k_lo) / kWarpSize);
          LWVD_PROF_SMEM("smooth.ldw", &row[k], idx, (k - k_lo) / kWarpSize);
          const cplx<scalar_t> x = row[k];  // before the q test: the load is issued for every lane
          const scalar_t v = static_cast<scalar_t>(k) * inv_two_m - g.center;
          scalar_t qa, qc;  // quad_form's a and c: the moments' coordinates
          const scalar_t q = quad_form(g, ds, v, &qa, &qc);
          if (q <= trunc2) {
            const scalar_t w = scalar_t(2) * (odd ? x.im : x.re);
            const scalar_t we = w * lwvd_exp(scalar_t(-0.5) * q);
            if constexpr (kMoments) add_moment_term(acc, we, qa, qc);
            else acc[0] += we;
          }
        }
      }
      for (int i = 0; i < kAcc; ++i) acc[i] = warp_sum(acc[i]);
      if (lane == 0) {
        LWVD_PROF_TRIP("smooth.out", ptrip);
        const int64_t o = (b * a.n_filters + f) * a.n_frames + t;
        if (kMoments) {
          scalar_t* dst = a.out + o * config::kMoments;
          for (int i = 0; i < kAcc; ++i) dst[i] = first ? acc[i] : dst[i] + acc[i];
        } else {
          scalar_t v = first ? acc[0] : a.out[o] + acc[0];
          if (last) v *= g.norm;
          a.out[o] = v;
        }
      }
    }
    __syncthreads();  // the next pass overwrites the rows
    if (last) break;
  }
}

}  // namespace lwvd
