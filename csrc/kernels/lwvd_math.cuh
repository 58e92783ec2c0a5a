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

template <typename scalar_t>
struct FilterGeometry {
  scalar_t center;        // cycles/sample
  scalar_t inv_sigma_t;   // 1 / sigma_t   (1/samples)
  scalar_t inv_sigma_nu;  // 1 / sigma_nu  (samples/cycle)
  scalar_t rho;
  scalar_t inv_1mr2;      // 1 / (1 - rho^2)
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
  const double one_m_r2 = 1.0 - rho * rho;
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

// q_f(d, v) in the form of SPEC §1; every backend evaluates it in this order.
template <typename scalar_t>
LWVD_HD scalar_t quad_form(const FilterGeometry<scalar_t>& g, scalar_t d, scalar_t v) {
  const scalar_t a = d * g.inv_sigma_t;
  const scalar_t b = v * g.inv_sigma_nu;
  return (a * a - scalar_t(2) * g.rho * a * b + b * b) * g.inv_1mr2;
}

// Inclusive bin range [*k_lo, *k_hi] that contains every k with q(d, nu_k - center) <= trunc2,
// with one bin of margin on each side (the per-term q test decides); empty when *k_hi < *k_lo.
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
