// shc::modulated_conv2d and its backward on the CPU: y[n] = conv2d(x[n], W * m[n], bias, ...), by
// the method choose_method picks (methods.h).
// Everything is computed in float (fp32/fp16/bf16 inputs) or double (fp64 inputs) on
// NCHW-contiguous copies; outputs are returned in x's dtype and x.suggest_memory_format().
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>

#include "args.h"
#include "cpu_util.h"
#include "depthwise.h"
#include "knobs.h"
#include "methods.h"
#include "ops.h"

namespace shc_cpu {
namespace {

template <typename T>
void forward_impl(const Geom& g, const T* x, const T* w, const T* m, const T* bias, T* y) {
  const Knobs k = read_knobs(false);
  if (g.N > 0) {
    const Method method = choose_method(g, k, sizeof(T), false);
    if (method == Method::kShift) return forward_shift<T>(g, k, x, w, m, bias, y);
    if constexpr (std::is_same_v<T, float>)
      if (method == Method::kDirect) return forward_direct(g, *k.direct, x, w, m, bias, y);
    if (method == Method::kTaps) return forward_taps<T>(g, k, x, w, m, bias, y);
    if (method == Method::kDepthwise)
      return depthwise::forward<T>(g, depthwise_isa(k), x, w, m, bias, y, nullptr);
  }
  forward_im2col<T>(g, k, x, w, m, bias, y);
}

}  // namespace

// dx (conv route), grad_weight, dm and grad_bias (db, C doubles); a null pointer is not computed.
template <typename T>
void backward_impl(const Geom& g, const T* dy, const T* x, const T* w, const T* m, T* dx,
                   T* gw, double* dm, double* db, const ChunkDone* done) {
  const bool need_gw = gw != nullptr;
  const bool need_cols_bwd = dx != nullptr || dm != nullptr;
  const int64_t CK = g.C * g.K;
  if (g.N == 0 || !(need_gw || need_cols_bwd)) {
    if (need_gw) std::fill(gw, gw + CK, T(0));
    if (db != nullptr) {  // nothing else needs the loop over dy: sum it alone
      std::fill(db, db + g.C, 0.0);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c) db[c] += sum_row(dy + (n * g.C + c) * g.P, g.P);
    }
    return;
  }
  const Knobs k = read_knobs(true);
  const Method method = choose_method(g, k, sizeof(T), true);
  if (method == Method::kShift || method == Method::kDirect)
    return backward_shift<T>(g, k, dy, x, w, m, dx, gw, dm, db, done,
                             method == Method::kDirect ? k.direct : nullptr);
  if (method == Method::kTaps) return backward_taps<T>(g, k, dy, x, w, m, dx, gw, dm, db, done);
  if (method == Method::kDepthwise)
    return depthwise::backward<T>(g, depthwise_isa(k), dy, x, w, m, dx, gw, dm, db, done);
  backward_im2col<T>(g, k, dy, x, w, m, dx, gw, dm, db, done);
}

template void backward_impl<float>(const Geom&, const float*, const float*, const float*, const float*, float*,
                                   float*, double*, double*, const ChunkDone*);
template void backward_impl<double>(const Geom&, const double*, const double*, const double*, const double*,
                                    double*, double*, double*, double*, const ChunkDone*);

at::Tensor modulated_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, "shc::modulated_conv2d");
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  const at::Tensor b = conv_bias(bias, g, ct, "shc::modulated_conv2d");
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().dtype(ct));
  if (g.N == 0) return finish(y, x.scalar_type(), fmt);
  at::Tensor xc = x.to(ct).contiguous();
  at::Tensor wc = weight.to(ct).contiguous();
  at::Tensor mc = m.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_modulated_conv2d_cpu", [&] {
    forward_impl<scalar_t>(g, xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
                           mc.const_data_ptr<scalar_t>(),
                           b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                           y.mutable_data_ptr<scalar_t>());
  });
  return finish(y, x.scalar_type(), fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const char* op = "shc::modulated_conv2d_backward";
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  check_grad_y(grad_y, g, op);
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  const bool need_dx = output_mask[0], need_gw = output_mask[1], need_dm = output_mask[2];

  at::Tensor dx_c, gw_c, dm_c;
  if (need_dx) dx_c = at::empty({g.N, g.D, g.H, g.W}, x.options().dtype(ct));
  if (need_gw) gw_c = at::empty(weight.sizes(), weight.options().dtype(ct));
  if (need_dm) dm_c = at::zeros({g.N, g.kh, g.kw}, m.options().dtype(at::kDouble));

  if (need_dx || need_gw || need_dm) {
    at::Tensor xc = x.to(ct).contiguous();
    at::Tensor wc = weight.to(ct).contiguous();
    at::Tensor mc = m.to(ct).contiguous();
    at::Tensor dyc = grad_y.to(ct).contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_modulated_conv2d_backward_cpu", [&] {
      backward_impl<scalar_t>(g, dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                              wc.const_data_ptr<scalar_t>(), mc.const_data_ptr<scalar_t>(),
                              need_dx ? dx_c.mutable_data_ptr<scalar_t>() : nullptr,
                              need_gw ? gw_c.mutable_data_ptr<scalar_t>() : nullptr,
                              need_dm ? dm_c.mutable_data_ptr<double>() : nullptr);
    });
  }
  at::Tensor dx = need_dx ? finish(dx_c, x.scalar_type(), fmt) : at::empty({0}, x.options());
  at::Tensor gw = need_gw ? finish(gw_c, weight.scalar_type(), at::MemoryFormat::Contiguous)
                          : at::empty({0}, weight.options());
  at::Tensor dm = need_dm ? dm_c.to(m.scalar_type()) : at::empty({0}, m.options());
  return std::make_tuple(dx, gw, dm);
}

}  // namespace shc_cpu
