// The weight gradient of the modulated conv, dW and dm in one kernel (docs/design.md §3). A CTA owns a
// (c, d) tile for one (group, tap) and a range of samples; per sample it accumulates the plain
// weight gradient G_n[c,d,t] = sum_p dy[n,c,p] x[n,d,p(+)t] over that sample's pixels, then
// dW += m[n,t] * G_n (m[n,t] is uniform over the tile) and dm[n,t] += sum_{c,d} W[c,d,t] G_n[c,d,t].
// Partial sums over CTAs are combined with atomics in fp32 (fp64 for fp64), so dW and dm are not
// bitwise reproducible: the launcher reports that to torch.use_deterministic_algorithms.
//   fp16/bf16 (dw_tile_tc): the conv tile's engine (mma_engines.cuh MmaEngine, ldmatrix + mma.sync
//     m16n8k16) with a K-major A stage: both operand tiles are 32 pixels x 64 channels, a pixel's
//     8-channel chunks stored swizzled (dy read with ldmatrix.trans as the A operand, x as B), filled
//     by 16-byte cp.async into a 3-stage ring where both sources have their channels contiguous in
//     whole aligned chunks (dw_kernel), else through registers (dw_general_kernel: NCHW, odd channel
//     counts, misaligned). G_n is the engine's `part`, folded into `acc` scaled by m[n, t] (and dotted
//     with the W tile for dm) when the sample's last pixel block is done.
//   fp32/fp64 (dw_tile_simt): SIMT FMAs over one register-staged shared stage (reference quality).
// W reaches the kernel tap-major, (G, kh, kw, Cg, Dg) (the dx's weight operand), and is read once per
// CTA into shared memory.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "host_helpers.h"
#include "mma_engines.cuh"

namespace shc_cuda {

// weight gradient: rows = c, cols = d, reduction over one sample's output pixels at a time.
// Tensor cores: 64x64 tiles, 4 warps of 32x32, 3 stages of 8 KB (reused by the fp32 dW tile at the
// end), the W tile (bf16/fp16, padded rows) beside them; 4 CTAs per SM.
template <typename S>
struct DwTcCfg : TileCfg<S, float, 64, 64, 32, 128, true, MmaEngine<S, 64, 64, 128, 2, true>, 4> {
  using Base = TileCfg<S, float, 64, 64, 32, 128, true, MmaEngine<S, 64, 64, 128, 2, true>, 4>;
  static constexpr int kStages = 3;
  static constexpr int LDW = Base::BN + 8;  // W tile rows: 4 words apart in banks per row
  static constexpr size_t kStageBytes = size_t(Base::Engine::kStageA + Base::Engine::kStageB) * sizeof(S);
  static constexpr size_t kSmemBytes =
      kStages * kStageBytes > Base::kAccBytes ? kStages * kStageBytes : Base::kAccBytes;
  static_assert(Base::BK == Base::Engine::BK, "stage depth");
};
template <typename scalar_t>
struct DwCfg;
template <>
struct DwCfg<c10::Half> : DwTcCfg<__half> {};
template <>
struct DwCfg<c10::BFloat16> : DwTcCfg<__nv_bfloat16> {};
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
  const scalar_t* w;  // (G, kh, kw, Cg, Dg) contiguous (tap-major), or nullptr when dm is not wanted
  const A* m;         // (N, T)
  A* gw;              // (kh, kw, C, Dg) accumulator (zeroed) or nullptr: tap-major, d fastest
  A* dm;              // (N, T) accumulator (zeroed) or nullptr
  int N, C, Cg, Dg, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, splits, per_split;
  bool y_kfast, x_kfast;  // stage dy / x with the pixel index fastest (NCHW)
};

// The CTA's work: grid (Cg tiles, Dg tiles, groups * T * splits).
struct DwWork {
  int g, t, i, j, n_begin, n_end, m0, n0;
};
__device__ __forceinline__ DwWork dw_work(int T, int kw, int splits, int per_split, int N, int BM, int BN) {
  DwWork w;
  const int z = blockIdx.z, split = z % splits, gt = z / splits;
  w.t = gt % T;
  w.g = gt / T;
  w.i = w.t / kw;
  w.j = w.t - w.i * kw;
  w.n_begin = split * per_split;
  w.n_end = min(N, w.n_begin + per_split);
  w.m0 = blockIdx.x * BM;
  w.n0 = blockIdx.y * BN;
  return w;
}

// Adds the CTA's dW tile Cs (BM x BN, ld LDC) to gw. Consecutive threads add to consecutive d of one
// (t, c) row: a warp's atomics cover whole 32-byte sectors (a (C, Dg, kh, kw) target would put each
// lane T elements apart).
template <int BM, int BN, int NT, int LDC, typename A, typename Args>
__device__ __forceinline__ void dw_add_tile(const Args& p, const DwWork& w, const A* Cs) {
  A* gw = p.gw + (static_cast<int64_t>(w.t) * p.C + static_cast<int64_t>(w.g) * p.Cg) * p.Dg;
  for (int idx = threadIdx.x; idx < BM * BN; idx += NT) {
    const int r = idx / BN, col = idx % BN, c = w.m0 + r, d = w.n0 + col;
    if (c < p.Cg && d < p.Dg) atomicAdd(gw + static_cast<int64_t>(c) * p.Dg + d, Cs[r * LDC + col]);
  }
}

// ------------------------------------------------------------------------------------------
// Tensor cores (fp16/bf16), see the top of this file. kAsync: both operands by cp.async (the
// launcher checked dw_vec_ok), else register copies of any strides and sizes.
template <typename scalar_t, typename Cfg, bool kAsync>
__device__ __forceinline__ void dw_tile_tc(const DwArgs<scalar_t, float>& p, unsigned char* raw,
                                           typename Cfg::S* Ws) {
  using S = typename Cfg::S;
  using Eng = typename Cfg::Engine;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::NT, ST = Cfg::kStages, LDW = Cfg::LDW;
  static_assert(BM * BK / 8 == 2 * NT && BK * BN / 8 == 2 * NT && BM == 64 && BN == 64 && BK == 32,
                "copy map: 2 chunks of each operand a thread, 8 chunks a pixel");
  constexpr int kStage = Eng::kStageA + Eng::kStageB;  // elements per stage: A (dy), then B (x)
  S* stages = reinterpret_cast<S*>(raw);
  const int tid = threadIdx.x;
  const int T = p.kh * p.kw;
  const DwWork w = dw_work(T, p.kw, p.splits, p.per_split, p.N, BM, BN);
  if (w.n_begin >= w.n_end) return;
  const int P = p.OH * p.OW, nkb = (P + BK - 1) / BK, nsteps = (w.n_end - w.n_begin) * nkb;
#ifdef SHC_SIMT
  if (kAsync && !(p.ys1 == 1 && p.xs1 == 1 && p.Cg % 8 == 0 && p.Dg % 8 == 0))
    simt::fail("dw_tile_tc: cp.async path without 16-byte chunks");
#endif

  // The W tile of this (group, tap), for dm (exact in S: W is S).
  if (p.dm != nullptr) {
    const scalar_t* wt = p.w + (static_cast<int64_t>(w.g) * T + w.t) * p.Cg * p.Dg;
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int r = idx / BN, col = idx % BN, c = w.m0 + r, d = w.n0 + col;
      put(Ws[r * LDW + col], c < p.Cg && d < p.Dg ? to_acc<float>(wt[static_cast<int64_t>(c) * p.Dg + d]) : 0.f);
    }
  }

  // Copy map: chunk q = tid + e * NT (e = 0, 1) of each operand's 32 x 64 stage, as (pixel k, channel
  // chunk): chunk-fastest, k = q / 8 (a pixel's 128 contiguous bytes of channels_last), or for the
  // register copies of a source with its pixels contiguous (NCHW) k-fastest, k = q % 32 (coalesced
  // along w). The pixel cursors: slots 0 and 1 for k = tid / 8 + 16 e, slot 2 for k = tid % 32.
  const bool y_kf = !kAsync && p.y_kfast, x_kf = !kAsync && p.x_kfast;
  const int slot_k[3] = {tid / 8, tid / 8 + 16, tid % 32};
  int y_ch[2], x_ch[2], y_dst[2], x_dst[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int q = tid + e * NT;
    y_ch[e] = y_kf ? q / BK : q % 8;
    x_ch[e] = x_kf ? q / BK : q % 8;
    y_dst[e] = Eng::a_chunk(y_kf ? slot_k[2] : slot_k[e], y_ch[e]);
    x_dst[e] = Eng::b_chunk(x_kf ? slot_k[2] : slot_k[e], x_ch[e]);
  }
  const scalar_t* y_base = p.dy + static_cast<int64_t>(w.g) * p.Cg * p.ys1;
  const scalar_t* x_base = p.x + static_cast<int64_t>(w.g) * p.Dg * p.xs1;

  // Load cursor: sample ln, pixel block lkb; per slot the output pixel (oh, ow) of k in that block.
  // A block moves 32 pixels on: (BK / OW rows, BK % OW columns) with one carry.
  const int step_h = BK / p.OW, step_w = BK - step_h * p.OW;
  int ln = w.n_begin, lkb = 0, oh[3], ow[3];
  auto sample_start = [&]() {
#pragma unroll
    for (int sl = 0; sl < 3; ++sl) {
      oh[sl] = slot_k[sl] / p.OW;
      ow[sl] = slot_k[sl] - oh[sl] * p.OW;
    }
  };
  auto advance = [&]() {
    if (++lkb == nkb) {
      lkb = 0;
      ++ln;
      sample_start();
    } else {
#pragma unroll
      for (int sl = 0; sl < 3; ++sl) {
        oh[sl] += step_h;
        ow[sl] += step_w;
        if (ow[sl] >= p.OW) {
          ow[sl] -= p.OW;
          ++oh[sl];
        }
      }
    }
  };
  // Where chunk e of dy / x starts for the cursor's step (nullptr: past the plane or padding).
  // (e: a constant after unrolling, so the slots stay in registers)
  auto y_src = [&](int e) -> const scalar_t* {
    const int h = y_kf ? oh[2] : oh[e], v = y_kf ? ow[2] : ow[e], c = w.m0 + y_ch[e] * 8;
    if (h >= p.OH || c >= p.Cg) return nullptr;
    return y_base + (ln * p.ys0 + c * p.ys1 + h * p.ys2 + v * p.ys3);
  };
  auto x_src = [&](int e) -> const scalar_t* {
    const int h = x_kf ? oh[2] : oh[e], v = x_kf ? ow[2] : ow[e], d = w.n0 + x_ch[e] * 8;
    const int ih = h * p.sh - p.ph + w.i * p.dh, iw = v * p.sw - p.pw + w.j * p.dw;
    if (h >= p.OH || d >= p.Dg || ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return nullptr;
    return x_base + (ln * p.xs0 + d * p.xs1 + ih * p.xs2 + iw * p.xs3);
  };
  // Registers of the synchronous copies.
  uint4 ry[2], rx[2];
  auto gather = [&](const scalar_t* src, int64_t cs, int left) -> uint4 {
    float v[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = src != nullptr && q < left ? to_acc<float>(src[q * cs]) : 0.f;
    return make_uint4(pack2<S>(v[0], v[1]), pack2<S>(v[2], v[3]), pack2<S>(v[4], v[5]), pack2<S>(v[6], v[7]));
  };
  auto issue = [&](int st) {
    S* As = stages + st * kStage;
    S* Bs = As + Eng::kStageA;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const scalar_t* ys = y_src(e);
      const scalar_t* xs = x_src(e);
      if constexpr (kAsync) {
        ptx::cp_async16(As + y_dst[e], ys != nullptr ? ys : p.dy, ys != nullptr);
        ptx::cp_async16(Bs + x_dst[e], xs != nullptr ? xs : p.x, xs != nullptr);
      } else {
        ry[e] = gather(ys, p.ys1, p.Cg - w.m0 - y_ch[e] * 8);
        rx[e] = gather(xs, p.xs1, p.Dg - w.n0 - x_ch[e] * 8);
      }
    }
  };
  auto store_regs = [&](int st) {
    if constexpr (!kAsync) {
      S* As = stages + st * kStage;
      S* Bs = As + Eng::kStageA;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        *reinterpret_cast<uint4*>(As + y_dst[e]) = ry[e];
        *reinterpret_cast<uint4*>(Bs + x_dst[e]) = rx[e];
      }
    }
  };

  Eng eng;
  eng.zero();
  if (nsteps > 0) {
    sample_start();
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
    int kb = 0, cn = w.n_begin;  // compute cursor: pixel block, sample
    for (int s = 0; s < nsteps; ++s) {
      ptx::cp_async_wait<ST - 2>();  // this thread's copies of step s have landed ...
      __syncthreads();               // ... and everyone's; stage (s-1) % ST is free again (and Ws written)
      const int ls = s + ST - 1;     // the step fetched during this one's MMAs
      if (ls < nsteps) issue(ls % ST);
      ptx::cp_async_commit();
      const S* As = stages + (s % ST) * kStage;
      eng.mma(As, As + Eng::kStageA);
      if (ls < nsteps) {
        store_regs(ls % ST);
        advance();
      }
      if (++kb == nkb) {  // sample cn done: G_n = part into dW (scaled by m[n, t]) and dm
        const int64_t nt = static_cast<int64_t>(cn) * T + w.t;
        if (p.dm != nullptr) {
          const float v = warp_sum(eng.template dot_part<LDW>(Ws));
          if ((tid & 31) == 0) atomicAdd(p.dm + nt, v);
        }
        const float mt = p.gw != nullptr ? p.m[nt] : 0.f;
        float sc[Eng::FM][2];
#pragma unroll
        for (int a = 0; a < Eng::FM; ++a) sc[a][0] = sc[a][1] = mt;
        eng.tap_done(sc);  // acc += m[n, t] * part; part = 0
        kb = 0;
        ++cn;
      }
    }
    ptx::cp_async_wait<0>();  // only empty groups are left
  }
  __syncthreads();  // every warp is done reading the stages
  if (p.gw == nullptr) return;
  float* Cs = reinterpret_cast<float*>(raw);
  eng.template store<Cfg::LDC>(Cs);
  __syncthreads();
  dw_add_tile<BM, BN, NT, Cfg::LDC>(p, w, Cs);
}

// ------------------------------------------------------------------------------------------
// SIMT (fp32/fp64): one register-staged shared stage; the W tile in Cs until the dW tile.
template <typename scalar_t, typename Cfg>
__device__ __forceinline__ void dw_tile_simt(const DwArgs<scalar_t, typename Cfg::A>& p, typename Cfg::S* As,
                                             typename Cfg::S* Bs, typename Cfg::A* Cs, int64_t (*koff_y)[Cfg::BK],
                                             int64_t (*koff_x)[Cfg::BK]) {
  using A = typename Cfg::A;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::NT;
  constexpr int LDA = Cfg::LDA, LDB = Cfg::LDB, LDC = Cfg::LDC;
  const int tid = threadIdx.x;
  const int T = p.kh * p.kw;
  const DwWork w = dw_work(T, p.kw, p.splits, p.per_split, p.N, BM, BN);
  if (w.n_begin >= w.n_end) return;
  const int m0 = w.m0, n0 = w.n0, i = w.i, j = w.j;
  const int P = p.OH * p.OW, nkb = (P + BK - 1) / BK, steps = (w.n_end - w.n_begin) * nkb;
  if (p.dm != nullptr) {  // the W tile of this (group, tap), d fastest: coalesced
    const scalar_t* wt = p.w + (static_cast<int64_t>(w.g) * T + w.t) * p.Cg * p.Dg;
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int r = idx / BN, col = idx % BN, c = m0 + r, d = n0 + col;
      Cs[r * LDC + col] = c < p.Cg && d < p.Dg ? to_acc<A>(wt[static_cast<int64_t>(c) * p.Dg + d]) : A(0);
    }
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
  A ra[Cfg::EA], rb[Cfg::EB];
  auto load = [&](int s) {
    const int n = w.n_begin + s / nkb, buf = s & 1;
    const scalar_t* yb = p.dy + n * p.ys0 + static_cast<int64_t>(w.g) * p.Cg * p.ys1;
    const scalar_t* xb = p.x + n * p.xs0 + static_cast<int64_t>(w.g) * p.Dg * p.xs1;
#pragma unroll
    for (int e = 0; e < Cfg::EA; ++e) {
      const int idx = tid + e * NT;
      const int k = p.y_kfast ? idx % BK : idx / BM, r = p.y_kfast ? idx / BK : idx % BM;
      const int64_t off = koff_y[buf][k];
      const int c = m0 + r;
      ra[e] = off >= 0 && c < p.Cg ? to_acc<A>(yb[c * p.ys1 + off]) : A(0);
    }
#pragma unroll
    for (int e = 0; e < Cfg::EB; ++e) {
      const int idx = tid + e * NT;
      const int k = p.x_kfast ? idx % BK : idx / BN, col = p.x_kfast ? idx / BK : idx % BN;
      const int64_t off = koff_x[buf][k];
      const int d = n0 + col;
      rb[e] = off >= 0 && d < p.Dg ? to_acc<A>(xb[d * p.xs1 + off]) : A(0);
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
      const int n = w.n_begin + s / nkb;
      const int64_t nt = static_cast<int64_t>(n) * T + w.t;
      if (p.gw != nullptr) acc.axpy(accn, p.m[nt]);
      if (p.dm != nullptr) {
        A v = accn.template dot<LDC>(Cs);
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
  dw_add_tile<BM, BN, NT, LDC>(p, w, Cs);
}

// dw_kernel: fp16/bf16 with cp.async (both sources take 16-byte chunks: dw_vec_ok), fp32/fp64 SIMT.
template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MINB) dw_kernel(const DwArgs<scalar_t, typename Cfg::A> p) {
  if constexpr (Cfg::TC) {
    __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
    __shared__ __align__(16) typename Cfg::S Ws[Cfg::BM * Cfg::LDW];
    dw_tile_tc<scalar_t, Cfg, true>(p, raw, Ws);
  } else {
    __shared__ __align__(128) typename Cfg::S As[Cfg::BK * Cfg::LDA];
    __shared__ __align__(128) typename Cfg::S Bs[Cfg::BK * Cfg::LDB];
    __shared__ __align__(128) typename Cfg::A Cs[Cfg::BM * Cfg::LDC];  // W tile for dm, then the dW tile
    __shared__ int64_t koff_y[2][Cfg::BK], koff_x[2][Cfg::BK];
    dw_tile_simt<scalar_t, Cfg>(p, As, Bs, Cs, koff_y, koff_x);
  }
}

// fp16/bf16 with sources of any strides and channel counts: operands through registers (held across
// the MMAs: 2 CTAs per SM, where 4 would spill).
template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(Cfg::NT, 2) dw_general_kernel(const DwArgs<scalar_t, typename Cfg::A> p) {
  __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
  __shared__ __align__(16) typename Cfg::S Ws[Cfg::BM * Cfg::LDW];
  dw_tile_tc<scalar_t, Cfg, false>(p, raw, Ws);
}

// Whether dy and x can be copied in aligned 16-byte chunks of 8 channels: channels contiguous, whole
// chunks inside a group, 16-byte aligned.
template <typename scalar_t, typename A>
bool dw_vec_ok(const DwArgs<scalar_t, A>& p) {
  return p.ys1 == 1 && p.xs1 == 1 && p.Cg % 8 == 0 && p.Dg % 8 == 0 && p.ys0 % 8 == 0 && p.ys2 % 8 == 0 &&
         p.ys3 % 8 == 0 && p.xs0 % 8 == 0 && p.xs2 % 8 == 0 && p.xs3 % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p.dy) % 16 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
}

// dW and/or dm of the modulated conv into fp32 (fp64) accumulators zeroed by the caller: gw_acc
// (kh, kw, C, Dg), dm_acc (N, T); need_gw / need_dm false leave them alone. wt: the weight as
// weight_operand(weight, g, true), (G, kh, kw, Cg, Dg) contiguous (read only when need_dm).
template <typename scalar_t>
void launch_weight_grad(const Geom& g, const at::Tensor& x, const at::Tensor& dy, const at::Tensor& wt,
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
  a.w = need_dm ? wt.const_data_ptr<scalar_t>() : nullptr;
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
  if constexpr (Cfg::TC) {
    if (!dw_vec_ok(a)) {
      launch(dw_general_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
      return;
    }
  }
  launch(dw_kernel<scalar_t, Cfg>, grid, Cfg::NT, 0, stream, a);
}

}  // namespace
}  // namespace shc_cuda
