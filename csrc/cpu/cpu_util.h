// Helpers shared by the CPU kernels (csrc/cpu/*.cpp): the CPU probes, the GEMM wrappers, the
// transposes, the small vector loops, scratch buffers, the chunked parallel loop and the conv's
// valid output ranges. The methods call them in their inner loops, so they are defined here,
// inline or as templates, for every caller to inline as it did when the kernels were one file.
// GEMMs: fp32 through oneDNN's brgemm micro-kernel (at::native::cpublas::brgemm), else BLAS
// (sgemm_/dgemm_ from libtorch_cpu's MKL), else at::mm. fp64 uses dgemm.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "../conv_geometry.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

// The build targets x86-64-v2 (SSE4.2) so the wheel runs anywhere; the loops that touch every
// element (im2col/col2im, the shift method's scaling and per-tap reductions, transposes, the
// statistics) get a second copy compiled for AVX2, picked once at load time (an ifunc). No FMA in
// that copy: elementwise results are the same in both, the vectorized sums add in another order.
#if defined(__x86_64__) && defined(__GNUC__)
#define SHC_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define SHC_MULTIVERSION
#endif

// Fortran BLAS entry points exported by libtorch_cpu when torch is built with MKL/OpenBLAS.
// Declared weak: when absent we fall back to at::mm on from_blob views.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
}

namespace shc_cpu {

#if defined(__x86_64__) && defined(__GNUC__)
// Whether this CPU runs the hand-written AVX2 copies below (probed once).
inline bool cpu_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}
inline bool cpu_avx2_fma() {
  static const bool ok = cpu_avx2() && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// ---------------------------------------------------------------------------------------
// Row-major GEMM: C(MxN, ldc) = alpha * op(A) @ op(B) + beta * C.
// op(A) is MxK: A stored (M x K, lda) or, with transA, (K x M, lda). Same for B (K x N).
template <typename T>
void blas_colmajor(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda,
                   const T* b, int ldb, T beta, T* c, int ldc);

template <>
inline void blas_colmajor<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a,
                          int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
template <>
inline void blas_colmajor<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                           int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
bool have_blas();
template <>
inline bool have_blas<float>() {
  return sgemm_ != nullptr;
}
template <>
inline bool have_blas<double>() {
  return dgemm_ != nullptr;
}

template <typename T>
void gemm_rm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
             int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (have_blas<T>()) {
    // Row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T.
    blas_colmajor<T>(transB ? 'T' : 'N', transA ? 'T' : 'N', static_cast<int>(N),
                     static_cast<int>(M), static_cast<int>(K), alpha, B,
                     static_cast<int>(std::max<int64_t>(ldb, 1)), A,
                     static_cast<int>(std::max<int64_t>(lda, 1)), beta, C,
                     static_cast<int>(std::max<int64_t>(ldc, 1)));
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = transA ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, opts).t()
                        : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = transB ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, opts).t()
                        : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  at::Tensor r = at::mm(a, b);
  if (alpha != T(1)) r.mul_(alpha);
  if (beta == T(0)) {
    c.copy_(r);
  } else {
    c.mul_(beta).add_(r);
  }
}

// fp32 GEMMs go through oneDNN's batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm,
// JIT-compiled for the running CPU: AVX-512 where available, on any vendor), which is faster
// than the BLAS sgemm on these small, repeated GEMMs. It is probed once; where it is unavailable (no
// oneDNN ukernel support for the ISA) BLAS is used. SHC_CPU_NO_BRGEMM=1 forces BLAS (Knobs).
bool brgemm_f32_ok();

constexpr int64_t kBrgemmKBlock = 256;

// Row-major C(MxN, ldc) (+)= A(MxK, lda) @ B(KxN, ldb); accumulate adds to C.
// brgemm: use the brgemm micro-kernel for fp32 (Knobs::brgemm, already ANDed with the probe).
template <typename T>
void mm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
        int64_t ldc, bool accumulate, bool brgemm) {
  if (M <= 0 || N <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (K > 0 && brgemm) {
      for (int64_t k0 = 0; k0 < K; k0 += kBrgemmKBlock) {
        const int64_t kk = std::min(kBrgemmKBlock, K - k0);
        at::native::cpublas::brgemm(M, N, kk, lda, ldb, ldc, accumulate || k0 > 0, A + k0,
                                    B + k0 * ldb, C, false);
      }
      return;
    }
  }
  gemm_rm<T>(false, false, M, N, K, T(1), A, lda, B, ldb, accumulate ? T(1) : T(0), C, ldc);
}

// dst(cols x rows, ld_dst) (+)= src(rows x cols, ld_src)^T. 8x8 register tiles inside 64x64
// cache tiles (the leading dimensions are often powers of two: small tiles avoid set conflicts);
// FULL_TILE(r, c) moves a whole 8x8 tile, the edges go one element at a time. Inside a cache
// tile the tiles follow the rows of whichever side has the longer row stride, so each of its
// cache lines is finished before the next is touched: walking src's rows while dst's rows lie
// 8 KiB apart (a taps block's output, 128 channels x 4x4 into y) left a line per sample half
// written in the same L1 set. (A macro:
// the fp32 AVX2 copy below must be compiled for AVX2 for its tile to inline; the optional
// second argument is the inner lambda's attributes.)
#define SHC_TRANSPOSE_TILES(FULL_TILE, ...)                                           \
  constexpr int64_t R = 8, BB = 64;                                                   \
  const bool along_dst = ld_dst > ld_src;                                             \
  for (int64_t r0 = 0; r0 < rows; r0 += BB) {                                         \
    const int64_t r1 = std::min(rows, r0 + BB);                                       \
    for (int64_t c0 = 0; c0 < cols; c0 += BB) {                                       \
      const int64_t c1 = std::min(cols, c0 + BB);                                     \
      const auto at = [&](int64_t r, int64_t c) __VA_ARGS__ {                         \
        if (r + R <= r1 && c + R <= c1) return FULL_TILE(r, c);                       \
        const int64_t re = std::min(r1, r + R), ce = std::min(c1, c + R);             \
        for (int64_t i = r; i < re; ++i)                                              \
          for (int64_t j = c; j < ce; ++j) {                                          \
            if constexpr (kAdd) dst[j * ld_dst + i] += src[i * ld_src + j];           \
            else dst[j * ld_dst + i] = src[i * ld_src + j];                           \
          }                                                                           \
      };                                                                              \
      if (along_dst) {                                                                \
        for (int64_t c = c0; c < c1; c += R)                                          \
          for (int64_t r = r0; r < r1; r += R) at(r, c);                              \
      } else {                                                                        \
        for (int64_t r = r0; r < r1; r += R)                                          \
          for (int64_t c = c0; c < c1; c += R) at(r, c);                              \
      }                                                                               \
    }                                                                                 \
  }

#if defined(__x86_64__) && defined(__GNUC__)
// fp32 with AVX2: each 8x8 tile in eight loads, 24 shuffles and eight stores (the portable
// tile moves one element at a time).
template <bool kAdd>
__attribute__((target("avx2"))) void transpose_avx2(int64_t rows, int64_t cols, const float* src, int64_t ld_src,
                                                    float* dst, int64_t ld_dst) {
  const auto tile = [&](int64_t r, int64_t c) __attribute__((target("avx2"))) {
    const float* s = src + r * ld_src + c;
    const __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + ld_src), a2 = _mm256_loadu_ps(s + 2 * ld_src);
    const __m256 a3 = _mm256_loadu_ps(s + 3 * ld_src), a4 = _mm256_loadu_ps(s + 4 * ld_src);
    const __m256 a5 = _mm256_loadu_ps(s + 5 * ld_src), a6 = _mm256_loadu_ps(s + 6 * ld_src);
    const __m256 a7 = _mm256_loadu_ps(s + 7 * ld_src);
    const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    const __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
    const __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    const __m256 out[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                           _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                           _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                           _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
    for (int j = 0; j < 8; ++j) {
      float* d = dst + (c + j) * ld_dst + r;
      if constexpr (kAdd) _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), out[j]));
      else _mm256_storeu_ps(d, out[j]);
    }
  };
  SHC_TRANSPOSE_TILES(tile, __attribute__((target("avx2"))))
}
#endif

template <typename T, bool kAdd = false>
SHC_MULTIVERSION void transpose(int64_t rows, int64_t cols, const T* src, int64_t ld_src, T* dst, int64_t ld_dst) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_avx2()) return transpose_avx2<kAdd>(rows, cols, src, ld_src, dst, ld_dst);
  }
#endif
  const auto tile = [&](int64_t r, int64_t c) {
    T t[8][8];
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t j = 0; j < 8; ++j) t[j][i] = src[(r + i) * ld_src + c + j];
    for (int64_t j = 0; j < 8; ++j) {
      T* d = dst + (c + j) * ld_dst + r;
      for (int64_t i = 0; i < 8; ++i) {
        if constexpr (kAdd) d[i] += t[j][i];
        else d[i] = t[j][i];
      }
    }
  };
  SHC_TRANSPOSE_TILES(tile)
}
#undef SHC_TRANSPOSE_TILES

// Sum of n values in double (grad_bias).
template <typename T>
SHC_MULTIVERSION double sum_row(const T* p, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(p[i]);
  return s;
}

// dst = s * src;  y += s * x;  sum of a * b in double (n values each).
template <typename T>
SHC_MULTIVERSION void scale_copy(int64_t n, T s, const T* src, T* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = s * src[i];
}
template <typename T>
SHC_MULTIVERSION void axpy(int64_t n, T s, const T* x, T* y) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += s * x[i];
}
template <typename T>
SHC_MULTIVERSION double dot(int64_t n, const T* a, const T* b) {
  double r = 0.0;
#pragma omp simd reduction(+ : r)
  for (int64_t i = 0; i < n; ++i) r += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return r;
}

// Uninitialized scratch buffer (std::vector would zero-fill, which costs real time here).
template <typename T>
struct Buf {
  std::unique_ptr<T[]> p;
  explicit Buf(int64_t n) : p(n > 0 ? new T[static_cast<size_t>(n)] : nullptr) {}
  T* data() { return p.get(); }
};

// ---------------------------------------------------------------------------------------
using Geom = shc::ConvGeom;

// valid output range [lo, hi) (of `out` outputs) where input o*stride + off is in [0, in)
inline void valid_range(int64_t off, int64_t stride, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  const int64_t last = in - 1 - off;
  hi = last < 0 ? 0 : last / stride + 1;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
}

// valid output-column range [lo, hi) for tap column j: iw = ow*sw + off in [0, W)
inline void col_range(const Geom& g, int64_t j, int64_t& lo, int64_t& hi, int64_t& off) {
  off = j * g.dw - g.pw;
  valid_range(off, g.sw, g.W, g.OW, lo, hi);
}

// Runs worker(w, next_chunk) for w in [0, nworkers) on at::parallel_for threads; the worker
// loops `for (c = next(); c >= 0; c = next())`. dynamic: chunks are pulled from a shared atomic
// counter (on a busy machine a descheduled thread does not hold the others up; used where the
// result does not depend on which worker handles a chunk). static: worker w always gets the
// same contiguous chunk range (deterministic per-worker accumulations, e.g. grad_weight).
template <typename F>
void run_chunks(int64_t nchunks, int64_t nworkers, bool dynamic, const F& worker) {
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, nworkers, 1, [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w) {
      int64_t pos = nchunks * w / nworkers;
      const int64_t end = nchunks * (w + 1) / nworkers;
      auto next = [&]() -> int64_t {
        if (dynamic) {
          const int64_t c = counter.fetch_add(1, std::memory_order_relaxed);
          return c < nchunks ? c : -1;
        }
        return pos < end ? pos++ : -1;
      };
      worker(w, next);
    }
  });
}

inline int64_t num_workers(int64_t nchunks) {
  return std::max<int64_t>(1, std::min<int64_t>(nchunks, at::get_num_threads()));
}

// Called on the worker thread once samples [n0, n0 + nb) are complete (their dx conv route and
// dm): shc::shc_conv2d_backward finishes those samples there while their dx is still in cache.
using ChunkDone = std::function<void(int64_t n0, int64_t nb)>;

// grad_bias from per-worker accumulators bacc[wid * C + c], summed in worker order.
void sum_workers(const std::vector<double>& bacc, int64_t nworkers, int64_t C, double* db);

namespace direct {
struct Kernel;
}

// The weight's tap-major re-layouts (shift and taps methods; cpu_util.cpp), for float and double.
// wt[t] (C x D) = w[c, d, t] (transposed: wt[t] (D x C)), for the weight (C, D, taps); kern: the
// direct method's kernel (its taps9 moves 16 runs of 9 taps at once), or null.
template <typename T>
void taps_major(const T* w, int64_t C, int64_t D, int64_t taps, bool transposed, T* wt, const direct::Kernel* kern);
// grad_weight (C, D, taps) from per-worker accumulators acc[wid][t][d][c] (taps x D x C each),
// summed in worker order: gw[c, d, t] = sum_wid acc[wid][t][d][c].
template <typename T>
void sum_tap_major(const T* acc, int64_t nworkers, int64_t C, int64_t D, int64_t taps, T* gw);

}  // namespace shc_cpu
