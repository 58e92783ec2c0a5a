// ops.cpp — the torch.library schemas of the op. Backends register implementations in their own
// files (csrc/cpu/*.cpp for CPU, csrc/cuda/*.cu for CUDA); Python adds fake kernels and autograd
// (lwvd_cuda/ops.py). The shapes and dtypes each op takes are documented in lwvd.h.
#include <Python.h>
#include <torch/library.h>

// A Python module with no methods: importing lwvd_cuda._C runs the static registrations below
// (the pattern of pytorch/extension-cpp), without pybind11 in the build.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lwvd_cuda, m) {
  m.def(
      "lwvd_fwd(Tensor z, Tensor center, Tensor sigma_t, Tensor sigma_nu, Tensor rho, int n_fft, "
      "int hop_length, float truncate) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "lwvd_bwd(Tensor grad_out, Tensor z, Tensor center, Tensor sigma_t, Tensor sigma_nu, Tensor rho, "
      "int n_fft, int hop_length, float truncate) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // CPU (csrc/cpu/lwvd_cpu.cpp, issue #13) and CUDA (csrc/cuda/lwvd_cuda.cu, issue #10): the forward
  // that also returns the six moments of every (item, filter, frame), (B, F, T, 6) float64, and the
  // backward that takes them instead of recomputing the W rows. lwvd_cuda/ops.py uses the pair under
  // plain eager autograd on CPU or CUDA when a parameter needs its gradient and the moments fit its
  // memory cap.
  m.def(
      "lwvd_fwd_moments(Tensor z, Tensor center, Tensor sigma_t, Tensor sigma_nu, Tensor rho, int n_fft, "
      "int hop_length, float truncate) -> (Tensor, Tensor)");
  m.def(
      "lwvd_bwd_moments(Tensor grad_out, Tensor z, Tensor center, Tensor sigma_t, Tensor sigma_nu, Tensor rho, "
      "Tensor moments, int n_fft, int hop_length, float truncate, bool need_z) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
}
