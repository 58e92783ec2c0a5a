// driver.cpp — runs the real CUDA kernels (csrc/kernels/lwvd_plan.cuh) on the CPU through the
// emulator, for tests/test_cuda_emulation.py. No torch: builds in seconds with
//   g++ -std=c++20 -pthread -O1 -Itests/cuda_emu -Icsrc/kernels tests/cuda_emu/driver.cpp
// (plus -fsanitize=thread or -fsanitize=address,undefined for the sanitizer runs).
//
// Usage: driver DIR | driver --selftest NAME (the emulator's own tests, selftests.h)
//   DIR/problem.txt   "key value" lines: mode fwd|bwd|both|train (train: the moments pair, writes
//                     out_moments.bin (B, F, T, 6) float64 too; need_z 0|1), dtype f32|f64, B, N, n_fft, hop, F,
//                     truncate (a number or inf)
//   DIR/z.bin         (B, N, 2) interleaved complex, numpy .tofile of the dtype
//   DIR/center.bin, sigma_t.bin, sigma_nu.bin, rho.bin   (F,)
//   DIR/grad_out.bin  (B, F, T)                          (bwd only)
// Writes DIR/out_forward.bin (B, F, T) and/or out_grad_z.bin (B, N, 2), out_grad_center.bin, ...
// and prints one line of launch statistics.
//
// LWVD_EMU_SMEM_SHRINK=k (bytes) hands every launch k bytes less dynamic shared memory than the
// plan asked for: the planted off-by-one that AddressSanitizer must report.
#include "cuda_emu.h"
// The emulator header must come first: it defines the CUDA keywords the kernel headers use.
#if __has_include("lwvd_plan.cuh")
#include "lwvd_plan.cuh"
#define LWVD_EMU_HAVE_PLAN 1
#endif
#include "selftests.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// 256-byte aligned like cudaMalloc: the profile's global-memory sector counts depend on alignment.
template <class T>
struct Aligned256 {
  using value_type = T;
  Aligned256() = default;
  template <class U>
  Aligned256(const Aligned256<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{256})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{256}); }
  template <class U>
  bool operator==(const Aligned256<U>&) const { return true; }
};
template <class T>
using avec = std::vector<T, Aligned256<T>>;

#ifdef LWVD_EMU_HAVE_PLAN
class DriverLauncher : public lwvd_emu::Launcher {
 public:
  explicit DriverLauncher(size_t shrink) : shrink_(shrink) {}
  template <class... P, class... A>
  void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes, A&&... args) {
    const size_t smem = smem_bytes > shrink_ ? smem_bytes - shrink_ : smem_bytes;
    lwvd_emu::Launcher::launch(kernel, grid, block, smem, std::forward<A>(args)...);
  }

 private:
  size_t shrink_;
};

std::map<std::string, std::string> read_spec(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::map<std::string, std::string> kv;
  std::string k, v;
  while (in >> k >> v) kv[k] = v;
  return kv;
}

template <typename T>
avec<T> read_array(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  avec<T> v(count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (static_cast<size_t>(in.gcount()) != count * sizeof(T) || in.peek() != EOF)
    throw std::runtime_error(path + ": expected exactly " + std::to_string(count) + " values");
  return v;
}

template <typename T>
void write_array(const std::string& path, const avec<T>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  if (!out) throw std::runtime_error("cannot write " + path);
}

template <typename S>
void run(const std::string& dir, const std::map<std::string, std::string>& spec, size_t shrink) {
  const std::string mode = spec.at("mode");
  const int64_t B = std::stoll(spec.at("B")), N = std::stoll(spec.at("N")), M = std::stoll(spec.at("n_fft"));
  const int64_t hop = std::stoll(spec.at("hop")), F = std::stoll(spec.at("F"));
  const double truncate = spec.at("truncate") == "inf" ? INFINITY : std::stod(spec.at("truncate"));
  const int64_t n_frames = lwvd::num_frames(N, hop);

  const auto z = read_array<S>(dir + "/z.bin", static_cast<size_t>(B * N * 2));
  const auto center = read_array<S>(dir + "/center.bin", F);
  const auto sigma_t = read_array<S>(dir + "/sigma_t.bin", F);
  const auto sigma_nu = read_array<S>(dir + "/sigma_nu.bin", F);
  const auto rho = read_array<S>(dir + "/rho.bin", F);

  if (mode == "fwd" || mode == "both") {
    // Poisoned with NaN: an output the kernels never write shows up in the comparison.
    avec<S> out(static_cast<size_t>(B * F * n_frames), NAN);
    DriverLauncher L(shrink);
    lwvd::FwdProblem<S> p{z.data(), center.data(), sigma_t.data(), sigma_nu.data(), rho.data(), out.data(),
                          B, N, F, M, hop, truncate};
    lwvd::run_forward(L, p);
    write_array(dir + "/out_forward.bin", out);
    std::printf("ERROR_FLAGS forward %u\n", *L.error_flags());
    std::printf("WORKSPACE forward %zu\n", L.workspace_bytes());
  }
  if (mode == "bwd" || mode == "both") {
    const auto grad_out = read_array<S>(dir + "/grad_out.bin", static_cast<size_t>(B * F * n_frames));
    avec<S> gz(static_cast<size_t>(B * N * 2), NAN), gc(F, NAN), gst(F, NAN), gsn(F, NAN), gr(F, NAN);
    DriverLauncher L(shrink);
    lwvd::BwdProblem<S> q{grad_out.data(), z.data(), center.data(), sigma_t.data(), sigma_nu.data(), rho.data(),
                          gz.data(), gc.data(), gst.data(), gsn.data(), gr.data(), B, N, F, M, hop, truncate};
    lwvd::run_backward(L, q);
    std::printf("ERROR_FLAGS backward %u\n", *L.error_flags());
    std::printf("WORKSPACE backward %zu\n", L.workspace_bytes());
    write_array(dir + "/out_grad_z.bin", gz);
    write_array(dir + "/out_grad_center.bin", gc);
    write_array(dir + "/out_grad_sigma_t.bin", gst);
    write_array(dir + "/out_grad_sigma_nu.bin", gsn);
    write_array(dir + "/out_grad_rho.bin", gr);
  }
  if (mode == "train") {
    // The training pair: run_forward_moments (K, per-frame moments) then run_backward_moments from
    // those moments (need_z 0|1: without it grad_z is not written and stays NaN-poisoned).
    const bool need_z = spec.count("need_z") == 0 || spec.at("need_z") != "0";
    avec<S> out(static_cast<size_t>(B * F * n_frames), NAN);
    avec<double> mom(static_cast<size_t>(B * F * n_frames * 6), NAN);
    {
      DriverLauncher L(shrink);
      lwvd::FwdProblem<S> p{z.data(), center.data(), sigma_t.data(), sigma_nu.data(), rho.data(), out.data(),
                            B, N, F, M, hop, truncate};
      lwvd::run_forward_moments(L, p, mom.data());
      std::printf("ERROR_FLAGS forward %u\n", *L.error_flags());
    }
    write_array(dir + "/out_forward.bin", out);
    write_array(dir + "/out_moments.bin", mom);
    const auto grad_out = read_array<S>(dir + "/grad_out.bin", static_cast<size_t>(B * F * n_frames));
    avec<S> gz(static_cast<size_t>(B * N * 2), NAN), gc(F, NAN), gst(F, NAN), gsn(F, NAN), gr(F, NAN);
    DriverLauncher L(shrink);
    lwvd::BwdProblem<S> q{grad_out.data(), z.data(), center.data(), sigma_t.data(), sigma_nu.data(), rho.data(),
                          gz.data(), gc.data(), gst.data(), gsn.data(), gr.data(), B, N, F, M, hop, truncate};
    lwvd::run_backward_moments(L, q, mom.data(), need_z);
    std::printf("ERROR_FLAGS backward %u\n", *L.error_flags());
    write_array(dir + "/out_grad_z.bin", gz);
    write_array(dir + "/out_grad_center.bin", gc);
    write_array(dir + "/out_grad_sigma_t.bin", gst);
    write_array(dir + "/out_grad_sigma_nu.bin", gsn);
    write_array(dir + "/out_grad_rho.bin", gr);
  }
  if (mode != "fwd" && mode != "bwd" && mode != "both" && mode != "train")
    throw std::runtime_error("mode must be fwd|bwd|both|train");
}

#endif  // LWVD_EMU_HAVE_PLAN

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--selftest") return lwvd_selftest::run(argv[2]);
  if (argc != 2) {
    std::fprintf(stderr, "usage: driver DIR | driver --selftest NAME (see the header of driver.cpp)\n");
    return 2;
  }
#ifndef LWVD_EMU_HAVE_PLAN
  std::fprintf(stderr, "driver: built without csrc/kernels/lwvd_plan.cuh; only --selftest is available\n");
  return 2;
#else
  try {
    const std::string dir = argv[1];
    const auto spec = read_spec(dir + "/problem.txt");
    const char* shrink_env = std::getenv("LWVD_EMU_SMEM_SHRINK");
    const size_t shrink = shrink_env ? static_cast<size_t>(std::stoul(shrink_env)) : 0;
    const std::string dtype = spec.at("dtype");
    if (dtype == "f64") run<double>(dir, spec, shrink);
    else if (dtype == "f32") run<float>(dir, spec, shrink);
    else throw std::runtime_error("dtype must be f32 or f64");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "driver: %s\n", e.what());
    return 1;
  }
  const auto& s = lwvd_emu::stats();
  std::printf("EMU launches %llu blocks %llu block_barriers %llu warp_exchanges %llu max_threads %u max_dyn_smem %zu\n",
              static_cast<unsigned long long>(s.launches), static_cast<unsigned long long>(s.blocks),
              static_cast<unsigned long long>(s.block_barriers), static_cast<unsigned long long>(s.warp_exchanges),
              s.max_threads, s.max_dynamic_smem);
  for (const auto& e : s.log)
    std::printf("LAUNCH grid %u %u %u block %u %u %u smem %zu\n", e.grid.x, e.grid.y, e.grid.z, e.block.x, e.block.y,
                e.block.z, e.smem);
  // LWVD_EMU_PROFILE=1: per launch (index in plan order), barriers, exchanges and per-site counts.
  for (size_t i = 0; i < s.log.size(); ++i) {
    const auto& e = s.log[i];
    std::printf("PROFLAUNCH %zu block_barriers %llu warp_exchanges %llu\n", i,
                static_cast<unsigned long long>(e.block_barriers), static_cast<unsigned long long>(e.warp_exchanges));
    for (const auto& [id, c] : e.sites)
      std::printf("PROF %zu %s warp_trips %llu lanes %llu wavefronts %llu sectors %llu\n", i,
                  lwvd_emu::site_name(id).c_str(), static_cast<unsigned long long>(c.warp_trips),
                  static_cast<unsigned long long>(c.lanes), static_cast<unsigned long long>(c.wavefronts),
                  static_cast<unsigned long long>(c.sectors));
  }
  return 0;
#endif
}
