// Operator schemas for the SHC kernels (namespace `shc`).
// Kernels are registered per backend: csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA, later).
// The Python side (shc_kernels/) registers fake/meta, autograd and autocast rules for these ops.
#include <torch/library.h>

TORCH_LIBRARY(shc, m) {
  m.def("channel_stats(Tensor x, float eps) -> (Tensor, Tensor)");
  m.def(
      "channel_stats_backward(Tensor grad_mu, Tensor grad_sigma, Tensor x, Tensor mu, "
      "Tensor sigma) -> Tensor");
  m.def(
      "modulated_conv2d(Tensor x, Tensor weight, Tensor m, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "modulated_conv2d_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor m, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
