// lwvd.h — argument checks shared by every backend of torch.ops.lwvd_cuda.
//
// Op contract (see lwvd_cuda/ops.py):
//   lwvd_fwd(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate) -> K
//     z         complex64 | complex128, (B, N), N >= 1, contiguous rows
//     center    real (F,), cycles/sample        sigma_t  real (F,), samples, > 0
//     sigma_nu  real (F,), cycles/sample, > 0   rho      real (F,), |rho| < 1
//     all four of z's real dtype and on z's device; n_fft >= 1; hop_length >= 1;
//     truncate > 0, +inf meaning "every term" (truncate=None in Python)
//     K         real (B, F, T), T = 1 + N / hop_length
//   lwvd_bwd(grad_K, z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)
//     -> (grad_z (B, N) complex, grad_center, grad_sigma_t, grad_sigma_nu, grad_rho (F,))
//   CPU and CUDA (issues #13, #10): lwvd_fwd_moments(same arguments as lwvd_fwd) -> (K, moments), moments
//     float64 (B, F, T, 6) = (S0, Sa, Sc, Saa, Sac, Scc) of every (item, filter, frame);
//     lwvd_bwd_moments(grad_K, z, center, sigma_t, sigma_nu, rho, moments, n_fft, hop_length,
//     truncate, need_z) -> as lwvd_bwd, without a pass over the W rows (grad_z zeros unless need_z)
//
// TORCH_CHECK_TYPE raises TypeError and TORCH_CHECK_VALUE raises ValueError in Python; every
// message names the argument.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace lwvd {

// Largest n_fft (lwvd_cuda.functional.MAX_N_FFT says the same): one lag row of n_fft complex values
// is built per sample (2^24 complex128 values are 256 MiB a row); beyond it allocation fails deep in
// a backend (std::bad_alloc at 2^31) instead of saying why.
constexpr int64_t kMaxNfft = int64_t{1} << 24;

inline void check_shapes(const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t,
                         const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft,
                         int64_t hop_length, double truncate) {
  TORCH_CHECK_TYPE(z.is_complex() && (z.scalar_type() == at::kComplexFloat || z.scalar_type() == at::kComplexDouble),
                   "lwvd: z must be complex64 or complex128, got ", z.scalar_type());
  TORCH_CHECK_VALUE(z.dim() == 2, "lwvd: z must have shape (B, N), got ", z.sizes());
  TORCH_CHECK_VALUE(z.size(1) >= 1, "lwvd: z: signal length N must be >= 1, got ", z.size(1));
  TORCH_CHECK_VALUE(n_fft >= 1, "lwvd: n_fft must be >= 1, got ", n_fft);
  TORCH_CHECK_VALUE(n_fft <= kMaxNfft, "lwvd: n_fft must be <= ", kMaxNfft,
                    " (one lag row of n_fft complex values is built per sample), got ", n_fft);
  TORCH_CHECK_VALUE(hop_length >= 1, "lwvd: hop_length must be >= 1, got ", hop_length);
  TORCH_CHECK_VALUE(truncate > 0.0 && !std::isnan(truncate),
                    "lwvd: truncate must be > 0 (inf for every term), got ", truncate);
  const auto real = c10::toRealValueType(z.scalar_type());
  const char* names[4] = {"center", "sigma_t", "sigma_nu", "rho"};
  const at::Tensor* params[4] = {&center, &sigma_t, &sigma_nu, &rho};
  for (int i = 0; i < 4; ++i) {
    const at::Tensor& p = *params[i];
    TORCH_CHECK_TYPE(p.scalar_type() == real, "lwvd: ", names[i], " must have dtype ", real,
                     " (z's real dtype), got ", p.scalar_type());
    TORCH_CHECK_VALUE(p.dim() == 1, "lwvd: ", names[i], " must have shape (F,), got ", p.sizes());
    TORCH_CHECK_VALUE(p.size(0) == center.size(0), "lwvd: ", names[i], " has ", p.size(0),
                      " filters but center has ", center.size(0));
    TORCH_CHECK_VALUE(p.device() == z.device(), "lwvd: ", names[i], " is on ", p.device(),
                      " but z is on ", z.device());
  }
  TORCH_CHECK_VALUE(center.size(0) >= 1, "lwvd: center: need at least one filter (F >= 1)");
}

// Value checks read the parameters (a device sync on CUDA; the parameters are (F,) small).
inline void check_values(const at::Tensor& center, const at::Tensor& sigma_t, const at::Tensor& sigma_nu,
                         const at::Tensor& rho) {
  const char* names[4] = {"center", "sigma_t", "sigma_nu", "rho"};
  const at::Tensor* params[4] = {&center, &sigma_t, &sigma_nu, &rho};
  for (int i = 0; i < 4; ++i)
    TORCH_CHECK_VALUE(at::isfinite(*params[i]).all().item<bool>(), "lwvd: ", names[i], " must be finite");
  TORCH_CHECK_VALUE((sigma_t > 0).all().item<bool>(), "lwvd: sigma_t must be > 0 (samples)");
  TORCH_CHECK_VALUE((sigma_nu > 0).all().item<bool>(), "lwvd: sigma_nu must be > 0 (cycles/sample)");
  TORCH_CHECK_VALUE((rho.abs() < 1).all().item<bool>(), "lwvd: rho must lie in (-1, 1)");
}

inline void check_args(const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t,
                       const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft,
                       int64_t hop_length, double truncate) {
  check_shapes(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  check_values(center, sigma_t, sigma_nu, rho);
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& z, int64_t n_filters, int64_t hop_length) {
  const int64_t frames = 1 + z.size(1) / hop_length;
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == z.size(0) && grad.size(1) == n_filters &&
                        grad.size(2) == frames,
                    "lwvd_bwd: grad_out must have shape (", z.size(0), ", ", n_filters, ", ", frames, "), got ",
                    grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == c10::toRealValueType(z.scalar_type()),
                   "lwvd_bwd: grad_out must have z's real dtype, got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == z.device(), "lwvd_bwd: grad_out is on ", grad.device(), " but z is on ",
                    z.device());
}

// The saved moments of lwvd_fwd_moments, as lwvd_bwd_moments takes them (CPU and CUDA): float64
// (B, F, T, 6) on z's device.
inline void check_moments(const at::Tensor& moments, const at::Tensor& z, int64_t n_filters, int64_t n_frames) {
  TORCH_CHECK_VALUE(moments.scalar_type() == at::kDouble && moments.dim() == 4 && moments.size(0) == z.size(0) &&
                        moments.size(1) == n_filters && moments.size(2) == n_frames && moments.size(3) == 6 &&
                        moments.device() == z.device(),
                    "lwvd_bwd_moments: moments must be the float64 (B, F, T, 6) tensor of lwvd_fwd_moments, got ",
                    moments.scalar_type(), " ", moments.sizes(), " on ", moments.device());
}

}  // namespace lwvd
