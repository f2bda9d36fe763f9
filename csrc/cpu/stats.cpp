// Mean and population variance of one plane from the sums of x - k and its square, k = x[0]:
// var = s2/n - m1^2 with m1 = s1/n. That loses a factor 1 + m1^2/var of the sums' precision, so
// when m1^2 > 16 var (x[0] far from the mean: shift_far) the plane is summed again with k its mean
// (then m1 is only k's rounding error: the corrected two-pass formula). fp64 planes sum in
// double. fp32 planes sum in float over blocks of 512 elements in 32 lanes (each lane adds 16
// values, then the lanes pairwise), the blocks' sums in double: converting every element to
// double, or two passes on every plane, made the pass several times slower than reading x. The order is fixed
// (deterministic); the AVX2 copies below add in another fixed order. On x86-64 the portable copy
// is also compiled for AVX2 (the rest of the build targets x86-64-v2).
#include "stats.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "args.h"
#include "cpu_util.h"
#include "ops.h"

namespace shc_cpu {
namespace {

// whether the shift k of a one-pass result (mean, var) was far from the mean
inline bool shift_far(double mean, double k, double var) {
  constexpr double kShiftFar = 16.0;
  return (mean - k) * (mean - k) > kShiftFar * var;
}
#define SHC_PLANE_MOMENTS(NAME, T, LANES, BLOCK)                            \
  SHC_MULTIVERSION void NAME##_shifted(const T* x, int64_t n, T k, double* mean, double* var) { \
    double s1 = 0.0, s2 = 0.0;                                             \
    for (int64_t q0 = 0; q0 < n; q0 += BLOCK) {                            \
      const int64_t q1 = std::min<int64_t>(n, q0 + BLOCK);                 \
      T a1[LANES] = {}, a2[LANES] = {};                                    \
      int64_t q = q0;                                                      \
      for (; q + LANES <= q1; q += LANES) {                                \
        _Pragma("omp simd") for (int j = 0; j < LANES; ++j) {              \
          const T dlt = x[q + j] - k;                                      \
          a1[j] += dlt;                                                    \
          a2[j] += dlt * dlt;                                              \
        }                                                                  \
      }                                                                    \
      for (int j = 0; q < q1; ++q, ++j) {                                  \
        const T dlt = x[q] - k;                                            \
        a1[j] += dlt;                                                      \
        a2[j] += dlt * dlt;                                                \
      }                                                                    \
      for (int w = LANES / 2; w > 0; w /= 2) /* the lanes, pairwise */     \
        for (int j = 0; j < w; ++j) a1[j] += a1[j + w], a2[j] += a2[j + w]; \
      s1 += static_cast<double>(a1[0]), s2 += static_cast<double>(a2[0]);  \
    }                                                                      \
    const double m1 = s1 / static_cast<double>(n);                         \
    *mean = static_cast<double>(k) + m1;                                   \
    *var = std::max(0.0, s2 / static_cast<double>(n) - m1 * m1);           \
  }                                                                        \
  void NAME(const T* x, int64_t n, double* mean, double* var) {            \
    NAME##_shifted(x, n, x[0], mean, var);                                 \
    if (shift_far(*mean, static_cast<double>(x[0]), *var)) NAME##_shifted(x, n, static_cast<T>(*mean), mean, var); \
  }
SHC_PLANE_MOMENTS(plane_moments_portable, float, 32, 512)
SHC_PLANE_MOMENTS(plane_moments, double, 16, INT64_MAX)
#undef SHC_PLANE_MOMENTS

#if defined(__x86_64__) && defined(__GNUC__)
// The fp32 copy in AVX2 intrinsics: the same blocks of 512 in 32 lanes (four vectors per sum),
// the lanes added in registers. The portable copy's lane arrays go through the stack (store
// forwarding stalls).
__attribute__((target("avx2"))) float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

// Lanes [0, left) of a vector of 8.
__attribute__((target("avx2"))) __m256i tail_mask(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Mean and variance from the sums of x - k and its square, k given.
__attribute__((target("avx2"))) void moments_shifted_avx2(const float* x, int64_t n, float k, double* mean,
                                                          double* var) {
  const __m256 kv = _mm256_set1_ps(k);
  double s1 = 0.0, s2 = 0.0;
  int64_t q = 0;
  while (q + 32 <= n) {
    const int64_t qend = std::min<int64_t>(n, q + 512);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (; q + 32 <= qend; q += 32) {
      const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + q), kv), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + q + 8), kv);
      const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(x + q + 16), kv);
      const __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(x + q + 24), kv);
      a0 = _mm256_add_ps(a0, d0), a1 = _mm256_add_ps(a1, d1), a2 = _mm256_add_ps(a2, d2), a3 = _mm256_add_ps(a3, d3);
      b0 = _mm256_add_ps(b0, _mm256_mul_ps(d0, d0)), b1 = _mm256_add_ps(b1, _mm256_mul_ps(d1, d1));
      b2 = _mm256_add_ps(b2, _mm256_mul_ps(d2, d2)), b3 = _mm256_add_ps(b3, _mm256_mul_ps(d3, d3));
    }
    s1 += hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    s2 += hsum8(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
  }
  // the last < 32 in vectors of 8, the last < 8 masked (small planes: 7x7 is 32 + 17)
  __m256 a = _mm256_setzero_ps(), b = a;
  for (; q + 8 <= n; q += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + q), kv);
    a = _mm256_add_ps(a, d), b = _mm256_add_ps(b, _mm256_mul_ps(d, d));
  }
  if (q < n) {
    const __m256i mask = tail_mask(n - q);
    const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + q, mask), kv), _mm256_castsi256_ps(mask));
    a = _mm256_add_ps(a, d), b = _mm256_add_ps(b, _mm256_mul_ps(d, d));
  }
  s1 += hsum8(a), s2 += hsum8(b);
  const double m1 = s1 / static_cast<double>(n);
  *mean = static_cast<double>(k) + m1;
  *var = std::max(0.0, s2 / static_cast<double>(n) - m1 * m1);
}

__attribute__((target("avx2"))) void plane_moments_avx2(const float* x, int64_t n, double* mean, double* var) {
  moments_shifted_avx2(x, n, x[0], mean, var);
  if (shift_far(*mean, static_cast<double>(x[0]), *var))
    moments_shifted_avx2(x, n, static_cast<float>(*mean), mean, var);
}

// The sums of four consecutive planes of n in one vector [plane 0, 1, 2, 3] (per 128-bit half,
// the halves added).
__attribute__((target("avx2"))) __m128 hsum4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// The four planes' moments from the sums of x - ks[i] and its square: in float over blocks of
// 128 (each lane adds at most 16 values, as in the one-plane path), the blocks' sums in double.
__attribute__((target("avx2"))) void moments4_shifted_avx2(const float* x, int64_t n, const float* ks, double* mean,
                                                           double* var) {
  const float *x0 = x, *x1 = x + n, *x2 = x + 2 * n, *x3 = x + 3 * n;
  const __m256 k0 = _mm256_set1_ps(ks[0]), k1 = _mm256_set1_ps(ks[1]), k2 = _mm256_set1_ps(ks[2]);
  const __m256 k3 = _mm256_set1_ps(ks[3]);
  __m256d s1 = _mm256_setzero_pd(), s2 = s1;
  for (int64_t q0 = 0; q0 < n; q0 += 128) {
    const int64_t q1 = std::min<int64_t>(n, q0 + 128);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const auto step = [&](__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 keep) __attribute__((target("avx2"))) {
      const __m256 d0 = _mm256_and_ps(_mm256_sub_ps(v0, k0), keep), d1 = _mm256_and_ps(_mm256_sub_ps(v1, k1), keep);
      const __m256 d2 = _mm256_and_ps(_mm256_sub_ps(v2, k2), keep), d3 = _mm256_and_ps(_mm256_sub_ps(v3, k3), keep);
      a0 = _mm256_add_ps(a0, d0), a1 = _mm256_add_ps(a1, d1), a2 = _mm256_add_ps(a2, d2), a3 = _mm256_add_ps(a3, d3);
      b0 = _mm256_add_ps(b0, _mm256_mul_ps(d0, d0)), b1 = _mm256_add_ps(b1, _mm256_mul_ps(d1, d1));
      b2 = _mm256_add_ps(b2, _mm256_mul_ps(d2, d2)), b3 = _mm256_add_ps(b3, _mm256_mul_ps(d3, d3));
    };
    const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t q = q0;
    for (; q + 8 <= q1; q += 8)
      step(_mm256_loadu_ps(x0 + q), _mm256_loadu_ps(x1 + q), _mm256_loadu_ps(x2 + q), _mm256_loadu_ps(x3 + q), all);
    if (q < q1) {
      const __m256i mask = tail_mask(q1 - q);
      step(_mm256_maskload_ps(x0 + q, mask), _mm256_maskload_ps(x1 + q, mask), _mm256_maskload_ps(x2 + q, mask),
           _mm256_maskload_ps(x3 + q, mask), _mm256_castsi256_ps(mask));
    }
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(hsum4x8(a0, a1, a2, a3)));
    s2 = _mm256_add_pd(s2, _mm256_cvtps_pd(hsum4x8(b0, b1, b2, b3)));
  }
  const __m256d inv = _mm256_set1_pd(1.0 / static_cast<double>(n));
  const __m256d m1 = _mm256_mul_pd(s1, inv);
  _mm256_storeu_pd(mean, _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(ks)), m1));
  const __m256d v = _mm256_sub_pd(_mm256_mul_pd(s2, inv), _mm256_mul_pd(m1, m1));
  _mm256_storeu_pd(var, _mm256_max_pd(v, _mm256_setzero_pd()));
}

// Planes from this size on go one at a time, in blocks of 512: four at a time helps small planes,
// not 28x28, and slows 56x56 (four streams a plane apart).
constexpr int64_t kMoments4Max = 512;

// Four consecutive planes of n < kMoments4Max (small planes: one plane at a time pays for its
// horizontal sums and scalar tail on every plane): each plane's sums in one vector, the four planes'
// horizontal sums in one tree per block of 128, the moments in double vectors. mean and var get
// four values each.
__attribute__((target("avx2"))) void moments4_avx2(const float* x, int64_t n, double* mean, double* var) {
  float ks[4] = {x[0], x[n], x[2 * n], x[3 * n]};
  moments4_shifted_avx2(x, n, ks, mean, var);
  bool far = false;
  for (int i = 0; i < 4; ++i) far = far || shift_far(mean[i], static_cast<double>(ks[i]), var[i]);
  if (!far) return;
  for (int i = 0; i < 4; ++i) ks[i] = static_cast<float>(mean[i]);
  moments4_shifted_avx2(x, n, ks, mean, var);
}

#endif

void plane_moments(const float* x, int64_t n, double* mean, double* var) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_avx2()) return plane_moments_avx2(x, n, mean, var);
#endif
  plane_moments_portable(x, n, mean, var);
}

// Planes [p, e) of n: how many moments4_avx2 took from the front (a multiple of 4; 0 where it
// does not apply), their moments in mean and var.
template <typename T>
int64_t moments_batch(const T* x, int64_t p, int64_t e, int64_t n, double* mean, double* var) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float>) {
    if (n >= kMoments4Max || !cpu_avx2()) return 0;
    int64_t q = p;
    for (; q + 4 <= e; q += 4) moments4_avx2(x + q * n, n, mean + (q - p), var + (q - p));
    return q - p;
  }
#endif
  (void)x, (void)p, (void)e, (void)n, (void)mean, (void)var;
  return 0;
}

// dx = grad_mu/HW + grad_sigma * (x - mu) / (HW * sigma)
template <typename T>
void stats_backward_impl(const T* gmp, const T* gsp, const T* xp, const T* mup, const T* sp,
                         int64_t planes, int64_t HW, T* out) {
  const int64_t grain = std::max<int64_t>(1, 16384 / HW);
  at::parallel_for(0, planes, grain, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p)
      stats_backward_plane(out + p * HW, xp + p * HW, HW, gmp[p], gsp[p], mup[p], sp[p], false);
  });
}

// a1[j] = sum over q in [q0, q1) of xd[q * nb + j] - k[j], a2[j] of its square, in T
template <typename T, int64_t W>
SHC_MULTIVERSION void lane_block_sums(const T* xd, int64_t q0, int64_t q1, int64_t nb, const T* k, T* a1, T* a2) {
  for (int64_t j = 0; j < W; ++j) a1[j] = T(0), a2[j] = T(0);
  for (int64_t q = q0; q < q1; ++q) {
    const T* v = xd + q * nb;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      const T dlt = v[j] - k[j];
      a1[j] += dlt;
      a2[j] += dlt * dlt;
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same sums for fp32 in AVX2 registers, W = 8 V lanes, the same operations in the same order
// (the portable copy's lane arrays go through the stack).
template <int V>
__attribute__((target("avx2"))) void lane_block_sums_avx2(const float* xd, int64_t q0, int64_t q1, int64_t nb,
                                                          const float* k, float* a1, float* a2) {
  __m256 kk[V], s1[V], s2[V];
  for (int v = 0; v < V; ++v) kk[v] = _mm256_loadu_ps(k + 8 * v), s1[v] = s2[v] = _mm256_setzero_ps();
  for (int64_t q = q0; q < q1; ++q) {
    const float* p = xd + q * nb;
    for (int v = 0; v < V; ++v) {
      const __m256 dlt = _mm256_sub_ps(_mm256_loadu_ps(p + 8 * v), kk[v]);
      s1[v] = _mm256_add_ps(s1[v], dlt);
      s2[v] = _mm256_add_ps(s2[v], _mm256_mul_ps(dlt, dlt));
    }
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(a1 + 8 * v, s1[v]), _mm256_storeu_ps(a2 + 8 * v, s2[v]);
}
#endif

// The moments of W lanes: lane j is xd[q * nb + j] over the HW positions q. Each lane sums as
// plane_moments sums one plane: shifted by its first element, summed again shifted by its mean
// where that was far (shift_far); fp32 in float over blocks of 32 positions, the blocks' sums in
// double; fp64 in double.
template <typename T, int64_t W>
SHC_MULTIVERSION void lane_moments(const T* xd, int64_t HW, int64_t nb, double* mean, double* var) {
  constexpr int64_t kBlock = std::is_same_v<T, float> ? 32 : INT64_MAX;
  T k[W];
  for (int64_t j = 0; j < W; ++j) k[j] = xd[j];
  for (int pass = 0; pass < 2; ++pass) {
    double s1[W] = {}, s2[W] = {};
    for (int64_t q0 = 0; q0 < HW; q0 += std::min(kBlock, HW - q0)) {
      const int64_t q1 = q0 + std::min(kBlock, HW - q0);
      T a1[W], a2[W];
      bool done = false;
#if defined(__x86_64__) && defined(__GNUC__)
      if constexpr (std::is_same_v<T, float> && W % 8 == 0) {
        if (cpu_avx2()) lane_block_sums_avx2<W / 8>(xd, q0, q1, nb, k, a1, a2), done = true;
      }
#endif
      if (!done) lane_block_sums<T, W>(xd, q0, q1, nb, k, a1, a2);
      for (int64_t j = 0; j < W; ++j) s1[j] += static_cast<double>(a1[j]), s2[j] += static_cast<double>(a2[j]);
    }
    // the lanes' means and variances in one vectorizable loop (a branch per lane cost as much as
    // the sums); 1/HW is exact to 1 ulp, as s1 / HW is
    const double inv = 1.0 / static_cast<double>(HW);
    int far = 0;
    for (int64_t j = 0; j < W; ++j) {
      const double m1 = s1[j] * inv;
      mean[j] = static_cast<double>(k[j]) + m1;
      var[j] = std::max(0.0, s2[j] * inv - m1 * m1);
      far |= static_cast<int>(shift_far(mean[j], static_cast<double>(k[j]), var[j]));
    }
    if (pass > 0 || far == 0) return;
    for (int64_t j = 0; j < W; ++j) k[j] = static_cast<T>(mean[j]);  // every lane again: the order stays fixed
  }
}

// The moments of a plane whose float sums overflowed (a spread above ~1e18 squares past fp32's
// range, in any of the paths above): its n values x[q * stride] scaled by the power of two that
// brings the largest into [0.5, 1) (exact), summed in double in two passes (the mean, then the
// squared deviations from it) and scaled back. A plane holding an inf or a NaN keeps the fast
// path's result (its statistics are not finite either way).
template <typename T>
void rescaled_moments(const T* x, int64_t n, int64_t stride, double* mean, double* var) {
  double amax = 0.0;
  bool finite = true;
  for (int64_t q = 0; q < n; ++q) {
    const double v = static_cast<double>(x[q * stride]);
    finite = finite && std::isfinite(v);
    amax = std::max(amax, std::abs(v));
  }
  if (!finite || amax == 0.0) return;
  int e = 0;
  (void)std::frexp(amax, &e);
  double s1 = 0.0;
  for (int64_t q = 0; q < n; ++q) s1 += std::ldexp(static_cast<double>(x[q * stride]), -e);
  const double m = s1 / static_cast<double>(n);
  double s2 = 0.0;
  for (int64_t q = 0; q < n; ++q) {
    const double d = std::ldexp(static_cast<double>(x[q * stride]), -e) - m;
    s2 += d * d;
  }
  *mean = std::ldexp(m, e);
  *var = std::ldexp(s2 / static_cast<double>(n), 2 * e);
}

// whether a plane's moments came out finite (else its sums overflowed: rescaled_moments)
inline bool moments_finite(double mean, double var) { return std::isfinite(mean) && std::isfinite(var); }

// sqrt of v >= 0 without std::sqrt's errno branch (a compare and a call path per lane)
inline double sqrt_nonneg(double v) {
#if defined(__x86_64__)
  return _mm_cvtsd_f64(_mm_sqrt_sd(_mm_setzero_pd(), _mm_set_sd(v)));
#else
  return std::sqrt(v);
#endif
}
}  // namespace

template <typename T>
void stats_impl(const T* x, int64_t planes, int64_t D, int64_t HW, double eps, T* mu, T* sigma, int64_t ld) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW));
  at::parallel_for(0, planes, grain, [&](int64_t b, int64_t e) {
    constexpr int64_t kChunk = 256;  // planes per batch of small-plane moments
    double means[kChunk], vars[kChunk];
    for (int64_t c0 = b; c0 < e; c0 += kChunk) {
      const int64_t c1 = std::min(e, c0 + kChunk);
      const int64_t done = moments_batch(x, c0, c1, HW, means, vars);
      for (int64_t p = c0 + done; p < c1; ++p) plane_moments(x + p * HW, HW, &means[p - c0], &vars[p - c0]);
      for (int64_t p = c0; p < c1; ++p)
        if (!moments_finite(means[p - c0], vars[p - c0]))
          rescaled_moments(x + p * HW, HW, 1, &means[p - c0], &vars[p - c0]);
      int64_t n = c0 / D, d = c0 % D;
      for (int64_t p = c0; p < c1; ++p) {
        mu[n * ld + d] = static_cast<T>(means[p - c0]);
        sigma[n * ld + d] = static_cast<T>(std::sqrt(vars[p - c0] + eps));
        if (++d == D) d = 0, ++n;
      }
    }
  });
}

template <typename T>
void lane_stats(const T* xs, int64_t D, int64_t HW, int64_t nb, double eps, T* z) {
  double mean[16], var[16];
  for (int64_t d = 0; d < D; ++d) {
    const T* xd = xs + d * HW * nb;
    for (int64_t s0 = 0; s0 < nb;) {
      const int64_t w = nb - s0 >= 16 ? 16 : nb - s0 >= 8 ? 8 : 1;
      if (w == 16) lane_moments<T, 16>(xd + s0, HW, nb, mean, var);
      else if (w == 8) lane_moments<T, 8>(xd + s0, HW, nb, mean, var);
      else lane_moments<T, 1>(xd + s0, HW, nb, mean, var);
      for (int64_t j = 0; j < w; ++j) {
        if (!moments_finite(mean[j], var[j])) rescaled_moments(xd + s0 + j, HW, nb, &mean[j], &var[j]);
        z[(s0 + j) * 2 * D + d] = static_cast<T>(mean[j]);
        z[(s0 + j) * 2 * D + D + d] = static_cast<T>(sqrt_nonneg(var[j] + eps));
      }
      s0 += w;
    }
  }
}

template void stats_impl<float>(const float*, int64_t, int64_t, int64_t, double, float*, float*, int64_t);
template void stats_impl<double>(const double*, int64_t, int64_t, int64_t, double, double*, double*, int64_t);
template void lane_stats<float>(const float*, int64_t, int64_t, int64_t, double, float*);
template void lane_stats<double>(const double*, int64_t, int64_t, int64_t, double, double*);

std::tuple<at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& x, double eps) {
  const char* op = "shc::channel_stats";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, D, H, W), got shape ", x.sizes());
  check_cpu(x, "x");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": x must have a non-empty H x W plane, got ",
              x.sizes());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const int64_t N = x.size(0), D = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor mu = at::empty({N, D}, x.options().dtype(ct));
  at::Tensor sigma = at::empty({N, D}, x.options().dtype(ct));
  if (N * D == 0) return std::make_tuple(mu, sigma);
  at::Tensor xc = x.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_channel_stats_cpu", [&] {
    stats_impl<scalar_t>(xc.const_data_ptr<scalar_t>(), N * D, D, HW, eps,
                         mu.mutable_data_ptr<scalar_t>(), sigma.mutable_data_ptr<scalar_t>(), D);
  });
  return std::make_tuple(mu, sigma);
}

at::Tensor channel_stats_backward_cpu(const at::Tensor& grad_mu, const at::Tensor& grad_sigma,
                                      const at::Tensor& x, const at::Tensor& mu,
                                      const at::Tensor& sigma) {
  const char* op = "shc::channel_stats_backward";
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, D, H, W), got shape ", x.sizes());
  check_cpu(x, "x");
  check_cpu(grad_mu, "grad_mu");
  check_cpu(grad_sigma, "grad_sigma");
  check_cpu(mu, "mu");
  check_cpu(sigma, "sigma");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point");
  const int64_t N = x.size(0), D = x.size(1), HW = x.size(2) * x.size(3);
  for (const at::Tensor* t : {&grad_mu, &grad_sigma, &mu, &sigma}) {
    TORCH_CHECK(t->numel() == N * D && (t->dim() == 2 && t->size(0) == N && t->size(1) == D), op,
                ": grad_mu, grad_sigma, mu and sigma must have shape (", N, ", ", D, "), got ",
                t->sizes());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": statistics must be floating point");
  }
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  at::Tensor dx = at::empty({N, D, x.size(2), x.size(3)}, x.options().dtype(ct));
  if (N * D * HW == 0) return finish(dx, x.scalar_type(), fmt);
  at::Tensor xc = x.to(ct).contiguous();
  at::Tensor gm = grad_mu.to(ct).contiguous(), gs = grad_sigma.to(ct).contiguous();
  at::Tensor muc = mu.to(ct).contiguous(), sc = sigma.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_channel_stats_backward_cpu", [&] {
    stats_backward_impl<scalar_t>(gm.const_data_ptr<scalar_t>(), gs.const_data_ptr<scalar_t>(),
                                  xc.const_data_ptr<scalar_t>(), muc.const_data_ptr<scalar_t>(),
                                  sc.const_data_ptr<scalar_t>(), N * D, HW,
                                  dx.mutable_data_ptr<scalar_t>());
  });
  return finish(dx, x.scalar_type(), fmt);
}

}  // namespace shc_cpu
