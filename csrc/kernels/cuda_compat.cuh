// cuda_compat.cuh — the small portable-CUDA vocabulary the kernel headers use.
//
// The kernel headers (fft.cuh, lwvd_fwd.cuh, lwvd_bwd.cuh) compile in two worlds:
//   * nvcc (the real kernels, csrc/cuda/lwvd_cuda.cu and tools/kernels_only.cu);
//   * a host C++ compiler with LWVD_CUDA_EMULATION defined, inside the CPU test harness
//     (tests/cuda_emu/cuda_emu.h, branch cuda-harness), which defines the CUDA built-ins
//     (threadIdx, __syncthreads, __shfl_xor_sync, __global__, ...) and its own LWVD_DYNAMIC_SMEM
//     before including these headers.
// So the kernels use only: threadIdx/blockIdx/blockDim/gridDim, __syncthreads, full-mask shuffles,
// static __shared__ arrays, dynamic shared memory through LWVD_DYNAMIC_SMEM, and the math below.
// No torch includes, no inline PTX, no intrinsics that the emulator cannot provide.
#pragma once

#include <cmath>
#include <cstdint>

#include "lwvd_math.cuh"
#include "lwvd_prof.cuh"

#ifndef LWVD_CUDA_EMULATION
#include <cuda_runtime.h>
// One dynamic shared-memory array per kernel, typed at the point of use. 16-byte alignment covers
// cplx<double> (the widest element the kernels store there).
#define LWVD_DYNAMIC_SMEM(T, name)                                  \
  extern __shared__ __align__(16) unsigned char lwvd_dyn_smem[];    \
  T* name = reinterpret_cast<T*>(lwvd_dyn_smem)
#endif

// Keeps a loop rolled. The block-strided loops (FFT stages, row building, the grad_z gather) have
// a compile-time stride; unrolled, they multiply the live registers, and with bin_range's slow-path
// calls in the same kernel ptxas then spills. Rolled they cost nothing measurable: each trip already
// does several shared-memory accesses.
#if defined(__CUDACC__)
#define LWVD_NO_UNROLL _Pragma("unroll 1")
#else
#define LWVD_NO_UNROLL
#endif

namespace lwvd {

// Every full-warp shuffle uses this mask: all 32 lanes are active at every shuffle (blockDim.x is
// a multiple of 32 and no lane leaves a loop that contains a shuffle early).
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Interleaved complex number, the layout of torch.view_as_real (re, im). Plain aggregate so that
// it can live in shared memory without constructors.
template <typename T>
struct alignas(2 * sizeof(T)) cplx {
  T re;
  T im;
};

// exp that resolves to the CUDA device overload (expf for float) on the device and to std::exp on
// the host (emulator). Every kernel term exp(-q/2) goes through here.
template <typename T>
LWVD_HD T lwvd_exp(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

LWVD_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
LWVD_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
LWVD_HD int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// floor(a / b) for 0 <= a, 1 <= b that fit in 32 bits (the kernels' per-block counts): a 64-bit
// division is a subroutine call in SASS whose calling convention makes ptxas spill registers.
LWVD_HD int64_t div_small(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
}

// log2 of a power of two (host side planning and device side alike).
LWVD_HD int ilog2(int64_t n) {
  int l = 0;
  while ((int64_t{1} << l) < n) ++l;
  return l;
}

// Reverse the low `bits` bits of x (1 <= bits <= 13: the FFT input permutation). One BREV
// instruction on the device; on the host (emulator) the same value by five constant swaps. A loop
// over the bits cost the lag-row and grad_z stores about 6 SASS instructions per bit per term.
LWVD_HD int bit_reverse(int x, int bits) {
#if defined(__CUDA_ARCH__)
  return static_cast<int>(__brev(static_cast<unsigned>(x)) >> (32 - bits));
#else
  uint32_t v = static_cast<uint32_t>(x);
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
  v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
  v = (v >> 16) | (v << 16);
  return static_cast<int>(v >> (32 - bits));
#endif
}

// Every output of a call with invalid parameters is NaN (lwvd_fwd.cuh, kInvalid*): x[i] for i in
// [i0, i1), block-strided.
template <typename T>
__device__ __forceinline__ void fill_nan(T* x, int64_t i0, int64_t i1) {
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) x[i] = static_cast<T>(NAN);
}

}  // namespace lwvd
