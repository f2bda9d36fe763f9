// Operator schemas for the SHC kernels (namespace `shc`).
// Kernels are registered per backend: csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA).
// The Python side (shc_kernels/) registers fake/meta, autograd and autocast rules for these ops.
// The CPU-run build of csrc/cuda (SHC_SIMT, csrc/simt) defines the same schemas under `shc_sim`.
#include <torch/library.h>

namespace {
void define_shc_ops(torch::Library& m) {
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
  // The whole layer as one op (one launch on CUDA: csrc/cuda/fused_shc.cu). Besides y it returns
  // what its backward needs: the map m (N, kh, kw), z = cat(mu, sigma) (N, 2D) and the hidden
  // units h (N, K). grad_route only changes the backward (like embedding's scale_grad_by_freq).
  m.def(
      "shc_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor fc1_weight, Tensor? fc1_bias, "
      "Tensor fc2_weight, Tensor? fc2_bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "float eps, str grad_route) -> (Tensor y, Tensor m, Tensor z, Tensor h)");
  // shc_conv2d's first-order backward in one call (CPU kernel only): the gradients of x, weight,
  // bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, each empty where output_mask is False.
  m.def(
      "shc_conv2d_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor m, Tensor z, Tensor h, "
      "Tensor fc1_weight, Tensor fc2_weight, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "str grad_route, bool[7] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // shc_conv2d's backward as differentiable ops (shc_kernels/ops.py, CompositeImplicitAutograd):
  // for a graph of the backward (create_graph=True) and for gradients reaching m, z or h. The same
  // 7 gradients, each empty where output_mask is False. has_bias: bias, fc1_bias, fc2_bias given.
  m.def(
      "shc_conv2d_grad(Tensor? grad_y, Tensor? grad_m, Tensor? grad_z, Tensor? grad_h, Tensor x, "
      "Tensor weight, Tensor m, Tensor z, Tensor h, Tensor fc1_weight, Tensor fc2_weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, str grad_route, bool[3] has_bias, bool[7] output_mask) "
      "-> Tensor[]");
}
}  // namespace

#ifdef SHC_SIMT
TORCH_LIBRARY(shc_sim, m) { define_shc_ops(m); }
#else
TORCH_LIBRARY(shc, m) { define_shc_ops(m); }
#endif
