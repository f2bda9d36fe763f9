// Conv geometry and the argument checks shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels
// of shc::modulated_conv2d, its backward and shc::shc_conv2d. Device checks and size limits stay
// with each backend.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>

namespace shc {

struct ConvGeom {
  // x (N, D, H, W); weight (C, D/groups, kh, kw); T = kh*kw taps; output (OH, OW), P = OH*OW;
  // Dg, Cg channels per group; K = Dg*T, the reduction length of one group's GEMM.
  int64_t N, D, H, W, C, kh, kw, T, OH, OW, P, sh, sw, ph, pw, dh, dw, groups, Dg, Cg, K;
};

// Statistics and the map are float32, or float64 for float64 input (DESIGN §1).
inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline ConvGeom conv_geometry(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              int64_t groups, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, D, H, W), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (C, D/groups, kh, kw), got shape ", weight.sizes());
  TORCH_CHECK(m.dim() == 3, op, ": m must be 3-D (N, kh, kw), got shape ", m.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ", weight.scalar_type(),
              " must match x dtype ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(m.scalar_type()), op, ": m must be floating point, got ", m.scalar_type());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 elements");
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": stride must be positive, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": dilation must be positive, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be non-negative, got ", padding);
  ConvGeom g{};
  g.N = x.size(0);
  g.D = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.C = weight.size(0);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.T = g.kh * g.kw;
  g.groups = groups;
  TORCH_CHECK(g.D % groups == 0, op, ": in channels ", g.D, " not divisible by groups ", groups);
  TORCH_CHECK(g.C % groups == 0, op, ": out channels ", g.C, " not divisible by groups ", groups);
  TORCH_CHECK(weight.size(1) * groups == g.D, op, ": weight shape ", weight.sizes(), " expects ",
              weight.size(1) * groups, " input channels, x has ", g.D);
  TORCH_CHECK(g.kh > 0 && g.kw > 0, op, ": kernel size must be positive");
  TORCH_CHECK(m.size(0) == g.N && m.size(1) == g.kh && m.size(2) == g.kw, op, ": m must have shape (", g.N,
              ", ", g.kh, ", ", g.kw, "), got ", m.sizes());
  g.Dg = g.D / groups;
  g.Cg = g.C / groups;
  g.K = g.Dg * g.T;
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  const int64_t span_h = g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1;
  const int64_t span_w = g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, op, ": input (", g.H, "x", g.W, ") with padding ", padding,
              " is smaller than the dilated kernel (", g.kh, "x", g.kw, ", dilation ", dilation, ")");
  g.OH = span_h / g.sh + 1;
  g.OW = span_w / g.sw + 1;
  g.P = g.OH * g.OW;
  return g;
}

// The hypernetwork's parameters for input channels D and T taps: fc1_weight (K, 2D), fc1_bias (K),
// fc2_weight (T, K), fc2_bias (T), biases optional. Returns K, the number of hidden units.
inline int64_t hypernetwork_hidden(int64_t D, int64_t T, const at::Tensor& fc1_weight,
                                   const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                   const std::optional<at::Tensor>& fc2_bias, const char* op) {
  TORCH_CHECK(at::isFloatingType(fc1_weight.scalar_type()) && at::isFloatingType(fc2_weight.scalar_type()), op,
              ": fc1_weight and fc2_weight must be floating point");
  TORCH_CHECK(fc1_weight.dim() == 2 && fc1_weight.size(1) == 2 * D && fc1_weight.size(0) > 0, op,
              ": fc1_weight must have shape (K, 2*D) = (K, ", 2 * D, "), got ", fc1_weight.sizes());
  const int64_t K = fc1_weight.size(0);
  TORCH_CHECK(fc2_weight.dim() == 2 && fc2_weight.size(0) == T && fc2_weight.size(1) == K, op,
              ": fc2_weight must have shape (kh*kw, K) = (", T, ", ", K, "), got ", fc2_weight.sizes());
  const std::pair<const std::optional<at::Tensor>*, int64_t> biases[] = {{&fc1_bias, K}, {&fc2_bias, T}};
  for (const auto& [b, n] : biases) {
    if (!b->has_value() || !(*b)->defined()) continue;
    TORCH_CHECK(at::isFloatingType((*b)->scalar_type()), op, ": fc1_bias and fc2_bias must be floating point");
    TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == n, op, ": ", (b == &fc1_bias ? "fc1_bias" : "fc2_bias"),
                " must have shape (", n, "), got ", (*b)->sizes());
  }
  return K;
}

// grad_route only shapes shc::shc_conv2d's backward; the kernels check it and ignore it.
inline void check_grad_route(c10::string_view grad_route, const char* op) {
  TORCH_CHECK(grad_route == "both" || grad_route == "conv" || grad_route == "hyper", op,
              ": grad_route must be 'both', 'conv' or 'hyper', got '", grad_route, "'");
}

}  // namespace shc
