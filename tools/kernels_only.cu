// kernels_only.cu — a torch-free translation unit holding every kernel the plan launches, for fast
// iteration with plain nvcc and for tools/resource_report.py:
//   nvcc -std=c++20 -arch=sm_90 -Xptxas -v -Icsrc -c tools/kernels_only.cu -o /dev/null
// A no-op launcher instantiates run_forward / run_backward for float and double, so exactly the
// kernels the CUDA extension launches are compiled (and nothing else).
#include "kernels/lwvd_plan.cuh"

namespace {
struct InstantiateOnly {
  template <typename... KArgs, typename... Args>
  void launch(void (*kernel)(KArgs...), dim3, dim3, std::size_t, Args...) {
    volatile auto keep = kernel;  // take the kernel's address: forces its device code to be emitted
    (void)keep;
  }
  void* workspace(std::size_t) { return nullptr; }
};
}  // namespace

void lwvd_instantiate_all() {
  InstantiateOnly L;
  lwvd::run_forward(L, lwvd::FwdProblem<float>{});
  lwvd::run_forward(L, lwvd::FwdProblem<double>{});
  lwvd::run_backward(L, lwvd::BwdProblem<float>{});
  lwvd::run_backward(L, lwvd::BwdProblem<double>{});
  lwvd::run_forward_moments(L, lwvd::FwdProblem<float>{}, nullptr);
  lwvd::run_forward_moments(L, lwvd::FwdProblem<double>{}, nullptr);
  lwvd::run_backward_moments(L, lwvd::BwdProblem<float>{}, nullptr, true);
  lwvd::run_backward_moments(L, lwvd::BwdProblem<double>{}, nullptr, true);
}
