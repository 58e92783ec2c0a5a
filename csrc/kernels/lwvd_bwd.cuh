// lwvd_bwd.cuh — backward kernels (docs/design.md, "Backward").
//
// Shapes (contiguous, 64-bit indexing):
//   grad_out (B, F, T)     scalar_t   G = dL/dK
//   moments  (P, F, 6)     scalar_t   per moments block (P = B * ceil(T / TT)): sum over its frames of
//                                     G * (S0, Sa, Sc, Saa, Sac, Scc) (lwvd_smooth_kernel<.., true>; lwvd_math.cuh)
//   grad_*   (F,)          scalar_t   parameter gradients
//   z, grad_z (B, N, 2)    scalar_t   complex as interleaved (re, im)
//
// One launch (lwvd_grad_z_kernel, 512 threads per block): block i builds grad_z tile i, then the
// parameter gradients of filters i, i + grid, ...
//
// Parameter gradients: a block sums filter f's G-weighted moments over the moments launch's blocks
// (parts) with a fixed thread->part map and a fixed shared-memory tree (deterministic, no float
// atomics) and maps the sums to dK/dtheta once (param_grads_from_moments: linear in the moments).
//
// grad_z: a block owns samples [j0, j0 + J) of one batch item (output-stationary) and walks the rows
// n within h = M/2 - 1 of them in passes of 2*CR rows. A pass builds A[n, k] = sum_{f,t} G norm E,
// FFTs it, recovers Ahat of both rows from X[m] and X[-m], and each thread adds
// 4 * z[2n - j] * conj(Ahat[n, j - n]) to the samples j it owns. The thread that owns j is the only
// writer of grad_z[j]: no atomics, bitwise reproducible. A is built on the window path (a thread per
// (row, 16-bin window) item, summing in registers over the filters that cover its window, from the
// prepare launch's window tables; stored bit-reversed) or, when some filter has no window table or a
// window's filter list overflows, on the scatter path (two real rows per complex row and per warp,
// half a warp each; natural order, then permuted to bit-reversed). docs/cuda_kernels.md, "grad_z".
#pragma once

#include "cuda_compat.cuh"
#include "fft.cuh"
#include "launch_config.h"
#include "lwvd_math.cuh"

namespace lwvd {

template <typename scalar_t>
struct ParamGradArgs {
  const scalar_t* moments;                // (parts, F, 6): G-weighted moments per smooth block (lwvd_fwd.cuh)
  const FilterGeometry<scalar_t>* geom;   // (F,)
  scalar_t* grad_center;                  // (F,) out
  scalar_t* grad_sigma_t;
  scalar_t* grad_sigma_nu;
  scalar_t* grad_rho;
  int64_t parts, n_filters;               // parts = B * tiles of the moments launch
  // kFrameMoments (lwvd_bwd_moments): the forward's moments of every (item, filter, frame) instead
  const double* frame_moments;            // (B, F, T, 6) float64 (lwvd_smooth_kernel<.., true, true>)
  const scalar_t* grad_out;               // (B, F, T) G
  int64_t batch, n_frames;                // B * T < 2^31 (the plan checks)
};

// The gradients of filter f, by one block of kReduceThreads threads: the sum over the moments
// launch's blocks of its G-weighted moments, in a fixed thread->part map and a fixed shared-memory
// tree (deterministic, no float atomics), then dK/dtheta from those sums (param_grads_from_moments,
// lwvd_math.cuh: linear in the moments, so sum-then-map is the per-frame formula summed over frames).
// `red` is kMoments * kReduceThreads scalars at the start of the launch's dynamic shared memory.
// kFrameMoments: the sum over (item, frame) pairs j = b * T + t of G[b, f, t] * moments(b, f, t) (G
// rounded to scalar_t products as the moments kernel forms them; frames with G = 0 skipped, as on the
// CPU: they add exactly 0 even where a moment is NaN), in the same fixed map and tree.
template <typename scalar_t, bool kFrameMoments = false>
__device__ __forceinline__ void param_grad_block(const ParamGradArgs<scalar_t>& a, int64_t f, unsigned invalid) {
  LWVD_DYNAMIC_SMEM(scalar_t, red_flat);
  scalar_t(*red)[config::kReduceThreads] = reinterpret_cast<scalar_t(*)[config::kReduceThreads]>(red_flat);
  const int tid = static_cast<int>(threadIdx.x);
  if (invalid) {  // invalid parameters: NaN gradients (lwvd_fwd.cuh, kInvalid*)
    if (tid == 0)
      a.grad_center[f] = a.grad_sigma_t[f] = a.grad_sigma_nu[f] = a.grad_rho[f] = static_cast<scalar_t>(NAN);
    return;
  }
  constexpr int kM = config::kMoments;
  scalar_t acc[kM];
  for (int i = 0; i < kM; ++i) acc[i] = 0;
  if constexpr (kFrameMoments) {
    const unsigned frames = static_cast<unsigned>(a.n_frames);
    const unsigned pairs = static_cast<unsigned>(a.batch) * frames;
    for (unsigned j = static_cast<unsigned>(tid); j < pairs; j += config::kReduceThreads) {
      LWVD_PROF_TRIP("pg.fterm", (j - static_cast<unsigned>(tid)) / config::kReduceThreads);
      const unsigned b = j / frames, t = j - b * frames;
      const int64_t o = (static_cast<int64_t>(b) * a.n_filters + f) * a.n_frames + t;
      const scalar_t G = a.grad_out[o];
      if (G == scalar_t(0)) continue;
      const double* m = a.frame_moments + o * kM;
      for (int i = 0; i < kM; ++i) acc[i] += G * static_cast<scalar_t>(m[i]);
    }
  } else {
    for (int64_t j = tid; j < a.parts; j += config::kReduceThreads) {
      LWVD_PROF_TRIP("pg.term", (j - tid) / config::kReduceThreads);
      const scalar_t* m = a.moments + (j * a.n_filters + f) * kM;
      for (int i = 0; i < kM; ++i) acc[i] += m[i];
    }
  }
  for (int i = 0; i < kM; ++i) red[i][tid] = acc[i];
  __syncthreads();
  for (int s = config::kReduceThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      LWVD_PROF_TRIP("pg.reduce");
      for (int i = 0; i < kM; ++i) red[i][tid] += red[i][tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    LWVD_PROF_TRIP("pg.formula");
    const FilterGeometry<scalar_t> g = a.geom[f];
    scalar_t m[kM], dk[4];
    for (int i = 0; i < kM; ++i) m[i] = red[i][0];
    // The reciprocals of make_filter: no division (a SASS subroutine call).
    param_grads_from_moments(m, g.norm, g.inv_sigma_t, g.inv_sigma_nu, g.rho, g.inv_1mr2, dk);
    a.grad_center[f] = dk[0];
    a.grad_sigma_t[f] = dk[1];
    a.grad_sigma_nu[f] = dk[2];
    a.grad_rho[f] = dk[3];
  }
}

template <typename scalar_t>
struct GradZArgs {
  const cplx<scalar_t>* z;                   // (B, N)
  const scalar_t* grad_out;                  // (B, F, T)
  const FilterGeometry<scalar_t>* geom;      // (F,)
  const int64_t* max_radius;                 // (1,)
  const cplx<scalar_t>* twiddles;            // (M/2,)
  cplx<scalar_t>* grad_z;                    // (B, N) out
  int64_t n_samples, n_filters, n_frames, hop, n_fft;
  int64_t tile, tiles_per_item;              // grid.x = B * tiles_per_item
  int log2_fft;
  int complex_rows;
  double trunc2;
  double inv_two_m;                          // 1 / (2 n_fft), exact, set on the host
  double inv_hop;                            // 1 / hop (an estimate; corrected exactly in integers)
  const int* tab_rows;                       // stencil tables of the prepare launch (lwvd_fwd.cuh PrepareArgs)
  const scalar_t* tab_e;
  const int* tab_idx;
  int64_t terms_cap, rows_cap;
  const int2* win_hdr;                       // window tables (PrepareArgs, launch_config.h kWindow*)
  const scalar_t* win_e;
  const int2* win_hull;
  int64_t win_cap;
  int list_cap;                              // config::window_list_cap(n_fft)
};

// The window path's 16 multiply-adds of one (filter, frame, window): acc[j] += w * src[j], src read
// with 16-byte vector loads (the window is 16-byte aligned: launch_config.h kWindow).
template <typename scalar_t>
struct Vec16B;
template <>
struct Vec16B<float> {
  using type = float4;
  static constexpr int n = 4;
};
template <>
struct Vec16B<double> {
  using type = double2;
  static constexpr int n = 2;
};
__device__ __forceinline__ void vec_fma(float* acc, float w, const float4& v) {
  acc[0] += w * v.x;
  acc[1] += w * v.y;
  acc[2] += w * v.z;
  acc[3] += w * v.w;
}
__device__ __forceinline__ void vec_fma(double* acc, double w, const double2& v) {
  acc[0] += w * v.x;
  acc[1] += w * v.y;
}

// bit_reverse(j, 4) for the 16 bins of a window (constants after unrolling)
__device__ __forceinline__ constexpr int brev4(int j) {
  return ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3);
}

// grad_z_block's marker of a filter without a stencil table (on-the-fly terms).
constexpr int kNoTable = -2147483647 - 1;

template <typename scalar_t>
__device__ __forceinline__ void grad_z_block(const GradZArgs<scalar_t>& a, unsigned block) {
  LWVD_DYNAMIC_SMEM(cplx<scalar_t>, rows);
  const unsigned tiles = static_cast<unsigned>(a.tiles_per_item);  // 32-bit: see lwvd_smooth_kernel
  const int64_t b = block / tiles;
  const int64_t j0 = static_cast<int64_t>(block % tiles) * a.tile;
  const int64_t j1 = imin(a.n_samples - 1, j0 + a.tile - 1);  // last owned sample
  const int64_t h = max_lag(a.n_fft);
  const int64_t row_lo = imax(0, j0 - h);
  const int64_t row_hi = imin(a.n_samples - 1, j1 + h);
  const int rows_per_pass = 2 * a.complex_rows;
  // >= 1 since j0 <= j1; the row count J + 2h is far below 2^31
  const int64_t passes = div_small(row_hi - row_lo + rows_per_pass, rows_per_pass);
  const int n = 1 << a.log2_fft;
  const int tid = static_cast<int>(threadIdx.x);
  const int nthreads = config::kGradThreads;  // == blockDim.x (the plan launches that)
  const int64_t radius = *a.max_radius;
  const double inv_hop = a.inv_hop;
  const cplx<scalar_t>* zb = a.z + b * a.n_samples;
  cplx<scalar_t>* gz = a.grad_z + b * a.n_samples;
  const scalar_t* Gb = a.grad_out + b * a.n_filters * a.n_frames;

  // Thread tid owns the samples j0 + tid + i*nthreads of the tile; it zeroes them here and is their
  // only writer afterwards. (Storing on the first visit instead of zeroing made ptxas spill on sm_80.)
  LWVD_NO_UNROLL
  for (int64_t j = j0 + tid; j <= j1; j += nthreads) {
    LWVD_PROF_TRIP("gz.zero", (j - j0 - tid) / nthreads);
    LWVD_PROF_GMEM("gz.zero_st", &gz[j], (j - j0 - tid) / nthreads);
    gz[j] = cplx<scalar_t>{0, 0};
  }

  // Window path (launch_config.h kWindow*): per window of 16 bins the filters whose window hull
  // covers it, in shared memory after the rows: wcnt[w], then wlist[li * nwin + w] (consecutive
  // windows in consecutive words). The path runs only when every filter has a window table and no
  // window is covered by more than list_cap filters (block-uniform), else the scatter path below.
  // (Derived sizes are recomputed where used: values live across the pass loop cost registers.)
  constexpr int kWin = config::kWindow;
  __shared__ int s_scatter;  // 1: the scatter path (thread 0 alone writes it: no atomics)
  {
    const int nwin = (n + kWin - 1) / kWin;
    int* wcnt = reinterpret_cast<int*>(rows + a.complex_rows * n);
    int* wlist = wcnt + nwin;
    const int n_filters = static_cast<int>(a.n_filters);  // < 2^31 (the plan checks)
    int none = 0;  // a filter without a window table (every window's thread sees every filter)
    LWVD_NO_UNROLL
    for (int w = tid; w < nwin; w += nthreads) {
      [[maybe_unused]] const int wtrip = (w - tid) / nthreads;  // profile key
      LWVD_PROF_TRIP("gzw.list", wtrip);
      int cnt = 0;
      LWVD_NO_UNROLL
      for (int f = 0; f < n_filters; ++f) {
        LWVD_PROF_TRIP("gzw.hull", wtrip, f);
        const int2 hl = a.win_hull[f];
        none |= hl.x < 0;
        if (hl.x <= w && w <= hl.y) {
          if (cnt < a.list_cap) wlist[cnt * nwin + w] = f;
          ++cnt;
        }
      }
      wcnt[w] = cnt;
    }
    __syncthreads();
    if (tid == 0) {  // thread 0 ran window 0's loop over every filter; the lists' overflow from wcnt
      LWVD_NO_UNROLL
      for (int w = 0; w < nwin; ++w) {
        LWVD_PROF_TRIP("gzw.flag", w);
        none |= wcnt[w] > a.list_cap;
      }
      s_scatter = none;
    }
  }
  __syncthreads();

  for (int64_t pass = 0; pass < passes; ++pass) {
    LWVD_PROF_TRIP("gz.pass");
    const int64_t r0 = row_lo + pass * rows_per_pass;
    const int64_t pass_hi = imin(row_hi, r0 + rows_per_pass - 1);
    if (s_scatter == 0) {  // block-uniform; read per pass (a flag live across the passes cost a spill)
      // Item i = (real row r = i / nwin of the pass, window w = i % nwin), one thread each: 16 bins of
      // A[r0 + r] in registers, summed over the window's filters and their frames in a fixed (list,
      // frame) order (bitwise reproducible, no atomics), then stored by their only writer at the
      // bit-reversed positions of the FFT's input (re part for even r, im for odd): every element of
      // the pass's rows is written (rows past pass_hi get zeros), so no zero fill and no permutation.
      const int nwin = (n + kWin - 1) / kWin;
      const int log2_nwin = a.log2_fft > config::kWindowLog2 ? a.log2_fft - config::kWindowLog2 : 0;
      const int* wcnt = reinterpret_cast<const int*>(rows + a.complex_rows * n);
      const int* wlist = wcnt + nwin;
      const int items = rows_per_pass * nwin;
      // 32-bit rows, frames and lags (the plan checks 2 d_limit + hop + 2 n_fft < 2^31) and 32-bit table
      // indices (launch_config.h): few 64-bit values live next to the 16 accumulators.
      const int hop = static_cast<int>(a.hop), rad = static_cast<int>(radius);
      const int frames = static_cast<int>(a.n_frames);
      const int r0i = static_cast<int>(r0), phi = static_cast<int>(pass_hi);
      LWVD_NO_UNROLL
      for (int it = tid; it < items; it += nthreads) {
        [[maybe_unused]] const int itrip = (it - tid) / nthreads;  // profile key
        LWVD_PROF_TRIP("gzw.item", itrip);
        // Rows fastest: the lanes of one window share its filter list, consecutive rows read consecutive
        // lags. Window index bits 0 and 1 swapped: the two windows of a warp (at 2CR = 16 rows) are w and
        // w ^ 2, neighbours in frequency (lists of similar length: few idle lanes) whose bit-reversed
        // stores fall in different banks (the bank of bin 16 w + j depends on bits 1.. of w, not on j).
        const int wi = it / rows_per_pass, r = it - wi * rows_per_pass;
        const int w = log2_nwin > 1 ? (wi & ~3) | ((wi & 1) << 1) | ((wi >> 1) & 1) : wi;
        const int s = r0i + r;
        // frames with |s - t*hop| <= radius (as the scatter path below, in 32 bits)
        int t_lo = 0, nt = 0, cnt = 0;
        if (s <= phi) {
          if (s - rad > 0) {
            t_lo = static_cast<int>(static_cast<double>(s - rad) * inv_hop);
            while (t_lo * hop < s - rad) ++t_lo;
            while (t_lo > 0 && (t_lo - 1) * hop >= s - rad) --t_lo;
          }
          int t_hi = static_cast<int>(static_cast<double>(s + rad) * inv_hop);
          while ((t_hi + 1) * hop <= s + rad) ++t_hi;
          while (t_hi > 0 && t_hi * hop > s + rad) --t_hi;
          t_hi = t_hi < frames - 1 ? t_hi : frames - 1;
          nt = t_hi - t_lo + 1;
          LWVD_PROF_SMEM("gzw.cnt", &wcnt[w], itrip);
          cnt = wcnt[w];
        }
        const int nl = s > phi ? 0 : cnt;
        // double: the window in two halves of 8 bins (16 double accumulators would spill)
        constexpr int kHalves = sizeof(scalar_t) == 8 ? 2 : 1;
        constexpr int kBins = kWin / kHalves;
        using V = typename Vec16B<scalar_t>::type;
        constexpr int kv = Vec16B<scalar_t>::n;
        LWVD_NO_UNROLL
        for (int hv = 0; hv < kHalves; ++hv) {
          LWVD_PROF_TRIP("gzw.half", itrip, hv);
          scalar_t acc[kBins];
#pragma unroll
          for (int j = 0; j < kBins; ++j) acc[j] = 0;
          LWVD_NO_UNROLL
          for (int li = 0; li < nl; ++li) {
            LWVD_PROF_TRIP("gzw.filter", itrip, li * kHalves + hv);
            LWVD_PROF_SMEM("gzw.lst", &wlist[li * nwin + w], itrip, li * kHalves + hv);
            const int f = wlist[li * nwin + w];
            const int rf = static_cast<int>(a.geom[f].d_radius);
            const int hbase = f * static_cast<int>(a.rows_cap) + rf;       // header of lag d: hbase + d
            const int gbase = f * frames + t_lo;                          // G of frame t_lo + tt
            int d = s - t_lo * hop;
            LWVD_NO_UNROLL
            for (int tt = 0; tt < nt; ++tt, d -= hop) {
              LWVD_PROF_TRIP("gzw.frame", itrip, li * kHalves + hv, tt);
              if (d > rf || -d > rf) continue;
              LWVD_PROF_GMEM("gzw.hdr", &a.win_hdr[hbase + d], itrip, li * kHalves + hv, tt);
              const int2 h = a.win_hdr[hbase + d];
              if (static_cast<unsigned>(w - (h.y & 0xffff)) >= static_cast<unsigned>(h.y >> 16)) continue;
              {
                LWVD_PROF_TRIP("gzw.win", itrip, li * kHalves + hv, tt);
                const scalar_t gw = Gb[gbase + tt];  // the table holds norm * E
                const V* src = reinterpret_cast<const V*>(a.win_e + (h.x + w) * kWin + hv * kBins);
#pragma unroll
                for (int c = 0; c < kBins / kv; ++c) {
                  LWVD_PROF_GMEM("gzw.wld", &src[c], itrip, li * kHalves + hv, tt, c);
                  vec_fma(acc + c * kv, gw, src[c]);
                }
              }
            }
          }
          // formed here, after the filter loop: nothing of the store stays live next to the accumulators.
          // Bin 16 w + jj sits at bit_reverse(16 w + jj) = brev4(jj) << (log2 n - 4) | bit_reverse(w).
          const int rs = s - r0i;  // the row slot r, from the row (r itself would be one more live register)
          scalar_t* dst = reinterpret_cast<scalar_t*>(rows + (rs >> 1) * n) + (rs & 1);
          if (a.log2_fft >= config::kWindowLog2) {
            const int sl = a.log2_fft - config::kWindowLog2;
            scalar_t* d0 = dst + 2 * (sl > 0 ? bit_reverse(w, sl) : 0);
            const int stride = 2 << sl;  // scalars between brev4 steps
#pragma unroll
            for (int j = 0; j < kBins; ++j) {
              const int jj = hv * kBins + j;  // bin of the window
              LWVD_PROF_SMEM("gzw.st", &d0[brev4(jj) * stride], itrip, jj);
              d0[brev4(jj) * stride] = acc[j];
            }
          } else {  // n_fft 4 or 8: one window, its bins jj < n (own region: only these sizes pay it)
            LWVD_PROF_TRIP("gzw.st_small", itrip, hv);
            const int sr = config::kWindowLog2 - a.log2_fft;
#pragma unroll
            for (int j = 0; j < kBins; ++j) {
              const int jj = hv * kBins + j;
              if (jj < n) {
                LWVD_PROF_SMEM("gzw.st", &dst[2 * (brev4(jj) >> sr)], itrip, jj);
                dst[2 * (brev4(jj) >> sr)] = acc[j];
              }
            }
          }
        }
      }
    } else {
    LWVD_NO_UNROLL
    for (int i = tid; i < a.complex_rows * n; i += nthreads) {
      LWVD_PROF_TRIP("gz.rowzero", (i - tid) / nthreads);
      LWVD_PROF_SMEM("gz.rowzero_st", &rows[i], (i - tid) / nthreads);
      rows[i] = cplx<scalar_t>{0, 0};
    }
    __syncthreads();

    // A rows, two at a time: warp w builds complex rows cr = w, w + nwarps, ...; half-warp h = lane / 16
    // takes the real row s = r0 + 2 cr + h (h = 0: the re parts of complex row cr, h = 1: the im parts),
    // and lane l = lane % 16 of a half alone writes the bins k = l (mod 16) of its row, so no two lanes
    // ever touch one element (no __syncwarp needed). A filter's range (~15 bins at S) then keeps 16
    // lanes busy instead of 32, both rows share the per-filter shuffles, and the halves' words
    // interleave (re, im): one warp access hits each bank once (float).
    constexpr int kHalf = kWarpSize / 2;
    // (the scatter path's own values, formed here: live across the window path they cost registers)
    const int warp = tid / kWarpSize, lane = tid % kWarpSize, nwarps = nthreads / kWarpSize;
    const scalar_t trunc2 = static_cast<scalar_t>(a.trunc2);
    const scalar_t inv_two_m = static_cast<scalar_t>(a.inv_two_m);  // k * (1/2M) == k / 2M: 2M = 2^k
    const int half = lane / kHalf, hl = lane % kHalf;
    for (int cr = warp; cr < a.complex_rows; cr += nwarps) {
      [[maybe_unused]] const int rtrip = (cr - warp) / nwarps;  // profile key
      LWVD_PROF_TRIP("gz.row", rtrip);
      const int64_t s_a = r0 + 2 * cr;
      if (s_a > pass_hi) continue;  // warp-uniform
      const int64_t s_b = imin(s_a + 1, pass_hi);  // == s_a when the pass ends at the even row
      const bool mine = s_a + half <= pass_hi;      // this half has a row
      const int64_t s = s_a + half;
      scalar_t* row = reinterpret_cast<scalar_t*>(rows + cr * n) + half;  // re or im part
      // Frames within the radius of either row, |s - t*hop| <= radius. The quotient is estimated with a
      // reciprocal and corrected exactly in integers (a 64-bit division is a SASS subroutine call that
      // makes ptxas spill). A frame out of one half's reach gives that half empty ranges.
      int64_t t_lo = 0;
      if (s_a - radius > 0) {
        t_lo = static_cast<int64_t>(static_cast<double>(s_a - radius) * inv_hop);
        while (t_lo * a.hop < s_a - radius) ++t_lo;
        while (t_lo > 0 && (t_lo - 1) * a.hop >= s_a - radius) --t_lo;
      }
      int64_t t_hi = static_cast<int64_t>(static_cast<double>(s_b + radius) * inv_hop);
      while ((t_hi + 1) * a.hop <= s_b + radius) ++t_hi;
      while (t_hi > 0 && t_hi * a.hop > s_b + radius) --t_hi;
      t_hi = imin(a.n_frames - 1, t_hi);
      for (int64_t t = t_lo; t <= t_hi; ++t) {
        LWVD_PROF_TRIP("gz.frame", rtrip, t - t_lo);
        const int64_t d = s - t * a.hop;
        const scalar_t ds = static_cast<scalar_t>(d);
        // Filters in chunks of 16: lane l of each half computes filter f0 + l's bin range and weight
        // for its row, then the warp walks the chunk, each half taking its row's range by shuffle.
        // bin_range's double division and sqrt have out-of-line slow paths in SASS; calling them
        // here, where the bin loop's state is not live, keeps the kernel free of register spills.
        for (int64_t f0 = 0; f0 < a.n_filters; f0 += kHalf) {
          LWVD_PROF_TRIP("gz.chunk", rtrip, t - t_lo, f0 / kHalf);
          int range = 1;  // k_lo | k_hi << 16 (bins < 8192); 1 = empty (k_lo 1 > k_hi 0)
          int tbase = kNoTable;  // table filters: the entry of bin k is tbase + k (the lag's terms are
                                 // consecutive bins: q is monotone in k on each side of its minimum)
          scalar_t gw = 0;
          if (mine && f0 + hl < a.n_filters) {
            const FilterGeometry<scalar_t>& g = a.geom[f0 + hl];
            if (d <= g.d_radius && -d <= g.d_radius) {
              const int* tr = a.tab_rows + (f0 + hl) * (a.rows_cap + 1);
              if (tr[0] >= 0) {
                LWVD_PROF_TRIP("gz.trange", rtrip, t - t_lo, f0 / kHalf);
                const int64_t dr = d + g.d_radius;
                const int e_lo = tr[dr], e_hi = tr[dr + 1];
                if (e_lo < e_hi) {
                  LWVD_PROF_GMEM("gz.tk", &a.tab_idx[(f0 + hl) * a.terms_cap + e_lo], rtrip, t - t_lo, f0 / kHalf);
                  const int k_lo = a.tab_idx[(f0 + hl) * a.terms_cap + e_lo] & ((1 << config::kStencilKBits) - 1);
                  range = k_lo | ((k_lo + e_hi - e_lo - 1) << 16);
                  // absolute entry of bin k: tbase + k (32 bits: F * terms_cap < 2^31, launch_config.h)
                  tbase = static_cast<int>((f0 + hl) * a.terms_cap) + e_lo - k_lo;
                } else {
                  tbase = 0;  // a table filter with no term on this lag
                }
              } else {
                LWVD_PROF_TRIP("gz.binrange", rtrip, t - t_lo, f0 / kHalf);
                int64_t k_lo, k_hi;
                bin_range(g, d, a.trunc2, a.n_fft, &k_lo, &k_hi);
                range = static_cast<int>(k_lo) | (static_cast<int>(k_hi) << 16);
              }
              gw = Gb[(f0 + hl) * a.n_frames + t] * g.norm;
            }
          }
          const int chunk = static_cast<int>(imin(kHalf, a.n_filters - f0));
          for (int i = 0; i < chunk; ++i) {  // warp-uniform trip count: full-mask shuffles
            const int src = i + half * kHalf;  // this half's lane for filter f0 + i
            const int rg = __shfl_sync(kFullMask, range, src);
            const int k_lo = rg & 0xffff, k_hi = rg >> 16;
            const scalar_t w = __shfl_sync(kFullMask, gw, src);
            const int tb = __shfl_sync(kFullMask, tbase, src);
            LWVD_PROF_TRIP("gz.filter");  // the epoch (after this filter's shuffles) is the key
            // this lane's first bin (k = hl mod 16); an empty range (k_lo > k_hi) gives first > k_hi
            const int first = k_lo + ((hl - (k_lo & (kHalf - 1))) & (kHalf - 1));
            if (tb != kNoTable) {  // the lag's terms from the stencil table: no quad_form, no exp
              // The first bin trip (at S a filter's lag row has <= 16 bins: usually the only one), then
              // the rest: written out so that ptxas's own peeling of the first trip does not make one
              // region hold two copies of the body (the profile weighs a region once per trip).
              if (first <= k_hi) {
                LWVD_PROF_TRIP("gz.tbin");
                LWVD_PROF_GMEM("gz.te", &a.tab_e[tb + first]);
                scalar_t* dst = &row[2 * first];
                LWVD_PROF_SMEM("gz.tscatter_ld", dst);
                LWVD_PROF_SMEM("gz.tscatter_st", dst);
                *dst += w * a.tab_e[tb + first];
              }
              LWVD_NO_UNROLL
              for (int k = first + kHalf; k <= k_hi; k += kHalf) {
                LWVD_PROF_TRIP("gz.tbin2", (k - k_lo) / kHalf);
                LWVD_PROF_GMEM("gz.te", &a.tab_e[tb + k], (k - k_lo) / kHalf);
                scalar_t* dst = &row[2 * k];
                LWVD_PROF_SMEM("gz.tscatter_ld", dst, (k - k_lo) / kHalf);
                LWVD_PROF_SMEM("gz.tscatter_st", dst, (k - k_lo) / kHalf);
                *dst += w * a.tab_e[tb + k];
              }
              continue;
            }
            if (first <= k_hi) {  // a filter without a stencil table: its terms on the fly (own region:
                                  // the profile charges this setup to these filters only)
              LWVD_PROF_TRIP("gz.ffilter");
              const FilterGeometry<scalar_t>& g = a.geom[f0 + i];
              LWVD_NO_UNROLL  // rolled: ~1 trip per row at typical widths; the profile weighs one trip
              for (int k = first; k <= k_hi; k += kHalf) {
                LWVD_PROF_TRIP("gz.bin", (k - k_lo) / kHalf);
                const scalar_t v = static_cast<scalar_t>(k) * inv_two_m - g.center;
                const scalar_t q = quad_form(g, ds, v);
                // read-modify-write for every lane (adding 0 past the ellipse): the same accesses
                // whatever q is, so the access counts do not depend on rounding
                scalar_t* dst = &row[2 * k];  // natural order: block_bitrev_rows permutes before the FFT
                LWVD_PROF_SMEM("gz.scatter_ld", dst, (k - k_lo) / kHalf);
                LWVD_PROF_SMEM("gz.scatter_st", dst, (k - k_lo) / kHalf);
                *dst += q <= trunc2 ? w * lwvd_exp(scalar_t(-0.5) * q) : scalar_t(0);
              }
            }
          }
        }
      }
    }
    __syncthreads();
    block_bitrev_rows<config::kGradThreads>(rows, a.complex_rows, a.log2_fft);
    }  // scatter path
    __syncthreads();
    block_fft_rows<config::kGradThreads>(rows, a.complex_rows, a.log2_fft, a.twiddles);  // ends with __syncthreads

    // Samples reached by this pass: j in [r0 - h, pass_hi + h] within the tile; same owner map.
    const int64_t jw_lo = imax(j0, r0 - h), jw_hi = imin(j1, pass_hi + h);
    // first j >= jw_lo with (j - j0) = tid (mod nthreads); offsets within a tile fit in 32 bits
    const int off = static_cast<int>(jw_lo - j0);
    const int jj0 = off <= tid ? tid : tid + ((off - tid + nthreads - 1) / nthreads) * nthreads;
    LWVD_NO_UNROLL
    for (int64_t j = j0 + jj0; j <= jw_hi; j += nthreads) {
      [[maybe_unused]] const int jtrip = static_cast<int>((j - j0 - jj0) / nthreads);  // profile key
      LWVD_PROF_TRIP("gz.gather_j", jtrip);
      const int64_t s_lo = imax(r0, j - h), s_hi = imin(pass_hi, j + h);
      scalar_t accr = 0, acci = 0;
      LWVD_NO_UNROLL  // rolled: one trip is what the profile's SASS weight counts
      for (int64_t s = s_lo; s <= s_hi; ++s) {
        LWVD_PROF_TRIP("gz.gather_s", jtrip, s - s_lo);
        const int64_t m = j - s;
        const int64_t zi = 2 * s - j;
        if (zi < 0 || zi >= a.n_samples) continue;
        const int r = static_cast<int>(s - r0);
        const cplx<scalar_t>* X = rows + (r >> 1) * n;
        LWVD_PROF_SMEM("gz.xp", &X[m & (n - 1)], jtrip, s - s_lo);
        LWVD_PROF_SMEM("gz.xm", &X[(-m) & (n - 1)], jtrip, s - s_lo);
        LWVD_PROF_GMEM("gz.z", &zb[zi], jtrip, s - s_lo);
        const cplx<scalar_t> xp = X[m & (n - 1)], xm = X[(-m) & (n - 1)];
        scalar_t ar, ai;  // Ahat[s, m]
        if ((r & 1) == 0) {  // (X[m] + conj(X[-m])) / 2
          ar = scalar_t(0.5) * (xp.re + xm.re);
          ai = scalar_t(0.5) * (xp.im - xm.im);
        } else {             // (X[m] - conj(X[-m])) / (2i)
          ar = scalar_t(0.5) * (xp.im + xm.im);
          ai = scalar_t(-0.5) * (xp.re - xm.re);
        }
        const cplx<scalar_t> zz = zb[zi];
        accr += zz.re * ar + zz.im * ai;  // z * conj(Ahat)
        acci += zz.im * ar - zz.re * ai;
      }
      LWVD_PROF_GMEM("gz.store_ld", &gz[j], jtrip);
      const cplx<scalar_t> old = gz[j];
      const cplx<scalar_t> v{old.re + scalar_t(4) * accr, old.im + scalar_t(4) * acci};
      LWVD_PROF_GMEM("gz.store_st", &gz[j], jtrip);
      gz[j] = v;
    }
    __syncthreads();  // the next pass overwrites the rows
  }
}

// One launch for the parameter gradients and grad_z: block i builds grad_z tile i (i < gz_blocks) and
// then the parameter gradients of filters i, i + gridDim.x, ... (grid.x = max(gz_blocks, F)). The two
// roles run one after the other in the same threads, so the registers of one are free for the other
// (as two branches of one kernel, ptxas spilled 28 B in the float32 kernel on sm_80). The parameter
// gradients need the moments of the previous launch only; the reduction's shared memory is the
// start of the rows' dynamic shared memory, behind a barrier.
// Min 2 blocks/SM of kGradThreads = 512 (a 64-register budget, as the former 4 x 256): left to itself
// ptxas squeezed grad_z<float> into 48 registers on sm_90 and spilled 8 B (after the one-order q of
// lwvd_math.cuh), and grad_z<double> spilled 24 B on sm_120; with this bound no arch spills.
// kFrameMoments (lwvd_bwd_moments): the parameter gradients from the forward's per-frame moments
// (param_grad_block<.., true>); gz_blocks = 0 when z needs no gradient (F blocks, parameters only).
template <typename scalar_t, bool kFrameMoments = false>
__global__ void __launch_bounds__(config::kGradThreads, 2) lwvd_grad_z_kernel(const GradZArgs<scalar_t> a,
                                                                          const ParamGradArgs<scalar_t> pg,
                                                                          const unsigned* invalid,
                                                                          unsigned gz_blocks) {
  static_assert(config::kReduceThreads == config::kGradThreads, "the fused launch runs both roles in one block");
  // Invalid parameters need no test in the grad_z role: the prepare kernel then writes NaN twiddles,
  // which make every sample of grad_z NaN (each has its m = 0 term).
  if (blockIdx.x < gz_blocks) {
    LWVD_PROF_TRIP("grad.role_gz");
    grad_z_block(a, blockIdx.x);
  }
  for (int64_t f = blockIdx.x; f < pg.n_filters; f += gridDim.x) {
    LWVD_PROF_TRIP("grad.role_pg", (f - blockIdx.x) / gridDim.x);
    __syncthreads();  // the reduction reuses the rows' shared memory (and its own, filter to filter)
    param_grad_block<scalar_t, kFrameMoments>(pg, f, *invalid);
  }
}

}  // namespace lwvd
