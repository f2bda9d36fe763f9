// Host-side helpers shared by the CUDA launchers (shc_cuda.cu, fused_shc.cu): argument checks,
// conv geometry, the GEMM operands' layouts, ConvArgs from tensors.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>

#include "shc_cuda.cuh"

namespace shc_cuda {

inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              like.device());
}

inline int sm_count(int device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  return std::max(v, 1);
}

struct Geom {
  int64_t N, D, H, W, C, kh, kw, T, OH, OW, P, sh, sw, ph, pw, dh, dw, groups, Dg, Cg;
};

inline Geom make_geom(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
               const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, D, H, W), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (C, D/groups, kh, kw), got shape ", weight.sizes());
  TORCH_CHECK(m.dim() == 3, op, ": m must be 3-D (N, kh, kw), got shape ", m.sizes());
  check_cuda(x, x, op, "x");
  check_cuda(weight, x, op, "weight");
  check_cuda(m, x, op, "m");
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
  Geom g{};
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
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.OH = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1 >= 0 && g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1 >= 0 &&
                  g.OH > 0 && g.OW > 0,
              op, ": input (", g.H, "x", g.W, ") with padding ", padding, " is smaller than the ",
              "dilated kernel (", g.kh, "x", g.kw, ", dilation ", dilation, ")");
  g.P = g.OH * g.OW;
  // Row indices and in-sample offsets are int; element offsets are int64.
  const int64_t big = std::max({g.N * g.P, g.N * g.H * g.W, g.C * g.Dg * g.T, g.H + g.ph + g.dh * g.kh,
                                g.W + g.pw + g.dw * g.kw});
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
