// lwvd_cuda.cu — CUDA implementations of torch.ops.lwvd_cuda.lwvd_fwd / lwvd_bwd.
//
// The kernels and the sequence of launches are torch-free (csrc/kernels/lwvd_plan.cuh); this file
// only checks arguments (lwvd.h), makes inputs contiguous, allocates outputs and workspaces, and
// provides the Launcher the plan calls: launches on the current stream with a launch check, the
// shared-memory opt-in above 48 KiB, uninitialised workspaces from the caching allocator, and the
// persistent error word.
//
// No device-to-host synchronisation: only the shapes, dtypes and devices are checked on the host
// (lwvd::check_shapes); the parameter VALUES are checked by the prepare kernel (lwvd_fwd.cuh):
// invalid ones make every output of the call NaN and OR their kInvalid* bits into a per-device word
// that torch.ops.lwvd_cuda.cuda_error_flags(reset) reads (that read is a sync, on request only).
// Forward: 2 launches (prepare, smooth); backward: 3 (prepare, moments, grad_z + parameter grads).
// Training pair (lwvd_fwd_moments / lwvd_bwd_moments): 2 launches each way (+ a zero fill of grad_z
// when z needs no gradient).
//
//   lwvd_fwd(z (B, N) complex64|complex128, center, sigma_t, sigma_nu, rho (F,) real,
//            n_fft, hop_length, truncate) -> K (B, F, T) real
//   lwvd_bwd(grad_K (B, F, T), z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate)
//            -> (grad_z (B, N) complex, grad_center, grad_sigma_t, grad_sigma_nu, grad_rho (F,))
// n_fft must be a power of two in [4, 8192] (lwvd_cuda.functional routes other sizes to the
// reference before calling the op); float32 and float64 (complex64 / complex128 z).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/lwvd_plan.cuh"
#include "lwvd.h"

namespace lwvd {
namespace {

// kInvalid* bits of every call since the last reset, one word per device (a __device__ variable
// exists once per device context).
__device__ unsigned g_error_flags = 0;

class CudaLauncher {
 public:
  explicit CudaLauncher(const at::Tensor& like)
      : stream_(at::cuda::getCurrentCUDAStream()), options_(like.options().dtype(at::kByte)) {}

  template <typename... KArgs, typename... Args>
  void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem_bytes, Args... args) {
    if (smem_bytes > 48 * 1024) {
      // Above the default 48 KiB a kernel must opt in; the device may not have that much at all
      // (n_fft = 8192 in float64 needs 128 KiB: sm_80 / sm_90 have it, sm_86 / sm_89 do not).
      int device = 0, optin = 0;
      C10_CUDA_CHECK(cudaGetDevice(&device));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      TORCH_CHECK_VALUE(smem_bytes <= static_cast<std::size_t>(optin), "lwvd (CUDA): n_fft needs ", smem_bytes,
                        " bytes of shared memory per block but this device allows ", optin,
                        "; use a smaller n_fft, float32, or the CPU");
      C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem_bytes)));
    }
    kernel<<<grid, block, smem_bytes, stream_>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Uninitialised (no fill kernel: every kernel writes what it later reads), from the caching
  // allocator, alive until the launcher (the op call) ends; the allocator's stream semantics keep it
  // valid for the kernels queued on this stream.
  void* workspace(std::size_t bytes) {
    buffers_.push_back(at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, options_));
    return buffers_.back().data_ptr();
  }

  unsigned* error_flags() {
    void* p = nullptr;
    C10_CUDA_CHECK(cudaGetSymbolAddress(&p, g_error_flags));  // no sync: a context lookup
    return static_cast<unsigned*>(p);
  }

 private:
  cudaStream_t stream_;
  at::TensorOptions options_;
  std::vector<at::Tensor> buffers_;
};

void check_fft_size(int64_t n_fft) {
  TORCH_CHECK_VALUE(is_supported_fft(n_fft),
                    "lwvd (CUDA): n_fft must be a power of two in [4, 8192] (radix-2 FFT in shared memory), got ",
                    n_fft, "; lwvd_cuda.lwvd routes other sizes to the reference");
}

// What every op checks on the host before anything runs: shapes, dtypes and devices (lwvd.h; the
// parameter VALUES are checked by the prepare kernel), n_fft, and that z is a CUDA tensor.
void check_op_args(const at::Tensor& z, const at::Tensor& center, const at::Tensor& sigma_t, const at::Tensor& sigma_nu,
                   const at::Tensor& rho, int64_t n_fft, int64_t hop_length, double truncate) {
  check_shapes(z, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  check_fft_size(n_fft);
  TORCH_CHECK_VALUE(z.is_cuda(), "lwvd (CUDA): z must be a CUDA tensor");
}

// The inputs as the kernels read them, made under the op's device guard: z as the contiguous (B, N, 2)
// real view and the four contiguous parameters; and the plans' problems over them.
struct OpInputs {
  OpInputs(const at::Tensor& z_in, const at::Tensor& center, const at::Tensor& sigma_t, const at::Tensor& sigma_nu,
           const at::Tensor& rho, int64_t n_fft_, int64_t hop_, double truncate_)
      : z(at::view_as_real(z_in.contiguous())),
        params{center.contiguous(), sigma_t.contiguous(), sigma_nu.contiguous(), rho.contiguous()},
        B(z_in.size(0)), N(z_in.size(1)), F(center.size(0)), T(num_frames(z_in.size(1), hop_)),
        n_fft(n_fft_), hop(hop_), truncate(truncate_) {}

  at::TensorOptions real_options() const { return params[0].options(); }

  // The four (F,) parameter gradients, uninitialised (the kernels write every element).
  std::array<at::Tensor, 4> empty_param_grads() const {
    return {at::empty({F}, real_options()), at::empty({F}, real_options()), at::empty({F}, real_options()),
            at::empty({F}, real_options())};
  }

  template <typename scalar_t>
  FwdProblem<scalar_t> fwd_problem(const at::Tensor& out) const {
    return FwdProblem<scalar_t>{z.const_data_ptr<scalar_t>(), params[0].const_data_ptr<scalar_t>(),
                                params[1].const_data_ptr<scalar_t>(), params[2].const_data_ptr<scalar_t>(),
                                params[3].const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                B, N, F, n_fft, hop, truncate};
  }

  // grad (B, F, T) contiguous; grad_z the (B, N, 2) real view of the output.
  template <typename scalar_t>
  BwdProblem<scalar_t> bwd_problem(const at::Tensor& grad, const at::Tensor& grad_z,
                                   const std::array<at::Tensor, 4>& grads) const {
    return BwdProblem<scalar_t>{grad.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                                params[0].const_data_ptr<scalar_t>(), params[1].const_data_ptr<scalar_t>(),
                                params[2].const_data_ptr<scalar_t>(), params[3].const_data_ptr<scalar_t>(),
                                grad_z.data_ptr<scalar_t>(), grads[0].data_ptr<scalar_t>(),
                                grads[1].data_ptr<scalar_t>(), grads[2].data_ptr<scalar_t>(),
                                grads[3].data_ptr<scalar_t>(), B, N, F, n_fft, hop, truncate};
  }

  at::Tensor z;
  std::array<at::Tensor, 4> params;  // center, sigma_t, sigma_nu, rho
  int64_t B, N, F, T, n_fft, hop;
  double truncate;
};

using BwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor lwvd_fwd_cuda(const at::Tensor& z_in, const at::Tensor& center, const at::Tensor& sigma_t,
                         const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft, int64_t hop_length,
                         double truncate) {
  check_op_args(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const OpInputs in(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  at::Tensor out = at::empty({in.B, in.F, in.T}, in.real_options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lwvd_fwd_cuda", [&] {
    CudaLauncher L(in.z);
    run_forward(L, in.fwd_problem<scalar_t>(out));
  });
  return out;
}

BwdResult lwvd_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& z_in, const at::Tensor& center,
                        const at::Tensor& sigma_t, const at::Tensor& sigma_nu, const at::Tensor& rho, int64_t n_fft,
                        int64_t hop_length, double truncate) {
  check_op_args(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  check_grad(grad_in, z_in, center.size(0), hop_length);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const OpInputs in(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  const at::Tensor g = grad_in.contiguous();
  at::Tensor grad_z = at::empty({in.B, in.N}, z_in.options().memory_format(at::MemoryFormat::Contiguous));
  const std::array<at::Tensor, 4> grads = in.empty_param_grads();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "lwvd_bwd_cuda", [&] {
    CudaLauncher L(in.z);
    run_backward(L, in.bwd_problem<scalar_t>(g, at::view_as_real(grad_z), grads));
  });
  return {grad_z, grads[0], grads[1], grads[2], grads[3]};
}

// The training pair (lwvd.h): the forward that also keeps the six moments of every (item, filter,
// frame), (B, F, T, 6) float64, in the same 2 launches (lwvd_smooth_kernel<.., true, true>), and the
// backward from them: prepare + one grad_z / parameter-gradient launch (no pass over the W rows for
// the parameters); need_z = false runs only the parameter blocks and returns zeros for grad_z.
std::tuple<at::Tensor, at::Tensor> lwvd_fwd_moments_cuda(const at::Tensor& z_in, const at::Tensor& center,
                                                         const at::Tensor& sigma_t, const at::Tensor& sigma_nu,
                                                         const at::Tensor& rho, int64_t n_fft, int64_t hop_length,
                                                         double truncate) {
  check_op_args(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const OpInputs in(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  at::Tensor out = at::empty({in.B, in.F, in.T}, in.real_options());
  at::Tensor mom = at::empty({in.B, in.F, in.T, 6}, in.real_options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lwvd_fwd_moments_cuda", [&] {
    CudaLauncher L(in.z);
    run_forward_moments(L, in.fwd_problem<scalar_t>(out), mom.data_ptr<double>());
  });
  return {out, mom};
}

BwdResult lwvd_bwd_moments_cuda(const at::Tensor& grad_in, const at::Tensor& z_in, const at::Tensor& center,
                                const at::Tensor& sigma_t, const at::Tensor& sigma_nu, const at::Tensor& rho,
                                const at::Tensor& moments, int64_t n_fft, int64_t hop_length, double truncate,
                                bool need_z) {
  check_op_args(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  check_grad(grad_in, z_in, center.size(0), hop_length);
  check_moments(moments, z_in, center.size(0), grad_in.size(2));
  const c10::cuda::CUDAGuard guard(z_in.device());
  const OpInputs in(z_in, center, sigma_t, sigma_nu, rho, n_fft, hop_length, truncate);
  const at::Tensor g = grad_in.contiguous(), m = moments.contiguous();
  // Without need_z the kernels do not write grad_z: zeros (one fill), as the CPU op returns.
  const auto opts = z_in.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_z = need_z ? at::empty({in.B, in.N}, opts) : at::zeros({in.B, in.N}, opts);
  const std::array<at::Tensor, 4> grads = in.empty_param_grads();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "lwvd_bwd_moments_cuda", [&] {
    CudaLauncher L(in.z);
    run_backward_moments(L, in.bwd_problem<scalar_t>(g, at::view_as_real(grad_z), grads), m.const_data_ptr<double>(),
                         need_z);
  });
  return {grad_z, grads[0], grads[1], grads[2], grads[3]};
}

// The kInvalid* bits (1 non-finite, 2 sigma_t <= 0, 4 sigma_nu <= 0, 8 |rho| >= 1) of every call on
// the current CUDA device since the last reset. Waits for the device (a sync): call it when a NaN
// output needs explaining or at a checkpoint, not in the training step.
int64_t cuda_error_flags(bool reset) {
  unsigned flags = 0;
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(&flags, g_error_flags, sizeof(flags)));
  if (reset) {
    const unsigned zero = 0;
    C10_CUDA_CHECK(cudaMemcpyToSymbol(g_error_flags, &zero, sizeof(zero)));
  }
  return static_cast<int64_t>(flags);
}

}  // namespace
}  // namespace lwvd

TORCH_LIBRARY_IMPL(lwvd_cuda, CUDA, m) {
  m.impl("lwvd_fwd", &lwvd::lwvd_fwd_cuda);
  m.impl("lwvd_bwd", &lwvd::lwvd_bwd_cuda);
  m.impl("lwvd_fwd_moments", &lwvd::lwvd_fwd_moments_cuda);
  m.impl("lwvd_bwd_moments", &lwvd::lwvd_bwd_moments_cuda);
}

// Defined here, not in ops.cpp: it exists only in builds with the CUDA kernels.
TORCH_LIBRARY_FRAGMENT(lwvd_cuda, m) {
  m.def("cuda_error_flags(bool reset=True) -> int", &lwvd::cuda_error_flags);
}
