// toy_kernels.cuh — small CUDA kernels that prove the emulator (cuda_emu.h) independently of the
// project's kernels: each has an answer the host computes another way, and the planted-bug
// arguments (uniform across the block, so the barriers stay legal) give the sanitizers something
// they must report:
//   block_sum_kernel(..., plant_race=true)  skips the barrier between the shared-memory fill and the
//                                           tree (a read of another thread's slot races with its write);
//   fft_kernel(..., plant_oob=true)         writes one element past its dynamic shared memory.
//
// Written in portable CUDA C++ (the subset the project's kernels use), so the same source builds
// with nvcc.
#pragma once

// Sum of each block's blockDim.x elements (blockDim.x a power of two <= 1024), static __shared__.
__global__ void block_sum_kernel(const double* __restrict__ x, double* __restrict__ out, bool plant_race) {
  __shared__ double s[1024];
  const unsigned tid = threadIdx.x;
  s[tid] = x[blockIdx.x * blockDim.x + tid];
  if (!plant_race) __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (tid < stride) s[tid] += s[tid + stride];  // planted race: reads s[tid + stride] unordered
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = s[0];
}

// Warp primitives: per thread, kShflOut results of shuffles/votes on v = 3 * tid + 1.
constexpr int kShflOut = 9;
__global__ void shuffle_kernel(int* __restrict__ out, double* __restrict__ warp_sums) {
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int v = 3 * static_cast<int>(tid) + 1;
  int* o = out + (blockIdx.x * blockDim.x * blockDim.y * blockDim.z + tid) * kShflOut;
  o[0] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[1] = __shfl_down_sync(0xffffffffu, v, 3);
  o[2] = __shfl_sync(0xffffffffu, v, 7);
  o[3] = __shfl_sync(0xffffffffu, v, 3, 16);
  o[4] = __shfl_xor_sync(0xffffffffu, v, 4, 8);
  o[5] = __shfl_down_sync(0xffffffffu, v, 2, 8);
  o[6] = static_cast<int>(__ballot_sync(0xffffffffu, tid % 3 == 0));
  o[7] = __any_sync(0xffffffffu, tid == 37) ? 1 : 0;
  o[8] = __all_sync(0xffffffffu, v > 0) ? 1 : 0;
  // Butterfly reduction of doubles: every lane ends with the warp's sum.
  double s = 0.5 * v;
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  if ((tid & 31) == 0) warp_sums[(blockIdx.x * blockDim.x * blockDim.y * blockDim.z + tid) / 32] = s;
}

// Radix-2 decimation-in-time FFT of length n = 1 << log2n (one signal per block, complex stored as
// double2), in dynamic shared memory, twiddles in static __shared__. blockDim.x = n / 2.
__global__ void fft_kernel(const double2* __restrict__ x, double2* __restrict__ y, int log2n, bool plant_oob) {
  LWVD_DYNAMIC_SMEM(double2, buf);
  __shared__ double2 tw[512];
  const int n = 1 << log2n;
  const int tid = static_cast<int>(threadIdx.x);
  const double2* xb = x + static_cast<size_t>(blockIdx.x) * n;
  const int fill = plant_oob ? n + 1 : n;  // planted off-by-one: one element past the dynamic buffer
  for (int i = tid; i < fill; i += blockDim.x) {
    int r = 0;
    for (int b = 0; b < log2n; ++b) r |= ((i >> b) & 1) << (log2n - 1 - b);
    buf[i] = i < n ? xb[r] : double2{0.0, 0.0};
  }
  for (int i = tid; i < n / 2; i += blockDim.x) {
    double s, c;
    sincos(-6.283185307179586 * i / n, &s, &c);
    tw[i] = double2{c, s};
  }
  __syncthreads();
  for (int half = 1; half < n; half <<= 1) {
    for (int j = tid; j < n / 2; j += blockDim.x) {
      const int grp = j / half, pos = j % half;
      const int a = grp * 2 * half + pos, b = a + half;
      const double2 w = tw[pos * (n / (2 * half))];
      const double2 u = buf[a], t = buf[b];
      const double2 wt{w.x * t.x - w.y * t.y, w.x * t.y + w.y * t.x};
      buf[a] = double2{u.x + wt.x, u.y + wt.y};
      buf[b] = double2{u.x - wt.x, u.y - wt.y};
    }
    __syncthreads();
  }
  for (int i = tid; i < n; i += blockDim.x) y[static_cast<size_t>(blockIdx.x) * n + i] = buf[i];
}

// Barrier stress on a 3-D block: rounds of "write my slot, barrier, read a rotating neighbour,
// barrier"; then the odd threads return and the even ones go on (exited threads stop counting at
// barriers, as on hardware). out[block * nthreads + tid] = errors seen * 1000000 + linear block id.
__global__ void barrier_kernel(int* __restrict__ out, int rounds) {
  __shared__ int s[1024];
  const int n = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  const int tid = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int blk = static_cast<int>(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
  int errors = 0;
  for (int r = 0; r < rounds; ++r) {
    s[tid] = blk * 100000 + r * 1000 + tid;
    __syncthreads();
    const int src = (tid + 7 * r + 1) % n;
    errors += s[src] != blk * 100000 + r * 1000 + src;
    __syncthreads();
  }
  out[blk * n + tid] = errors * 1000000 + blk;
  if (tid & 1) return;
  for (int r = 0; r < rounds; ++r) {
    s[tid] = -(blk * 100000 + r * 1000 + tid);
    __syncthreads();
    const int src = ((tid / 2 + r + 1) % ((n + 1) / 2)) * 2;
    errors += s[src] != -(blk * 100000 + r * 1000 + src);
    __syncthreads();
  }
  out[blk * n + tid] = errors * 1000000 + blk;
}

// Every block writes one shared output: the last block to run wins. Order-dependent on purpose, to
// show that LWVD_EMU_BLOCK_ORDER changes the order blocks run in.
__global__ void last_block_kernel(int* out) {
  if (threadIdx.x == 0) out[0] = static_cast<int>(blockIdx.x);
}

// ---- kernels that must make the emulator abort ------------------------------------------------
__global__ void partial_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0);
}

// Lanes 0..3 leave; lanes 4..31 then shuffle with a full mask. Emulated, the leaving lanes linger
// first, so that their exit (not the last shuffling lane) is what completes the warp exchange.
__global__ void exited_lane_kernel(int* out) {
  if ((threadIdx.x & 31) < 4) {
#ifdef LWVD_CUDA_EMULATION
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
#endif
    return;
  }
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void shuffle_sites_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x & 1)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void barrier_sites_kernel(int* out) {
  if (threadIdx.x < 32)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void short_warp_kernel(int* out) {  // blockDim.x = 40: lanes 8..31 of warp 1 do not exist
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// Half the block waits at a barrier; the other half skips it and waits for a flag that only the
// first half sets after the barrier: a deadlock on any GPU. The emulator's watchdog must end it.
__global__ void deadlock_kernel(int* flag) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
    atomicAdd(flag, 1);
  } else {
#ifdef LWVD_CUDA_EMULATION
    while (std::atomic_ref<int>(*flag).load(std::memory_order_relaxed) == 0) std::this_thread::yield();
#else
    while (atomicAdd(flag, 0) == 0) {
    }
#endif
  }
}
