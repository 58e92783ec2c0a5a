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
//   * Rows are processed in chunks of 2 * chunk_pairs(n_fft): the Hermitian lag products of two
//     rows share one complex FFT (ATen's batched c2c, MKL on x86), so nothing of size B*N*n_fft
//     is ever allocated. Only rows some frame's support reaches are built.
//   * Needs -fopenmp (setup.py): without it at::parallel_for silently runs serially.
//   * Each filter's Gaussian weight depends on (d, k) only: it is tabulated once per call as a
//     ragged stencil (one contiguous bin run per d) shared read-only by every task; the hot loops
//     are dot products / axpys of W (or A) row segments with stencil rows. Weights come from a
//     Gaussian recurrence along each row (no exp per term); a filter whose stencil would overflow
//     kStencilBudgetBytes generates its rows per use instead (bounded memory, same cost per term).
//   * Sums over a frame's ellipse run in a fixed order (rows ascending, bins ascending in fixed
//     lanes); parameter gradients are reduced through a per-tile workspace in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
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
constexpr int64_t kTileRows = 4096;
// Memory for tabulated stencils (all filters). Past it a filter generates its weights per use
// (the same recurrence: about the same cost per term, bounded memory). LWVD_CPU_STENCIL_BUDGET_BYTES overrides it; the tests
// set it to 0 to exercise the on-the-fly path on small problems.
constexpr int64_t kStencilBudgetBytes = int64_t(32) << 20;
int64_t stencil_budget_bytes() {
  const char* env = std::getenv("LWVD_CPU_STENCIL_BUDGET_BYTES");
  if (env == nullptr || *env == '\0') return kStencilBudgetBytes;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  return (end != env && v >= 0) ? static_cast<int64_t>(v) : kStencilBudgetBytes;
}

inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

int64_t chunk_pairs(int64_t n_fft) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxChunkPairs, kChunkElements / n_fft));
}

// ---- Per-filter stencils. ----
// Every stencil row is a run of kLanes-aligned blocks: runs are padded with zero weights to a
// multiple of kLanes (shifted left where they would pass the row end), and WVD / A rows are stored
// with a stride of round_up(n_fft, kLanes) whose extra columns hold zeros. The hot loops are then
// fixed-width blocks with no scalar tail, accumulated lane-wise across rows and reduced once per
// (filter, frame, chunk): the per-row overhead, not the arithmetic, was the cost (one ellipse row is
// ~11 bins at configuration S). The lane count fixes the summation order at compile time.
constexpr int64_t kLanes = 4;
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

struct RowInfo {
  int64_t off;    // into Stencil::w (tabulated filters)
  int32_t k0;     // first bin of the padded run
  int32_t nblk;   // number of kLanes blocks (0: the ellipse misses every bin at this d)
  int32_t first;  // first bin with a non-zero weight (the run is [first, first + len))
  int32_t len;
};

// Terms between two exact evaluations of exp in a stencil row (see Stencil::row_values): the
// recurrence's rounding error grows with the square of the steps per lane (16 here, ~1e-14
// relative in double), and two exp per anchor over 64 terms cost about one multiply per term.
constexpr int64_t kAnchorTerms = 64;

// |b| beyond this is far outside every ellipse (see Stencil::b); its square fits float32.
constexpr double kMomentBClamp = 1e15;

template <typename scalar_t>
struct Stencil {
  FilterGeometry<double> g;  // geometry in double: weights are computed in double, stored in scalar_t
  double trunc2 = 0;
  double q_max = 0;  // min(trunc2, q where exp(-q/2) is no longer a normal scalar_t): the run's q limit
  int64_t n_fft = 0, stride = 0;
  int64_t radius = 0;  // |d| <= radius
  scalar_t norm = 0;
  double norm_d = 0;
  double sigma_nu = 0;
  double beta = 0;       // b step per bin: 1 / (2 M sigma_nu)
  double c_bin = 0;      // exp(-beta^2 / (1 - rho^2)): ratio of consecutive per-bin ratios
  bool tabulated = false;   // weights in w
  bool has_info = false;    // runs in info (else found per use)
  // rho == 0: exp(-q/2) = exp(-a^2/2) exp(-b^2/2) and the run of row d is symmetric about the
  // centre, so a row is scale(d) x profile, and rows with the same run share one profile in w:
  // the table is a few KiB per filter instead of one run per d (at S 1.6 MB for 80 filters, which
  // streamed from L3 on every frame; now L1/L2 resident).
  bool separable = false;
  std::vector<RowInfo> info;  // per d + radius
  std::vector<scalar_t> w;    // exp(-q/2) where q <= trunc2, 0 elsewhere (padded runs); separable: profiles
  std::vector<scalar_t> rscale;  // separable, with info: exp(-a^2/2) per d + radius
  // Backward moments: b = (nu_k - center) / sigma_nu for k < n_fft as quad_form forms it, 0 in the
  // padding, clamped to +-kMomentBClamp (far beyond the ellipse, |b| <= |c| + |a| < 80, so only
  // where the weight is 0: c stays finite there and W E c = 0, also in float32 for tiny sigma_nu).
  std::vector<scalar_t> b;

  double q_of(int64_t d, int64_t k) const {
    return quad_form(g, static_cast<double>(d), bin_frequency<double>(k, n_fft) - g.center);
  }

  // The padded run of row d: the bins with q <= q_max (quad_form and bin_range of lwvd_math.cuh
  // decide, as in every backend). Weights past q_max are subnormal (only near the "every term"
  // boundary of effective_trunc2, truncate=None) and flushed to 0: they change a sum by < 1e-37
  // relative in float32 and would put subnormal operands (microcode assists, ~100x slower) in the
  // hot loops. The ellipse row is an interval (q is convex in k).
  RowInfo extent(int64_t d) const {
    RowInfo ri{0, 0, 0, 0, 0};
    int64_t lo, hi;
    bin_range(g, d, trunc2, n_fft, &lo, &hi);  // (also where the slope overflows: lwvd_math.cuh)
    int64_t first = -1, last = -2;
    for (int64_t k = lo; k <= hi; ++k) {
      if (q_of(d, k) <= q_max) {
        if (first < 0) first = k;
        last = k;
      }
    }
    if (first < 0) return ri;
    const int64_t len = last - first + 1, padded = round_up(len, kLanes);
    const int64_t k0 = std::min(first, stride - padded);
    ri.k0 = static_cast<int32_t>(k0);
    ri.nblk = static_cast<int32_t>(padded / kLanes);
    ri.first = static_cast<int32_t>(first);
    ri.len = static_cast<int32_t>(len);
    return ri;
  }

  // Weights of run ri of row d into out[0 .. nblk * kLanes) (zeros in the padding), in double,
  // stored in scalar_t. No exp per term: along a row q is quadratic in k, so
  //   e[k+1] = e[k] r[k],  r[k+1] = r[k] c_bin,  r[k] = exp(-(q[k+1] - q[k]) / 2),
  // run as kLanes interleaved chains (lane j holds k = k_a + j + 4i; 4-step ratios R, R *= c^16),
  // re-anchored with an exact exp(-q/2) every kAnchorTerms terms. Where a ratio is not a finite
  // normal double (very narrow frequency spreads: few terms per row) the block uses exp per term.
  void row_values(int64_t d, const RowInfo& ri, scalar_t* out) const {
    const int64_t n_out = int64_t(ri.nblk) * kLanes;
    std::fill(out, out + n_out, scalar_t(0));
    scalar_t* o = out + (ri.first - ri.k0);
    const double a = static_cast<double>(d) * g.inv_sigma_t;
    const double i1mr2 = g.inv_1mr2;
    const double c4 = (c_bin * c_bin) * (c_bin * c_bin);
    const double c16 = (c4 * c4) * (c4 * c4);
    const double lo_keep = static_cast<double>(std::numeric_limits<scalar_t>::min());
    auto store = [&](int64_t i, double e) { o[i] = e >= lo_keep ? static_cast<scalar_t>(e) : scalar_t(0); };
    for (int64_t i0 = 0; i0 < ri.len; i0 += kAnchorTerms) {
      const int64_t n = std::min<int64_t>(kAnchorTerms, ri.len - i0);
      const int64_t ka = ri.first + i0;
      const double e0 = std::exp(-0.5 * q_of(d, ka));
      // q[k+1] - q[k] = i1mr2 beta (b[k] + b[k+1] - 2 rho a), b[k] = (nu_k - center) / sigma_nu.
      const double b0 = (bin_frequency<double>(ka, n_fft) - g.center) * g.inv_sigma_nu;
      const double r0 = std::exp(-0.5 * i1mr2 * beta * (2.0 * b0 + beta - 2.0 * g.rho * a));
      double el[kLanes], R[kLanes];
      el[0] = e0;
      el[1] = e0 * r0;
      el[2] = el[1] * (r0 * c_bin);
      el[3] = el[2] * (r0 * (c_bin * c_bin));
      // R_0 = r0 r1 r2 r3 = r0^4 c^6;  R_j = R_0 c^(4j)
      R[0] = (r0 * r0) * (r0 * r0) * (c4 * (c_bin * c_bin));
      R[1] = R[0] * c4;
      R[2] = R[1] * c4;
      R[3] = R[2] * c4;
      bool ok = std::isfinite(c16) && c16 > 0.0;
      for (int j = 0; j < kLanes; ++j) ok = ok && std::isfinite(R[j]) && R[j] >= std::numeric_limits<double>::min();
      if (!ok) {
        for (int64_t i = 0; i < n; ++i) store(i0 + i, std::exp(-0.5 * q_of(d, ka + i)));
        continue;
      }
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes) {
        for (int j = 0; j < kLanes; ++j) {
          store(i0 + i + j, el[j]);
          el[j] *= R[j];
          R[j] *= c16;
        }
      }
      for (int j = 0; i + j < n; ++j) store(i0 + i + j, el[j]);
    }
  }

  scalar_t row_scale(int64_t d) const {
    const double a = static_cast<double>(d) * g.inv_sigma_t;
    return static_cast<scalar_t>(std::exp(-0.5 * (a * a)));
  }

  // Row d: its run, a pointer to its weights (the table, or scratch of `stride` entries) and a
  // factor: weight = *scale x returned value (separable filters: the profile; else *scale = 1).
  const scalar_t* row(int64_t d, scalar_t* scratch, RowInfo* ri, scalar_t* scale) const {
    *scale = scalar_t(1);
    if (separable) *scale = has_info ? rscale[d + radius] : row_scale(d);
    if (tabulated) {
      *ri = info[d + radius];
      return w.data() + ri->off;
    }
    *ri = has_info ? info[d + radius] : extent(d);
    row_values(separable ? 0 : d, *ri, scratch);  // at d = 0, q = b^2: the profile
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
  // exp(-q/2) >= the smallest normal scalar_t  <=>  q <= -2 log(min)  (flushed to 0 beyond).
  const double q_normal = -2.0 * std::log(static_cast<double>(std::numeric_limits<scalar_t>::min()));
  const int64_t stride = round_up(n_fft, kLanes);
  std::vector<Stencil<scalar_t>> out(F);
  for (int64_t f = 0; f < F; ++f) {
    auto& s = out[f];
    s.g = make_filter<double>(pc[f], pst[f], psn[f], pr[f], trunc2, n_fft, d_limit);
    s.trunc2 = trunc2;
    s.q_max = std::min(trunc2, q_normal);
    s.n_fft = n_fft;
    s.stride = stride;
    s.radius = s.g.d_radius;
    s.norm_d = s.g.norm;
    s.sigma_nu = psn[f];
    s.beta = 1.0 / (2.0 * static_cast<double>(n_fft) * psn[f]);
    s.c_bin = std::exp(-s.beta * s.beta * s.g.inv_1mr2);
    s.norm = make_filter<scalar_t>(pc[f], pst[f], psn[f], pr[f], trunc2, n_fft, d_limit).norm;
    s.separable = pr[f] == 0.0;
    if (with_v) {
      s.b.assign(stride, scalar_t(0));
      for (int64_t k = 0; k < n_fft; ++k) {
        const double bk = (bin_frequency<double>(k, n_fft) - s.g.center) * s.g.inv_sigma_nu;
        s.b[k] = static_cast<scalar_t>(bk > kMomentBClamp ? kMomentBClamp : bk < -kMomentBClamp ? -kMomentBClamp : bk);
      }
    }
  }
  // Row runs first (one q per term of the bounding runs, no exp), then which filters' weights fit
  // the budget, in filter order. Runs and weights each get the budget; runs of filters past it
  // (huge time spreads) are found per use.
  const int64_t budget = stencil_budget_bytes();
  int64_t info_bytes = 0;
  for (int64_t f = 0; f < F; ++f) {
    const int64_t b = (2 * out[f].radius + 1) * int64_t(sizeof(RowInfo));
    if (info_bytes + b <= budget) {
      out[f].has_info = true;
      info_bytes += b;
    }
  }
  std::vector<int64_t> table_size(F, 0);
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      auto& s = out[f];
      if (!s.has_info) continue;
      const int64_t rows = 2 * s.radius + 1;
      s.info.resize(rows);
      if (s.separable) s.rscale.resize(rows);
      int64_t pos = 0;
      // separable: (first, len) of a run already given a profile (runs repeat in blocks of d).
      std::vector<RowInfo> seen;
      for (int64_t i = 0; i < rows; ++i) {
        RowInfo ri = s.extent(i - s.radius);
        ri.off = -1;
        if (s.separable) {
          s.rscale[i] = s.row_scale(i - s.radius);
          for (const auto& o : seen)
            if (o.first == ri.first && o.len == ri.len) ri.off = o.off;
        }
        if (ri.off < 0) {
          ri.off = pos;
          pos += int64_t(ri.nblk) * kLanes;
          if (s.separable) seen.push_back(ri);
        }
        s.info[i] = ri;
      }
      table_size[f] = pos;
    }
  });
  int64_t used = 0;
  for (int64_t f = 0; f < F; ++f) {
    auto& s = out[f];
    if (!s.has_info) continue;
    const int64_t bytes = table_size[f] * int64_t(sizeof(scalar_t));
    if (used + bytes <= budget) {
      s.tabulated = true;
      used += bytes;
    }
  }
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      auto& s = out[f];
      if (!s.tabulated) continue;
      s.w.resize(std::max<int64_t>(table_size[f], 1));
      for (int64_t i = 0; i < 2 * s.radius + 1; ++i)
        s.row_values(s.separable ? 0 : i - s.radius, s.info[i], s.w.data() + s.info[i].off);
    }
  });
  return out;
}

// ---- Separable filters (rho == 0): ring projections + a time correlation (issue #13). ----
// For rho == 0, E(d, k) = rs(d) p(k) with rs(d) = exp(-a_d^2/2), p(k) = exp(-b_k^2/2), and the run of
// row d is the set of bins with b_k^2 <= q_max - a_d^2: the runs of all rows are J nested intervals
// I_0 (smallest) c ... c I_{J-1} = the run of d = 0. So, per W row n, the J cumulative ring sums
//   Q_j[n] = sum_{k in I_j} p(k) W[n, k]
// (one pass over I_{J-1}: the row's bins once, whatever the number of frames that read it) give every
// row dot of the ellipse, and a frame is a correlation in time:
//   K[f, t] = norm * sum_d rs(d) Q_{j(d)}[t hop + d],
// in segments of d with the same j (contiguous, vectorised). The direct walk dots every (frame, row)
// pair, so it recomputes each row's projection (2R+1)/hop times: 2.4x at S, 12x at hop 32, 7x for wide
// filters - the configurations that were 5-23x the FFT floor. The same identity transposed builds the
// A rows of the grad_z pass. The tables are per filter O(R + bins) and do not depend on the stencil
// budget (so budget 0 and the default take the same path, bitwise); filters past kSepMaxRows rows
// or past kSepBudgetBytes (make_sep_plans) keep the direct path.
constexpr int64_t kSepMaxRows = int64_t(1) << 21;
constexpr int64_t kSepBlock = 32;  // rows per projection block (a multiple of every kernel's block)

template <typename T>
struct SepPlan {
  bool on = false;
  int64_t R = 0, J = 0;
  std::vector<int32_t> ring_start;  // J + 1 offsets into ring_k / ring_p: ring j = I_j \ I_{j-1}
  std::vector<int32_t> ring_k;      // bins, ring by ring (ascending within a ring)
  std::vector<T> ring_p;            // p(k) of those bins
  std::vector<T> ring_b;            // b = (nu_k - center) / sigma_nu of those bins, as Stencil::b (moments)
  std::vector<T> rs;                // exp(-a_d^2 / 2) per d + R (0 where the row is empty)
  std::vector<int32_t> jidx;        // per d + R: the interval of row d, -1 where the row is empty
  std::vector<int32_t> seg_end;     // per d + R: the last d + R of the segment of equal jidx holding d
  // Backward (with_moments): p b, p b^2 per ring bin, rs a, rs a^2 per d (a = d / sigma_t).
  std::vector<T> ring_pb, ring_pbb, rsa, rsaa;
};

template <typename scalar_t>
SepPlan<scalar_t> make_sep_plan(const Stencil<scalar_t>& s, bool with_moments = false) {
  SepPlan<scalar_t> sp;
  if (!s.separable || 2 * s.radius + 1 > kSepMaxRows) return sp;
  const int64_t R = s.radius, rows = 2 * R + 1;
  std::vector<int32_t> first(rows), last(rows);
  for (int64_t i = 0; i < rows; ++i) {
    const RowInfo ri = (s.has_info ? s.info[i] : s.extent(i - R));
    first[i] = ri.nblk > 0 ? ri.first : 0;
    last[i] = ri.nblk > 0 ? ri.first + ri.len - 1 : -1;
  }
  // Distinct non-empty runs, nested: sort by length; each must contain the previous.
  std::vector<std::pair<int32_t, int32_t>> iv;
  for (int64_t i = 0; i < rows; ++i)
    if (last[i] >= first[i]) iv.emplace_back(first[i], last[i]);
  std::sort(iv.begin(), iv.end(), [](const auto& a, const auto& b) {
    return (a.second - a.first) != (b.second - b.first) ? (a.second - a.first) < (b.second - b.first) : a.first < b.first;
  });
  iv.erase(std::unique(iv.begin(), iv.end()), iv.end());
  for (size_t j = 1; j < iv.size(); ++j)
    if (iv[j].first > iv[j - 1].first || iv[j].second < iv[j - 1].second) return sp;  // not nested: direct path
  sp.R = R;
  sp.J = static_cast<int64_t>(iv.size());
  sp.rs.assign(rows, scalar_t(0));
  sp.jidx.assign(rows, -1);
  sp.seg_end.assign(rows, 0);
  for (int64_t i = 0; i < rows; ++i) {
    if (last[i] < first[i]) continue;
    const auto it = std::lower_bound(iv.begin(), iv.end(), std::make_pair(first[i], last[i]),
                                     [](const auto& a, const auto& b) {
                                       return (a.second - a.first) != (b.second - b.first)
                                                  ? (a.second - a.first) < (b.second - b.first)
                                                  : a.first < b.first;
                                     });
    sp.jidx[i] = static_cast<int32_t>(it - iv.begin());
    sp.rs[i] = s.has_info ? s.rscale[i] : s.row_scale(i - R);
  }
  for (int64_t i = rows - 1; i >= 0; --i)
    sp.seg_end[i] = (i + 1 < rows && sp.jidx[i + 1] == sp.jidx[i]) ? sp.seg_end[i + 1] : static_cast<int32_t>(i);
  // Rings and their weights: p(k) = exp(-q(0, k)/2) in double, stored in scalar_t.
  sp.ring_start.assign(sp.J + 1, 0);
  int32_t lo = 0, hi = -1;
  for (int64_t j = 0; j < sp.J; ++j) {
    auto add = [&](int32_t k) {
      sp.ring_k.push_back(k);
      sp.ring_p.push_back(static_cast<scalar_t>(std::exp(-0.5 * s.q_of(0, k))));
      const double bk = (bin_frequency<double>(k, s.n_fft) - s.g.center) * s.g.inv_sigma_nu;
      sp.ring_b.push_back(static_cast<scalar_t>(bk > kMomentBClamp ? kMomentBClamp : bk < -kMomentBClamp ? -kMomentBClamp : bk));
    };
    const int32_t nlo = iv[j].first, nhi = iv[j].second;
    if (j == 0) {
      for (int32_t k = nlo; k <= nhi; ++k) add(k);
    } else {
      for (int32_t k = nlo; k < lo; ++k) add(k);
      for (int32_t k = hi + 1; k <= nhi; ++k) add(k);
    }
    lo = nlo;
    hi = nhi;
    sp.ring_start[j + 1] = static_cast<int32_t>(sp.ring_k.size());
  }
  if (with_moments) {
    for (size_t i = 0; i < sp.ring_k.size(); ++i) {
      const double pb = static_cast<double>(sp.ring_p[i]) * static_cast<double>(sp.ring_b[i]);
      sp.ring_pb.push_back(static_cast<scalar_t>(pb));
      sp.ring_pbb.push_back(static_cast<scalar_t>(pb * static_cast<double>(sp.ring_b[i])));
    }
    sp.rsa.assign(rows, scalar_t(0));
    sp.rsaa.assign(rows, scalar_t(0));
    for (int64_t i = 0; i < rows; ++i) {
      const double a = static_cast<double>(i - R) * s.g.inv_sigma_t;
      sp.rsa[i] = static_cast<scalar_t>(static_cast<double>(sp.rs[i]) * a);
      sp.rsaa[i] = static_cast<scalar_t>(static_cast<double>(sp.rs[i]) * a * a);
    }
  }
  sp.on = true;
  return sp;
}

// Plans for every filter, within kSepBudgetBytes in filter order (a fixed constant, not the stencil
// budget's environment override, so both stencil paths see the same plans): per-d tables of huge
// time spreads (kSepMaxRows rows: 40 MB each with the moments) must not add up over filters. Filters
// past it keep the direct path.
constexpr int64_t kSepBudgetBytes = int64_t(64) << 20;
template <typename scalar_t>
std::vector<SepPlan<scalar_t>> make_sep_plans(const std::vector<Stencil<scalar_t>>& st, bool with_moments) {
  const int64_t F = static_cast<int64_t>(st.size());
  std::vector<char> take(F, 0);
  int64_t used = 0;
  for (int64_t f = 0; f < F; ++f) {
    if (!st[f].separable || 2 * st[f].radius + 1 > kSepMaxRows) continue;
    const int64_t per_d = (with_moments ? 3 : 1) * int64_t(sizeof(scalar_t)) + 2 * int64_t(sizeof(int32_t));
    const int64_t bytes = (2 * st[f].radius + 1) * per_d + st[f].n_fft * (4 * int64_t(sizeof(scalar_t)) + 4);
    if (used + bytes <= kSepBudgetBytes) {
      take[f] = 1;
      used += bytes;
    }
  }
  std::vector<SepPlan<scalar_t>> sp(F);
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f)
      if (take[f]) sp[f] = make_sep_plan(st[f], with_moments);
  });
  return sp;
}

// ---- AVX2 + FMA versions of the separable-filter kernels (runtime dispatch, x86-64 GCC). ----
// The baseline build is x86-64 (SSE2); these few kernels are throughput-bound (ring projections,
// segment dots, transposes), unlike the latency-bound direct row kernels for which a whole-file AVX2
// recompile bought nothing. Chosen once per process by cpuid (LWVD_CPU_NO_AVX2=1 forces the baseline
// kernels): results are deterministic on a machine and across thread counts, and differ from the
// baseline kernels' by rounding (FMA, 8 lanes).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LWVD_AVX2_DISPATCH 1
}  // namespace
}  // namespace cpu
}  // namespace lwvd
#include <immintrin.h>
namespace lwvd {
namespace cpu {
namespace {
bool use_avx2() {
  static const bool on = [] {
    const char* env = std::getenv("LWVD_CPU_NO_AVX2");
    if (env != nullptr && *env != '\0' && *env != '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return on;
}
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
alignas(32) static const int32_t kMask32[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
alignas(32) static const int64_t kMask64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int L = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V ld(const T* p) { return _mm256_loadu_ps(p); }
  static void st(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V set(T x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static __m256i mask(int64_t n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask32 + 8 - n)); }
  static V mld(const T* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static void mst(T* p, __m256i m, V v) { _mm256_maskstore_ps(p, m, v); }
  static T hsum(V v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
  }
};
struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int L = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V ld(const T* p) { return _mm256_loadu_pd(p); }
  static void st(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V set(T x) { return _mm256_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static __m256i mask(int64_t n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask64 + 4 - n)); }
  static V mld(const T* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  static void mst(T* p, __m256i m, V v) { _mm256_maskstore_pd(p, m, v); }
  static T hsum(V v) {
    __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
  }
};
template <typename T> struct Ops;
template <> struct Ops<float> : F32 {};
template <> struct Ops<double> : F64 {};

// rows [r0, r1): multiples of kSepBlock (32 floats = 4 vectors; 32 doubles = 8 vectors).
template <typename T>
__attribute__((noinline)) void ring_project(const int32_t* __restrict__ ring_start, const int32_t* __restrict__ ring_k,
                                            const T* __restrict__ ring_p, int64_t J, const T* __restrict__ wt,
                                            int64_t cs, int64_t r0, int64_t r1, T* __restrict__ Q) {
  using O = Ops<T>;
  constexpr int64_t W = 4 * O::L;
  for (int64_t rb = r0; rb < r1; rb += W) {
    auto a0 = O::zero(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t j = 0; j < J; ++j) {
      for (int32_t i = ring_start[j]; i < ring_start[j + 1]; ++i) {
        const T* __restrict__ w = wt + int64_t(ring_k[i]) * cs + rb;
        const auto pk = O::set(ring_p[i]);
        a0 = O::fma(O::ld(w), pk, a0);
        a1 = O::fma(O::ld(w + O::L), pk, a1);
        a2 = O::fma(O::ld(w + 2 * O::L), pk, a2);
        a3 = O::fma(O::ld(w + 3 * O::L), pk, a3);
      }
      T* q = Q + j * cs + rb;
      O::st(q, a0);
      O::st(q + O::L, a1);
      O::st(q + 2 * O::L, a2);
      O::st(q + 3 * O::L, a3);
    }
  }
}

template <typename T>
inline T dot_seg(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  using O = Ops<T>;
  auto s0 = O::zero(), s1 = s0;
  int64_t i = 0;
  for (; i + 2 * O::L <= n; i += 2 * O::L) {
    s0 = O::fma(O::ld(a + i), O::ld(b + i), s0);
    s1 = O::fma(O::ld(a + i + O::L), O::ld(b + i + O::L), s1);
  }
  if (i + O::L <= n) {
    s0 = O::fma(O::ld(a + i), O::ld(b + i), s0);
    i += O::L;
  }
  if (i < n) {  // masked lanes read as 0 (nothing past the segment is touched)
    const __m256i m = O::mask(n - i);
    s1 = O::fma(O::mld(a + i, m), O::mld(b + i, m), s1);
  }
  return O::hsum(O::add(s0, s1));
}

// One frame's rows, segment by segment, in two vector accumulators reduced once per call (a
// horizontal sum per segment cost more than the segment's ~14-row dot at S).
template <typename T>
__attribute__((noinline)) T sep_frame(const SepPlan<T>& sp, const T* __restrict__ Q, int64_t cs, int64_t d_lo,
                                      int64_t d_hi, int64_t base) {
  using O = Ops<T>;
  auto s0 = O::zero(), s1 = s0;
  const T* __restrict__ rs = sp.rs.data();
  for (int64_t i = d_lo + sp.R; i <= d_hi + sp.R;) {
    const int64_t e = std::min<int64_t>(sp.seg_end[i], d_hi + sp.R);
    const int32_t j = sp.jidx[i];
    if (j >= 0) {
      const T* __restrict__ a = rs + i;
      const T* __restrict__ b = Q + j * cs + (base + i - sp.R);
      const int64_t n = e - i + 1;
      int64_t u = 0;
      for (; u + 2 * O::L <= n; u += 2 * O::L) {
        s0 = O::fma(O::ld(a + u), O::ld(b + u), s0);
        s1 = O::fma(O::ld(a + u + O::L), O::ld(b + u + O::L), s1);
      }
      if (u + O::L <= n) {
        s0 = O::fma(O::ld(a + u), O::ld(b + u), s0);
        u += O::L;
      }
      if (u < n) {
        const __m256i m = O::mask(n - u);
        s1 = O::fma(O::mld(a + u, m), O::mld(b + u, m), s1);
      }
    }
    i = e + 1;
  }
  return O::hsum(O::add(s0, s1));
}

template <typename T>
__attribute__((noinline)) void sep_scatter(const SepPlan<T>& sp, T coef, T* __restrict__ H, int64_t cs, int64_t d_lo,
                                           int64_t d_hi, int64_t base) {
  using O = Ops<T>;
  const auto c = O::set(coef);
  for (int64_t i = d_lo + sp.R; i <= d_hi + sp.R;) {
    const int64_t e = std::min<int64_t>(sp.seg_end[i], d_hi + sp.R);
    const int32_t j = sp.jidx[i];
    if (j >= 0) {
      T* __restrict__ h = H + j * cs + (base + i - sp.R);
      const T* __restrict__ r = sp.rs.data() + i;
      const int64_t n = e - i + 1;
      int64_t u = 0;
      for (; u + O::L <= n; u += O::L) O::st(h + u, O::fma(O::ld(r + u), c, O::ld(h + u)));
      if (u < n) {
        const __m256i m = O::mask(n - u);
        O::mst(h + u, m, O::fma(O::mld(r + u, m), c, O::mld(h + u, m)));
      }
    }
    i = e + 1;
  }
}

template <typename T>
__attribute__((noinline)) void ring_scatter(const int32_t* __restrict__ ring_start, const int32_t* __restrict__ ring_k,
                                            const T* __restrict__ ring_p, int64_t J, T* __restrict__ H, int64_t cs,
                                            int64_t r0, int64_t r1, T* __restrict__ at) {
  using O = Ops<T>;
  // 2 vectors of rows at a time: the suffix sums Hc_j stay in registers while ring j is scattered.
  for (int64_t rb = r0; rb < r1; rb += 2 * O::L) {
    auto h0 = O::zero(), h1 = h0;
    for (int64_t j = J - 1; j >= 0; --j) {
      h0 = O::add(h0, O::ld(H + j * cs + rb));
      h1 = O::add(h1, O::ld(H + j * cs + rb + O::L));
      for (int32_t i = ring_start[j]; i < ring_start[j + 1]; ++i) {
        T* __restrict__ a = at + int64_t(ring_k[i]) * cs + rb;
        const auto pk = O::set(ring_p[i]);
        O::st(a, O::fma(h0, pk, O::ld(a)));
        O::st(a + O::L, O::fma(h1, pk, O::ld(a + O::L)));
      }
    }
  }
}

// 4 x 4 transpose of 64-bit units (one unit = a complex64 = the W values of two rows at one bin).
inline void transpose4(__m256d& a0, __m256d& a1, __m256d& a2, __m256d& a3) {
  const __m256d t0 = _mm256_unpacklo_pd(a0, a1), t1 = _mm256_unpackhi_pd(a0, a1);
  const __m256d t2 = _mm256_unpacklo_pd(a2, a3), t3 = _mm256_unpackhi_pd(a2, a3);
  a0 = _mm256_permute2f128_pd(t0, t2, 0x20);
  a1 = _mm256_permute2f128_pd(t1, t3, 0x20);
  a2 = _mm256_permute2f128_pd(t0, t2, 0x31);
  a3 = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// wt[k * cs + 2p + {0, 1}] = 2 x_p[2k + {0, 1}] for pairs p0 .. p0 + 3 (4 complex64 rows x_p), bins k < M.
__attribute__((noinline)) void transpose_out(const float* const* x, int64_t M, float* __restrict__ wt, int64_t cs) {
  const __m256 two = _mm256_set1_ps(2.0f);
  int64_t k = 0;
  for (; k + 4 <= M; k += 4) {
    __m256d a0 = _mm256_castps_pd(_mm256_loadu_ps(x[0] + 2 * k)), a1 = _mm256_castps_pd(_mm256_loadu_ps(x[1] + 2 * k));
    __m256d a2 = _mm256_castps_pd(_mm256_loadu_ps(x[2] + 2 * k)), a3 = _mm256_castps_pd(_mm256_loadu_ps(x[3] + 2 * k));
    transpose4(a0, a1, a2, a3);
    _mm256_storeu_ps(wt + (k + 0) * cs, _mm256_mul_ps(_mm256_castpd_ps(a0), two));
    _mm256_storeu_ps(wt + (k + 1) * cs, _mm256_mul_ps(_mm256_castpd_ps(a1), two));
    _mm256_storeu_ps(wt + (k + 2) * cs, _mm256_mul_ps(_mm256_castpd_ps(a2), two));
    _mm256_storeu_ps(wt + (k + 3) * cs, _mm256_mul_ps(_mm256_castpd_ps(a3), two));
  }
  for (; k < M; ++k)
    for (int p = 0; p < 4; ++p) {
      wt[k * cs + 2 * p] = 2.0f * x[p][2 * k];
      wt[k * cs + 2 * p + 1] = 2.0f * x[p][2 * k + 1];
    }
}

// x_p[2k + {0, 1}] (+)= at[k * cs + 2p + {0, 1}] (add: +=, else =), then those at entries = 0, for 4
// pairs, bins k < M.
__attribute__((noinline)) void transpose_in(float* const* x, int64_t M, float* __restrict__ at, int64_t cs, bool add) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= M; k += 4) {
    __m256d a0 = _mm256_castps_pd(_mm256_loadu_ps(at + (k + 0) * cs)), a1 = _mm256_castps_pd(_mm256_loadu_ps(at + (k + 1) * cs));
    __m256d a2 = _mm256_castps_pd(_mm256_loadu_ps(at + (k + 2) * cs)), a3 = _mm256_castps_pd(_mm256_loadu_ps(at + (k + 3) * cs));
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(at + (k + i) * cs, zero);
    transpose4(a0, a1, a2, a3);
    if (!add) {
      _mm256_storeu_ps(x[0] + 2 * k, _mm256_castpd_ps(a0));
      _mm256_storeu_ps(x[1] + 2 * k, _mm256_castpd_ps(a1));
      _mm256_storeu_ps(x[2] + 2 * k, _mm256_castpd_ps(a2));
      _mm256_storeu_ps(x[3] + 2 * k, _mm256_castpd_ps(a3));
      continue;
    }
    _mm256_storeu_ps(x[0] + 2 * k, _mm256_add_ps(_mm256_loadu_ps(x[0] + 2 * k), _mm256_castpd_ps(a0)));
    _mm256_storeu_ps(x[1] + 2 * k, _mm256_add_ps(_mm256_loadu_ps(x[1] + 2 * k), _mm256_castpd_ps(a1)));
    _mm256_storeu_ps(x[2] + 2 * k, _mm256_add_ps(_mm256_loadu_ps(x[2] + 2 * k), _mm256_castpd_ps(a2)));
    _mm256_storeu_ps(x[3] + 2 * k, _mm256_add_ps(_mm256_loadu_ps(x[3] + 2 * k), _mm256_castpd_ps(a3)));
  }
  for (; k < M; ++k)
    for (int p = 0; p < 4; ++p) {
      x[p][2 * k] = (add ? x[p][2 * k] : 0.0f) + at[k * cs + 2 * p];
      x[p][2 * k + 1] = (add ? x[p][2 * k + 1] : 0.0f) + at[k * cs + 2 * p + 1];
      at[k * cs + 2 * p] = at[k * cs + 2 * p + 1] = 0.0f;
    }
}
// The packed FFT input of rows a and b = a + 1 (both at least h samples from either end):
// x[m] = r_a[m] + i r_b[m] for m in [0, h], x[M - m] = conj(r_a[m]) + i conj(r_b[m]) for m in [1, h],
// 0 between, r_n[m] = z[n + m] conj(z[n - m]); z[n + m] at (far, fai) + m, z[n - m] at (rra, ria) + m
// (row a; row b reads one further forwards and one back in the reversed copy).
__attribute__((noinline)) void pack_pair(const float* __restrict__ far, const float* __restrict__ fai,
                                         const float* __restrict__ rra, const float* __restrict__ ria, int64_t h,
                                         int64_t M, float* __restrict__ x) {
  auto prods = [&](int64_t m, __m256& re1, __m256& im1, __m256& re2, __m256& im2) {
    const __m256 zr = _mm256_loadu_ps(far + m), zi = _mm256_loadu_ps(fai + m);
    const __m256 wr = _mm256_loadu_ps(rra + m), wi = _mm256_loadu_ps(ria + m);
    const __m256 zr1 = _mm256_loadu_ps(far + 1 + m), zi1 = _mm256_loadu_ps(fai + 1 + m);
    const __m256 wr1 = _mm256_loadu_ps(rra - 1 + m), wi1 = _mm256_loadu_ps(ria - 1 + m);
    const __m256 ar = _mm256_fmadd_ps(zr, wr, _mm256_mul_ps(zi, wi));
    const __m256 ai = _mm256_fmsub_ps(zi, wr, _mm256_mul_ps(zr, wi));
    const __m256 br = _mm256_fmadd_ps(zr1, wr1, _mm256_mul_ps(zi1, wi1));
    const __m256 bi = _mm256_fmsub_ps(zi1, wr1, _mm256_mul_ps(zr1, wi1));
    re1 = _mm256_sub_ps(ar, bi);
    im1 = _mm256_add_ps(ai, br);
    re2 = _mm256_add_ps(ar, bi);
    im2 = _mm256_sub_ps(br, ai);
  };
  auto scalar = [&](int64_t m, float* o1, float* o2) {
    const float ar = std::fma(far[m], rra[m], fai[m] * ria[m]);
    const float ai = std::fma(fai[m], rra[m], -(far[m] * ria[m]));
    const float br = std::fma(far[1 + m], rra[m - 1], fai[1 + m] * ria[m - 1]);
    const float bi = std::fma(fai[1 + m], rra[m - 1], -(far[1 + m] * ria[m - 1]));
    o1[0] = ar - bi;
    o1[1] = ai + br;
    if (o2 != nullptr) {
      o2[0] = ar + bi;
      o2[1] = br - ai;
    }
  };
  scalar(0, x, nullptr);
  int64_t m = 1;
  for (; m + 8 <= h + 1; m += 8) {
    __m256 re1, im1, re2, im2;
    prods(m, re1, im1, re2, im2);
    const __m256 lo1 = _mm256_unpacklo_ps(re1, im1), hi1 = _mm256_unpackhi_ps(re1, im1);
    _mm256_storeu_ps(x + 2 * m, _mm256_permute2f128_ps(lo1, hi1, 0x20));
    _mm256_storeu_ps(x + 2 * m + 8, _mm256_permute2f128_ps(lo1, hi1, 0x31));
    const __m256 lo2 = _mm256_unpacklo_ps(re2, im2), hi2 = _mm256_unpackhi_ps(re2, im2);
    const __m256d c0 = _mm256_castps_pd(_mm256_permute2f128_ps(lo2, hi2, 0x20));  // complex m .. m+3
    const __m256d c1 = _mm256_castps_pd(_mm256_permute2f128_ps(lo2, hi2, 0x31));  // complex m+4 .. m+7
    _mm256_storeu_ps(x + 2 * (M - m - 7), _mm256_castpd_ps(_mm256_permute4x64_pd(c1, 0x1B)));
    _mm256_storeu_ps(x + 2 * (M - m - 3), _mm256_castpd_ps(_mm256_permute4x64_pd(c0, 0x1B)));
  }
  for (; m <= h; ++m) scalar(m, x + 2 * m, x + 2 * (M - m));
  for (int64_t q = h + 1; q <= M - 1 - h; ++q) x[2 * q] = x[2 * q + 1] = 0.0f;
}
// Moment projections: Q0, Qc, Qcc (ring sums of p W, p b W, p b^2 W; planes at Q + (3 j + e) cs).
template <typename T>
__attribute__((noinline)) void ring_project3(const int32_t* __restrict__ ring_start, const int32_t* __restrict__ ring_k,
                                             const T* __restrict__ p0, const T* __restrict__ p1,
                                             const T* __restrict__ p2, int64_t J, const T* __restrict__ wt, int64_t cs,
                                             int64_t r0, int64_t r1, T* __restrict__ Q) {
  using O = Ops<T>;
  constexpr int64_t W = 2 * O::L;
  for (int64_t rb = r0; rb < r1; rb += W) {
    auto a0 = O::zero(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0;
    for (int64_t j = 0; j < J; ++j) {
      for (int32_t i = ring_start[j]; i < ring_start[j + 1]; ++i) {
        const T* __restrict__ w = wt + int64_t(ring_k[i]) * cs + rb;
        const auto w0 = O::ld(w), w1 = O::ld(w + O::L);
        const auto q0 = O::set(p0[i]), q1 = O::set(p1[i]), q2 = O::set(p2[i]);
        a0 = O::fma(w0, q0, a0);
        a1 = O::fma(w1, q0, a1);
        b0 = O::fma(w0, q1, b0);
        b1 = O::fma(w1, q1, b1);
        c0 = O::fma(w0, q2, c0);
        c1 = O::fma(w1, q2, c1);
      }
      T* q = Q + 3 * j * cs + rb;
      O::st(q, a0);
      O::st(q + O::L, a1);
      O::st(q + cs, b0);
      O::st(q + cs + O::L, b1);
      O::st(q + 2 * cs, c0);
      O::st(q + 2 * cs + O::L, c1);
    }
  }
}

// The six moments (S0, Sa, Sc, Saa, Sac, Scc) of one frame's rows d_lo .. d_hi from the chunk's
// moment planes, segment by segment, into out[6].
template <typename T>
__attribute__((noinline)) void sep_moments(const SepPlan<T>& sp, const T* __restrict__ Q, int64_t cs, int64_t d_lo,
                                           int64_t d_hi, int64_t base, T* out) {
  using O = Ops<T>;
  auto m0 = O::zero(), ma = m0, mc = m0, maa = m0, mac = m0, mcc = m0;
  T s[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t i = d_lo + sp.R; i <= d_hi + sp.R;) {
    const int64_t e = std::min<int64_t>(sp.seg_end[i], d_hi + sp.R);
    const int32_t j = sp.jidx[i];
    if (j >= 0) {
      const T* q0 = Q + 3 * j * cs + (base + i - sp.R);
      const T* q1 = q0 + cs;
      const T* q2 = q0 + 2 * cs;
      const T* r = sp.rs.data() + i;
      const T* ra = sp.rsa.data() + i;
      const T* raa = sp.rsaa.data() + i;
      const int64_t n = e - i + 1;
      int64_t u = 0;
      auto step = [&](decltype(m0) v0, decltype(m0) v1, decltype(m0) v2, decltype(m0) w, decltype(m0) wa,
                      decltype(m0) waa) {
        m0 = O::fma(w, v0, m0);
        ma = O::fma(wa, v0, ma);
        maa = O::fma(waa, v0, maa);
        mc = O::fma(w, v1, mc);
        mac = O::fma(wa, v1, mac);
        mcc = O::fma(w, v2, mcc);
      };
      for (; u + O::L <= n; u += O::L)
        step(O::ld(q0 + u), O::ld(q1 + u), O::ld(q2 + u), O::ld(r + u), O::ld(ra + u), O::ld(raa + u));
      if (u < n) {
        const __m256i m = O::mask(n - u);
        step(O::mld(q0 + u, m), O::mld(q1 + u, m), O::mld(q2 + u, m), O::mld(r + u, m), O::mld(ra + u, m),
             O::mld(raa + u, m));
      }
    }
    i = e + 1;
  }
  s[kMomentS0] = O::hsum(m0);
  s[kMomentA] = O::hsum(ma);
  s[kMomentC] = O::hsum(mc);
  s[kMomentAA] = O::hsum(maa);
  s[kMomentAC] = O::hsum(mac);
  s[kMomentCC] = O::hsum(mcc);
  for (int k = 0; k < 6; ++k) out[k] = s[k];
}
// grad_z pass: 2 Ahat of rows a and b of one FFT pair x (complex64, length M) for m in [0, h],
// mirrored to m in [-h, 0) (Ahat[-m] = conj Ahat[m]); arrays centred (index h is m = 0):
//   2 Ahat_a[m] = X[m] + conj X[-m],  2 Ahat_b[m] = -i (X[m] - conj X[-m]).
__attribute__((noinline)) void ahat_pair(const float* __restrict__ x, int64_t h, int64_t M, float* __restrict__ ra,
                                         float* __restrict__ ia, float* __restrict__ rb, float* __restrict__ ib) {
  ra[h] = x[0] + x[0];
  ia[h] = x[1] - x[1];
  rb[h] = x[1] + x[1];
  ib[h] = x[0] - x[0];
  int64_t m = 1;
  const __m256i rev = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  for (; m + 8 <= h + 1; m += 8) {
    // X[m .. m+7] (re, im) and X[M-m-7 .. M-m] reversed to line up with m .. m+7
    const __m256 v0 = _mm256_loadu_ps(x + 2 * m), v1 = _mm256_loadu_ps(x + 2 * m + 8);
    const __m256 u0 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_loadu_ps(x + 2 * (M - m - 3))), 0x1B));
    const __m256 u1 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_loadu_ps(x + 2 * (M - m - 7))), 0x1B));
    // deinterleave: re / im of m .. m+7 in natural order
    auto deint = [&](__m256 a, __m256 b, __m256& re, __m256& im) {
      const __m256 lo = _mm256_permute2f128_ps(a, b, 0x20), hi = _mm256_permute2f128_ps(a, b, 0x31);
      // lo = complex (0, 1 | 4, 5), hi = (2, 3 | 6, 7): the per-lane shuffle gives (0 1 2 3 | 4 5 6 7)
      re = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
      im = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    };
    __m256 xr, xi, yr, yi;
    deint(v0, v1, xr, xi);
    deint(u0, u1, yr, yi);
    _mm256_storeu_ps(ra + h + m, _mm256_add_ps(xr, yr));
    _mm256_storeu_ps(ia + h + m, _mm256_sub_ps(xi, yi));
    _mm256_storeu_ps(rb + h + m, _mm256_add_ps(xi, yi));
    _mm256_storeu_ps(ib + h + m, _mm256_sub_ps(yr, xr));
  }
  for (; m <= h; ++m) {
    const int64_t im = M - m;
    ra[h + m] = x[2 * m] + x[2 * im];
    ia[h + m] = x[2 * m + 1] - x[2 * im + 1];
    rb[h + m] = x[2 * m + 1] + x[2 * im + 1];
    ib[h + m] = x[2 * im] - x[2 * m];
  }
  // mirror: index h - m = m's values (re), negated (im); reversed 8 at a time
  const __m256 sign = _mm256_set1_ps(-0.0f);
  m = 1;
  for (; m + 8 <= h + 1; m += 8) {
    float* dst_off[4] = {ra, ia, rb, ib};
    for (int q = 0; q < 4; ++q) {
      float* a = dst_off[q];
      __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a + h + m), rev);
      if (q & 1) v = _mm256_xor_ps(v, sign);
      _mm256_storeu_ps(a + h - m - 7, v);
    }
  }
  for (; m <= h; ++m) {
    ra[h - m] = ra[h + m];
    ia[h - m] = -ia[h + m];
    rb[h - m] = rb[h + m];
    ib[h - m] = -ib[h + m];
  }
}

// gre[i] += 2 (zr ar + zi ai), gim[i] += 2 (zi ar - zr ai), i < n.
__attribute__((noinline)) void gather_acc(const float* __restrict__ zr, const float* __restrict__ zi,
                                          const float* __restrict__ ar, const float* __restrict__ ai,
                                          float* __restrict__ gre, float* __restrict__ gim, int64_t n) {
  const __m256 two = _mm256_set1_ps(2.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_loadu_ps(ar + i), b = _mm256_loadu_ps(ai + i);
    const __m256 r = _mm256_loadu_ps(zr + i), q = _mm256_loadu_ps(zi + i);
    _mm256_storeu_ps(gre + i, _mm256_fmadd_ps(two, _mm256_fmadd_ps(r, a, _mm256_mul_ps(q, b)), _mm256_loadu_ps(gre + i)));
    _mm256_storeu_ps(gim + i, _mm256_fmadd_ps(two, _mm256_fmsub_ps(q, a, _mm256_mul_ps(r, b)), _mm256_loadu_ps(gim + i)));
  }
  for (; i < n; ++i) {
    gre[i] += 2.0f * (zr[i] * ar[i] + zi[i] * ai[i]);
    gim[i] += 2.0f * (zi[i] * ar[i] - zr[i] * ai[i]);
  }
}
}  // namespace avx2
#pragma GCC pop_options
#else
bool use_avx2() { return false; }
#endif

// ---- Row kernels: one kLanes block is one fixed-width vector. ----
// GCC/Clang vector extensions state the SIMD shape explicitly (SSE2 on baseline x86-64, NEON on
// arm64; a 4-double vector is split in two by the compiler): the auto-vectoriser left these short
// loops with aliasing checks and lane shuffles that cost more than the arithmetic. Elsewhere a
// plain array of kLanes lanes gives the same results (same lane order) more slowly.
#if defined(__GNUC__) || defined(__clang__)
// A 4-double vector is 32 bytes: without -mavx GCC warns that returning one "changes the ABI".
// These helpers live in an anonymous namespace and are inlined, so no ABI boundary is crossed.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
inline Vec<T> vzero() {
  return Vec<T>{} * T(0);
}
#else
template <typename T>
struct Vec {
  T v[kLanes];
  T& operator[](int i) { return v[i]; }
  T operator[](int i) const { return v[i]; }
#define LWVD_VOP(op)                                                               \
  Vec operator op(const Vec& o) const { Vec r; for (int i = 0; i < kLanes; ++i) r.v[i] = v[i] op o.v[i]; return r; } \
  Vec operator op(T s) const { Vec r; for (int i = 0; i < kLanes; ++i) r.v[i] = v[i] op s; return r; }
  LWVD_VOP(+)
  LWVD_VOP(-)
  LWVD_VOP(*)
#undef LWVD_VOP
  Vec& operator+=(const Vec& o) { for (int i = 0; i < kLanes; ++i) v[i] += o.v[i]; return *this; }
};
template <typename T>
inline Vec<T> vzero() {
  Vec<T> r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = T(0);
  return r;
}
#endif
template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline T vsum(const Vec<T>& a) {
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// ---- Row FFTs. ----
// A task's batch of complex rows (rows, n), natural order, interleaved re/im: fill in(p), run(),
// then out(p)[k] = X[k] = sum_i x[i] exp(-2 pi i k i / n). The transform is ATen's batched
// c2c (MKL on x86 builds of torch, pocketfft elsewhere) on per-task scratch tensors, one call per
// chunk of rows: with -fopenmp the calls from worker threads do not contend (docs/cpu_kernels.md),
// and MKL's vectorised FFT was 2-4x faster than the kernels' former radix-2 FFT at every n_fft
// (issue #13). Chunk sizes depend on the problem only, so every row is transformed in the same
// batch position whatever the thread count (deterministic).
template <typename T>
class RowFFT {
 public:
  using cplx = c10::complex<T>;
  RowFFT(int64_t n, int64_t max_rows, const at::TensorOptions& complex_opts)
      : n_(n), in_(at::zeros({max_rows, n}, complex_opts)) {}
  cplx* in(int64_t p) { return in_.data_ptr<cplx>() + p * n_; }
  const cplx* out(int64_t p) const { return res_.data_ptr<cplx>() + p * n_; }
  // at::_fft_c2c, not _fft_c2c_out: the out= form of the MKL kernel transforms into a fresh tensor and
  // then copies it into `out` (3% of the forward at S in perf); the result tensor is kept until the
  // next run().
  void run(int64_t rows) {
    res_ = at::Tensor();
    res_ = at::_fft_c2c(in_.narrow(0, 0, rows), {1}, /*normalization=*/0, /*forward=*/true);
  }

 private:
  int64_t n_;
  at::Tensor in_, res_;
};

// One batch item's samples [u_lo, u_hi] split into re / im, forwards and reversed, so that the lag
// products z[n + m] conj(z[n - m]) read every operand forwards in m (unit stride, vectorised).
template <typename T>
struct SplitSignal {
  int64_t u_lo = 0, u_hi = -1;
  std::vector<T> fr, fi, rr, ri;  // fr[i - u_lo] = Re z[i];  rr[u_hi - i] = Re z[i]
  void load(const c10::complex<T>* z, int64_t lo, int64_t hi) {
    u_lo = lo;
    u_hi = hi;
    const int64_t n = hi - lo + 1;
    fr.resize(n);
    fi.resize(n);
    rr.resize(n);
    ri.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      fr[i] = z[lo + i].real();
      fi[i] = z[lo + i].imag();
      rr[n - 1 - i] = fr[i];
      ri[n - 1 - i] = fi[i];
    }
  }
};

// Lag products of row n for m in [0, h] (zero past the signal's edge): r[m] = z[n+m] conj(z[n-m]).
template <typename T>
inline void lag_products(const SplitSignal<T>& zs, int64_t N, int64_t h, int64_t n, T* __restrict__ re,
                         T* __restrict__ im) {
  const int64_t mm = std::min(h, std::min(n, N - 1 - n));
  const T* __restrict__ ar = zs.fr.data() + (n - zs.u_lo);
  const T* __restrict__ ai = zs.fi.data() + (n - zs.u_lo);
  const T* __restrict__ br = zs.rr.data() + (zs.u_hi - n);
  const T* __restrict__ bi = zs.ri.data() + (zs.u_hi - n);
  for (int64_t m = 0; m <= mm; ++m) {
    re[m] = ar[m] * br[m] + ai[m] * bi[m];
    im[m] = ai[m] * br[m] - ar[m] * bi[m];
  }
  for (int64_t m = std::max<int64_t>(mm + 1, 0); m <= h; ++m) re[m] = im[m] = T(0);
}

// Per-task scratch of the W-row builder.
template <typename T>
struct WvdScratch {
  std::vector<T> ar, ai, br, bi;  // lag products of the two rows of a pair, m in [0, h]
  explicit WvdScratch(int64_t h) : ar(h + 1), ai(h + 1), br(h + 1), bi(h + 1) {}
};

// WVD rows [n0, n1) of one signal into wrow ((n1-n0) x stride, real; columns >= n_fft stay 0),
// two rows per complex FFT: packed[m] = r_a[m] + i r_b[m] with r[-m] = conj(r[m]) (Hermitian), so
// W[a] = 2 Re X and W[b] = 2 Im X.
template <typename scalar_t>
void wvd_rows(const SplitSignal<scalar_t>& zs, int64_t N, int64_t n_fft, int64_t stride, int64_t n0, int64_t n1,
              RowFFT<scalar_t>& fft, WvdScratch<scalar_t>& ws, scalar_t* wrow, scalar_t* wt = nullptr,
              int64_t cs = 0) {
  const int64_t M = n_fft, h = max_lag(n_fft);
  const int64_t rows = n1 - n0, pairs = (rows + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t na = n0 + 2 * p, nb = na + 1;
#ifdef LWVD_AVX2_DISPATCH
    if constexpr (std::is_same<scalar_t, float>::value) {
      if (use_avx2() && nb < n1 && na >= h && nb + h <= N - 1) {  // both rows away from the ends
        avx2::pack_pair(zs.fr.data() + (na - zs.u_lo), zs.fi.data() + (na - zs.u_lo), zs.rr.data() + (zs.u_hi - na),
                        zs.ri.data() + (zs.u_hi - na), h, M, reinterpret_cast<float*>(fft.in(p)));
        continue;
      }
    }
#endif
    lag_products(zs, N, h, na, ws.ar.data(), ws.ai.data());
    if (nb < n1) {
      lag_products(zs, N, h, nb, ws.br.data(), ws.bi.data());
    } else {
      std::fill(ws.br.begin(), ws.br.end(), scalar_t(0));
      std::fill(ws.bi.begin(), ws.bi.end(), scalar_t(0));
    }
    scalar_t* __restrict__ x = reinterpret_cast<scalar_t*>(fft.in(p));
    const scalar_t* __restrict__ ar = ws.ar.data();
    const scalar_t* __restrict__ ai = ws.ai.data();
    const scalar_t* __restrict__ br = ws.br.data();
    const scalar_t* __restrict__ bi = ws.bi.data();
    // packed[m] = (ar - bi) + i (ai + br);  packed[M - m] = conj(r_a) + i conj(r_b) = (ar + bi) + i (br - ai)
    for (int64_t m = 0; m <= h; ++m) {
      x[2 * m] = ar[m] - bi[m];
      x[2 * m + 1] = ai[m] + br[m];
    }
    for (int64_t m = h + 1; m <= M - 1 - h; ++m) x[2 * m] = x[2 * m + 1] = scalar_t(0);  // index M/2 (even M)
    scalar_t* __restrict__ xn = x + 2 * (M - h);  // packed[M - m] for m = h .. 1, ascending index
    for (int64_t j = 0; j < h; ++j) {
      const int64_t m = h - j;
      xn[2 * j] = ar[m] + bi[m];
      xn[2 * j + 1] = br[m] - ai[m];
    }
  }
  fft.run(pairs);
  if (wt != nullptr) {  // transposed copy for the separable filters: W[n0 + r, k] at wt[k * cs + r]
    int64_t p = 0;
#ifdef LWVD_AVX2_DISPATCH
    if constexpr (std::is_same<scalar_t, float>::value) {
      if (use_avx2())
        for (; p + 4 <= pairs; p += 4) {
          const float* xs[4] = {reinterpret_cast<const float*>(fft.out(p)), reinterpret_cast<const float*>(fft.out(p + 1)),
                                reinterpret_cast<const float*>(fft.out(p + 2)), reinterpret_cast<const float*>(fft.out(p + 3))};
          avx2::transpose_out(xs, M, wt + 2 * p, cs);
        }
    }
#endif
    for (; p + 2 <= pairs; p += 2) {
      const scalar_t* __restrict__ x0 = reinterpret_cast<const scalar_t*>(fft.out(p));
      const scalar_t* __restrict__ x1 = reinterpret_cast<const scalar_t*>(fft.out(p + 1));
      scalar_t* __restrict__ o = wt + 2 * p;
      for (int64_t k = 0; k < M; ++k) {
        o[k * cs] = scalar_t(2) * x0[2 * k];
        o[k * cs + 1] = scalar_t(2) * x0[2 * k + 1];
        o[k * cs + 2] = scalar_t(2) * x1[2 * k];
        o[k * cs + 3] = scalar_t(2) * x1[2 * k + 1];
      }
    }
    for (; p < pairs; ++p) {
      const scalar_t* __restrict__ x0 = reinterpret_cast<const scalar_t*>(fft.out(p));
      scalar_t* __restrict__ o = wt + 2 * p;
      for (int64_t k = 0; k < M; ++k) {
        o[k * cs] = scalar_t(2) * x0[2 * k];
        o[k * cs + 1] = scalar_t(2) * x0[2 * k + 1];
      }
    }
  }
  for (int64_t p = 0; wrow != nullptr && p < pairs; ++p) {
    const scalar_t* __restrict__ x = reinterpret_cast<const scalar_t*>(fft.out(p));
    scalar_t* __restrict__ wa = wrow + (2 * p) * stride;
    if (2 * p + 1 < rows) {
      scalar_t* __restrict__ wb = wa + stride;
      for (int64_t k = 0; k < M; ++k) {
        wa[k] = scalar_t(2) * x[2 * k];
        wb[k] = scalar_t(2) * x[2 * k + 1];
      }
      std::fill(wb + M, wb + stride, scalar_t(0));
    } else {
      for (int64_t k = 0; k < M; ++k) wa[k] = scalar_t(2) * x[2 * k];
    }
    std::fill(wa + M, wa + stride, scalar_t(0));
  }
}

struct Problem {
  int64_t B, N, M, stride, hop, T, F, d_limit;
  int64_t r_max;  // largest stencil radius
  int64_t frames_per_tile, n_frame_tiles;
};

Problem make_problem(const at::Tensor& z, int64_t F, int64_t n_fft, int64_t hop) {
  Problem p;
  p.B = z.size(0);
  p.N = z.size(1);
  p.M = n_fft;
  p.stride = round_up(n_fft, kLanes);
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
  // A tile owns about `own` rows of frames plus a halo of 2 r_max rows it recomputes.
  const int64_t own = std::max(kTileRows, 2 * (2 * p.r_max + 1));
  p.frames_per_tile = std::max<int64_t>(1, std::min(p.T, ceil_div(own, p.hop)));
  p.n_frame_tiles = ceil_div(p.T, p.frames_per_tile);
}

// Frames t in [t_lo, t_hi] whose filter support [t hop - R, t hop + R] meets rows [n0, n1).
inline void frames_meeting(int64_t n0, int64_t n1, int64_t R, int64_t hop, int64_t t_lo, int64_t t_hi,
                           int64_t* ta, int64_t* tb) {
  *ta = std::max(t_lo, ceil_div(n0 - R, hop));
  *tb = std::min(t_hi, floor_div(n1 - 1 + R, hop));
}

// The maximal runs [a, b] of rows in [r_lo, r_hi] that frames t_lo..t_hi reach (the union of their
// supports [t hop - R, t hop + R]), ascending, each handed to run(a, b). Rows no frame reaches
// (narrow filters at a large hop: at hop 512 and sigma_t / 5, 83% of them) are never visited.
template <typename Run>
inline void for_each_reached_row_run(int64_t t_lo, int64_t t_hi, int64_t R, int64_t hop, int64_t r_lo,
                                     int64_t r_hi, Run&& run) {
  int64_t cur_lo = -1, cur_hi = -2;
  for (int64_t t = t_lo; t <= t_hi; ++t) {
    const int64_t lo = std::max(r_lo, t * hop - R), hi = std::min(r_hi, t * hop + R);
    if (lo > hi) continue;
    if (cur_hi >= cur_lo && lo <= cur_hi + 1) {
      cur_hi = std::max(cur_hi, hi);
    } else {
      if (cur_hi >= cur_lo) run(cur_lo, cur_hi);
      cur_lo = lo;
      cur_hi = hi;
    }
  }
  if (cur_hi >= cur_lo) run(cur_lo, cur_hi);
}

// The walk shared by the forward and the parameter-gradient pass: the W rows that frames
// [t0, t1) of one batch item need, built chunk by chunk (rows ascending) into `wrow`, and for each
// chunk every (filter, frame) whose ellipse meets it, in a fixed order (f, then t), handed to
// visit(f, t, c0 = t*hop, d_lo, d_hi, n0) with the chunk's rows d_lo..d_hi of that ellipse.
template <typename scalar_t, typename Visit>
void walk_frame_tile(const Problem& P, const std::vector<Stencil<scalar_t>>& st, const c10::complex<scalar_t>* zb,
                     int64_t t0, int64_t t1, int64_t chunk_rows, RowFFT<scalar_t>& fft, scalar_t* wrow,
                     Visit&& visit) {
  const int64_t r_lo = std::max<int64_t>(0, t0 * P.hop - P.r_max);
  const int64_t r_hi = std::min(P.N - 1, (t1 - 1) * P.hop + P.r_max);
  if (r_lo > r_hi) return;
  const int64_t h = max_lag(P.M);
  SplitSignal<scalar_t> zs;
  zs.load(zb, std::max<int64_t>(0, r_lo - h), std::min(P.N - 1, r_hi + h));
  WvdScratch<scalar_t> ws(h);
  // Only rows some frame's support reaches (for_each_reached_row_run).
  auto run = [&](int64_t a_lo, int64_t a_hi) {
    for (int64_t n0 = a_lo; n0 <= a_hi; n0 += chunk_rows) {
      const int64_t n1 = std::min(a_hi + 1, n0 + chunk_rows);
      wvd_rows<scalar_t>(zs, P.N, P.M, P.stride, n0, n1, fft, ws, wrow);
      for (int64_t f = 0; f < P.F; ++f) {
        const int64_t R = st[f].radius;
        int64_t ta, tb;
        frames_meeting(n0, n1, R, P.hop, t0, t1 - 1, &ta, &tb);
        for (int64_t t = ta; t <= tb; ++t) {
          const int64_t c0 = t * P.hop;
          visit(f, t, c0, std::max(-R, n0 - c0), std::min(R, n1 - 1 - c0), n0);
        }
      }
    }
  };
  for_each_reached_row_run(t0, t1 - 1, P.r_max, P.hop, int64_t{0}, P.N - 1, run);
}

// walk_frame_tile with the separable filters (sp[f].on) handed per chunk to
// visit_sep(f, n0, n1, ta, tb) (frames ta..tb meet the chunk) with the chunk's W also transposed
// into wt (bin k at wt + k * cs); the others per (f, t) to visit as in walk_frame_tile. W rows are
// only stored row-major (wrow) when some filter takes the direct path.
template <typename scalar_t, typename Visit, typename VisitSep>
void walk_frame_tile_sep(const Problem& P, const std::vector<Stencil<scalar_t>>& st,
                         const std::vector<SepPlan<scalar_t>>& sp, bool any_direct, bool any_sep,
                         const c10::complex<scalar_t>* zb, int64_t t0, int64_t t1, int64_t chunk_rows,
                         RowFFT<scalar_t>& fft, scalar_t* wrow, scalar_t* wt, int64_t cs, Visit&& visit,
                         VisitSep&& visit_sep) {
  const int64_t r_lo = std::max<int64_t>(0, t0 * P.hop - P.r_max);
  const int64_t r_hi = std::min(P.N - 1, (t1 - 1) * P.hop + P.r_max);
  if (r_lo > r_hi) return;
  const int64_t h = max_lag(P.M);
  SplitSignal<scalar_t> zs;
  zs.load(zb, std::max<int64_t>(0, r_lo - h), std::min(P.N - 1, r_hi + h));
  WvdScratch<scalar_t> ws(h);
  auto run = [&](int64_t a_lo, int64_t a_hi) {
    for (int64_t n0 = a_lo; n0 <= a_hi; n0 += chunk_rows) {
      const int64_t n1 = std::min(a_hi + 1, n0 + chunk_rows);
      wvd_rows<scalar_t>(zs, P.N, P.M, P.stride, n0, n1, fft, ws, any_direct ? wrow : nullptr,
                         any_sep ? wt : nullptr, cs);
      for (int64_t f = 0; f < P.F; ++f) {
        const int64_t R = st[f].radius;
        int64_t ta, tb;
        frames_meeting(n0, n1, R, P.hop, t0, t1 - 1, &ta, &tb);
        if (ta > tb) continue;
        if (sp[f].on) {
          visit_sep(f, n0, n1, ta, tb);
          continue;
        }
        for (int64_t t = ta; t <= tb; ++t) {
          const int64_t c0 = t * P.hop;
          visit(f, t, c0, std::max(-R, n0 - c0), std::min(R, n1 - 1 - c0), n0);
        }
      }
    }
  };
  for_each_reached_row_run(t0, t1 - 1, P.r_max, P.hop, int64_t{0}, P.N - 1, run);
}

// Rows [r0, r1) of a chunk (relative to n0, rounded out to kSepBlock within cs) that frames ta..tb
// of a filter of radius R reach.
inline void sep_hull(int64_t n0, int64_t n1, int64_t ta, int64_t tb, int64_t R, int64_t hop, int64_t cs,
                     int64_t* r0, int64_t* r1) {
  const int64_t a = std::max(n0, ta * hop - R) - n0, b = std::min(n1 - 1, tb * hop + R) - n0;
  *r0 = (a / kSepBlock) * kSepBlock;
  *r1 = std::min(cs, round_up(b + 1, kSepBlock));
}

// sum over rows i < nrows of sc[i] * <W row i, weights of row i> (sc == nullptr: 1), the rows'
// runs in info[i] and weights at w + info[i].off, W row i at x + i * S. A small function of its
// own, so that its pointers and accumulators stay in registers (inlined into the frame walk they
// spilled to the stack), and two rows at a time with separate accumulators: one accumulator's
// add latency per block, not the loads, bounded the loop. The order of every sum is fixed.
template <typename T>
__attribute__((noinline)) T dot_rows(const RowInfo* __restrict__ info, const T* __restrict__ w,
                                     const T* __restrict__ sc, const T* __restrict__ x, int64_t S, int64_t nrows) {
  using V = Vec<T>;
  V acc0 = vzero<T>(), acc1 = vzero<T>();
  int64_t i = 0;
  for (; i + 2 <= nrows; i += 2) {
    const RowInfo r0 = info[i], r1 = info[i + 1];
    const T* __restrict__ x0 = x + i * S + r0.k0;
    const T* __restrict__ x1 = x + (i + 1) * S + r1.k0;
    const T* __restrict__ w0 = w + r0.off;
    const T* __restrict__ w1 = w + r1.off;
    V p0 = vzero<T>(), p1 = vzero<T>();
    const int64_t nmin = std::min(r0.nblk, r1.nblk);
    int64_t b = 0;
    for (; b < nmin; ++b) {
      p0 += vload(x0 + b * kLanes) * vload(w0 + b * kLanes);
      p1 += vload(x1 + b * kLanes) * vload(w1 + b * kLanes);
    }
    for (int64_t c = b; c < r0.nblk; ++c) p0 += vload(x0 + c * kLanes) * vload(w0 + c * kLanes);
    for (int64_t c = b; c < r1.nblk; ++c) p1 += vload(x1 + c * kLanes) * vload(w1 + c * kLanes);
    if (sc != nullptr) {
      p0 = p0 * sc[i];
      p1 = p1 * sc[i + 1];
    }
    acc0 += p0;
    acc1 += p1;
  }
  if (i < nrows) {
    const RowInfo r0 = info[i];
    const T* __restrict__ x0 = x + i * S + r0.k0;
    const T* __restrict__ w0 = w + r0.off;
    V p0 = vzero<T>();
    for (int64_t b = 0; b < r0.nblk; ++b) p0 += vload(x0 + b * kLanes) * vload(w0 + b * kLanes);
    if (sc != nullptr) p0 = p0 * sc[i];
    acc0 += p0;
  }
  return vsum<T>(acc0 + acc1);
}

// The rows d_lo .. d_lo + nrows - 1 of a filter whose weights are not tabulated, generated into
// gen (row i at i * S) with their runs and scales, for dot_rows / moment_rows.
template <typename scalar_t>
void generate_rows(const Stencil<scalar_t>& s, int64_t d_lo, int64_t nrows, int64_t S, std::vector<scalar_t>& gen,
                   std::vector<RowInfo>& gen_info, std::vector<scalar_t>& gen_scale) {
  gen_info.resize(nrows);
  gen_scale.resize(nrows);
  gen.resize(nrows * S);
  for (int64_t i = 0; i < nrows; ++i) {
    scalar_t sc;
    s.row(d_lo + i, gen.data() + i * S, &gen_info[i], &sc);  // writes row i into gen
    gen_info[i].off = i * S;
    gen_scale[i] = sc;
  }
}

// The six moments (S0, Sa, Sc, Saa, Sac, Scc) of W E over rows d = d_lo + i (same layout as
// dot_rows), in the (a, c) coordinates of lwvd_math.cuh, into out[6]: row d has a = d / sigma_t and
// c[k] = bv[k] - rho a (bv = Stencil::b), formed as quad_form forms them (bitwise in double); per
// row three lane sums (sum WE, sum WE c, sum WE c^2), folded with a (fold_moments). Two rows at a
// time, as dot_rows.
template <typename T>
__attribute__((noinline)) void moment_rows(const RowInfo* __restrict__ info, const T* __restrict__ w,
                                           const T* __restrict__ sc, const T* __restrict__ x, int64_t S,
                                           const T* __restrict__ bv, double inv_sigma_t, double rho, int64_t d_lo,
                                           int64_t nrows, T* out) {
  using V = Vec<T>;
  V m[6];
  for (int j = 0; j < 6; ++j) m[j] = vzero<T>();
  auto row_a = [&](int64_t i) { return static_cast<double>(d_lo + i) * inv_sigma_t; };
  auto fold = [&](V p0, V p1, V p2, int64_t i) {
    if (sc != nullptr) {
      p0 = p0 * sc[i];
      p1 = p1 * sc[i];
      p2 = p2 * sc[i];
    }
    fold_moments(m, p0, p1, p2, static_cast<T>(row_a(i)));
  };
  auto block = [&](const T* x0, const T* w0, const T* b0, T ra, int64_t b, V& p0, V& p1, V& p2) {
    const V ck = vload(b0 + b * kLanes) - ra;
    const V we = vload(x0 + b * kLanes) * vload(w0 + b * kLanes);
    const V wec = we * ck;
    p0 += we;
    p1 += wec;
    p2 += wec * ck;
  };
  int64_t i = 0;
  for (; i + 2 <= nrows; i += 2) {
    const RowInfo r0 = info[i], r1 = info[i + 1];
    const T* x0 = x + i * S + r0.k0;
    const T* x1 = x + (i + 1) * S + r1.k0;
    const T* w0 = w + r0.off;
    const T* w1 = w + r1.off;
    const T* b0 = bv + r0.k0;
    const T* b1 = bv + r1.k0;
    const T ra0 = static_cast<T>(rho * row_a(i)), ra1 = static_cast<T>(rho * row_a(i + 1));
    V a0 = vzero<T>(), a1 = a0, a2 = a0, c0 = a0, c1 = a0, c2 = a0;
    const int64_t nmin = std::min(r0.nblk, r1.nblk);
    int64_t b = 0;
    for (; b < nmin; ++b) {
      block(x0, w0, b0, ra0, b, a0, a1, a2);
      block(x1, w1, b1, ra1, b, c0, c1, c2);
    }
    for (int64_t c = b; c < r0.nblk; ++c) block(x0, w0, b0, ra0, c, a0, a1, a2);
    for (int64_t c = b; c < r1.nblk; ++c) block(x1, w1, b1, ra1, c, c0, c1, c2);
    fold(a0, a1, a2, i);
    fold(c0, c1, c2, i + 1);
  }
  if (i < nrows) {
    const RowInfo r0 = info[i];
    const T ra0 = static_cast<T>(rho * row_a(i));
    V a0 = vzero<T>(), a1 = a0, a2 = a0;
    for (int64_t b = 0; b < r0.nblk; ++b) block(x + i * S + r0.k0, w + r0.off, bv + r0.k0, ra0, b, a0, a1, a2);
    fold(a0, a1, a2, i);
  }
  for (int j = 0; j < 6; ++j) out[j] = vsum<T>(m[j]);
}

// A row i += (coef * sc[i]) * weights of row i (sc == nullptr: 1), rows as in dot_rows: the
// grad_z pass's scatter of G[f, t] norm_f E_f into the A rows, in a function of its own (registers).
template <typename T>
__attribute__((noinline)) void axpy_rows(const RowInfo* __restrict__ info, const T* __restrict__ w,
                                         const T* __restrict__ sc, T coef, T* __restrict__ a, int64_t S,
                                         int64_t nrows) {
  for (int64_t i = 0; i < nrows; ++i) {
    const RowInfo r = info[i];
    const T cs = sc != nullptr ? coef * sc[i] : coef;
    T* __restrict__ ai = a + i * S + r.k0;
    const T* __restrict__ wi = w + r.off;
    for (int64_t b = 0; b < r.nblk; ++b) vstore(ai + b * kLanes, vload(ai + b * kLanes) + vload(wi + b * kLanes) * cs);
  }
}

// Ring projections of a separable filter over rows [r0, r1) of a transposed W chunk (bin k at
// wt + k * cs, rows contiguous; r0, r1 multiples of kSepBlock within cs): Q[j * cs + r] =
// sum_{k in I_j} p(k) wt[k * cs + r], cumulative over the rings. kSepBlock rows at a time in four
// independent vector accumulators (the add latency, not the loads, bounds one accumulator).
template <typename T>
__attribute__((noinline)) void ring_project(const int32_t* __restrict__ ring_start, const int32_t* __restrict__ ring_k,
                                            const T* __restrict__ ring_p, int64_t J, const T* __restrict__ wt,
                                            int64_t cs, int64_t r0, int64_t r1, T* __restrict__ Q) {
  using V = Vec<T>;
  for (int64_t rb = r0; rb < r1; rb += 4 * kLanes) {
    V a0 = vzero<T>(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t j = 0; j < J; ++j) {
      for (int32_t i = ring_start[j]; i < ring_start[j + 1]; ++i) {
        const T* __restrict__ w = wt + int64_t(ring_k[i]) * cs + rb;
        const T pk = ring_p[i];
        a0 += vload(w) * pk;
        a1 += vload(w + kLanes) * pk;
        a2 += vload(w + 2 * kLanes) * pk;
        a3 += vload(w + 3 * kLanes) * pk;
      }
      T* q = Q + j * cs + rb;
      vstore(q, a0);
      vstore(q + kLanes, a1);
      vstore(q + 2 * kLanes, a2);
      vstore(q + 3 * kLanes, a3);
    }
  }
}

// sum_{i < n} a[i] b[i] in a fixed order (two vector accumulators, then a scalar tail).
template <typename T>
inline T dot_seg(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  using V = Vec<T>;
  V s0 = vzero<T>(), s1 = s0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    s0 += vload(a + i) * vload(b + i);
    s1 += vload(a + i + kLanes) * vload(b + i + kLanes);
  }
  if (i + kLanes <= n) {
    s0 += vload(a + i) * vload(b + i);
    i += kLanes;
  }
  T t = vsum<T>(s0 + s1);
  for (; i < n; ++i) t += a[i] * b[i];
  return t;
}

// One frame's part of a separable filter's output from the chunk's ring sums: sum over rows
// d = d_lo .. d_hi of rs(d) Q_{j(d)}[c0 + d - n0], segment by segment (Q row j at Q + j * cs).
template <typename T>
__attribute__((noinline)) T sep_frame(const SepPlan<T>& sp, const T* __restrict__ Q, int64_t cs, int64_t d_lo,
                                      int64_t d_hi, int64_t base /* = c0 - n0 */) {
  T total = T(0);
  for (int64_t i = d_lo + sp.R; i <= d_hi + sp.R;) {
    const int64_t e = std::min<int64_t>(sp.seg_end[i], d_hi + sp.R);
    const int32_t j = sp.jidx[i];
    if (j >= 0) total += dot_seg(sp.rs.data() + i, Q + j * cs + (base + i - sp.R), e - i + 1);
    i = e + 1;
  }
  return total;
}

// The transpose of sep_frame for the grad_z pass: H_{j(d)}[base + d] += coef * rs(d) over rows
// d = d_lo .. d_hi, segment by segment (H row j at H + j * cs).
template <typename T>
__attribute__((noinline)) void sep_scatter(const SepPlan<T>& sp, T coef, T* __restrict__ H, int64_t cs, int64_t d_lo,
                                           int64_t d_hi, int64_t base) {
  for (int64_t i = d_lo + sp.R; i <= d_hi + sp.R;) {
    const int64_t e = std::min<int64_t>(sp.seg_end[i], d_hi + sp.R);
    const int32_t j = sp.jidx[i];
    if (j >= 0) {
      T* __restrict__ h = H + j * cs + (base + i - sp.R);
      const T* __restrict__ r = sp.rs.data() + i;
      const int64_t n = e - i + 1;
      int64_t u = 0;
      for (; u + kLanes <= n; u += kLanes) vstore(h + u, vload(h + u) + vload(r + u) * coef);
      for (; u < n; ++u) h[u] += r[u] * coef;
    }
    i = e + 1;
  }
}

// A^T rows (bin k at at + k * cs) += p(k) Hc_{ring(k)} over rows [r0, r1), Hc_j = sum_{j' >= j} H_j'
// (a row d uses every ring up to j(d)): H is turned into Hc in place, then scattered ring by ring.
template <typename T>
__attribute__((noinline)) void ring_scatter(const int32_t* __restrict__ ring_start, const int32_t* __restrict__ ring_k,
                                            const T* __restrict__ ring_p, int64_t J, T* __restrict__ H, int64_t cs,
                                            int64_t r0, int64_t r1, T* __restrict__ at) {
  for (int64_t j = J - 2; j >= 0; --j)
    for (int64_t r = r0; r < r1; r += kLanes) vstore(H + j * cs + r, vload(H + j * cs + r) + vload(H + (j + 1) * cs + r));
  for (int64_t j = 0; j < J; ++j) {
    const T* __restrict__ hj = H + j * cs;
    for (int32_t i = ring_start[j]; i < ring_start[j + 1]; ++i) {
      T* __restrict__ a = at + int64_t(ring_k[i]) * cs;
      const T pk = ring_p[i];
      for (int64_t r = r0; r < r1; r += kLanes) vstore(a + r, vload(a + r) + vload(hj + r) * pk);
    }
  }
}

// Dispatchers.
template <typename T>
inline void ring_project_any(const SepPlan<T>& q, const T* wt, int64_t cs, int64_t r0, int64_t r1, T* Q) {
#ifdef LWVD_AVX2_DISPATCH
  if (use_avx2()) return avx2::ring_project<T>(q.ring_start.data(), q.ring_k.data(), q.ring_p.data(), q.J, wt, cs, r0, r1, Q);
#endif
  ring_project<T>(q.ring_start.data(), q.ring_k.data(), q.ring_p.data(), q.J, wt, cs, r0, r1, Q);
}
template <typename T>
inline T sep_frame_any(const SepPlan<T>& q, const T* Q, int64_t cs, int64_t d_lo, int64_t d_hi, int64_t base) {
#ifdef LWVD_AVX2_DISPATCH
  if (use_avx2()) return avx2::sep_frame<T>(q, Q, cs, d_lo, d_hi, base);
#endif
  return sep_frame<T>(q, Q, cs, d_lo, d_hi, base);
}
template <typename T>
inline void sep_scatter_any(const SepPlan<T>& q, T coef, T* H, int64_t cs, int64_t d_lo, int64_t d_hi, int64_t base) {
#ifdef LWVD_AVX2_DISPATCH
  if (use_avx2()) return avx2::sep_scatter<T>(q, coef, H, cs, d_lo, d_hi, base);
#endif
  sep_scatter<T>(q, coef, H, cs, d_lo, d_hi, base);
}
template <typename T>
inline void ring_scatter_any(const SepPlan<T>& q, T* H, int64_t cs, int64_t r0, int64_t r1, T* at) {
#ifdef LWVD_AVX2_DISPATCH
  if (use_avx2()) return avx2::ring_scatter<T>(q.ring_start.data(), q.ring_k.data(), q.ring_p.data(), q.J, H, cs, r0, r1, at);
#endif
  ring_scatter<T>(q.ring_start.data(), q.ring_k.data(), q.ring_p.data(), q.J, H, cs, r0, r1, at);
}

// Baseline versions of the moment kernels (same layouts as avx2::ring_project3 / avx2::sep_moments).
template <typename T>
__attribute__((noinline)) void ring_project3(const int32_t* __restrict__ ring_start, const int32_t* __restrict__ ring_k,
                                             const T* __restrict__ p0, const T* __restrict__ p1,
                                             const T* __restrict__ p2, int64_t J, const T* __restrict__ wt, int64_t cs,
                                             int64_t r0, int64_t r1, T* __restrict__ Q) {
  using V = Vec<T>;
  for (int64_t rb = r0; rb < r1; rb += 2 * kLanes) {
    V a0 = vzero<T>(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0;
    for (int64_t j = 0; j < J; ++j) {
      for (int32_t i = ring_start[j]; i < ring_start[j + 1]; ++i) {
        const T* __restrict__ w = wt + int64_t(ring_k[i]) * cs + rb;
        const V w0 = vload(w), w1 = vload(w + kLanes);
        a0 += w0 * p0[i];
        a1 += w1 * p0[i];
        b0 += w0 * p1[i];
        b1 += w1 * p1[i];
        c0 += w0 * p2[i];
        c1 += w1 * p2[i];
      }
      T* q = Q + 3 * j * cs + rb;
      vstore(q, a0);
      vstore(q + kLanes, a1);
      vstore(q + cs, b0);
      vstore(q + cs + kLanes, b1);
      vstore(q + 2 * cs, c0);
      vstore(q + 2 * cs + kLanes, c1);
    }
  }
}

template <typename T>
__attribute__((noinline)) void sep_moments(const SepPlan<T>& sp, const T* __restrict__ Q, int64_t cs, int64_t d_lo,
                                           int64_t d_hi, int64_t base, T* out) {
  T s[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t i = d_lo + sp.R; i <= d_hi + sp.R;) {
    const int64_t e = std::min<int64_t>(sp.seg_end[i], d_hi + sp.R);
    const int32_t j = sp.jidx[i];
    if (j >= 0) {
      const T* q0 = Q + 3 * j * cs + (base + i - sp.R);
      const int64_t n = e - i + 1;
      s[kMomentS0] += dot_seg(sp.rs.data() + i, q0, n);
      s[kMomentA] += dot_seg(sp.rsa.data() + i, q0, n);
      s[kMomentAA] += dot_seg(sp.rsaa.data() + i, q0, n);
      s[kMomentC] += dot_seg(sp.rs.data() + i, q0 + cs, n);
      s[kMomentAC] += dot_seg(sp.rsa.data() + i, q0 + cs, n);
      s[kMomentCC] += dot_seg(sp.rs.data() + i, q0 + 2 * cs, n);
    }
    i = e + 1;
  }
  for (int k = 0; k < 6; ++k) out[k] = s[k];
}

template <typename T>
inline void ring_project3_any(const SepPlan<T>& q, const T* wt, int64_t cs, int64_t r0, int64_t r1, T* Q) {
#ifdef LWVD_AVX2_DISPATCH
  if (use_avx2())
    return avx2::ring_project3<T>(q.ring_start.data(), q.ring_k.data(), q.ring_p.data(), q.ring_pb.data(),
                                  q.ring_pbb.data(), q.J, wt, cs, r0, r1, Q);
#endif
  ring_project3<T>(q.ring_start.data(), q.ring_k.data(), q.ring_p.data(), q.ring_pb.data(), q.ring_pbb.data(), q.J, wt,
                   cs, r0, r1, Q);
}
template <typename T>
inline void sep_moments_any(const SepPlan<T>& q, const T* Q, int64_t cs, int64_t d_lo, int64_t d_hi, int64_t base,
                            T* out) {
#ifdef LWVD_AVX2_DISPATCH
  if (use_avx2()) return avx2::sep_moments<T>(q, Q, cs, d_lo, d_hi, base, out);
#endif
  sep_moments<T>(q, Q, cs, d_lo, d_hi, base, out);
}

// ---- Forward. ----
// with_moments (lwvd_fwd_moments, issue #13): every (f, t) also gets its six moments (S0, Sa, Sc,
// Saa, Sac, Scc) of W E, in double, into Mom (B, F, T, 6), and K = norm S0 - the smoothing of the
// parameter-gradient pass done once, in the forward, so that the backward needs no W at all
// (lwvd_bwd_moments: only the grad_z pass). K then comes from the moment kernels' S0: the same
// terms and truncation, summed in another order (rounding-level differences from the plain forward).
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& z_in, const at::Tensor& center,
                                                const at::Tensor& sigma_t, const at::Tensor& sigma_nu,
                                                const at::Tensor& rho, int64_t n_fft, int64_t hop, double truncate,
                                                bool with_moments) {
  using cplx = c10::complex<scalar_t>;
  const at::Tensor z = z_in.contiguous();
  Problem P = make_problem(z, center.size(0), n_fft, hop);
  const auto real_opts = z.options().dtype(c10::toRealValueType(z.scalar_type()));
  at::Tensor K = at::zeros({P.B, P.F, P.T}, real_opts);
  at::Tensor Mom = with_moments ? at::zeros({P.B, P.F, P.T, 6}, real_opts.dtype(at::kDouble)) : at::Tensor();
  if (P.B == 0) return {K, Mom};
  const int nm = with_moments ? 6 : 1;  // accumulators per (f, t)
  double* Mp = with_moments ? Mom.data_ptr<double>() : nullptr;
  const auto st =
      make_stencils<scalar_t>(center, sigma_t, sigma_nu, rho, n_fft, truncate, P.d_limit, /*with_v=*/with_moments);
  finish_problem(P, st);
  const cplx* zp = z.data_ptr<cplx>();
  scalar_t* Kp = K.data_ptr<scalar_t>();
  const int64_t M = P.M, S = P.stride, pairs_max = chunk_pairs(M), C = 2 * pairs_max;

  const std::vector<SepPlan<scalar_t>> sp = make_sep_plans(st, with_moments);
  bool any_sep = false, any_direct = false;
  int64_t j_max = 0;
  for (const auto& q : sp) {
    any_sep = any_sep || q.on;
    any_direct = any_direct || !q.on;
    j_max = std::max(j_max, q.J);
  }
  const int64_t cs = round_up(C, kSepBlock);

  at::parallel_for(0, P.B * P.n_frame_tiles, 1, [&](int64_t task0, int64_t task1) {
    RowFFT<scalar_t> fft(M, pairs_max, z.options());
    std::vector<scalar_t> wrow(any_direct ? C * S : 0), gen, gen_scale;
    std::vector<scalar_t> wt(any_sep ? M * cs : 0, scalar_t(0));
    std::vector<scalar_t> Q(any_sep ? (with_moments ? 3 : 1) * j_max * cs : 0, scalar_t(0));
    std::vector<RowInfo> gen_info;
    std::vector<double> acc;  // (F, nt, nm)
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / P.n_frame_tiles, tile = task % P.n_frame_tiles;
      const int64_t t0 = tile * P.frames_per_tile, t1 = std::min(P.T, t0 + P.frames_per_tile);
      const int64_t nt = t1 - t0;
      const cplx* zb = zp + b * P.N;
      acc.assign(P.F * nt * nm, 0.0);
      auto visit_sep = [&](int64_t f, int64_t n0, int64_t n1, int64_t ta, int64_t tb) {
        const auto& q = sp[f];
        int64_t r0, r1;
        sep_hull(n0, n1, ta, tb, q.R, P.hop, cs, &r0, &r1);
        if (with_moments) {
          ring_project3_any<scalar_t>(q, wt.data(), cs, r0, r1, Q.data());
          for (int64_t t = ta; t <= tb; ++t) {
            const int64_t c0 = t * P.hop;
            scalar_t mom6[6];
            sep_moments_any<scalar_t>(q, Q.data(), cs, std::max(-q.R, n0 - c0), std::min(q.R, n1 - 1 - c0), c0 - n0,
                                      mom6);
            double* a = acc.data() + (f * nt + (t - t0)) * 6;
            for (int j = 0; j < 6; ++j) a[j] += static_cast<double>(mom6[j]);
          }
          return;
        }
        ring_project_any<scalar_t>(q, wt.data(), cs, r0, r1, Q.data());
        for (int64_t t = ta; t <= tb; ++t) {
          const int64_t c0 = t * P.hop;
          const scalar_t total = sep_frame_any<scalar_t>(q, Q.data(), cs, std::max(-q.R, n0 - c0),
                                                     std::min(q.R, n1 - 1 - c0), c0 - n0);
          acc[f * nt + (t - t0)] += static_cast<double>(total);
        }
      };
      walk_frame_tile_sep<scalar_t>(P, st, sp, any_direct, any_sep, zb, t0, t1, C, fft, wrow.data(), wt.data(), cs,
                                [&](int64_t f, int64_t t, int64_t c0, int64_t d_lo, int64_t d_hi, int64_t n0) {
        const auto& s = st[f];
        const int64_t nrows = d_hi - d_lo + 1;
        const scalar_t* x = wrow.data() + (c0 + d_lo - n0) * S;
        if (with_moments) {
          scalar_t mom6[6];
          if (s.tabulated) {
            const scalar_t* sc = s.separable ? s.rscale.data() + (d_lo + s.radius) : nullptr;
            moment_rows<scalar_t>(s.info.data() + (d_lo + s.radius), s.w.data(), sc, x, S, s.b.data(),
                                  s.g.inv_sigma_t, s.g.rho, d_lo, nrows, mom6);
          } else {
            generate_rows(s, d_lo, nrows, S, gen, gen_info, gen_scale);
            moment_rows<scalar_t>(gen_info.data(), gen.data(), s.separable ? gen_scale.data() : nullptr, x, S,
                                  s.b.data(), s.g.inv_sigma_t, s.g.rho, d_lo, nrows, mom6);
          }
          double* a = acc.data() + (f * nt + (t - t0)) * 6;
          for (int j = 0; j < 6; ++j) a[j] += static_cast<double>(mom6[j]);
          return;
        }
        scalar_t total;
        if (s.tabulated) {
          const scalar_t* sc = s.separable ? s.rscale.data() + (d_lo + s.radius) : nullptr;
          total = dot_rows<scalar_t>(s.info.data() + (d_lo + s.radius), s.w.data(), sc, x, S, nrows);
        } else {  // the same sum over rows generated into scratch (bitwise the same as tabulated)
          generate_rows(s, d_lo, nrows, S, gen, gen_info, gen_scale);
          total = dot_rows<scalar_t>(gen_info.data(), gen.data(), s.separable ? gen_scale.data() : nullptr, x, S,
                                     nrows);
        }
        acc[f * nt + (t - t0)] += static_cast<double>(total);
      }, visit_sep);
      for (int64_t f = 0; f < P.F; ++f)
        for (int64_t t = t0; t < t1; ++t) {
          const double* a = acc.data() + (f * nt + (t - t0)) * nm;
          Kp[(b * P.F + f) * P.T + t] = static_cast<scalar_t>(st[f].norm_d * a[0]);
          if (with_moments) std::copy(a, a + 6, Mp + ((b * P.F + f) * P.T + t) * 6);
        }
    }
  });
  return {K, Mom};
}

// ---- Backward. ----
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad_in, const at::Tensor& z_in, const at::Tensor& center, const at::Tensor& sigma_t,
    const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop, double truncate,
    const at::Tensor& mom = at::Tensor(), bool need_z = true) {
  using cplx = c10::complex<scalar_t>;
  const at::Tensor z = z_in.contiguous();
  const at::Tensor G = grad_in.contiguous();
  Problem P = make_problem(z, center.size(0), n_fft, hop);
  at::Tensor grad_z = at::zeros_like(z, at::MemoryFormat::Contiguous);
  at::Tensor gtheta = at::zeros({4, P.F}, center.options());
  if (P.B == 0) return {grad_z, gtheta[0].clone(), gtheta[1].clone(), gtheta[2].clone(), gtheta[3].clone()};
  const auto st = make_stencils<scalar_t>(center, sigma_t, sigma_nu, rho, n_fft, truncate, P.d_limit, true);
  finish_problem(P, st);
  const cplx* zp = z.data_ptr<cplx>();
  const scalar_t* Gp = G.data_ptr<scalar_t>();
  const int64_t M = P.M, S = P.stride, h = max_lag(M), pairs_max = chunk_pairs(M), C = 2 * pairs_max;

  // (1) Parameter gradients. Per (item, frame tile): the six moments of every (f, t) over its
  // ellipse, turned into sum_t G dK/dtheta; partial sums go to `work`, reduced below in a fixed order.
  //
  // dK/dtheta is linear in the six moments with coefficients that depend on the filter only
  // (docs/design.md), so sum_t G[f,t] dK[f,t]/dtheta = L_f(sum_t G[f,t] moments(f,t)): a task keeps
  // the G-weighted moment sums per filter (6 doubles each), not per (filter, frame). Its memory no
  // longer grows with F x frames (issue #12: F = 1e4, hop = 1 held 2 GB of moments per task).
  std::vector<double> work(P.B * P.n_frame_tiles * P.F * 4, 0.0);
  // Separable filters: moment planes from ring projections (ring_project3, sep_moments), as in the forward.
  const std::vector<SepPlan<scalar_t>> sp = make_sep_plans(st, /*with_moments=*/true);
  bool any_sep = false, any_direct = false;
  int64_t j_max = 0;
  for (const auto& q : sp) {
    any_sep = any_sep || q.on;
    any_direct = any_direct || !q.on;
    j_max = std::max(j_max, q.J);
  }
  const int64_t cs = round_up(C, kSepBlock);
  if (mom.defined()) {
    // The moments of every (f, t) came from the forward (lwvd_fwd_moments): no W rows here, only
    // sum_t G[f,t] moments(f, t) per (item, filter) in t order (frames with G = 0 skipped, as in the
    // walk below), into the item's first tile slot of `work`.
    const double* Mp = mom.data_ptr<double>();
    at::parallel_for(0, P.B * P.F, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / P.F, f = i % P.F;
        double gm[6] = {0, 0, 0, 0, 0, 0};
        const scalar_t* Gr = Gp + (b * P.F + f) * P.T;
        const double* mr = Mp + (b * P.F + f) * P.T * 6;
        for (int64_t t = 0; t < P.T; ++t) {
          const double g = static_cast<double>(Gr[t]);
          if (g == 0.0) continue;  // contributes exactly 0 (even where the moments are NaN)
          for (int j = 0; j < 6; ++j) gm[j] += g * mr[t * 6 + j];
        }
        const auto& q = st[f].g;
        param_grads_from_moments<double>(gm, st[f].norm_d, q.inv_sigma_t, q.inv_sigma_nu, q.rho, q.inv_1mr2,
                                         work.data() + (b * P.n_frame_tiles * P.F + f) * 4);
      }
    });
  } else
  at::parallel_for(0, P.B * P.n_frame_tiles, 1, [&](int64_t task0, int64_t task1) {
    RowFFT<scalar_t> fft(M, pairs_max, z.options());
    std::vector<scalar_t> wrow(any_direct ? C * S : 0), gen, gen_scale;
    std::vector<scalar_t> wt(any_sep ? M * cs : 0, scalar_t(0)), Q(any_sep ? 3 * j_max * cs : 0, scalar_t(0));
    std::vector<RowInfo> gen_info;
    std::vector<double> gmom;  // (F, 6): sum_t G[f,t] (S0, Sa, Sc, Saa, Sac, Scc)(f, t) (lwvd_math.cuh)
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / P.n_frame_tiles, tile = task % P.n_frame_tiles;
      const int64_t t0 = tile * P.frames_per_tile, t1 = std::min(P.T, t0 + P.frames_per_tile);
      const cplx* zb = zp + b * P.N;
      gmom.assign(P.F * 6, 0.0);
      auto visit_sep = [&](int64_t f, int64_t n0, int64_t n1, int64_t ta, int64_t tb) {
        const auto& q = sp[f];
        bool any = false;
        for (int64_t t = ta; t <= tb && !any; ++t) any = Gp[(b * P.F + f) * P.T + t] != scalar_t(0);
        if (!any) return;
        int64_t r0, r1;
        sep_hull(n0, n1, ta, tb, q.R, P.hop, cs, &r0, &r1);
        ring_project3_any<scalar_t>(q, wt.data(), cs, r0, r1, Q.data());
        double* m = gmom.data() + f * 6;
        for (int64_t t = ta; t <= tb; ++t) {
          const double g = static_cast<double>(Gp[(b * P.F + f) * P.T + t]);
          if (g == 0.0) continue;  // contributes exactly 0 (even where the moments are NaN)
          const int64_t c0 = t * P.hop;
          scalar_t mom6[6];
          sep_moments_any<scalar_t>(q, Q.data(), cs, std::max(-q.R, n0 - c0), std::min(q.R, n1 - 1 - c0), c0 - n0,
                                    mom6);
          for (int j = 0; j < 6; ++j) m[j] += g * static_cast<double>(mom6[j]);
        }
      };
      walk_frame_tile_sep<scalar_t>(P, st, sp, any_direct, any_sep, zb, t0, t1, C, fft, wrow.data(), wt.data(), cs,
                                [&](int64_t f, int64_t t, int64_t c0, int64_t d_lo, int64_t d_hi, int64_t n0) {
        const double g = static_cast<double>(Gp[(b * P.F + f) * P.T + t]);
        if (g == 0.0) return;  // contributes exactly 0 (even where the moments are NaN)
        const auto& s = st[f];
        const int64_t nrows = d_hi - d_lo + 1;
        const scalar_t* x = wrow.data() + (c0 + d_lo - n0) * S;
        scalar_t mom6[6];
        if (s.tabulated) {
          const scalar_t* sc = s.separable ? s.rscale.data() + (d_lo + s.radius) : nullptr;
          moment_rows<scalar_t>(s.info.data() + (d_lo + s.radius), s.w.data(), sc, x, S, s.b.data(), s.g.inv_sigma_t,
                                s.g.rho, d_lo, nrows, mom6);
        } else {
          generate_rows(s, d_lo, nrows, S, gen, gen_info, gen_scale);
          moment_rows<scalar_t>(gen_info.data(), gen.data(), s.separable ? gen_scale.data() : nullptr, x, S,
                                s.b.data(), s.g.inv_sigma_t, s.g.rho, d_lo, nrows, mom6);
        }
        double* m = gmom.data() + f * 6;
        for (int j = 0; j < 6; ++j) m[j] += g * static_cast<double>(mom6[j]);
      }, visit_sep);
      double* out = work.data() + (b * P.n_frame_tiles + tile) * P.F * 4;
      for (int64_t f = 0; f < P.F; ++f) {  // the formulas of lwvd_math.cuh, in double
        const auto& g = st[f].g;
        param_grads_from_moments<double>(gmom.data() + f * 6, st[f].norm_d, g.inv_sigma_t, g.inv_sigma_nu, g.rho,
                                         g.inv_1mr2, out + f * 4);
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

  if (!need_z) return {grad_z, gtheta[0].clone(), gtheta[1].clone(), gtheta[2].clone(), gtheta[3].clone()};
  // (2) grad_z, output-stationary over runs of samples [j0, j1), which need rows [j0 - h, j1 - 1 + h]:
  //   A[n, k] = sum_{f,t} G[f,t] norm_f E_f(n - t hop, k)   (the forward stencils, transposed)
  //   Ahat[n, .] = DFT_k A[n, .]                           (two real rows per complex FFT)
  //   grad_z[j] = 4 sum_m z[j - 2m] conj(Ahat[j - m, m])
  // A sample tile is at least 4x its halo so that recomputed rows stay below ~25%.
  const int64_t J = std::max(2 * kTileRows, 4 * (2 * h + 1));
  const int64_t n_sample_tiles = ceil_div(P.N, J);
  cplx* gz = grad_z.data_ptr<cplx>();
  // Separable filters build A^T (bin-major) through their ring plans (sep_scatter, ring_scatter; the
  // plans of pass 1); the others add their stencil rows into arow (row-major). The packing reads
  // both and clears A^T.
  at::parallel_for(0, P.B * n_sample_tiles, 1, [&](int64_t task0, int64_t task1) {
    RowFFT<scalar_t> fft(M, pairs_max, z.options());
    std::vector<scalar_t> arow(any_direct ? C * S : 0), gen, gen_scale, ah_re(2 * h + 1), ah_im(2 * h + 1);
    std::vector<scalar_t> ah_re2(2 * h + 1), ah_im2(2 * h + 1);  // the pair's second row (AVX2 path)
    std::vector<scalar_t> at_rows(any_sep ? M * cs : 0, scalar_t(0)), H(any_sep ? j_max * cs : 0, scalar_t(0));
    std::vector<RowInfo> gen_info;
    std::vector<scalar_t> acc_re, acc_im, zr_rev, zi_rev;
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / n_sample_tiles, tile = task % n_sample_tiles;
      const int64_t j0 = tile * J, j1 = std::min(P.N, j0 + J);
      const cplx* zb = zp + b * P.N;
      const scalar_t* Gb = Gp + b * P.F * P.T;
      acc_re.assign(j1 - j0, scalar_t(0));
      acc_im.assign(j1 - j0, scalar_t(0));
      const int64_t r_lo = std::max<int64_t>(0, j0 - h), r_hi = std::min(P.N - 1, j1 - 1 + h);
      // z[u] for u in [u_lo, u_hi], reversed and split into re / im: z[n - m] = zrev[u_hi - n + m]
      // is then read forwards in m, like every other array of the accumulation loop.
      const int64_t u_lo = std::max<int64_t>(0, r_lo - h), u_hi = std::min(P.N - 1, r_hi + h);
      zr_rev.resize(u_hi - u_lo + 1);
      zi_rev.resize(u_hi - u_lo + 1);
      for (int64_t i = 0; i <= u_hi - u_lo; ++i) {
        zr_rev[i] = zb[u_hi - i].real();
        zi_rev[i] = zb[u_hi - i].imag();
      }
      // Rows no frame's support reaches have A = 0, so Ahat = 0 and they add nothing: only the runs
      // of the union of [t hop - R, t hop + R] within [r_lo, r_hi] are built and gathered.
      auto do_rows = [&](int64_t a_lo, int64_t a_hi) {
      for (int64_t n0 = a_lo; n0 <= a_hi; n0 += C) {
        const int64_t n1 = std::min(a_hi + 1, n0 + C);
        const int64_t rows = n1 - n0, pairs = (rows + 1) / 2;
        if (any_direct) std::fill(arow.begin(), arow.begin() + 2 * pairs * S, scalar_t(0));
        for (int64_t f = 0; f < P.F; ++f) {  // fixed order: f, then t, then d
          const auto& s = st[f];
          const int64_t R = s.radius;
          int64_t ta, tb;
          frames_meeting(n0, n1, R, P.hop, 0, P.T - 1, &ta, &tb);
          if (ta > tb) continue;
          if (sp[f].on) {
            const auto& q = sp[f];
            int64_t r0, r1;
            sep_hull(n0, n1, ta, tb, R, P.hop, cs, &r0, &r1);
            for (int64_t j = 0; j < q.J; ++j) std::fill(H.begin() + j * cs + r0, H.begin() + j * cs + r1, scalar_t(0));
            bool any = false;
            for (int64_t t = ta; t <= tb; ++t) {
              const scalar_t coef = Gb[f * P.T + t] * s.norm;
              if (coef == scalar_t(0)) continue;  // adds exactly 0 (weights are finite)
              const int64_t c0 = t * P.hop;
              sep_scatter_any<scalar_t>(q, coef, H.data(), cs, std::max(-R, n0 - c0), std::min(R, n1 - 1 - c0), c0 - n0);
              any = true;
            }
            if (any)
              ring_scatter_any<scalar_t>(q, H.data(), cs, r0, r1, at_rows.data());
            continue;
          }
          for (int64_t t = ta; t <= tb; ++t) {
            const scalar_t coef = Gb[f * P.T + t] * s.norm;
            if (coef == scalar_t(0)) continue;  // adds exactly 0 (weights are finite)
            const int64_t c0 = t * P.hop;
            const int64_t d_lo = std::max(-R, n0 - c0), d_hi = std::min(R, n1 - 1 - c0);
            const int64_t nrows = d_hi - d_lo + 1;
            scalar_t* a = arow.data() + (c0 + d_lo - n0) * S;
            if (s.tabulated) {
              const scalar_t* sc = s.separable ? s.rscale.data() + (d_lo + R) : nullptr;
              axpy_rows<scalar_t>(s.info.data() + (d_lo + R), s.w.data(), sc, coef, a, S, nrows);
            } else {
              generate_rows(s, d_lo, nrows, S, gen, gen_info, gen_scale);
              axpy_rows<scalar_t>(gen_info.data(), gen.data(), s.separable ? gen_scale.data() : nullptr, coef, a, S,
                                  nrows);
            }
          }
        }
        bool avx2_in = false;  // A^T goes in through avx2::transpose_in (groups of 4 pairs)
#ifdef LWVD_AVX2_DISPATCH
        avx2_in = std::is_same<scalar_t, float>::value && any_sep && use_avx2();
#endif
        for (int64_t p = 0; p < pairs; ++p) {  // packed row A[a] + i A[b] (A[b] = 0 past the chunk)
          scalar_t* __restrict__ x = reinterpret_cast<scalar_t*>(fft.in(p));
          if (any_direct) {
            const scalar_t* __restrict__ aa = arow.data() + 2 * p * S;
            const scalar_t* __restrict__ ab = aa + S;
            for (int64_t k = 0; k < M; ++k) {
              x[2 * k] = aa[k];
              x[2 * k + 1] = ab[k];
            }
          } else if (!(avx2_in && p < (pairs / 4) * 4)) {  // (the AVX2 transpose assigns those pairs)
            std::fill(x, x + 2 * M, scalar_t(0));
          }
        }
        for (int64_t p = 0; any_sep && p < pairs; ++p) {  // + A^T, read and cleared (zero again for the next chunk)
          scalar_t* __restrict__ x = reinterpret_cast<scalar_t*>(fft.in(p));
#ifdef LWVD_AVX2_DISPATCH
          if constexpr (std::is_same<scalar_t, float>::value) {
            if (use_avx2() && p + 4 <= pairs) {
              float* xs[4] = {reinterpret_cast<float*>(fft.in(p)), reinterpret_cast<float*>(fft.in(p + 1)),
                              reinterpret_cast<float*>(fft.in(p + 2)), reinterpret_cast<float*>(fft.in(p + 3))};
              avx2::transpose_in(xs, M, at_rows.data() + 2 * p, cs, /*add=*/any_direct);
              p += 3;
              continue;
            }
          }
#endif
          {
            scalar_t* __restrict__ t = at_rows.data() + 2 * p;
            for (int64_t k = 0; k < M; ++k) {
              x[2 * k] += t[k * cs];
              x[2 * k + 1] += t[k * cs + 1];
              t[k * cs] = t[k * cs + 1] = scalar_t(0);
            }
          }
        }
        fft.run(pairs);
        int64_t ah_pair = -1;  // the pair whose rows ah_* hold (AVX2 path)
        (void)ah_pair;
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t n = n0 + row;
          // lags m with j = n + m in [j0, j1) and n - m in [0, N)
          const int64_t m_lo = std::max(-h, std::max(j0 - n, n - (P.N - 1)));
          const int64_t m_hi = std::min(h, std::min(j1 - 1 - n, n));
          if (m_lo > m_hi) continue;
#ifdef LWVD_AVX2_DISPATCH
          if constexpr (std::is_same<scalar_t, float>::value) {
            if (use_avx2()) {  // both rows' 2 Ahat at the pair's first row that needs them
              if (row % 2 == 0 || ah_pair != row / 2) {
                ah_pair = row / 2;
                avx2::ahat_pair(reinterpret_cast<const float*>(fft.out(row / 2)), h, M, ah_re.data(), ah_im.data(),
                                ah_re2.data(), ah_im2.data());
              }
              const float* ar = (row % 2 == 0 ? ah_re : ah_re2).data() + h + m_lo;
              const float* ai = (row % 2 == 0 ? ah_im : ah_im2).data() + h + m_lo;
              avx2::gather_acc(zr_rev.data() + (u_hi - n + m_lo), zi_rev.data() + (u_hi - n + m_lo), ar, ai,
                               acc_re.data() + (n + m_lo - j0), acc_im.data() + (n + m_lo - j0), m_hi - m_lo + 1);
              continue;
            }
          }
#endif
          // 2 Ahat[n, m] for m in [0, h] from X[m], X[-m]; Ahat[n, -m] = conj(Ahat[n, m]).
          const scalar_t* x = reinterpret_cast<const scalar_t*>(fft.out(row / 2));
          scalar_t* are = ah_re.data() + h;
          scalar_t* aim = ah_im.data() + h;
          if (row % 2 == 0) {  // Ahat[a, m] = (X[m] + conj(X[-m])) / 2
            for (int64_t m = 0; m <= h; ++m) {
              const int64_t im = m == 0 ? 0 : M - m;
              are[m] = x[2 * m] + x[2 * im];
              aim[m] = x[2 * m + 1] - x[2 * im + 1];
            }
          } else {  // Ahat[b, m] = (X[m] - conj(X[-m])) / (2i)
            for (int64_t m = 0; m <= h; ++m) {
              const int64_t im = m == 0 ? 0 : M - m;
              are[m] = x[2 * m + 1] + x[2 * im + 1];
              aim[m] = x[2 * im] - x[2 * m];
            }
          }
          for (int64_t m = 1; m <= h; ++m) {
            are[-m] = are[m];
            aim[-m] = -aim[m];
          }
          // grad_z[n + m] += 4 z[n - m] conj(Ahat[n, m]) = 2 z[n - m] conj(2 Ahat[n, m])
          const int64_t cnt = m_hi - m_lo + 1;
          const scalar_t* __restrict__ zr = zr_rev.data() + (u_hi - n + m_lo);
          const scalar_t* __restrict__ zi = zi_rev.data() + (u_hi - n + m_lo);
          const scalar_t* __restrict__ ar = are + m_lo;
          const scalar_t* __restrict__ ai = aim + m_lo;
          scalar_t* __restrict__ gre = acc_re.data() + (n + m_lo - j0);
          scalar_t* __restrict__ gim = acc_im.data() + (n + m_lo - j0);
          for (int64_t i = 0; i < cnt; ++i) {
            gre[i] += scalar_t(2) * (zr[i] * ar[i] + zi[i] * ai[i]);
            gim[i] += scalar_t(2) * (zi[i] * ar[i] - zr[i] * ai[i]);
          }
        }
      }
      };
      {
        int64_t ta, tb;
        frames_meeting(r_lo, r_hi + 1, P.r_max, P.hop, 0, P.T - 1, &ta, &tb);
        for_each_reached_row_run(ta, tb, P.r_max, P.hop, r_lo, r_hi, do_rows);
      }
      cplx* out = gz + b * P.N + j0;
      for (int64_t j = 0; j < j1 - j0; ++j) out[j] = cplx(acc_re[j], acc_im[j]);
    }
  });
  return {grad_z, gtheta[0].clone(), gtheta[1].clone(), gtheta[2].clone(), gtheta[3].clone()};
}

at::Tensor lwvd_fwd_cpu(const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t,
                        const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop_length,
                        double truncate) {
  check_args(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  if (z.scalar_type() == at::kComplexDouble)
    return std::get<0>(forward_impl<double>(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate, false));
  return std::get<0>(forward_impl<float>(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate, false));
}

// lwvd_fwd_moments: K and the six moments of every (batch item, filter, frame), (B, F, T, 6) float64,
// for lwvd_bwd_moments (CPU only; lwvd_cuda/ops.py uses the pair under plain autograd when the
// moments fit its memory cap).
std::tuple<at::Tensor, at::Tensor> lwvd_fwd_moments_cpu(const at::Tensor& z, const at::Tensor& center,
                                                        const at::Tensor& sigma_t, const at::Tensor& sigma_nu,
                                                        const at::Tensor& rho, int64_t n_fft, int64_t hop_length,
                                                        double truncate) {
  check_args(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  if (z.scalar_type() == at::kComplexDouble)
    return forward_impl<double>(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate, true);
  return forward_impl<float>(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate, true);
}

// lwvd_bwd_moments: lwvd_bwd with the moments of lwvd_fwd_moments (no parameter-gradient pass over
// the W rows); grad_z only where need_z (else zeros).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lwvd_bwd_moments_cpu(
    const at::Tensor& grad_out, const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t,
    const at::Tensor& sigma_nu, const at::Tensor& rho, const at::Tensor& moments, int64_t n_fft, int64_t hop_length,
    double truncate, bool need_z) {
  check_args(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  check_grad(grad_out, z, center.size(0), hop_length);
  check_moments(moments, z, center.size(0), grad_out.size(2));
  const at::Tensor m = moments.contiguous();
  if (z.scalar_type() == at::kComplexDouble)
    return backward_impl<double>(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate, m, need_z);
  return backward_impl<float>(grad_out, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate, m, need_z);
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
  m.impl("lwvd_fwd_moments", &lwvd::cpu::lwvd_fwd_moments_cpu);
  m.impl("lwvd_bwd_moments", &lwvd::cpu::lwvd_bwd_moments_cpu);
}
