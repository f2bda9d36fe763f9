// The direct method's micro-kernels (their contract: direct_kernels.h), each compiled for its ISA
// with target attributes and reached only through kernel()'s table.
#include "direct_kernels.h"

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

// The split's row loop over SPLIT_ROW(src, n, even, odd): src[2i] -> even[i], src[2i + 1] -> odd[i].
#define SHC_SPLIT_ROWS(SPLIT_ROW)                                        \
  for (int64_t r = 0; r < H; ++r) {                                      \
    const int64_t a = (r + 1) % 2, i = (r + 1) / 2;                      \
    float* b0 = dst + 2 * a * Pq + 1 + i * Wp;                           \
    SPLIT_ROW(src + r * W, W, b0 + Pq, b0);                              \
  }

// The band loop (a macro: each ISA's copy must be compiled for that ISA for its tile to inline).
// TILES_FN(a, o0, n, rb): band [o0, o0 + n) of row block rb.
#define SHC_DIRECT_BANDS(ROWS, TILES_FN)                                    \
  const int64_t rblocks = (a.nrows + (ROWS) - 1) / (ROWS);                  \
  for (int64_t o0 = 0; o0 < a.P; o0 += a.band) {                           \
    const int64_t n = (o0 + a.band < a.P ? a.band : a.P - o0);             \
    for (int64_t rb = 0; rb < rblocks; ++rb) TILES_FN(a, o0, n, rb);        \
  }

inline void split_row(const float* src, int64_t n, float* even, float* odd) {
  for (int64_t i = 0; 2 * i < n; ++i) even[i] = src[2 * i];
  for (int64_t i = 0; 2 * i + 1 < n; ++i) odd[i] = src[2 * i + 1];
}

#if SHC_DIRECT_X86
// One AVX2 tile: rows [0, 4) of row block rb and positions [o, o + 24), of which the first rem
// (>= 1) are stored. The accumulators are named, not an array: GCC kept an array of __m256 on
// the stack and stored it back on every step. The edge masks are ANDed into the loads.
__attribute__((target("avx2,fma"), always_inline)) inline void tile_avx2(const Args& a, int64_t o, int64_t rb,
                                                                         int64_t rem) {
  const int64_t K = a.K, plane = a.plane;
  const float* in = a.in + o;
  const float* panel = a.panel + rb * 9 * K * 4;
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  for (int s = 0; s < 9; ++s) {
    const float* is = in + a.off[s];
    const float* ps = panel + s * K * 4;
    const float* e = reinterpret_cast<const float*>(a.edge[s] + o);
    const __m256 m0 = _mm256_loadu_ps(e), m1 = _mm256_loadu_ps(e + 8), m2 = _mm256_loadu_ps(e + 16);
    for (int64_t k = 0; k < K; ++k, is += plane, ps += 4) {
      const __m256 x0 = _mm256_and_ps(m0, _mm256_loadu_ps(is)), x1 = _mm256_and_ps(m1, _mm256_loadu_ps(is + 8)),
                   x2 = _mm256_and_ps(m2, _mm256_loadu_ps(is + 16));
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
  const int64_t r0 = rb * 4, nr = a.nrows - r0 < 4 ? a.nrows - r0 : 4;
  const __m256 b0 = _mm256_broadcast_ss(a.bias + r0), b1 = _mm256_broadcast_ss(a.bias + r0 + 1),
               b2 = _mm256_broadcast_ss(a.bias + r0 + 2), b3 = _mm256_broadcast_ss(a.bias + r0 + 3);
  float* out = a.out + r0 * a.ldo + o;
  // the rows r < nr; ST(p, k, v) stores v at p under the positions' mask k
#define SHC_YSTORE(r, ST)                                  \
  if (nr > (r)) {                                          \
    ST(out, k0, _mm256_add_ps(a##r##0, b##r));             \
    ST(out + 8, k1, _mm256_add_ps(a##r##1, b##r));         \
    ST(out + 16, k2, _mm256_add_ps(a##r##2, b##r));        \
  }                                                        \
  out += a.ldo
#define SHC_ALL(p, k, v) _mm256_storeu_ps(p, v)
  if (rem >= 24) {
    SHC_YSTORE(0, SHC_ALL);
    SHC_YSTORE(1, SHC_ALL);
    SHC_YSTORE(2, SHC_ALL);
    SHC_YSTORE(3, SHC_ALL);
  } else {
    const __m256i left = _mm256_set1_epi32(static_cast<int>(rem));
    const __m256i k0 = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i k1 = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
    const __m256i k2 = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(16, 17, 18, 19, 20, 21, 22, 23));
    SHC_YSTORE(0, _mm256_maskstore_ps);
    SHC_YSTORE(1, _mm256_maskstore_ps);
    SHC_YSTORE(2, _mm256_maskstore_ps);
    SHC_YSTORE(3, _mm256_maskstore_ps);
  }
#undef SHC_ALL
#undef SHC_YSTORE
}

__attribute__((target("avx2,fma"), always_inline)) inline void tiles_avx2(const Args& a, int64_t o0, int64_t n,
                                                                          int64_t rb) {
  for (int64_t o = 0; o < n; o += 24) tile_avx2(a, o0 + o, rb, n - o);
}

__attribute__((target("avx2,fma"))) inline void conv_avx2(const Args& a) { SHC_DIRECT_BANDS(4, tiles_avx2) }

// 8 floats into their 4 even and 4 odd elements, twice, with two shuffles each
__attribute__((target("avx2"), always_inline)) inline void split_row_avx2(const float* src, int64_t n, float* even,
                                                                          float* odd) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 lo = _mm256_loadu_ps(src + i), hi = _mm256_loadu_ps(src + i + 8);
    // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] -> 64-bit lanes 0 2 1 3: [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6]
    const __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 d = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(even + i / 2, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
    _mm256_storeu_ps(odd + i / 2, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(d), 0xD8)));
  }
  split_row(src + i, n - i, even + i / 2, odd + i / 2);
}

__attribute__((target("avx2"))) inline void split_avx2(const float* src, int64_t H, int64_t W, float* dst,
                                                       int64_t Pq, int64_t Wp) {
  SHC_SPLIT_ROWS(split_row_avx2)
}

// One AVX-512 tile: rows [0, 8) of row block rb and positions [o, o + 16 V), 8 V named zmm
// accumulators (of 32), of which the first rem (>= 1) positions are stored. V = 3 but at a
// plane's last tile, which takes only the vectors it needs (a 14x14 plane is 196 positions:
// 4 x 48 + 4, so 208 computed, not 240). The edge masks go into the loads (masked lanes read as
// zero), the store masks into the stores.
#define SHC_Z3(r) __m512 a##r##0 = _mm512_setzero_ps(), a##r##1 = a##r##0, a##r##2 = a##r##0
#define SHC_ZROW(r)                                                       \
  w = _mm512_set1_ps(ps[r]);                                              \
  a##r##0 = _mm512_fmadd_ps(w, x0, a##r##0);                              \
  if constexpr (V > 1) a##r##1 = _mm512_fmadd_ps(w, x1, a##r##1);         \
  if constexpr (V > 2) a##r##2 = _mm512_fmadd_ps(w, x2, a##r##2)
#define SHC_ZSTORE(r)                                                                                    \
  if (nr > (r)) {                                                                                        \
    const __m512 b = _mm512_set1_ps(bias[r]);                                                            \
    _mm512_mask_storeu_ps(out + (r) * ldo, k0, _mm512_add_ps(a##r##0, b));                               \
    if constexpr (V > 1) _mm512_mask_storeu_ps(out + (r) * ldo + 16, k1, _mm512_add_ps(a##r##1, b));     \
    if constexpr (V > 2) _mm512_mask_storeu_ps(out + (r) * ldo + 32, k2, _mm512_add_ps(a##r##2, b));     \
  }
__attribute__((target("avx512f"), always_inline)) inline __mmask16 mask16(const int32_t* e) {
  const __m512i v = _mm512_loadu_si512(e);
  return _mm512_test_epi32_mask(v, v);
}
// the first n (clamped to [0, 16]) lanes
__attribute__((target("avx512f"), always_inline)) inline __mmask16 first16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}
template <int V>
__attribute__((target("avx512f"), always_inline)) inline void tile_avx512(const Args& a, int64_t o, int64_t rb,
                                                                          int64_t rem) {
  const int64_t K = a.K, plane = a.plane;
  const float* in = a.in + o;
  const float* panel = a.panel + rb * 9 * K * 8;
  SHC_Z3(0);
  SHC_Z3(1);
  SHC_Z3(2);
  SHC_Z3(3);
  SHC_Z3(4);
  SHC_Z3(5);
  SHC_Z3(6);
  SHC_Z3(7);
  for (int s = 0; s < 9; ++s) {
    const float* is = in + a.off[s];
    const float* ps = panel + s * K * 8;
    const int32_t* e = a.edge[s] + o;
    const __mmask16 m0 = mask16(e), m1 = V > 1 ? mask16(e + 16) : m0, m2 = V > 2 ? mask16(e + 32) : m0;
    for (int64_t k = 0; k < K; ++k, is += plane, ps += 8) {
      const __m512 x0 = _mm512_maskz_loadu_ps(m0, is);
      const __m512 x1 = V > 1 ? _mm512_maskz_loadu_ps(m1, is + 16) : x0;
      const __m512 x2 = V > 2 ? _mm512_maskz_loadu_ps(m2, is + 32) : x0;
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
  const int64_t r0 = rb * 8, nr = a.nrows - r0, ldo = a.ldo;
  const float* bias = a.bias + r0;
  float* out = a.out + r0 * ldo + o;
  const __mmask16 k0 = first16(rem), k1 = first16(rem - 16), k2 = first16(rem - 32);
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

// The plane's last NP (1-4) positions of a row block, where they are all that is left of a
// vector (14x14: 196 = 12 x 16 + 4), for which a 16-lane tile would compute 16 positions: here
// the rows go in the lanes (a tap's 8 panel rows for one input plane are one ymm) and each
// position has an accumulator, two sets (even and odd k) to hide the FMA latency. A position
// whose tap s reads past the image's edge reads a zero with step 0 for that tap. Against the
// 16-lane tile there (one thread, batch 32 forward, median of 41 paired runs in one process):
// 32>32@14 0.97, 128>128@14 0.97, 64>64@14 batch 128 0.96, 16>32@28/2 0.98, 64>64@14 fwd+bwd
// 0.98; 256>256@14 1.00.
#define SHC_TAIL_POS(j)                                                              \
  const bool v##j = NP > (j) && e[(j) < NP ? (j) : 0] != 0;                          \
  const float* q##j = v##j ? base + (j) : &zero;                                     \
  const int64_t t##j = v##j ? plane : 0
#define SHC_TAIL_FMA(j)                                                              \
  if constexpr (NP > (j)) {                                                          \
    c##j = _mm256_fmadd_ps(w, _mm256_broadcast_ss(q##j), c##j);                      \
    d##j = _mm256_fmadd_ps(u, _mm256_broadcast_ss(q##j + t##j), d##j);               \
    q##j += 2 * t##j;                                                                \
  }
#define SHC_TAIL_LAST(j) \
  if constexpr (NP > (j)) c##j = _mm256_fmadd_ps(w, _mm256_broadcast_ss(q##j), c##j)
#define SHC_TAIL_OUT(j) \
  if constexpr (NP > (j)) _mm256_store_ps(t[j], _mm256_add_ps(_mm256_add_ps(c##j, d##j), b))
template <int NP>
__attribute__((target("avx512f,fma"), always_inline)) inline void tail_avx512(const Args& a, int64_t o,
                                                                              int64_t rb) {
  const int64_t K = a.K, plane = a.plane;
  const float* panel = a.panel + rb * 9 * K * 8;
  const float zero = 0.f;
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
  for (int s = 0; s < 9; ++s) {
    const float* ps = panel + s * K * 8;
    const float* base = a.in + o + a.off[s];
    const int32_t* e = a.edge[s] + o;
    SHC_TAIL_POS(0);
    SHC_TAIL_POS(1);
    SHC_TAIL_POS(2);
    SHC_TAIL_POS(3);
    int64_t k = 0;
    for (; k + 2 <= K; k += 2, ps += 16) {
      const __m256 w = _mm256_loadu_ps(ps), u = _mm256_loadu_ps(ps + 8);
      SHC_TAIL_FMA(0)
      SHC_TAIL_FMA(1)
      SHC_TAIL_FMA(2)
      SHC_TAIL_FMA(3)
    }
    if (k < K) {
      const __m256 w = _mm256_loadu_ps(ps);
      SHC_TAIL_LAST(0);
      SHC_TAIL_LAST(1);
      SHC_TAIL_LAST(2);
      SHC_TAIL_LAST(3);
    }
  }
  const int64_t r0 = rb * 8, nr = a.nrows - r0 < 8 ? a.nrows - r0 : 8;
  const __m256 b = _mm256_loadu_ps(a.bias + r0);
  alignas(32) float t[4][8];
  SHC_TAIL_OUT(0);
  SHC_TAIL_OUT(1);
  SHC_TAIL_OUT(2);
  SHC_TAIL_OUT(3);
  float* out = a.out + r0 * a.ldo + o;
  for (int64_t r = 0; r < nr; ++r)
    for (int j = 0; j < NP; ++j) out[r * a.ldo + j] = t[j][r];
}
#undef SHC_TAIL_POS
#undef SHC_TAIL_FMA
#undef SHC_TAIL_LAST
#undef SHC_TAIL_OUT

// The full tiles, then the last one with 1, 2 or 3 vectors, or 1-4 positions.
__attribute__((target("avx512f,fma"), always_inline)) inline void tiles_avx512(const Args& a, int64_t o0,
                                                                               int64_t n, int64_t rb) {
  int64_t o = 0;
  for (; o + 48 <= n; o += 48) tile_avx512<3>(a, o0 + o, rb, n - o);
  const int64_t rem = n - o;
  if (rem > 32) tile_avx512<3>(a, o0 + o, rb, rem);
  else if (rem > 16) tile_avx512<2>(a, o0 + o, rb, rem);
  else if (rem > 4) tile_avx512<1>(a, o0 + o, rb, rem);
  else if (rem == 4) tail_avx512<4>(a, o0 + o, rb);
  else if (rem == 3) tail_avx512<3>(a, o0 + o, rb);
  else if (rem == 2) tail_avx512<2>(a, o0 + o, rb);
  else if (rem == 1) tail_avx512<1>(a, o0 + o, rb);
}

__attribute__((target("avx512f,fma"))) inline void conv_avx512(const Args& a) { SHC_DIRECT_BANDS(8, tiles_avx512) }

// 32 floats into their 16 even and 16 odd elements with two two-source permutes; the tail masked
__attribute__((target("avx512f"), always_inline)) inline void split_row_avx512(const float* src, int64_t n,
                                                                               float* even, float* odd) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t i = 0; i < n; i += 32) {
    const int64_t r = n - i;  // >= 32 but at the tail
    const __m512 lo = _mm512_maskz_loadu_ps(first16(r), src + i);
    const __m512 hi = _mm512_maskz_loadu_ps(first16(r - 16), src + i + 16);
    _mm512_mask_storeu_ps(even + i / 2, first16((r + 1) / 2), _mm512_permutex2var_ps(lo, ie, hi));
    _mm512_mask_storeu_ps(odd + i / 2, first16(r / 2), _mm512_permutex2var_ps(lo, io, hi));
  }
}

__attribute__((target("avx512f"))) inline void split_avx512(const float* src, int64_t H, int64_t W, float* dst,
                                                            int64_t Pq, int64_t Wp) {
  SHC_SPLIT_ROWS(split_row_avx512)
}

// The rows tile: rows [0, 32) of block rb (two zmm, c0 and c1) by the P positions [ow0, ow0 + P)
// of output row oh, one zmm accumulator per row vector and position (2 P <= 28 of 32 registers).
// rows_tap: one tap (column KX of the kernel) over the positions J0 <= j < J1 that read inside the
// image: positions are broadcast from `base` (the tap row's input at S ow0), panel rows loaded.
template <int P, int S, int KX, int J0, int J1>
__attribute__((target("avx512f,fma"), always_inline)) inline void rows_tap(__m512 (&c0)[P], __m512 (&c1)[P],
                                                                           const float* base, const float* ps,
                                                                           int64_t K, int64_t plane) {
  for (int64_t k = 0; k < K; ++k, base += plane, ps += kRowsR) {
    const __m512 w0 = _mm512_loadu_ps(ps), w1 = _mm512_loadu_ps(ps + 16);
#pragma GCC unroll 16
    for (int j = J0; j < J1; ++j) {
      const __m512 x = _mm512_set1_ps(base[S * j + KX - 1]);
      c0[j] = _mm512_fmadd_ps(w0, x, c0[j]);
      c1[j] = _mm512_fmadd_ps(w1, x, c1[j]);
    }
  }
}

// v[j][l] -> v[l][j] for a 16 x 16 block: pairs of rows interleaved, then pairs of pairs, then
// 128-bit lanes gathered in two steps. (GCC 12 warns, where these are inlined, that the
// intrinsics' unused pass-through operand, _mm512_undefined_ps(), is uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512 (&v)[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 16
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  // u[4g + e] holds, in each 128-bit lane q, rows 4g..4g+3 at column 4q + e
#pragma GCC unroll 16
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]),
                  c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
#pragma GCC unroll 16
  for (int e = 0; e < 4; ++e) {
    const __m512 lo0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44), hi0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
    const __m512 lo1 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44),
                 hi1 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
    v[e] = _mm512_shuffle_f32x4(lo0, lo1, 0x88);
    v[4 + e] = _mm512_shuffle_f32x4(lo0, lo1, 0xDD);
    v[8 + e] = _mm512_shuffle_f32x4(hi0, hi1, 0x88);
    v[12 + e] = _mm512_shuffle_f32x4(hi0, hi1, 0xDD);
  }
}

// dst[t * ld + i] = src[i * stride + t] for the 16 rows i of 9 taps t (a weight's tap-major
// re-layout, cpu_util.cpp's taps_major): 16 loads, one transpose, 9 stores.
__attribute__((target("avx512f"))) inline void taps9_avx512(const float* src, int64_t stride, float* dst,
                                                            int64_t ld) {
  __m512 v[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) v[i] = _mm512_maskz_loadu_ps(0x1FF, src + i * stride);
  transpose16(v);
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) _mm512_storeu_ps(dst + t * ld, v[t]);
}

// 16 rows' accumulators c[j] (position j, rows in the lanes) to out[l * ldo + j] + bias[l], l < nr
template <int P>
__attribute__((target("avx512f"), always_inline)) inline void rows_store(const __m512 (&c)[P], const float* bias,
                                                                         int64_t nr, float* out, int64_t ldo) {
  __m512 v[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) v[j] = j < P ? c[j < P ? j : 0] : _mm512_setzero_ps();
  transpose16(v);
  const __mmask16 k = first16(P);
  const int64_t n = nr < 16 ? nr : 16;
  for (int64_t l = 0; l < n; ++l) _mm512_mask_storeu_ps(out + l * ldo, k, _mm512_add_ps(v[l], _mm512_set1_ps(bias[l])));
}

template <int P, int S>
__attribute__((target("avx512f,fma"), always_inline)) inline void rows_tile(const RowsArgs& a, int64_t rb, int64_t oh,
                                                                            int64_t ow0) {
  __m512 c0[P], c1[P];
#pragma GCC unroll 16
  for (int j = 0; j < P; ++j) c0[j] = c1[j] = _mm512_setzero_ps();
  const int64_t K = a.K, W = a.W, plane = a.plane, step = K * kRowsR;
  const float* panel = a.panel + rb * 9 * step;
  // the first position's left tap reads column -1; the last one's right tap column W where S (ow0 + P - 1) + 1 = W
  const bool first = ow0 == 0, last = S * (ow0 + P - 1) + 1 >= W;
  const int64_t ky0 = S * oh == 0 ? 1 : 0, ky1 = S * oh + 1 >= a.H ? 2 : 3;
  for (int64_t ky = ky0; ky < ky1; ++ky) {
    const float* base = a.in + (S * oh + ky - 1) * W + S * ow0;
    const float* ps = panel + ky * 3 * step;
    if (first) rows_tap<P, S, 0, 1, P>(c0, c1, base, ps, K, plane);
    else rows_tap<P, S, 0, 0, P>(c0, c1, base, ps, K, plane);
    rows_tap<P, S, 1, 0, P>(c0, c1, base, ps + step, K, plane);
    if (last) rows_tap<P, S, 2, 0, P - 1>(c0, c1, base, ps + 2 * step, K, plane);
    else rows_tap<P, S, 2, 0, P>(c0, c1, base, ps + 2 * step, K, plane);
  }
  const int64_t r0 = rb * kRowsR, nr = a.nrows - r0;
  float* out = a.out + r0 * a.ldo + oh * a.OW + ow0;
  rows_store<P>(c0, a.bias + r0, nr, out, a.ldo);
  if (nr > 16) rows_store<P>(c1, a.bias + r0 + 16, nr - 16, out + 16 * a.ldo, a.ldo);
}

// Each output row in T = ceil(OW / 14) tiles of near-equal width (OW = 16: two of 8); row block
// outermost, so its panel (9 K 32 floats) is read from L2 by every tile of the plane.
template <int S>
__attribute__((target("avx512f,fma"), always_inline)) inline void rows_plane(const RowsArgs& a) {
  const int64_t T = (a.OW + 13) / 14, rblocks = (a.nrows + kRowsR - 1) / kRowsR;
  for (int64_t rb = 0; rb < rblocks; ++rb)
    for (int64_t oh = 0; oh < a.OH; ++oh)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t ow0 = a.OW * i / T, p = a.OW * (i + 1) / T - ow0;
        switch (p) {
#define SHC_ROWS_CASE(n)             \
  case n:                            \
    rows_tile<n, S>(a, rb, oh, ow0); \
    break;
          SHC_ROWS_CASE(1) SHC_ROWS_CASE(2) SHC_ROWS_CASE(3) SHC_ROWS_CASE(4) SHC_ROWS_CASE(5)
          SHC_ROWS_CASE(6) SHC_ROWS_CASE(7) SHC_ROWS_CASE(8) SHC_ROWS_CASE(9) SHC_ROWS_CASE(10)
          SHC_ROWS_CASE(11) SHC_ROWS_CASE(12) SHC_ROWS_CASE(13) SHC_ROWS_CASE(14)
#undef SHC_ROWS_CASE
          default:
            break;
        }
      }
}

__attribute__((target("avx512f,fma"))) inline void rows_avx512(const RowsArgs& a) {
  if (a.S == 2) rows_plane<2>(a);
  else rows_plane<1>(a);
}
#pragma GCC diagnostic pop
#endif
#undef SHC_DIRECT_BANDS
#undef SHC_SPLIT_ROWS

}  // namespace

const Kernel* kernel(bool cap_avx2) {
#if SHC_DIRECT_X86
  static const Kernel k512{8, 48, 256 * 256, conv_avx512, split_avx512, "avx512", rows_avx512, taps9_avx512};
  static const Kernel k256{4, 24, 128 * 128, conv_avx2, split_avx2, "avx2", nullptr, nullptr};
  static const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  static const bool has256 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has512 && !cap_avx2) return &k512;
  if (has256) return &k256;
#else
  (void)cap_avx2;
#endif
  return nullptr;
}

}  // namespace direct
}  // namespace shc_cpu
