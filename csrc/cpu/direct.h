// The "direct" method's micro-kernels (fp32; csrc/cpu/shc_cpu.cpp has the method and its layout).
// Each computes, for a block of rows r and output positions o,
//   out[r][o] = sum_s sum_k panel[s][k][r] * in[k * plane + o + off[s]]
// with the accumulators of a rows x positions tile in registers across all 9 taps and the whole
// reduction: the shift method's per-tap GEMMs write and re-read the C x positions output once
// per tap and pay nine GEMM calls per sample, which at 14x14 planes cost it ~20% against
// oneDNN's direct conv. Two builds of the tile, picked at run time (kernel()):
//   AVX-512F: 8 rows x 48 positions (24 zmm accumulators);
//   AVX2 + FMA: 4 rows x 24 positions (12 ymm accumulators).
// The rest of the build targets x86-64-v2; only these functions are compiled for the wider ISAs
// and only called when the CPU has them.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SHC_DIRECT_X86 1
#else
#define SHC_DIRECT_X86 0
#endif

namespace shc_cpu {
namespace direct {
namespace {

// conv(in, plane, K, off, panel, rblocks, P, band, out, ldo): out (rblocks * rows rows of pitch ldo)
// over positions [0, P) rounded up to whole vectors, at most to round_up(P, tile) (ldo is at
// least that); in holds K planes of pitch `plane`, each readable `tile`
// floats past position P + max(off) (the caller's slack); panel is rblocks blocks of
// 9 * K * rows floats, panel[((rb * 9 + s) * K + k) * rows + r]. Positions go in bands of `band`
// (a multiple of tile, sized by the caller so that a band's input stays in L2), every row block
// passing over a band before the next: a 64-channel 56x56 plane (850 KiB) was otherwise re-read
// from L3 per block.
using ConvFn = void (*)(const float*, int64_t, int64_t, const int64_t*, const float*, int64_t, int64_t, int64_t,
                        float*, int64_t);
struct Kernel {
  int64_t rows;  // rows per register tile (output channels forward, input channels for dx)
  int64_t tile;  // positions per register tile
  ConvFn conv;
  const char* isa;
};

// The band loop (a macro: each ISA's copy must be compiled for that ISA for its tile to inline).
#define SHC_DIRECT_BANDS(ROWS, TILES_FN)                                                                  \
  for (int64_t o0 = 0; o0 < P; o0 += band) {                                                             \
    const int64_t n = (o0 + band < P ? band : P - o0);                                                   \
    for (int64_t rb = 0; rb < rblocks; ++rb)                                                             \
      TILES_FN(in + o0, plane, K, off, panel + rb * 9 * K * (ROWS), out + rb * (ROWS) * ldo + o0, ldo, n); \
  }

#if SHC_DIRECT_X86
// One AVX2 tile: rows [0, 4) and positions [0, 24). The accumulators are named, not an array:
// GCC kept an array of __m256 on the stack and stored it back on every step (1.9x slower).
__attribute__((target("avx2,fma"), always_inline)) inline void tile_avx2(const float* in, int64_t plane, int64_t K,
                                                                         const int64_t* off, const float* panel,
                                                                         float* out, int64_t ldo) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  for (int s = 0; s < 9; ++s) {
    const float* is = in + off[s];
    const float* ps = panel + s * K * 4;
    for (int64_t k = 0; k < K; ++k, is += plane, ps += 4) {
      const __m256 x0 = _mm256_loadu_ps(is), x1 = _mm256_loadu_ps(is + 8), x2 = _mm256_loadu_ps(is + 16);
      __m256 w = _mm256_broadcast_ss(ps);
      a00 = _mm256_fmadd_ps(w, x0, a00), a01 = _mm256_fmadd_ps(w, x1, a01), a02 = _mm256_fmadd_ps(w, x2, a02);
      w = _mm256_broadcast_ss(ps + 1);
      a10 = _mm256_fmadd_ps(w, x0, a10), a11 = _mm256_fmadd_ps(w, x1, a11), a12 = _mm256_fmadd_ps(w, x2, a12);
      w = _mm256_broadcast_ss(ps + 2);
      a20 = _mm256_fmadd_ps(w, x0, a20), a21 = _mm256_fmadd_ps(w, x1, a21), a22 = _mm256_fmadd_ps(w, x2, a22);
      w = _mm256_broadcast_ss(ps + 3);
      a30 = _mm256_fmadd_ps(w, x0, a30), a31 = _mm256_fmadd_ps(w, x1, a31), a32 = _mm256_fmadd_ps(w, x2, a32);
    }
  }
  _mm256_storeu_ps(out, a00), _mm256_storeu_ps(out + 8, a01), _mm256_storeu_ps(out + 16, a02);
  out += ldo;
  _mm256_storeu_ps(out, a10), _mm256_storeu_ps(out + 8, a11), _mm256_storeu_ps(out + 16, a12);
  out += ldo;
  _mm256_storeu_ps(out, a20), _mm256_storeu_ps(out + 8, a21), _mm256_storeu_ps(out + 16, a22);
  out += ldo;
  _mm256_storeu_ps(out, a30), _mm256_storeu_ps(out + 8, a31), _mm256_storeu_ps(out + 16, a32);
}

__attribute__((target("avx2,fma"), always_inline)) inline void tiles_avx2(const float* in, int64_t plane, int64_t K,
                                                                          const int64_t* off, const float* panel,
                                                                          float* out, int64_t ldo, int64_t n) {
  for (int64_t o = 0; o < n; o += 24) tile_avx2(in + o, plane, K, off, panel, out + o, ldo);
}

__attribute__((target("avx2,fma"))) inline void conv_avx2(const float* in, int64_t plane, int64_t K,
                                                           const int64_t* off, const float* panel,
                                                           int64_t rblocks, int64_t P, int64_t band, float* out,
                                                           int64_t ldo) {
  SHC_DIRECT_BANDS(4, tiles_avx2)
}

// One AVX-512 tile: rows [0, 8) and positions [0, 16 V), 8 V named zmm accumulators (of 32).
// V = 3 but at a plane's last tile, which takes only the vectors it needs (a 14x14 plane is 210
// positions: 4 x 48 + 18, so 224 computed, not 240).
#define SHC_Z3(r) __m512 a##r##0 = _mm512_setzero_ps(), a##r##1 = a##r##0, a##r##2 = a##r##0
#define SHC_ZROW(r)                                                       \
  w = _mm512_set1_ps(ps[r]);                                              \
  a##r##0 = _mm512_fmadd_ps(w, x0, a##r##0);                              \
  if constexpr (V > 1) a##r##1 = _mm512_fmadd_ps(w, x1, a##r##1);         \
  if constexpr (V > 2) a##r##2 = _mm512_fmadd_ps(w, x2, a##r##2)
#define SHC_ZSTORE(r)                                                     \
  _mm512_storeu_ps(out + (r) * ldo, a##r##0);                             \
  if constexpr (V > 1) _mm512_storeu_ps(out + (r) * ldo + 16, a##r##1);   \
  if constexpr (V > 2) _mm512_storeu_ps(out + (r) * ldo + 32, a##r##2)
template <int V>
__attribute__((target("avx512f"), always_inline)) inline void tile_avx512(const float* in, int64_t plane, int64_t K,
                                                                          const int64_t* off, const float* panel,
                                                                          float* out, int64_t ldo) {
  SHC_Z3(0);
  SHC_Z3(1);
  SHC_Z3(2);
  SHC_Z3(3);
  SHC_Z3(4);
  SHC_Z3(5);
  SHC_Z3(6);
  SHC_Z3(7);
  for (int s = 0; s < 9; ++s) {
    const float* is = in + off[s];
    const float* ps = panel + s * K * 8;
    for (int64_t k = 0; k < K; ++k, is += plane, ps += 8) {
      const __m512 x0 = _mm512_loadu_ps(is);
      const __m512 x1 = V > 1 ? _mm512_loadu_ps(is + 16) : x0, x2 = V > 2 ? _mm512_loadu_ps(is + 32) : x0;
      __m512 w;
      SHC_ZROW(0);
      SHC_ZROW(1);
      SHC_ZROW(2);
      SHC_ZROW(3);
      SHC_ZROW(4);
      SHC_ZROW(5);
      SHC_ZROW(6);
      SHC_ZROW(7);
    }
  }
  SHC_ZSTORE(0);
  SHC_ZSTORE(1);
  SHC_ZSTORE(2);
  SHC_ZSTORE(3);
  SHC_ZSTORE(4);
  SHC_ZSTORE(5);
  SHC_ZSTORE(6);
  SHC_ZSTORE(7);
}
#undef SHC_Z3
#undef SHC_ZROW
#undef SHC_ZSTORE

// The full tiles, then the last one with 1, 2 or 3 vectors.
__attribute__((target("avx512f"), always_inline)) inline void tiles_avx512(const float* in, int64_t plane,
                                                                           int64_t K, const int64_t* off,
                                                                           const float* panel, float* out,
                                                                           int64_t ldo, int64_t n) {
  int64_t o = 0;
  for (; o + 48 <= n; o += 48) tile_avx512<3>(in + o, plane, K, off, panel, out + o, ldo);
  if (n - o > 32) tile_avx512<3>(in + o, plane, K, off, panel, out + o, ldo);
  else if (n - o > 16) tile_avx512<2>(in + o, plane, K, off, panel, out + o, ldo);
  else if (n - o > 0) tile_avx512<1>(in + o, plane, K, off, panel, out + o, ldo);
}

__attribute__((target("avx512f"))) inline void conv_avx512(const float* in, int64_t plane, int64_t K,
                                                            const int64_t* off, const float* panel,
                                                            int64_t rblocks, int64_t P, int64_t band, float* out,
                                                            int64_t ldo) {
  SHC_DIRECT_BANDS(8, tiles_avx512)
}
#endif
#undef SHC_DIRECT_BANDS

// The widest kernel this CPU runs, or nullptr (not x86-64, or no AVX2 + FMA). SHC_CPU_DIRECT_ISA
// (avx2) caps it, to measure the AVX2 kernel on an AVX-512 machine.
inline const Kernel* kernel(bool cap_avx2) {
#if SHC_DIRECT_X86
  static const Kernel k512{8, 48, conv_avx512, "avx512"}, k256{4, 24, conv_avx2, "avx2"};
  static const bool has512 = __builtin_cpu_supports("avx512f");
  static const bool has256 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has512 && !cap_avx2) return &k512;
  if (has256) return &k256;
#else
  (void)cap_avx2;
#endif
  return nullptr;
}

}  // namespace
}  // namespace direct
}  // namespace shc_cpu
