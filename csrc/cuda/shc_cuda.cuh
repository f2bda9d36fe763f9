// Device building blocks shared by csrc/cuda/shc_cuda.cu (the four shc:: ops) and
// csrc/cuda/fused_shc.cu (the one-launch forward): tile configurations, the two MMA engines
// (WMMA tensor cores for fp16/bf16, SIMT for fp32/fp64), the modulated implicit-GEMM conv tile
// and the per-sample channel statistics.
//
// The implicit GEMM (DESIGN.md §3), one routine for the forward and the conv-route dx:
//   out[row, col] = sum_t sum_k  m[n(row), t] * src[n(row), g*Kdim + k, pos(row) (+) t] * B[g, t, k, col]
// forward: rows = (n, oh, ow), src = x,  k = input channel d,  col = output channel c,
//          B[g,t,d,c] = W[g*Cg + c, d, t], pos(+)t = (oh*sh - ph + i*dh, ow*sw - pw + j*dw).
// dx:      rows = (n, ih, iw), src = dy, k = output channel c, col = input channel d,
//          B[g,t,c,d] = W[g*Cg + c, d, t], pos(+)t = ((ih + ph - i*dh)/sh, ...) when divisible.
// The reduction runs tap-major (t outer, k blocks of BK inner), so a row's source position and
// its scale m[n,t] are looked up once per tap (a BM-entry table in shared memory) and the scale
// is applied while the activation tile is staged (registers -> shared memory).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

#include "platform.h"

namespace shc_cuda {

// ------------------------------------------------------------------------------------------
// Element conversions: global (c10 types) -> accumulator type -> shared-memory operand type.
template <typename A, typename T>
__device__ __forceinline__ A to_acc(T v) {
  return static_cast<A>(v);
}
__device__ __forceinline__ void put(__half& d, float v) { d = __float2half_rn(v); }
__device__ __forceinline__ void put(__nv_bfloat16& d, float v) { d = __float2bfloat16_rn(v); }
__device__ __forceinline__ void put(float& d, float v) { d = v; }
__device__ __forceinline__ void put(double& d, double v) { d = v; }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ------------------------------------------------------------------------------------------
// MMA engines. Operand tiles live in shared memory as As[k][row] (ld LDA) and Bs[k][col]
// (ld LDB): for WMMA that is a col-major A and a row-major B.
template <typename S, int BM, int BN, int NT, int WM>
struct WmmaEngine {
  static constexpr int kWarps = NT / 32, WN = kWarps / WM;
  static constexpr int TMW = BM / WM, TNW = BN / WN, FM = TMW / 16, FN = TNW / 16;
  static_assert(WM * WN == kWarps && TMW % 16 == 0 && TNW % 16 == 0, "warp tiling");
  using Frag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  Frag c[FM][FN];

  __device__ __forceinline__ int wm() const { return (threadIdx.x / 32) % WM; }
  __device__ __forceinline__ int wn() const { return (threadIdx.x / 32) / WM; }

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(c[i][j], 0.f);
  }
  template <int BK, int LDA, int LDB>
  __device__ __forceinline__ void mma(const S* As, const S* Bs) {
    using namespace nvcuda;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::col_major> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::row_major> b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], As + kk * LDA + wm() * TMW + i * 16, LDA);
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], Bs + kk * LDB + wn() * TNW + j * 16, LDB);
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);
    }
  }
  // Cs[row][col] (row-major, ld LDC) = accumulator tile.
  template <int LDC>
  __device__ __forceinline__ void store(float* Cs) const {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (wm() * TMW + i * 16) * LDC + wn() * TNW + j * 16, c[i][j],
                                        LDC, nvcuda::wmma::mem_row_major);
  }
  // this += s * o (a scalar that is uniform over the tile, so the opaque fragment layout is fine)
  __device__ __forceinline__ void axpy(const WmmaEngine& o, float s) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int e = 0; e < Frag::num_elements; ++e) c[i][j].x[e] += s * o.c[i][j].x[e];
  }
  // This thread's share of sum_{row,col} Ws[row][col] * tile[row][col]: Ws loaded into an
  // accumulator fragment has the same element mapping as the tile.
  template <int LDC>
  __device__ __forceinline__ float dot(const float* Ws) const {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        Frag w;
        nvcuda::wmma::load_matrix_sync(w, Ws + (wm() * TMW + i * 16) * LDC + wn() * TNW + j * 16, LDC,
                                       nvcuda::wmma::mem_row_major);
#pragma unroll
        for (int e = 0; e < Frag::num_elements; ++e) s += w.x[e] * c[i][j].x[e];
      }
    return s;
  }
};

// SIMT: thread (ty, tx) owns rows ty*TM .. +TM and columns tx*TN .. +TN of the tile.
template <typename A, int BM, int BN, int NT, int TM, int TN>
struct SimtEngine {
  static constexpr int TX = BN / TN;
  static_assert((BM / TM) * TX == NT && BN % TN == 0 && BM % TM == 0, "thread tiling");
  A c[TM][TN];

  __device__ __forceinline__ int tx() const { return threadIdx.x % TX; }
  __device__ __forceinline__ int ty() const { return threadIdx.x / TX; }

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) c[i][j] = A(0);
  }
  template <int BK, int LDA, int LDB>
  __device__ __forceinline__ void mma(const A* As, const A* Bs) {
    const int r0 = ty() * TM, c0 = tx() * TN;
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      A a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[k * LDA + r0 + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[k * LDB + c0 + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) c[i][j] = fma(a[i], b[j], c[i][j]);
    }
  }
  template <int LDC>
  __device__ __forceinline__ void store(A* Cs) const {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) Cs[(ty() * TM + i) * LDC + tx() * TN + j] = c[i][j];
  }
  __device__ __forceinline__ void axpy(const SimtEngine& o, A s) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) c[i][j] += s * o.c[i][j];
  }
  // sum over this thread's cells of w(row, col) * tile[row][col]
  template <typename F>
  __device__ __forceinline__ A dot_fn(const F& w) const {
    A s = A(0);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) s += w(ty() * TM + i, tx() * TN + j) * c[i][j];
    return s;
  }
};

// ------------------------------------------------------------------------------------------
// Tile configurations per dtype. S: shared-memory operand type; A: accumulator/compute type.
template <typename S_, typename A_, int BM_, int BN_, int BK_, int NT_, bool TC_, typename Engine_,
          int MINB_ = 1>
struct TileCfg {
  using S = S_;
  using A = A_;
  using Engine = Engine_;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, NT = NT_;
  static constexpr int MINB = MINB_;  // __launch_bounds__ min blocks per SM (caps registers)
  static constexpr bool TC = TC_;
  static constexpr int PAD = sizeof(S) == 2 ? 8 : 4;  // keeps WMMA rows 32-byte aligned
  static constexpr int LDA = BM + PAD, LDB = BN + PAD, LDC = BN + 4;
  static constexpr int EA = BM * BK / NT, EB = BK * BN / NT, EC = BM * BN / NT;
  static_assert(BM * BK % NT == 0 && BK * BN % NT == 0 && BM * BN % NT == 0, "tile/threads");
  static constexpr size_t kOperandBytes = size_t(BK) * (LDA + LDB) * sizeof(S);
  static constexpr size_t kAccBytes = size_t(BM) * LDC * sizeof(A);
  static constexpr size_t kSmemBytes = kOperandBytes > kAccBytes ? kOperandBytes : kAccBytes;
};

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

// ------------------------------------------------------------------------------------------
// Channel statistics of DX channels [d0, d0 + DX) of sample n, by one block of NT threads laid
// out as DX channel lanes x (NT / DX) pixel lanes: DX = 1 for NCHW (a plane is contiguous),
// 32 for channels_last (neighbouring channels are). Two passes (mean, then squared deviations),
// accumulated in double whatever the input (as the cpu backend): fp32 squares of |x| > ~1e19
// overflow, and the results are stored in A (fp32, fp64 for fp64 input). red holds NT doubles.
template <typename scalar_t, typename A, int NT>
__device__ __forceinline__ void block_stats(const scalar_t* x, int64_t s0, int64_t s1, int64_t s2,
                                            int64_t s3, int n, int d0, int D, int H, int W, A eps,
                                            int DX, double* red, A* mu, A* sigma) {
  const int tid = threadIdx.x, PX = NT / DX, dx = tid % DX, px = tid / DX, d = d0 + dx;
  const int HW = H * W;
  const bool flat = s2 == static_cast<int64_t>(W) * s3;  // (h, w) collapse to one stride
  const scalar_t* base = x + n * s0 + static_cast<int64_t>(d < D ? d : 0) * s1;
  auto at = [&](int q) -> double {
    if (flat) return static_cast<double>(to_acc<A>(base[q * s3]));
    const int h = q / W, w = q - h * W;
    return static_cast<double>(to_acc<A>(base[h * s2 + w * s3]));
  };
  auto reduce = [&](double v) -> double {  // sum over the pixel lanes of channel lane dx
    red[tid] = v;
    __syncthreads();
    for (int st = PX / 2; st > 0; st >>= 1) {
      if (px < st) red[tid] += red[tid + st * DX];
      __syncthreads();
    }
    const double r = red[dx];
    __syncthreads();
    return r;
  };
  double s = 0.0;
  if (d < D)
    for (int q = px; q < HW; q += PX) s += at(q);
  const double mean = reduce(s) / static_cast<double>(HW);
  double v = 0.0;
  if (d < D)
    for (int q = px; q < HW; q += PX) {
      const double dl = at(q) - mean;
      v += dl * dl;
    }
  const double var = reduce(v) / static_cast<double>(HW);
  if (px == 0 && d < D) {
    mu[static_cast<int64_t>(n) * D + d] = static_cast<A>(mean);
    sigma[static_cast<int64_t>(n) * D + d] = static_cast<A>(sqrt(var + static_cast<double>(eps)));
  }
}

}  // namespace shc_cuda
