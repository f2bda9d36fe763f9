// The modulated implicit-GEMM conv tile: the main loop of shc::modulated_conv2d's forward, of
// its conv-route dx and of the one-launch kernel (fused_shc.cu); its tile configurations per
// dtype, the one-tile-per-CTA kernel and its launcher.
//
// The implicit GEMM (docs/design.md §3), one routine for the forward and the conv-route dx:
//   out[row, col] = sum_t sum_k  m[n(row), t] * src[n(row), g*Kdim + k, pos(row) (+) t] * B[g, t, k, col]
// forward: rows = (n, oh, ow), src = x,  k = input channel d,  col = output channel c,
//          B[g,t,d,c] = W[g*Cg + c, d, t], pos(+)t = (oh*sh - ph + i*dh, ow*sw - pw + j*dw).
// dx:      rows = (n, ih, iw), src = dy, k = output channel c, col = input channel d,
//          B[g,t,c,d] = W[g*Cg + c, d, t], pos(+)t = ((ih + ph - i*dh)/sh, ...) when divisible.
// The reduction runs tap-major (t outer, k blocks of BK inner), so a row's source position and
// its scale m[n,t] are looked up once per tap (a BM-entry table in shared memory) and the scale
// is applied while the activation tile is staged (registers -> shared memory).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "mma_engines.cuh"

namespace shc_cuda {

// conv (forward and dx): 128x64 tiles; fp16/bf16 on tensor cores (8 warps of 32x32).
template <typename scalar_t>
struct ConvCfg;
template <>
struct ConvCfg<c10::Half>
    : TileCfg<__half, float, 128, 64, 32, 256, true, WmmaEngine<__half, 128, 64, 256, 4>, 2> {};
template <>
struct ConvCfg<c10::BFloat16>
    : TileCfg<__nv_bfloat16, float, 128, 64, 32, 256, true, WmmaEngine<__nv_bfloat16, 128, 64, 256, 4>, 2> {};
template <>
struct ConvCfg<float>
    : TileCfg<float, float, 128, 64, 16, 256, false, SimtEngine<float, 128, 64, 256, 8, 4>, 2> {};
template <>
struct ConvCfg<double>
    : TileCfg<double, double, 64, 64, 16, 256, false, SimtEngine<double, 64, 64, 256, 4, 4>> {};
// ------------------------------------------------------------------------------------------
// The modulated implicit-GEMM conv tile (forward or dx, see the top of this file).
template <typename scalar_t, typename A>
struct ConvArgs {
  const scalar_t* src;         // x (forward) or dy (dx); any strides
  int64_t ss0, ss1, ss2, ss3;  // src strides (n, channel, h, w)
  const scalar_t* bt;          // (G, T, Kdim, Ncols) contiguous
  const A* m;                  // (N, T) contiguous
  const A* bias;               // (G * Ncols) or nullptr
  scalar_t* out;               // y (forward) or dx
  int64_t os0, os1, os2, os3;  // out strides
  int N, Kdim, Ncols;          // samples, reduction channels per group, output channels per group
  int RH, RW, SH, SW;          // row-space (out) plane, source plane
  int kh, kw, sh, sw, ph, pw, dh, dw;
  bool transposed;  // dx: pos(row) (+) t maps input pixels back to output pixels
  bool a_kfast;     // src channel stride is 1 (channels_last): stage A with k fastest
  bool o_rowfast;   // out w stride is 1 (NCHW): write rows fastest
};

// Shared memory for one conv tile; `smem` holds Cfg::kSmemBytes (operands, then the output tile).
template <typename Cfg>
struct ConvSmem {
  unsigned char* raw;
  int64_t* row_off;        // [2][BM]: source offset of (row, tap) or -1 (padding / out of range)
  typename Cfg::A* scale;  // [2][BM]: m[n(row), tap]
};

template <typename scalar_t, typename Cfg>
__device__ __forceinline__ void conv_tile(const ConvArgs<scalar_t, typename Cfg::A>& p, int tile_m,
                                          int tile_n, int g, const ConvSmem<Cfg>& sm) {
  using S = typename Cfg::S;
  using A = typename Cfg::A;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::NT;
  constexpr int LDA = Cfg::LDA, LDB = Cfg::LDB, LDC = Cfg::LDC;
  S* As = reinterpret_cast<S*>(sm.raw);
  S* Bs = As + BK * LDA;
  A* Cs = reinterpret_cast<A*>(sm.raw);
  const int tid = threadIdx.x;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int RP = p.RH * p.RW;
  const int M = p.N * RP;
  const int T = p.kh * p.kw;
  const int nkb = (p.Kdim + BK - 1) / BK;
  const int nsteps = T * nkb;
  const int64_t ch0 = static_cast<int64_t>(g) * p.Kdim;  // first source channel of this group

  __syncthreads();  // the previous tile of a persistent CTA may still read shared memory

  // Row table for tap t: where row r reads, and its scale.
  auto tap_table = [&](int t, int buf) {
    const int i = t / p.kw, j = t - (t / p.kw) * p.kw;
    for (int r = tid; r < BM; r += NT) {
      const int row = m0 + r;
      int64_t off = -1;
      A sc = A(0);
      if (row < M) {
        const int n = row / RP, rem = row - n * RP, a = rem / p.RW, b = rem - a * p.RW;
        int hs, ws;
        bool ok;
        if (!p.transposed) {
          hs = a * p.sh - p.ph + i * p.dh;
          ws = b * p.sw - p.pw + j * p.dw;
          ok = hs >= 0 && hs < p.SH && ws >= 0 && ws < p.SW;
        } else {
          const int nh = a + p.ph - i * p.dh, nw = b + p.pw - j * p.dw;
          ok = nh >= 0 && nw >= 0 && nh % p.sh == 0 && nw % p.sw == 0;
          hs = nh / p.sh;
          ws = nw / p.sw;
          ok = ok && hs < p.SH && ws < p.SW;
        }
        if (ok) {
          off = n * p.ss0 + hs * p.ss2 + ws * p.ss3;
          sc = __ldcg(p.m + static_cast<int64_t>(n) * T + t);  // L2: m may be published by another CTA
        }
      }
      sm.row_off[buf * BM + r] = off;
      sm.scale[buf * BM + r] = sc;
    }
  };

  // Staging map, fixed per thread: NCHW sources keep one row per thread (rows fastest: coalesced
  // along w), channels_last sources one k per thread (k fastest: coalesced along channels).
  static_assert(NT % BM == 0 && NT % BK == 0, "staging map");
  const int a_r = p.a_kfast ? tid / BK : tid % BM;  // + e * (NT / BK) when a_kfast
  const int a_k = p.a_kfast ? tid % BK : tid / BM;  // + e * (NT / BM) otherwise
  S ra[Cfg::EA], rb[Cfg::EB];
  auto load = [&](int step) {
    const int t = step / nkb, k0 = (step - t * nkb) * BK, buf = t & 1;
    if (p.a_kfast) {
      const int kg = k0 + a_k;
      const int64_t cofs = (ch0 + kg) * p.ss1;
#pragma unroll
      for (int e = 0; e < Cfg::EA; ++e) {
        const int r = a_r + e * (NT / BK);
        const int64_t off = sm.row_off[buf * BM + r];
        A v = A(0);
        if (off >= 0 && kg < p.Kdim) v = to_acc<A>(p.src[off + cofs]) * sm.scale[buf * BM + r];
        put(ra[e], v);
      }
    } else {
      const int64_t off = sm.row_off[buf * BM + a_r];
      const A sc = sm.scale[buf * BM + a_r];
      const scalar_t* base = p.src + (off >= 0 ? off : 0) + ch0 * p.ss1;
#pragma unroll
      for (int e = 0; e < Cfg::EA; ++e) {
        const int kg = k0 + a_k + e * (NT / BM);
        A v = A(0);
        if (off >= 0 && kg < p.Kdim) v = to_acc<A>(base[kg * p.ss1]) * sc;
        put(ra[e], v);
      }
    }
    const scalar_t* bt = p.bt + (static_cast<int64_t>(g) * T + t) * p.Kdim * p.Ncols;
    const int b_col = tid % BN, b_k = tid / BN, cg = n0 + b_col;  // B: columns fastest
#pragma unroll
    for (int e = 0; e < Cfg::EB; ++e) {
      const int kg = k0 + b_k + e * (NT / BN);
      A v = A(0);
      if (kg < p.Kdim && cg < p.Ncols) v = to_acc<A>(bt[static_cast<int64_t>(kg) * p.Ncols + cg]);
      put(rb[e], v);
    }
  };
  auto stage = [&]() {
#pragma unroll
    for (int e = 0; e < Cfg::EA; ++e) {
      if (p.a_kfast)
        As[a_k * LDA + a_r + e * (NT / BK)] = ra[e];
      else
        As[(a_k + e * (NT / BM)) * LDA + a_r] = ra[e];
    }
#pragma unroll
    for (int e = 0; e < Cfg::EB; ++e) Bs[(tid / BN + e * (NT / BN)) * LDB + tid % BN] = rb[e];
  };

  typename Cfg::Engine eng;
  eng.zero();
  if (nsteps > 0) {
    tap_table(0, 0);
    __syncthreads();
    load(0);
    for (int s = 0; s < nsteps; ++s) {
      stage();
      if (s + 1 < nsteps) {
        const int tn = (s + 1) / nkb;
        if (tn != s / nkb) tap_table(tn, tn & 1);  // buffer tn&1 was last read two taps ago
      }
      __syncthreads();
      if (s + 1 < nsteps) load(s + 1);  // global loads in flight during the MMAs below
      eng.template mma<BK, LDA, LDB>(As, Bs);
      __syncthreads();
    }
  }
  eng.template store<LDC>(Cs);
  __syncthreads();

  // Epilogue: bias, dtype, and the output's strides (NCHW: rows fastest; channels_last: cols).
#pragma unroll 4
  for (int e = 0; e < Cfg::EC; ++e) {
    const int idx = tid + e * NT;
    const int r = p.o_rowfast ? idx % BM : idx / BN;
    const int col = p.o_rowfast ? idx / BM : idx % BN;
    const int row = m0 + r, cg = n0 + col;
    if (row >= M || cg >= p.Ncols) continue;
    const int n = row / RP, rem = row - n * RP, a = rem / p.RW, b = rem - a * p.RW;
    const int64_t oc = static_cast<int64_t>(g) * p.Ncols + cg;
    A v = Cs[r * LDC + col];
    if (p.bias != nullptr) v += p.bias[oc];
    p.out[n * p.os0 + oc * p.os1 + a * p.os2 + b * p.os3] = static_cast<scalar_t>(v);
  }
}

namespace {

template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MINB) conv_kernel(const ConvArgs<scalar_t, typename Cfg::A> p) {
  __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
  __shared__ int64_t row_off[2 * Cfg::BM];
  __shared__ typename Cfg::A scale[2 * Cfg::BM];
  conv_tile<scalar_t, Cfg>(p, blockIdx.x, blockIdx.y, blockIdx.z, ConvSmem<Cfg>{raw, row_off, scale});
}

template <typename scalar_t>
void launch_conv(const ConvArgs<scalar_t, typename ConvCfg<scalar_t>::A>& a, int64_t groups, cudaStream_t stream) {
  using Cfg = ConvCfg<scalar_t>;
  const int64_t M = static_cast<int64_t>(a.N) * a.RH * a.RW;
  const dim3 grid(static_cast<unsigned>((M + Cfg::BM - 1) / Cfg::BM),
                  static_cast<unsigned>((a.Ncols + Cfg::BN - 1) / Cfg::BN), static_cast<unsigned>(groups));
  TORCH_CHECK(grid.y <= 65535, "shc: too many output channels per group for the CUDA kernel");
  launch(conv_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
}

}  // namespace
}  // namespace shc_cuda
