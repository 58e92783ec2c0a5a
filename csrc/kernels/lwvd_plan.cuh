// lwvd_plan.cuh — the host-side sequence of launches of the CUDA kernels, torch-free.
//
// USAGE (the CUDA launcher in csrc/cuda/lwvd_cuda.cu and the CPU emulator of the test harness both
// do exactly this):
//
//   #include "kernels/lwvd_plan.cuh"      // after the emulator header when emulating
//   struct MyLauncher {
//     // Launch kernel(args...) on grid x block threads with `smem_bytes` of dynamic shared memory.
//     template <typename... KArgs, typename... Args>
//     void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem_bytes, Args... args);
//     // An UNINITIALISED device buffer of `bytes` (16-byte aligned) that lives until the plan's
//     // kernels are done (every kernel writes what it later reads; nothing relies on zeros).
//     void* workspace(std::size_t bytes);
//     // Optional: a persistent device word the prepare kernel ORs the kInvalid* bits of invalid
//     // parameters into (lwvd_fwd.cuh); without it only the NaN outputs report them.
//     unsigned* error_flags();
//   };
//   lwvd::FwdProblem<float> p{z, center, sigma_t, sigma_nu, rho, out, B, N, F, n_fft, hop, truncate};
//   lwvd::run_forward(L, p);              // out (B, F, T) = K
//   lwvd::BwdProblem<float> q{...};       // see the struct below
//   lwvd::run_backward(L, q);             // grad_z (B, N, 2) and the four (F,) parameter gradients
//
// All pointers are device pointers to contiguous memory; complex tensors are interleaved (re, im)
// pairs (torch.view_as_real). Preconditions (checked by lwvd::check_args / check_grad on the torch
// side, and by check_problem below): B >= 0, N >= 1, F >= 1, hop >= 1, n_fft a power of two in
// [4, 8192], truncate > 0 (+inf = every term), parameters finite with sigma > 0 and |rho| < 1.
// The kernels take every grid dimension on x (B * tiles), so y/z limits never bind.
//
// Launch sequence (no host sync anywhere, no fill kernels):
//   forward : prepare (1 block) -> smooth<false> (B * ceil(T / TT) blocks)               2 launches
//   backward: prepare -> smooth<true> (moments to a workspace) -> grad_z + param_grad (one launch of
//             max(B * ceil(N / J), F) blocks: grad_z tiles, then one filter's gradients per block) 3 launches
//   training pair (run_forward_moments / run_backward_moments, torch ops lwvd_fwd_moments / lwvd_bwd_moments):
//     forward : prepare -> smooth<true, keep> (K and the (B, F, T, 6) float64 moments)          2 launches
//     backward: prepare -> grad_z<frame> (grad_z tiles unless need_z is false, then the
//               parameter gradients from G * the forward's moments: no pass over W rows)      2 launches
// Parameter values are checked on the device (prepare): invalid ones make every output NaN and set
// the launcher's error flags (lwvd_fwd.cuh, kInvalid*).
// Every tile / block / shared-memory choice is in launch_config.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_compat.cuh"
#include "launch_config.h"
#include "lwvd_bwd.cuh"
#include "lwvd_fwd.cuh"
#include "lwvd_math.cuh"

namespace lwvd {

template <typename scalar_t>
struct FwdProblem {
  const scalar_t* z;         // (B, N, 2)
  const scalar_t* center;    // (F,) cycles/sample
  const scalar_t* sigma_t;   // (F,) samples
  const scalar_t* sigma_nu;  // (F,) cycles/sample
  const scalar_t* rho;       // (F,)
  scalar_t* out;             // (B, F, T), T = 1 + N / hop
  int64_t batch, n_samples, n_filters, n_fft, hop;
  double truncate;           // > 0; +inf = every term
};

template <typename scalar_t>
struct BwdProblem {
  const scalar_t* grad_out;  // (B, F, T)
  const scalar_t* z;         // (B, N, 2)
  const scalar_t* center;
  const scalar_t* sigma_t;
  const scalar_t* sigma_nu;
  const scalar_t* rho;
  scalar_t* grad_z;          // (B, N, 2)
  scalar_t* grad_center;     // (F,)
  scalar_t* grad_sigma_t;
  scalar_t* grad_sigma_nu;
  scalar_t* grad_rho;
  int64_t batch, n_samples, n_filters, n_fft, hop;
  double truncate;
};

// Largest n_fft of the shared-memory FFT (lwvd_cuda.functional.CUDA_N_FFT_SIZES).
constexpr int64_t kMaxFft = 8192;
constexpr int64_t kMinFft = 4;

inline bool is_supported_fft(int64_t n_fft) {
  return n_fft >= kMinFft && n_fft <= kMaxFft && (n_fft & (n_fft - 1)) == 0;
}

// Last line of defence for callers that bypass lwvd::check_args (the emulator tests): the plan
// never launches on sizes its index arithmetic does not cover.
inline void check_problem(int64_t batch, int64_t n_samples, int64_t n_filters, int64_t n_fft, int64_t hop,
                          double truncate) {
  if (batch < 0) throw std::invalid_argument("lwvd plan: batch must be >= 0, got " + std::to_string(batch));
  if (n_samples < 1) throw std::invalid_argument("lwvd plan: N must be >= 1, got " + std::to_string(n_samples));
  if (n_filters < 1) throw std::invalid_argument("lwvd plan: F must be >= 1, got " + std::to_string(n_filters));
  if (hop < 1) throw std::invalid_argument("lwvd plan: hop_length must be >= 1, got " + std::to_string(hop));
  if (!is_supported_fft(n_fft))
    throw std::invalid_argument("lwvd plan: n_fft must be a power of two in [4, 8192], got " + std::to_string(n_fft));
  if (!(truncate > 0.0)) throw std::invalid_argument("lwvd plan: truncate must be > 0");
}

namespace detail {

template <typename scalar_t>
struct Prepared {
  FilterGeometry<scalar_t>* geom;
  cplx<scalar_t>* twiddles;
  int64_t* max_radius;
  unsigned* invalid;
  double trunc2;
  // Stencil tables (launch_config.h kStencil*), filled by the prepare launch's blocks 1 ..
  int* tab_rows;
  scalar_t* tab_e;
  scalar_t* tab_c;
  int* tab_idx;
  int64_t terms_cap, rows_cap;
  // grad_z's window tables (launch_config.h kWindow*), filled by the same blocks
  int2* win_hdr;
  scalar_t* win_e;
  int2* win_hull;
  int64_t win_cap;
};

inline std::size_t align16(std::size_t x) { return (x + 15) & ~std::size_t{15}; }

// L.error_flags() when the launcher has one, else null.
template <class L>
auto error_flags_of(L& l, int) -> decltype(l.error_flags()) {
  return l.error_flags();
}
template <class L>
unsigned* error_flags_of(L&, long) {
  return nullptr;
}

template <class Launcher, typename scalar_t>
Prepared<scalar_t> prepare(Launcher& L, const scalar_t* center, const scalar_t* sigma_t, const scalar_t* sigma_nu,
                           const scalar_t* rho, int64_t n_samples, int64_t n_filters, int64_t n_fft, int64_t hop,
                           double truncate, bool windows) {
  Prepared<scalar_t> pr;
  pr.geom = static_cast<FilterGeometry<scalar_t>*>(
      L.workspace(align16(sizeof(FilterGeometry<scalar_t>) * static_cast<std::size_t>(n_filters))));
  pr.twiddles = static_cast<cplx<scalar_t>*>(
      L.workspace(align16(sizeof(cplx<scalar_t>) * static_cast<std::size_t>(n_fft / 2))));
  unsigned char* small = static_cast<unsigned char*>(L.workspace(32));  // max_radius, invalid
  pr.max_radius = reinterpret_cast<int64_t*>(small);
  pr.invalid = reinterpret_cast<unsigned*>(small + 16);
  pr.trunc2 = effective_trunc2<scalar_t>(truncate);
  const int64_t frames = num_frames(n_samples, hop);
  const int64_t d_limit = n_samples - 1 + (frames - 1) * hop;
  // Stencil tables: a host-chosen capacity (no sync: the sizes depend on parameter values on the
  // device); filters that do not fit are evaluated on the fly (launch_config.h).
  pr.terms_cap = config::stencil_terms_cap(n_filters, sizeof(scalar_t));
  pr.rows_cap = config::stencil_rows_cap(pr.terms_cap, d_limit);
  const std::size_t nf = static_cast<std::size_t>(n_filters);
  const std::size_t terms = nf * static_cast<std::size_t>(pr.terms_cap);
  pr.tab_rows = static_cast<int*>(L.workspace(align16(sizeof(int) * nf * static_cast<std::size_t>(pr.rows_cap + 1))));
  pr.tab_e = static_cast<scalar_t*>(L.workspace(align16(sizeof(scalar_t) * terms)));
  pr.tab_c = static_cast<scalar_t*>(L.workspace(align16(sizeof(scalar_t) * terms)));
  pr.tab_idx = static_cast<int*>(L.workspace(align16(sizeof(int) * terms)));
  // grad_z's window tables (up to LWVD_WINDOW_BUDGET + headers), only for the calls whose grad_z tiles
  // read them: a forward's prepare neither allocates nor fills them (win_e == nullptr).
  pr.win_cap = windows ? config::window_cap(n_filters, sizeof(scalar_t)) : 0;
  pr.win_hdr = nullptr;
  pr.win_e = nullptr;
  pr.win_hull = nullptr;
  if (windows) {
    pr.win_hdr = static_cast<int2*>(L.workspace(align16(sizeof(int2) * nf * static_cast<std::size_t>(pr.rows_cap))));
    pr.win_e = static_cast<scalar_t*>(L.workspace(
        align16(sizeof(scalar_t) * config::kWindow * nf * static_cast<std::size_t>(pr.win_cap))));
    pr.win_hull = static_cast<int2*>(L.workspace(align16(sizeof(int2) * nf)));
  }
  PrepareArgs<scalar_t> a{center, sigma_t, sigma_nu, rho, pr.geom, pr.twiddles, pr.max_radius, pr.invalid,
                          error_flags_of(L, 0), n_filters, n_fft, d_limit, pr.trunc2,
                          pr.tab_rows, pr.tab_e, pr.tab_c, pr.tab_idx, pr.terms_cap, pr.rows_cap,
                          1.0 / (2.0 * static_cast<double>(n_fft)), pr.win_hdr, pr.win_e, pr.win_hull, pr.win_cap};
  const int64_t table_blocks = n_filters < config::kStencilMaxBlocks ? n_filters : config::kStencilMaxBlocks;
  L.launch(lwvd_prepare_kernel<scalar_t>, dim3(static_cast<unsigned>(1 + table_blocks)), dim3(config::kPrepThreads),
           0, a);
  return pr;
}

// Blocks of the smooth / moments launch: B * ceil(T / TT).
inline int64_t smooth_blocks(int64_t batch, int64_t n_samples, int64_t n_fft, int64_t hop) {
  const int64_t frames = num_frames(n_samples, hop);
  return batch * ceil_div(frames, config::frames_per_block(n_fft, hop, batch, frames));
}

template <class Launcher, typename scalar_t, bool kMoments, bool kKeep = false>
void smooth(Launcher& L, const Prepared<scalar_t>& pr, const scalar_t* z, const scalar_t* grad_out, scalar_t* out,
            int64_t batch, int64_t n_samples, int64_t n_filters, int64_t n_fft, int64_t hop,
            double* frame_moments = nullptr) {
  SmoothArgs<scalar_t> a;
  a.frame_moments = frame_moments;
  a.z = reinterpret_cast<const cplx<scalar_t>*>(z);
  a.grad_out = grad_out;
  a.geom = pr.geom;
  a.max_radius = pr.max_radius;
  a.invalid = pr.invalid;
  a.twiddles = pr.twiddles;
  a.out = out;
  a.n_samples = n_samples;
  a.n_filters = n_filters;
  a.n_frames = num_frames(n_samples, hop);
  a.hop = hop;
  a.n_fft = n_fft;
  a.frames_per_block = config::frames_per_block(n_fft, hop, batch, a.n_frames);
  a.tiles_per_item = ceil_div(a.n_frames, a.frames_per_block);
  a.log2_fft = ilog2(n_fft);
  a.complex_rows = config::smooth_complex_rows_per_pass(n_fft, sizeof(scalar_t));  // grad_z: its own
  a.trunc2 = pr.trunc2;
  a.inv_two_m = 1.0 / (2.0 * static_cast<double>(n_fft));
  a.inv_hop = 1.0 / static_cast<double>(hop);
  a.tab_rows = pr.tab_rows;
  a.tab_e = pr.tab_e;
  a.tab_c = pr.tab_c;
  a.tab_idx = pr.tab_idx;
  a.terms_cap = pr.terms_cap;
  a.rows_cap = pr.rows_cap;
  // Per-block row counts (TT*hop + 2R) use 32-bit arithmetic in the kernel.
  if (a.frames_per_block * hop + 2 * (n_samples - 1 + (a.n_frames - 1) * hop) + 2 * n_fft > INT32_MAX ||
      n_filters * a.frames_per_block > INT32_MAX)
    throw std::invalid_argument("lwvd plan: signal too long or too many filters for 32-bit per-block counts");
  const int64_t blocks = batch * a.tiles_per_item;
  if (blocks > INT32_MAX) throw std::invalid_argument("lwvd plan: too many blocks (B * tiles > 2^31 - 1)");
  const std::size_t smem = config::rows_smem_bytes(a.complex_rows, n_fft, sizeof(scalar_t));
  L.launch(lwvd_smooth_kernel<scalar_t, kMoments, kKeep>, dim3(static_cast<unsigned>(blocks)), dim3(config::kSmoothThreads), smem,
           a);
}

}  // namespace detail

template <class Launcher, typename scalar_t>
void run_forward(Launcher& L, const FwdProblem<scalar_t>& p) {
  check_problem(p.batch, p.n_samples, p.n_filters, p.n_fft, p.hop, p.truncate);
  if (p.batch == 0) return;  // a zero-block grid is not a valid launch; the output is empty
  const auto pr = detail::prepare(L, p.center, p.sigma_t, p.sigma_nu, p.rho, p.n_samples, p.n_filters, p.n_fft,
                                  p.hop, p.truncate, false);
  detail::smooth<Launcher, scalar_t, false>(L, pr, p.z, nullptr, p.out, p.batch, p.n_samples, p.n_filters, p.n_fft,
                                            p.hop);
}

namespace detail {

// The grad_z + parameter-gradient launch (lwvd_grad_z_kernel): `pg` holds the moments (per moments
// block, or per frame with kFrameMoments); with_z = false runs only the F parameter blocks.
template <class Launcher, typename scalar_t, bool kFrameMoments>
void grad_launch(Launcher& L, const Prepared<scalar_t>& pr, const BwdProblem<scalar_t>& p,
                 const ParamGradArgs<scalar_t>& pg, bool with_z) {
  const int64_t frames = num_frames(p.n_samples, p.hop);
  if (p.n_filters > INT32_MAX) throw std::invalid_argument("lwvd plan: too many filters");
  GradZArgs<scalar_t> a{};
  a.z = reinterpret_cast<const cplx<scalar_t>*>(p.z);
  a.grad_out = p.grad_out;
  a.geom = pr.geom;
  a.max_radius = pr.max_radius;
  a.twiddles = pr.twiddles;
  a.grad_z = reinterpret_cast<cplx<scalar_t>*>(p.grad_z);
  a.n_samples = p.n_samples;
  a.n_filters = p.n_filters;
  a.n_frames = frames;
  a.hop = p.hop;
  a.n_fft = p.n_fft;
  a.tile = config::grad_tile(p.n_fft, p.batch, p.n_samples);
  a.tiles_per_item = ceil_div(p.n_samples, a.tile);
  a.log2_fft = ilog2(p.n_fft);
  a.complex_rows = config::grad_complex_rows_per_pass(p.n_fft, sizeof(scalar_t));
  a.trunc2 = pr.trunc2;
  a.inv_two_m = 1.0 / (2.0 * static_cast<double>(p.n_fft));
  a.inv_hop = 1.0 / static_cast<double>(p.hop);
  a.win_hdr = pr.win_hdr;
  a.win_e = pr.win_e;
  a.win_hull = pr.win_hull;
  a.win_cap = pr.win_cap;
  a.list_cap = config::window_list_cap(p.n_fft);
  a.tab_rows = pr.tab_rows;
  a.tab_e = pr.tab_e;
  a.tab_idx = pr.tab_idx;
  a.terms_cap = pr.terms_cap;
  a.rows_cap = pr.rows_cap;
  // the window path's 32-bit rows, frames and lags (lwvd_bwd.cuh grad_z_block), as the smooth launch
  const int64_t d_limit = p.n_samples - 1 + (frames - 1) * p.hop;
  if (with_z && (2 * d_limit + p.hop + 2 * p.n_fft > INT32_MAX || p.n_filters * frames > INT32_MAX))
    throw std::invalid_argument("lwvd plan: signal too long or too many filters for 32-bit grad_z indices");
  const int64_t gz_blocks = with_z ? p.batch * a.tiles_per_item : 0;
  const int64_t blocks = gz_blocks > p.n_filters ? gz_blocks : p.n_filters;
  if (blocks > INT32_MAX) throw std::invalid_argument("lwvd plan: too many blocks (B * tiles > 2^31 - 1)");
  // the rows of a pass, then the per-window filter lists (grad_z_block)
  std::size_t smem = gz_blocks > 0 ? config::rows_smem_bytes(a.complex_rows, p.n_fft, sizeof(scalar_t)) +
                                         config::window_list_bytes(p.n_fft)
                                   : 0;
  const std::size_t red = config::kMoments * config::kReduceThreads * sizeof(scalar_t);  // param_grad_block's tree
  if (smem < red) smem = red;
  L.launch(lwvd_grad_z_kernel<scalar_t, kFrameMoments>, dim3(static_cast<unsigned>(blocks)),
           dim3(config::kGradThreads), smem, a, pg, static_cast<const unsigned*>(pr.invalid),
           static_cast<unsigned>(gz_blocks));
}

}  // namespace detail

template <class Launcher, typename scalar_t>
void run_backward(Launcher& L, const BwdProblem<scalar_t>& p) {
  check_problem(p.batch, p.n_samples, p.n_filters, p.n_fft, p.hop, p.truncate);
  const auto pr = detail::prepare(L, p.center, p.sigma_t, p.sigma_nu, p.rho, p.n_samples, p.n_filters, p.n_fft,
                                  p.hop, p.truncate, true);
  // G-weighted moments per (moments block, filter): 6 * B * ceil(T / TT) * F scalars, TT times fewer
  // than per frame (issue 12 item 7: at F = 1e4, hop = 1, TT = 64 that is 0.09x the output's size).
  scalar_t* moments = nullptr;
  const int64_t parts = p.batch > 0 ? detail::smooth_blocks(p.batch, p.n_samples, p.n_fft, p.hop) : 0;
  if (p.batch > 0) {
    moments = static_cast<scalar_t*>(L.workspace(detail::align16(
        sizeof(scalar_t) * config::kMoments * static_cast<std::size_t>(parts * p.n_filters))));
    detail::smooth<Launcher, scalar_t, true>(L, pr, p.z, p.grad_out, moments, p.batch, p.n_samples, p.n_filters,
                                           p.n_fft, p.hop);
  }
  // With B = 0 the parameter gradients are sums over nothing: the launch still runs (F blocks, no
  // grad_z tile) and writes zeros, reading no moments.
  ParamGradArgs<scalar_t> g{moments, pr.geom, p.grad_center, p.grad_sigma_t, p.grad_sigma_nu, p.grad_rho, parts,
                            p.n_filters, nullptr, nullptr, 0, 0};
  detail::grad_launch<Launcher, scalar_t, false>(L, pr, p, g, true);
}

// The training pair (lwvd_fwd_moments / lwvd_bwd_moments): the forward also writes the six moments of
// every (item, filter, frame), moments (B, F, T, 6) float64 (lwvd_smooth_kernel<.., true, true>: 2
// launches, as the forward); the backward then needs no pass over the W rows: prepare -> grad_z +
// parameter gradients from G * those moments (2 launches; with need_z = false only the F parameter
// blocks run and grad_z is not written).
template <class Launcher, typename scalar_t>
void run_forward_moments(Launcher& L, const FwdProblem<scalar_t>& p, double* moments) {
  check_problem(p.batch, p.n_samples, p.n_filters, p.n_fft, p.hop, p.truncate);
  if (p.batch == 0) return;
  const auto pr = detail::prepare(L, p.center, p.sigma_t, p.sigma_nu, p.rho, p.n_samples, p.n_filters, p.n_fft,
                                  p.hop, p.truncate, false);
  detail::smooth<Launcher, scalar_t, true, true>(L, pr, p.z, nullptr, p.out, p.batch, p.n_samples, p.n_filters,
                                                 p.n_fft, p.hop, moments);
}

template <class Launcher, typename scalar_t>
void run_backward_moments(Launcher& L, const BwdProblem<scalar_t>& p, const double* moments, bool need_z) {
  check_problem(p.batch, p.n_samples, p.n_filters, p.n_fft, p.hop, p.truncate);
  const int64_t frames = num_frames(p.n_samples, p.hop);
  if (p.batch * frames > INT32_MAX || p.n_filters * frames > INT32_MAX)
    throw std::invalid_argument("lwvd plan: B * T or F * T too large for 32-bit pair indices");
  const auto pr = detail::prepare(L, p.center, p.sigma_t, p.sigma_nu, p.rho, p.n_samples, p.n_filters, p.n_fft,
                                  p.hop, p.truncate, need_z);
  ParamGradArgs<scalar_t> g{nullptr, pr.geom, p.grad_center, p.grad_sigma_t, p.grad_sigma_nu, p.grad_rho, 0,
                            p.n_filters, moments, p.grad_out, p.batch, frames};
  detail::grad_launch<Launcher, scalar_t, true>(L, pr, p, g, need_z);
}

}  // namespace lwvd
