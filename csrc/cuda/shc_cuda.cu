// The CUDA kernels of four `shc` ops (schemas in csrc/shc.cpp; same semantics as csrc/cpu): their
// launchers, argument checks and registration. The kernels live by family:
//   channel_stats            channel_stats.cuh: a wide two-stage pass (pixel chunks spread over
//                            the grid, pivot-shifted sums in double, then a combine kernel).
//   channel_stats_backward   channel_stats.cuh: elementwise, written in x.suggest_memory_format().
//   modulated_conv2d         conv_tile.cuh: implicit GEMM, the m[n,t] scale applied per tap, bias
//                            fused; fp16/bf16 on tensor cores (ldmatrix + mma.sync, fp32
//                            accumulation), fp32 and fp64 SIMT.
//   modulated_conv2d_backward
//     dx (conv route): the same conv tile run as a transposed implicit GEMM over dy with the same
//                      per-tap scaling (rows = input pixels, columns = input channels).
//     dW and dm:       weight_grad.cuh, one weight-gradient kernel (fp16/bf16: the conv tile's
//                      ldmatrix + mma.sync engine fed by cp.async; fp32/fp64 SIMT).
// Never materializes per-sample kernels or an unfolded input: the only extra buffers are the
// weight reordered to (G, kh, kw, Dg, Cg) / (G, kh, kw, Cg, Dg) and the fp32 dW / dm accumulators.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "channel_stats.cuh"
#include "conv_tile.cuh"
#include "host_helpers.h"
#include "weight_grad.cuh"

namespace shc_cuda {
namespace {

// ------------------------------------------------------------------------------------------
// Launchers and argument checks of the four ops.
at::Tensor modulated_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "shc::modulated_conv2d";
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  const DeviceGuard guard(x.device());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::Tensor b = bias_arg(bias, x, g, ct, op);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(x.suggest_memory_format()));
  if (y.numel() == 0) return y;
  const at::Tensor mc = m.to(ct).contiguous();
  const at::Tensor bt = weight_operand(weight, g, false);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_modulated_conv2d_cuda", [&] {
    using A = typename ConvCfg<scalar_t>::A;
    launch_conv<scalar_t>(conv_args<scalar_t, A>(g, x, bt, mc, b, y, false), g.groups, stream);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const char* op = "shc::modulated_conv2d_backward";
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  check_cuda(grad_y, x, op, "grad_y");
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == g.N && grad_y.size(1) == g.C && grad_y.size(2) == g.OH &&
                  grad_y.size(3) == g.OW,
              op, ": grad_y must have shape (", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW, "), got ", grad_y.sizes());
  TORCH_CHECK(at::isFloatingType(grad_y.scalar_type()), op, ": grad_y must be floating point");
  const DeviceGuard guard(x.device());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const bool need_dx = output_mask[0], need_gw = output_mask[1], need_dm = output_mask[2];
  const at::Tensor dy = grad_y.scalar_type() == x.scalar_type() ? grad_y : grad_y.to(x.scalar_type());
  const cudaStream_t stream = current_stream();
  at::Tensor mc;
  if (need_dx || need_gw || need_dm) mc = m.to(ct).contiguous();

  // W as (G, kh, kw, Cg, Dg): the dx's B operand, and the dm's W tiles.
  const at::Tensor bt = need_dx || need_dm ? weight_operand(weight, g, true) : at::Tensor();
  at::Tensor dx = at::empty({0}, x.options());
  if (need_dx) {
    dx = at::empty(x.sizes(), x.options().memory_format(x.suggest_memory_format()));
    if (g.N > 0 && g.Cg > 0 && dx.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_conv_dx_cuda", [&] {
        using A = typename ConvCfg<scalar_t>::A;
        launch_conv<scalar_t>(conv_args<scalar_t, A>(g, dy, bt, mc, at::Tensor(), dx, true), g.groups, stream);
      });
    } else {
      dx.zero_();
    }
  }

  at::Tensor gw_acc, dm_acc;
  if (need_gw) gw_acc = at::zeros({g.kh, g.kw, g.C, g.Dg}, weight.options().dtype(ct));  // tap-major
  if (need_dm) dm_acc = at::zeros({g.N, g.T}, x.options().dtype(ct));
  if ((need_gw || need_dm) && g.N > 0 && g.Cg > 0 && g.Dg > 0) {
    at::globalContext().alertNotDeterministic(
        "shc::modulated_conv2d_backward (CUDA kernel) when the weight or m needs a gradient: dW and dm are "
        "summed with atomics, in an order that varies from run to run");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_conv_dw_cuda", [&] {
      launch_weight_grad<scalar_t>(g, x, dy, bt, mc, gw_acc, dm_acc, need_gw, need_dm, stream, op);
    });
  }
  const at::Tensor gw =
      need_gw ? gw_acc.permute({2, 3, 0, 1}).to(weight.scalar_type()).contiguous() : at::empty({0}, weight.options());
  const at::Tensor dm = need_dm ? dm_acc.view({g.N, g.kh, g.kw}).to(m.scalar_type()) : at::empty({0}, m.options());
  return std::make_tuple(dx, gw, dm);
}

std::tuple<at::Tensor, at::Tensor> channel_stats_cuda(const at::Tensor& x, double eps) {
  const char* op = "shc::channel_stats";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, D, H, W), got shape ", x.sizes());
  check_cuda(x, x, op, "x");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": x must have a non-empty H x W plane, got ", x.sizes());
  TORCH_CHECK(x.size(2) * x.size(3) < INT_MAX && x.size(0) * x.size(1) < INT_MAX, op,
              ": problem too large for the CUDA kernel");
  const DeviceGuard guard(x.device());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor mu = at::empty({N, D}, x.options().dtype(ct));
  at::Tensor sigma = at::empty({N, D}, x.options().dtype(ct));
  if (N * D == 0) return std::make_tuple(mu, sigma);
  const cudaStream_t stream = current_stream();
  const int64_t H = x.size(2), W = x.size(3), HW = H * W;
  // The wide pass needs the plane's pixels on one stride sq (q = h * W + w).
  const int64_t sq = W == 1 ? x.stride(2) : x.stride(3);
  const bool flat = H == 1 || W == 1 || x.stride(2) == W * x.stride(3);
  if (!flat) {
    const int DX = (x.stride(1) == 1 && D > 1) ? 32 : 1;
    const int64_t blocks = N * ((D + DX - 1) / DX);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_channel_stats_cuda", [&] {
      using A = typename ConvCfg<scalar_t>::A;
      launch(stats_kernel<scalar_t, A>, static_cast<unsigned>(blocks), 256, 0, stream,
             x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3), static_cast<int>(N),
             static_cast<int>(D), static_cast<int>(H), static_cast<int>(W), static_cast<A>(eps), DX,
             mu.mutable_data_ptr<A>(), sigma.mutable_data_ptr<A>());
    });
    return std::make_tuple(mu, sigma);
  }
  const bool cols = x.stride(1) == 1 && D > 1;  // channels contiguous (channels_last)
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  const int target = 4 * sm_count(x.get_device());  // blocks of the first stage
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_channel_stats_cuda", [&] {
    using A = typename ConvCfg<scalar_t>::A;
    constexpr int V = 16 / sizeof(scalar_t);
    const bool aligned = reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0 && s0 % V == 0;
    const bool vec = aligned && (cols ? D % V == 0 && sq % V == 0 : sq == 1 && HW % V == 0 && s1 % V == 0);
    const int vec_n = vec ? V : 1;
    // Blocks per sample before splitting the pixels, and the pixels one block step covers.
    int DL = 1;
    while (cols && DL < 32 && DL * vec_n < D) DL *= 2;
    const int64_t dblocks = cols ? (D + DL * vec_n - 1) / (DL * vec_n) : (D + kStatsThreads / 32 - 1) / (kStatsThreads / 32);
    const int64_t unit = cols ? kStatsThreads / DL : 32 * vec_n;
    int64_t split = std::max<int64_t>(1, (target + N * dblocks - 1) / (N * dblocks));
    split = std::min<int64_t>({split, 64, (HW + unit - 1) / unit});
    int64_t chunk = (HW + split - 1) / split;
    chunk = (chunk + vec_n - 1) / vec_n * vec_n;
    split = (HW + chunk - 1) / chunk;
    TORCH_CHECK(N * dblocks < INT_MAX, op, ": problem too large for the CUDA kernel");
    const at::Tensor part = at::empty({2 * split + 1, N * D}, x.options().dtype(at::kDouble));  // channel_stats.cuh
    const dim3 grid(static_cast<unsigned>(N * dblocks), static_cast<unsigned>(split));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    double* pp = part.mutable_data_ptr<double>();
    const int d = static_cast<int>(D), hw = static_cast<int>(HW), c = static_cast<int>(chunk), sp = static_cast<int>(split);
    const int64_t nd = N * D;
    if (cols && vec)
      launch(stats_cols_kernel<scalar_t, A, V>, grid, kStatsThreads, 0, stream, xp, s0, s1, sq, d, hw, c, sp, DL, nd, pp);
    else if (cols)
      launch(stats_cols_kernel<scalar_t, A, 1>, grid, kStatsThreads, 0, stream, xp, s0, s1, sq, d, hw, c, sp, DL, nd, pp);
    else if (vec)
      launch(stats_rows_kernel<scalar_t, A, V>, grid, kStatsThreads, 0, stream, xp, s0, s1, sq, d, hw, c, sp, nd, pp);
    else
      launch(stats_rows_kernel<scalar_t, A, 1>, grid, kStatsThreads, 0, stream, xp, s0, s1, sq, d, hw, c, sp, nd, pp);
    launch(stats_combine_kernel<A>, static_cast<unsigned>((nd + kStatsThreads - 1) / kStatsThreads), kStatsThreads, 0,
           stream, nd, hw, sp, static_cast<const double*>(pp), static_cast<A>(eps), mu.mutable_data_ptr<A>(),
           sigma.mutable_data_ptr<A>());
  });
  return std::make_tuple(mu, sigma);
}

at::Tensor channel_stats_backward_cuda(const at::Tensor& grad_mu, const at::Tensor& grad_sigma, const at::Tensor& x,
                                       const at::Tensor& mu, const at::Tensor& sigma) {
  const char* op = "shc::channel_stats_backward";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, D, H, W), got shape ", x.sizes());
  check_cuda(x, x, op, "x");
  check_cuda(grad_mu, x, op, "grad_mu");
  check_cuda(grad_sigma, x, op, "grad_sigma");
  check_cuda(mu, x, op, "mu");
  check_cuda(sigma, x, op, "sigma");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point");
  const int64_t N = x.size(0), D = x.size(1), H = x.size(2), W = x.size(3);
  for (const at::Tensor* t : {&grad_mu, &grad_sigma, &mu, &sigma}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == N && t->size(1) == D, op,
                ": grad_mu, grad_sigma, mu and sigma must have shape (", N, ", ", D, "), got ", t->sizes());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": statistics must be floating point");
  }
  TORCH_CHECK(D < INT_MAX && H < INT_MAX && W < INT_MAX, op, ": problem too large for the CUDA kernel");
  const DeviceGuard guard(x.device());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  const int64_t total = dx.numel();
  if (total == 0) return dx;
  const at::Tensor gm = grad_mu.to(ct).contiguous(), gs = grad_sigma.to(ct).contiguous();
  const at::Tensor muc = mu.to(ct).contiguous(), sc = sigma.to(ct).contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  // Below fp64, mean(x) - mu per plane in double: the error of the saved mu, which the kernel moves
  // out of x - mu (see stats_backward_kernel). One more read of x, reduced by ATen.
  const at::Tensor r = ct == at::kDouble
                           ? at::Tensor()
                           : at::sum(x, {2, 3}, /*keepdim=*/false, at::kDouble).div_(static_cast<double>(H * W))
                                 .sub_(muc.to(at::kDouble)).contiguous();
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_channel_stats_backward_cuda", [&] {
    using A = typename ConvCfg<scalar_t>::A;
    launch(stats_backward_kernel<scalar_t, A>, static_cast<unsigned>(blocks), 256, 0, stream, gm.const_data_ptr<A>(),
           gs.const_data_ptr<A>(), x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
           muc.const_data_ptr<A>(), sc.const_data_ptr<A>(), r.defined() ? r.const_data_ptr<double>() : nullptr,
           total, static_cast<int>(D), static_cast<int>(H),
           static_cast<int>(W), cl, dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}

}  // namespace
}  // namespace shc_cuda

SHC_CUDA_LIBRARY_IMPL(m) {
  m.impl("channel_stats", &shc_cuda::channel_stats_cuda);
  m.impl("channel_stats_backward", &shc_cuda::channel_stats_backward_cuda);
  m.impl("modulated_conv2d", &shc_cuda::modulated_conv2d_cuda);
  m.impl("modulated_conv2d_backward", &shc_cuda::modulated_conv2d_backward_cuda);
}
