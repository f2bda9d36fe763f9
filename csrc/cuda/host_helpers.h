// Host-side helpers shared by the CUDA launchers (shc_cuda.cu, weight_grad.cuh, fused_shc.cu):
// argument checks, conv geometry, the GEMM operands' layouts, ConvArgs from tensors.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>

#include "../conv_geometry.h"
#include "platform.h"
#include "conv_tile.cuh"

namespace shc_cuda {

using shc::compute_type;

inline void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(on_kernel_device(t), op, ": ", name, " must be a ", kDeviceName, " tensor for the CUDA kernel, got ",
              t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              like.device());
}

using Geom = shc::ConvGeom;

inline Geom make_geom(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      const char* op) {
  check_cuda(x, x, op, "x");
  check_cuda(weight, x, op, "weight");
  check_cuda(m, x, op, "m");
  const Geom g = shc::conv_geometry(x, weight, m, stride, padding, dilation, groups, op);
  // Row indices and in-sample offsets are int; element offsets are int64.
  // Strides too: the dx kernel divides by them as int.
  const int64_t big = std::max({g.N * g.P, g.N * g.H * g.W, g.C * g.Dg * g.T, g.H + g.ph + g.dh * g.kh,
                                g.W + g.pw + g.dw * g.kw, g.sh, g.sw});
  TORCH_CHECK(big < INT_MAX, op, ": problem too large for the CUDA kernel");
  TORCH_CHECK(groups <= 65535, op, ": at most 65535 groups are supported by the CUDA kernel");
  return g;
}

template <typename scalar_t, typename A>
ConvArgs<scalar_t, A> conv_args(const Geom& g, const at::Tensor& src, const at::Tensor& bt, const at::Tensor& m,
                                const at::Tensor& bias, const at::Tensor& out, bool transposed) {
  ConvArgs<scalar_t, A> a{};
  a.src = src.const_data_ptr<scalar_t>();
  a.ss0 = src.stride(0);
  a.ss1 = src.stride(1);
  a.ss2 = src.stride(2);
  a.ss3 = src.stride(3);
  a.bt = bt.const_data_ptr<scalar_t>();
  a.m = m.const_data_ptr<A>();
  a.bias = bias.defined() ? bias.const_data_ptr<A>() : nullptr;
  a.out = out.mutable_data_ptr<scalar_t>();
  a.os0 = out.stride(0);
  a.os1 = out.stride(1);
  a.os2 = out.stride(2);
  a.os3 = out.stride(3);
  a.N = static_cast<int>(g.N);
  a.Kdim = static_cast<int>(transposed ? g.Cg : g.Dg);
  a.Ncols = static_cast<int>(transposed ? g.Dg : g.Cg);
  a.RH = static_cast<int>(transposed ? g.H : g.OH);
  a.RW = static_cast<int>(transposed ? g.W : g.OW);
  a.SH = static_cast<int>(transposed ? g.OH : g.H);
  a.SW = static_cast<int>(transposed ? g.OW : g.W);
  a.kh = static_cast<int>(g.kh);
  a.kw = static_cast<int>(g.kw);
  a.sh = static_cast<int>(g.sh);
  a.sw = static_cast<int>(g.sw);
  a.ph = static_cast<int>(g.ph);
  a.pw = static_cast<int>(g.pw);
  a.dh = static_cast<int>(g.dh);
  a.dw = static_cast<int>(g.dw);
  a.transposed = transposed;
  a.a_kfast = src.stride(1) == 1 && src.stride(3) != 1;
  a.o_rowfast = out.stride(3) == 1;
  return a;
}

inline at::Tensor bias_arg(const std::optional<at::Tensor>& bias, const at::Tensor& x, const Geom& g, at::ScalarType ct,
                    const char* op) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_cuda(*bias, x, op, "bias");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.C, op, ": bias must have shape (", g.C, "), got ",
              bias->sizes());
  TORCH_CHECK(at::isFloatingType(bias->scalar_type()), op, ": bias must be floating point");
  return bias->to(ct).contiguous();
}

// (C, Dg, kh, kw) -> (G, kh, kw, Dg, Cg) for the forward, (G, kh, kw, Cg, Dg) for dx: the
// GEMM's B operand with its columns contiguous.
inline at::Tensor weight_operand(const at::Tensor& weight, const Geom& g, bool transposed) {
  at::Tensor w5 = weight.contiguous().view({g.groups, g.Cg, g.Dg, g.kh, g.kw});
  return (transposed ? w5.permute({0, 3, 4, 1, 2}) : w5.permute({0, 3, 4, 2, 1})).contiguous();
}

}  // namespace shc_cuda
