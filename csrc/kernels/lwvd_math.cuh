// lwvd_math.cuh — the operator's per-filter geometry, shared by every backend.
//
// No torch includes: this header compiles with nvcc for the CUDA kernels, with the host compiler
// for the CPU kernels, and with the host compiler for the CPU test harness that runs the CUDA
// kernel source. One place for the formulas of SPEC §1 so that all backends apply the same
// truncation rule (q <= truncate^2) and agree to rounding, not to a truncation error.
//
// Notation (SPEC §1): M = n_fft, bin k has frequency nu_k = k / (2M) cycles/sample,
// d = n - t*hop (samples), v = nu_k - center (cycles/sample),
//   a = d / sigma_t,  b = v / sigma_nu,
//   q = (a^2 - 2 rho a b + b^2) / (1 - rho^2)
//     = a^2 + (b - rho a)^2 / (1 - rho^2)          (completing the square in b)
//   weight = norm * exp(-q / 2),  norm = (1 / 2M) / (2 pi sigma_t sigma_nu sqrt(1 - rho^2)).
// Every backend evaluates q in the second form, in one fixed order (quad_form below; the reference
// lwvd_cuda/reference.py mirrors it operation for operation), so that a term exactly on the
// truncation boundary q = truncate^2 falls on the same side everywhere. The second form is also the
// numerically stable one for |rho| -> 1: the first subtracts terms of size a^2 + b^2 and then
// multiplies the rounding error by 1/(1 - rho^2) (3e-4 off at rho = 1 - 1e-12), the second only
// squares the residual b - rho a. 1 - rho^2 itself is formed as (1 - rho)(1 + rho) (1 - rho is
// exact for rho in [1/2, 1]; rho * rho would lose all but a few digits of 1 - rho^2 there).
// For a fixed d the weight is a Gaussian in v centred at mu(d) = rho * sigma_nu * d / sigma_t with
// standard deviation sigma_nu * sqrt(1 - rho^2): the ellipse is a stack of short frequency runs
// whose centre moves linearly with d. Kernels iterate over exactly those runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(LWVD_CUDA_EMULATION)
#define LWVD_HD __host__ __device__ __forceinline__
#else
#define LWVD_HD inline
#endif

namespace lwvd {

// Lags |m| < M/2, i.e. m in [-max_lag, max_lag].
LWVD_HD int64_t max_lag(int64_t n_fft) { return (n_fft - 1) / 2; }

// Frame count of torch.stft(center=True): frames t = 0 .. T-1 centred on t*hop.
LWVD_HD int64_t num_frames(int64_t n_samples, int64_t hop) { return 1 + n_samples / hop; }

// truncate^2 for a finite truncate. For truncate = +inf ("sum every term") we return the q beyond
// which exp(-q/2) underflows to exactly 0 in the accumulation type: skipping those terms changes no
// sum of finite values (x + 0 == x), so this is exact, and keeps the cost finite.
template <typename scalar_t>
LWVD_HD double effective_trunc2(double truncate) {
  if (truncate < std::numeric_limits<double>::infinity()) return truncate * truncate;
  // exp(x) == 0 for x < -745.2 in double and x < -103.98 in float (below the smallest denormal).
  return sizeof(scalar_t) == sizeof(double) ? 2.0 * 746.0 : 2.0 * 105.0;
}

// 1 - rho^2 without cancellation near |rho| = 1.
LWVD_HD double one_minus_rho2(double rho) { return (1.0 - rho) * (1.0 + rho); }

// Products and sums that the compiler may not fuse into an FMA: nvcc contracts a * b + c by default
// (--fmad=true), which rounds once instead of twice and would move a boundary term of quad_form to
// the other side of q <= trunc2 than on the CPU and in the reference. The host build does not fuse
// (x86-64 without -mfma: setup.py passes no -march), and the emulator runs on the host.
#if defined(__CUDA_ARCH__)
LWVD_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
LWVD_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
LWVD_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
LWVD_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
LWVD_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
LWVD_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
#else
template <typename T>
LWVD_HD T mul_rn(T a, T b) { return a * b; }
template <typename T>
LWVD_HD T add_rn(T a, T b) { return a + b; }
template <typename T>
LWVD_HD T sub_rn(T a, T b) { return a - b; }
#endif

template <typename scalar_t>
struct FilterGeometry {
  scalar_t center;        // cycles/sample
  scalar_t inv_sigma_t;   // 1 / sigma_t   (1/samples)
  scalar_t inv_sigma_nu;  // 1 / sigma_nu  (samples/cycle)
  scalar_t rho;
  scalar_t inv_1mr2;      // 1 / (1 - rho^2), with 1 - rho^2 = (1 - rho)(1 + rho)
  scalar_t norm;          // (1/2M) / (2 pi sigma_t sigma_nu sqrt(1 - rho^2))
  // For the loops (kept in double: they only decide which terms are visited, conservatively).
  double cond_sd;         // sigma_nu * sqrt(1 - rho^2): std of v given d (cycles/sample)
  double slope;           // rho * sigma_nu / sigma_t: mu(d) = slope * d (cycles/sample/sample)
  double sigma_t;
  int64_t d_radius;       // every term with q <= trunc2 has |d| <= d_radius
};

// d_limit: the largest |d| that can occur (N - 1 + (T-1)*hop); d_radius never exceeds it, so
// huge spreads cannot overflow an index.
template <typename scalar_t>
LWVD_HD FilterGeometry<scalar_t> make_filter(double center, double sigma_t, double sigma_nu,
                                             double rho, double trunc2, int64_t n_fft,
                                             int64_t d_limit) {
  FilterGeometry<scalar_t> g;
  const double one_m_r2 = one_minus_rho2(rho);
  g.center = static_cast<scalar_t>(center);
  g.inv_sigma_t = static_cast<scalar_t>(1.0 / sigma_t);
  g.inv_sigma_nu = static_cast<scalar_t>(1.0 / sigma_nu);
  g.rho = static_cast<scalar_t>(rho);
  g.inv_1mr2 = static_cast<scalar_t>(1.0 / one_m_r2);
  const double two_pi = 6.283185307179586476925286766559;
  g.norm = static_cast<scalar_t>((1.0 / (2.0 * static_cast<double>(n_fft))) /
                                 (two_pi * sigma_t * sigma_nu * sqrt(one_m_r2)));
  g.cond_sd = sigma_nu * sqrt(one_m_r2);
  g.slope = rho * sigma_nu / sigma_t;
  // Where slope * d can overflow for some |d| <= d_limit (huge sigma_nu, tiny sigma_t; also a slope
  // that overflowed itself), bin_range's row centre center + slope * d is inf, or inf * 0 = NaN at
  // d = 0: rows came back empty and the output was exactly 0 where the reference is not (issue #12).
  // Such a filter's rows get every bin instead (slope 0 and a half-width of DBL_MAX * sqrt(rest),
  // beyond every bin wherever rest > 0) and the per-term q test decides, in every backend. (Done
  // here, once per filter: a test in bin_range made ptxas spill in the float32 moments kernel.)
  if (!(fabs(g.slope) * (static_cast<double>(d_limit) + 1.0) <= 1e300)) {
    g.slope = 0.0;
    g.cond_sd = std::numeric_limits<double>::max();
  }
  g.sigma_t = sigma_t;
  // |a| <= sqrt(trunc2) on the ellipse; +1 is a margin against rounding (the per-term q test decides).
  const double r = sqrt(trunc2) * sigma_t + 1.0;
  g.d_radius = r < static_cast<double>(d_limit) ? static_cast<int64_t>(r) : d_limit;
  return g;
}

// Frequency of bin k in cycles/sample. Written as a division so that the reference
// (torch.arange(M) / (2M)) and the kernels round identically.
template <typename scalar_t>
LWVD_HD scalar_t bin_frequency(int64_t k, int64_t n_fft) {
  return static_cast<scalar_t>(k) / static_cast<scalar_t>(2 * n_fft);
}

// q_f(d, v), in the one evaluation order every backend uses (the reference mirrors it):
//   a = d * (1/sigma_t),  b = v * (1/sigma_nu),  c = b - rho * a,  q = a * a + (c * c) * (1/(1 - rho^2))
// each operation rounded once (no FMA), the reciprocals rounded from double as make_filter does.
// Since q >= a * a in floating point too, no term beyond |d| <= truncate * sigma_t (+ rounding) counts.
// The second form also hands back a and c (the backward's moment coordinates, below).
template <typename scalar_t>
LWVD_HD scalar_t quad_form(const FilterGeometry<scalar_t>& g, scalar_t d, scalar_t v, scalar_t* a_out,
                           scalar_t* c_out) {
  const scalar_t a = mul_rn(d, g.inv_sigma_t);
  const scalar_t b = mul_rn(v, g.inv_sigma_nu);
  const scalar_t c = sub_rn(b, mul_rn(g.rho, a));
  *a_out = a;
  *c_out = c;
  return add_rn(mul_rn(a, a), mul_rn(mul_rn(c, c), g.inv_1mr2));
}

template <typename scalar_t>
LWVD_HD scalar_t quad_form(const FilterGeometry<scalar_t>& g, scalar_t d, scalar_t v) {
  scalar_t a, c;
  return quad_form(g, d, v, &a, &c);
}

// ---- Backward: parameter gradients from six moments (docs/design.md, "Backward"). ----
// The moments of W E over a frame's ellipse are taken in the filter's own coordinates of q's
// completed square, a = d / sigma_t and c = b - rho a (quad_form's a and c; c sigma_nu = v - mu(d)
// is the offset from the row's centre, of size sqrt(1 - rho^2) on the ellipse):
//   m = (S0, Sa, Sc, Saa, Sac, Scc),   S_xy = sum W E x y   (kMoment* below).
// In this basis the four gradient formulas have no cancelling difference that a factor
// 1/(1 - rho^2) then amplifies (the earlier (d, v) moments formed the sums of c and c^2 as differences
// of sums of size 1: the rho gradient was 2e-8 relative off at rho = 1 - 1e-8 and 6e-4 at
// -(1 - 1e-12) on testing.near_one_ridge; now 4e-14 and 3e-12, the rounding of c itself). Unit-free,
// the moments also stay in range for any sigma_nu (v^2 underflowed in float32, Svv / sigma_nu^3 in double).
enum : int { kMomentS0 = 0, kMomentA, kMomentC, kMomentAA, kMomentAC, kMomentCC };

// m += the moments of one row at a (or of one term: p0 = W E, p1 = W E c, p2 = W E c^2), given the
// row's sums p0 = sum W E, p1 = sum W E c, p2 = sum W E c^2 over its bins. V may be a SIMD vector.
template <typename V, typename T>
LWVD_HD void fold_moments(V* m, const V& p0, const V& p1, const V& p2, T a) {
  const V p0a = p0 * a;
  m[kMomentS0] += p0;
  m[kMomentA] += p0a;
  m[kMomentC] += p1;
  m[kMomentAA] += p0a * a;
  m[kMomentAC] += p1 * a;
  m[kMomentCC] += p2;
}

// m += the moments of one term with weight we = W E at (a, c) (the CUDA kernels, per term).
template <typename T>
LWVD_HD void add_moment_term(T* m, T we, T a, T c) {
  const T wc = we * c;
  fold_moments(m, we, wc, wc * c, a);
}

// dK/dtheta for theta = (center, sigma_t, sigma_nu, rho) into out[4], from moments m (of one frame,
// or G-weighted sums over frames: the map is linear). With s = 1 - rho^2 and K = norm S0:
//   dK/dcenter   = norm Sc / (s sigma_nu)
//   dK/dsigma_t  = (norm (Saa - rho Sac / s) - K) / sigma_t
//   dK/dsigma_nu = (norm (Scc + rho Sac) / s - K) / sigma_nu
//   dK/drho      = norm (rho (S0 - Scc / s) + Sac) / s
// (docs/design.md derives them). All six moments exactly 0 (every weight underflowed, so the output
// is exactly 0): the gradient is exactly 0, not 0 * inf = NaN where the coefficients overflow
// (norm / sigma_nu^2 beyond the range for sigma_nu below ~1e-154 in double).
template <typename T>
LWVD_HD void param_grads_from_moments(const T* m, T norm, T inv_sigma_t, T inv_sigma_nu, T rho, T inv_1mr2,
                                      T* out) {
  const T S0 = m[kMomentS0], Sa = m[kMomentA], Sc = m[kMomentC];
  const T Saa = m[kMomentAA], Sac = m[kMomentAC], Scc = m[kMomentCC];
  if (S0 == T(0) && Sa == T(0) && Sc == T(0) && Saa == T(0) && Sac == T(0) && Scc == T(0)) {
    out[0] = out[1] = out[2] = out[3] = T(0);
    return;
  }
  const T K = norm * S0;
  out[0] = norm * (Sc * inv_1mr2) * inv_sigma_nu;
  out[1] = (norm * (Saa - rho * (Sac * inv_1mr2)) - K) * inv_sigma_t;
  out[2] = (norm * ((Scc + rho * Sac) * inv_1mr2) - K) * inv_sigma_nu;
  out[3] = norm * ((rho * (S0 - Scc * inv_1mr2) + Sac) * inv_1mr2);
}

// Inclusive bin range [*k_lo, *k_hi] that contains every k with q(d, nu_k - center) <= trunc2,
// with one bin of margin on each side (the per-term q test decides); empty when *k_hi < *k_lo.
// (A filter whose slope * d could overflow has slope 0 and cond_sd = DBL_MAX: make_filter.)
template <typename scalar_t>
LWVD_HD void bin_range(const FilterGeometry<scalar_t>& g, int64_t d, double trunc2, int64_t n_fft,
                       int64_t* k_lo, int64_t* k_hi) {
  const double a = static_cast<double>(d) / g.sigma_t;
  const double rest = trunc2 - a * a;
  if (rest < 0.0) {  // (with rounding margin: the d_radius margin already covers the edge)
    if (rest < -1e-9 * trunc2) { *k_lo = 1; *k_hi = 0; return; }
  }
  const double half = g.cond_sd * sqrt(rest > 0.0 ? rest : 0.0);
  const double mu = static_cast<double>(g.center) + g.slope * static_cast<double>(d);
  const double two_m = 2.0 * static_cast<double>(n_fft);
  double lo = floor((mu - half) * two_m) - 1.0;
  double hi = ceil((mu + half) * two_m) + 1.0;
  lo = lo < 0.0 ? 0.0 : lo;
  hi = hi > static_cast<double>(n_fft - 1) ? static_cast<double>(n_fft - 1) : hi;
  if (!(lo <= hi)) { *k_lo = 1; *k_hi = 0; return; }  // also catches NaN
  *k_lo = static_cast<int64_t>(lo);
  *k_hi = static_cast<int64_t>(hi);
}

}  // namespace lwvd
