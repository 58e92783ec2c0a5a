// lwvd_cpu.cpp — fused CPU kernels of torch.ops.lwvd_cuda.lwvd_fwd / lwvd_bwd.
//
// Shapes and dtypes (the op contract, lwvd.h):
//   z        complex64 | complex128 (B, N)         center, sigma_t, sigma_nu, rho: real (F,)
//   K        real (B, F, T), T = 1 + N / hop
//   lwvd_bwd -> grad_z (B, N) complex, grad_center/sigma_t/sigma_nu/rho (F,)
//
// Algorithm (docs/design.md, docs/cpu_kernels.md):
//   * Output-stationary tiles: a task owns (batch item, run of frames) [forward, parameter grads]
//     or (batch item, run of samples) [grad_z] and recomputes the rows it needs (its halo). No
//     task writes where another does, so there are no atomics and results do not depend on the
//     thread count: tile and chunk sizes depend on the problem only, never on get_num_threads().
//   * Rows are processed in chunks of kChunkPairs * 2: the Hermitian lag products of two rows share
//     one complex FFT (torch's own, MKL/pocketfft, single-threaded inside parallel_for), so
//     nothing of size B*N*n_fft is ever allocated.
//   * Each filter's Gaussian weight depends on (d, k) only: it is tabulated once per call as a
//     ragged stencil (one contiguous bin run per d) shared read-only by every task; the hot loops
//     are dot products / axpys of W (or A) row segments with stencil rows. A filter whose stencil
//     would overflow kStencilBudgetBytes computes its rows on the fly instead (bounded memory).
//   * Sums over a frame's ellipse run in a fixed order (rows ascending, bins ascending in fixed
//     lanes); parameter gradients are reduced through a per-tile workspace in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/lwvd_math.cuh"
#include "lwvd.h"

namespace lwvd {
namespace cpu {
namespace {

// ---- Tiling constants (problem-dependent only; see docs/cpu_kernels.md for the measurements). ----
// Complex FFT rows per call (each holds two real rows). 64 rows of 512 points is 256 KiB in
// complex64: cache resident, and large enough that the per-call FFT overhead is amortised
// (1 thread, 32000 rows of 512: 73 ms at 16 rows per call, 55 ms at 64, 50 ms at 128).
constexpr int64_t kChunkElements = 64 * 512;
constexpr int64_t kMaxChunkPairs = 64;
// Rows a tile owns (beyond its halo). Larger tiles recompute less halo; smaller ones balance
// better over threads. With the halo at most half a tile the recomputation stays below 50%.
constexpr int64_t kTileRows = 2048;
// Memory for tabulated stencils (all filters). Past it a filter computes its weights per row.
constexpr int64_t kStencilBudgetBytes = int64_t(32) << 20;

inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

int64_t chunk_pairs(int64_t n_fft) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxChunkPairs, kChunkElements / n_fft));
}

// ---- Per-filter stencils. ----
template <typename scalar_t>
struct Stencil {
  FilterGeometry<double> g;  // geometry in double: weights are computed in double, stored in scalar_t
  double trunc2 = 0;
  int64_t n_fft = 0;
  int64_t radius = 0;  // |d| <= radius
  scalar_t norm = 0;
  double norm_d = 0;
  bool tabulated = false;
  std::vector<int64_t> k_lo, len, off;  // per d + radius
  std::vector<scalar_t> w;              // exp(-q/2) where q <= trunc2, 0 elsewhere
  std::vector<scalar_t> v;              // nu_k - center, k = 0 .. n_fft-1 (backward moments)

  // Weights of row d into out[0..n_fft): returns the first bin and the run length (trimmed to
  // non-zero weights; a zero-length run means the ellipse misses every bin at this d).
  int64_t compute_row(int64_t d, scalar_t* out, int64_t* k0) const {
    int64_t lo, hi;
    bin_range(g, d, trunc2, n_fft, &lo, &hi);
    int64_t first = -1, last = -2;
    for (int64_t k = lo; k <= hi; ++k) {
      const double q = quad_form(g, static_cast<double>(d), bin_frequency<double>(k, n_fft) - g.center);
      const double e = q <= trunc2 ? std::exp(-0.5 * q) : 0.0;
      const scalar_t es = static_cast<scalar_t>(e);
      out[k - lo] = es;
      if (es != scalar_t(0)) {
        if (first < 0) first = k;
        last = k;
      }
    }
    if (first < 0) { *k0 = 0; return 0; }
    if (first > lo) std::copy(out + (first - lo), out + (last - lo) + 1, out);
    *k0 = first;
    return last - first + 1;
  }

  // Row d: pointer to its weights (table or scratch of n_fft entries), *k0 and *n set.
  const scalar_t* row(int64_t d, scalar_t* scratch, int64_t* k0, int64_t* n) const {
    if (tabulated) {
      const int64_t i = d + radius;
      *k0 = k_lo[i];
      *n = len[i];
      return w.data() + off[i];
    }
    *n = compute_row(d, scratch, k0);
    return scratch;
  }
};

template <typename scalar_t>
std::vector<Stencil<scalar_t>> make_stencils(const at::Tensor& center, const at::Tensor& sigma_t,
                                             const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft,
                                             double truncate, int64_t d_limit, bool with_v) {
  const int64_t F = center.size(0);
  const auto c = center.to(at::kDouble).contiguous();
  const auto st = sigma_t.to(at::kDouble).contiguous();
  const auto sn = sigma_nu.to(at::kDouble).contiguous();
  const auto r = rho.to(at::kDouble).contiguous();
  const double* pc = c.data_ptr<double>();
  const double* pst = st.data_ptr<double>();
  const double* psn = sn.data_ptr<double>();
  const double* pr = r.data_ptr<double>();
  const double trunc2 = effective_trunc2<scalar_t>(truncate);
  std::vector<Stencil<scalar_t>> out(F);
  // Sizes first (cheap: bin_range per d), then which filters fit the budget, in filter order.
  std::vector<int64_t> sizes(F, 0);
  for (int64_t f = 0; f < F; ++f) {
    auto& s = out[f];
    s.g = make_filter<double>(pc[f], pst[f], psn[f], pr[f], trunc2, n_fft, d_limit);
    s.trunc2 = trunc2;
    s.n_fft = n_fft;
    s.radius = s.g.d_radius;
    s.norm_d = s.g.norm;
    s.norm = make_filter<scalar_t>(pc[f], pst[f], psn[f], pr[f], trunc2, n_fft, d_limit).norm;
    int64_t total = 0;
    for (int64_t d = -s.radius; d <= s.radius; ++d) {
      int64_t lo, hi;
      bin_range(s.g, d, trunc2, n_fft, &lo, &hi);
      if (hi >= lo) total += hi - lo + 1;
    }
    sizes[f] = total;
    if (with_v) {
      s.v.resize(n_fft);
      for (int64_t k = 0; k < n_fft; ++k)
        s.v[k] = static_cast<scalar_t>(bin_frequency<double>(k, n_fft) - s.g.center);
    }
  }
  int64_t used = 0;
  for (int64_t f = 0; f < F; ++f) {
    const int64_t bytes = sizes[f] * int64_t(sizeof(scalar_t)) + (2 * out[f].radius + 1) * 3 * 8;
    if (used + bytes <= kStencilBudgetBytes) {
      out[f].tabulated = true;
      used += bytes;
    }
  }
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      auto& s = out[f];
      if (!s.tabulated) continue;
      const int64_t rows = 2 * s.radius + 1;
      s.k_lo.resize(rows);
      s.len.resize(rows);
      s.off.resize(rows);
      s.w.resize(std::max<int64_t>(sizes[f], 1));
      int64_t pos = 0;
      for (int64_t i = 0; i < rows; ++i) {
        int64_t k0;
        const int64_t n = s.compute_row(i - s.radius, s.w.data() + pos, &k0);
        s.k_lo[i] = k0;
        s.len[i] = n;
        s.off[i] = pos;
        pos += n;
      }
    }
  });
  return out;
}

int64_t max_radius(int64_t F, const int64_t* radii) {
  int64_t r = 0;
  for (int64_t f = 0; f < F; ++f) r = std::max(r, radii[f]);
  return r;
}

// ---- Row kernels. Fixed lane counts: the order of every sum is fixed at compile time. ----
template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T s[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  T tail = T(0);
  for (; i < n; ++i) tail += a[i] * b[i];
  return (((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))) + tail;
}

// p0 = sum W E, p1 = sum W E v, p2 = sum W E v^2 over one bin run.
template <typename T>
inline void dot3(const T* __restrict__ w, const T* __restrict__ e, const T* __restrict__ v, int64_t n, T* p0,
                 T* p1, T* p2) {
  T s0[4] = {T(0), T(0), T(0), T(0)}, s1[4] = {T(0), T(0), T(0), T(0)}, s2[4] = {T(0), T(0), T(0), T(0)};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) {
      const T we = w[i + j] * e[i + j];
      const T wev = we * v[i + j];
      s0[j] += we;
      s1[j] += wev;
      s2[j] += wev * v[i + j];
    }
  T t0 = T(0), t1 = T(0), t2 = T(0);
  for (; i < n; ++i) {
    const T we = w[i] * e[i];
    const T wev = we * v[i];
    t0 += we;
    t1 += wev;
    t2 += wev * v[i];
  }
  *p0 = ((s0[0] + s0[2]) + (s0[1] + s0[3])) + t0;
  *p1 = ((s1[0] + s1[2]) + (s1[1] + s1[3])) + t1;
  *p2 = ((s2[0] + s2[2]) + (s2[1] + s2[3])) + t2;
}

// WVD rows [n0, n1) of one signal into wrow ((n1-n0) x M, real), via paired complex FFTs.
// buf_in / buf_out: (pairs, M) complex scratch tensors.
template <typename scalar_t>
void wvd_rows(const c10::complex<scalar_t>* z, int64_t N, int64_t n_fft, int64_t n0, int64_t n1,
              at::Tensor& buf_in, at::Tensor& buf_out, scalar_t* wrow) {
  using cplx = c10::complex<scalar_t>;
  const int64_t M = n_fft, h = max_lag(n_fft);
  const int64_t rows = n1 - n0, pairs = (rows + 1) / 2;
  cplx* in = buf_in.data_ptr<cplx>();
  for (int64_t p = 0; p < pairs; ++p) {
    cplx* row = in + p * M;
    std::fill(row, row + M, cplx(0, 0));
    for (int which = 0; which < 2; ++which) {
      const int64_t n = n0 + 2 * p + which;
      if (n >= n1) break;
      const int64_t mm = std::min(h, std::min(n, N - 1 - n));
      // r[m] = z[n+m] conj(z[n-m]); r[-m] = conj(r[m]). Row a goes to the real part, row b to the
      // imaginary part: row[m] += r_a[m] + i r_b[m].
      for (int64_t m = 0; m <= mm; ++m) {
        const cplx zp = z[n + m], zm = z[n - m];
        const scalar_t rr = zp.real() * zm.real() + zp.imag() * zm.imag();
        const scalar_t ri = zp.imag() * zm.real() - zp.real() * zm.imag();
        if (which == 0) {
          row[m] += cplx(rr, ri);
          if (m > 0) row[M - m] += cplx(rr, -ri);
        } else {  // i * (rr + i ri) = -ri + i rr ; i * conj = ri + i rr
          row[m] += cplx(-ri, rr);
          if (m > 0) row[M - m] += cplx(ri, rr);
        }
      }
    }
  }
  at::Tensor src = buf_in.narrow(0, 0, pairs), dst = buf_out.narrow(0, 0, pairs);
  at::_fft_c2c_out(dst, src, {1}, /*normalization=*/0, /*forward=*/true);
  const cplx* X = buf_out.data_ptr<cplx>();
  for (int64_t p = 0; p < pairs; ++p) {
    const cplx* x = X + p * M;
    scalar_t* wa = wrow + (2 * p) * M;
    for (int64_t k = 0; k < M; ++k) wa[k] = scalar_t(2) * x[k].real();
    if (2 * p + 1 < rows) {
      scalar_t* wb = wa + M;
      for (int64_t k = 0; k < M; ++k) wb[k] = scalar_t(2) * x[k].imag();
    }
  }
}

struct Problem {
  int64_t B, N, M, hop, T, F, d_limit;
  int64_t r_max;       // largest stencil radius
  int64_t frames_per_tile, n_frame_tiles;
};

Problem make_problem(const at::Tensor& z, int64_t F, int64_t n_fft, int64_t hop) {
  Problem p;
  p.B = z.size(0);
  p.N = z.size(1);
  p.M = n_fft;
  p.hop = hop;
  p.T = num_frames(p.N, hop);
  p.F = F;
  p.d_limit = p.N - 1 + (p.T - 1) * hop;
  p.r_max = 0;
  p.frames_per_tile = 1;
  p.n_frame_tiles = 0;
  return p;
}

template <typename scalar_t>
void finish_problem(Problem& p, const std::vector<Stencil<scalar_t>>& st) {
  for (const auto& s : st) p.r_max = std::max(p.r_max, s.radius);
  // A tile owns frames_per_tile frames: its own rows ~ frames*hop, its halo 2*r_max.
  const int64_t own = std::max(kTileRows, 2 * (2 * p.r_max + 1));
  p.frames_per_tile = std::max<int64_t>(1, std::min(p.T, ceil_div(own, p.hop)));
  p.n_frame_tiles = ceil_div(p.T, p.frames_per_tile);
}

// ---- Forward. ----
template <typename scalar_t>
at::Tensor forward_impl(const at::Tensor& z_in, const at::Tensor& center, const at::Tensor& sigma_t,
                        const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop,
                        double truncate) {
  using cplx = c10::complex<scalar_t>;
  const at::Tensor z = z_in.contiguous();
  Problem P = make_problem(z, center.size(0), n_fft, hop);
  const auto real_opts = z.options().dtype(c10::toRealValueType(z.scalar_type()));
  at::Tensor K = at::zeros({P.B, P.F, P.T}, real_opts);
  if (P.B == 0) return K;
  const auto st = make_stencils<scalar_t>(center, sigma_t, sigma_nu, rho, n_fft, truncate, P.d_limit, false);
  finish_problem(P, st);
  const cplx* zp = z.data_ptr<cplx>();
  scalar_t* Kp = K.data_ptr<scalar_t>();
  const int64_t M = P.M, pairs_max = chunk_pairs(M), C = 2 * pairs_max;

  at::parallel_for(0, P.B * P.n_frame_tiles, 1, [&](int64_t task0, int64_t task1) {
    at::Tensor buf_in = at::empty({pairs_max, M}, z.options());
    at::Tensor buf_out = at::empty({pairs_max, M}, z.options());
    std::vector<scalar_t> wrow(C * M), scratch(M);
    std::vector<double> acc;
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / P.n_frame_tiles, tile = task % P.n_frame_tiles;
      const int64_t t0 = tile * P.frames_per_tile, t1 = std::min(P.T, t0 + P.frames_per_tile);
      const int64_t nt = t1 - t0;
      const cplx* zb = zp + b * P.N;
      acc.assign(P.F * nt, 0.0);
      const int64_t r_lo = std::max<int64_t>(0, t0 * P.hop - P.r_max);
      const int64_t r_hi = std::min(P.N - 1, (t1 - 1) * P.hop + P.r_max);
      for (int64_t n0 = r_lo; n0 <= r_hi; n0 += C) {
        const int64_t n1 = std::min(r_hi + 1, n0 + C);
        wvd_rows<scalar_t>(zb, P.N, M, n0, n1, buf_in, buf_out, wrow.data());
        for (int64_t f = 0; f < P.F; ++f) {
          const auto& s = st[f];
          const int64_t R = s.radius;
          const int64_t ta = std::max(t0, ceil_div(n0 - R, P.hop));
          const int64_t tb = std::min(t1 - 1, floor_div(n1 - 1 + R, P.hop));
          for (int64_t t = ta; t <= tb; ++t) {
            const int64_t c0 = t * P.hop;
            const int64_t d_lo = std::max(-R, n0 - c0), d_hi = std::min(R, n1 - 1 - c0);
            double sum = 0.0;
            for (int64_t d = d_lo; d <= d_hi; ++d) {
              int64_t k0, len;
              const scalar_t* w = s.row(d, scratch.data(), &k0, &len);
              if (len == 0) continue;
              sum += static_cast<double>(dot(wrow.data() + (c0 + d - n0) * M + k0, w, len));
            }
            acc[f * nt + (t - t0)] += sum;
          }
        }
      }
      for (int64_t f = 0; f < P.F; ++f)
        for (int64_t t = t0; t < t1; ++t)
          Kp[(b * P.F + f) * P.T + t] = static_cast<scalar_t>(st[f].norm_d * acc[f * nt + (t - t0)]);
    }
  });
  return K;
}

// ---- Backward. ----
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad_in, const at::Tensor& z_in, const at::Tensor& center, const at::Tensor& sigma_t,
    const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop, double truncate) {
  using cplx = c10::complex<scalar_t>;
  const at::Tensor z = z_in.contiguous();
  const at::Tensor G = grad_in.contiguous();
  Problem P = make_problem(z, center.size(0), n_fft, hop);
  at::Tensor grad_z = at::zeros_like(z, at::MemoryFormat::Contiguous);
  at::Tensor gtheta = at::zeros({4, P.F}, center.options());
  if (P.B == 0)
    return {grad_z, gtheta[0].clone(), gtheta[1].clone(), gtheta[2].clone(), gtheta[3].clone()};
  const auto st = make_stencils<scalar_t>(center, sigma_t, sigma_nu, rho, n_fft, truncate, P.d_limit, true);
  finish_problem(P, st);
  const cplx* zp = z.data_ptr<cplx>();
  const scalar_t* Gp = G.data_ptr<scalar_t>();
  const int64_t M = P.M, h = max_lag(M), pairs_max = chunk_pairs(M), C = 2 * pairs_max;

  // Per-filter constants in double.
  std::vector<double> s_t(P.F), s_n(P.F), rh(P.F);
  for (int64_t f = 0; f < P.F; ++f) {
    s_t[f] = st[f].g.sigma_t;
    s_n[f] = 1.0 / static_cast<double>(st[f].g.inv_sigma_nu);
    rh[f] = st[f].g.rho;
  }
  {  // exact sigma_nu (1/(1/x) may round): read it again
    const auto sn = sigma_nu.to(at::kDouble).contiguous();
    for (int64_t f = 0; f < P.F; ++f) s_n[f] = sn.data_ptr<double>()[f];
  }

  // (1) Parameter gradients: per (item, frame tile) partial sums, reduced below in fixed order.
  std::vector<double> work(P.B * P.n_frame_tiles * P.F * 4, 0.0);
  at::parallel_for(0, P.B * P.n_frame_tiles, 1, [&](int64_t task0, int64_t task1) {
    at::Tensor buf_in = at::empty({pairs_max, M}, z.options());
    at::Tensor buf_out = at::empty({pairs_max, M}, z.options());
    std::vector<scalar_t> wrow(C * M), scratch(M);
    std::vector<double> mom;  // (F, nt, 6)
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / P.n_frame_tiles, tile = task % P.n_frame_tiles;
      const int64_t t0 = tile * P.frames_per_tile, t1 = std::min(P.T, t0 + P.frames_per_tile);
      const int64_t nt = t1 - t0;
      const cplx* zb = zp + b * P.N;
      mom.assign(P.F * nt * 6, 0.0);
      const int64_t r_lo = std::max<int64_t>(0, t0 * P.hop - P.r_max);
      const int64_t r_hi = std::min(P.N - 1, (t1 - 1) * P.hop + P.r_max);
      for (int64_t n0 = r_lo; n0 <= r_hi; n0 += C) {
        const int64_t n1 = std::min(r_hi + 1, n0 + C);
        wvd_rows<scalar_t>(zb, P.N, M, n0, n1, buf_in, buf_out, wrow.data());
        for (int64_t f = 0; f < P.F; ++f) {
          const auto& s = st[f];
          const int64_t R = s.radius;
          const int64_t ta = std::max(t0, ceil_div(n0 - R, P.hop));
          const int64_t tb = std::min(t1 - 1, floor_div(n1 - 1 + R, P.hop));
          for (int64_t t = ta; t <= tb; ++t) {
            const int64_t c0 = t * P.hop;
            const int64_t d_lo = std::max(-R, n0 - c0), d_hi = std::min(R, n1 - 1 - c0);
            double S0 = 0, Sd = 0, Sv = 0, Sdd = 0, Sdv = 0, Svv = 0;
            for (int64_t d = d_lo; d <= d_hi; ++d) {
              int64_t k0, len;
              const scalar_t* e = s.row(d, scratch.data(), &k0, &len);
              if (len == 0) continue;
              scalar_t p0, p1, p2;
              dot3(wrow.data() + (c0 + d - n0) * M + k0, e, s.v.data() + k0, len, &p0, &p1, &p2);
              const double dd = static_cast<double>(d);
              S0 += p0;
              Sd += dd * p0;
              Sdd += dd * dd * p0;
              Sv += p1;
              Sdv += dd * p1;
              Svv += p2;
            }
            double* m = mom.data() + (f * nt + (t - t0)) * 6;
            m[0] += S0; m[1] += Sd; m[2] += Sv; m[3] += Sdd; m[4] += Sdv; m[5] += Svv;
          }
        }
      }
      double* out = work.data() + (b * P.n_frame_tiles + tile) * P.F * 4;
      for (int64_t f = 0; f < P.F; ++f) {
        const double stf = s_t[f], snf = s_n[f], r = rh[f], norm = st[f].norm_d;
        const double i1mr2 = 1.0 / (1.0 - r * r);
        double gc = 0, gst = 0, gsn = 0, gr = 0;
        for (int64_t t = t0; t < t1; ++t) {
          const double g = static_cast<double>(Gp[(b * P.F + f) * P.T + t]);
          if (g == 0.0) continue;
          const double* m = mom.data() + (f * nt + (t - t0)) * 6;
          const double S0 = m[0], Sd = m[1], Sv = m[2], Sdd = m[3], Sdv = m[4], Svv = m[5];
          const double K = norm * S0;
          const double Sq = (Sdd / (stf * stf) - 2.0 * r * Sdv / (stf * snf) + Svv / (snf * snf)) * i1mr2;
          const double dc = norm * (Sv / (snf * snf) - r * Sd / (stf * snf)) * i1mr2;
          const double dst = -K / stf + norm * (Sdd / (stf * stf * stf) - r * Sdv / (stf * stf * snf)) * i1mr2;
          const double dsn = -K / snf + norm * (Svv / (snf * snf * snf) - r * Sdv / (stf * snf * snf)) * i1mr2;
          const double dr = r * K * i1mr2 + norm * (Sdv / (stf * snf) - r * Sq) * i1mr2;
          gc += g * dc;
          gst += g * dst;
          gsn += g * dsn;
          gr += g * dr;
        }
        out[f * 4 + 0] = gc;
        out[f * 4 + 1] = gst;
        out[f * 4 + 2] = gsn;
        out[f * 4 + 3] = gr;
      }
    }
  });
  {
    std::vector<double> tot(P.F * 4, 0.0);
    for (int64_t i = 0; i < P.B * P.n_frame_tiles; ++i)
      for (int64_t j = 0; j < P.F * 4; ++j) tot[j] += work[i * P.F * 4 + j];
    auto gacc = gtheta.accessor<scalar_t, 2>();
    for (int64_t f = 0; f < P.F; ++f)
      for (int j = 0; j < 4; ++j) gacc[j][f] = static_cast<scalar_t>(tot[f * 4 + j]);
  }

  // (2) grad_z, output-stationary over runs of samples [j0, j1): rows [j0 - h, j1 - 1 + h].
  //   A[n, k] = sum_{f,t} G[f,t] norm_f E_f(n - t hop, k); Ahat = DFT_k(A) (two real rows per
  //   complex FFT); grad_z[j] = 4 sum_m z[j - 2m] conj(Ahat[j - m, m]).
  const int64_t J = std::max(kTileRows, 4 * (2 * h + 1));
  const int64_t n_sample_tiles = ceil_div(P.N, J);
  cplx* gz = grad_z.data_ptr<cplx>();
  at::parallel_for(0, P.B * n_sample_tiles, 1, [&](int64_t task0, int64_t task1) {
    at::Tensor buf_in = at::empty({pairs_max, M}, z.options());
    at::Tensor buf_out = at::empty({pairs_max, M}, z.options());
    std::vector<scalar_t> arow(C * M), scratch(M);
    std::vector<cplx> acc;
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / n_sample_tiles, tile = task % n_sample_tiles;
      const int64_t j0 = tile * J, j1 = std::min(P.N, j0 + J);
      const cplx* zb = zp + b * P.N;
      const scalar_t* Gb = Gp + b * P.F * P.T;
      acc.assign(j1 - j0, cplx(0, 0));
      const int64_t r_lo = std::max<int64_t>(0, j0 - h), r_hi = std::min(P.N - 1, j1 - 1 + h);
      for (int64_t n0 = r_lo; n0 <= r_hi; n0 += C) {
        const int64_t n1 = std::min(r_hi + 1, n0 + C);
        const int64_t rows = n1 - n0, pairs = (rows + 1) / 2;
        std::fill(arow.begin(), arow.begin() + ((rows + 1) / 2) * 2 * M, scalar_t(0));
        for (int64_t f = 0; f < P.F; ++f) {
          const auto& s = st[f];
          const int64_t R = s.radius;
          const int64_t ta = std::max<int64_t>(0, ceil_div(n0 - R, P.hop));
          const int64_t tb = std::min(P.T - 1, floor_div(n1 - 1 + R, P.hop));
          for (int64_t t = ta; t <= tb; ++t) {
            const scalar_t coef = Gb[f * P.T + t] * s.norm;
            if (coef == scalar_t(0)) continue;
            const int64_t c0 = t * P.hop;
            const int64_t d_lo = std::max(-R, n0 - c0), d_hi = std::min(R, n1 - 1 - c0);
            for (int64_t d = d_lo; d <= d_hi; ++d) {
              int64_t k0, len;
              const scalar_t* e = s.row(d, scratch.data(), &k0, &len);
              scalar_t* a = arow.data() + (c0 + d - n0) * M + k0;
              for (int64_t i = 0; i < len; ++i) a[i] += coef * e[i];
            }
          }
        }
        // Pack A[a] + i A[b], FFT.
        cplx* in = buf_in.data_ptr<cplx>();
        for (int64_t p = 0; p < pairs; ++p) {
          const scalar_t* aa = arow.data() + 2 * p * M;
          const scalar_t* ab = aa + M;  // zero when 2p+1 == rows (filled above)
          cplx* row = in + p * M;
          for (int64_t k = 0; k < M; ++k) row[k] = cplx(aa[k], ab[k]);
        }
        at::Tensor src = buf_in.narrow(0, 0, pairs), dst = buf_out.narrow(0, 0, pairs);
        at::_fft_c2c_out(dst, src, {1}, 0, true);
        const cplx* X = buf_out.data_ptr<cplx>();
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t n = n0 + row;
          const cplx* x = X + (row / 2) * M;
          const bool second = (row % 2) == 1;
          // lags m with j = n + m in [j0, j1) and n - m in [0, N)
          const int64_t m_lo = std::max(-h, std::max(j0 - n, n - (P.N - 1)));
          const int64_t m_hi = std::min(h, std::min(j1 - 1 - n, n));
          for (int64_t m = m_lo; m <= m_hi; ++m) {
            const int64_t ip = m >= 0 ? m : m + M, im = m > 0 ? M - m : -m;
            const cplx xp = x[ip], xm = x[im];
            // 2 * Ahat[n, m]
            const cplx ah = second ? cplx(xp.imag() + xm.imag(), xm.real() - xp.real())
                                   : cplx(xp.real() + xm.real(), xp.imag() - xm.imag());
            const cplx zz = zb[n - m];
            // 4 z conj(Ahat) = 2 z conj(2 Ahat)
            const scalar_t re = zz.real() * ah.real() + zz.imag() * ah.imag();
            const scalar_t imv = zz.imag() * ah.real() - zz.real() * ah.imag();
            acc[n + m - j0] += cplx(scalar_t(2) * re, scalar_t(2) * imv);
          }
        }
      }
      std::copy(acc.begin(), acc.end(), gz + b * P.N + j0);
    }
  });
  return {grad_z, gtheta[0].clone(), gtheta[1].clone(), gtheta[2].clone(), gtheta[3].clone()};
}

at::Tensor lwvd_fwd_cpu(const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t,
                        const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop_length,
                        double truncate) {
  check_args(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  if (z.scalar_type() == at::kComplexDouble)
    return forward_impl<double>(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  return forward_impl<float>(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lwvd_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t,
    const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop_length, double truncate) {
  check_args(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  check_grad(grad_out, z, center.size(0), hop_length);
  if (z.scalar_type() == at::kComplexDouble)
    return backward_impl<double>(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  return backward_impl<float>(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
}

}  // namespace
}  // namespace cpu
}  // namespace lwvd

TORCH_LIBRARY_IMPL(lwvd_cuda, CPU, m) {
  m.impl("lwvd_fwd", &lwvd::cpu::lwvd_fwd_cpu);
  m.impl("lwvd_bwd", &lwvd::cpu::lwvd_bwd_cpu);
}
