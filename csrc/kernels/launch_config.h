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

// The unit block of the wave rule below (kMinBlocksPerSm counts blocks of kThreads = 8 warps) and the
// occupancy tool's default. No kernel launches it any more: the smoothing kernels have kSmoothThreads,
// grad_z kGradThreads, prepare kPrepThreads (each with its reason where it is defined).
constexpr int kThreads = 256;

// Threads per block of the smoothing kernels (forward, moments, the training forward): 16 warps. A
// block builds the lag rows of its TT frames plus a halo of ~n_fft rows; twice the warps per block
// with twice the frames (configuration S: TT = 4, 104 blocks of 512 threads, one per SM, instead of
// TT = 2, 204 blocks of 256, two on the busiest SM) builds 1018 rows per 4 frames instead of 2 x 698:
// lag rows and FFTs 27 % fewer per frame (frames_per_block below; the per-(filter, frame) tests
// became a per-filter frame range per pass, lwvd_fwd.cuh). A multiple of 256 (build_lag_rows' map).
constexpr int kSmoothThreads = 512;
constexpr int kSmoothWarps = kSmoothThreads / 32;
static_assert(kSmoothThreads % 256 == 0, "build_lag_rows' thread map permutes [0, 256)");

// One block prepares the per-filter geometry, the FFT twiddles and the largest time radius. F and
// n_fft/2 are at most a few thousand: one block is enough and lets the max-radius reduction run in
// shared memory without atomics.
constexpr int kPrepThreads = 256;

// Threads per block of the grad_z launch (16 warps). Its tile of J samples needs the A rows within
// n_fft/2 of it, J + n_fft rows: the larger the tile, the less of that halo is rebuilt by two blocks.
// At configuration S (N = 16000, B = 4, n_fft = 512) J = 256 gave 252 blocks of 8 warps (2 per SM,
// rows rebuilt 3x); J = 512 with 16 warps gives 128 blocks, one per SM with as many warps to hide
// latency, and rows rebuilt 2x. (One 8-warp block per SM would be latency-bound: kMinBlocksPerSm.)
constexpr int kGradThreads = 512;

// Threads per block of the parameter-gradient reduction (one filter per block and trip, reducing
// over (batch, frame) in a fixed tree order: deterministic, no float atomics). It runs in the blocks
// of the grad_z launch (lwvd_bwd.cuh), so it has their size: kGradThreads.
constexpr int kReduceThreads = 512;
static_assert(kReduceThreads == kGradThreads, "the parameter gradients run in the grad_z launch's blocks");

// Shared memory for the lag-product / A rows of one pass: 48 KiB, the most that needs no opt-in.
// (+ 1 KiB the driver reserves per block) 4 blocks fit an SM of sm_90 (228 KiB), 3 of sm_80
// (164 KiB), 2 of sm_86/89/120 (100 KiB, as with 40 KiB). The former 40 KiB kept a 4th block on
// sm_80, which grids of ~2 blocks per SM (configuration S: 204 blocks) never use; 48 KiB gives 12
// instead of 10 complex rows per pass at n_fft = 512 in float: fewer passes per pair, whose fixed
// costs (pair setup, bin ranges, warp sums) the smoothing pays per pass (cost model: forward
// 0.95 -> 0.91 ms predicted at S). One complex row holds two real rows (Hermitian packing), so a
// pass covers 2 * complex_rows output rows.
constexpr std::size_t kRowsSmemBudget = 48 * 1024;
// Cap for tiny n_fft: more rows per pass than a tile needs only computes rows nobody reads.
constexpr int kMaxComplexRows = 32;

// Complex rows per pass for this n_fft and element size (bytes of one real scalar). At least 1:
// for n_fft = 8192 a single complex row is 64 KiB (float) / 128 KiB (double), above the default
// 48 KiB, so the launcher opts in to the larger dynamic shared memory (sm_80: 163 KiB, sm_90: 227 KiB).
inline int complex_rows_for_budget(std::size_t budget, int64_t n_fft, std::size_t scalar_bytes) {
  const std::size_t row_bytes = static_cast<std::size_t>(n_fft) * 2 * scalar_bytes;
  std::size_t rows = budget / row_bytes;
  if (rows < 1) rows = 1;
  if (rows > static_cast<std::size_t>(kMaxComplexRows)) rows = kMaxComplexRows;
  return static_cast<int>(rows);
}
inline int complex_rows_per_pass(int64_t n_fft, std::size_t scalar_bytes) {
  return complex_rows_for_budget(kRowsSmemBudget, n_fft, scalar_bytes);
}

// The smoothing kernel (forward, moments, the training forward) has a budget of its own: 96 KiB.
// Its per-(pair, pass) costs (frame ranges, table offsets, the partial chunk, warp sums, output
// read-modify-writes) are paid once per pass of 2 * CR rows, and a pair of configuration S reaches
// ~380 rows: 24 complex rows per pass (n_fft = 512, float) instead of 12 (cost model at S, TT = 4:
// forward smooth 0.304 ms at 48 KiB, 0.271 at 80 KiB, 0.259 at 96 KiB, 0.252 at 128 KiB predicted;
// benchmarks/cost_model.py). 96 KiB is the most that every supported part allows per block (opt-in
// maximum 99 KiB on sm_86 / sm_89 / sm_120); above 48 KiB the launcher opts in (csrc/cuda/lwvd_cuda.cu).
// Resident blocks per SM (+ 1 KiB the driver reserves): 1 everywhere at n_fft = 512 (sm_80 / sm_90 by
// registers of the 512-thread block, sm_86/89/120 by shared memory), i.e. 16 warps per SM, as the
// 2 x 8 warps of the former 256-thread blocks. grad_z stays within complex_rows_per_pass (48 KiB of
// rows: grad_complex_rows_per_pass below).
constexpr std::size_t kSmoothRowsSmemBudget = 96 * 1024;
inline int smooth_complex_rows_per_pass(int64_t n_fft, std::size_t scalar_bytes) {
  return complex_rows_for_budget(kSmoothRowsSmemBudget, n_fft, scalar_bytes);
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
// kMinBlocksPerSm is counted in blocks of kThreads (8 warps): a block of kGradThreads (16 warps)
// alone keeps an SM as busy as two of them.
constexpr int64_t kSms = 132;
constexpr int64_t kMinBlocksPerSm = 2;
inline int64_t busiest_sm_blocks(int64_t blocks, int64_t threads = kThreads) {
  const int64_t b = (blocks + kSms - 1) / kSms;
  const int64_t min_blocks = (kMinBlocksPerSm * kThreads + threads - 1) / threads;
  return b > min_blocks ? b : min_blocks;
}

// Frames per block TT of the forward / moments kernel: a block builds the rows of its frames plus a
// halo of the largest filter radius R on each side, TT*hop + 2R rows; R is only known on the device
// and filters that resolve bins have R up to about n_fft/2, so the rule takes 2R = n_fft. Candidates
// TT = 1 .. min(64, ceil(4 n_fft / hop)); ties go to the smaller TT. Blocks have kSmoothThreads
// (16 warps: one per SM is enough, kMinBlocksPerSm). At configuration S (B=4, T=101, n_fft=512,
// hop=160): TT = 4, 104 blocks, one per SM (cost 1 x 1152 against 2 x 832 for TT = 2, 204 blocks).
constexpr int64_t kMaxFramesPerBlock = 64;
inline int64_t frames_per_block(int64_t n_fft, int64_t hop, int64_t batch, int64_t frames) {
  int64_t top = (4 * n_fft + hop - 1) / hop;
  if (top > kMaxFramesPerBlock) top = kMaxFramesPerBlock;
  if (top < 1) top = 1;
  int64_t best = 1;
  int64_t best_cost = -1;
  for (int64_t tt = 1; tt <= top; ++tt) {
    const int64_t blocks = batch * ((frames + tt - 1) / tt);
    const int64_t cost = busiest_sm_blocks(blocks, kSmoothThreads) * (tt * hop + n_fft);
    if (best_cost < 0 || cost < best_cost) { best = tt; best_cost = cost; }
  }
  return best;
}

// Output samples per block J of the grad_z kernel: the block builds the A rows within h = n_fft/2 of
// its tile, J + n_fft rows. Candidates: powers of two from kGradThreads (every thread owns a sample)
// to max(1024, 4 n_fft); ties go to the smaller J. At configuration S: J = 512, 128 blocks.
constexpr int64_t kMinGradTile = 1024;
inline int64_t grad_tile(int64_t n_fft, int64_t batch, int64_t n_samples) {
  const int64_t top = 4 * n_fft > kMinGradTile ? 4 * n_fft : kMinGradTile;
  int64_t best = kGradThreads;
  int64_t best_cost = -1;
  for (int64_t j = kGradThreads; j <= top; j *= 2) {
    const int64_t blocks = batch * ((n_samples + j - 1) / j);
    const int64_t cost = busiest_sm_blocks(blocks, kGradThreads) * (j + n_fft);
    if (best_cost < 0 || cost < best_cost) { best = j; best_cost = cost; }
  }
  return best;
}

// Per-filter stencil tables (lwvd_fwd.cuh, lwvd_prepare_kernel's table role). The Gaussian weight
// E(f, d, k) = exp(-q_f(d, nu_k - center) / 2) of a term does not depend on the frame, so the prepare
// launch tabulates, per filter, every term (d, k) with q <= trunc2 once per call: E, quad_form's c
// (the moments' coordinate) and the packed index (d + R_f) << kStencilKBits | k, in the order of d, then
// k, with a row-offset table rows[d + R_f] .. rows[d + R_f + 1] per lag d. The smooth, moments and grad_z
// kernels then read the terms instead of evaluating bin_range, quad_form and exp per term.
// The sizes are only known on the device (sigma_t, sigma_nu), so the host fixes a capacity: a total
// budget of kStencilBudget bytes split evenly over the filters (terms_cap per filter, a multiple of 8
// so that every filter's part starts on a 32-byte sector) plus rows_cap + 1 row offsets per filter; a
// filter whose stencil does not fit (more terms or more lags than that, or invalid parameters) gets
// rows[0] = -1 and the kernels evaluate its terms on the fly as before (bitwise the same terms).
// Memory: F * terms_cap * (2 sizeof(scalar) + 4) <= kStencilBudget, + F * (rows_cap + 1) * 4 bytes
// with rows_cap <= terms_cap / 4 (<= kStencilBudget / 12 float, / 20 double): <= 17.4 MiB (float) per call.
// At configuration S (F = 80, float): 17472 terms per filter (the largest stencil has < 5700).
#ifndef LWVD_STENCIL_BUDGET
#define LWVD_STENCIL_BUDGET (16u << 20)
#endif
constexpr std::size_t kStencilBudget = LWVD_STENCIL_BUDGET;
constexpr int kStencilKBits = 13;                        // bins k < 8192 = the largest n_fft
constexpr int64_t kStencilMaxRows = int64_t{1} << 18;    // (d + R) << 13 stays below 2^31
constexpr int kStencilThreads = 256;                     // threads per table block of the prepare launch
constexpr int64_t kStencilMaxBlocks = 4096;              // table blocks: min(F, this), filters strided

static_assert(kStencilBudget / 12 < (std::size_t{1} << 31) - 8192, "table entries are indexed in 32 bits");
inline int64_t stencil_terms_cap(int64_t n_filters, std::size_t scalar_bytes) {
  const std::size_t per_term = 2 * scalar_bytes + 4;
  int64_t cap = static_cast<int64_t>(kStencilBudget / (static_cast<std::size_t>(n_filters) * per_term));
  cap &= ~int64_t{7};
  // F * terms_cap entries are indexed in 32 bits (< 2^31: the budget is far below 2^31 entries)
  return cap > (int64_t{1} << 30) ? (int64_t{1} << 30) : cap;
}

// Lags per filter that the row-offset table holds (a filter needs 2 R_f + 1).
inline int64_t stencil_rows_cap(int64_t terms_cap, int64_t d_limit) {
  int64_t rows = terms_cap / 4;
  if (rows > 2 * d_limit + 1) rows = 2 * d_limit + 1;
  if (rows > kStencilMaxRows - 1) rows = kStencilMaxRows - 1;
  return rows;
}

// Window tables of grad_z (lwvd_bwd.cuh grad_z_block, filled by the prepare launch's table role after
// the filter's stencil table, lwvd_fwd.cuh stencil_table_block). Bins in windows of kWindow = 16
// (w = k / 16); per filter and lag d the windows w_lo .. w_lo + nw - 1 that hold its run of stencil
// terms, stored dense (the stencil table's E for the run's bins, exactly 0 for the other bins of those
// windows: the same values, so grad_z's truncation set stays bitwise the kernels'), 16 scalars per
// window (16-byte aligned: read with 16-byte vector loads); a header {first window, w_lo | nw << 16}
// per lag and the filter's window hull [lo, hi] ({-1, -1}: no window table, e.g. no stencil table,
// invalid parameters or more windows than win_cap). A host-chosen capacity like terms_cap: a total of
// kWindowBudget bytes split evenly over the filters (win_cap windows per filter). grad_z takes the
// window path in a block only when every filter has a window table, else the scatter path of before.
// Memory: F * win_cap * 16 * sizeof(scalar) <= kWindowBudget, + F * rows_cap * 8 (headers) + F * 8
// (hulls): <= 16 MiB + 2.9 MiB (float) per call. At configuration S (F = 80, float): 3276 windows per
// filter (each filter needs 580: 377 lags with terms x 1.54 windows).
#ifndef LWVD_WINDOW_BUDGET
#define LWVD_WINDOW_BUDGET (16u << 20)
#endif
constexpr std::size_t kWindowBudget = LWVD_WINDOW_BUDGET;
constexpr int kWindow = 16;             // bins per window (the registers of one grad_z item)
constexpr int kWindowLog2 = 4;
constexpr std::size_t kWinListBytes = 8192;  // grad_z's per-window filter lists (shared memory)
constexpr int kWinListMax = 32;              // entries per window at most (more: walk all filters)
static_assert(kWindowBudget / 4 < (std::size_t{1} << 31), "window entries are indexed in 32 bits");

inline int64_t window_cap(int64_t n_filters, std::size_t scalar_bytes) {
  return static_cast<int64_t>(kWindowBudget / (static_cast<std::size_t>(n_filters) * kWindow * scalar_bytes));
}
inline int windows_per_row(int64_t n_fft) { return static_cast<int>((n_fft + kWindow - 1) / kWindow); }
// Filters a window's list holds (grad_z_block): kWinListBytes / (4 * windows) - 1, in [1, kWinListMax].
inline int window_list_cap(int64_t n_fft) {
  int64_t cap = static_cast<int64_t>(kWinListBytes) / (4 * windows_per_row(n_fft)) - 1;
  if (cap > kWinListMax) cap = kWinListMax;
  if (cap < 1) cap = 1;
  return static_cast<int>(cap);
}
inline std::size_t window_list_bytes(int64_t n_fft) {
  return static_cast<std::size_t>(windows_per_row(n_fft)) * (1 + window_list_cap(n_fft)) * 4;
}

// Complex rows per pass of grad_z (separate from the row kernels' complex_rows_per_pass): the window
// path gives each thread one (real row of the pass, window) item, 2 CR * n_fft / 16 items per pass, so
// CR is the one in [1, complex_rows_per_pass] whose items fill the kGradThreads threads best (items per
// thread trip), ties to the larger. At configuration S (n_fft 512): float CR = 8 (512 items, one per
// thread; 12 would be 768: two trips, the second half empty), double CR = 6.
inline int grad_complex_rows_per_pass(int64_t n_fft, std::size_t scalar_bytes) {
  const int top = complex_rows_per_pass(n_fft, scalar_bytes);
  const int64_t nwin = windows_per_row(n_fft);
  int best = top;
  int64_t best_items = 0, best_trips = 1;
  for (int c = top; c >= 1; --c) {
    const int64_t items = 2 * c * nwin, trips = (items + kGradThreads - 1) / kGradThreads;
    if (items * best_trips > best_items * trips) { best = c; best_items = items; best_trips = trips; }
  }
  return best;
}

// The six per-(b, f, t) moments S0, Sa, Sc, Saa, Sac, Scc of the backward (lwvd_math.cuh, docs/design.md).
constexpr int kMoments = 6;

}  // namespace config
}  // namespace lwvd
