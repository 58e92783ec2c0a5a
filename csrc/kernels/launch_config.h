// launch_config.h — every tile, block and shared-memory choice of the CUDA kernels, in one place.
//
// Torch-free and shared by the CUDA launcher (csrc/cuda/lwvd_cuda.cu) and the CPU emulator of the
// test harness: both run the same plan (lwvd_plan.cuh), so the emulator exercises exactly the
// launch geometry the GPU gets. Sizes are int64_t; n_fft is a power of two in [4, 8192]
// (lwvd_cuda.functional.CUDA_N_FFT_SIZES routes every other n_fft to the reference).
#pragma once

#include <cstddef>
#include <cstdint>

namespace lwvd {
namespace config {

// Threads per block of the row kernels (forward, moments, grad_z): 8 warps. Enough warps to hide
// shared-memory latency in the FFT stages, and small enough that 4 blocks (4 x 48 KiB of rows) fit
// one SM of sm_80/sm_90 at the default budget below. Must be a multiple of 32 (full-warp shuffles).
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// One block prepares the per-filter geometry, the FFT twiddles and the largest time radius. F and
// n_fft/2 are at most a few thousand: one block is enough and lets the max-radius reduction run in
// shared memory without atomics.
constexpr int kPrepThreads = 256;

// Threads per block of the parameter-gradient reduction (one block per filter, reducing over
// (batch, frame) in a fixed tree order: deterministic, no float atomics).
constexpr int kReduceThreads = 256;

// Shared memory for the lag-product / A rows of one pass. 40 KiB (+ 1 KiB the driver reserves per
// block) lets 4 blocks share an SM on sm_80 (164 KiB per SM; 48 KiB would allow only 3) and sm_90
// (228 KiB), and stays under the 48 KiB that needs no opt-in. One complex
// row holds two real rows (Hermitian packing), so a pass covers 2 * complex_rows output rows.
constexpr std::size_t kRowsSmemBudget = 40 * 1024;
// Cap for tiny n_fft: more rows per pass than a tile needs only computes rows nobody reads.
constexpr int kMaxComplexRows = 32;

// Complex rows per pass for this n_fft and element size (bytes of one real scalar). At least 1:
// for n_fft = 8192 a single complex row is 64 KiB (float) / 128 KiB (double), above the default
// 48 KiB, so the launcher opts in to the larger dynamic shared memory (sm_80: 163 KiB, sm_90: 227 KiB).
inline int complex_rows_per_pass(int64_t n_fft, std::size_t scalar_bytes) {
  const std::size_t row_bytes = static_cast<std::size_t>(n_fft) * 2 * scalar_bytes;
  std::size_t rows = kRowsSmemBudget / row_bytes;
  if (rows < 1) rows = 1;
  if (rows > static_cast<std::size_t>(kMaxComplexRows)) rows = kMaxComplexRows;
  return static_cast<int>(rows);
}

inline std::size_t rows_smem_bytes(int complex_rows, int64_t n_fft, std::size_t scalar_bytes) {
  return static_cast<std::size_t>(complex_rows) * static_cast<std::size_t>(n_fft) * 2 * scalar_bytes;
}

// Frames per block of the forward / moments kernel. A block recomputes the WVD rows of its frames
// plus a halo of the largest filter radius R on each side, so the FFT work is multiplied by
// (frames*hop + 2R) / (frames*hop). Filters that resolve bins have R up to about n_fft/2, so we aim at
// frames*hop ~ 2*n_fft (recompute <= 1.5x at R = n_fft/2), capped so that a block's (filter, frame)
// pair list stays short and the grid keeps several blocks per batch item.
constexpr int64_t kMaxFramesPerBlock = 64;
inline int64_t frames_per_block(int64_t n_fft, int64_t hop) {
  int64_t tt = (2 * n_fft + hop - 1) / hop;
  if (tt < 1) tt = 1;
  if (tt > kMaxFramesPerBlock) tt = kMaxFramesPerBlock;
  return tt;
}

// Output samples per block of the grad_z kernel. The block recomputes the A rows within h = n_fft/2
// of its tile, so the FFT work is multiplied by (J + n_fft) / J: J = 2*n_fft bounds that by 1.5x; the
// floor of 1024 keeps blocks busy for small n_fft.
constexpr int64_t kMinGradTile = 1024;
inline int64_t grad_tile(int64_t n_fft) { return 2 * n_fft > kMinGradTile ? 2 * n_fft : kMinGradTile; }

// The six per-(b, f, t) moments S0, Sd, Sv, Sdd, Sdv, Svv of the backward (docs/design.md).
constexpr int kMoments = 6;

}  // namespace config
}  // namespace lwvd
