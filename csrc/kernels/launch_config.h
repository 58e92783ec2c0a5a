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

// Grids smaller than one wave leave SMs idle; tiles smaller than the halo recompute more rows. The
// tile choices below minimise  recompute(tile) / fill(blocks)  with fill = min(1, blocks / kMinBlocks):
// the FFT work of the whole grid, stretched by the idle SMs. One wave on the largest target: an H100
// SXM has 132 SMs (an A100 108). benchmarks/cost_model.py mirrors these rules.
constexpr int64_t kMinBlocks = 132;
inline double grid_fill(int64_t blocks) {
  return blocks >= kMinBlocks ? 1.0 : static_cast<double>(blocks) / static_cast<double>(kMinBlocks);
}

// Frames per block TT of the forward / moments kernel. A block recomputes the WVD rows of its frames
// plus a halo of the largest filter radius R on each side: recompute = (TT*hop + 2R) / (TT*hop). R is
// only known on the device; filters that resolve bins have R up to about n_fft/2, so the rule assumes
// R = n_fft/2. Start from TT*hop ~ 2*n_fft (recompute <= 1.5x), cap the pair list per block at 64
// frames, and go down while recompute/fill improves. At configuration S (B=4, T=101, n_fft=512,
// hop=160): TT = 3, 136 blocks, instead of 7 and 60 blocks on 132 SMs.
constexpr int64_t kMaxFramesPerBlock = 64;
inline int64_t frames_per_block(int64_t n_fft, int64_t hop, int64_t batch, int64_t frames) {
  int64_t start = (2 * n_fft + hop - 1) / hop;
  if (start > kMaxFramesPerBlock) start = kMaxFramesPerBlock;
  if (start < 1) start = 1;
  int64_t best = start;
  double best_cost = 0.0;
  for (int64_t tt = start; tt >= 1; --tt) {
    const double rows = static_cast<double>(tt * hop);
    const int64_t blocks = batch * ((frames + tt - 1) / tt);
    const double cost = (rows + static_cast<double>(n_fft)) / rows / grid_fill(blocks);
    if (tt == start || cost < best_cost) { best = tt; best_cost = cost; }
  }
  return best;
}

// Output samples per block J of the grad_z kernel. The block recomputes the A rows within
// h = n_fft/2 of its tile: recompute = (J + n_fft) / J. Start from J = max(1024, 2*n_fft) (<= 1.5x),
// and halve (never below kThreads, so every thread owns a sample) while recompute/fill improves.
// At configuration S: J = 512, 128 blocks (1024 would give 64 blocks; 256, 3x recompute).
constexpr int64_t kMinGradTile = 1024;
inline int64_t grad_tile(int64_t n_fft, int64_t batch, int64_t n_samples) {
  int64_t j = 2 * n_fft > kMinGradTile ? 2 * n_fft : kMinGradTile;
  int64_t best = j;
  double best_cost = 0.0;
  for (bool first = true; j >= kThreads; j /= 2, first = false) {
    const int64_t blocks = batch * ((n_samples + j - 1) / j);
    const double cost = static_cast<double>(j + n_fft) / static_cast<double>(j) / grid_fill(blocks);
    if (first || cost < best_cost) { best = j; best_cost = cost; }
  }
  return best;
}

// The six per-(b, f, t) moments S0, Sd, Sv, Sdd, Sdv, Svv of the backward (docs/design.md).
constexpr int kMoments = 6;

}  // namespace config
}  // namespace lwvd
