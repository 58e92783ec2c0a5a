// occupancy.cpp — offline occupancy of the lwvd kernels, through the toolkit's cuda_occupancy.h
// (header-only, the same code cudaOccupancyMaxActiveBlocksPerMultiprocessor runs), so no GPU is
// needed. Built and driven by tools/resource_report.py:
//   g++ -std=c++17 -I<toolkit>/include -Icsrc tools/occupancy.cpp -o occupancy
//   echo "<sm> <regs> <static_smem> <kind> <scalar_bytes> <n_fft>" | ./occupancy
// kind: rows (forward/moments/grad_z: dynamic shared memory from launch_config.h), prep, reduce.
// Prints: threads dyn_smem_bytes blocks_per_sm occupancy_percent limiter
// Device figures are the published ones of the A100 (sm_80) and H100 SXM (sm_90).
#include <cuda_occupancy.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "kernels/launch_config.h"

int main() {
  int sm, regs;
  long static_smem, scalar_bytes, n_fft;
  char kind[32];
  while (std::scanf("%d %d %ld %31s %ld %ld", &sm, &regs, &static_smem, kind, &scalar_bytes, &n_fft) == 6) {
    cudaOccDeviceProp prop;
    prop.computeMajor = sm / 10;
    prop.computeMinor = sm % 10;
    prop.maxThreadsPerBlock = 1024;
    prop.maxThreadsPerMultiprocessor = 2048;
    prop.regsPerBlock = 65536;
    prop.regsPerMultiprocessor = 65536;
    prop.warpSize = 32;
    prop.sharedMemPerBlock = 48 * 1024;
    prop.sharedMemPerMultiprocessor = sm == 80 ? 164 * 1024 : 228 * 1024;
    prop.numSms = sm == 80 ? 108 : 132;
    prop.sharedMemPerBlockOptin = sm == 80 ? 163 * 1024 : 227 * 1024;
    prop.reservedSharedMemPerBlock = 1024;
    int threads = lwvd::config::kThreads;
    std::size_t dyn = 0;
    if (std::strcmp(kind, "rows") == 0) {
      dyn = lwvd::config::rows_smem_bytes(lwvd::config::complex_rows_per_pass(n_fft, scalar_bytes), n_fft,
                                          scalar_bytes);
    } else if (std::strcmp(kind, "prep") == 0) {
      threads = lwvd::config::kPrepThreads;
    } else {
      threads = lwvd::config::kReduceThreads;
    }
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
    std::printf("%d %zu %d %.1f %s\n", threads, dyn, res.activeBlocksPerMultiprocessor, 100.0 * warps / 64.0,
                lim.c_str());
    std::fflush(stdout);
  }
  return 0;
}
