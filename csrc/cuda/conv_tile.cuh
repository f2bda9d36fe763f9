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
// its scale m[n,t] are looked up once per tap. A strided dx runs by output parity: one launch per
// class of input pixels, with only the taps valid for it (ConvArgs' row map and tap grid).
//   fp16/bf16 (conv_tile_tc): the operand tiles are plain copies, 16-byte cp.async into a
//     3-stage ring of swizzled shared stages (MmaEngine's layouts) where the source allows it
//     (a_vec / b_vec below), else 16-byte shared stores of registers loaded during the MMAs; the
//     MMAs (ldmatrix + mma.sync) sum each tap into `part`, which is added to the tile scaled by
//     its row's m[n, t] when the tap is done, so no operand is scaled on its way.
//   fp32/fp64 (conv_tile_simt): one shared stage, the scale applied while the activation tile is
//     staged (registers -> shared memory), a BM-entry table of source offsets and scales per tap.
// The epilogue reads each row's output offset from a table computed once per tile.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "mma_engines.cuh"

namespace shc_cuda {

// conv (forward and dx): 128x64 tiles; fp16/bf16 on tensor cores (8 warps of 32x32).
template <typename scalar_t>
struct ConvCfg;
// Tensor cores: 3 operand stages of 12 KB; the fp32 output tile reuses them in the epilogue.
template <typename S>
struct ConvTcCfg : TileCfg<S, float, 128, 64, 32, 256, true, MmaEngine<S, 128, 64, 256, 4>, 2> {
  using Base = TileCfg<S, float, 128, 64, 32, 256, true, MmaEngine<S, 128, 64, 256, 4>, 2>;
  static constexpr int kStages = 3;
  static constexpr size_t kStageBytes = size_t(Base::Engine::kStageA + Base::Engine::kStageB) * sizeof(S);
  static constexpr size_t kSmemBytes =
      kStages * kStageBytes > Base::kAccBytes ? kStages * kStageBytes : Base::kAccBytes;
  static_assert(Base::BK == Base::Engine::BK, "stage depth");
};
template <>
struct ConvCfg<c10::Half> : ConvTcCfg<__half> {};
template <>
struct ConvCfg<c10::BFloat16> : ConvTcCfg<__nv_bfloat16> {};
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
  // Row (a, b) of the row space is the pixel (a * rsh + r0h, b * rsw + r0w) (out and its strides
  // are the launcher's view of those pixels), and the reduction runs the taps i = ti0, ti0 + tsi, ...
  // < kh by j = tj0, tj0 + tsj, ... < kw: all of them by default; the strided dx launches one
  // parity class of input pixels at a time with only its valid taps (launch_conv).
  int rsh = 1, rsw = 1, r0h = 0, r0w = 0;
  int ti0 = 0, tj0 = 0, tsi = 1, tsj = 1;
};

// The number of taps a tile runs (ConvArgs' tap grid), rows by columns.
template <typename scalar_t, typename A>
__host__ __device__ __forceinline__ int tap_rows(const ConvArgs<scalar_t, A>& p) {
  return p.ti0 < p.kh ? (p.kh - p.ti0 + p.tsi - 1) / p.tsi : 0;
}
template <typename scalar_t, typename A>
__host__ __device__ __forceinline__ int tap_cols(const ConvArgs<scalar_t, A>& p) {
  return p.tj0 < p.kw ? (p.kw - p.tj0 + p.tsj - 1) / p.tsj : 0;
}

// Shared memory for one conv tile; `smem` holds Cfg::kSmemBytes (operands, then the output tile).
template <typename Cfg>
struct ConvSmem {
  unsigned char* raw;
  int64_t* row_off;        // [2][BM]: source offset of (row, tap) or -1 (SIMT); the epilogue's row table
  typename Cfg::A* scale;  // [2][BM]: m[n(row), tap] (SIMT)
};

// Epilogue: Cs (BM x BN fp32/fp64 in shared memory, ld LDC) + bias -> out in its dtype and
// strides (NCHW: rows fastest; channels_last: columns). out_off: BM entries of shared memory for
// each row's output offset (-1 past M), filled here. Called by all threads after a barrier that
// follows the last write of Cs.
template <typename scalar_t, typename Cfg>
__device__ __forceinline__ void conv_epilogue(const ConvArgs<scalar_t, typename Cfg::A>& p, int m0, int n0, int g,
                                              const typename Cfg::A* Cs, int64_t* out_off) {
  using A = typename Cfg::A;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::NT, LDC = Cfg::LDC;
  const int tid = threadIdx.x;
  const int RP = p.RH * p.RW, M = p.N * RP;
  for (int r = tid; r < BM; r += NT) {
    const int row = m0 + r;
    int64_t off = -1;
    if (row < M) {
      const int n = row / RP, rem = row - n * RP, a = rem / p.RW, b = rem - a * p.RW;
      off = n * p.os0 + a * p.os2 + b * p.os3;
    }
    out_off[r] = off;
  }
  __syncthreads();
  // NCHW (rows fastest in the output): a warp takes RG rows x (32 / RG) columns, each column's RG
  // rows one 32-byte sector of out; in Cs the warp's lanes then read 4 * r + c (mod 32) banks
  // apart (LDC = 4 mod 32): no conflict for fp32 and fp64, 2-way for 2-byte outputs, where 32
  // consecutive rows of one column read 8 banks (4-way). channels_last: columns fastest.
  constexpr int RG = 32 / static_cast<int>(sizeof(scalar_t)), CG = 32 / RG;
  static_assert(BM % RG == 0 && BN % CG == 0 && NT % 32 == 0 && LDC % 32 == 4, "NCHW epilogue warp tile");
#pragma unroll 4
  for (int e = 0; e < Cfg::EC; ++e) {
    const int idx = tid + e * NT;
    const int lane = idx & 31, grp = idx >> 5;
    const int r = p.o_rowfast ? (grp % (BM / RG)) * RG + lane % RG : idx / BN;
    const int col = p.o_rowfast ? (grp / (BM / RG)) * CG + lane / RG : idx % BN;
    const int cg = n0 + col;
    const int64_t off = out_off[r];
    if (off < 0 || cg >= p.Ncols) continue;
    const int64_t oc = static_cast<int64_t>(g) * p.Ncols + cg;
    A v = Cs[r * LDC + col];
    if (p.bias != nullptr) v += p.bias[oc];
    p.out[off + oc * p.os1] = static_cast<scalar_t>(v);
  }
}

// ------------------------------------------------------------------------------------------
// Tensor cores (fp16/bf16): see the top of this file.
// Whether the A (activation) and B (weight) tiles can be copied in aligned 16-byte chunks of 8
// channels: channels contiguous, whole chunks inside a group, 16-byte aligned.
template <typename scalar_t, typename A>
__host__ __device__ __forceinline__ bool a_vec_ok(const ConvArgs<scalar_t, A>& p) {
  return p.ss1 == 1 && p.Kdim % 8 == 0 && p.ss0 % 8 == 0 && p.ss2 % 8 == 0 && p.ss3 % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p.src) % 16 == 0;
}
template <typename scalar_t, typename A>
__host__ __device__ __forceinline__ bool b_vec_ok(const ConvArgs<scalar_t, A>& p) {
  return p.Ncols % 8 == 0 && reinterpret_cast<uintptr_t>(p.bt) % 16 == 0;
}
// How the tensor-core tile fills its stages: kCopyAuto decides per operand at run time (the
// one-launch kernel), kCopyAsync copies both operands with cp.async (the launcher checked
// a_vec_ok and b_vec_ok), kCopySync loads both into registers (any strides and sizes).
enum { kCopyAuto = 0, kCopyAsync = 1, kCopySync = 2 };

template <typename scalar_t, typename Cfg, int kCopy>
__device__ __forceinline__ void conv_tile_tc(const ConvArgs<scalar_t, typename Cfg::A>& p, int tile_m, int tile_n,
                                             int g, const ConvSmem<Cfg>& sm) {
  using S = typename Cfg::S;
  using Eng = typename Cfg::Engine;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::NT, ST = Cfg::kStages;
  static_assert(BM * BK / 8 == 2 * NT && BK * BN / 8 == NT, "copy map: 2 A chunks and 1 B chunk a thread");
  S* stages = reinterpret_cast<S*>(sm.raw);
  constexpr int kStage = Eng::kStageA + Eng::kStageB;  // elements per stage: A, then B
  const int tid = threadIdx.x;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int RP = p.RH * p.RW;
  const int M = p.N * RP;
  const int T = p.kh * p.kw;
  const int nkb = (p.Kdim + BK - 1) / BK;
  const int tnj = tap_cols(p);
  const int nsteps = tap_rows(p) * tnj * nkb;
  const int64_t ch0 = static_cast<int64_t>(g) * p.Kdim;  // first source channel of this group

  const bool a_vec = kCopy == kCopyAsync || (kCopy == kCopyAuto && a_vec_ok(p));
  const bool b_vec = kCopy == kCopyAsync || (kCopy == kCopyAuto && b_vec_ok(p));
#ifdef SHC_SIMT
  if (kCopy == kCopyAsync && !(a_vec_ok(p) && b_vec_ok(p))) simt::fail("conv_tile_tc: cp.async path without 16-byte chunks");
#endif

  // Copy map. A: two (row, chunk) pairs a thread, chunks fastest for channels_last sources, rows
  // fastest (coalesced along w) otherwise; B: one (k, chunk) a thread, chunks fastest.
  // A row's source position at tap (i, j) is (a_h + tap_h, a_w + tap_w), valid when inside the
  // source plane and a_r == tap_r. forward: a_h = oh*sh - ph, tap_h = i*dh, a_r = tap_r = 0;
  // dx: the output pixel (ih + ph - i*dh) / sh when divisible: with ih + ph = a_h*sh + rh and
  // i*dh = qh*sh + th, it is a_h - qh when rh == th; a_r, tap_r pack (rh, rw), (th, tw).
  int a_row[2], a_c[2], a_n[2], a_h[2], a_w[2], a_r[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int idx = tid + e * NT;
    a_row[e] = p.a_kfast ? idx / (BK / 8) : idx % BM;
    a_c[e] = p.a_kfast ? idx % (BK / 8) : idx / BM;
    const int row = m0 + a_row[e];
    a_n[e] = -1;
    a_h[e] = a_w[e] = a_r[e] = 0;
    if (row < M) {
      const int n = row / RP, rem = row - n * RP, ra = rem / p.RW;
      const int a = ra * p.rsh + p.r0h, b = (rem - ra * p.RW) * p.rsw + p.r0w;  // its pixel
      a_n[e] = n;
      if (!p.transposed) {
        a_h[e] = a * p.sh - p.ph;
        a_w[e] = b * p.sw - p.pw;
      } else {
        a_h[e] = (a + p.ph) / p.sh;
        a_w[e] = (b + p.pw) / p.sw;
        a_r[e] = ((a + p.ph) % p.sh) << 16 | (b + p.pw) % p.sw;
      }
    }
  }
  const int b_k = tid / (BN / 8), b_c = tid % (BN / 8);

  const int a_dst[2] = {Eng::a_chunk(a_row[0], a_c[0]), Eng::a_chunk(a_row[1], a_c[1])};  // in a stage
  const int b_dst = Eng::b_chunk(b_k, b_c);
  const int b_col = n0 + b_c * 8;

  // Load cursor (the step whose operands are being fetched): tap (li, lj) = lt, the ljj-th of its
  // row of the tap grid, k block lkb; per tap, where this thread's two A chunks start (k block 0;
  // nullptr: padding or past M) and its B chunk.
  int li = p.ti0, lj = p.tj0, lt = li * p.kw + lj, ljj = 0, lkb = 0;
  const scalar_t* a_src[2];
  const scalar_t* b_src;
  auto tap_sources = [&]() {
    int tap_h = li * p.dh, tap_w = lj * p.dw, tap_r = 0;
    if (p.transposed) {
      tap_r = (tap_h % p.sh) << 16 | tap_w % p.sw;
      tap_h = -(tap_h / p.sh);
      tap_w = -(tap_w / p.sw);
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int hs = a_h[e] + tap_h, ws = a_w[e] + tap_w;
      const bool ok = a_n[e] >= 0 && a_r[e] == tap_r && hs >= 0 && hs < p.SH && ws >= 0 && ws < p.SW;
      a_src[e] = ok ? p.src + (a_n[e] * p.ss0 + hs * p.ss2 + ws * p.ss3 + (ch0 + a_c[e] * 8) * p.ss1) : nullptr;
    }
    b_src = p.bt + ((static_cast<int64_t>(g) * T + lt) * p.Kdim + b_k) * p.Ncols + b_col;
  };
  auto advance = [&]() {
    if (++lkb == nkb) {
      lkb = 0;
      if (++ljj == tnj) {
        ljj = 0;
        lj = p.tj0;
        li += p.tsi;
      } else {
        lj += p.tsj;
      }
      lt = li * p.kw + lj;
      tap_sources();
    }
  };
  // Registers of the synchronous copies (a source that cannot take 16-byte copies).
  uint4 ra[2], rb;
  // Issues the copies of the cursor's step into stage `st`: cp.async where a_vec / b_vec, else
  // loads into ra / rb (put into the stage by store_regs).
  auto issue = [&](int st) {
    S* As = stages + st * kStage;
    S* Bs = As + Eng::kStageA;
    const int k0 = lkb * BK;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int kg = k0 + a_c[e] * 8;
      if (a_vec) {
        const bool ok = a_src[e] != nullptr && kg < p.Kdim;
        ptx::cp_async16(As + a_dst[e], ok ? a_src[e] + k0 : p.src, ok);
      } else {
        float x[8];
#pragma unroll
        for (int q = 0; q < 8; ++q)
          x[q] = a_src[e] != nullptr && kg + q < p.Kdim ? to_acc<float>(a_src[e][(k0 + q) * p.ss1]) : 0.f;
        ra[e] = make_uint4(pack2<S>(x[0], x[1]), pack2<S>(x[2], x[3]), pack2<S>(x[4], x[5]), pack2<S>(x[6], x[7]));
      }
    }
    const int kg = k0 + b_k;
    const int64_t bk = static_cast<int64_t>(k0) * p.Ncols;
    if (b_vec) {
      const bool ok = kg < p.Kdim && b_col < p.Ncols;
      ptx::cp_async16(Bs + b_dst, ok ? b_src + bk : p.bt, ok);
    } else {
      float x[8];
#pragma unroll
      for (int q = 0; q < 8; ++q)
        x[q] = kg < p.Kdim && b_col + q < p.Ncols ? to_acc<float>(b_src[bk + q]) : 0.f;
      rb = make_uint4(pack2<S>(x[0], x[1]), pack2<S>(x[2], x[3]), pack2<S>(x[4], x[5]), pack2<S>(x[6], x[7]));
    }
  };
  auto store_regs = [&](int st) {
    S* As = stages + st * kStage;
    S* Bs = As + Eng::kStageA;
    if (!a_vec) {
#pragma unroll
      for (int e = 0; e < 2; ++e) *reinterpret_cast<uint4*>(As + a_dst[e]) = ra[e];
    }
    if (!b_vec) *reinterpret_cast<uint4*>(Bs + b_dst) = rb;
  };

  // The scale rows of this lane's accumulator elements: n * T into m, or -1 past M.
  int m_row[Eng::FM][2];
  Eng eng;
#pragma unroll
  for (int i = 0; i < Eng::FM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + eng.row(i, h);
      m_row[i][h] = row < M ? (row / RP) * T : -1;
    }

  __syncthreads();  // the previous tile of a persistent CTA may still read shared memory
  eng.zero();
  if (nsteps > 0) {
    tap_sources();
    // Prologue: steps 0 .. ST-2 in flight, one commit group each (empty past the last step).
#pragma unroll
    for (int s = 0; s < ST - 1; ++s) {
      if (s < nsteps) {
        issue(s);
        store_regs(s);
        advance();
      }
      ptx::cp_async_commit();
    }
    float sc[Eng::FM][2];
    int tc = p.ti0 * p.kw + p.tj0, cjj = 0, kb = 0;  // compute cursor: tap, its place in its row, k block
    for (int s = 0; s < nsteps; ++s) {
      ptx::cp_async_wait<ST - 2>();  // this thread's copies of step s have landed ...
      __syncthreads();               // ... and everyone's; stage (s-1) % ST is free again
      const int ls = s + ST - 1;     // the step fetched during this one's MMAs
      if (ls < nsteps) issue(ls % ST);
      ptx::cp_async_commit();
      if (kb == 0) {  // this tap's scales, read through L2 (m may be published by another CTA)
#pragma unroll
        for (int i = 0; i < Eng::FM; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) sc[i][h] = m_row[i][h] >= 0 ? __ldcg(p.m + m_row[i][h] + tc) : 0.f;
      }
      const S* As = stages + (s % ST) * kStage;
      eng.mma(As, As + Eng::kStageA);
      if (ls < nsteps) {
        store_regs(ls % ST);
        advance();
      }
      if (++kb == nkb) {
        eng.tap_done(sc);
        kb = 0;
        if (++cjj == tnj) {
          cjj = 0;
          tc += p.tsi * p.kw - (tnj - 1) * p.tsj;
        } else {
          tc += p.tsj;
        }
      }
    }
    ptx::cp_async_wait<0>();  // only empty groups are left
  }
  __syncthreads();  // every warp is done reading the stages
  float* Cs = reinterpret_cast<float*>(sm.raw);
  eng.template store<Cfg::LDC>(Cs);
  __syncthreads();
  conv_epilogue<scalar_t, Cfg>(p, m0, n0, g, Cs, sm.row_off);
}

// ------------------------------------------------------------------------------------------
// SIMT (fp32/fp64): see the top of this file.
template <typename scalar_t, typename Cfg>
__device__ __forceinline__ void conv_tile_simt(const ConvArgs<scalar_t, typename Cfg::A>& p, int tile_m,
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
  const int tnj = tap_cols(p);
  const int nsteps = tap_rows(p) * tnj * nkb;
  const int64_t ch0 = static_cast<int64_t>(g) * p.Kdim;  // first source channel of this group
  // The u-th tap the tile runs.
  auto tap_of = [&](int u) { return (p.ti0 + (u / tnj) * p.tsi) * p.kw + p.tj0 + (u % tnj) * p.tsj; };

  __syncthreads();  // the previous tile of a persistent CTA may still read shared memory

  // Row table for tap t: where row r reads, and its scale.
  auto tap_table = [&](int t, int buf) {
    const int i = t / p.kw, j = t - (t / p.kw) * p.kw;
    for (int r = tid; r < BM; r += NT) {
      const int row = m0 + r;
      int64_t off = -1;
      A sc = A(0);
      if (row < M) {
        const int n = row / RP, rem = row - n * RP, ra = rem / p.RW;
        const int a = ra * p.rsh + p.r0h, b = (rem - ra * p.RW) * p.rsw + p.r0w;  // its pixel
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
    const int u = step / nkb, t = tap_of(u), k0 = (step - u * nkb) * BK, buf = u & 1;
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
    tap_table(tap_of(0), 0);
    __syncthreads();
    load(0);
    for (int s = 0; s < nsteps; ++s) {
      stage();
      if (s + 1 < nsteps) {
        const int un = (s + 1) / nkb;
        if (un != s / nkb) tap_table(tap_of(un), un & 1);  // buffer un&1 was last read two taps ago
      }
      __syncthreads();
      if (s + 1 < nsteps) load(s + 1);  // global loads in flight during the MMAs below
      eng.template mma<BK, LDA, LDB>(As, Bs);
      __syncthreads();
    }
  }
  eng.template store<LDC>(Cs);
  __syncthreads();
  conv_epilogue<scalar_t, Cfg>(p, m0, n0, g, Cs, sm.row_off);
}

// kCopy: how a tensor-core tile fills its stages (kCopyAuto, kCopyAsync, kCopySync); SIMT tiles
// ignore it.
template <typename scalar_t, typename Cfg, int kCopy = kCopyAuto>
__device__ __forceinline__ void conv_tile(const ConvArgs<scalar_t, typename Cfg::A>& p, int tile_m, int tile_n,
                                          int g, const ConvSmem<Cfg>& sm) {
  if constexpr (Cfg::TC)
    conv_tile_tc<scalar_t, Cfg, kCopy>(p, tile_m, tile_n, g, sm);
  else
    conv_tile_simt<scalar_t, Cfg>(p, tile_m, tile_n, g, sm);
}

namespace {

// The conv tile kernel; for fp16/bf16 the operands are copied with cp.async (launch_conv takes
// conv_general_kernel where they cannot be).
template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MINB) conv_kernel(const ConvArgs<scalar_t, typename Cfg::A> p) {
  __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
  __shared__ int64_t row_off[2 * Cfg::BM];
  __shared__ typename Cfg::A scale[2 * Cfg::BM];
  conv_tile<scalar_t, Cfg, kCopyAsync>(p, blockIdx.x, blockIdx.y, blockIdx.z, ConvSmem<Cfg>{raw, row_off, scale});
}

// fp16/bf16 with sources of any strides and sizes: operands through registers (held across the
// MMAs: one CTA per SM, where two would spill).
template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, 1) conv_general_kernel(const ConvArgs<scalar_t, typename Cfg::A> p) {
  __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
  __shared__ int64_t row_off[2 * Cfg::BM];
  __shared__ typename Cfg::A scale[2 * Cfg::BM];
  conv_tile<scalar_t, Cfg, kCopySync>(p, blockIdx.x, blockIdx.y, blockIdx.z, ConvSmem<Cfg>{raw, row_off, scale});
}

template <typename scalar_t>
void launch_conv_grid(const ConvArgs<scalar_t, typename ConvCfg<scalar_t>::A>& a, int64_t groups, cudaStream_t stream) {
  using Cfg = ConvCfg<scalar_t>;
  const int64_t M = static_cast<int64_t>(a.N) * a.RH * a.RW;
  if (M == 0) return;
  const dim3 grid(static_cast<unsigned>((M + Cfg::BM - 1) / Cfg::BM),
                  static_cast<unsigned>((a.Ncols + Cfg::BN - 1) / Cfg::BN), static_cast<unsigned>(groups));
  TORCH_CHECK(grid.y <= 65535, "shc: too many output channels per group for the CUDA kernel");
  if constexpr (Cfg::TC) {
    if (!(a_vec_ok(a) && b_vec_ok(a))) {
      launch(conv_general_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
      return;
    }
  }
  launch(conv_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
}

// The first i in [0, k) with (r - i * d) divisible by s (k when none), and the step to the next.
inline void first_tap(int r, int k, int s, int d, int& i0, int& step) {
  int gcd = s, b = d;
  while (b != 0) {
    const int t = gcd % b;
    gcd = b;
    b = t;
  }
  step = s / gcd;
  i0 = k;
  for (int i = 0; i < k && i < step; ++i)
    if (((r - i * d) % s + s) % s == 0) {
      i0 = i;
      break;
    }
}

// The forward, or the dx (a.transposed). A strided dx runs by output parity: one launch per class
// (ih % sh, iw % sw) of input pixels, whose rows all map to output pixels through the same taps,
// (ih + ph - i dh) divisible by sh: only those run (stride 2, 3x3: 9 taps over 4 classes where every
// row ran all 9). A class that no tap reaches gets zeros.
template <typename scalar_t>
void launch_conv(const ConvArgs<scalar_t, typename ConvCfg<scalar_t>::A>& a, int64_t groups, cudaStream_t stream) {
  if (!a.transposed || (a.sh == 1 && a.sw == 1)) {
    launch_conv_grid<scalar_t>(a, groups, stream);
    return;
  }
  for (int ch = 0; ch < a.sh && ch < a.RH; ++ch)
    for (int cw = 0; cw < a.sw && cw < a.RW; ++cw) {
      auto c = a;
      c.RH = (a.RH - ch + a.sh - 1) / a.sh;
      c.RW = (a.RW - cw + a.sw - 1) / a.sw;
      c.rsh = a.sh;
      c.rsw = a.sw;
      c.r0h = ch;
      c.r0w = cw;
      c.out = a.out + (ch * a.os2 + cw * a.os3);
      c.os2 = a.os2 * a.sh;
      c.os3 = a.os3 * a.sw;
      first_tap(ch + a.ph, a.kh, a.sh, a.dh, c.ti0, c.tsi);
      first_tap(cw + a.pw, a.kw, a.sw, a.dw, c.tj0, c.tsj);
      launch_conv_grid<scalar_t>(c, groups, stream);
    }
}

}  // namespace
}  // namespace shc_cuda
