// fft.cuh — radix-2 FFT of several rows at once, in shared memory, by a whole block.
//
// x: `rows` contiguous rows of n = 2^log2n cplx<scalar_t>, each stored in BIT-REVERSED order (the
// producers write element j at index bit_reverse(j, log2n), which costs nothing there); on return
// each row holds its DFT X[k] = sum_j x[j] exp(-2 i pi j k / n) in natural order.
// tw: n/2 twiddles tw[j] = exp(-2 i pi j / n) (global memory, written once per call by the prepare
// kernel; read through L1: a shared copy would cost n*sizeof(scalar) more shared memory, which at
// n = 8192 in double does not fit beside the rows on sm_80).
// Iterative decimation in time: log2n stages of n/2 butterflies per row; stage s pairs elements
// half = 2^(s-1) apart and uses tw[j * n / 2^s]. Every thread of the block must call it (it contains
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
  const int total = rows * half_n;  // butterflies per stage
  LWVD_NO_UNROLL
  for (int s = 1; s <= log2n; ++s) {
    LWVD_PROF_TRIP("fft.stage");
    const int half = 1 << (s - 1);
    const int tw_shift = log2n - s;
    LWVD_NO_UNROLL
    for (int i = static_cast<int>(threadIdx.x); i < total; i += kBlockThreads) {
      [[maybe_unused]] const int trip = (i - static_cast<int>(threadIdx.x)) / kBlockThreads;  // profile key
      LWVD_PROF_TRIP("fft.bfly", trip);
      const int row = i >> (log2n - 1);
      const int bf = i & (half_n - 1);
      const int j = bf & (half - 1);
      const int base = row * (2 * half_n) + ((bf >> (s - 1)) << s) + j;
      LWVD_PROF_GMEM("fft.tw", &tw[j << tw_shift], trip);
      LWVD_PROF_SMEM("fft.lda", &x[base], trip);
      LWVD_PROF_SMEM("fft.ldb", &x[base + half], trip);
      LWVD_PROF_SMEM("fft.sta", &x[base], trip);
      LWVD_PROF_SMEM("fft.stb", &x[base + half], trip);
      const cplx<scalar_t> w = tw[j << tw_shift];
      const cplx<scalar_t> a = x[base];
      const cplx<scalar_t> b = x[base + half];
      const scalar_t tr = w.re * b.re - w.im * b.im;
      const scalar_t ti = w.re * b.im + w.im * b.re;
      x[base] = cplx<scalar_t>{a.re + tr, a.im + ti};
      x[base + half] = cplx<scalar_t>{a.re - tr, a.im - ti};
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
