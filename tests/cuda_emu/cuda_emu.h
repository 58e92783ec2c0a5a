// cuda_emu.h — runs the project's CUDA kernel source on the CPU, for tests only.
//
// Include this header BEFORE any kernel header (csrc/kernels/*.cuh) and compile with
//   g++ -std=c++20 -pthread [-fsanitize=thread | -fsanitize=address,undefined]
// It defines LWVD_CUDA_EMULATION, the CUDA keywords and built-ins the kernels use, and
// lwvd_emu::Launcher, whose launch(kernel, grid, block, smem_bytes, args...) runs a grid.
//
// Execution model (why it is faithful enough to find real bugs):
//  * One std::thread per CUDA thread of a block, created once per launch. The workers walk the
//    blocks one after another, and every worker finishes a block before any starts the next (an
//    inter-block barrier). Blocks therefore never overlap, so a function-local `static` is exactly
//    one block's __shared__ (`__shared__` is defined as `static`). The block order is forward by
//    default; LWVD_EMU_BLOCK_ORDER=reverse|shuffle[:seed] changes it, so a test can show that the
//    result does not depend on it (blocks of a real grid run in any order, concurrently).
//  * Dynamic shared memory (only through LWVD_DYNAMIC_SMEM) is a heap buffer of exactly the
//    launch's byte count, filled with 0xFF bytes (a NaN in float and double) before every block:
//    AddressSanitizer reports any access past its end, and a read of a never-written element
//    yields NaN in the output instead of a plausible stale value.
//  * __syncthreads(): one atomic word packing (expected, arrived) plus a generation counter with
//    C++20 atomic::wait/notify_all, acquire/release ordered, so ThreadSanitizer sees exactly the
//    happens-before edges the barrier promises and reports any access pair it does not order.
//    A thread that has returned from the kernel stops counting (as on hardware). Threads that meet
//    at one barrier from different __syncthreads() call sites abort the run (undefined behaviour
//    in CUDA: "conditional code only if the condition evaluates identically across the block").
//  * Warp shuffles/votes/__syncwarp: a per-warp exchange buffer between two warp barriers. Abort on
//    a mask other than 0xffffffff (partial masks are not emulated), on a mask that names a lane
//    that has exited or does not exist, and on lanes arriving from different call sites.
//  * A watchdog thread aborts a launch in which some thread waits at a barrier and nothing has
//    progressed for LWVD_EMU_WATCHDOG_S seconds (default 120): a hang becomes a message and a
//    non-zero exit.
// Not covered: inline PTX, tensor cores, cp.async/TMA, partial warp masks, independent thread
// scheduling inside a warp, inter-block communication or grid sync, real timing of anything.
// __shared__ statics are zero-initialised by C++ and keep the previous block's values (CUDA leaves
// them undefined); only dynamic shared memory is poisoned.
#pragma once

#define LWVD_CUDA_EMULATION 1

#include <math.h>  // libstdc++'s <math.h> also brings the float overloads (exp(float)...) to ::

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Keywords and vector types
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
// __restrict__ is a GNU C++ keyword already.

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(8) int2 { int x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }

// Built-in variables: per worker thread (threadIdx, blockIdx) or per launch (blockDim, gridDim,
// written before the workers start, so thread creation orders them).
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Device math that CUDA has and the host library lacks or names differently.
// ---------------------------------------------------------------------------------------------
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
// sincos(double, double*, double*) comes from glibc; CUDA also overloads it for float.
inline void sincos(float x, float* s, float* c) { ::sincosf(x, s, c); }
inline float rsqrt(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float sinpi(float x) { return static_cast<float>(::sin(M_PI * static_cast<double>(x))); }
inline float cospi(float x) { return static_cast<float>(::cos(M_PI * static_cast<double>(x))); }
inline double sinpi(double x) { return ::sin(M_PI * x); }
inline double cospi(double x) { return ::cos(M_PI * x); }
inline void sincospi(float x, float* s, float* c) { *s = sinpi(x); *c = cospi(x); }
inline void sincospi(double x, double* s, double* c) { *s = sinpi(x); *c = cospi(x); }
inline float __expf(float x) { return ::expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T>
inline T __ldg(const T* p) { return *p; }

namespace lwvd_emu {

// ---------------------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------------------
struct Site {
  const char* file;
  int line;
};
inline bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void fail(const char* fmt, ...) {
  // Several threads often detect the same fault at once: the first one reports, the others park.
  static std::atomic<bool> failing{false};
  if (failing.exchange(true)) {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::fprintf(stderr, "\nlwvd_emu: ERROR: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

// ---------------------------------------------------------------------------------------------
// Barrier: (expected, arrived) packed in one atomic word, plus a generation counter.
// ---------------------------------------------------------------------------------------------
class Barrier {
 public:
  void reset(uint32_t expected) {
    state_.store(static_cast<uint64_t>(expected) << 32, std::memory_order_relaxed);
  }
  uint32_t expected() const { return static_cast<uint32_t>(state_.load(std::memory_order_relaxed) >> 32); }
  uint32_t arrived() const { return static_cast<uint32_t>(state_.load(std::memory_order_relaxed)); }
  uint32_t generation() const { return gen_.load(std::memory_order_relaxed); }

  // Arrive and wait for the others. The last arriver runs on_complete() before releasing them
  // (its writes are visible to every waiter: release on gen_, acquire in the wait).
  template <class OnComplete>
  void arrive_and_wait(OnComplete&& on_complete, std::atomic<int>& waiting) {
    // Read the generation BEFORE arriving: it cannot advance without this thread's arrival.
    const uint32_t g = gen_.load(std::memory_order_acquire);
    uint64_t s = state_.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t exp = s >> 32, arr = s & 0xffffffffu;
      if (arr + 1 == exp) {
        if (state_.compare_exchange_weak(s, exp << 32, std::memory_order_acq_rel, std::memory_order_relaxed)) {
          complete(on_complete);
          return;
        }
      } else if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_relaxed)) {
        break;
      }
    }
    waiting.fetch_add(1, std::memory_order_relaxed);
    uint32_t cur;
    while ((cur = gen_.load(std::memory_order_acquire)) == g) gen_.wait(g, std::memory_order_acquire);
    waiting.fetch_sub(1, std::memory_order_relaxed);
  }

  // A participant leaves for good (returned from the kernel): it stops counting. If every other
  // remaining participant is already waiting, this completes the barrier.
  template <class OnComplete>
  void drop(OnComplete&& on_complete) {
    uint64_t s = state_.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t exp = (s >> 32) - 1, arr = s & 0xffffffffu;
      const bool completes = arr > 0 && arr == exp;
      const uint64_t next = completes ? (exp << 32) : ((exp << 32) | arr);
      if (state_.compare_exchange_weak(s, next, std::memory_order_acq_rel, std::memory_order_relaxed)) {
        if (completes) complete(on_complete);
        return;
      }
    }
  }

 private:
  template <class OnComplete>
  void complete(OnComplete& on_complete) {
    on_complete();
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
  }
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> gen_{0};
};

// ---------------------------------------------------------------------------------------------
// Per-launch state
// ---------------------------------------------------------------------------------------------
struct Warp {
  Barrier bar;
  uint32_t lanes = 0;                 // lanes that exist (blockDim not a multiple of 32: last warp short)
  std::atomic<uint32_t> exited{0};    // lanes that have returned from the kernel in this block
  // Exchange buffers, double-buffered by the parity of the lane's exchange count: one warp barrier
  // per exchange suffices, because a lane can only come back to buffer p after the next exchange's
  // barrier, which every lane reaches after it has finished reading buffer p.
  uint64_t value[2][32];
  Site site[2][32];
  uint32_t seq[32];                   // per lane (lane-owned): exchanges done in this block
  uint32_t gone[2];                   // exited lanes when exchange (parity p) completed
};

struct LaunchStats {
  uint64_t launches = 0, blocks = 0, block_barriers = 0, warp_exchanges = 0;
  size_t max_dynamic_smem = 0;
  unsigned max_threads = 0;
  // Profile of one launch (LWVD_EMU_PROFILE=1): per site of a LWVD_PROF_* macro, warp-level counts.
  struct SiteCounts {
    uint64_t warp_trips = 0;   // warp instructions of the site: groups of lanes in one (epoch, key)
    uint64_t lanes = 0;        // active lanes summed over those groups
    uint64_t wavefronts = 0;   // shared memory: max distinct 4-byte words per bank, summed
    uint64_t sectors = 0;      // global memory: distinct 32-byte sectors, summed
  };
  struct Entry {
    dim3 grid, block;
    size_t smem;
    uint64_t block_barriers = 0, warp_exchanges = 0;
    std::vector<std::pair<int, SiteCounts>> sites;  // (site id, counts), by site id
  };
  std::vector<Entry> log;  // every launch, in order
};
inline LaunchStats& stats() {
  static LaunchStats s;
  return s;
}

// One lane's execution of a LWVD_PROF_* site (csrc/kernels/lwvd_prof.cuh).
enum class ProfKind : uint8_t { trip, smem, gmem };
struct ProfEvent {
  uint32_t epoch;
  uint16_t site;
  ProfKind kind;
  uint8_t bytes;
  uint64_t key;
  uint64_t addr;
};

struct Launch {
  dim3 grid, block;
  uint32_t nthreads = 0, nblocks = 0;
  size_t smem_bytes = 0;
  unsigned char* smem = nullptr;
  Barrier block_bar;                    // __syncthreads()
  Barrier grid_bar;                     // between blocks: all workers, never dropped
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<std::atomic<const char*>> wait_file;  // per thread: where it waits (diagnostics)
  std::vector<std::atomic<int>> wait_line;
  std::vector<Site> bar_site;           // per thread: call site of its current __syncthreads
  std::vector<uint8_t> bar_in;          // per thread: 1 while it is at the block barrier
  uint32_t cur_block = 0;               // position in `order`; written by the inter-block completer only
  std::vector<uint32_t> order;          // linear block indices in the order they run
  std::atomic<uint64_t> progress{0};
  std::atomic<int> waiting{0};
  std::atomic<uint64_t> n_block_barriers{0}, n_warp_exchanges{0};
  // Profiling (LWVD_EMU_PROFILE=1): per thread, its epoch (warp exchanges + block barriers passed in
  // this block) and its events; merged per warp by the inter-block completer after every block.
  std::vector<uint32_t> prof_epoch;
  std::vector<std::vector<ProfEvent>> prof_log;
  std::vector<LaunchStats::SiteCounts> prof_sites;  // by site id
};

inline Launch*& current() {
  static Launch* l = nullptr;
  return l;
}
inline thread_local uint32_t t_tid = 0;  // linear thread index in the block

inline void describe_thread(uint32_t tid, char* buf, size_t n) {
  const Launch& L = *current();
  const unsigned x = tid % L.block.x, y = (tid / L.block.x) % L.block.y, z = tid / (L.block.x * L.block.y);
  const unsigned b = L.cur_block < L.nblocks ? L.order[L.cur_block] : 0;
  std::snprintf(buf, n, "block (%u,%u,%u) thread (%u,%u,%u)", b % L.grid.x, (b / L.grid.x) % L.grid.y,
                b / (L.grid.x * L.grid.y), x, y, z);
}

// ---------------------------------------------------------------------------------------------
// __syncthreads
// ---------------------------------------------------------------------------------------------
inline void block_barrier_complete(Launch& L);
inline void syncthreads_at(const char* file, int line) {
  Launch& L = *current();
  const uint32_t tid = t_tid;
  L.bar_site[tid] = Site{file, line};
  L.bar_in[tid] = 1;
  L.wait_file[tid].store(file, std::memory_order_relaxed);
  L.wait_line[tid].store(line, std::memory_order_relaxed);
  L.block_bar.arrive_and_wait([&L] { block_barrier_complete(L); }, L.waiting);
  L.wait_file[tid].store(nullptr, std::memory_order_relaxed);
  ++L.prof_epoch[tid];  // profiling: a block barrier separates warp instructions
}

// Runs once per __syncthreads, in the thread that completes it (last arrival or last exit).
inline void block_barrier_complete(Launch& L) {
  // Runs once per barrier, after every live thread arrived: all arrived from one call site?
  const Site* first = nullptr;
  uint32_t first_tid = 0;
  for (uint32_t t = 0; t < L.nthreads; ++t) {
    if (!L.bar_in[t]) continue;
    if (!first) {
      first = &L.bar_site[t];
      first_tid = t;
    } else if (!same_site(*first, L.bar_site[t])) {
      char a[96], b[96];
      describe_thread(first_tid, a, sizeof a);
      describe_thread(t, b, sizeof b);
      fail("threads of one block met at __syncthreads() from different call sites: %s at %s:%d, "
           "%s at %s:%d (a barrier in non-uniform control flow; undefined behaviour in CUDA)",
           a, first->file, first->line, b, L.bar_site[t].file, L.bar_site[t].line);
    }
  }
  for (uint32_t t = 0; t < L.nthreads; ++t) L.bar_in[t] = 0;
  L.n_block_barriers.fetch_add(1, std::memory_order_relaxed);
  L.progress.fetch_add(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// Warp exchange: shuffles, votes, __syncwarp
// ---------------------------------------------------------------------------------------------

// Publishes `bits` from this lane, waits for the warp, checks that the exchange is well formed, and
// returns read(buffer, lane).
template <class Read>
inline auto warp_exchange(const char* what, const char* file, int line, unsigned mask, uint64_t bits, Read&& read) {
  Launch& L = *current();
  const uint32_t tid = t_tid, lane = tid % 32;
  Warp& w = *L.warps[tid / 32];
  char who[96];
  if (mask != 0xffffffffu) {
    describe_thread(tid, who, sizeof who);
    fail("%s at %s:%d with mask 0x%08x in %s: only the full mask 0xffffffff is emulated "
         "(partial warps are not supported)", what, file, line, mask, who);
  }
  const uint32_t p = w.seq[lane]++ & 1u;
  w.value[p][lane] = bits;
  w.site[p][lane] = Site{file, line};
  L.wait_file[tid].store(file, std::memory_order_relaxed);
  L.wait_line[tid].store(line, std::memory_order_relaxed);
  // Lanes that exited before this exchange completed: recorded by the completing thread, because
  // with one barrier per exchange a fast lane may exit right after it while others still check.
  w.bar.arrive_and_wait(
      [&L, &w, p] {
        w.gone[p] = w.exited.load(std::memory_order_relaxed);
        L.progress.fetch_add(1, std::memory_order_relaxed);
      },
      L.waiting);
  if (w.lanes != 32) {
    describe_thread(tid, who, sizeof who);
    fail("%s at %s:%d in %s: mask 0xffffffff names lanes %u..31, which do not exist "
         "(blockDim %u not a multiple of 32)", what, file, line, who, w.lanes, L.nthreads);
  }
  const uint32_t gone = w.gone[p];
  if (gone) {
    describe_thread(tid, who, sizeof who);
    fail("%s at %s:%d in %s: mask 0xffffffff names lanes that have exited (exited-lane bits 0x%08x)",
         what, file, line, who, gone);
  }
  for (uint32_t l = 0; l < 32; ++l) {
    if (!same_site(w.site[p][l], w.site[p][lane])) {
      describe_thread(tid, who, sizeof who);
      fail("%s: lanes of one warp arrived from different call sites: lane %u at %s:%d, lane %u at %s:%d (%s)",
           what, lane, file, line, l, w.site[p][l].file, w.site[p][l].line, who);
    }
  }
  auto result = read(w.value[p], lane);
  L.wait_file[tid].store(nullptr, std::memory_order_relaxed);
  ++L.prof_epoch[tid];  // profiling: every lane of the warp passes the same exchanges
  if (lane == 0) L.n_warp_exchanges.fetch_add(1, std::memory_order_relaxed);
  return result;
}

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

enum class Shfl { idx, up, down, bfly };
inline int width_arg(int width = 32) { return width; }
inline unsigned mask_arg(unsigned mask = 0xffffffffu) { return mask; }

template <class T>
inline T shfl(Shfl kind, const char* name, const char* file, int line, unsigned mask, T v, int arg, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail("%s at %s:%d: width %d is not a power of two in [1, 32]", name, file, line, width);
  return warp_exchange(name, file, line, mask, to_bits(v), [&](const uint64_t* value, uint32_t lane) {
    const int base = static_cast<int>(lane) & ~(width - 1);
    int src;
    switch (kind) {
      case Shfl::idx: src = base + (arg & (width - 1)); break;
      case Shfl::up: src = static_cast<int>(lane) - arg; if (src < base) src = static_cast<int>(lane); break;
      case Shfl::down: src = static_cast<int>(lane) + arg; if (src >= base + width) src = static_cast<int>(lane); break;
      default: src = static_cast<int>(lane) ^ arg; if (src >= base + width) src = static_cast<int>(lane); break;
    }
    return from_bits<T>(value[src]);
  });
}

inline unsigned ballot(const char* file, int line, unsigned mask, int pred) {
  return warp_exchange("__ballot_sync", file, line, mask, pred ? 1u : 0u, [](const uint64_t* value, uint32_t) {
    unsigned r = 0;
    for (uint32_t l = 0; l < 32; ++l) r |= static_cast<unsigned>(value[l] & 1u) << l;
    return r;
  });
}

inline void syncwarp(const char* file, int line, unsigned mask) {
  warp_exchange("__syncwarp", file, line, mask, 0, [](const uint64_t*, uint32_t) { return 0; });
}

// ---------------------------------------------------------------------------------------------
// Profiling counters (LWVD_EMU_PROFILE=1): what the cost model (benchmarks/cost_model.py) replays.
//
// The kernels mark loop trips and memory accesses with LWVD_PROF_TRIP / LWVD_PROF_SMEM /
// LWVD_PROF_GMEM (csrc/kernels/lwvd_prof.cuh; empty under nvcc). Each lane logs (epoch, site, key):
// the epoch counts the warp exchanges and block barriers the lane has passed in this block (all lanes
// of a warp pass the same ones), and the key is the lane's loop-trip indices of the enclosing loop
// nest. Under SIMT, trip i of a loop issues once for the lanes that run their own i-th trip, so the
// lanes of one warp with equal (epoch, site, key) are one warp instruction. A lane logging one
// (epoch, site, key) twice is a mis-keyed site and aborts the run.
// Per warp instruction: active lanes; for shared memory the wavefronts = max over the 32 banks of the
// distinct 4-byte words the lanes touch (broadcast of one word is free; 8- and 16-byte accesses
// touch 2 and 4 words), addresses relative to the dynamic shared-memory base; for global memory the
// distinct 32-byte sectors (absolute addresses: the driver and workspaces are 256-byte aligned, as
// cudaMalloc is).
// ---------------------------------------------------------------------------------------------
inline bool prof_enabled() {
  static const bool on = [] {
    const char* s = std::getenv("LWVD_EMU_PROFILE");
    return s && *s && std::string(s) != "0";
  }();
  return on;
}

struct SiteRegistry {
  std::mutex mu;
  std::vector<std::string> names;
};
inline SiteRegistry& site_registry() {
  static SiteRegistry r;
  return r;
}
inline int site_id(const char* name) {
  SiteRegistry& r = site_registry();
  std::lock_guard<std::mutex> lk(r.mu);
  for (size_t i = 0; i < r.names.size(); ++i)
    if (r.names[i] == name) return static_cast<int>(i);
  r.names.emplace_back(name);
  return static_cast<int>(r.names.size() - 1);
}
inline std::string site_name(int id) {
  SiteRegistry& r = site_registry();
  std::lock_guard<std::mutex> lk(r.mu);
  return r.names.at(static_cast<size_t>(id));
}

inline void prof_event(ProfKind kind, int site, uint64_t key, const void* ptr, size_t bytes) {
  if (!prof_enabled()) return;
  Launch& L = *current();
  const uint32_t tid = t_tid;
  uint64_t addr = reinterpret_cast<uint64_t>(ptr);
  if (kind == ProfKind::smem && L.smem) {
    const uint64_t base = reinterpret_cast<uint64_t>(L.smem);
    if (addr >= base && addr < base + L.smem_bytes) addr -= base;  // dynamic smem: relative to its base
  }
  L.prof_log[tid].push_back(ProfEvent{L.prof_epoch[tid], static_cast<uint16_t>(site), kind,
                                      static_cast<uint8_t>(bytes), key, addr});
}

// Runs in the inter-block completer (every thread of the block has finished, acquire-ordered).
inline void prof_merge_block(Launch& L) {
  const uint32_t nwarps = (L.nthreads + 31) / 32;
  std::vector<std::pair<ProfEvent, uint32_t>> ev;  // (event, lane)
  for (uint32_t w = 0; w < nwarps; ++w) {
    ev.clear();
    for (uint32_t t = w * 32; t < std::min(L.nthreads, (w + 1) * 32); ++t) {
      for (const ProfEvent& e : L.prof_log[t]) ev.emplace_back(e, t % 32);
      L.prof_log[t].clear();
    }
    std::sort(ev.begin(), ev.end(), [](const auto& a, const auto& b) {
      if (a.first.epoch != b.first.epoch) return a.first.epoch < b.first.epoch;
      if (a.first.site != b.first.site) return a.first.site < b.first.site;
      if (a.first.key != b.first.key) return a.first.key < b.first.key;
      return a.second < b.second;
    });
    for (size_t i = 0; i < ev.size();) {
      size_t j = i;
      while (j < ev.size() && ev[j].first.epoch == ev[i].first.epoch && ev[j].first.site == ev[i].first.site &&
             ev[j].first.key == ev[i].first.key)
        ++j;
      const ProfEvent& e0 = ev[i].first;
      if (L.prof_sites.size() <= e0.site) L.prof_sites.resize(e0.site + 1u);
      LaunchStats::SiteCounts& c = L.prof_sites[e0.site];
      c.warp_trips += 1;
      c.lanes += j - i;
      uint32_t seen = 0;
      for (size_t k = i; k < j; ++k) {
        const uint32_t bit = 1u << ev[k].second;
        if (seen & bit)
          fail("profile site '%s' (key %llu): lane %u logged twice in one warp instruction (mis-keyed site)",
               site_name(e0.site).c_str(), static_cast<unsigned long long>(e0.key), ev[k].second);
        seen |= bit;
      }
      if (e0.kind == ProfKind::smem) {
        std::vector<uint64_t> words;
        for (size_t k = i; k < j; ++k)
          for (uint64_t a = ev[k].first.addr / 4; a <= (ev[k].first.addr + ev[k].first.bytes - 1) / 4; ++a)
            words.push_back(a);
        std::sort(words.begin(), words.end());
        words.erase(std::unique(words.begin(), words.end()), words.end());
        uint32_t per_bank[32] = {0};
        uint32_t most = 0;
        for (uint64_t wd : words) most = std::max(most, ++per_bank[wd % 32]);
        c.wavefronts += most;
      } else if (e0.kind == ProfKind::gmem) {
        std::vector<uint64_t> sec;
        for (size_t k = i; k < j; ++k)
          for (uint64_t a = ev[k].first.addr / 32; a <= (ev[k].first.addr + ev[k].first.bytes - 1) / 32; ++a)
            sec.push_back(a);
        std::sort(sec.begin(), sec.end());
        c.sectors += static_cast<uint64_t>(std::unique(sec.begin(), sec.end()) - sec.begin());
      }
      i = j;
    }
  }
  for (uint32_t t = 0; t < L.nthreads; ++t) L.prof_epoch[t] = 0;
}

// ---------------------------------------------------------------------------------------------
// Atomics (std::atomic_ref: ThreadSanitizer sees them as atomics)
// ---------------------------------------------------------------------------------------------
template <class T>
inline T atomic_add(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <class T>
inline T atomic_or(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_or(v, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// Dynamic shared memory
// ---------------------------------------------------------------------------------------------
inline unsigned char* dynamic_smem() { return current()->smem; }

// ---------------------------------------------------------------------------------------------
// Grid execution
// ---------------------------------------------------------------------------------------------
// LWVD_EMU_BLOCK_ORDER = forward (default) | reverse | shuffle[:seed]. Blocks of a real grid run
// in any order and concurrently; a kernel whose result depends on the order (two blocks writing
// one output, a block reading another's output) gives different bits under another order.
inline std::vector<uint32_t> block_order(uint32_t nblocks) {
  std::vector<uint32_t> order(nblocks);
  for (uint32_t i = 0; i < nblocks; ++i) order[i] = i;
  const char* s = std::getenv("LWVD_EMU_BLOCK_ORDER");
  const std::string mode = s ? s : "forward";
  if (mode == "reverse") {
    std::reverse(order.begin(), order.end());
  } else if (mode.rfind("shuffle", 0) == 0) {
    uint64_t state = mode.size() > 8 ? std::strtoull(mode.c_str() + 8, nullptr, 10) : 1;
    for (uint32_t i = nblocks; i > 1; --i) {  // Fisher-Yates with splitmix64: same order everywhere
      state += 0x9e3779b97f4a7c15ull;
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      std::swap(order[i - 1], order[z % i]);
    }
  } else if (mode != "forward") {
    fail("LWVD_EMU_BLOCK_ORDER=%s: expected forward, reverse or shuffle[:seed]", mode.c_str());
  }
  return order;
}

inline double watchdog_seconds() {
  const char* s = std::getenv("LWVD_EMU_WATCHDOG_S");
  const double v = s ? std::atof(s) : 120.0;
  return v > 0 ? v : 120.0;
}

// Limits of the targets (sm_80 / sm_90): a launch outside them would fail on the device.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicSmem = 163 * 1024;  // sm_80 opt-in maximum (sm_90: 227 KiB)

inline void prepare_block(Launch& L) {
  L.block_bar.reset(L.nthreads);
  for (auto& w : L.warps) {
    w->bar.reset(w->lanes);
    w->exited.store(0, std::memory_order_relaxed);
    std::fill(std::begin(w->seq), std::end(w->seq), 0u);
  }
  if (L.smem_bytes) std::memset(L.smem, 0xFF, L.smem_bytes);
}

inline void run_grid(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64)
    fail("launch with block (%u,%u,%u): needs 1..%u threads, blockDim.z <= 64", block.x, block.y, block.z,
         kMaxThreadsPerBlock);
  if (grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu)
    fail("launch with grid (%u,%u,%u): exceeds the grid limits (2^31-1, 65535, 65535)", grid.x, grid.y, grid.z);
  if (smem_bytes > kMaxDynamicSmem)
    fail("launch asks for %zu bytes of dynamic shared memory, more than the %zu an sm_80 block can have",
         smem_bytes, kMaxDynamicSmem);
  if (current()) fail("nested launch");
  LaunchStats& st = stats();
  st.launches++;
  st.blocks += nblocks;
  st.max_dynamic_smem = std::max(st.max_dynamic_smem, smem_bytes);
  st.max_threads = std::max(st.max_threads, static_cast<unsigned>(nthreads));
  st.log.push_back(LaunchStats::Entry{grid, block, smem_bytes, 0, 0, {}});
  if (nblocks == 0) return;  // CUDA rejects an empty grid; the plans never launch one

  auto L = std::make_unique<Launch>();
  L->grid = grid;
  L->block = block;
  L->nthreads = static_cast<uint32_t>(nthreads);
  L->nblocks = static_cast<uint32_t>(nblocks);
  L->smem_bytes = smem_bytes;
  L->order = block_order(L->nblocks);
  // Exactly smem_bytes: one byte more and AddressSanitizer would miss an off-by-one.
  std::unique_ptr<unsigned char[]> smem(new unsigned char[smem_bytes ? smem_bytes : 1]);
  L->smem = smem_bytes ? smem.get() : nullptr;
  for (uint32_t w = 0; w * 32 < L->nthreads; ++w) {
    L->warps.push_back(std::make_unique<Warp>());
    L->warps.back()->lanes = std::min<uint32_t>(32, L->nthreads - w * 32);
  }
  L->wait_file = std::vector<std::atomic<const char*>>(L->nthreads);
  L->wait_line = std::vector<std::atomic<int>>(L->nthreads);
  L->bar_site.assign(L->nthreads, Site{"", 0});
  L->bar_in.assign(L->nthreads, 0);
  L->grid_bar.reset(L->nthreads);
  L->prof_epoch.assign(L->nthreads, 0);
  L->prof_log.resize(L->nthreads);
  prepare_block(*L);
  blockDim = block;
  gridDim = grid;
  current() = L.get();

  Launch* lp = L.get();
  auto worker = [lp, &body](uint32_t tid) {
    Launch& l = *lp;
    t_tid = tid;
    threadIdx = uint3{tid % l.block.x, (tid / l.block.x) % l.block.y, tid / (l.block.x * l.block.y)};
    for (;;) {
      if (l.cur_block >= l.nblocks) break;  // cur_block: ordered by the grid barrier (or thread creation)
      const uint32_t b = l.order[l.cur_block];
      blockIdx = uint3{b % l.grid.x, (b / l.grid.x) % l.grid.y, b / (l.grid.x * l.grid.y)};
      body();
      // This thread has returned from the kernel: it stops counting at block and warp barriers.
      Warp& w = *l.warps[tid / 32];
      w.exited.fetch_or(1u << (tid % 32), std::memory_order_relaxed);
      w.bar.drop([&l, &w] {
        // This exit completes an exchange the other lanes wait in: they must see it as exited. Both
        // parities: nobody still reads the other one (every waiting lane finished the previous exchange).
        w.gone[0] = w.gone[1] = w.exited.load(std::memory_order_relaxed);
        l.progress.fetch_add(1, std::memory_order_relaxed);
      });
      l.block_bar.drop([&l] { block_barrier_complete(l); });
      l.progress.fetch_add(1, std::memory_order_relaxed);
      // Every thread of block b is done before block b+1 starts.
      l.grid_bar.arrive_and_wait(
          [&l] {
            if (prof_enabled()) prof_merge_block(l);
            l.cur_block++;
            if (l.cur_block < l.nblocks) prepare_block(l);
            l.progress.fetch_add(1, std::memory_order_relaxed);
          },
          l.waiting);
    }
  };

  // Watchdog: some thread waits at a barrier and nothing moved for the timeout -> abort.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  const double limit = watchdog_seconds();
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lk(mu);
    uint64_t last = lp->progress.load(std::memory_order_relaxed);
    auto since = std::chrono::steady_clock::now();
    while (!done) {
      cv.wait_for(lk, std::chrono::milliseconds(200));
      if (done) break;
      const uint64_t p = lp->progress.load(std::memory_order_relaxed);
      const auto now = std::chrono::steady_clock::now();
      if (p != last || lp->waiting.load(std::memory_order_relaxed) == 0) {
        last = p;
        since = now;
        continue;
      }
      if (std::chrono::duration<double>(now - since).count() > limit) {
        std::fprintf(stderr, "\nlwvd_emu: WATCHDOG: no progress for %.1f s while threads wait at a barrier "
                     "(grid (%u,%u,%u), block (%u,%u,%u)); __syncthreads has %u of %u threads arrived. "
                     "Threads waiting:\n", limit, lp->grid.x, lp->grid.y, lp->grid.z, lp->block.x, lp->block.y,
                     lp->block.z, lp->block_bar.arrived(), lp->block_bar.expected());
        int shown = 0;
        for (uint32_t t = 0; t < lp->nthreads && shown < 8; ++t) {
          const char* f = lp->wait_file[t].load(std::memory_order_relaxed);
          if (!f) continue;
          std::fprintf(stderr, "  thread %u at %s:%d\n", t, f, lp->wait_line[t].load(std::memory_order_relaxed));
          ++shown;
        }
        fail("watchdog: a barrier never completed (some threads skip it while others wait)");
      }
    }
  });

  std::vector<std::thread> threads;
  threads.reserve(L->nthreads);
  for (uint32_t t = 0; t < L->nthreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  {
    std::lock_guard<std::mutex> lk(mu);
    done = true;
  }
  cv.notify_all();
  watchdog.join();
  st.block_barriers += L->n_block_barriers.load();
  st.warp_exchanges += L->n_warp_exchanges.load();
  st.log.back().block_barriers = L->n_block_barriers.load();
  st.log.back().warp_exchanges = L->n_warp_exchanges.load();
  for (size_t i = 0; i < L->prof_sites.size(); ++i)
    if (L->prof_sites[i].warp_trips) st.log.back().sites.emplace_back(static_cast<int>(i), L->prof_sites[i]);
  current() = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Launcher: what csrc/kernels/lwvd_plan.cuh drives (launch + workspace).
// ---------------------------------------------------------------------------------------------
class Launcher {
 public:
  // Arguments convert to the kernel's parameter types, as in a <<<>>> launch.
  template <class... P, class... A>
  void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    run_grid(grid, block, smem_bytes, [&] { std::apply(kernel, params); });
  }

  // Zero-filled, exactly `bytes` long (so AddressSanitizer catches overruns), alive as long as
  // the Launcher.
  // Exactly `bytes` long (AddressSanitizer catches overruns), 256-byte aligned as cudaMalloc (the
  // profile's sector counts depend on alignment), and filled with 0xFF bytes (NaN, -1), like the
  // uninitialised buffer the CUDA launcher hands out: a kernel reading what nobody wrote shows up.
  void* workspace(size_t bytes) {
    const size_t n = bytes ? bytes : 1;
    workspace_bytes_ += bytes;
    void* p = ::operator new(n, std::align_val_t{256});
    std::memset(p, 0xFF, n);
    buffers_.emplace_back(p);
    return p;
  }

  // The persistent error word of lwvd_plan.cuh (the prepare kernel ORs invalid-parameter bits in).
  unsigned* error_flags() { return &error_flags_; }

  // Bytes of every workspace the plan asked this launcher for (the device memory a call needs
  // beyond its inputs and outputs).
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  struct AlignedDelete {
    void operator()(void* p) const { ::operator delete(p, std::align_val_t{256}); }
  };
  std::vector<std::unique_ptr<void, AlignedDelete>> buffers_;
  unsigned error_flags_ = 0;
  size_t workspace_bytes_ = 0;
};

}  // namespace lwvd_emu

#define __syncthreads() ::lwvd_emu::syncthreads_at(__FILE__, __LINE__)
#define __syncwarp(...) ::lwvd_emu::syncwarp(__FILE__, __LINE__, ::lwvd_emu::mask_arg(__VA_ARGS__))
#define __shfl_sync(mask, v, lane, ...) \
  ::lwvd_emu::shfl(::lwvd_emu::Shfl::idx, "__shfl_sync", __FILE__, __LINE__, mask, v, lane, ::lwvd_emu::width_arg(__VA_ARGS__))
#define __shfl_up_sync(mask, v, d, ...) \
  ::lwvd_emu::shfl(::lwvd_emu::Shfl::up, "__shfl_up_sync", __FILE__, __LINE__, mask, v, d, ::lwvd_emu::width_arg(__VA_ARGS__))
#define __shfl_down_sync(mask, v, d, ...) \
  ::lwvd_emu::shfl(::lwvd_emu::Shfl::down, "__shfl_down_sync", __FILE__, __LINE__, mask, v, d, ::lwvd_emu::width_arg(__VA_ARGS__))
#define __shfl_xor_sync(mask, v, m, ...) \
  ::lwvd_emu::shfl(::lwvd_emu::Shfl::bfly, "__shfl_xor_sync", __FILE__, __LINE__, mask, v, m, ::lwvd_emu::width_arg(__VA_ARGS__))
#define __ballot_sync(mask, pred) ::lwvd_emu::ballot(__FILE__, __LINE__, mask, (pred))
#define __any_sync(mask, pred) (::lwvd_emu::ballot(__FILE__, __LINE__, mask, (pred)) != 0u)
#define __all_sync(mask, pred) (::lwvd_emu::ballot(__FILE__, __LINE__, mask, (pred)) == 0xffffffffu)
#define atomicAdd(p, v) ::lwvd_emu::atomic_add((p), (v))
#define atomicOr(p, v) ::lwvd_emu::atomic_or((p), (v))
#define __threadfence() std::atomic_thread_fence(std::memory_order_seq_cst)
#define __threadfence_block() std::atomic_thread_fence(std::memory_order_seq_cst)

// `T* name` -> this block's dynamic shared memory (exact size, 0xFF-filled before every block).
#define LWVD_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::lwvd_emu::dynamic_smem())
