// lwvd_prof.cuh — profiling marks in the kernel source: empty under nvcc, counted by the emulator.
//
//   LWVD_PROF_TRIP("site", i, j, ...)        one trip of a loop (or one pass of straight-line code)
//   LWVD_PROF_SMEM("site", ptr, i, j, ...)   a shared-memory access of sizeof(*ptr) bytes at ptr
//   LWVD_PROF_GMEM("site", ptr, i, j, ...)   a global-memory access of sizeof(*ptr) bytes at ptr
//
// The trailing integers (up to four, each in [0, 2^16)) are the lane's trip indices of the loops
// that enclose the mark since the last warp exchange or block barrier: lanes of one warp with equal
// (site, indices) between the same exchanges form one warp instruction (SIMT: a warp issues trip i
// of a loop once, for every lane that runs its own i-th trip). The emulator (tests/cuda_emu/cuda_emu.h,
// LWVD_EMU_PROFILE=1) turns the marks into per-launch counts: warp trips, active lanes, shared-memory
// wavefronts (bank conflicts, from the real addresses) and global-memory sectors (coalescing).
// benchmarks/cost_model.py replays the same counts for any problem size, weights every trip with
// the SASS instructions of the site's loop body, and tests/test_cuda_emulation.py checks the replay
// against the emulator. A site's region (for the SASS weights) is the innermost brace block around
// its LWVD_PROF_TRIP; memory marks only count accesses.
// Under nvcc every mark expands to nothing: the arguments are not evaluated.
#pragma once

#include <cstdint>

#if defined(LWVD_CUDA_EMULATION)
namespace lwvd {
inline uint64_t prof_key(int64_t a = 0, int64_t b = 0, int64_t c = 0, int64_t d = 0) {
  if ((a | b | c | d) < 0 || a >= 65536 || b >= 65536 || c >= 65536 || d >= 65536)
    ::lwvd_emu::fail("profile key (%lld, %lld, %lld, %lld) outside [0, 2^16): emulate a smaller problem",
                     static_cast<long long>(a), static_cast<long long>(b), static_cast<long long>(c),
                     static_cast<long long>(d));
  return (static_cast<uint64_t>(a) << 48) | (static_cast<uint64_t>(b) << 32) | (static_cast<uint64_t>(c) << 16) |
         static_cast<uint64_t>(d);
}
}  // namespace lwvd
#define LWVD_PROF_SITE_(name) ([] { static const int id_ = ::lwvd_emu::site_id(name); return id_; }())
#define LWVD_PROF_TRIP(name, ...) \
  ::lwvd_emu::prof_event(::lwvd_emu::ProfKind::trip, LWVD_PROF_SITE_(name), ::lwvd::prof_key(__VA_ARGS__), nullptr, 0)
#define LWVD_PROF_SMEM(name, ptr, ...)                                                                       \
  ::lwvd_emu::prof_event(::lwvd_emu::ProfKind::smem, LWVD_PROF_SITE_(name), ::lwvd::prof_key(__VA_ARGS__), \
                         (ptr), sizeof(*(ptr)))
#define LWVD_PROF_GMEM(name, ptr, ...)                                                                       \
  ::lwvd_emu::prof_event(::lwvd_emu::ProfKind::gmem, LWVD_PROF_SITE_(name), ::lwvd::prof_key(__VA_ARGS__), \
                         (ptr), sizeof(*(ptr)))
#else
#define LWVD_PROF_TRIP(...) ((void)0)
#define LWVD_PROF_SMEM(...) ((void)0)
#define LWVD_PROF_GMEM(...) ((void)0)
#endif
