// The weight gradient of the modulated conv, dW and dm in one kernel (docs/design.md §3). A CTA owns a
// (c, d) tile for one (group, tap) and a range of samples; per sample it accumulates the plain
// weight gradient G_n[c,d,t] = sum_p dy[n,c,p] x[n,d,p(+)t] over that sample's pixels, then
// dW += m[n,t] * G_n (m[n,t] is uniform over the tile) and dm[n,t] += sum_{c,d} W[c,d,t] G_n[c,d,t].
// Partial sums over CTAs are combined with atomics in fp32 (fp64 for fp64), so dW and dm are not
// bitwise reproducible: the launcher reports that to torch.use_deterministic_algorithms.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "host_helpers.h"
#include "mma_engines.cuh"

namespace shc_cuda {

// weight gradient: rows = c, cols = d, reduction over one sample's output pixels at a time.
template <typename scalar_t>
struct DwCfg;
template <>
struct DwCfg<c10::Half> : TileCfg<__half, float, 64, 64, 16, 128, true, WmmaEngine<__half, 64, 64, 128, 2>> {};
template <>
struct DwCfg<c10::BFloat16>
    : TileCfg<__nv_bfloat16, float, 64, 64, 16, 128, true, WmmaEngine<__nv_bfloat16, 64, 64, 128, 2>> {};
template <>
struct DwCfg<float> : TileCfg<float, float, 64, 64, 16, 256, false, SimtEngine<float, 64, 64, 256, 4, 4>> {};
template <>
struct DwCfg<double> : TileCfg<double, double, 32, 32, 16, 64, false, SimtEngine<double, 32, 32, 64, 4, 4>> {};

namespace {

template <typename scalar_t, typename A>
struct DwArgs {
  const scalar_t* x;
  int64_t xs0, xs1, xs2, xs3;
  const scalar_t* dy;
  int64_t ys0, ys1, ys2, ys3;
  const scalar_t* w;  // (C, Dg, kh, kw) contiguous
  const A* m;         // (N, T)
  A* gw;              // (kh, kw, C, Dg) accumulator (zeroed) or nullptr: tap-major, d fastest
  A* dm;              // (N, T) accumulator (zeroed) or nullptr
  int N, C, Cg, Dg, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, splits, per_split;
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
  // Consecutive threads add to consecutive d of one (t, c) row: a warp's atomics cover whole
  // 32-byte sectors (a (C, Dg, kh, kw) target would put each lane T elements apart).
  A* gw = p.gw + (static_cast<int64_t>(t) * p.C + static_cast<int64_t>(g) * p.Cg) * p.Dg;
  for (int idx = tid; idx < BM * BN; idx += NT) {
    const int r = idx / BN, col = idx % BN, c = m0 + r, d = n0 + col;
    if (c < p.Cg && d < p.Dg) atomicAdd(gw + static_cast<int64_t>(c) * p.Dg + d, Cs[r * LDC + col]);
  }
}

// dW and/or dm of the modulated conv into fp32 (fp64) accumulators zeroed by the caller: gw_acc
// (kh, kw, C, Dg), dm_acc (N, T); need_gw / need_dm false leave them alone.
template <typename scalar_t>
void launch_weight_grad(const Geom& g, const at::Tensor& x, const at::Tensor& dy, const at::Tensor& wc,
                        const at::Tensor& mc, const at::Tensor& gw_acc, const at::Tensor& dm_acc, bool need_gw,
                        bool need_dm, cudaStream_t stream, const char* op) {
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
  a.C = static_cast<int>(g.C);
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
}

}  // namespace
}  // namespace shc_cuda
