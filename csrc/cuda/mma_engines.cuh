// The MMA engines of the tiled kernels (conv_tile.cuh, weight_grad.cuh) and their tile
// configuration: tensor cores for fp16/bf16 (fp32 accumulators) through ldmatrix + mma.sync
// (MmaEngine: the conv tile and the weight gradient), SIMT FMAs for fp32/fp64.
// An engine owns a BM x BN accumulator tile spread over a block's threads; mma() adds one
// BK-deep product of two shared-memory operand tiles.
#pragma once

#include <cstddef>

#include "device_common.cuh"

namespace shc_cuda {

// ------------------------------------------------------------------------------------------
// ldmatrix + mma.sync m16n8k16 (device_common.cuh's ptx::), fragment layouts as the PTX ISA
// documents them. Operand stages in shared memory, unpadded and XOR-swizzled by 16-byte chunk so
// that 16-byte stores of a row-fastest or chunk-fastest copy and ldmatrix's 8-row reads each hit
// 32 distinct banks per 128 bytes:
//   A: As[row][k], BK = 32 (4 chunks a row), chunk c of row r stored at chunk c ^ ((r >> 1) & 3)
//      (the conv: activations with k = channels fastest), or with AKMajor As[k][row], BM = 64
//      (8 chunks a row), chunk c of row k stored at chunk c ^ (k & 7), read with ldmatrix.trans
//      (the weight gradient: dy with its rows = channels fastest);
//   B: Bs[k][col], BN = 64 (8 chunks a row), chunk c of row k stored at chunk c ^ (k & 7).
// Each warp owns a (BM / WM) x (BN / WN) = 32 x 32 tile: FM = 2 m16 by FN = 4 n8 MMA tiles, in
// two accumulators: `part`, the current tap's (sample's) product, and `acc`, the sum of the
// finished ones, each scaled per row (tap_done: acc[row] += s[row] * part[row]; the conv's m[n, t],
// the weight gradient's m[n, t] uniform over the tile).
template <typename S, int BM, int BN, int NT, int WM, bool AKMajor = false>
struct MmaEngine {
  static constexpr int BK = 32;
  static constexpr int kWarps = NT / 32, WN = kWarps / WM;
  static constexpr int TMW = BM / WM, TNW = BN / WN, FM = TMW / 16, FN = TNW / 8;
  static_assert(WM * WN == kWarps && TMW % 16 == 0 && TNW % 16 == 0 && BN == 64, "warp tiling");
  static_assert(!AKMajor || BM == 64, "a K-major A stage has 8 chunks a row");
  static constexpr int kStageA = BM * BK, kStageB = BK * BN;  // elements of S per stage
  float acc[FM][FN][4], part[FM][FN][4];

  // Element offsets within a stage of the 16-byte chunk c (8 elements) of A's stage row r (a tile
  // row, or with AKMajor a k) and of B's stage row k.
  __device__ __forceinline__ static int a_chunk(int r, int c) {
    if constexpr (AKMajor)
      return r * BM + ((c ^ (r & 7)) << 3);
    else
      return r * BK + ((c ^ ((r >> 1) & 3)) << 3);
  }
  __device__ __forceinline__ static int b_chunk(int k, int c) { return k * BN + ((c ^ (k & 7)) << 3); }

  __device__ __forceinline__ int wm() const { return (threadIdx.x / 32) % WM; }
  __device__ __forceinline__ int wn() const { return (threadIdx.x / 32) / WM; }
  // Tile row of this lane's accumulator elements (i, h): part[i][*][2h], [2h+1].
  __device__ __forceinline__ int row(int i, int h) const { return wm() * TMW + i * 16 + h * 8 + (threadIdx.x & 31) / 4; }

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[i][j][q] = part[i][j][q] = 0.f;
  }
  // part += As @ Bs over one BK-deep stage.
  __device__ __forceinline__ void mma(const S* As, const S* Bs) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t a[FM][4], b[FN][2];
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        if constexpr (AKMajor)  // matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) transposed
          ptx::ldsm_x4<true>(a[i], As + a_chunk(kk + (lane / 16) * 8 + lane % 8, (wm() * TMW + i * 16) / 8 + (lane / 8) % 2));
        else
          ptx::ldsm_x4<false>(a[i], As + a_chunk(wm() * TMW + i * 16 + lane % 16, kk / 8 + lane / 16));
      }
#pragma unroll
      for (int j = 0; j < FN; j += 2) {
        uint32_t r[4];
        ptx::ldsm_x4<true>(r, Bs + b_chunk(kk + lane % 16, (wn() * TNW + j * 8) / 8 + lane / 16));
        b[j][0] = r[0];
        b[j][1] = r[1];
        b[j + 1][0] = r[2];
        b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) ptx::mma_16816<S>(part[i][j], a[i], b[j]);
    }
  }
  // acc += s * part row by row (s[i][h]: the scale of row(i, h)); part = 0.
  __device__ __forceinline__ void tap_done(const float (&sc)[FM][2]) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          acc[i][j][q] = fmaf(sc[i][q / 2], part[i][j][q], acc[i][j][q]);
          part[i][j][q] = 0.f;
        }
  }
  // This lane's share of sum_{row,col} Ws[row][col] * part[row][col], Ws in shared memory (row-major,
  // ld LDW elements, LDW even): the weight gradient's dm[n, t] = sum W[c, d, t] G_n[c, d].
  template <int LDW>
  __device__ __forceinline__ float dot_part(const S* Ws) const {
    const int lane = threadIdx.x & 31;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float w0, w1;
          unpack2<S>(*reinterpret_cast<const uint32_t*>(Ws + row(i, h) * LDW + wn() * TNW + j * 8 + 2 * (lane % 4)), w0,
                     w1);
          s = fmaf(w0, part[i][j][2 * h], s);
          s = fmaf(w1, part[i][j][2 * h + 1], s);
        }
    return s;
  }
  // Cs[row][col] (row-major, ld LDC) = acc.
  template <int LDC>
  __device__ __forceinline__ void store(float* Cs) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // 8-byte stores; with LDC % 32 == 4 two of a half-warp's rows share 4 banks (2 wavefronts
          // where 1 would do, once per tile; LDC % 32 == 8 would cost the NCHW epilogue's column reads)
          store_float2(Cs + row(i, h) * LDC + wn() * TNW + j * 8 + 2 * (lane % 4), acc[i][j][2 * h],
                       acc[i][j][2 * h + 1]);
        }
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
      load_row(a, As + k * LDA + r0);  // LDS.128: lanes of one ty read one row (a broadcast)
      load_row(b, Bs + k * LDB + c0);  // LDS.128: 8 lanes' rows are 128 contiguous bytes
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) c[i][j] = fma(a[i], b[j], c[i][j]);
    }
  }
  template <int LDC>
  __device__ __forceinline__ void store(A* Cs) const {
#pragma unroll
    for (int i = 0; i < TM; ++i) store_row(Cs + (ty() * TM + i) * LDC + tx() * TN, c[i]);
  }
  __device__ __forceinline__ void axpy(const SimtEngine& o, A s) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) c[i][j] += s * o.c[i][j];
  }
  // sum over this thread's cells of Ws[row][col] * tile[row][col], Ws in shared memory (ld LDW)
  template <int LDW>
  __device__ __forceinline__ A dot(const A* Ws) const {
    A s = A(0);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      A w[TN];
      load_row(w, Ws + (ty() * TM + i) * LDW + tx() * TN);
#pragma unroll
      for (int j = 0; j < TN; ++j) s += w[j] * c[i][j];
    }
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
  static constexpr int PAD = sizeof(S) == 2 ? 8 : 4;  // LDA / LDB padding of the SIMT stages
  static constexpr int LDA = BM + PAD, LDB = BN + PAD, LDC = BN + 4;
  static constexpr int EA = BM * BK / NT, EB = BK * BN / NT, EC = BM * BN / NT;
  static_assert(BM * BK % NT == 0 && BK * BN % NT == 0 && BM * BN % NT == 0, "tile/threads");
  static constexpr size_t kOperandBytes = size_t(BK) * (LDA + LDB) * sizeof(S);
  static constexpr size_t kAccBytes = size_t(BM) * LDC * sizeof(A);
  static constexpr size_t kSmemBytes = kOperandBytes > kAccBytes ? kOperandBytes : kAccBytes;
};

}  // namespace shc_cuda
