// The "direct" method's micro-kernels (fp32; direct.h and direct.cpp have the method and its layout).
// Each computes, for a block of rows r and output positions o,
//   out[r][o] = sum_s sum_k panel[s][k][r] * in[k * plane + o + off[s]]
// with the accumulators of a rows x positions tile in registers across all 9 taps and the whole
// reduction: the shift method's per-tap GEMMs write and re-read the C x positions output once
// per tap and pay nine GEMM calls per sample, which on small planes costs it against
// oneDNN's direct conv. Two builds of the tile, picked at run time (kernel()):
//   AVX-512F + FMA: 8 rows x 48 positions (24 zmm accumulators; a plane's last 1-4 positions
//   take tail_avx512, rows in the lanes);
//   AVX2 + FMA: 4 rows x 24 positions (12 ymm accumulators).
// With AVX-512 a third tile, rows_avx512 (RowsArgs), puts 32 rows in the lanes and broadcasts up
// to 14 positions of one output row, so it skips the taps that read padding, where the tiles
// above multiply zeros; direct.h's rows_path says where it is used.
// The rest of the build targets x86-64-v2; only these functions (direct_kernels.cpp) are compiled
// for the wider ISAs, and only called, through kernel()'s table, when the CPU has them.
#pragma once

#include <cstdint>

namespace shc_cpu {
namespace direct {

// conv(a): a.out[r * a.ldo + o] = bias[r] + sum_s sum_k panel[s][k][r] * in[k * plane + o + off[s]]
// for the rows r < a.nrows and the positions o < a.P (ldo >= P: the output is written in place,
// e.g. straight into y's planes). in holds K planes of pitch `plane`, each readable `tile` floats
// past position P + max(off) (the caller's slack); tap s reads in[k * plane + o + off[s]] where
// edge[s][o] is all ones and reads zero where edge[s][o] is 0 (the image's left and right edges:
// the planes have no padding columns, so a tap that steps past a row's end would read the next
// row's first element); edge[s] holds round_up(P, tile) entries. panel is rblocks = ceil(nrows / rows)
// blocks of 9 * K * rows floats, panel[((rb * 9 + s) * K + k) * rows + r], and bias rblocks * rows
// floats. Positions go in bands of `band` (a multiple of tile, sized by the caller so that a band's
// input stays in L2), every row block passing over a band before the next: a 64-channel 56x56
// plane (850 KiB) was otherwise re-read from L3 per block. Positions past P are computed up to
// the next whole vector and not stored.
struct Args {
  const float* in;
  int64_t plane, K;
  const int64_t* off;
  const int32_t* const* edge;
  const float* panel;
  const float* bias;
  int64_t nrows, P, band;
  float* out;
  int64_t ldo;
};
using ConvFn = void (*)(const Args&);
// split(src, H, W, dst, Pq, Wp): one H x W plane into its stride-2 phases (direct.h's
// DirectLayout): x row r is x_pad row r + 1 = 2i + a; its even columns 2j go to phase (a, 1) at
// j, its odd ones 2j + 1 to phase (a, 0) at j; phase (a, b) holds row i at dst + (2a + b) Pq + 1
// + i Wp. One call per plane, not per row (a call per row spent most of the split's time in the
// call and its setup).
using SplitFn = void (*)(const float*, int64_t, int64_t, float*, int64_t, int64_t);
// rows_conv(a), for a padding-1 3x3 conv of stride S (1 or 2): a.out[r * a.ldo + oh * OW + ow] = bias[r] +
// sum over the taps (ky, kx) whose input lies inside the H x W image of
// sum_k panel[rb][ky * 3 + kx][k][r % 32] * in[k * plane + (S oh + ky - 1) * W + S ow + kx - 1], r < nrows.
// Unlike conv, rows go in the lanes and positions are broadcast, so a tap that reads the zero
// padding is skipped, not multiplied: conv computes all 9 taps everywhere, 10% more FMAs than
// the image holds at 14x14 (oneDNN skips them). in is unpadded (no copy). panel is
// ceil(nrows / 32) blocks of 9 * K * 32 floats, bias as many times 32 floats.
struct RowsArgs {
  const float* in;
  int64_t plane, K, H, W, S, OH, OW;
  const float* panel;
  const float* bias;
  int64_t nrows;
  float* out;
  int64_t ldo;
};
using RowsFn = void (*)(const RowsArgs&);
struct Kernel {
  int64_t rows;    // rows per register tile (output channels forward, input channels for dx)
  int64_t tile;    // positions per register tile
  int64_t max_cd;  // the most C x D channels the method takes by default (choose_method)
  ConvFn conv;
  SplitFn split;
  const char* isa;
  RowsFn rows_conv;  // the rows-in-lanes tile (kRowsR rows), or nullptr (AVX2)
  void (*taps9)(const float*, int64_t, float*, int64_t);  // taps9_avx512, or nullptr (AVX2)
};
constexpr int64_t kRowsR = 32;  // rows_conv's rows per tile: two zmm of output channels

// The widest kernel this CPU runs, or nullptr (not x86-64, or no AVX2 + FMA). SHC_CPU_DIRECT_ISA
// (avx2) caps it, to measure the AVX2 kernel on an AVX-512 machine.
const Kernel* kernel(bool cap_avx2);

}  // namespace direct
}  // namespace shc_cpu
