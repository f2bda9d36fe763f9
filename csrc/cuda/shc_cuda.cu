// CUDA kernels for the `shc` ops (schemas in csrc/shc.cpp; same semantics as csrc/cpu/shc_cpu.cpp).
//
// channel_stats            one block per (sample, channel block): two-pass mean / variance in double.
// channel_stats_backward   elementwise, written in x.suggest_memory_format().
// modulated_conv2d         implicit GEMM (shc_cuda.cuh: conv_tile), the m[n,t] scale applied to the
//                          staged activation tile, bias fused; fp16/bf16 on tensor cores (WMMA,
//                          fp32 accumulation), fp32 and fp64 SIMT.
// modulated_conv2d_backward
//   dx (conv route): the same conv_tile run as a transposed implicit GEMM over dy with the same
//                    per-tap scaling (rows = input pixels, columns = input channels).
//   dW and dm:       one weight-gradient kernel. A CTA owns a (c, d) tile for one (group, tap)
//                    and a range of samples; per sample it accumulates the plain weight gradient
//                    G_n[c,d,t] = sum_p dy[n,c,p] x[n,d,p(+)t] over that sample's pixels, then
//                    dW += m[n,t] * G_n (m[n,t] is uniform over the tile) and
//                    dm[n,t] += sum_{c,d} W[c,d,t] * G_n[c,d,t]. Partial sums over CTAs are
//                    combined with atomics in fp32 (fp64 for fp64).
// Never materializes per-sample kernels or an unfolded input: the only extra buffers are the
// weight reordered to (G, kh, kw, Dg, Cg) / (G, kh, kw, Cg, Dg) and the fp32 dW / dm accumulators.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "shc_cuda.cuh"
#include "shc_cuda_host.h"

namespace shc_cuda {
namespace {

// ------------------------------------------------------------------------------------------
// Kernels.
template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MINB) conv_kernel(const ConvArgs<scalar_t, typename Cfg::A> p) {
  __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
  __shared__ int64_t row_off[2 * Cfg::BM];
  __shared__ typename Cfg::A scale[2 * Cfg::BM];
  conv_tile<scalar_t, Cfg>(p, blockIdx.x, blockIdx.y, blockIdx.z, ConvSmem<Cfg>{raw, row_off, scale});
}

template <typename scalar_t, typename A>
struct DwArgs {
  const scalar_t* x;
  int64_t xs0, xs1, xs2, xs3;
  const scalar_t* dy;
  int64_t ys0, ys1, ys2, ys3;
  const scalar_t* w;  // (C, Dg, kh, kw) contiguous
  const A* m;         // (N, T)
  A* gw;              // (C, Dg, kh, kw) accumulator (zeroed) or nullptr
  A* dm;              // (N, T) accumulator (zeroed) or nullptr
  int N, Cg, Dg, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, splits, per_split;
  bool y_kfast, x_kfast;  // stage dy / x with the pixel index fastest (NCHW)
};

// grid: (Cg tiles, Dg tiles, groups * T * splits)
template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MINB) dw_kernel(const DwArgs<scalar_t, typename Cfg::A> p) {
  using S = typename Cfg::S;
  using A = typename Cfg::A;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::NT;
  constexpr int LDA = Cfg::LDA, LDB = Cfg::LDB, LDC = Cfg::LDC;
  __shared__ __align__(128) S As[BK * LDA];
  __shared__ __align__(128) S Bs[BK * LDB];
  __shared__ __align__(128) A Cs[BM * LDC];  // W tile for dm (tensor-core path), then the dW tile
  __shared__ int64_t koff_y[2][BK], koff_x[2][BK];

  const int tid = threadIdx.x;
  const int T = p.kh * p.kw;
  const int z = blockIdx.z, split = z % p.splits, gt = z / p.splits, t = gt % T, g = gt / T;
  const int i = t / p.kw, j = t - i * p.kw;
  const int n_begin = split * p.per_split, n_end = min(p.N, n_begin + p.per_split);
  if (n_begin >= n_end) return;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int P = p.OH * p.OW, nkb = (P + BK - 1) / BK, steps = (n_end - n_begin) * nkb;
  auto w_at = [&](int r, int col) -> A {
    const int c = m0 + r, d = n0 + col;
    if (c >= p.Cg || d >= p.Dg) return A(0);
    return to_acc<A>(p.w[((static_cast<int64_t>(g) * p.Cg + c) * p.Dg + d) * T + t]);
  };
  if constexpr (Cfg::TC) {
    if (p.dm != nullptr)
      for (int idx = tid; idx < BM * BN; idx += NT) Cs[(idx / BN) * LDC + idx % BN] = w_at(idx / BN, idx % BN);
  }
  // Per reduction block: offsets (within a sample) of output pixel p in dy and of p(+)t in x.
  auto k_table = [&](int kb, int buf) {
    for (int k = tid; k < BK; k += NT) {
      const int pp = kb * BK + k;
      int64_t yo = -1, xo = -1;
      if (pp < P) {
        const int oh = pp / p.OW, ow = pp - oh * p.OW;
        yo = oh * p.ys2 + ow * p.ys3;
        const int ih = oh * p.sh - p.ph + i * p.dh, iw = ow * p.sw - p.pw + j * p.dw;
        if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) xo = ih * p.xs2 + iw * p.xs3;
      }
      koff_y[buf][k] = yo;
      koff_x[buf][k] = xo;
    }
  };
  S ra[Cfg::EA], rb[Cfg::EB];
  auto load = [&](int s) {
    const int n = n_begin + s / nkb, buf = s & 1;
    const scalar_t* yb = p.dy + n * p.ys0 + static_cast<int64_t>(g) * p.Cg * p.ys1;
    const scalar_t* xb = p.x + n * p.xs0 + static_cast<int64_t>(g) * p.Dg * p.xs1;
#pragma unroll
    for (int e = 0; e < Cfg::EA; ++e) {
      const int idx = tid + e * NT;
      const int k = p.y_kfast ? idx % BK : idx / BM, r = p.y_kfast ? idx / BK : idx % BM;
      const int64_t off = koff_y[buf][k];
      const int c = m0 + r;
      A v = A(0);
      if (off >= 0 && c < p.Cg) v = to_acc<A>(yb[c * p.ys1 + off]);
      put(ra[e], v);
    }
#pragma unroll
    for (int e = 0; e < Cfg::EB; ++e) {
      const int idx = tid + e * NT;
      const int k = p.x_kfast ? idx % BK : idx / BN, col = p.x_kfast ? idx / BK : idx % BN;
      const int64_t off = koff_x[buf][k];
      const int d = n0 + col;
      A v = A(0);
      if (off >= 0 && d < p.Dg) v = to_acc<A>(xb[d * p.xs1 + off]);
      put(rb[e], v);
    }
  };
  auto stage = [&]() {
#pragma unroll
    for (int e = 0; e < Cfg::EA; ++e) {
      const int idx = tid + e * NT;
      const int k = p.y_kfast ? idx % BK : idx / BM, r = p.y_kfast ? idx / BK : idx % BM;
      As[k * LDA + r] = ra[e];
    }
#pragma unroll
    for (int e = 0; e < Cfg::EB; ++e) {
      const int idx = tid + e * NT;
      const int k = p.x_kfast ? idx % BK : idx / BN, col = p.x_kfast ? idx / BK : idx % BN;
      Bs[k * LDB + col] = rb[e];
    }
  };

  typename Cfg::Engine acc, accn;  // dW over the CTA's samples; G_n of the current sample
  acc.zero();
  accn.zero();
  k_table(0, 0);
  __syncthreads();
  load(0);
  for (int s = 0; s < steps; ++s) {
    stage();
    if (s + 1 < steps) k_table((s + 1) % nkb, (s + 1) & 1);  // buffer last read by load(s - 1)
    __syncthreads();
    if (s + 1 < steps) load(s + 1);
    accn.template mma<BK, LDA, LDB>(As, Bs);
    if ((s + 1) % nkb == 0) {  // sample n done: fold G_n into dW and dm
      const int n = n_begin + s / nkb;
      const int64_t nt = static_cast<int64_t>(n) * T + t;
      if (p.gw != nullptr) acc.axpy(accn, p.m[nt]);
      if (p.dm != nullptr) {
        A v;
        if constexpr (Cfg::TC) {
          v = accn.template dot<LDC>(Cs);
        } else {
          v = accn.dot_fn(w_at);
        }
        v = warp_sum(v);
        if ((tid & 31) == 0) atomicAdd(p.dm + nt, v);
      }
      accn.zero();
    }
    __syncthreads();
  }
  if (p.gw == nullptr) return;
  acc.template store<LDC>(Cs);
  __syncthreads();
  for (int idx = tid; idx < BM * BN; idx += NT) {
    const int r = idx / BN, col = idx % BN, c = m0 + r, d = n0 + col;
    if (c < p.Cg && d < p.Dg)
      atomicAdd(p.gw + ((static_cast<int64_t>(g) * p.Cg + c) * p.Dg + d) * T + t, Cs[r * LDC + col]);
  }
}

// grid: N * ceil(D / DX) blocks of 256 threads
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(256)
    stats_kernel(const scalar_t* x, int64_t s0, int64_t s1, int64_t s2, int64_t s3, int N, int D,
                 int H, int W, A eps, int DX, A* mu, A* sigma) {
  __shared__ double red[256];
  const int dblocks = (D + DX - 1) / DX;
  const int n = blockIdx.x / dblocks, d0 = (blockIdx.x - n * dblocks) * DX;
  block_stats<scalar_t, A, 256>(x, s0, s1, s2, s3, n, d0, D, H, W, eps, DX, red, mu, sigma);
}

// out (dense in NCHW or channels_last order) = gmu/HW + gsig * (x - mu) / (HW * sigma)
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(256)
    stats_backward_kernel(const A* gmu, const A* gsig, const scalar_t* x, int64_t s0, int64_t s1,
                          int64_t s2, int64_t s3, const A* mu, const A* sigma, int64_t total, int D,
                          int H, int W, bool channels_last, scalar_t* out) {
  const A hw = static_cast<A>(H) * static_cast<A>(W);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, d, h, w, r = idx;
    if (channels_last) {
      d = r % D; r /= D; w = r % W; r /= W; h = r % H; n = r / H;
    } else {
      w = r % W; r /= W; h = r % H; r /= H; d = r % D; n = r / D;
    }
    const int64_t nd = n * D + d;
    const A xv = to_acc<A>(x[n * s0 + d * s1 + h * s2 + w * s3]);
    out[idx] = static_cast<scalar_t>(gmu[nd] / hw + gsig[nd] * (xv - mu[nd]) / (hw * sigma[nd]));
  }
}

// ------------------------------------------------------------------------------------------
// Launchers and argument checks.
template <typename scalar_t>
void launch_conv(const ConvArgs<scalar_t, typename ConvCfg<scalar_t>::A>& a, int64_t groups, cudaStream_t stream) {
  using Cfg = ConvCfg<scalar_t>;
  const int64_t M = static_cast<int64_t>(a.N) * a.RH * a.RW;
  const dim3 grid(static_cast<unsigned>((M + Cfg::BM - 1) / Cfg::BM),
                  static_cast<unsigned>((a.Ncols + Cfg::BN - 1) / Cfg::BN), static_cast<unsigned>(groups));
  TORCH_CHECK(grid.y <= 65535, "shc: too many output channels per group for the CUDA kernel");
  launch(conv_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
}

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

  at::Tensor dx = at::empty({0}, x.options());
  if (need_dx) {
    dx = at::empty(x.sizes(), x.options().memory_format(x.suggest_memory_format()));
    if (g.N > 0 && g.Cg > 0 && dx.numel() > 0) {
      const at::Tensor bt = weight_operand(weight, g, true);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_conv_dx_cuda", [&] {
        using A = typename ConvCfg<scalar_t>::A;
        launch_conv<scalar_t>(conv_args<scalar_t, A>(g, dy, bt, mc, at::Tensor(), dx, true), g.groups, stream);
      });
    } else {
      dx.zero_();
    }
  }

  at::Tensor gw_acc, dm_acc;
  if (need_gw) gw_acc = at::zeros(weight.sizes(), weight.options().dtype(ct));
  if (need_dm) dm_acc = at::zeros({g.N, g.T}, x.options().dtype(ct));
  if ((need_gw || need_dm) && g.N > 0 && g.Cg > 0 && g.Dg > 0) {
    const at::Tensor wc = weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_conv_dw_cuda", [&] {
      using Cfg = DwCfg<scalar_t>;
      using A = typename Cfg::A;
      DwArgs<scalar_t, A> a{};
      a.x = x.const_data_ptr<scalar_t>();
      a.xs0 = x.stride(0);
      a.xs1 = x.stride(1);
      a.xs2 = x.stride(2);
      a.xs3 = x.stride(3);
      a.dy = dy.const_data_ptr<scalar_t>();
      a.ys0 = dy.stride(0);
      a.ys1 = dy.stride(1);
      a.ys2 = dy.stride(2);
      a.ys3 = dy.stride(3);
      a.w = wc.const_data_ptr<scalar_t>();
      a.m = mc.const_data_ptr<A>();
      a.gw = need_gw ? gw_acc.mutable_data_ptr<A>() : nullptr;
      a.dm = need_dm ? dm_acc.mutable_data_ptr<A>() : nullptr;
      a.N = static_cast<int>(g.N);
      a.Cg = static_cast<int>(g.Cg);
      a.Dg = static_cast<int>(g.Dg);
      a.H = static_cast<int>(g.H);
      a.W = static_cast<int>(g.W);
      a.OH = static_cast<int>(g.OH);
      a.OW = static_cast<int>(g.OW);
      a.kh = static_cast<int>(g.kh);
      a.kw = static_cast<int>(g.kw);
      a.sh = static_cast<int>(g.sh);
      a.sw = static_cast<int>(g.sw);
      a.ph = static_cast<int>(g.ph);
      a.pw = static_cast<int>(g.pw);
      a.dh = static_cast<int>(g.dh);
      a.dw = static_cast<int>(g.dw);
      a.y_kfast = dy.stride(3) == 1 || dy.stride(1) != 1;
      a.x_kfast = x.stride(3) == 1 || x.stride(1) != 1;
      // Split the samples so that about 4 CTAs per SM are in flight.
      const int64_t tiles = ((g.Cg + Cfg::BM - 1) / Cfg::BM) * ((g.Dg + Cfg::BN - 1) / Cfg::BN);
      const int64_t base = tiles * g.groups * g.T;
      TORCH_CHECK(g.groups * g.T <= 65535, op, ": groups * kh * kw must be at most 65535 for the CUDA kernel");
      int64_t splits = std::min<int64_t>(g.N, std::max<int64_t>(1, (4 * sm_count(x.get_device()) + base - 1) / base));
      splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535 / (g.groups * g.T)));
      const int64_t per = (g.N + splits - 1) / splits;
      splits = (g.N + per - 1) / per;
      a.splits = static_cast<int>(splits);
      a.per_split = static_cast<int>(per);
      const dim3 grid(static_cast<unsigned>((g.Cg + Cfg::BM - 1) / Cfg::BM),
                      static_cast<unsigned>((g.Dg + Cfg::BN - 1) / Cfg::BN),
                      static_cast<unsigned>(g.groups * g.T * splits));
      TORCH_CHECK(grid.y <= 65535, op, ": too many input channels per group for the CUDA kernel");
      launch(dw_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
    });
  }
  const at::Tensor gw = need_gw ? gw_acc.to(weight.scalar_type()) : at::empty({0}, weight.options());
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
  const int DX = (x.stride(1) == 1 && D > 1) ? 32 : 1;
  const int64_t blocks = N * ((D + DX - 1) / DX);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_channel_stats_cuda", [&] {
    using A = typename ConvCfg<scalar_t>::A;
    launch(stats_kernel<scalar_t, A>, static_cast<unsigned>(blocks), 256, 0, stream, x.const_data_ptr<scalar_t>(),
           x.stride(0), x.stride(1), x.stride(2), x.stride(3), static_cast<int>(N), static_cast<int>(D),
           static_cast<int>(x.size(2)), static_cast<int>(x.size(3)), static_cast<A>(eps), DX,
           mu.mutable_data_ptr<A>(), sigma.mutable_data_ptr<A>());
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
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_channel_stats_backward_cuda", [&] {
    using A = typename ConvCfg<scalar_t>::A;
    launch(stats_backward_kernel<scalar_t, A>, static_cast<unsigned>(blocks), 256, 0, stream, gm.const_data_ptr<A>(),
           gs.const_data_ptr<A>(), x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
           muc.const_data_ptr<A>(), sc.const_data_ptr<A>(), total, static_cast<int>(D), static_cast<int>(H),
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
