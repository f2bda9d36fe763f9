// The whole layer on the CPU: the kernels of shc::shc_conv2d (statistics, hypernetwork and the
// modulated conv, fused where the conv takes the taps or the direct method) and of its one-call
// first-order backward, shc::shc_conv2d_backward.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "../conv_geometry.h"
#include "args.h"
#include "cpu_util.h"
#include "depthwise.h"
#include "hyper.h"
#include "knobs.h"
#include "methods.h"
#include "ops.h"
#include "stats.h"

namespace shc_cpu {
namespace {

// shc::shc_conv2d's forward where the conv takes the taps method: each block's statistics and map
// are computed inside the conv's loop, from the transposed block it gathers from, so x is read
// from memory once, not twice (a stride-2 layer into a 4x4-8x8 plane reads four input values per
// output position, and a separate statistics pass is a visible part of such a layer's forward). shc_conv2d_direct does the same for the direct method.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_taps(
    const Geom& g, const Knobs& k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& b,
    const HyperParams& hp, int64_t hid, double eps, at::ScalarType ct) {
  const at::TensorOptions o = x.options().dtype(ct);
  at::Tensor z = at::empty({g.N, 2 * g.D}, o), h = at::empty({g.N, hid}, o), m = at::empty({g.N, g.kh, g.kw}, o);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, o);
  const at::Tensor xc = x.to(ct).contiguous(), wc = weight.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_cpu_taps", [&] {
    using S = scalar_t;
    S *zp = z.mutable_data_ptr<S>(), *mp = m.mutable_data_ptr<S>();
    const BlockMap<S> block_map = [&](const S* xs, int64_t n0, int64_t nb, S* mt) {
      lane_stats<S>(xs, g.D, g.H * g.W, nb, eps, zp + n0 * 2 * g.D);
      hp.rows<S>(z, n0, nb, k.brgemm, h, m);
      taps_map(g, mp, n0, nb, mt);
    };
    forward_taps<S>(g, k, xc.const_data_ptr<S>(), wc.const_data_ptr<S>(), nullptr,
                    b.defined() ? b.const_data_ptr<S>() : nullptr, y.mutable_data_ptr<S>(), &block_map);
  });
  return std::make_tuple(finish(y, x.scalar_type(), x.suggest_memory_format()), m, z, h);
}

// shc::shc_conv2d's forward where the conv takes the direct method (fp32): as shc_conv2d_taps, the
// statistics and map per block of samples inside the conv's loop (forward_direct's block_map),
// so x is read from memory once. Measured against the separate pass in one process, alternating
// (one thread, the op's forward; median of the paired ratios over 41 pairs): batch 128,
// 16>32@28/2 0.92-0.96, 32>32@14 0.98-0.99, 16>16@28 0.98, fwd+bwd 16>32@28/2 0.98; batch 32,
// where x stays in cache: 16>32@28/2 and 32>32@14 1.00-1.01, 64>64@14 and 128>128@14 0.99.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_direct(const Geom& g, const Knobs& k,
                                                                             const at::Tensor& x,
                                                                             const at::Tensor& weight,
                                                                             const at::Tensor& b,
                                                                             const HyperParams& hp, int64_t hid,
                                                                             double eps) {
  const at::TensorOptions o = x.options().dtype(at::kFloat);
  at::Tensor z = at::empty({g.N, 2 * g.D}, o), h = at::empty({g.N, hid}, o), m = at::empty({g.N, g.kh, g.kw}, o);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, o);
  const at::Tensor xc = x.to(at::kFloat).contiguous(), wc = weight.to(at::kFloat).contiguous();
  const float* xp = xc.const_data_ptr<float>();
  float* zp = z.mutable_data_ptr<float>();
  const int64_t D = g.D, HW = g.H * g.W;
  const SampleBlockMap block_map = [&](int64_t n0, int64_t nb) {
    float* zb = zp + n0 * 2 * D;  // z = cat(mu, sigma) of the block's samples
    stats_impl<float>(xp + n0 * D * HW, nb * D, D, HW, eps, zb, zb + D, 2 * D);
    hp.rows<float>(z, n0, nb, k.brgemm, h, m);
  };
  forward_direct(g, *k.direct, xp, wc.const_data_ptr<float>(), m.const_data_ptr<float>(),
                 b.defined() ? b.const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(), &block_map);
  return std::make_tuple(finish(y, x.scalar_type(), x.suggest_memory_format()), m, z, h);
}

// shc::shc_conv2d's forward where the conv takes the depthwise method (fp32 or fp64): as
// shc_conv2d_direct, each sample's statistics and map are computed right before its planes are
// convolved (depthwise::forward's before()), so x is read from memory once.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_depthwise(
    const Geom& g, const Knobs& k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& b,
    const HyperParams& hp, int64_t hid, double eps, at::ScalarType ct) {
  const at::TensorOptions o = x.options().dtype(ct);
  at::Tensor z = at::empty({g.N, 2 * g.D}, o), h = at::empty({g.N, hid}, o), m = at::empty({g.N, g.kh, g.kw}, o);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, o);
  const at::Tensor xc = x.to(ct).contiguous(), wc = weight.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_cpu_depthwise", [&] {
    using S = scalar_t;
    const S* xp = xc.const_data_ptr<S>();
    S* zp = z.mutable_data_ptr<S>();
    const int64_t D = g.D, HW = g.H * g.W;
    const depthwise::SampleFn before = [&](int64_t n0, int64_t nb) {
      S* zb = zp + n0 * 2 * D;  // z = cat(mu, sigma) of the samples
      stats_impl<S>(xp + n0 * D * HW, nb * D, D, HW, eps, zb, zb + D, 2 * D);
      hp.rows<S>(z, n0, nb, k.brgemm, h, m);
    };
    depthwise::forward<S>(g, depthwise_isa(k), xp, wc.const_data_ptr<S>(), m.const_data_ptr<S>(),
                          b.defined() ? b.const_data_ptr<S>() : nullptr, y.mutable_data_ptr<S>(), &before);
  });
  return std::make_tuple(finish(y, x.scalar_type(), x.suggest_memory_format()), m, z, h);
}

}  // namespace

// The whole layer (shc::shc_conv2d): statistics, the hypernetwork (hyper_rows), then the modulated
// conv; inside the conv's loop where it takes the taps method (shc_conv2d_taps) or the direct one
// (shc_conv2d_direct). Also returns m,
// z = cat(mu, sigma) and h for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
    const std::optional<at::Tensor>& fc2_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, c10::string_view grad_route) {
  const char* op = "shc::shc_conv2d";
  shc::check_grad_route(grad_route, op);
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, op, ": x and weight must be 4-D, got ", x.sizes(), " and ",
              weight.sizes());
  const std::pair<const at::Tensor*, const char*> dense[] = {
      {&x, "x"}, {&weight, "weight"}, {&fc1_weight, "fc1_weight"}, {&fc2_weight, "fc2_weight"}};
  for (const auto& [t, name] : dense) check_cpu(*t, name);
  const std::pair<const std::optional<at::Tensor>*, const char*> optional[] = {
      {&bias, "bias"}, {&fc1_bias, "fc1_bias"}, {&fc2_bias, "fc2_bias"}};
  for (const auto& [t, name] : optional)
    if (t->has_value() && (*t)->defined()) check_cpu(**t, name);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  // Geometry first (a map of the right shape stands in for m), so a bad conv fails before any work.
  const Geom g =
      make_geom(x, weight, at::empty({x.size(0), kh, kw}, x.options()), stride, padding, dilation, groups, op);
  const int64_t hid = shc::hypernetwork_hidden(x.size(1), kh * kw, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op);
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": x must have a non-empty H x W plane, got ", x.sizes());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const Knobs k = read_knobs(false);
  const HyperParams hp(fc1_weight, fc1_bias, fc2_weight, fc2_bias, ct);
  const Method method = g.N > 0 ? choose_method(g, k, at::elementSize(ct), false) : Method::kIm2col;
  if (method == Method::kTaps) return shc_conv2d_taps(g, k, x, weight, conv_bias(bias, g, ct, op), hp, hid, eps, ct);
  if (method == Method::kDirect && ct == at::kFloat)
    return shc_conv2d_direct(g, k, x, weight, conv_bias(bias, g, ct, op), hp, hid, eps);
  if (method == Method::kDepthwise)
    return shc_conv2d_depthwise(g, k, x, weight, conv_bias(bias, g, ct, op), hp, hid, eps, ct);
  const int64_t N = x.size(0), D = x.size(1), HW = x.size(2) * x.size(3);
  const at::TensorOptions o = x.options().dtype(ct);
  // z = cat(mu, sigma), h = relu(z fc1^T + b1), m = sigmoid(h fc2^T + b2), written in place
  at::Tensor z = at::empty({N, 2 * D}, o), h = at::empty({N, hid}, o), m = at::empty({N, kh, kw}, o);
  if (N > 0) {
    const at::Tensor xc = x.to(ct).contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_cpu_stats", [&] {
      scalar_t* zp = z.mutable_data_ptr<scalar_t>();
      if (D > 0) stats_impl<scalar_t>(xc.const_data_ptr<scalar_t>(), N * D, D, HW, eps, zp, zp + D, 2 * D);
      hp.rows<scalar_t>(z, 0, N, k.brgemm, h, m);
    });
  }
  at::Tensor y = modulated_conv2d_cpu(x, weight, m, bias, stride, padding, dilation, groups);
  return std::make_tuple(y, m, z, h);
}

// shc::shc_conv2d's whole backward in one call (docs/design.md §3): the conv's dx (conv route),
// grad_weight, grad_bias and dm in one pass over the chunks; as each chunk of samples completes,
// on its worker thread, the hypernetwork backward for those samples (sigmoid, fc2, relu, fc1,
// in double) and the hypernetwork route of dx,
//   dx[n,d,q] (+)= dmu[n,d]/HW + dsigma[n,d] * (x[n,d,q] - mu[n,d]) / (HW * sigma[n,d]),
// applied while that dx is still in cache; then the hypernetwork's parameter gradients. Masked-off
// outputs come back empty. Only for first-order backward: the Python side composes the
// differentiable ops when a graph of the backward is wanted.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
shc_conv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& m, const at::Tensor& z, const at::Tensor& h,
                        const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups, c10::string_view grad_route, std::array<bool, 7> output_mask) {
  const char* op = "shc::shc_conv2d_backward";
  shc::check_grad_route(grad_route, op);
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  check_grad_y(grad_y, g, op);
  for (const auto* t : {&z, &h, &fc1_weight, &fc2_weight}) check_cpu(*t, "z, h, fc1_weight and fc2_weight");
  const int64_t K = shc::hypernetwork_hidden(g.D, g.T, fc1_weight, std::nullopt, fc2_weight, std::nullopt, op);
  TORCH_CHECK(z.dim() == 2 && z.size(0) == g.N && z.size(1) == 2 * g.D && at::isFloatingType(z.scalar_type()),
              op, ": z must be floating point of shape (", g.N, ", ", 2 * g.D, "), got ", z.sizes());
  TORCH_CHECK(h.dim() == 2 && h.size(0) == g.N && h.size(1) == K && at::isFloatingType(h.scalar_type()), op,
              ": h must be floating point of shape (", g.N, ", ", K, "), got ", h.sizes());
  const auto [need_x, need_w, need_b, need_f1w, need_f1b, need_f2w, need_f2b] = output_mask;
  const bool conv_x = need_x && grad_route != "hyper";
  const bool hyper_x = need_x && grad_route != "conv";
  const bool need_map = hyper_x || need_f1w || need_f1b || need_f2w || need_f2b;
  const at::ScalarType ct = compute_type(x.scalar_type());
  const auto dbl = at::TensorOptions().dtype(at::kDouble);

  at::Tensor dx_c, gw_c;
  if (need_x) dx_c = at::empty({g.N, g.D, g.H, g.W}, x.options().dtype(ct));
  if (need_w) gw_c = at::empty(weight.sizes(), weight.options().dtype(ct));
  at::Tensor db = need_b ? at::empty({g.C}, dbl) : at::Tensor();
  at::Tensor dm = need_map ? at::zeros({g.N, g.T}, dbl) : at::Tensor();
  // Per sample, after the sigmoid (gl) and after the relu (gpre): the fc gradients' left factors.
  at::Tensor gl = need_map ? at::empty({g.N, g.T}, dbl) : at::Tensor();
  at::Tensor gpre = need_map ? at::empty({g.N, K}, dbl) : at::Tensor();
  // The hypernetwork's backward runs in double (the statistics' dtype is float32 or float64).
  const at::Tensor zd = z.to(at::kDouble).contiguous(), hd = h.to(at::kDouble).contiguous();
  {
    const at::Tensor xc = x.to(ct).contiguous(), wc = weight.to(ct).contiguous();
    const at::Tensor mc = m.to(ct).contiguous(), dyc = grad_y.to(ct).contiguous();
    const at::Tensor md = m.to(at::kDouble).contiguous();
    // fc1 in the compute type, as it is (fp32: no copy): gz's GEMM per chunk reads it in place.
    const at::Tensor f1c = fc1_weight.to(ct).contiguous(), f2d = fc2_weight.to(at::kDouble).contiguous();
    const bool brgemm = ct == at::kFloat && read_knobs(true).brgemm;
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_backward_cpu", [&] {
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      scalar_t* dxp = need_x ? dx_c.mutable_data_ptr<scalar_t>() : nullptr;
      const int64_t HW = g.H * g.W, D = g.D, T = g.T;
      // The hypernetwork backward of samples [n0, n0 + nb) and their dx's hypernetwork route.
      const ChunkDone finish_samples = [&](int64_t n0, int64_t nb) {
        for (int64_t n = n0; n < n0 + nb; ++n) {
          const double* mv = md.const_data_ptr<double>() + n * T;
          double* gln = gl.mutable_data_ptr<double>() + n * T;
          const double* dmn = dm.const_data_ptr<double>() + n * T;
          for (int64_t t = 0; t < T; ++t) gln[t] = dmn[t] * mv[t] * (1.0 - mv[t]);
          double* gp = gpre.mutable_data_ptr<double>() + n * K;
          const double* hn = hd.const_data_ptr<double>() + n * K;
          const double* f2 = f2d.const_data_ptr<double>();
          for (int64_t k = 0; k < K; ++k) gp[k] = 0.0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t k = 0; k < K; ++k) gp[k] += gln[t] * f2[t * K + k];
          for (int64_t k = 0; k < K; ++k) gp[k] = hn[k] > 0.0 ? gp[k] : 0.0;
        }
        if (!hyper_x) return;
        // gz (nb x 2D) = gpre (nb x K) @ fc1_weight (K x 2D): one GEMM for the chunk, in the compute
        // type. In double for fp32 too, MKL's dgemm packed a double copy of fc1 (2D x D/2 at the default
        // width) on every chunk, after converting it on every call: at 672 channels and 7x7 planes
        // (batch 32, one thread) a third of the layer's backward. fp32 (brgemm, fc1 read in place)
        // rounds gpre to fp32 and sums D/2 products in fp32 for a dx that is fp32 itself.
        std::vector<scalar_t> gpc(static_cast<size_t>(nb * K)), gz(static_cast<size_t>(nb * 2 * D));
        const double* gpn = gpre.const_data_ptr<double>() + n0 * K;
        for (int64_t i = 0; i < nb * K; ++i) gpc[i] = static_cast<scalar_t>(gpn[i]);
        mm<scalar_t>(nb, 2 * D, K, gpc.data(), K, f1c.const_data_ptr<scalar_t>(), 2 * D, gz.data(), 2 * D, false,
                     brgemm);
        for (int64_t n = n0; n < n0 + nb; ++n) {
          const scalar_t* gzn = gz.data() + (n - n0) * 2 * D;
          const double* zn = zd.const_data_ptr<double>() + n * 2 * D;
          for (int64_t d = 0; d < D; ++d)
            stats_backward_plane(dxp + (n * D + d) * HW, xp + (n * D + d) * HW, HW, gzn[d], gzn[D + d], zn[d],
                                 zn[D + d], conv_x);
        }
      };
      backward_impl<scalar_t>(g, dyc.const_data_ptr<scalar_t>(), xp, wc.const_data_ptr<scalar_t>(),
                              mc.const_data_ptr<scalar_t>(), conv_x ? dxp : nullptr,
                              need_w ? gw_c.mutable_data_ptr<scalar_t>() : nullptr,
                              need_map ? dm.mutable_data_ptr<double>() : nullptr,
                              need_b ? db.mutable_data_ptr<double>() : nullptr,
                              need_map ? &finish_samples : nullptr);
    });
  }
  const at::MemoryFormat fmt = x.suggest_memory_format();
  const auto empty = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  const auto as = [](const at::Tensor& grad, const at::Tensor& like) { return grad.to(like.scalar_type()); };
  at::Tensor gx = need_x ? finish(dx_c, x.scalar_type(), fmt) : empty(x);
  at::Tensor gw = need_w ? finish(gw_c, weight.scalar_type(), at::MemoryFormat::Contiguous) : empty(weight);
  at::Tensor gb = need_b ? as(db, weight) : empty(weight);
  at::Tensor gf2w = need_f2w ? as(gl.t().mm(hd), fc2_weight) : empty(fc2_weight);
  at::Tensor gf2b = need_f2b ? as(gl.sum(0), fc2_weight) : empty(fc2_weight);
  // in the compute type (fp32: one sgemm, N products per value; no double copy of the 2D x D/2 result)
  at::Tensor gf1w = need_f1w ? as(gpre.to(ct).t().mm(z.to(ct)), fc1_weight) : empty(fc1_weight);
  at::Tensor gf1b = need_f1b ? as(gpre.sum(0), fc1_weight) : empty(fc1_weight);
  return std::make_tuple(gx, gw, gb, gf1w, gf1b, gf2w, gf2b);
}

}  // namespace shc_cpu
