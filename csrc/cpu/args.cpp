// Argument checking and layout handling (args.h).
#include "args.h"

#include <algorithm>
#include <climits>

namespace shc_cpu {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "shc::", name, " must be a CPU tensor for the CPU kernel, got ",
              t.device());
}

Geom make_geom(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
               int64_t groups, const char* op) {
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  check_cpu(m, "m");
  const Geom g = shc::conv_geometry(x, weight, m, stride, padding, dilation, groups, op);
  TORCH_CHECK(g.K < INT_MAX && g.C < INT_MAX && g.P * std::max<int64_t>(1, g.N) < INT_MAX, op,
              ": problem too large for the CPU kernel");
  return g;
}

at::Tensor finish(const at::Tensor& src, at::ScalarType dtype, at::MemoryFormat fmt) {
  // Only the plain NCHW case is returned as is: for channels_last the strides must be exactly
  // those of at::empty(..., memory_format=ChannelsLast) (H = W = 1 is contiguous both ways).
  if (src.scalar_type() == dtype && fmt == at::MemoryFormat::Contiguous) return src;
  at::Tensor out = at::empty(src.sizes(), src.options().dtype(dtype).memory_format(fmt));
  out.copy_(src);
  return out;
}

void check_grad_y(const at::Tensor& grad_y, const Geom& g, const char* op) {
  check_cpu(grad_y, "grad_y");
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == g.N && grad_y.size(1) == g.C &&
                  grad_y.size(2) == g.OH && grad_y.size(3) == g.OW,
              op, ": grad_y must have shape (", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW, "), got ",
              grad_y.sizes());
  TORCH_CHECK(at::isFloatingType(grad_y.scalar_type()), op, ": grad_y must be floating point");
}

at::Tensor conv_bias(const std::optional<at::Tensor>& bias, const Geom& g, at::ScalarType ct, const char* op) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_cpu(*bias, "bias");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.C, op, ": bias must have shape (", g.C, "), got ",
              bias->sizes());
  TORCH_CHECK(at::isFloatingType(bias->scalar_type()), op, ": bias must be floating point");
  return bias->to(ct).contiguous();
}

}  // namespace shc_cpu
