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

// Tile sizes are chosen against whole waves. A grid of `blocks` blocks puts ceil(blocks / kSms)
// of them on the busiest SM (the blocks resident on one SM share its issue slots), so a kernel takes
// about  max(ceil(blocks / kSms), kMinBlocksPerSm) x (work of one block),  and a block's work grows with the rows it builds
// (its tile plus a halo of about n_fft). The rules below minimise exactly that product over the
// candidate tiles. kSms = 132: one wave on an H100 / H200 SXM (an A100 has 108; the launch plan is
// the same on every device so that the emulator checks the GPU's geometry). benchmarks/kernel_counts.py
// mirrors these rules. (The previous rule, recompute / min(1, blocks / 132), took 3 frames per block
// at configuration S: 136 blocks, so 4 SMs ran two blocks and the kernel took twice one block's time.)
// An SM also wants at least kMinBlocksPerSm resident blocks: one 8-warp block leaves each of its 4
// schedulers 2 warps, too few to hide dependent-issue (~4 cycles) and shared-memory (~30 cycles)
// latency, so one block per SM costs about as much as two. Hence cost = max(busiest, 2) x work.
constexpr int64_t kSms = 132;
constexpr int64_t kMinBlocksPerSm = 2;
inline int64_t busiest_sm_blocks(int64_t blocks) {
  const int64_t b = (blocks + kSms - 1) / kSms;
  return b > kMinBlocksPerSm ? b : kMinBlocksPerSm;
}

// Frames per block TT of the forward / moments kernel: a block builds the rows of its frames plus a
// halo of the largest filter radius R on each side, TT*hop + 2R rows; R is only known on the device
// and filters that resolve bins have R up to about n_fft/2, so the rule takes 2R = n_fft. Candidates
// TT = 1 .. min(64, ceil(4 n_fft / hop)); ties go to the smaller TT. At configuration S (B=4, T=101,
// n_fft=512, hop=160): TT = 2, 204 blocks (at most 2 per SM).
constexpr int64_t kMaxFramesPerBlock = 64;
inline int64_t frames_per_block(int64_t n_fft, int64_t hop, int64_t batch, int64_t frames) {
  int64_t top = (4 * n_fft + hop - 1) / hop;
  if (top > kMaxFramesPerBlock) top = kMaxFramesPerBlock;
  if (top < 1) top = 1;
  int64_t best = 1;
  int64_t best_cost = -1;
  for (int64_t tt = 1; tt <= top; ++tt) {
    const int64_t blocks = batch * ((frames + tt - 1) / tt);
    const int64_t cost = busiest_sm_blocks(blocks) * (tt * hop + n_fft);
    if (best_cost < 0 || cost < best_cost) { best = tt; best_cost = cost; }
  }
  return best;
}

// Output samples per block J of the grad_z kernel: the block builds the A rows within h = n_fft/2 of
// its tile, J + n_fft rows. Candidates: powers of two from kThreads (every thread owns a sample) to
// max(1024, 4 n_fft); ties go to the smaller J. At configuration S: J = 256, 252 blocks.
constexpr int64_t kMinGradTile = 1024;
inline int64_t grad_tile(int64_t n_fft, int64_t batch, int64_t n_samples) {
  const int64_t top = 4 * n_fft > kMinGradTile ? 4 * n_fft : kMinGradTile;
  int64_t best = kThreads;
  int64_t best_cost = -1;
  for (int64_t j = kThreads; j <= top; j *= 2) {
    const int64_t blocks = batch * ((n_samples + j - 1) / j);
    const int64_t cost = busiest_sm_blocks(blocks) * (j + n_fft);
    if (best_cost < 0 || cost < best_cost) { best = j; best_cost = cost; }
  }
  return best;
}

// The six per-(b, f, t) moments S0, Sa, Sc, Saa, Sac, Scc of the backward (lwvd_math.cuh, docs/design.md).
constexpr int kMoments = 6;

}  // namespace config
}  // namespace lwvd
