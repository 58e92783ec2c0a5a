// selftests.h — the emulator's own tests on toy kernels (tests/cuda_emu/toy_kernels.cuh), run as
// `driver --selftest NAME` (one binary per sanitizer keeps the test session's build time down).
//
//   Names: barrier, shuffle, reduce, fft  (answers checked against host computations);
//          reduce_race, fft_oob           (planted bugs: ThreadSanitizer / AddressSanitizer must report);
//          partial_mask, exited_lane, shuffle_sites, barrier_sites, short_warp, deadlock
//          (the emulator must abort with a clear message; pytest checks message and exit status).
// Prints "PASS <name> ..." and returns 0, or explains and returns 1.
#pragma once

#include "cuda_emu.h"
#include "toy_kernels.cuh"

#include <cmath>
#include <complex>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace lwvd_selftest {

inline int check(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s %s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  return ok ? 0 : 1;
}

inline int test_barrier() {
  lwvd_emu::Launcher L;
  const dim3 grid(3, 2, 1), block(7, 5, 3);  // 105 threads: the last warp is short
  const int n = 105, nb = 6, rounds = 20;
  std::vector<int> out(n * nb, -1);
  L.launch(barrier_kernel, grid, block, 0, out.data(), rounds);
  int bad = 0;
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < n; ++t) bad += out[b * n + t] != b;  // zero errors, right block id
  return check(bad == 0, "barrier", "mismatching threads: " + std::to_string(bad) + " of " + std::to_string(n * nb));
}

inline int test_shuffle() {
  lwvd_emu::Launcher L;
  const int nthreads = 64, nblocks = 2;
  std::vector<int> out(nthreads * nblocks * kShflOut, 0);
  std::vector<double> sums(nthreads * nblocks / 32, 0.0);
  L.launch(shuffle_kernel, dim3(nblocks), dim3(16, 2, 2), 0, out.data(), sums.data());
  int bad = 0;
  auto val = [](int t) { return 3 * t + 1; };
  for (int b = 0; b < nblocks; ++b) {
    for (int t = 0; t < nthreads; ++t) {
      const int lane = t % 32, w0 = t - lane;
      const int* o = &out[(b * nthreads + t) * kShflOut];
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) ballot |= ((w0 + l) % 3 == 0 ? 1u : 0u) << l;
      const int seg8 = lane & ~7;
      const int expect[kShflOut] = {
          val(w0 + (lane ^ 5)),
          val(w0 + (lane + 3 < 32 ? lane + 3 : lane)),
          val(w0 + 7),
          val(w0 + (lane & ~15) + 3),
          val(w0 + (lane ^ 4)),  // 4 < 8: stays in the 8-lane segment
          val(w0 + (lane + 2 < seg8 + 8 ? lane + 2 : lane)),
          static_cast<int>(ballot),
          (w0 <= 37 && 37 < w0 + 32) ? 1 : 0,
          1,
      };
      for (int k = 0; k < kShflOut; ++k) {
        if (o[k] != expect[k]) {
          if (bad < 5) std::printf("  block %d thread %d output %d: got %d expected %d\n", b, t, k, o[k], expect[k]);
          ++bad;
        }
      }
    }
  }
  for (int w = 0; w < nthreads * nblocks / 32; ++w) {
    const int t0 = (w * 32) % nthreads;
    double s = 0;
    for (int l = 0; l < 32; ++l) s += 0.5 * val(t0 + l);
    if (sums[w] != s) {
      std::printf("  warp %d sum %g expected %g\n", w, sums[w], s);
      ++bad;
    }
  }
  return check(bad == 0, "shuffle", "mismatches: " + std::to_string(bad));
}

inline int test_reduce(bool plant_race) {
  lwvd_emu::Launcher L;
  const int nthreads = 256, nblocks = 3;
  std::vector<double> x(nthreads * nblocks), out(nblocks, 0.0);
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int> d(-1000, 1000);
  for (auto& v : x) v = d(rng);  // integers: every summation order is exact
  L.launch(block_sum_kernel, dim3(nblocks), dim3(nthreads), 0, x.data(), out.data(), plant_race);
  int bad = 0;
  for (int b = 0; b < nblocks; ++b) {
    double s = 0;
    for (int t = 0; t < nthreads; ++t) s += x[b * nthreads + t];
    if (out[b] != s) {
      std::printf("  block %d: got %g expected %g\n", b, out[b], s);
      ++bad;
    }
  }
  return check(bad == 0, "reduce", "bad blocks: " + std::to_string(bad));
}

inline int test_fft(bool plant_oob) {
  lwvd_emu::Launcher L;
  const int log2n = 6, n = 1 << log2n, nblocks = 3;
  std::vector<double2> x(n * nblocks), y(n * nblocks);
  std::mt19937_64 rng(2);
  std::normal_distribution<double> g;
  for (auto& v : x) v = double2{g(rng), g(rng)};
  L.launch(fft_kernel, dim3(nblocks), dim3(n / 2), n * sizeof(double2), x.data(), y.data(), log2n, plant_oob);
  double err = 0, scale = 0;
  for (int b = 0; b < nblocks; ++b) {
    for (int k = 0; k < n; ++k) {
      std::complex<long double> s = 0;
      for (int j = 0; j < n; ++j)
        s += std::complex<long double>(x[b * n + j].x, x[b * n + j].y) *
             std::polar<long double>(1.0L, -2.0L * 3.14159265358979323846264338327950288L * j * k / n);
      const std::complex<double> e(static_cast<double>(s.real()), static_cast<double>(s.imag()));
      err = std::max(err, std::abs(std::complex<double>(y[b * n + k].x, y[b * n + k].y) - e));
      scale = std::max(scale, std::abs(e));
    }
  }
  // float64 radix-2 FFT of length 64: rounding ~ log2(n) * eps relative; 1e-13 has margin.
  char buf[96];
  std::snprintf(buf, sizeof buf, "relative error %.3e (n=%d, %d blocks)", err / scale, n, nblocks);
  return check(err / scale < 1e-13, "fft", buf);
}

// Prints which block ran last (pytest compares it across LWVD_EMU_BLOCK_ORDER settings).
inline int test_last_block() {
  lwvd_emu::Launcher L;
  int out = -1;
  L.launch(last_block_kernel, dim3(16), dim3(32), 0, &out);
  std::printf("PASS last_block %d\n", out);
  return 0;
}

inline int test_abort(const std::string& name) {
  lwvd_emu::Launcher L;
  std::vector<int> out(64, 0);
  if (name == "partial_mask") L.launch(partial_mask_kernel, dim3(1), dim3(32), 0, out.data());
  else if (name == "exited_lane") L.launch(exited_lane_kernel, dim3(1), dim3(64), 0, out.data());
  else if (name == "shuffle_sites") L.launch(shuffle_sites_kernel, dim3(1), dim3(32), 0, out.data());
  else if (name == "barrier_sites") L.launch(barrier_sites_kernel, dim3(1), dim3(64), 0, out.data());
  else if (name == "short_warp") L.launch(short_warp_kernel, dim3(1), dim3(40), 0, out.data());
  else if (name == "deadlock") L.launch(deadlock_kernel, dim3(1), dim3(64), 0, out.data());
  else {
    std::fprintf(stderr, "unknown test %s\n", name.c_str());
    return 2;
  }
  std::printf("FAIL %s: the launch returned instead of aborting\n", name.c_str());
  return 1;
}

inline int run(const std::string& name) {
  if (name == "barrier") return test_barrier();
  if (name == "shuffle") return test_shuffle();
  if (name == "reduce") return test_reduce(false);
  if (name == "reduce_race") return test_reduce(true);
  if (name == "fft") return test_fft(false);
  if (name == "last_block") return test_last_block();
  if (name == "fft_oob") return test_fft(true);
  return test_abort(name);
}

}  // namespace lwvd_selftest
