// occupancy.cpp — offline occupancy of the lwvd kernels, through the toolkit's cuda_occupancy.h
// (header-only, the same code cudaOccupancyMaxActiveBlocksPerMultiprocessor runs), so no GPU is
// needed. Built and driven by tools/resource_report.py:
//   g++ -std=c++17 -I<toolkit>/include -Icsrc tools/occupancy.cpp -o occupancy
//   echo "<sm> <regs> <static_smem> <kind> <scalar_bytes> <n_fft>" | ./occupancy
// kind: rows (forward/moments: dynamic shared memory from launch_config.h), grad (grad_z + parameter
// gradients: grad_complex_rows_per_pass rows + the window lists, kGradThreads threads), prep, reduce.
// Prints: threads dyn_smem_bytes blocks_per_sm occupancy_percent limiter
// limiter "exceeds-optin": the launch needs more shared memory per block than the device has at all
// (the CUDA launcher raises a ValueError naming n_fft there); "unknown-arch": no limits below.
#include <cuda_occupancy.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "kernels/launch_config.h"

namespace {
// The published limits of one GPU per architecture; cuda_occupancy.h adds the per-arch rules
// (max blocks per SM, register allocation granularity, shared-memory carve-outs).
struct ArchLimits {
  int sm;
  const char* gpu;
  int threads_per_sm, smem_per_sm_kib, smem_optin_kib, num_sms;
};
// sm_86 / sm_89 / sm_120 parts: 1536 threads and 100 KiB of shared memory per SM, 99 KiB per block.
constexpr ArchLimits kArchs[] = {
    {80, "A100", 2048, 164, 163, 108},       {86, "A40", 1536, 100, 99, 84},
    {89, "L40S", 1536, 100, 99, 142},        {90, "H100 SXM", 2048, 228, 227, 132},
    {100, "B200", 2048, 228, 227, 148},      {120, "RTX 5090", 1536, 100, 99, 170},
};

const ArchLimits* limits_of(int sm) {
  for (const ArchLimits& a : kArchs) {
    if (a.sm == sm) return &a;
  }
  return nullptr;
}
}  // namespace

int main() {
  int sm, regs;
  long static_smem, scalar_bytes, n_fft;
  char kind[32];
  while (std::scanf("%d %d %ld %31s %ld %ld", &sm, &regs, &static_smem, kind, &scalar_bytes, &n_fft) == 6) {
    int threads = lwvd::config::kThreads;
    std::size_t dyn = 0;
    if (std::strcmp(kind, "rows") == 0) {
      dyn = lwvd::config::rows_smem_bytes(lwvd::config::smooth_complex_rows_per_pass(n_fft, scalar_bytes), n_fft,
                                          scalar_bytes);
      threads = lwvd::config::kSmoothThreads;
    } else if (std::strcmp(kind, "grad") == 0) {  // lwvd_plan.cuh grad_launch: its rows + the window lists
      dyn = lwvd::config::rows_smem_bytes(lwvd::config::grad_complex_rows_per_pass(n_fft, scalar_bytes), n_fft,
                                          scalar_bytes) +
            lwvd::config::window_list_bytes(n_fft);
      threads = lwvd::config::kGradThreads;
    } else if (std::strcmp(kind, "prep") == 0) {
      threads = lwvd::config::kPrepThreads;
    } else {
      threads = lwvd::config::kReduceThreads;
    }
    const ArchLimits* lim_of = limits_of(sm);
    if (lim_of == nullptr) {
      std::printf("%d %zu 0 0 unknown-arch\n", threads, dyn);
      std::fflush(stdout);
      continue;
    }
    if (dyn + static_cast<std::size_t>(static_smem) > static_cast<std::size_t>(lim_of->smem_optin_kib) * 1024) {
      std::printf("%d %zu 0 0 exceeds-optin\n", threads, dyn);
      std::fflush(stdout);
      continue;
    }
    cudaOccDeviceProp prop;
    prop.computeMajor = sm / 10;
    prop.computeMinor = sm % 10;
    prop.maxThreadsPerBlock = 1024;
    prop.maxThreadsPerMultiprocessor = lim_of->threads_per_sm;
    prop.regsPerBlock = 65536;
    prop.regsPerMultiprocessor = 65536;
    prop.warpSize = 32;
    prop.sharedMemPerBlock = 48 * 1024;
    prop.sharedMemPerMultiprocessor = static_cast<std::size_t>(lim_of->smem_per_sm_kib) * 1024;
    prop.numSms = lim_of->num_sms;
    prop.sharedMemPerBlockOptin = static_cast<std::size_t>(lim_of->smem_optin_kib) * 1024;
    prop.reservedSharedMemPerBlock = 1024;
    cudaOccFuncAttributes attr;
    attr.maxThreadsPerBlock = threads;  // __launch_bounds__
    attr.numRegs = regs;
    attr.sharedSizeBytes = static_cast<std::size_t>(static_smem);
    attr.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN;  // the launcher opts in above 48 KiB
    attr.maxDynamicSharedSizeBytes = dyn;
    attr.numBlockBarriers = 1;
    cudaOccDeviceState state;
    cudaOccResult res;
    const cudaOccError err = cudaOccMaxActiveBlocksPerMultiprocessor(&res, &prop, &attr, &state, threads, dyn);
    if (err != CUDA_OCC_SUCCESS) {
      std::printf("%d %zu 0 0 error%d\n", threads, dyn, static_cast<int>(err));
      std::fflush(stdout);
      continue;
    }
    const int warps = res.activeBlocksPerMultiprocessor * ((threads + 31) / 32);
    std::string lim;
    if (res.limitingFactors & OCC_LIMIT_REGISTERS) lim += "regs,";
    if (res.limitingFactors & OCC_LIMIT_SHARED_MEMORY) lim += "smem,";
    if (res.limitingFactors & OCC_LIMIT_WARPS) lim += "warps,";
    if (res.limitingFactors & OCC_LIMIT_BLOCKS) lim += "blocks,";
    if (lim.empty()) lim = "-,";
    lim.pop_back();
    std::printf("%d %zu %d %.1f %s\n", threads, dyn, res.activeBlocksPerMultiprocessor,
                100.0 * warps / (lim_of->threads_per_sm / 32), lim.c_str());
    std::fflush(stdout);
  }
  return 0;
}
