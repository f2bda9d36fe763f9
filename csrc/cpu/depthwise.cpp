// The depthwise method (depthwise.h): the layouts (Plan), the vector policies of each ISA, the
// per-ISA copies of the loops (depthwise_kernels.inc) and the drivers that split the batch over
// threads.
#include "depthwise.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "hyper.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SHC_DW_X86 1
#else
#define SHC_DW_X86 0
#endif

namespace shc_cpu {
namespace depthwise {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }

// The buffers' layouts for a conv and a vector width of L lanes (depthwise.h).
struct Plan {
  shc::ConvGeom g;
  int64_t L;
  // x: padded rows (Hp) of sw column phases of Ls values: x[r][c] at (r + ph) * xrow + q * Ls + k,
  // c + pw = k * sw + q; tap t = (i, j) of output (oh, ow) at oh * sh * xrow + ow + xoff[t].
  int64_t Hp, Ls, xrow, xplane;
  std::vector<int64_t> xoff;
  // dy: Hd rows of Ld values, dy[oh][ow] at (oh + Pt) * Ld + Pl + ow, zero around.
  int64_t Pt, Pl, Ld, Hd, dyplane;
  // dx: for row phase a = (r + ph) % sh and column phase q, the taps (t, offset into dy's buffer
  // from u * Ld + k, u = (r + ph) / sh) that reach dx[r][k * sw + q - pw]; Lr: a phase's row.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> dxtaps;
  int64_t Lr;
  // whether the units' planes are prefetched a few units ahead (kPrefetchUnits): where a unit's
  // input planes are at most 2 KiB (a 14x14 plane and less); larger units the hardware prefetcher
  // streams, and their hundreds of prefetches stalled on the full miss buffers (8 channels per
  // group at 14x14: 6 KiB of x, of dx and 1.5 KiB of dy a unit)
  bool prefetch;
  // whether fill_x stores whole vectors (the phase rows have room past the plane's columns)
  bool xfull;

  Plan(const shc::ConvGeom& geom, int64_t lanes, int64_t elem) : g(geom), L(lanes) {
    prefetch = g.Dg * g.H * g.W * elem <= 2048;
    Hp = g.H + 2 * g.ph;
    const int64_t Wq = ceil_div(g.W + 2 * g.pw, g.sw);
    const int64_t max_col = ((g.kw - 1) * g.dw) / g.sw;
    // the forward reads two vectors per step past each output row's start, one where a row is one
    // vector (fwd_planes; a third narrower buffer: 8 planes of a 14x14 stride-2 group 16 KiB, not 24)
    const int64_t fwd_cols = g.OW <= L ? L : round_up(g.OW, 2 * L);
    Ls = round_up(std::max(Wq, fwd_cols + max_col + 1), L);
    xrow = g.sw * Ls;
    xplane = Hp * xrow;
    xoff.resize(static_cast<size_t>(g.T));
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j)
        xoff[i * g.kw + j] = i * g.dh * xrow + ((j * g.dw) % g.sw) * Ls + (j * g.dw) / g.sw;

    Pt = ceil_div((g.kh - 1) * g.dh, g.sh);
    Pl = ceil_div((g.kw - 1) * g.dw, g.sw);
    const int64_t urows = (g.ph + g.H - 1) / g.sh + 1;  // dx rows reach dy rows below u
    Hd = Pt + std::max(g.OH, urows) + 1;
    const int64_t kmax = (g.pw + g.W - 1) / g.sw + 1;  // phase columns of dx
    Ld = round_up(Pl + std::max(round_up(g.OW, L), kmax + 2 * L) + 1, L);  // dx_rows: two vectors a step
    dyplane = Hd * Ld;
    Lr = round_up(kmax + 2 * L, L);
    // dx_rows stores CB <= 2 whole vectors from k0 < kmax into a phase row, merge_row2 reads whole
    // vectors from k <= kmax; fill_dy whole vectors from Pl
    TORCH_CHECK(kmax + 2 * L <= Lr && Pl + round_up(g.OW, L) <= Ld, "shc depthwise method: bad plan");
    // fill_x's whole vectors (copy_row, split_row2) stay inside a phase row
    const int64_t xend = g.sw == 1   ? g.pw + round_up(g.W, L)
                         : g.sw == 2 ? (g.pw + 1) / 2 + ceil_div(g.W, 2 * L) * L
                                     : Ls + 1;
    xfull = xend <= Ls;
    dxtaps.resize(static_cast<size_t>(g.sh * g.sw));
    for (int64_t a = 0; a < g.sh; ++a)
      for (int64_t q = 0; q < g.sw; ++q)
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t er = a - i * g.dh, ec = q - j * g.dw;
            if (er % g.sh != 0 || ec % g.sw != 0) continue;
            const int64_t off = (er / g.sh + Pt) * Ld + Pl + ec / g.sw;
            dxtaps[a * g.sw + q].emplace_back(i * g.kw + j, off);
          }
  }
  // The phase columns [lo, hi) of phase q that hold dx columns c = k * sw + q - pw in [0, W).
  void phase_cols(int64_t q, int64_t* lo, int64_t* hi) const {
    *lo = g.pw > q ? ceil_div(g.pw - q, g.sw) : 0;
    *hi = g.pw + g.W - 1 >= q ? (g.pw + g.W - 1 - q) / g.sw + 1 : 0;
  }
};

// Samples per before() / done() call. The fused layer's hypernetwork runs per call, its fc1 (D/2 x 2D
// at the default width: D^2 values) read once for the call's samples, so a block holds about as many
// x values (D / HW samples; one at 28x28 and 96 channels, 14 at 7x7 and 672, where fc1 per sample
// was most of the layer's forward). Where fc1 is too large to stay in L2 beside x (from 512 KiB:
// 362+ channels) its every read comes from L3, so a block there holds at least kInPlaceRows
// samples (HyperParams: the GEMM reads fc1 in place), even where their x then leaves L2 before the
// conv reads it again (prefetched: kPrefetchUnits). Up to 4 MiB of x (at least kInPlaceRows
// samples' where that is the rule) and an equal share of the batch per thread.
int64_t sample_block(const shc::ConvGeom& g, int64_t elem) {
  const int64_t HW = std::max<int64_t>(1, g.H * g.W), D = std::max<int64_t>(1, g.D);
  int64_t nb = ceil_div(D, HW), cap = (int64_t(1) << 20) / (D * HW);
  if (D * D * elem > (int64_t(512) << 10))
    nb = std::max(nb, HyperParams::kInPlaceRows), cap = std::max(cap, HyperParams::kInPlaceRows);
  nb = std::min(nb, cap);
  nb = std::max<int64_t>(1, std::min(nb, ceil_div(g.N, at::get_num_threads())));
  // blocks of equal size (32 samples in blocks of 14: 11, 11, 10, not 14, 14, 4): a small last
  // block would take the hypernetwork's path for a few samples
  return ceil_div(g.N, ceil_div(g.N, nb));
}

// ------------------------------------------------------------------ the plain C++ copy
namespace kgen {
template <typename S>
struct V {
  using T = S;
  using vec = S;
  static constexpr int64_t L = 1;
  static vec zero() { return S(0); }
  static vec set1(S a) { return a; }
  static vec loadu(const S* p) { return *p; }
  static vec load_n(const S* p, int64_t) { return *p; }
  static void storeu(S* p, vec v) { *p = v; }
  static void store_n(S* p, vec v, int64_t) { *p = v; }
  static vec fmadd(vec a, vec b, vec c) { return a * b + c; }
  static vec add(vec a, vec b) { return a + b; }
  static double hsum(vec v) { return static_cast<double>(v); }
  static void hsum8(const vec* a, double* out) {
    for (int i = 0; i < 8; ++i) out[i] = static_cast<double>(a[i]);
  }
  static void deinterleave2(vec a, vec b, vec& even, vec& odd) { even = a, odd = b; }
  static void interleave2(vec even, vec odd, vec& lo, vec& hi) { lo = even, hi = odd; }
};
#include "depthwise_kernels.inc"
}  // namespace kgen

#if SHC_DW_X86
// ------------------------------------------------------------------ AVX2 + FMA
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace k256 {
alignas(32) constexpr int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
struct V {
  using T = float;
  using vec = __m256;
  static constexpr int64_t L = 8;
  static __m256i mask(int64_t n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n)); }
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float a) { return _mm256_set1_ps(a); }
  static vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static vec load_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, mask(n)); }
  static void storeu(float* p, vec v) { _mm256_storeu_ps(p, v); }
  // the first n lanes (all from 8 on) by 4-, 2- and 1-value stores: AMD's vmaskmovps store is microcoded
  // (AVX2 672-channel 7x7 forward, every output row and copied input row a partial vector: 1.8x
  // the AVX-512 copy's time)
  static void store_n(float* p, vec v, int64_t n) {
    if (n >= 8) return _mm256_storeu_ps(p, v);
    __m128 h = _mm256_castps256_ps128(v);
    if (n >= 4) {
      _mm_storeu_ps(p, h);
      h = _mm256_extractf128_ps(v, 1), p += 4, n -= 4;
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), h);
      h = _mm_movehl_ps(h, h), p += 2, n -= 2;
    }
    if (n >= 1) _mm_store_ss(p, h);
  }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static double hsum(vec v) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    alignas(32) double t[4];
    _mm256_store_pd(t, _mm256_add_pd(lo, hi));
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
  // out[i] = the sum of a[i]'s lanes, i < 8: a transposing tree of adds (9 shuffles and adds for the
  // eight, where hsum takes about as many for one); the lanes summed in float
  static __m256 sum8(const __m256* a) {
    const __m256 ab = _mm256_hadd_ps(a[0], a[1]), cd = _mm256_hadd_ps(a[2], a[3]);
    const __m256 ef = _mm256_hadd_ps(a[4], a[5]), gh = _mm256_hadd_ps(a[6], a[7]);
    const __m256 abcd = _mm256_hadd_ps(ab, cd), efgh = _mm256_hadd_ps(ef, gh);
    return _mm256_add_ps(_mm256_permute2f128_ps(abcd, efgh, 0x20), _mm256_permute2f128_ps(abcd, efgh, 0x31));
  }
  static void hsum8(const vec* a, double* out) {
    const __m256 s = sum8(a);
    _mm256_storeu_pd(out, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
    _mm256_storeu_pd(out + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
  }
  // (a0..a7, b0..b7) -> even (a0 a2 .. b6), odd (a1 a3 .. b7), and back
  static void deinterleave2(vec a, vec b, vec& even, vec& odd) {
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  }
  static void interleave2(vec even, vec odd, vec& lo, vec& hi) {
    const vec l = _mm256_unpacklo_ps(even, odd), h = _mm256_unpackhi_ps(even, odd);
    lo = _mm256_permute2f128_ps(l, h, 0x20), hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
};
#include "depthwise_kernels.inc"
}  // namespace k256
#pragma GCC pop_options

// ------------------------------------------------------------------ AVX-512F + FMA
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace k512 {
struct V {
  using T = float;
  using vec = __m512;
  static constexpr int64_t L = 16;
  static __mmask16 mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static vec zero() { return _mm512_setzero_ps(); }
  static vec set1(float a) { return _mm512_set1_ps(a); }
  static vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static vec load_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void storeu(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, vec v, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static double hsum(vec v) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
  // as k256::V::hsum8, each vector's halves added first
  static void hsum8(const vec* a, double* out) {
    __m256 h[8];
    for (int i = 0; i < 8; ++i)
      h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[i]), 1)));
    _mm512_storeu_pd(out, _mm512_cvtps_pd(k256::V::sum8(h)));
  }
  static void deinterleave2(vec a, vec b, vec& even, vec& odd) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    even = _mm512_permutex2var_ps(a, ie, b);
    odd = _mm512_permutex2var_ps(a, _mm512_add_epi32(ie, _mm512_set1_epi32(1)), b);
  }
  static void interleave2(vec even, vec odd, vec& lo, vec& hi) {
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    lo = _mm512_permutex2var_ps(even, il, odd);
    hi = _mm512_permutex2var_ps(even, _mm512_add_epi32(il, _mm512_set1_epi32(8)), odd);
  }
};
#include "depthwise_kernels.inc"
}  // namespace k512
#pragma GCC pop_options
#endif

}  // namespace

Isa isa_from_name(const char* name) {
  if (name == nullptr) return Isa::kGeneric;
  if (std::strcmp(name, "avx512") == 0) return Isa::kAvx512;
  if (std::strcmp(name, "avx2") == 0) return Isa::kAvx2;
  return Isa::kGeneric;
}

// Up to 8 input channels per group at every stride: the planes of a group computed several at a
// time share their loads (fwd_block, corr_taps, dx_rows), and with them 8 channels per group at
// stride 2 beat im2col's per-group GEMMs (one thread, batch 32, 128@14/2 with 16 groups, paired in
// one run: forward op 2.9 against 3.6 ms with AVX-512, 2.0 against 2.5 with AVX2; backward 7.4
// against 10.9 and 4.6 against 7.3 ms).
// Planes whose output rows and dx phase rows fit 8 lanes (7x7 outputs, 14x14 inputs at stride 2)
// take the AVX2 copy on an AVX-512 CPU too: a 16-lane row there is half padding, and on this
// machine (AMD EPYC, 512-bit ops in two halves) the fused 672-channel 7x7 forward took 3.0 ms with
// the AVX2 copy against 3.7 ms with the AVX-512 one (one thread, batch 32, paired in one run).
static Isa narrow_isa(const shc::ConvGeom& g, Isa isa) {
  const bool narrow = g.OW <= 8 && (g.W + g.pw + g.sw - 1) / g.sw <= 8;
  return isa == Isa::kAvx512 && narrow ? Isa::kAvx2 : isa;
}

template <typename T>
void forward(const shc::ConvGeom& g, Isa isa, const T* x, const T* w, const T* m, const T* bias, T* y,
             const SampleFn* before) {
  isa = narrow_isa(g, isa);
  TORCH_CHECK(applies(g), "shc depthwise method: not a grouped conv with at most ", kMaxDg,
              " input channels per group");
#if SHC_DW_X86
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::kAvx512) return k512::forward_with<k512::V>(g, x, w, m, bias, y, before);
    if (isa == Isa::kAvx2) return k256::forward_with<k256::V>(g, x, w, m, bias, y, before);
  }
#endif
  (void)isa;
  kgen::forward_with<kgen::V<T>>(g, x, w, m, bias, y, before);
}

template <typename T>
void backward(const shc::ConvGeom& g, Isa isa, const T* dy, const T* x, const T* w, const T* m, T* dx, T* gw,
              double* dm, double* db, const SampleFn* done) {
  isa = narrow_isa(g, isa);
  TORCH_CHECK(applies(g), "shc depthwise method: not a grouped conv with at most ", kMaxDg,
              " input channels per group");
#if SHC_DW_X86
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::kAvx512) return k512::backward_with<k512::V>(g, dy, x, w, m, dx, gw, dm, db, done);
    if (isa == Isa::kAvx2) return k256::backward_with<k256::V>(g, dy, x, w, m, dx, gw, dm, db, done);
  }
#endif
  (void)isa;
  kgen::backward_with<kgen::V<T>>(g, dy, x, w, m, dx, gw, dm, db, done);
}

template void forward<float>(const shc::ConvGeom&, Isa, const float*, const float*, const float*, const float*,
                             float*, const SampleFn*);
template void forward<double>(const shc::ConvGeom&, Isa, const double*, const double*, const double*,
                              const double*, double*, const SampleFn*);
template void backward<float>(const shc::ConvGeom&, Isa, const float*, const float*, const float*, const float*,
                              float*, float*, double*, double*, const SampleFn*);
template void backward<double>(const shc::ConvGeom&, Isa, const double*, const double*, const double*,
                               const double*, double*, double*, double*, double*, const SampleFn*);

}  // namespace depthwise
}  // namespace shc_cpu
