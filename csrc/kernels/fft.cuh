// fft.cuh — radix-2 FFT of several rows at once, in shared memory, by a whole block.
//
// x: `rows` contiguous rows of n = 2^log2n cplx<scalar_t>, each stored in BIT-REVERSED order (the
// producers write element j at index bit_reverse(j, log2n), which costs nothing there); on return
// each row holds its DFT X[k] = sum_j x[j] exp(-2 i pi j k / n) in natural order.
// tw: n/2 twiddles tw[j] = exp(-2 i pi j / n) (global memory, written once per call by the prepare
// kernel; read through L1: a shared copy would cost n*sizeof(scalar) more shared memory, which at
// n = 8192 in double does not fit beside the rows on sm_80).
// Iterative decimation in time: log2n stages of n/2 butterflies per row; stage s pairs elements
// half = 2^(s-1) apart and uses tw[j * n / 2^s]. Two stages at a time (radix-4 steps: one shared-
// memory round trip and one barrier per two stages), after one radix-2 stage when log2n is odd. Every thread of the block must call it (it contains
// __syncthreads); the caller must __syncthreads() between writing x and calling it.
#pragma once

#include "cuda_compat.cuh"

namespace lwvd {

// kBlockThreads must equal blockDim.x: a compile-time stride lets the compiler count loop trips
// without dividing by blockDim (that quotient, live across the kernel, is what ptxas spilled).
template <int kBlockThreads, typename scalar_t>
__device__ __forceinline__ void block_fft_rows(cplx<scalar_t>* x, int rows, int log2n,
                                               const cplx<scalar_t>* __restrict__ tw) {
  const int half_n = 1 << (log2n - 1);
  // Odd log2n: one radix-2 stage first (s = 1, twiddle 1), then radix-4 steps of two stages each.
  int s = 1;
  if (log2n & 1) {
    LWVD_PROF_TRIP("fft.stage");
    const int total = rows * half_n;  // butterflies of the stage
    LWVD_NO_UNROLL
    for (int i = static_cast<int>(threadIdx.x); i < total; i += kBlockThreads) {
      [[maybe_unused]] const int trip = (i - static_cast<int>(threadIdx.x)) / kBlockThreads;  // profile key
      LWVD_PROF_TRIP("fft.bfly", trip);
      const int base = 2 * i;  // stage 1 pairs neighbours; its twiddle is tw[0] = 1
      LWVD_PROF_SMEM("fft.lda", &x[base], trip);
      LWVD_PROF_SMEM("fft.ldb", &x[base + 1], trip);
      LWVD_PROF_SMEM("fft.sta", &x[base], trip);
      LWVD_PROF_SMEM("fft.stb", &x[base + 1], trip);
      const cplx<scalar_t> a = x[base];
      const cplx<scalar_t> b = x[base + 1];
      x[base] = cplx<scalar_t>{a.re + b.re, a.im + b.im};
      x[base + 1] = cplx<scalar_t>{a.re - b.re, a.im - b.im};
    }
    __syncthreads();
    s = 2;
  }
  // Radix-4 step = radix-2 stages s and s + 1 on the 4 elements j, j + h, j + 2h, j + 3h of a block of
  // 4h (h = 2^(s-1), j < h): stage s pairs (j, j+h) and (j+2h, j+3h) with twiddle w1 = tw[j n / 2^s],
  // stage s + 1 pairs (j, j+2h) with w2 = tw[j n / 2^(s+1)] and (j+h, j+3h) with w3 = tw[(j+h) n / 2^(s+1)].
  // The same operations as two radix-2 stages, half the barriers, shared-memory round trips and index
  // arithmetic per butterfly.
  const int quarter_n = half_n >> 1;
  const int total4 = rows * quarter_n;  // radix-4 butterflies of a step
  LWVD_NO_UNROLL
  for (; s < log2n; s += 2) {
    LWVD_PROF_TRIP("fft.stage4");
    const int lh = s - 1;  // log2 h
    const int h = 1 << lh;
    const int shift2 = log2n - s - 1;  // twiddle stride of stage s + 1; stage s uses twice that
    LWVD_NO_UNROLL
    for (int i = static_cast<int>(threadIdx.x); i < total4; i += kBlockThreads) {
      [[maybe_unused]] const int trip = (i - static_cast<int>(threadIdx.x)) / kBlockThreads;  // profile key
      LWVD_PROF_TRIP("fft.bfly4", trip);
      const int row = i >> (log2n - 2);
      const int q = i & (quarter_n - 1);
      const int j = q & (h - 1);
      const int base = (row << log2n) + ((q >> lh) << (lh + 2)) + j;
      LWVD_PROF_GMEM("fft.tw1", &tw[j << (shift2 + 1)], trip);
      LWVD_PROF_GMEM("fft.tw2", &tw[j << shift2], trip);
      LWVD_PROF_GMEM("fft.tw3", &tw[(j + h) << shift2], trip);
      LWVD_PROF_SMEM("fft.ld0", &x[base], trip);
      LWVD_PROF_SMEM("fft.ld1", &x[base + h], trip);
      LWVD_PROF_SMEM("fft.ld2", &x[base + 2 * h], trip);
      LWVD_PROF_SMEM("fft.ld3", &x[base + 3 * h], trip);
      LWVD_PROF_SMEM("fft.st0", &x[base], trip);
      LWVD_PROF_SMEM("fft.st1", &x[base + h], trip);
      LWVD_PROF_SMEM("fft.st2", &x[base + 2 * h], trip);
      LWVD_PROF_SMEM("fft.st3", &x[base + 3 * h], trip);
      const cplx<scalar_t> w1 = tw[j << (shift2 + 1)];
      const cplx<scalar_t> w2 = tw[j << shift2];
      const cplx<scalar_t> w3 = tw[(j + h) << shift2];
      const cplx<scalar_t> x0 = x[base], x1 = x[base + h], x2 = x[base + 2 * h], x3 = x[base + 3 * h];
      // stage s
      const scalar_t t1r = w1.re * x1.re - w1.im * x1.im, t1i = w1.re * x1.im + w1.im * x1.re;
      const scalar_t t3r = w1.re * x3.re - w1.im * x3.im, t3i = w1.re * x3.im + w1.im * x3.re;
      const cplx<scalar_t> y0{x0.re + t1r, x0.im + t1i}, y1{x0.re - t1r, x0.im - t1i};
      const cplx<scalar_t> y2{x2.re + t3r, x2.im + t3i}, y3{x2.re - t3r, x2.im - t3i};
      // stage s + 1
      const scalar_t u2r = w2.re * y2.re - w2.im * y2.im, u2i = w2.re * y2.im + w2.im * y2.re;
      const scalar_t u3r = w3.re * y3.re - w3.im * y3.im, u3i = w3.re * y3.im + w3.im * y3.re;
      x[base] = cplx<scalar_t>{y0.re + u2r, y0.im + u2i};
      x[base + 2 * h] = cplx<scalar_t>{y0.re - u2r, y0.im - u2i};
      x[base + h] = cplx<scalar_t>{y1.re + u3r, y1.im + u3i};
      x[base + 3 * h] = cplx<scalar_t>{y1.re - u3r, y1.im - u3i};
    }
    __syncthreads();
  }
}

// Permute each of `rows` rows of n = 2^log2n elements from natural into bit-reversed order, in place
// (swap x[j] and x[bit_reverse(j)] for j < bit_reverse(j)). Lets a producer whose stores would hit
// one bank per warp in bit-reversed order (the grad_z scatter: consecutive bins k become addresses
// n/32 apart) store in natural order, conflict-light, and pay the conflicts once per element here
// instead of once per term. Every thread of the block must call it; barrier before and after.
template <int kBlockThreads, typename T>
__device__ __forceinline__ void block_bitrev_rows(T* x, int rows, int log2n) {
  const int n = 1 << log2n;
  const int total = rows * n;
  LWVD_NO_UNROLL
  for (int i = static_cast<int>(threadIdx.x); i < total; i += kBlockThreads) {
    [[maybe_unused]] const int trip = (i - static_cast<int>(threadIdx.x)) / kBlockThreads;  // profile key
    LWVD_PROF_TRIP("fft.bitrev", trip);
    const int j = i & (n - 1);
    const int jr = bit_reverse(j, log2n);
    if (j < jr) {
      T* a = x + (i - j) + j;
      T* b = x + (i - j) + jr;
      LWVD_PROF_SMEM("fft.br_lda", a, trip);
      LWVD_PROF_SMEM("fft.br_ldb", b, trip);
      LWVD_PROF_SMEM("fft.br_sta", a, trip);
      LWVD_PROF_SMEM("fft.br_stb", b, trip);
      const T t = *a;
      *a = *b;
      *b = t;
    }
  }
}

}  // namespace lwvd
