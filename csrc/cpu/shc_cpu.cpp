// CPU kernels for the `shc` ops (schemas in csrc/shc.cpp).
//
// modulated_conv2d: y[n] = conv2d(x[n], W * m[n], bias, ...), with m[n] one scalar per tap.
// Four methods (choose_method picks per shape): im2col, described here; "shift", "taps" and
// "direct", described where they are defined. None materializes per-sample kernels nor the whole batch's
// im2col: each works on blocks of samples, so its memory does not grow with the batch.
// im2col: samples are split into
// chunks; one thread owns a chunk (so col2im scatters never race). A chunk is either one sample
// with a block of output rows (large planes: 56x56, 28x28) or several whole samples sharing one
// GEMM (small planes: 14x14, 7x7), ~512 GEMM columns either way (SHC_CPU_COLS to tune).
// The reduction K = (D/groups)*T is streamed in blocks of ~256 rows (whole input channels):
//   cols[(d,t), j] = m[n(j),t] * x_pad[n(j), d, p(j) (+) t]      (the m scaling fused in)
// is built for one block right before the GEMM consumes it, so it stays in L2:
//   y_block += W_g[:, block] @ cols_block          (W viewed as (C, D/groups*T): no reorder)
// Backward per (chunk, row block, reduction block):
//   grad_weight^T[block] += cols_scaled @ dy^T     (per-thread accumulators, reduced at the end)
//   dcols = W_g^T[block] @ dy;  col2im:  dx[n,d,q(+)t] += m[n,t] * dcols[(d,t),j]
//                               fused:   dm[n,t]       += dcols[(d,t),j] * x[n,d,q(+)t]
// (dm[n,t] = sum_{c,d} W[c,d,t] * G_n[c,d,t] with G_n the plain per-sample weight grad,
//  which equals sum_{d,q} x[n,d,q(+)t] * (W^T dy[n])[(d,t),q].)
// GEMMs: fp32 through oneDNN's brgemm micro-kernel (at::native::cpublas::brgemm), else BLAS
// (sgemm_/dgemm_ from libtorch_cpu's MKL), else at::mm. fp64 uses dgemm.
// Everything is computed in float (fp32/fp16/bf16 inputs) or double (fp64 inputs) on
// NCHW-contiguous copies; outputs are returned in x's dtype and x.suggest_memory_format().
// Tuning knobs (environment, read and checked per call; a bad value is an error naming it):
// SHC_CPU_COLS, SHC_CPU_COLS_BWD (GEMM columns per block), SHC_CPU_KROWS (reduction rows per
// block), SHC_CPU_WS_BYTES (per-thread workspace), SHC_CPU_CHUNKS_PER_THREAD (all positive),
// SHC_CPU_NO_BRGEMM (0, or 1: use BLAS), SHC_CPU_METHOD (auto: the faster per shape (default);
// im2col; shift, taps or direct, the other methods below, wherever they apply; see
// choose_method), SHC_CPU_DIRECT_ISA (auto: the direct method's widest kernel this CPU runs
// (default); avx2: its AVX2 kernel even on an AVX-512 CPU).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "../conv_geometry.h"
#include "direct.h"

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
namespace {

#if defined(__x86_64__) && defined(__GNUC__)
// Whether this CPU runs the hand-written AVX2 copies below (probed once).
bool cpu_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}
bool cpu_avx2_fma() {
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
void blas_colmajor<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a,
                          int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
template <>
void blas_colmajor<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                           int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
bool have_blas();
template <>
bool have_blas<float>() {
  return sgemm_ != nullptr;
}
template <>
bool have_blas<double>() {
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
// JIT-compiled for the running CPU: AVX-512 where available, on any vendor), which is ~15-25%
// faster than the BLAS sgemm in this setting. It is probed once; where it is unavailable (no
// oneDNN ukernel support for the ISA) BLAS is used. SHC_CPU_NO_BRGEMM=1 forces BLAS (Knobs).
bool brgemm_f32_ok() {
  static const bool ok = [] {
    try {
      float a[4] = {1.f, 2.f, 3.f, 4.f}, b[4] = {5.f, 6.f, 7.f, 8.f}, c[4] = {0.f, 0.f, 0.f, 0.f};
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, false);
      return c[0] == 19.f && c[1] == 22.f && c[2] == 43.f && c[3] == 50.f;
    } catch (...) {
      return false;
    }
  }();
  return ok;
}

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
// written in the same L1 set, and that transpose took 14% of a 64>128@7/2 forward. (A macro:
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
// tile's element moves were 9.5% of a 128>128@7/2 taps forward, batch 128, against 47% in its
// GEMMs).
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

// out(Cg x K, row-major) = sum over the srcs of src(K x Cg)^T; parallel over row blocks of out.
template <typename T>
void transpose_sum(int64_t Cg, int64_t K, const std::vector<const T*>& srcs, T* out) {
  constexpr int64_t B = 64;
  const int64_t nblk = (Cg + B - 1) / B;
  at::parallel_for(0, nblk, 1, [&](int64_t bb, int64_t be) {
    for (int64_t blk = bb; blk < be; ++blk) {
      const int64_t c0 = blk * B, c1 = std::min(Cg, c0 + B);
      if (srcs.empty()) {
        std::fill(out + c0 * K, out + c1 * K, T(0));
        continue;
      }
      // rows c0..c1 of out = cols c0..c1 of each src (K x Cg)
      transpose<T, false>(K, c1 - c0, srcs[0] + c0, Cg, out + c0 * K, K);
      for (size_t i = 1; i < srcs.size(); ++i)
        transpose<T, true>(K, c1 - c0, srcs[i] + c0, Cg, out + c0 * K, K);
    }
  });
}

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

// cols ((d1-d0)*T x L, row-major) for input channels [d0, d1) of group grp,
// L = nb * (oh1 - oh0) * OW; column j = (sample s, oh, ow); row (d - d0)*T + t.
// Stride 1 with OW == W (3x3, padding 1 and the like): output position p = oh*W + ow reads input
// p + delta, so a tap's rows of one plane are one contiguous shifted run; only the positions in
// the padding (a column at each row end, the rows above/below) are zero. No per-row loop: the
// planes are 4x4..56x56 here, where a loop per output row cost more than the copy.
inline bool flat_taps(const Geom& g) { return g.sh == 1 && g.sw == 1 && g.OW == g.W && g.OH == g.H; }

// For tap (i, j) on output rows [oh0, oh1): the flat run [start, end) of output positions that
// read the input (p + delta); the valid rows [r0, r1) and columns [lo, hi). Empty: start == end.
struct TapRun {
  int64_t delta, start, end, r0, r1, lo, hi;
};
inline TapRun tap_run(const Geom& g, int64_t i, int64_t j, int64_t oh0, int64_t oh1) {
  TapRun r{};
  int64_t off;
  col_range(g, j, r.lo, r.hi, off);
  const int64_t shift = i * g.dh - g.ph;  // ih = oh + shift
  r.r0 = std::max(oh0, -shift);
  r.r1 = std::min(oh1, g.H - shift);
  r.delta = shift * g.W + off;
  if (r.r0 >= r.r1 || r.lo >= r.hi) {
    r.r0 = r.r1 = oh0;
    r.start = r.end = oh0 * g.W;
    return r;
  }
  r.start = r.r0 * g.W + r.lo;
  r.end = (r.r1 - 1) * g.W + r.hi;
  return r;
}

template <typename T>
SHC_MULTIVERSION void im2col_flat(const Geom& g, const T* x, const T* m, int64_t grp, int64_t n0, int64_t nb,
                 int64_t oh0, int64_t oh1, int64_t d0, int64_t d1, T* cols) {
  const int64_t Lp = (oh1 - oh0) * g.W, L = nb * Lp, HW = g.H * g.W;
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t t = i * g.kw + j;
      const TapRun r = tap_run(g, i, j, oh0, oh1);
      for (int64_t d = d0; d < d1; ++d) {
        T* crow = cols + ((d - d0) * g.T + t) * L - oh0 * g.W;  // crow[p]: flat output p
        for (int64_t s = 0; s < nb; ++s) {
          const int64_t n = n0 + s;
          const T scale = m[n * g.T + t];
          const T* xp = x + (n * g.D + grp * g.Dg + d) * HW + r.delta;
          T* c = crow + s * Lp;
          std::fill(c + oh0 * g.W, c + r.start, T(0));
#pragma omp simd
          for (int64_t p = r.start; p < r.end; ++p) c[p] = scale * xp[p];
          std::fill(c + r.end, c + oh1 * g.W, T(0));
          if (r.lo > 0 || r.hi < g.W) {
            for (int64_t oh = r.r0; oh < r.r1; ++oh) {
              T* row = c + oh * g.W;
              for (int64_t ow = 0; ow < r.lo; ++ow) row[ow] = T(0);
              for (int64_t ow = r.hi; ow < g.W; ++ow) row[ow] = T(0);
            }
          }
        }
      }
    }
  }
}

// dx[n,d,p+delta] += m[n,t] * dcols[(d,t), p];  dm[n,t] += dcols[(d,t), p] * x[n,d,p+delta]
// (the flat_taps case; dcols' padding positions are zeroed first so the runs stay contiguous).
template <typename T>
SHC_MULTIVERSION void col2im_flat(const Geom& g, T* dcols, const T* x, const T* m, T* dx, double* dm, int64_t grp,
                 int64_t n0, int64_t nb, int64_t oh0, int64_t oh1, int64_t d0, int64_t d1) {
  const int64_t Lp = (oh1 - oh0) * g.W, L = nb * Lp, HW = g.H * g.W;
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t t = i * g.kw + j;
      const TapRun r = tap_run(g, i, j, oh0, oh1);
      if (r.start == r.end) continue;
      for (int64_t d = d0; d < d1; ++d) {
        T* crow = dcols + ((d - d0) * g.T + t) * L - oh0 * g.W;
        for (int64_t s = 0; s < nb; ++s) {
          const int64_t n = n0 + s;
          const T scale = m[n * g.T + t];
          const int64_t plane = (n * g.D + grp * g.Dg + d) * HW + r.delta;
          T* c = crow + s * Lp;
          if (r.lo > 0 || r.hi < g.W) {
            for (int64_t oh = r.r0; oh < r.r1; ++oh) {
              T* row = c + oh * g.W;
              for (int64_t ow = 0; ow < r.lo; ++ow) row[ow] = T(0);
              for (int64_t ow = r.hi; ow < g.W; ++ow) row[ow] = T(0);
            }
          }
          if (dm != nullptr) {
            const T* xp = x + plane;
            T a = T(0);
#pragma omp simd reduction(+ : a)
            for (int64_t p = r.start; p < r.end; ++p) a += c[p] * xp[p];
            dm[n * g.T + t] += static_cast<double>(a);
          }
          if (dx != nullptr) {
            T* dxp = dx + plane;
#pragma omp simd
            for (int64_t p = r.start; p < r.end; ++p) dxp[p] += scale * c[p];
          }
        }
      }
    }
  }
}

// The downsampling 3x3 conv (stride 2, padding 1, dilation 1): input row ih = 2*oh + i - 1 and
// column iw = 2*ow + j - 1, so tap (i, j) reads phase plane (a, b) = (ih % 2, iw % 2) at
// (oh + qi, ow + qj) with qi, qj in {-1, 0}. With each phase stored OH x OW (its missing last row
// or column zero), a tap's rows of one plane are again one contiguous run at a fixed offset, as in
// im2col_flat, instead of a loop per output row (stride-2 layers spent 1.4-1.8x a plain conv).
inline bool s2_taps(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2 && g.ph == 1 && g.pw == 1 && g.dh == 1 &&
         g.dw == 1 && g.OH == (g.H + 1) / 2 && g.OW == (g.W + 1) / 2;
}

// Phase (a, b) of plane xp, rows [r_lo, r_hi), into phases + (2a + b) * OH * OW (absent: zero).
template <typename T>
SHC_MULTIVERSION void split_phases(const Geom& g, const T* xp, T* phases, int64_t r_lo, int64_t r_hi) {
  const int64_t OW = g.OW, PP = g.OH * g.OW;
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t r = r_lo; r < r_hi; ++r) {
      const int64_t ih = 2 * r + a;
      for (int64_t b = 0; b < 2; ++b) {
        T* pr = phases + (2 * a + b) * PP + r * OW;
        const int64_t wb = ih < g.H ? (g.W - b + 1) / 2 : 0;  // columns of phase b in this row
        for (int64_t c = 0; c < wb; ++c) pr[c] = xp[ih * g.W + b + 2 * c];
        for (int64_t c = wb; c < OW; ++c) pr[c] = T(0);
      }
    }
  }
}

// dx rows [r_lo, r_hi) of plane dxp += the phases accumulated in dphases (split_phases' inverse).
template <typename T>
SHC_MULTIVERSION void merge_phases(const Geom& g, const T* dphases, T* dxp, int64_t r_lo, int64_t r_hi) {
  const int64_t OW = g.OW, PP = g.OH * g.OW;
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t r = r_lo; r < r_hi; ++r) {
      const int64_t ih = 2 * r + a;
      if (ih >= g.H) continue;
      for (int64_t b = 0; b < 2; ++b) {
        const T* pr = dphases + (2 * a + b) * PP + r * OW;
        T* dxr = dxp + ih * g.W + b;
        const int64_t wb = (g.W - b + 1) / 2;
        for (int64_t c = 0; c < wb; ++c) dxr[2 * c] += pr[c];
      }
    }
  }
}

// Tap (i, j) of the s2_taps conv on output rows from oh0: where it reads in the 4 phases (the
// phase's offset shifted by (qi, qj)), the first output row whose input row exists (above it:
// padding), and whether ow = 0 reads the column left of the image (padding).
struct S2Tap {
  int64_t shift, r0;
  bool left_pad;
};
inline S2Tap s2_tap(const Geom& g, int64_t i, int64_t j, int64_t oh0) {
  const int64_t a = i == 1 ? 0 : 1, qi = i == 0 ? -1 : 0;
  const int64_t b = j == 1 ? 0 : 1, qj = j == 0 ? -1 : 0;
  return {(2 * a + b) * g.OH * g.OW + qi * g.OW + qj, std::max(oh0, -qi), qj < 0};
}

template <typename T>
SHC_MULTIVERSION void im2col_s2(const Geom& g, const T* x, const T* m, int64_t grp, int64_t n0, int64_t nb,
               int64_t oh0, int64_t oh1, int64_t d0, int64_t d1, T* cols) {
  const int64_t OH = g.OH, OW = g.OW, Lp = (oh1 - oh0) * OW, L = nb * Lp, PP = OH * OW;
  static thread_local std::vector<T> phase_buf;
  phase_buf.resize(static_cast<size_t>(4 * PP));
  T* phases = phase_buf.data();  // phase (a, b) at phases + (2a + b) * PP
  const int64_t r_lo = std::max<int64_t>(0, oh0 - 1);  // the phase rows this block reads
  for (int64_t d = d0; d < d1; ++d) {
    for (int64_t s = 0; s < nb; ++s) {
      const int64_t n = n0 + s;
      split_phases(g, x + ((n * g.D + grp * g.Dg + d) * g.H) * g.W, phases, r_lo, oh1);
      for (int64_t t = 0; t < 9; ++t) {
        const S2Tap tap = s2_tap(g, t / 3, t % 3, oh0);
        const T scale = m[n * g.T + t];
        const T* src = phases + tap.shift;
        T* c = cols + ((d - d0) * g.T + t) * L + s * Lp - oh0 * OW;  // c[p]: flat output p
        std::fill(c + oh0 * OW, c + tap.r0 * OW, T(0));
        const int64_t start = tap.r0 * OW + (tap.left_pad && tap.r0 < oh1 ? 1 : 0), end = oh1 * OW;
#pragma omp simd
        for (int64_t p = start; p < end; ++p) c[p] = scale * src[p];
        if (tap.left_pad)
          for (int64_t oh = tap.r0; oh < oh1; ++oh) c[oh * OW] = T(0);
      }
    }
  }
}

template <typename T>
SHC_MULTIVERSION void im2col_block(const Geom& g, const T* x, const T* m, int64_t grp, int64_t n0, int64_t nb,
                  int64_t oh0, int64_t oh1, int64_t d0, int64_t d1, T* cols) {
  if (flat_taps(g)) return im2col_flat<T>(g, x, m, grp, n0, nb, oh0, oh1, d0, d1, cols);
  if (s2_taps(g)) return im2col_s2<T>(g, x, m, grp, n0, nb, oh0, oh1, d0, d1, cols);
  const int64_t rows = oh1 - oh0, Lp = rows * g.OW, L = nb * Lp;
  for (int64_t d = d0; d < d1; ++d) {
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t t = i * g.kw + j;
        int64_t lo, hi, off;
        col_range(g, j, lo, hi, off);
        T* crow = cols + ((d - d0) * g.T + t) * L;
        for (int64_t s = 0; s < nb; ++s) {
          const int64_t n = n0 + s;
          const T scale = m[n * g.T + t];
          const T* xp = x + ((n * g.D + grp * g.Dg + d) * g.H) * g.W;
          T* cs = crow + s * Lp;
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            T* c = cs + (oh - oh0) * g.OW;
            const int64_t ih = oh * g.sh - g.ph + i * g.dh;
            if (ih < 0 || ih >= g.H) {
              std::memset(c, 0, sizeof(T) * g.OW);
              continue;
            }
            const T* xr = xp + ih * g.W + off;
            for (int64_t ow = 0; ow < lo; ++ow) c[ow] = T(0);
            if (g.sw == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) c[ow] = scale * xr[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) c[ow] = scale * xr[ow * g.sw];
            }
            for (int64_t ow = hi; ow < g.OW; ++ow) c[ow] = T(0);
          }
        }
      }
    }
  }
}

// col2im of the s2_taps conv: dx and dm through the phase planes (see im2col_s2); dcols' padding
// positions (ow = 0 of the left taps) are zeroed first so the runs stay contiguous.
template <typename T>
SHC_MULTIVERSION void col2im_s2(const Geom& g, T* dcols, const T* x, const T* m, T* dx, double* dm, int64_t grp,
               int64_t n0, int64_t nb, int64_t oh0, int64_t oh1, int64_t d0, int64_t d1) {
  const int64_t OH = g.OH, OW = g.OW, Lp = (oh1 - oh0) * OW, L = nb * Lp, PP = OH * OW;
  static thread_local std::vector<T> xph_buf, dph_buf;
  xph_buf.resize(static_cast<size_t>(dm != nullptr ? 4 * PP : 0));
  dph_buf.resize(static_cast<size_t>(dx != nullptr ? 4 * PP : 0));
  T* xph = xph_buf.data();
  T* dph = dph_buf.data();
  const int64_t r_lo = std::max<int64_t>(0, oh0 - 1);
  for (int64_t d = d0; d < d1; ++d) {
    for (int64_t s = 0; s < nb; ++s) {
      const int64_t n = n0 + s;
      const int64_t plane = ((n * g.D + grp * g.Dg + d) * g.H) * g.W;
      if (dm != nullptr) split_phases(g, x + plane, xph, r_lo, oh1);
      if (dx != nullptr)
        for (int64_t ph = 0; ph < 4; ++ph) std::fill(dph + ph * PP + r_lo * OW, dph + ph * PP + oh1 * OW, T(0));
      for (int64_t t = 0; t < 9; ++t) {
        const S2Tap tap = s2_tap(g, t / 3, t % 3, oh0);
        T* c = dcols + ((d - d0) * g.T + t) * L + s * Lp - oh0 * OW;  // c[p]: flat output p
        if (tap.left_pad)
          for (int64_t oh = tap.r0; oh < oh1; ++oh) c[oh * OW] = T(0);
        const int64_t start = tap.r0 * OW + (tap.left_pad ? 1 : 0), end = oh1 * OW;
        if (start >= end) continue;
        if (dm != nullptr) {
          const T* xs = xph + tap.shift;
          T acc = T(0);
#pragma omp simd reduction(+ : acc)
          for (int64_t p = start; p < end; ++p) acc += c[p] * xs[p];
          dm[n * g.T + t] += static_cast<double>(acc);
        }
        if (dx != nullptr) {
          const T scale = m[n * g.T + t];
          T* ds = dph + tap.shift;
#pragma omp simd
          for (int64_t p = start; p < end; ++p) ds[p] += scale * c[p];
        }
      }
      if (dx != nullptr) merge_phases(g, dph, dx + plane, r_lo, oh1);
    }
  }
}

// dx[n,d,q(+)t] += m[n,t] * dcols[(d,t), j];  dm[n,t] += dcols[(d,t), j] * x[n,d,q(+)t]
template <typename T>
SHC_MULTIVERSION void col2im_block(const Geom& g, T* dcols, const T* x, const T* m, T* dx, double* dm,
                  int64_t grp, int64_t n0, int64_t nb, int64_t oh0, int64_t oh1, int64_t d0,
                  int64_t d1) {
  if (flat_taps(g)) return col2im_flat<T>(g, dcols, x, m, dx, dm, grp, n0, nb, oh0, oh1, d0, d1);
  if (s2_taps(g)) return col2im_s2<T>(g, dcols, x, m, dx, dm, grp, n0, nb, oh0, oh1, d0, d1);
  const int64_t rows = oh1 - oh0, Lp = rows * g.OW, L = nb * Lp;
  for (int64_t d = d0; d < d1; ++d) {
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t t = i * g.kw + j;
        int64_t lo, hi, off;
        col_range(g, j, lo, hi, off);
        const T* crow = dcols + ((d - d0) * g.T + t) * L;
        for (int64_t s = 0; s < nb; ++s) {
          const int64_t n = n0 + s;
          const T scale = m[n * g.T + t];
          const int64_t plane = ((n * g.D + grp * g.Dg + d) * g.H) * g.W;
          const T* cs = crow + s * Lp;
          T acc = T(0);
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + i * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            const T* c = cs + (oh - oh0) * g.OW;
            const int64_t base = plane + ih * g.W + off;
            T a = T(0);
            if (dm != nullptr) {
              const T* xr = x + base;
              if (g.sw == 1) {
#pragma omp simd reduction(+ : a)
                for (int64_t ow = lo; ow < hi; ++ow) a += c[ow] * xr[ow];
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) a += c[ow] * xr[ow * g.sw];
              }
            }
            acc += a;
            if (dx != nullptr) {
              T* dxr = dx + base;
              if (g.sw == 1) {
#pragma omp simd
                for (int64_t ow = lo; ow < hi; ++ow) dxr[ow] += scale * c[ow];
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) dxr[ow * g.sw] += scale * c[ow];
              }
            }
          }
          if (dm != nullptr) dm[n * g.T + t] += static_cast<double>(acc);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Tuning knobs, read from the environment once per op call, on the calling thread, and checked:
// a bad value is an error naming the variable (it used to be a division by zero).
int64_t env_int(const char* name, int64_t dflt, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  char* end = nullptr;
  errno = 0;
  const long long r = std::strtoll(v, &end, 10);
  TORCH_CHECK(errno == 0 && end != v && *end == '\0' && r >= lo && r <= hi, "environment variable ", name,
              " must be an integer in [", lo, ", ", hi, "], got '", v, "'");
  return static_cast<int64_t>(r);
}

// The four methods of the conv (see choose_method): im2col (any conv), shift (stride-1 3x3,
// padding 1), taps (one group; small output planes), direct (shift's convs, fp32, AVX2+FMA or
// AVX-512 CPUs; its backward is shift's with dx by the direct kernel).
enum class Method { kAuto, kIm2col, kShift, kTaps, kDirect };

Method env_method() {
  const char* v = std::getenv("SHC_CPU_METHOD");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Method::kAuto;
  if (std::strcmp(v, "im2col") == 0) return Method::kIm2col;
  if (std::strcmp(v, "shift") == 0) return Method::kShift;
  if (std::strcmp(v, "taps") == 0) return Method::kTaps;
  if (std::strcmp(v, "direct") == 0) return Method::kDirect;
  TORCH_CHECK(false, "environment variable SHC_CPU_METHOD must be auto, im2col, shift, taps or direct, got '", v,
              "'");
}

struct Knobs {
  int64_t krows;       // SHC_CPU_KROWS: reduction rows per block
  int64_t cols;        // SHC_CPU_COLS / SHC_CPU_COLS_BWD: GEMM columns per block
  int64_t ws_bytes;    // SHC_CPU_WS_BYTES: per-thread workspace budget (taps: up to twice, see taps_block)
  int64_t chunks_per_thread;  // SHC_CPU_CHUNKS_PER_THREAD
  bool brgemm;         // brgemm probed OK and not SHC_CPU_NO_BRGEMM=1
  Method method;       // SHC_CPU_METHOD: auto (the faster per shape), im2col, shift, taps or direct (where it applies)
  const direct::Kernel* direct;  // the direct method's widest kernel here (SHC_CPU_DIRECT_ISA=avx2 caps it), or null
  bool backward;                 // read for a backward (cols is SHC_CPU_COLS_BWD)
};

Knobs read_knobs(bool backward) {
  Knobs k{};
  // 64 reduction rows (7 channels of a 3x3): the im2col block and the GEMM's C stay in a 512 KiB
  // L2 while the next block is built (256 rows measured 10-40% slower on every ResNet/Plain-10 shape).
  k.krows = env_int("SHC_CPU_KROWS", 64, 1, 1 << 20);
  k.cols = env_int(backward ? "SHC_CPU_COLS_BWD" : "SHC_CPU_COLS", 512, 1, 1 << 24);
  k.ws_bytes = env_int("SHC_CPU_WS_BYTES", 4 << 20, 1, int64_t(1) << 40);
  k.chunks_per_thread = env_int("SHC_CPU_CHUNKS_PER_THREAD", 2, 1, 1 << 20);
  const int64_t no_brgemm = env_int("SHC_CPU_NO_BRGEMM", 0, 0, 1);
  k.brgemm = no_brgemm == 0 && brgemm_f32_ok();
  k.method = env_method();
  const char* isa = std::getenv("SHC_CPU_DIRECT_ISA");
  const bool cap = isa != nullptr && *isa != '\0' && std::strcmp(isa, "auto") != 0;
  TORCH_CHECK(!cap || std::strcmp(isa, "avx2") == 0,
              "environment variable SHC_CPU_DIRECT_ISA must be auto or avx2, got '", isa, "'");
  k.direct = direct::kernel(cap);
  k.backward = backward;
  return k;
}

// Blocking: how many samples share one GEMM (nb) and how many output rows per block.

struct Blocking {
  int64_t dblk;  // input channels per reduction block: im2col is built dblk*T rows at a time
  int64_t nb;    // samples per chunk (one thread owns a chunk)
  int64_t rows;  // output rows per block (OH when nb > 1)
  int64_t nchunks;
  bool brgemm;
};

// A GEMM width (the row stride of the im2col block, dy and y blocks) that is a multiple of 128
// floats maps the B-operand rows the micro-kernel walks onto a few L1 sets (4x4 planes of 32
// samples gave 512 columns: forward 1.6x a plain conv, 1.2x with 500).
inline bool aliased(int64_t L) { return L >= 128 && L % 128 == 0; }

Blocking choose_blocking(const Geom& g, size_t elem, const Knobs& knobs) {
  // The reduction (K = Dg*T) is streamed in blocks of ~kRows rows: the im2col block for one
  // reduction block is built right before the GEMM consumes it, so it stays in L2.
  const int64_t kRows = knobs.krows;
  const int64_t dblk = std::max<int64_t>(1, std::min(g.Dg, kRows / std::max<int64_t>(1, g.T)));
  // Target number of GEMM columns per block, bounded by a per-thread workspace budget.
  const int64_t target = knobs.cols;
  const int64_t budget = knobs.ws_bytes;
  const int64_t cap = std::max<int64_t>(
      1, budget / static_cast<int64_t>(elem) / std::max<int64_t>(1, std::max(dblk * g.T, g.Cg)));
  const int64_t want = std::max<int64_t>(1, std::min(target, cap));
  Blocking b{dblk, 1, g.OH, std::max<int64_t>(g.N, 0), knobs.brgemm};
  const int64_t P = std::max<int64_t>(1, g.P);
  if (P >= want) {
    b.nb = 1;
    int64_t rows = std::max<int64_t>(1, std::min(g.OH, want / std::max<int64_t>(1, g.OW)));
    int64_t nblocks = (g.OH + rows - 1) / rows;
    b.rows = (g.OH + nblocks - 1) / nblocks;  // even split: no ragged last block
    while (aliased(b.rows * g.OW) && b.rows > 1) {
      rows = b.rows - 1;
      nblocks = (g.OH + rows - 1) / rows;
      b.rows = (g.OH + nblocks - 1) / nblocks;
    }
  } else {
    const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
    // keep a few chunks per thread for balance when the batch allows it
    const int64_t per_thread = std::max<int64_t>(
        1, g.N / (knobs.chunks_per_thread * nthreads));
    int64_t nb = std::max<int64_t>(1, std::min({want / P, per_thread, g.N}));
    // balance: make the chunk count a multiple of the thread count where the batch allows it
    int64_t nchunks = (g.N + nb - 1) / nb;
    if (nchunks > nthreads && nchunks % nthreads != 0) {
      nchunks = (nchunks + nthreads - 1) / nthreads * nthreads;
      nb = std::max<int64_t>(1, (g.N + nchunks - 1) / nchunks);
    }
    // a smaller nb whose GEMM width is not aliased and whose chunks still balance
    for (int64_t c = nb; c > 1 && aliased(nb * P); --c) {
      const int64_t nc = (g.N + c - 1) / c;
      if (!aliased(c * P) && (nc % nthreads == 0 || nc < nthreads)) nb = c;
    }
    b.nb = nb;
    b.rows = g.OH;
  }
  b.nchunks = g.N > 0 ? (g.N + b.nb - 1) / b.nb : 0;
  return b;
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

int64_t num_workers(int64_t nchunks) {
  return std::max<int64_t>(1, std::min<int64_t>(nchunks, at::get_num_threads()));
}

// Called on the worker thread once samples [n0, n0 + nb) are complete (their dx conv route and
// dm): shc::shc_conv2d_backward finishes those samples there while their dx is still in cache.
using ChunkDone = std::function<void(int64_t n0, int64_t nb)>;

// ---------------------------------------------------------------------------------------
// The "shift" method, for the 3x3 conv with stride 1, padding 1, dilation 1 and one group (every
// stride-1 3x3 layer of Plain-10 and the ResNets): no im2col. A sample's planes are copied once
// into a zero-bordered layout of row pitch W + 1 (a zero row above and below; the one zero column
// ends each row and, read from the next row, starts it), where tap (i, j) of output position
// o = oh*(W+1) + ow reads position o + i*(W+1) + j - 1: each tap's GEMM operand is the padded
// plane itself at a fixed offset. The map scales the sample's weights (9 C D values) instead of
// its 9x larger columns; the output's W-th column is computed and dropped. Per sample:
//   y  = sum_t (m_t W_t) @ shift_t(xpad)                         (C x OH*(W+1))
//   dx = sum_s (m_{8-s} W_{8-s}^T) @ shift_s(dypad)              (the transposed conv: taps flipped)
//   G_t^T = shift_t(xpad) @ dypad^T (D x C):  grad_weight_t += m_t G_t,  dm_t = <W_t, G_t>
// One sample per GEMM, so the weights are not shared between samples as im2col's wide GEMMs
// share them: it wins where a plane fills a GEMM and the weights stay in cache (choose_shift).
inline bool shift_taps(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && g.dh == 1 &&
         g.dw == 1 && g.groups == 1 && g.OH == g.H && g.OW == g.W;
}

// The weight's re-layouts (taps_major, sum_tap_major) run on every thread where they move enough
// values: serial, they were the layer's serial part at 256 x 256 channels and more (2.4 MiB a
// layout), which two threads wait on. grain: the parallel_for grain for items of `per_item` values,
// so that a thread gets at least 32 Ki values.
inline int64_t relayout_grain(int64_t per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, per_item));
}

// grad_weight (C, D, taps) from per-worker accumulators acc[wid][t][d][c] (taps x D x C each),
// summed in worker order (shift and taps methods): gw[c, d, t] = sum_wid acc[wid][t][d][c].
// grad_bias from per-worker accumulators bacc[wid * C + c], summed in worker order.
void sum_workers(const std::vector<double>& bacc, int64_t nworkers, int64_t C, double* db) {
  std::fill(db, db + C, 0.0);
  for (int64_t wid = 0; wid < nworkers; ++wid)
    for (int64_t c = 0; c < C; ++c) db[c] += bacc[wid * C + c];
}

// In blocks of 16 output channels: each (t, d) reads one run of 16 c, and each c's rows of gw are
// written in order. (c outer, t inner read a cache line per element: 512>512@4 at batch 32 spent
// as long here as in the backward's GEMMs.)
template <typename T>
void sum_tap_major(const T* acc, int64_t nworkers, int64_t C, int64_t D, int64_t taps, T* gw) {
  constexpr int64_t kB = 16;
  const int64_t size = taps * D * C, nblk = (C + kB - 1) / kB;
  // blocks of channels in parallel: disjoint writes, each value summed in worker order as on one thread
  at::parallel_for(0, nblk, relayout_grain(kB * D * taps * nworkers), [&](int64_t b0, int64_t b1) {
    for (int64_t c0 = b0 * kB; c0 < std::min(C, b1 * kB); c0 += kB) {
      const int64_t nc = std::min(kB, C - c0);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t t = 0; t < taps; ++t) {
          T v[kB] = {};
          for (int64_t wid = 0; wid < nworkers; ++wid) {
            const T* a = acc + wid * size + (t * D + d) * C + c0;
            for (int64_t i = 0; i < nc; ++i) v[i] += a[i];
          }
          for (int64_t i = 0; i < nc; ++i) gw[((c0 + i) * D + d) * taps + t] = v[i];
        }
    }
  });
}

// count blocks of rows x cols at row pitch `pitch` (block pitch ld; each row's columns past cols
// are dropped) into dense planes (count x rows x cols), adding bias[c] where bias is given.
template <typename T>
SHC_MULTIVERSION void rows_to_planes(const T* src, int64_t count, int64_t rows, int64_t cols, int64_t pitch,
                                     int64_t ld, const T* bias, T* dst) {
  for (int64_t c = 0; c < count; ++c) {
    const T bv = bias != nullptr ? bias[c] : T(0);
    for (int64_t h = 0; h < rows; ++h) {
      const T* s = src + c * ld + h * pitch;
      T* d = dst + (c * rows + h) * cols;
#pragma omp simd
      for (int64_t q = 0; q < cols; ++q) d[q] = s[q] + bv;
    }
  }
}

struct ShiftLayout {
  int64_t Wp, plane, Pp;  // row pitch, padded plane (with one element before and after), GEMM width
  explicit ShiftLayout(const Geom& g) : Wp(g.W + 1), plane((g.H + 2) * (g.W + 1) + 2), Pp(g.H * (g.W + 1)) {}
  // where tap (i, j) of output position 0 reads (position 0 of the buffer is the element before)
  int64_t tap(int64_t t) const { return 1 + (t / 3) * Wp + t % 3 - 1; }
  // The output positions [lo, hi) whose row tap t reads inside the image: the top row's taps skip
  // the first output row, the bottom row's the last (they read a zero row), a ninth of the
  // GEMMs' work on 3 of every H rows.
  int64_t lo(int64_t t) const { return t / 3 == 0 ? Wp : 0; }
  int64_t hi(int64_t t) const { return t / 3 == 2 ? Pp - Wp : Pp; }
  // planes (count x H x W) into the interior of the padded planes (count x plane); the border stays zero
  template <typename T>
  SHC_MULTIVERSION void pad(const Geom& g, const T* src, int64_t count, T* dst) const {
    for (int64_t c = 0; c < count; ++c)
      for (int64_t h = 0; h < g.H; ++h)
        std::memcpy(dst + c * plane + 1 + (h + 1) * Wp, src + (c * g.H + h) * g.W, sizeof(T) * g.W);
  }
  // rows of pitch Wp (count x Pp) into planes (count x H x W), dropping each row's last column
  template <typename T>
  void unpad(const Geom& g, const T* src, int64_t count, const T* bias, T* dst) const {
    rows_to_planes(src, count, g.H, g.W, Wp, Pp, bias, dst);
  }
};

// wt[t] (C x D) = w[c, d, t] (transposed: wt[t] (D x C)), for the weight (C, D, taps).
// In blocks of 16 of the destination's innermost index, so that each write is a run of 16 (one
// element per write, strided by C * D, cost 512>512@4's backward at batch 32 as long as its GEMMs).
template <typename T>
void taps_major(const T* w, int64_t C, int64_t D, int64_t taps, bool transposed, T* wt,
                const direct::Kernel* kern) {
  constexpr int64_t kB = 16;
  // fp32, 9 taps, AVX-512: 16 runs at a time through registers (direct::taps9_avx512), where the
  // scalar copy was 7.6% of 128>128@4's forward. One thread, batch 32, the layer against F.conv2d,
  // median of paired ratios (bench/results/cpu_ab_rows_2026-12-07.md): forward 128>128@4 1.14x ->
  // 1.10x, 512>512@4 1.13x -> 1.08x, 64>128@8/2 1.10x -> 1.06x, 64>64@8 1.07x -> 1.04x.
  auto taps9 = [&](const T* src, int64_t stride, T* dst, int64_t ld, int64_t n) {
    if constexpr (std::is_same_v<T, float>)
      if (n == kB && taps == 9 && kern != nullptr && kern->taps9 != nullptr) return kern->taps9(src, stride, dst, ld);
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t i = 0; i < n; ++i) dst[t * ld + i] = src[i * stride + t];
  };
  if (transposed) {  // wt[t][d][c]: runs of c
    at::parallel_for(0, (C + kB - 1) / kB, relayout_grain(kB * D * taps), [&](int64_t b0, int64_t b1) {
      for (int64_t c0 = b0 * kB; c0 < std::min(C, b1 * kB); c0 += kB)
        for (int64_t d = 0; d < D; ++d)
          taps9(w + (c0 * D + d) * taps, D * taps, wt + d * C + c0, D * C, std::min(kB, C - c0));
    });
    return;
  }
  at::parallel_for(0, C, relayout_grain(D * taps), [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c)  // wt[t][c][d]: runs of d
      for (int64_t d0 = 0; d0 < D; d0 += kB) taps9(w + (c * D + d0) * taps, taps, wt + c * D + d0, C * D, std::min(kB, D - d0));
  });
}

// out (rows x Pp) = sum_s (m[src(s)] wt[src(s)]) @ shift_s(padded), src(s) = s, or 8 - s (flip: the
// transposed conv); wt[t] is (rows x inner), padded holds `inner` padded planes, a is 9 x rows x
// inner scratch for the scaled weights.
template <typename T>
void shift_conv(const ShiftLayout& L, int64_t rows, int64_t inner, const T* wt, const T* m, bool flip,
                const T* padded, T* a, T* out, bool brgemm) {
  const int64_t size = rows * inner;
  for (int64_t s = 0; s < 9; ++s) {
    const int64_t t = flip ? 8 - s : s;
    scale_copy(size, m[t], wt + t * size, a + s * size);
  }
  // the middle row's taps first: they cover every output position, so the first one initializes out
  for (int64_t s : {3, 4, 5, 0, 1, 2, 6, 7, 8}) {
    const int64_t lo = L.lo(s), hi = L.hi(s);
    mm<T>(rows, hi - lo, inner, a + s * size, inner, padded + L.tap(s) + lo, L.plane, out + lo, L.Pp, s != 3,
          brgemm);
  }
}

template <typename T>
void forward_shift(const Geom& g, const Knobs& k, const T* x, const T* w, const T* m, const T* bias, T* y) {
  const ShiftLayout L(g);
  const int64_t CD = g.C * g.D;
  Buf<T> wt(9 * CD);  // W_t (C x D), tap-major
  taps_major(w, g.C, g.D, 9, false, wt.data(), k.direct);
  run_chunks(g.N, num_workers(g.N), /*dynamic=*/true, [&](int64_t, auto& next) {
    std::vector<T> xp(static_cast<size_t>(g.D * L.plane), T(0));  // zero border, written once
    Buf<T> a(9 * CD), acc(g.C * L.Pp);
    for (int64_t n = next(); n >= 0; n = next()) {
      L.pad(g, x + n * g.D * g.H * g.W, g.D, xp.data());
      shift_conv(L, g.C, g.D, wt.data(), m + n * 9, false, xp.data(), a.data(), acc.data(), k.brgemm);
      L.unpad(g, acc.data(), g.C, bias, y + n * g.C * g.P);
    }
  });
}

// ---------------------------------------------------------------------------------------
// The "direct" method (fp32, on CPUs with AVX2 and FMA or AVX-512; the shift method's domain):
// each register tile (AVX-512: 8 output rows x 48 positions, AVX2: 4 x 24) is accumulated over all
// nine taps and every input plane in one pass (direct.h), the map folded into the sample's weight
// panel:
//   out[r][o] = sum_s sum_k (m[src(s)] A[r, k, src(s)]) in[k][o + tap(s)]
// forward: A = W (rows c, k = d), in = the padded x, src(s) = s;
// dx:      A = W^T (rows d, k = c), in = the padded dy, src(s) = 8 - s (the transposed conv).
// Stride 1: a plane is stored whole (pitch W, position o = oh * W + ow) between a zero row above
// and one below (and a zero element before and after): tap (ky, kx) of o reads o + ky * W + kx - 1
// there. No padding column: a left tap (kx = 0) of ow = 0 reads the previous row's last element
// and a right tap (kx = 2) of ow = W - 1 the next row's first, and the kernel masks those lanes
// to zero (edge masks, one per position). The shift method's layout (pitch W + 1, its zero
// column the padding on both sides) computed and dropped a column: 14x14 planes were 210
// positions, 224 in whole vectors, now 196 in 208 (AVX-512's tail kernel takes the last 4).
// Positions past the plane are computed up to the next whole vector (the input planes get a
// tile's worth of slack) and not stored: the tiles write straight into y (or dx), adding the bias,
// the plane's last vector and the rows past C (D) masked off (the copy out of a tiled buffer was
// 3% of a 32>32@14 forward's profile, but removing it, and the padding column, measured within
// the noise).
//
// Stride 2 (forward only): each padded input plane is split into its four phases (row parity a,
// column parity b), phase[a][b][i][j] = x_pad[2i + a][2j + b], i <= OH, j <= OW. Tap (ky, kx) of
// output (oh, ow) reads x_pad[2oh + ky][2ow + kx] = phase[ky % 2][kx % 2][oh + ky / 2][ow + kx / 2].
// The phases are stored at pitch OW: phase b = 1 (x column 2j) from j = 0, phase b = 0 (x column
// 2j - 1) from j = 1, whose j = 0 (the padding column) only the left taps read, at ow = 0, where
// they are masked. Output position oh * OW + ow plus a fixed offset per tap, the same kernel as
// stride 1 (im2col there builds 9 x D rows for every output position and runs a GEMM over them:
// 1.1-1.4x a plain conv at batch 32).
inline bool direct_stride2(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2 && g.ph == 1 && g.pw == 1 && g.dh == 1 && g.dw == 1 &&
         g.groups == 1;
}

struct DirectLayout {
  const direct::Kernel& kern;
  bool phases;                       // stride 2: four phase planes per input channel
  int64_t Wp, Pq, plane, Pp;         // output pitch (OW), phase size, per-channel input, positions
  int64_t rows, inner, rblocks, ld;  // output rows, reduction planes, row blocks, Pp in whole tiles
  int64_t band;                      // positions per band (the band's input fits in ~192 KiB)
  int64_t off[9];
  std::vector<int32_t> edges;        // 3 x ld: all ones, then the left and the right taps' masks
  const int32_t* edge[9];            // tap s's masks in edges
  DirectLayout(const Geom& g, const direct::Kernel& kernel, bool transposed)
      : kern(kernel),
        phases(g.sh == 2),
        Wp(g.OW),
        Pq((g.OH + 1) * Wp + 1),
        plane(phases ? 4 * Pq : (g.H + 2) * g.W + 2),
        Pp(g.OH * Wp),
        rows(transposed ? g.D : g.C),
        inner(transposed ? g.C : g.D),
        rblocks((rows + kern.rows - 1) / kern.rows),
        ld((Pp + kern.tile - 1) / kern.tile * kern.tile),
        edges(static_cast<size_t>(3 * ld), 0) {
    for (int64_t o = 0; o < Pp; ++o) {
      const int64_t ow = o % Wp;
      edges[o] = -1;
      edges[ld + o] = ow != 0 ? -1 : 0;
      edges[2 * ld + o] = ow != Wp - 1 ? -1 : 0;
    }
    for (int64_t s = 0; s < 9; ++s) {
      const int64_t ky = s / 3, kx = s % 3;
      // the leading zero element of each plane (or phase) comes first
      off[s] = phases ? 1 + ((ky % 2) * 2 + kx % 2) * Pq + (ky / 2) * Wp - (kx == 0) : 1 + ky * Wp + kx - 1;
      const int64_t kind = kx == 0 ? 1 : (kx == 2 && !phases ? 2 : 0);
      edge[s] = edges.data() + kind * ld;
    }
    // per reduction plane a band of n positions reads n + halo floats (stride 1), or four
    // phases of n + halo (stride 2)
    const int64_t reads = phases ? 4 : 1, halo = phases ? Wp + 1 : off[8];
    const int64_t fit = (int64_t(48) << 10) / (reads * std::max<int64_t>(1, inner)) - halo - kern.tile;
    band = std::max<int64_t>(1, fit / kern.tile) * kern.tile;
  }
  DirectLayout(const DirectLayout&) = delete;  // edge points into edges
  int64_t panel_size() const { return rblocks * 9 * inner * kern.rows; }
  int64_t input_size() const { return inner * plane + kern.tile; }
  // count planes (H x W) into the padded planes (stride 1) or the phases (stride 2); what maps to
  // the zero border is never written (the buffer is zeroed once)
  void pad(const Geom& g, const float* src, int64_t count, float* dst) const {
    if (!phases) {
      for (int64_t c = 0; c < count; ++c)
        std::memcpy(dst + c * plane + 1 + g.W, src + c * g.H * g.W, sizeof(float) * g.H * g.W);
      return;
    }
    for (int64_t c = 0; c < count; ++c) kern.split(src + c * g.H * g.W, g.H, g.W, dst + c * plane, Pq, Wp);
  }
};

// The unscaled panel wp[rb][s][k][r] = A[rb*R + r, k, src(s)] (R rows per tile; zero past the last row), for the
// weight w (C, D, 3, 3): forward A[c, d, t] = w[c, d, t]; transposed A[d, c, t] = w[c, d, t].
// The panel's shape: blocks of R rows (a tile's), rows rows in all, inner reduction planes.
struct PanelShape {
  int64_t R, rows, inner;
  int64_t rblocks() const { return (rows + R - 1) / R; }
  int64_t block() const { return 9 * inner * R; }
  int64_t size() const { return rblocks() * block(); }
};

void direct_panel(const PanelShape& ps, const float* w, int64_t D, bool transposed, float* wp) {
  const int64_t R = ps.R;
  for (int64_t rb = 0; rb < ps.rblocks(); ++rb)
    for (int64_t s = 0; s < 9; ++s)
      for (int64_t k = 0; k < ps.inner; ++k)
        for (int64_t r = 0; r < R; ++r) {
          const int64_t row = rb * R + r;
          float v = 0.f;
          if (row < ps.rows) v = transposed ? w[(k * D + row) * 9 + (8 - s)] : w[(row * D + k) * 9 + s];
          wp[((rb * 9 + s) * ps.inner + k) * R + r] = v;
        }
}

// dst = row block rb of the unscaled panel wp with tap s scaled by the map m (9 values; flipped if
// transposed)
void scale_block(const PanelShape& ps, const float* wp, const float* m, bool transposed, int64_t rb, float* dst) {
  const int64_t size = ps.inner * ps.R;
  for (int64_t s = 0; s < 9; ++s) scale_copy(size, m[transposed ? 8 - s : s], wp + (rb * 9 + s) * size, dst + s * size);
}

void scale_panel(const PanelShape& ps, const float* wp, const float* m, bool transposed, float* panel) {
  for (int64_t rb = 0; rb < ps.rblocks(); ++rb) scale_block(ps, wp, m, transposed, rb, panel + rb * ps.block());
}

PanelShape panel_shape(const DirectLayout& dl) { return {dl.kern.rows, dl.rows, dl.inner}; }

// One sample: out (rows planes of Pp positions, written in place) = bias + the padded `in`
// convolved with the panel scaled by its map m (9 values); bias holds rblocks * kern.rows values.
void direct_sample(const DirectLayout& dl, const float* wp, const float* m, bool transposed, const float* in,
                   float* panel, const float* bias, float* out) {
  scale_panel(panel_shape(dl), wp, m, transposed, panel);
  dl.kern.conv({in, dl.plane, dl.inner, dl.off, dl.edge, panel, bias, dl.rows, dl.Pp, dl.band, out, dl.Pp});
}

// The direct method's convs with at least 32 rows (output channels forward, input channels for dx)
// take the rows tile (direct::RowsArgs), which skips the padded taps and reads its input unpadded
// and in place; fewer rows would leave most of its two row vectors empty. Against the conv tile
// (one thread, batch 32, the layer against F.conv2d, median of paired ratios in one process,
// bench/results/cpu_ab_rows_2026-12-07.md): forward 256>256@14 1.29x -> 1.02x, 128>128@16 1.19x ->
// 1.02x, 64>64@14 1.20x -> 0.99x, 32>32@14 1.12x -> 0.94x, 64>64@56 1.08x -> 0.97x, stride 2
// 256>256@28/2 1.02x -> 0.80x; with dx by it too, fwd+bwd 256>256@14 1.13x -> 1.02x, 64>64@28
// 0.97x -> 0.91x. 16 output channels: 16>16@32 forward 0.76x -> 1.12x, so not below 32.
inline bool rows_path(const Geom& g, const direct::Kernel& kern, int64_t nrows) {
  return kern.rows_conv != nullptr && (shift_taps(g) || direct_stride2(g)) && nrows >= direct::kRowsR;
}

// One sample by the rows tile: out (ps.rows planes of g.P positions) = bias + `in` (ps.inner planes
// of H x W) convolved with the panel wp scaled by m (flipped if transposed), one row block at a
// time: block rb's 9 * inner * 32 scaled values are written to `block`, which stays in L2 for the
// plane's tiles, where the whole scaled panel (2.3 MiB at 256 x 256 channels) went to memory and back
// (forward, one thread, batch 32, median of paired ratios to F.conv2d: 256>256@14 1.029x -> 1.022x,
// 128>128@8 1.098x -> 1.081x, within 0.3% elsewhere).
void rows_sample(const Geom& g, const direct::Kernel& kern, const PanelShape& ps, const float* wp, const float* m,
                 bool transposed, const float* in, float* block, const float* bias, float* out) {
  for (int64_t rb = 0; rb < ps.rblocks(); ++rb) {
    scale_block(ps, wp, m, transposed, rb, block);
    const int64_t r0 = rb * ps.R;
    kern.rows_conv({in, g.H * g.W, ps.inner, g.H, g.W, g.sh, g.OH, g.OW, block, bias + r0,
                    std::min(ps.R, ps.rows - r0), out + r0 * g.P, g.P});
  }
}

// shc::shc_conv2d's fused forward computes the map per block of samples: block_map(n0, nb)
// writes m for samples [n0, n0 + nb), from their x, which the block's pads then read from cache.
using SampleBlockMap = std::function<void(int64_t n0, int64_t nb)>;

void forward_direct(const Geom& g, const direct::Kernel& kern, const float* x, const float* w, const float* m,
                    const float* bias, float* y, const SampleBlockMap* block_map = nullptr) {
  const bool rows = rows_path(g, kern, g.C);
  std::optional<DirectLayout> dl;  // the position tile's layout (its edge masks); the rows tile needs none
  if (!rows) dl.emplace(g, kern, false);
  const PanelShape shape = rows ? PanelShape{direct::kRowsR, g.C, g.D} : panel_shape(*dl);
  Buf<float> wp(shape.size());
  direct_panel(shape, w, g.D, false, wp.data());
  std::vector<float> bp(static_cast<size_t>(shape.rblocks() * shape.R), 0.f);  // the bias, zero past C
  if (bias != nullptr) std::copy(bias, bias + g.C, bp.begin());
  // With block_map, blocks of up to 16 samples whose input fits in 256 KiB (L2), one per thread at
  // least: the map's two small GEMMs per block, not per sample.
  const int64_t HW = g.H * g.W, in_bytes = std::max<int64_t>(1, g.D * HW * int64_t(sizeof(float)));
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t nb = block_map == nullptr ? 1
                                          : std::clamp<int64_t>(std::min((int64_t(256) << 10) / in_bytes,
                                                                         (g.N + nthreads - 1) / nthreads),
                                                                1, 16);
  // As many blocks for every thread, the samples spread evenly over them (sizes differ by one at
  // most): 32 samples in blocks of up to 10 on two threads were 10, 10, 10 and 2, so one thread
  // computed 20 samples while the other waited after 12 (32>32@14 forward against F.conv2d, two
  // threads, median of 31 paired ratios: 1.29 -> 1.06; others within the noise, one thread too).
  int64_t nchunks = (g.N + nb - 1) / nb;
  nchunks = std::min((nchunks + nthreads - 1) / nthreads * nthreads, g.N);
  run_chunks(nchunks, num_workers(nchunks), /*dynamic=*/true, [&](int64_t, auto& next) {
    // zero border and slack, written once (the rows tile reads x as it is)
    std::vector<float> xp(static_cast<size_t>(rows ? 0 : dl->input_size()), 0.f);
    Buf<float> panel(rows ? shape.block() : shape.size());
    for (int64_t ch = next(); ch >= 0; ch = next()) {
      const int64_t n0 = g.N * ch / nchunks, n1 = g.N * (ch + 1) / nchunks;
      if (block_map != nullptr) (*block_map)(n0, n1 - n0);
      for (int64_t n = n0; n < n1; ++n) {
        if (rows) {
          rows_sample(g, kern, shape, wp.data(), m + n * 9, false, x + n * g.D * HW, panel.data(), bp.data(),
                      y + n * g.C * g.P);
          continue;
        }
        dl->pad(g, x + n * g.D * HW, g.D, xp.data());
        direct_sample(*dl, wp.data(), m + n * 9, false, xp.data(), panel.data(), bp.data(), y + n * g.C * g.P);
      }
    }
  });
}

template <typename T>
void backward_shift(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx,
                    T* gw, double* dm, double* db, const ChunkDone* done,
                    const direct::Kernel* direct_dx = nullptr) {
  // direct_dx (fp32, the direct method): dx by that micro-kernel, not 9 GEMMs
  const ShiftLayout L(g);
  const bool use_direct = std::is_same_v<T, float> && direct_dx != nullptr && dx != nullptr;
  // dx by the rows tile (D rows): dy read as it is, not padded; else by the position tile
  const bool rows = use_direct && rows_path(g, *direct_dx, g.D);
  std::optional<DirectLayout> dl;
  if (use_direct && !rows) dl.emplace(g, *direct_dx, true);
  const PanelShape shape = !use_direct ? PanelShape{1, 0, 0}
                           : rows      ? PanelShape{direct::kRowsR, g.D, g.C}
                                       : panel_shape(*dl);
  Buf<float> wpT(use_direct ? shape.size() : 0);
  if constexpr (std::is_same_v<T, float>)
    if (use_direct) direct_panel(shape, w, g.D, true, wpT.data());
  // dx has no bias
  const std::vector<float> zeros(use_direct ? static_cast<size_t>(shape.rblocks() * shape.R) : 0, 0.f);
  const int64_t CD = g.C * g.D, HW = g.H * g.W;
  const bool need_gt = gw != nullptr || dm != nullptr;  // G_t: for grad_weight and dm
  Buf<T> wtT(9 * CD);  // W_t^T (D x C), tap-major: dx's weights and dm's dot
  taps_major(w, g.C, g.D, 9, true, wtT.data(), k.direct);
  const int64_t nworkers = num_workers(g.N);
  Buf<T> acc(gw != nullptr ? nworkers * 9 * CD : 0);  // per worker: sum_n m_t G_t^T, (9 x D x C)
  std::vector<double> bacc(db != nullptr ? static_cast<size_t>(nworkers * g.C) : 0, 0.0);
  // grad_weight and grad_bias are summed per worker: a fixed sample -> worker map (deterministic)
  run_chunks(g.N, nworkers, /*dynamic=*/gw == nullptr && db == nullptr, [&](int64_t wid, auto& next) {
    if (gw != nullptr)  // each worker zeroes its own accumulator, in parallel
      std::fill(acc.data() + wid * 9 * CD, acc.data() + (wid + 1) * 9 * CD, T(0));
    std::vector<T> xp(need_gt ? static_cast<size_t>(g.D * L.plane) : 0, T(0));
    std::vector<T> dyp(dx != nullptr && !rows ? static_cast<size_t>(use_direct ? dl->input_size() : g.C * L.plane) : 0,
                       T(0));
    std::vector<T> dyT(need_gt ? static_cast<size_t>(L.Pp * g.C) : 0, T(0));  // column W stays zero
    Buf<T> a(dx != nullptr ? (rows ? shape.block() : use_direct ? shape.size() : 9 * CD) : 0), gt(need_gt ? CD : 0);
    Buf<T> dxacc(dx != nullptr && !use_direct ? g.D * L.Pp : 0);
    T* myacc = gw != nullptr ? acc.data() + wid * 9 * CD : nullptr;
    for (int64_t n = next(); n >= 0; n = next()) {
      const T* dyn = dy + n * g.C * HW;
      if (db != nullptr)
        for (int64_t c = 0; c < g.C; ++c) bacc[wid * g.C + c] += sum_row(dyn + c * HW, HW);
      if (need_gt) {
        L.pad(g, x + n * g.D * HW, g.D, xp.data());
        for (int64_t h = 0; h < g.H; ++h)  // dyT[oh*Wp + ow][c] = dy[c][oh][ow]
          transpose<T>(g.C, g.W, dyn + h * g.W, HW, dyT.data() + h * L.Wp * g.C, g.C);
        for (int64_t t = 0; t < 9; ++t) {
          const int64_t lo = L.lo(t), hi = L.hi(t);
          mm<T>(g.D, g.C, hi - lo, xp.data() + L.tap(t) + lo, L.plane, dyT.data() + lo * g.C, g.C, gt.data(), g.C,
                false, k.brgemm);
          if (dm != nullptr) dm[n * 9 + t] += dot(CD, wtT.data() + t * CD, gt.data());
          if (myacc != nullptr) axpy(CD, m[n * 9 + t], gt.data(), myacc + t * CD);
        }
      }
      if (dx != nullptr) {
        if constexpr (std::is_same_v<T, float>) {
          if (rows) {
            rows_sample(g, *direct_dx, shape, wpT.data(), m + n * 9, true, dyn, a.data(), zeros.data(),
                        dx + n * g.D * HW);
          } else if (use_direct) {
            dl->pad(g, dyn, g.C, dyp.data());
            direct_sample(*dl, wpT.data(), m + n * 9, true, dyp.data(), a.data(), zeros.data(), dx + n * g.D * HW);
          }
          if (use_direct) {
            if (done != nullptr) (*done)(n, 1);
            continue;
          }
        }
        L.pad(g, dyn, g.C, dyp.data());
        shift_conv(L, g.D, g.C, wtT.data(), m + n * 9, true, dyp.data(), a.data(), dxacc.data(), k.brgemm);
        L.unpad(g, dxacc.data(), g.D, static_cast<const T*>(nullptr), dx + n * g.D * HW);
      }
      if (done != nullptr) (*done)(n, 1);
    }
  });
  if (db != nullptr) sum_workers(bacc, nworkers, g.C, db);
  if (gw != nullptr) sum_tap_major(acc.data(), nworkers, g.C, g.D, int64_t(9), gw);
}

// ---------------------------------------------------------------------------------------
// The "taps" method, for small output planes (one group, any kernel, stride, padding, dilation).
// A block of nb samples is transposed so that the sample is the innermost index,
// xs[d][ih][iw][s]. Tap t reads the image on output rows [r0, r1) and columns [c0, c1) only (a
// TapWindow); on one output row those positions, for every sample of the block, are one
// contiguous run of (ow, s) in ys[c][oh][ow][s], so per tap (and per output row, where the tap
// misses a column)
//   ys[:, run] += W_t (C x D) @ cols_t[d][run],   cols_t[d][(oh, ow)][s] = m[s,t] * xs[d][ih][iw][s]
// is one GEMM over the whole block, as wide as im2col's, that multiplies no padding zeros (on a
// 4x4 plane with padding 1, 100 of the 144 tap-position pairs read the image; im2col and the shift
// method compute all 144). Backward per block and tap, with dy transposed to ds[c][oh][ow][s] and
// dr[(oh, ow, s)][c]:
//   acc_t (D x C) += cols_t @ dr[run]                        (grad_weight_t^T, m folded into cols_t)
//   dcols_t = W_t^T (D x C) @ ds[:, run];   dxs[d][ih][iw][s] += m[s,t] * dcols_t[d][(oh, ow)][s]
//   dm[s,t] += sum_{d, oh, ow} dcols_t[d][(oh, ow)][s] * xs[d][ih][iw][s]
inline bool taps_apply(const Geom& g) { return g.groups == 1; }

// Output rows [r0, r1) and columns [c0, c1) where tap (i, j) reads inside the image, at input row
// oh*sh + roff and column ow*sw + coff.
struct TapWindow {
  int64_t r0, r1, c0, c1, roff, coff;
  int64_t rows() const { return r1 - r0; }
  int64_t cols() const { return c1 - c0; }
};
inline TapWindow tap_window(const Geom& g, int64_t t) {
  const int64_t i = t / g.kw, j = t % g.kw;
  TapWindow w{};
  col_range(g, j, w.c0, w.c1, w.coff);
  w.roff = i * g.dh - g.ph;
  valid_range(w.roff, g.sh, g.H, g.OH, w.r0, w.r1);
  if (w.c0 >= w.c1) w.r1 = w.r0;  // no column inside: an empty window
  return w;
}

// Calls f(first output position, number of positions, offset in the window's packed
// (rows x cols) order) for each contiguous run of a window: one run when the tap reads every
// column, else one per output row.
template <typename F>
void for_runs(const Geom& g, const TapWindow& w, const F& f) {
  if (w.rows() == 0) return;
  if (w.cols() == g.OW) return f(w.r0 * g.OW, w.rows() * g.OW, int64_t(0));
  for (int64_t r = 0; r < w.rows(); ++r) f((w.r0 + r) * g.OW + w.c0, w.cols(), r * w.cols());
}

// cols[d][(r, c)][s] = ms[s] * xs[d][ih][iw][s] over the window (packed: ld per d = rows*cols*nb).
template <typename T>
SHC_MULTIVERSION void taps_gather_portable(const Geom& g, const TapWindow& w, const T* xs, const T* ms, int64_t nb,
                                           T* cols) {
  const int64_t HW = g.H * g.W, nr = w.rows(), nc = w.cols();
  for (int64_t d = 0; d < g.D; ++d)
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t ih = (w.r0 + r) * g.sh + w.roff;
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t iw = (w.c0 + c) * g.sw + w.coff;
        const T* src = xs + (d * HW + ih * g.W + iw) * nb;
        T* dst = cols + ((d * nr + r) * nc + c) * nb;
#pragma omp simd
        for (int64_t q = 0; q < nb; ++q) dst[q] = ms[q] * src[q];
      }
    }
}

// dxs[d][ih][iw][s] += ms[s] * dcols[d][(r, c)][s];  dm[s] += dcols[d][(r, c)][s] * xs[d][ih][iw][s]
// (either may be null).
template <typename T>
SHC_MULTIVERSION void taps_scatter_portable(const Geom& g, const TapWindow& w, const T* dcols, const T* xs,
                                            const T* ms, int64_t nb, T* dxs, double* dm) {
  const int64_t HW = g.H * g.W, nr = w.rows(), nc = w.cols();
  for (int64_t d = 0; d < g.D; ++d)
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t ih = (w.r0 + r) * g.sh + w.roff;
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t at = (d * HW + ih * g.W + (w.c0 + c) * g.sw + w.coff) * nb;
        const T* src = dcols + ((d * nr + r) * nc + c) * nb;
        if (dm != nullptr) {
          const T* xv = xs + at;
#pragma omp simd
          for (int64_t q = 0; q < nb; ++q) dm[q] += static_cast<double>(src[q]) * static_cast<double>(xv[q]);
        }
        if (dxs != nullptr) {
          T* dv = dxs + at;
#pragma omp simd
          for (int64_t q = 0; q < nb; ++q) dv[q] += ms[q] * src[q];
        }
      }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
// fp32 copies in AVX2 for blocks of 8, 16, 24 or 32 samples (V vectors of 8 lanes, the map's and
// dm's lanes in registers). The portable loops run a short vector loop per position and summed dm
// in double per element: the scatter took 12% of a 64>64@8 layer's fwd+bwd, batch 128. Here dm
// sums in float over one channel's window (at most P products per lane), then in double.
template <int V>
__attribute__((target("avx2,fma"))) void taps_gather_avx2(const Geom& g, const TapWindow& w, const float* xs,
                                                          const float* ms, float* cols) {
  constexpr int64_t nb = 8 * V;
  const int64_t HW = g.H * g.W, nr = w.rows(), nc = w.cols(), step = g.sw * nb;
  __m256 mv[V];
  for (int v = 0; v < V; ++v) mv[v] = _mm256_loadu_ps(ms + 8 * v);
  for (int64_t d = 0; d < g.D; ++d)
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t ih = (w.r0 + r) * g.sh + w.roff;
      const float* src = xs + (d * HW + ih * g.W + w.c0 * g.sw + w.coff) * nb;
      float* dst = cols + (d * nr + r) * nc * nb;
      for (int64_t c = 0; c < nc; ++c, src += step, dst += nb)
        for (int v = 0; v < V; ++v) _mm256_storeu_ps(dst + 8 * v, _mm256_mul_ps(mv[v], _mm256_loadu_ps(src + 8 * v)));
    }
}

template <int V>
__attribute__((target("avx2,fma"))) void taps_scatter_avx2(const Geom& g, const TapWindow& w, const float* dcols,
                                                           const float* xs, const float* ms, float* dxs, double* dm) {
  constexpr int64_t nb = 8 * V;
  const int64_t HW = g.H * g.W, nr = w.rows(), nc = w.cols(), step = g.sw * nb;
  __m256 mv[V];
  for (int v = 0; v < V; ++v) mv[v] = _mm256_loadu_ps(ms + 8 * v);
  for (int64_t d = 0; d < g.D; ++d) {
    __m256 acc[V];
    for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t at = (d * HW + ((w.r0 + r) * g.sh + w.roff) * g.W + w.c0 * g.sw + w.coff) * nb;
      const float* src = dcols + (d * nr + r) * nc * nb;
      const float* xv = xs + at;
      float* dv = dxs != nullptr ? dxs + at : nullptr;
      for (int64_t c = 0; c < nc; ++c, src += nb, xv += step) {
        for (int v = 0; v < V; ++v) {
          const __m256 dc = _mm256_loadu_ps(src + 8 * v);
          if (dm != nullptr) acc[v] = _mm256_fmadd_ps(dc, _mm256_loadu_ps(xv + 8 * v), acc[v]);
          if (dv != nullptr)  // a product and a sum, as the portable copy rounds them
            _mm256_storeu_ps(dv + 8 * v, _mm256_add_ps(_mm256_loadu_ps(dv + 8 * v), _mm256_mul_ps(mv[v], dc)));
        }
        if (dv != nullptr) dv += step;
      }
    }
    if (dm != nullptr)
      for (int v = 0; v < V; ++v) {
        double* o = dm + 8 * v;
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(acc[v]));
        const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(acc[v], 1));
        _mm256_storeu_pd(o, _mm256_add_pd(_mm256_loadu_pd(o), lo));
        _mm256_storeu_pd(o + 4, _mm256_add_pd(_mm256_loadu_pd(o + 4), hi));
      }
  }
}

// Calls f(std::integral_constant<int, V>) for nb = 8 V, V in 1..4, and returns true; false otherwise.
template <typename F>
bool with_vectors(int64_t nb, const F& f) {
  if (!cpu_avx2_fma()) return false;
  switch (nb) {
    case 8: return f(std::integral_constant<int, 1>{}), true;
    case 16: return f(std::integral_constant<int, 2>{}), true;
    case 24: return f(std::integral_constant<int, 3>{}), true;
    case 32: return f(std::integral_constant<int, 4>{}), true;
    default: return false;
  }
}
#endif

template <typename T>
void taps_gather(const Geom& g, const TapWindow& w, const T* xs, const T* ms, int64_t nb, T* cols) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float>)
    if (with_vectors(nb, [&](auto v) { taps_gather_avx2<decltype(v)::value>(g, w, xs, ms, cols); })) return;
#endif
  taps_gather_portable(g, w, xs, ms, nb, cols);
}

template <typename T>
void taps_scatter(const Geom& g, const TapWindow& w, const T* dcols, const T* xs, const T* ms, int64_t nb, T* dxs,
                  double* dm) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float>)
    if (with_vectors(nb, [&](auto v) { taps_scatter_avx2<decltype(v)::value>(g, w, dcols, xs, ms, dxs, dm); }))
      return;
#endif
  taps_scatter_portable(g, w, dcols, xs, ms, nb, dxs, dm);
}

// Samples per block: ~SHC_CPU_COLS GEMM columns (nb * P), within the per-thread workspace, and a
// block for every thread where the batch allows (the samples are the SIMD lanes of the gathers
// and scatters, so fewer, wider blocks beat more chunks per thread here), rounded down to a
// multiple of 8 lanes (7x7 planes gave 10: 256>256@7, batch 32, fwd+bwd 1.26x; with 8, 0.97x).
inline int64_t taps_block(const Geom& g, size_t elem, const Knobs& k) {
  const int64_t per_sample = static_cast<int64_t>(elem) * (2 * g.D * g.H * g.W + 2 * g.D * g.P + 3 * g.C * g.P);
  // Below 16 samples the workspace may grow up to fourfold to reach 16: each block streams all nine
  // W_t, and at 512 channels (9 MiB of weights) blocks of 8 paid for that twice (one thread, the
  // layer against F.conv2d, forward / fwd+bwd, batch 32: 512>512@7/2 1.27x / 1.24x with 8 samples,
  // 0.99x / 1.02x with 16; 512>512@7 had 5 samples a block, so im2col, 1.18x / 1.19x; taps with 8:
  // 0.96x / 1.01x, and 0.93x / 0.98x at batch 128). Twofold left 512>512@8 (917 KiB a sample) at 8:
  // fourfold, forward 1.23x -> 1.11x at batch 32, 1.23x -> 1.17x at batch 128 (median of paired
  // ratios in one process, 2026-12-06), for a workspace of 14 MiB a thread there. A bigger budget
  // everywhere was no faster on the shapes that already had 16 or more.
  const int64_t fit = k.ws_bytes / std::max<int64_t>(1, per_sample);
  const int64_t cap = std::max<int64_t>(1, fit >= 16 ? fit : std::min<int64_t>(16, 4 * fit));
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t balance = std::max<int64_t>(1, (g.N + nthreads - 1) / nthreads);
  // Forwards on planes above 32 positions take twice the columns (7x7 and 8x8: 16 samples, not
  // 8; batch 32, one thread, against F.conv2d: 64>64@8 1.04x -> 0.94x, 64>64@7 0.97x -> 0.88x),
  // on planes of 9-32 positions half (4x4: 16 samples, not 32, so a block's GEMM operands stay in
  // L2; the layer, one thread, forward: 128>128@8/2 batch 32 1.17x -> 1.09x, batch 128 1.20x ->
  // 1.11x, 64>128@7/2 batch 128 1.18x -> 1.06x, 128>128@4 batch 32 0.97x -> 0.86x; 256>256@4 and
  // 64>64@4 no different; 2x2 planes, which keep the full columns, were slower with half). The
  // backward keeps the columns: with 16 samples, not 8, 128>128@8 fwd+bwd went from 1.04x to 1.18x
  // with oneDNN, MKL and the kernels capped at AVX2.
  const int64_t cols = k.backward ? k.cols : g.P > 32 ? 2 * k.cols : g.P > 8 ? k.cols / 2 : k.cols;
  const int64_t nb = std::max<int64_t>(1, std::min({cols / std::max<int64_t>(1, g.P), cap, balance, g.N}));
  return nb >= 8 ? nb - nb % 8 : nb;
}

// m for the block's samples, tap-major: mt[t * nb + s] = m[(n0 + s) * T + t].
template <typename T>
void taps_map(const Geom& g, const T* m, int64_t n0, int64_t nb, T* mt) {
  for (int64_t s = 0; s < nb; ++s)
    for (int64_t t = 0; t < g.T; ++t) mt[t * nb + s] = m[(n0 + s) * g.T + t];
}

// shc::shc_conv2d's fused forward computes the map per block of samples, from the block's
// transposed input xs[d][q][s] while it is in cache: block_map(xs, n0, nb, mt) writes those
// samples' m tap-major (mt[t * nb + s]). Without it the map is read from m.
template <typename T>
using BlockMap = std::function<void(const T* xs, int64_t n0, int64_t nb, T* mt)>;

template <typename T>
void forward_taps(const Geom& g, const Knobs& k, const T* x, const T* w, const T* m, const T* bias, T* y,
                  const BlockMap<T>* block_map = nullptr) {
  const int64_t CD = g.C * g.D, HW = g.H * g.W, nbmax = taps_block(g, sizeof(T), k);
  Buf<T> wt(g.T * CD);  // W_t (C x D), tap-major
  taps_major(w, g.C, g.D, g.T, false, wt.data(), k.direct);
  const int64_t nchunks = (g.N + nbmax - 1) / nbmax;
  run_chunks(nchunks, num_workers(nchunks), /*dynamic=*/true, [&](int64_t, auto& next) {
    Buf<T> xs(g.D * HW * nbmax), cols(g.D * g.P * nbmax), ys(g.C * g.P * nbmax), mt(g.T * nbmax);
    for (int64_t ch = next(); ch >= 0; ch = next()) {
      const int64_t n0 = ch * nbmax, nb = std::min(nbmax, g.N - n0), L = g.P * nb;
      transpose<T>(nb, g.D * HW, x + n0 * g.D * HW, g.D * HW, xs.data(), nb);
      if (block_map != nullptr) (*block_map)(xs.data(), n0, nb, mt.data());
      else taps_map(g, m, n0, nb, mt.data());
      for (int64_t c = 0; c < g.C; ++c)  // the GEMMs accumulate onto the bias
        std::fill(ys.data() + c * L, ys.data() + (c + 1) * L, bias != nullptr ? bias[c] : T(0));
      for (int64_t t = 0; t < g.T; ++t) {
        const TapWindow win = tap_window(g, t);
        if (win.rows() == 0) continue;
        taps_gather(g, win, xs.data(), mt.data() + t * nb, nb, cols.data());
        const int64_t ldc = win.rows() * win.cols() * nb;
        for_runs(g, win, [&](int64_t p0, int64_t len, int64_t off) {
          mm<T>(g.C, len * nb, g.D, wt.data() + t * CD, g.D, cols.data() + off * nb, ldc, ys.data() + p0 * nb, L,
                true, k.brgemm);
        });
      }
      // y[n0 + s][c][p] = ys[c][p][s]: ys is a (C * P) x nb matrix
      transpose<T>(g.C * g.P, nb, ys.data(), nb, y + n0 * g.C * g.P, g.C * g.P);
    }
  });
}

template <typename T>
void backward_taps(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx, T* gw,
                   double* dm, double* db, const ChunkDone* done) {
  const int64_t CD = g.C * g.D, HW = g.H * g.W, nbmax = taps_block(g, sizeof(T), k);
  const bool need_dcols = dx != nullptr || dm != nullptr;
  Buf<T> wtT(need_dcols ? g.T * CD : 0);  // W_t^T (D x C), tap-major
  if (need_dcols) taps_major(w, g.C, g.D, g.T, true, wtT.data(), k.direct);
  const int64_t nchunks = (g.N + nbmax - 1) / nbmax, nworkers = num_workers(nchunks);
  Buf<T> acc(gw != nullptr ? nworkers * g.T * CD : 0);  // per worker: grad_weight_t^T, (T x D x C)
  std::vector<double> bacc(db != nullptr ? static_cast<size_t>(nworkers * g.C) : 0, 0.0);
  // grad_weight and grad_bias are summed per worker: a fixed chunk -> worker map (deterministic)
  run_chunks(nchunks, nworkers, /*dynamic=*/gw == nullptr && db == nullptr, [&](int64_t wid, auto& next) {
    if (gw != nullptr)  // each worker zeroes its own accumulator, in parallel (was serial, before the loop)
      std::fill(acc.data() + wid * g.T * CD, acc.data() + (wid + 1) * g.T * CD, T(0));
    Buf<T> xs(g.D * HW * nbmax), cols(g.D * g.P * nbmax), ds(g.C * g.P * nbmax), mt(g.T * nbmax);
    Buf<T> dr(gw != nullptr ? g.P * nbmax * g.C : 0), dxs(dx != nullptr ? g.D * HW * nbmax : 0);
    std::vector<double> dmv(dm != nullptr ? static_cast<size_t>(nbmax) : 0);
    for (int64_t ch = next(); ch >= 0; ch = next()) {
      const int64_t n0 = ch * nbmax, nb = std::min(nbmax, g.N - n0), L = g.P * nb;
      transpose<T>(nb, g.C * g.P, dy + n0 * g.C * g.P, g.C * g.P, ds.data(), nb);
      if (db != nullptr)
        for (int64_t c = 0; c < g.C; ++c) bacc[wid * g.C + c] += sum_row(ds.data() + c * L, L);
      if (gw != nullptr) transpose<T>(g.C, L, ds.data(), L, dr.data(), g.C);
      transpose<T>(nb, g.D * HW, x + n0 * g.D * HW, g.D * HW, xs.data(), nb);
      taps_map(g, m, n0, nb, mt.data());
      if (dx != nullptr) std::fill(dxs.data(), dxs.data() + g.D * HW * nb, T(0));
      for (int64_t t = 0; t < g.T; ++t) {
        const TapWindow win = tap_window(g, t);
        if (win.rows() == 0) continue;
        const int64_t ldc = win.rows() * win.cols() * nb;
        const T* ms = mt.data() + t * nb;
        if (gw != nullptr) {
          taps_gather(g, win, xs.data(), ms, nb, cols.data());
          for_runs(g, win, [&](int64_t p0, int64_t len, int64_t off) {
            mm<T>(g.D, g.C, len * nb, cols.data() + off * nb, ldc, dr.data() + p0 * nb * g.C, g.C,
                  acc.data() + (wid * g.T + t) * CD, g.C, true, k.brgemm);
          });
        }
        if (need_dcols) {
          for_runs(g, win, [&](int64_t p0, int64_t len, int64_t off) {
            mm<T>(g.D, len * nb, g.C, wtT.data() + t * CD, g.C, ds.data() + p0 * nb, L, cols.data() + off * nb, ldc,
                  false, k.brgemm);
          });
          if (dm != nullptr) std::fill(dmv.begin(), dmv.end(), 0.0);
          taps_scatter(g, win, cols.data(), xs.data(), ms, nb, dx != nullptr ? dxs.data() : nullptr,
                       dm != nullptr ? dmv.data() : nullptr);
          if (dm != nullptr)
            for (int64_t q = 0; q < nb; ++q) dm[(n0 + q) * g.T + t] += dmv[q];
        }
      }
      if (dx != nullptr) transpose<T>(g.D * HW, nb, dxs.data(), nb, dx + n0 * g.D * HW, g.D * HW);
      if (done != nullptr) (*done)(n0, nb);
    }
  });
  if (db != nullptr) sum_workers(bacc, nworkers, g.C, db);
  if (gw != nullptr) sum_tap_major(acc.data(), nworkers, g.C, g.D, g.T, gw);
}

// Measured one thread, batch 128 and 32, ratios of the minima to F.conv2d (python
// bench/ab_methods.py, bench/results/cpu_methods_ab_b{128,32}_2026-12-03.md; the shift/im2col A/B
// of 2026-12-02 in cpu_shift_ab_b*_2026-12-02.md):
// - shift beats im2col for stride-1 planes of 7x7 and more with C * D <= 64 * 64 (16>16@28, batch
//   128: forward 0.81x against 0.90x, fwd+bwd 0.83x against 1.09x) while a sample's output
//   (C x H x (W+1)) stays within a 512 KiB L2: at 64>64@56 it streams from memory nine times
//   (1.43x against 0.96x forward); slower with 128 channels (128>128@8: 1.49x against 1.05x) and
//   for a 3-channel input;
// - taps beats both on output planes up to 8x8 with 8+ input channels and 8+ samples per block
//   (128>128@4, batch 128: forward 0.73x against im2col's 1.20x, fwd+bwd 0.72x against 1.26x;
//   64>128@7/2: 0.74x against 1.24x; 64>64@7, batch 32, blocks of 8 samples: 0.98x against
//   shift's 1.16x, fwd+bwd 1.02x against 1.24x) and is far slower on large planes (a block there
//   holds 1-2 samples: 4.3x at 16>16@28).
// - direct (bench/results/cpu_methods_ab_b{32,128}_2026-12-04.md: AMD EPYC with AVX-512;
//   cpu_methods_ab_b32_avx2_2026-12-04.md: the same machine with oneDNN, MKL and the direct
//   kernel capped at AVX2) beats shift and im2col on the shift method's planes above 8x8 up to
//   128 x 128 channels, forward and fwd+bwd, on both ISAs (AVX-512, batch 32, forward: 16>16@28
//   0.83x against shift's 1.05x, 32>32@14 1.00x against 1.12x, 64>64@56 0.85x against im2col's
//   1.00x, 128>128@28 0.96x against shift's 1.08x; AVX2: 0.65x against 0.75x, 0.97x against
//   1.00x, 0.97x against 1.04x) and on stride 2 above 8x8 outputs (16>32@28/2: 0.96x against
//   im2col's 1.18x; 32>64@14/2, 7x7 out: 1.23x against taps' 0.86x); its backward (shift's) loses
//   to im2col's on a 3-channel input (fwd+bwd 0.75x against 0.71x), where its forward wins (0.73x
//   against 1.11x). Up to 256 x 256 channels with AVX-512 (Kernel::max_cd; since its tail kernel
//   and the phase split per plane, the layer, one thread, direct against im2col, median of paired
//   runs in one process, batch 32: 256>256@14 forward 0.92, fwd+bwd 0.93; 256>256@16 0.91 and
//   0.93; 128>256@14 0.88; stride 2 128>256@32/2 0.81, 256>256@28/2 0.92; batch 128 256>256@14
//   0.85), where 512 x 512 loses (its panel, 9 MiB a sample: 512>512@14 batch 8 1.12 and 1.21,
//   512>512@28/2 1.20); 128 x 128 with AVX2 (oneDNN, MKL and the kernel capped at AVX2: 256>256@14
//   forward 1.08, 256>256@28/2 1.15).
// - the direct method's rows tile (rows_path, AVX-512, 32+ output channels) also beats taps in the
//   forward on planes of 8x8 up to 128 x 128 channels and 7x7 up to 64 x 128
//   (bench/results/cpu_ab_rows_2026-12-07.md, one thread, batch 32, against taps: 32>32@8 0.98x
//   against 1.30x, 128>128@8 1.06x against 1.14x, 64>64@7 1.10x against 1.14x, 32>64@16/2 1.05x
//   against 1.15x, 32>64@14/2 0.91x against 1.00x), not with more channels or smaller planes
//   (128>128@7 1.19x against 1.09x, 256>256@7 1.17x against 1.08x, 64>64@4 1.39x against 1.09x):
//   there a sample's scaled panel is written for few positions, where taps shares one per block.
Method choose_method(const Geom& g, const Knobs& k, size_t elem, bool backward) {
  const bool direct_ok = (shift_taps(g) || (!backward && direct_stride2(g))) && elem == sizeof(float) &&
                         k.direct != nullptr;
  if (k.method == Method::kDirect && direct_ok) return Method::kDirect;
  if (k.method == Method::kShift && shift_taps(g)) return Method::kShift;
  if (k.method == Method::kTaps && taps_apply(g)) return Method::kTaps;
  if (k.method != Method::kAuto) return Method::kIm2col;
  if (!backward && direct_ok && rows_path(g, *k.direct, g.C) &&
      ((g.P >= 64 && g.C * g.D <= 128 * 128) || (g.P >= 49 && g.C * g.D <= 64 * 128)))
    return Method::kDirect;
  if (taps_apply(g) && g.P <= 64 && g.D >= 8 && taps_block(g, elem, k) >= 8) return Method::kTaps;
  if (direct_ok && g.C * g.D <= k.direct->max_cd && (!backward || g.D >= 8)) return Method::kDirect;
  if (shift_taps(g) && g.D >= 8 && g.C * g.D <= 64 * 64 && g.H >= 7 && g.W >= 7 &&
      g.C * g.H * (g.W + 1) <= 128 * 1024)
    return Method::kShift;
  return Method::kIm2col;
}

template <typename T>
void forward_impl(const Geom& g, const T* x, const T* w, const T* m, const T* bias, T* y) {
  const Knobs k = read_knobs(false);
  if (g.N > 0) {
    const Method method = choose_method(g, k, sizeof(T), false);
    if (method == Method::kShift) return forward_shift<T>(g, k, x, w, m, bias, y);
    if constexpr (std::is_same_v<T, float>)
      if (method == Method::kDirect) return forward_direct(g, *k.direct, x, w, m, bias, y);
    if (method == Method::kTaps) return forward_taps<T>(g, k, x, w, m, bias, y);
  }
  const Blocking blk = choose_blocking(g, sizeof(T), k);
  if (blk.nchunks == 0) return;
  run_chunks(blk.nchunks, num_workers(blk.nchunks), /*dynamic=*/true, [&](int64_t, auto& next) {
    const int64_t Lmax = blk.nb * blk.rows * g.OW;
    Buf<T> cols(blk.dblk * g.T * Lmax);
    Buf<T> ybuf(blk.nb > 1 ? g.Cg * Lmax : 0);
    for (int64_t ch = next(); ch >= 0; ch = next()) {
      const int64_t n0 = ch * blk.nb;
      const int64_t nb = std::min(blk.nb, g.N - n0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const T* wg = w + grp * g.Cg * g.K;
        for (int64_t oh0 = 0; oh0 < g.OH; oh0 += blk.rows) {
          const int64_t oh1 = std::min(g.OH, oh0 + blk.rows);
          const int64_t L = nb * (oh1 - oh0) * g.OW;
          T* out;
          int64_t ldo;
          if (nb == 1) {
            out = y + (n0 * g.C + grp * g.Cg) * g.P + oh0 * g.OW;
            ldo = g.P;
          } else {
            out = ybuf.data();
            ldo = L;
          }
          for (int64_t d0 = 0; d0 < g.Dg; d0 += blk.dblk) {
            const int64_t d1 = std::min(g.Dg, d0 + blk.dblk);
            im2col_block<T>(g, x, m, grp, n0, nb, oh0, oh1, d0, d1, cols.data());
            mm<T>(g.Cg, L, (d1 - d0) * g.T, wg + d0 * g.T, g.K, cols.data(), L, out, ldo, d0 > 0, blk.brgemm);
          }
          if (nb == 1) {
            if (bias != nullptr) {
              for (int64_t c = 0; c < g.Cg; ++c) {
                const T bv = bias[grp * g.Cg + c];
                T* o = out + c * g.P;
                for (int64_t q = 0; q < L; ++q) o[q] += bv;
              }
            }
          } else {
            for (int64_t c = 0; c < g.Cg; ++c) {
              const T bv = bias != nullptr ? bias[grp * g.Cg + c] : T(0);
              for (int64_t s = 0; s < nb; ++s) {
                const T* src = ybuf.data() + c * L + s * g.P;
                T* dst = y + ((n0 + s) * g.C + grp * g.Cg + c) * g.P;
                for (int64_t q = 0; q < g.P; ++q) dst[q] = src[q] + bv;
              }
            }
          }
        }
      }
    }
  });
}

// dx (conv route), grad_weight, dm and grad_bias (db, C doubles); a null pointer is not computed.
template <typename T>
void backward_impl(const Geom& g, const T* dy, const T* x, const T* w, const T* m, T* dx,
                   T* gw, double* dm, double* db = nullptr, const ChunkDone* done = nullptr) {
  const bool need_gw = gw != nullptr;
  const bool need_cols_bwd = dx != nullptr || dm != nullptr;
  const int64_t CK = g.C * g.K;
  if (g.N == 0 || !(need_gw || need_cols_bwd)) {
    if (need_gw) std::fill(gw, gw + CK, T(0));
    if (db != nullptr) {  // nothing else needs the loop over dy: sum it alone
      std::fill(db, db + g.C, 0.0);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c) db[c] += sum_row(dy + (n * g.C + c) * g.P, g.P);
    }
    return;
  }
  const Knobs k = read_knobs(true);
  const Method method = choose_method(g, k, sizeof(T), true);
  if (method == Method::kShift || method == Method::kDirect)
    return backward_shift<T>(g, k, dy, x, w, m, dx, gw, dm, db, done,
                             method == Method::kDirect ? k.direct : nullptr);
  if (method == Method::kTaps) return backward_taps<T>(g, k, dy, x, w, m, dx, gw, dm, db, done);
  const Blocking blk = choose_blocking(g, sizeof(T), k);
  const int64_t nthreads = num_workers(blk.nchunks);  // workers, each with its own accumulator
  // per-thread grad_weight accumulators, transposed per group: accT[grp] is (K x Cg)
  Buf<T> acc(need_gw ? nthreads * CK : 0);
  // per-thread grad_bias accumulators (double), summed in worker order at the end
  std::vector<double> bacc(db != nullptr ? static_cast<size_t>(nthreads * g.C) : 0, 0.0);
  std::vector<char> inited(static_cast<size_t>(nthreads * g.groups), 0);
  // W_g^T (K x Cg) per group, for dcols = W_g^T @ dy
  Buf<T> wT(need_cols_bwd ? CK : 0);
  if (need_cols_bwd) {
    const int64_t rb = 32, nrb = (g.Cg + rb - 1) / rb;
    at::parallel_for(0, g.groups * nrb, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t grp = i / nrb, r0 = (i % nrb) * rb, r1 = std::min(g.Cg, r0 + rb);
        transpose<T>(r1 - r0, g.K, w + (grp * g.Cg + r0) * g.K, g.K,
                     wT.data() + grp * g.Cg * g.K + r0, g.Cg);
      }
    });
  }

  // grad_weight and grad_bias are accumulated per worker: keep the chunk -> worker map fixed
  // (deterministic)
  run_chunks(blk.nchunks, nthreads, /*dynamic=*/!need_gw && db == nullptr, [&](int64_t tid, auto& next) {
    const int64_t Lmax = blk.nb * blk.rows * g.OW;
    Buf<T> cols(blk.dblk * g.T * Lmax);
    Buf<T> dybuf(blk.nb > 1 ? g.Cg * Lmax : 0);
    Buf<T> dyT(need_gw ? g.Cg * Lmax : 0);
    T* myacc = need_gw ? acc.data() + tid * CK : nullptr;
    for (int64_t ch = next(); ch >= 0; ch = next()) {
      const int64_t n0 = ch * blk.nb;
      const int64_t nb = std::min(blk.nb, g.N - n0);
      if (dx != nullptr)
        std::memset(dx + n0 * g.D * g.H * g.W, 0, sizeof(T) * nb * g.D * g.H * g.W);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        for (int64_t oh0 = 0; oh0 < g.OH; oh0 += blk.rows) {
          const int64_t oh1 = std::min(g.OH, oh0 + blk.rows);
          const int64_t L = nb * (oh1 - oh0) * g.OW;
          const T* dyp;
          int64_t lddy;
          if (nb == 1) {
            dyp = dy + (n0 * g.C + grp * g.Cg) * g.P + oh0 * g.OW;
            lddy = g.P;
          } else {
            for (int64_t c = 0; c < g.Cg; ++c)
              for (int64_t s = 0; s < nb; ++s)
                std::memcpy(dybuf.data() + c * L + s * g.P,
                            dy + ((n0 + s) * g.C + grp * g.Cg + c) * g.P, sizeof(T) * g.P);
            dyp = dybuf.data();
            lddy = L;
          }
          char& ini = inited[tid * g.groups + grp];
          if (db != nullptr) {
            double* bp = bacc.data() + tid * g.C + grp * g.Cg;
            for (int64_t c = 0; c < g.Cg; ++c) bp[c] += sum_row(dyp + c * lddy, L);
          }
          if (need_gw) transpose<T>(g.Cg, L, dyp, lddy, dyT.data(), g.Cg);
          for (int64_t d0 = 0; d0 < g.Dg; d0 += blk.dblk) {
            const int64_t d1 = std::min(g.Dg, d0 + blk.dblk);
            const int64_t kr = (d1 - d0) * g.T;
            if (need_gw) {
              // G_g^T rows of this block (kr x Cg) += cols_scaled (kr x L) @ dy^T (L x Cg)
              im2col_block<T>(g, x, m, grp, n0, nb, oh0, oh1, d0, d1, cols.data());
              mm<T>(kr, g.Cg, L, cols.data(), L, dyT.data(), g.Cg,
                    myacc + grp * g.Cg * g.K + d0 * g.T * g.Cg, g.Cg, ini != 0, blk.brgemm);
            }
            if (need_cols_bwd) {
              // dcols (kr x L) = W_g^T rows of this block (kr x Cg) @ dy (Cg x L)
              mm<T>(kr, L, g.Cg, wT.data() + grp * g.Cg * g.K + d0 * g.T * g.Cg, g.Cg, dyp, lddy,
                    cols.data(), L, false, blk.brgemm);
              col2im_block<T>(g, cols.data(), x, m, dx, dm, grp, n0, nb, oh0, oh1, d0, d1);
            }
          }
          ini = 1;
        }
      }
      if (done != nullptr) (*done)(n0, nb);
    }
  });
  if (db != nullptr) sum_workers(bacc, nthreads, g.C, db);

  if (need_gw) {
    // gw[grp*Cg + c, k] = sum over threads of accT[grp][k, c]
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      std::vector<const T*> srcs;
      for (int64_t tdx = 0; tdx < nthreads; ++tdx)
        if (inited[tdx * g.groups + grp]) srcs.push_back(acc.data() + tdx * CK + grp * g.Cg * g.K);
      transpose_sum<T>(g.Cg, g.K, srcs, gw + grp * g.Cg * g.K);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Argument checking and layout handling.
using shc::compute_type;

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "shc::", name, " must be a CPU tensor for the CPU kernel, got ",
              t.device());
}

Geom make_geom(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
               int64_t groups, const char* op) {
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  check_cpu(m, "m");
  const Geom g = shc::conv_geometry(x, weight, m, stride, padding, dilation, groups, op);
  TORCH_CHECK(g.K < INT_MAX && g.C < INT_MAX && g.P * std::max<int64_t>(1, g.N) < INT_MAX, op,
              ": problem too large for the CPU kernel");
  return g;
}

// Write `src` (NCHW-contiguous, compute dtype) into a fresh tensor of `like`'s dtype laid out in
// `fmt`; returns src itself when that already is the requested dtype and layout.
at::Tensor finish(const at::Tensor& src, at::ScalarType dtype, at::MemoryFormat fmt) {
  // Only the plain NCHW case is returned as is: for channels_last the strides must be exactly
  // those of at::empty(..., memory_format=ChannelsLast) (H = W = 1 is contiguous both ways).
  if (src.scalar_type() == dtype && fmt == at::MemoryFormat::Contiguous) return src;
  at::Tensor out = at::empty(src.sizes(), src.options().dtype(dtype).memory_format(fmt));
  out.copy_(src);
  return out;
}

// One plane of the statistics' backward (the hypernetwork route of dx):
//   o (+)= grad_mu / HW + grad_sigma * (x - mu) / (HW * sigma)
// the coefficients in double, the plane in T. shc::channel_stats_backward and
// shc::shc_conv2d_backward both go through it.
template <typename T>
SHC_MULTIVERSION void stats_backward_plane(T* o, const T* x, int64_t HW, double grad_mu, double grad_sigma, double mu,
                          double sigma, bool accumulate) {
  const double n = static_cast<double>(HW);
  const T a = static_cast<T>(grad_sigma / (n * sigma)), c = static_cast<T>(grad_mu / n);
  const T m = static_cast<T>(mu);
  if (accumulate) {
#pragma omp simd
    for (int64_t q = 0; q < HW; ++q) o[q] += c + a * (x[q] - m);
  } else {
#pragma omp simd
    for (int64_t q = 0; q < HW; ++q) o[q] = c + a * (x[q] - m);
  }
}

void check_grad_y(const at::Tensor& grad_y, const Geom& g, const char* op) {
  check_cpu(grad_y, "grad_y");
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == g.N && grad_y.size(1) == g.C &&
                  grad_y.size(2) == g.OH && grad_y.size(3) == g.OW,
              op, ": grad_y must have shape (", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW, "), got ",
              grad_y.sizes());
  TORCH_CHECK(at::isFloatingType(grad_y.scalar_type()), op, ": grad_y must be floating point");
}

// The conv's bias checked and in the compute type (undefined when there is none).
at::Tensor conv_bias(const std::optional<at::Tensor>& bias, const Geom& g, at::ScalarType ct, const char* op) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_cpu(*bias, "bias");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.C, op, ": bias must have shape (", g.C, "), got ",
              bias->sizes());
  TORCH_CHECK(at::isFloatingType(bias->scalar_type()), op, ": bias must be floating point");
  return bias->to(ct).contiguous();
}

// ---------------------------------------------------------------------------------------
at::Tensor modulated_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, "shc::modulated_conv2d");
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  const at::Tensor b = conv_bias(bias, g, ct, "shc::modulated_conv2d");
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().dtype(ct));
  if (g.N == 0) return finish(y, x.scalar_type(), fmt);
  at::Tensor xc = x.to(ct).contiguous();
  at::Tensor wc = weight.to(ct).contiguous();
  at::Tensor mc = m.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_modulated_conv2d_cpu", [&] {
    forward_impl<scalar_t>(g, xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
                           mc.const_data_ptr<scalar_t>(),
                           b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                           y.mutable_data_ptr<scalar_t>());
  });
  return finish(y, x.scalar_type(), fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const char* op = "shc::modulated_conv2d_backward";
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  check_grad_y(grad_y, g, op);
  const at::ScalarType ct = compute_type(x.scalar_type());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  const bool need_dx = output_mask[0], need_gw = output_mask[1], need_dm = output_mask[2];

  at::Tensor dx_c, gw_c, dm_c;
  if (need_dx) dx_c = at::empty({g.N, g.D, g.H, g.W}, x.options().dtype(ct));
  if (need_gw) gw_c = at::empty(weight.sizes(), weight.options().dtype(ct));
  if (need_dm) dm_c = at::zeros({g.N, g.kh, g.kw}, m.options().dtype(at::kDouble));

  if (need_dx || need_gw || need_dm) {
    at::Tensor xc = x.to(ct).contiguous();
    at::Tensor wc = weight.to(ct).contiguous();
    at::Tensor mc = m.to(ct).contiguous();
    at::Tensor dyc = grad_y.to(ct).contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_modulated_conv2d_backward_cpu", [&] {
      backward_impl<scalar_t>(g, dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                              wc.const_data_ptr<scalar_t>(), mc.const_data_ptr<scalar_t>(),
                              need_dx ? dx_c.mutable_data_ptr<scalar_t>() : nullptr,
                              need_gw ? gw_c.mutable_data_ptr<scalar_t>() : nullptr,
                              need_dm ? dm_c.mutable_data_ptr<double>() : nullptr);
    });
  }
  at::Tensor dx = need_dx ? finish(dx_c, x.scalar_type(), fmt) : at::empty({0}, x.options());
  at::Tensor gw = need_gw ? finish(gw_c, weight.scalar_type(), at::MemoryFormat::Contiguous)
                          : at::empty({0}, weight.options());
  at::Tensor dm = need_dm ? dm_c.to(m.scalar_type()) : at::empty({0}, m.options());
  return std::make_tuple(dx, gw, dm);
}

// ---------------------------------------------------------------------------------------
// Mean and population variance of one plane from the sums of x - k and its square, k = x[0]:
// var = s2/n - m1^2 with m1 = s1/n. That loses a factor 1 + m1^2/var of the sums' precision, so
// when m1^2 > 16 var (x[0] far from the mean: shift_far) the plane is summed again with k its mean
// (then m1 is only k's rounding error: the corrected two-pass formula). fp64 planes sum in
// double. fp32 planes sum in float over blocks of 512 elements in 32 lanes (each lane adds 16
// values, then the lanes pairwise), the blocks' sums in double: converting every element to
// double kept the pass at ~6 G elements/s (~65 us for a 32 x 16 x 28x28 input, which x.sum()
// reads at 26); two passes on every plane cost +45% on small planes. The order is fixed
// (deterministic); the AVX2 copies below add in another fixed order. On x86-64 the portable copy
// is also compiled for AVX2 (the rest of the build targets x86-64-v2).
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
// the lanes added in registers. The portable copy's lane arrays went through the stack (store
// forwarding stalls): shc::channel_stats of 32 x 16 x 28x28, one thread, took 49 us with it and
// 30 us with this (65 us when every element was converted to double).
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

// Planes from this size on go one at a time, in blocks of 512. shc::channel_stats, one thread,
// four planes at a time against one: 32 x 32 x 14x14 23 -> 20 us, 128 x 32 x 14x14 78 -> 64 us;
// 28x28 no different; 56x56 459 -> 737 us (four streams a plane apart).
constexpr int64_t kMoments4Max = 512;

// Four consecutive planes of n < kMoments4Max (small planes: one plane at a time paid ~10 ns for
// its horizontal sums and scalar tail, 190 us for the 16384 planes of 128 x 128 x 7x7; and ~28 ns a
// plane of 14x14, 29 us for 32 x 32 x 14x14): each plane's sums in one vector, the four planes'
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

// mu and sigma of plane p = n*D + d go to mu[n*ld + d] and sigma[n*ld + d] (ld = D for separate
// (N, D) outputs; ld = 2D with sigma = mu + D writes z = cat(mu, sigma) in place).
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
      int64_t n = c0 / D, d = c0 % D;
      for (int64_t p = c0; p < c1; ++p) {
        mu[n * ld + d] = static_cast<T>(means[p - c0]);
        sigma[n * ld + d] = static_cast<T>(std::sqrt(vars[p - c0] + eps));
        if (++d == D) d = 0, ++n;
      }
    }
  });
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
// (the portable copy's lane arrays went through the stack: it took 3% of a 64>128@7/2 layer's
// forward, batch 128).
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

// sqrt of v >= 0 without std::sqrt's errno branch (a compare and a call path per lane)
inline double sqrt_nonneg(double v) {
#if defined(__x86_64__)
  return _mm_cvtsd_f64(_mm_sqrt_sd(_mm_setzero_pd(), _mm_set_sd(v)));
#else
  return std::sqrt(v);
#endif
}

// The statistics of a taps block from its transposed input xs[d][q][s] (nb samples in the lanes,
// in groups of 16, 8 and 1): mu and sigma of sample s, channel d go to z[s * 2D + d] and
// z[s * 2D + D + d].
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
        z[(s0 + j) * 2 * D + d] = static_cast<T>(mean[j]);
        z[(s0 + j) * 2 * D + D + d] = static_cast<T>(sqrt_nonneg(var[j] + eps));
      }
      s0 += w;
    }
  }
}

// The hypernetwork on nb rows of z (2D each): h = relu(z fc1^T + b1) (hid each), m = sigmoid(h
// fc2^T + b2) (T each); fc1t (2D x hid) and fc2t (hid x T) are the weights transposed, a null bias
// is zero.
template <typename T>
void hyper_rows(const T* z, int64_t nb, int64_t D2, int64_t hid, int64_t taps, const T* fc1t, const T* b1,
                const T* fc2t, const T* b2, bool brgemm, T* h, T* m) {
  const auto linear = [&](const T* in, int64_t K, int64_t n, const T* wt, const T* b, T* out) {
    if (b != nullptr)
      for (int64_t s = 0; s < nb; ++s) std::copy(b, b + n, out + s * n);
    mm<T>(nb, n, K, in, K, wt, n, out, n, b != nullptr, brgemm);
  };
  linear(z, D2, hid, fc1t, b1, h);
  for (int64_t i = 0; i < nb * hid; ++i) h[i] = std::max(h[i], T(0));
  linear(h, hid, taps, fc2t, b2, m);
  for (int64_t i = 0; i < nb * taps; ++i) m[i] = T(1) / (T(1) + std::exp(-m[i]));
}

// The hypernetwork's parameters for hyper_rows, in the compute type: the weights transposed, the
// biases undefined where absent.
struct HyperParams {
  at::Tensor fc1t, b1, fc2t, b2;
  HyperParams(const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
              const std::optional<at::Tensor>& fc2_bias, at::ScalarType ct) {
    const auto opt = [ct](const std::optional<at::Tensor>& t) {
      return t.has_value() && t->defined() ? t->to(ct).contiguous() : at::Tensor();
    };
    fc1t = fc1_weight.to(ct).t().contiguous(), fc2t = fc2_weight.to(ct).t().contiguous();
    b1 = opt(fc1_bias), b2 = opt(fc2_bias);
  }
  // rows [n0, n0 + nb) of h and m from those of z
  template <typename S>
  void rows(const at::Tensor& z, int64_t n0, int64_t nb, bool brgemm, at::Tensor& h, at::Tensor& m) const {
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<S>() : nullptr; };
    const int64_t D2 = z.size(1), hid = h.size(1), taps = m.numel() / std::max<int64_t>(1, m.size(0));
    hyper_rows<S>(z.const_data_ptr<S>() + n0 * D2, nb, D2, hid, taps, ptr(fc1t), ptr(b1), ptr(fc2t), ptr(b2), brgemm,
                  h.mutable_data_ptr<S>() + n0 * hid, m.mutable_data_ptr<S>() + n0 * taps);
  }
};

// shc::shc_conv2d's forward where the conv takes the taps method: each block's statistics and map
// are computed inside the conv's loop, from the transposed block it gathers from, so x is read
// from memory once, not twice (a stride-2 layer into a 4x4-8x8 plane reads four input values per
// output position, and the separate statistics pass was 5-9% of such a layer's forward; fused,
// 64>128@7/2, batch 128, 2-3% faster). shc_conv2d_direct does the same for the direct method.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_taps(
    const Geom& g, const Knobs& k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& b,
    const HyperParams& hp, int64_t hid, double eps, at::ScalarType ct) {
  const at::TensorOptions o = x.options().dtype(ct);
  at::Tensor z = at::empty({g.N, 2 * g.D}, o), h = at::empty({g.N, hid}, o), m = at::empty({g.N, g.kh, g.kw}, o);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, o);
  const at::Tensor xc = x.to(ct).contiguous(), wc = weight.to(ct).contiguous();
  AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_cpu_taps", [&] {
    using S = scalar_t;
    S *zp = z.mutable_data_ptr<S>(), *mp = m.mutable_data_ptr<S>();
    const BlockMap<S> block_map = [&](const S* xs, int64_t n0, int64_t nb, S* mt) {
      lane_stats<S>(xs, g.D, g.H * g.W, nb, eps, zp + n0 * 2 * g.D);
      hp.rows<S>(z, n0, nb, k.brgemm, h, m);
      taps_map(g, mp, n0, nb, mt);
    };
    forward_taps<S>(g, k, xc.const_data_ptr<S>(), wc.const_data_ptr<S>(), nullptr,
                    b.defined() ? b.const_data_ptr<S>() : nullptr, y.mutable_data_ptr<S>(), &block_map);
  });
  return std::make_tuple(finish(y, x.scalar_type(), x.suggest_memory_format()), m, z, h);
}

// shc::shc_conv2d's forward where the conv takes the direct method (fp32): as shc_conv2d_taps, the
// statistics and map per block of samples inside the conv's loop (forward_direct's block_map),
// so x is read from memory once. Measured against the separate pass in one process, alternating
// (one thread, the op's forward; median of the paired ratios over 41 pairs): batch 128,
// 16>32@28/2 0.92-0.96, 32>32@14 0.98-0.99, 16>16@28 0.98, fwd+bwd 16>32@28/2 0.98; batch 32,
// where x stays in cache: 16>32@28/2 and 32>32@14 1.00-1.01, 64>64@14 and 128>128@14 0.99.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_direct(const Geom& g, const Knobs& k,
                                                                             const at::Tensor& x,
                                                                             const at::Tensor& weight,
                                                                             const at::Tensor& b,
                                                                             const HyperParams& hp, int64_t hid,
                                                                             double eps) {
  const at::TensorOptions o = x.options().dtype(at::kFloat);
  at::Tensor z = at::empty({g.N, 2 * g.D}, o), h = at::empty({g.N, hid}, o), m = at::empty({g.N, g.kh, g.kw}, o);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, o);
  const at::Tensor xc = x.to(at::kFloat).contiguous(), wc = weight.to(at::kFloat).contiguous();
  const float* xp = xc.const_data_ptr<float>();
  float* zp = z.mutable_data_ptr<float>();
  const int64_t D = g.D, HW = g.H * g.W;
  const SampleBlockMap block_map = [&](int64_t n0, int64_t nb) {
    float* zb = zp + n0 * 2 * D;  // z = cat(mu, sigma) of the block's samples
    stats_impl<float>(xp + n0 * D * HW, nb * D, D, HW, eps, zb, zb + D, 2 * D);
    hp.rows<float>(z, n0, nb, k.brgemm, h, m);
  };
  forward_direct(g, *k.direct, xp, wc.const_data_ptr<float>(), m.const_data_ptr<float>(),
                 b.defined() ? b.const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(), &block_map);
  return std::make_tuple(finish(y, x.scalar_type(), x.suggest_memory_format()), m, z, h);
}

// The whole layer (shc::shc_conv2d): statistics, the hypernetwork (hyper_rows), then the modulated
// conv; inside the conv's loop where it takes the taps method (shc_conv2d_taps) or the direct one
// (shc_conv2d_direct). Also returns m,
// z = cat(mu, sigma) and h for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
    const std::optional<at::Tensor>& fc2_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, c10::string_view grad_route) {
  const char* op = "shc::shc_conv2d";
  shc::check_grad_route(grad_route, op);
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, op, ": x and weight must be 4-D, got ", x.sizes(), " and ",
              weight.sizes());
  const std::pair<const at::Tensor*, const char*> dense[] = {
      {&x, "x"}, {&weight, "weight"}, {&fc1_weight, "fc1_weight"}, {&fc2_weight, "fc2_weight"}};
  for (const auto& [t, name] : dense) check_cpu(*t, name);
  const std::pair<const std::optional<at::Tensor>*, const char*> optional[] = {
      {&bias, "bias"}, {&fc1_bias, "fc1_bias"}, {&fc2_bias, "fc2_bias"}};
  for (const auto& [t, name] : optional)
    if (t->has_value() && (*t)->defined()) check_cpu(**t, name);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  // Geometry first (a map of the right shape stands in for m), so a bad conv fails before any work.
  const Geom g =
      make_geom(x, weight, at::empty({x.size(0), kh, kw}, x.options()), stride, padding, dilation, groups, op);
  const int64_t hid = shc::hypernetwork_hidden(x.size(1), kh * kw, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op);
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": x must have a non-empty H x W plane, got ", x.sizes());
  const at::ScalarType ct = compute_type(x.scalar_type());
  const Knobs k = read_knobs(false);
  const HyperParams hp(fc1_weight, fc1_bias, fc2_weight, fc2_bias, ct);
  const Method method = g.N > 0 ? choose_method(g, k, at::elementSize(ct), false) : Method::kIm2col;
  if (method == Method::kTaps) return shc_conv2d_taps(g, k, x, weight, conv_bias(bias, g, ct, op), hp, hid, eps, ct);
  if (method == Method::kDirect && ct == at::kFloat)
    return shc_conv2d_direct(g, k, x, weight, conv_bias(bias, g, ct, op), hp, hid, eps);
  const int64_t N = x.size(0), D = x.size(1), HW = x.size(2) * x.size(3);
  const at::TensorOptions o = x.options().dtype(ct);
  // z = cat(mu, sigma), h = relu(z fc1^T + b1), m = sigmoid(h fc2^T + b2), written in place
  at::Tensor z = at::empty({N, 2 * D}, o), h = at::empty({N, hid}, o), m = at::empty({N, kh, kw}, o);
  if (N > 0) {
    const at::Tensor xc = x.to(ct).contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_cpu_stats", [&] {
      scalar_t* zp = z.mutable_data_ptr<scalar_t>();
      if (D > 0) stats_impl<scalar_t>(xc.const_data_ptr<scalar_t>(), N * D, D, HW, eps, zp, zp + D, 2 * D);
      hp.rows<scalar_t>(z, 0, N, k.brgemm, h, m);
    });
  }
  at::Tensor y = modulated_conv2d_cpu(x, weight, m, bias, stride, padding, dilation, groups);
  return std::make_tuple(y, m, z, h);
}

// shc::shc_conv2d's whole backward in one call (DESIGN.md §3): the conv's dx (conv route),
// grad_weight, grad_bias and dm in one pass over the chunks; as each chunk of samples completes,
// on its worker thread, the hypernetwork backward for those samples (sigmoid, fc2, relu, fc1,
// in double) and the hypernetwork route of dx,
//   dx[n,d,q] (+)= dmu[n,d]/HW + dsigma[n,d] * (x[n,d,q] - mu[n,d]) / (HW * sigma[n,d]),
// applied while that dx is still in cache; then the hypernetwork's parameter gradients. Masked-off
// outputs come back empty. Only for first-order backward: the Python side composes the
// differentiable ops when a graph of the backward is wanted.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
shc_conv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& m, const at::Tensor& z, const at::Tensor& h,
                        const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups, c10::string_view grad_route, std::array<bool, 7> output_mask) {
  const char* op = "shc::shc_conv2d_backward";
  shc::check_grad_route(grad_route, op);
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  check_grad_y(grad_y, g, op);
  for (const auto* t : {&z, &h, &fc1_weight, &fc2_weight}) check_cpu(*t, "z, h, fc1_weight and fc2_weight");
  const int64_t K = shc::hypernetwork_hidden(g.D, g.T, fc1_weight, std::nullopt, fc2_weight, std::nullopt, op);
  TORCH_CHECK(z.dim() == 2 && z.size(0) == g.N && z.size(1) == 2 * g.D && at::isFloatingType(z.scalar_type()),
              op, ": z must be floating point of shape (", g.N, ", ", 2 * g.D, "), got ", z.sizes());
  TORCH_CHECK(h.dim() == 2 && h.size(0) == g.N && h.size(1) == K && at::isFloatingType(h.scalar_type()), op,
              ": h must be floating point of shape (", g.N, ", ", K, "), got ", h.sizes());
  const auto [need_x, need_w, need_b, need_f1w, need_f1b, need_f2w, need_f2b] = output_mask;
  const bool conv_x = need_x && grad_route != "hyper";
  const bool hyper_x = need_x && grad_route != "conv";
  const bool need_map = hyper_x || need_f1w || need_f1b || need_f2w || need_f2b;
  const at::ScalarType ct = compute_type(x.scalar_type());
  const auto dbl = at::TensorOptions().dtype(at::kDouble);

  at::Tensor dx_c, gw_c;
  if (need_x) dx_c = at::empty({g.N, g.D, g.H, g.W}, x.options().dtype(ct));
  if (need_w) gw_c = at::empty(weight.sizes(), weight.options().dtype(ct));
  at::Tensor db = need_b ? at::empty({g.C}, dbl) : at::Tensor();
  at::Tensor dm = need_map ? at::zeros({g.N, g.T}, dbl) : at::Tensor();
  // Per sample, after the sigmoid (gl) and after the relu (gpre): the fc gradients' left factors.
  at::Tensor gl = need_map ? at::empty({g.N, g.T}, dbl) : at::Tensor();
  at::Tensor gpre = need_map ? at::empty({g.N, K}, dbl) : at::Tensor();
  // The hypernetwork's backward runs in double (the statistics' dtype is float32 or float64).
  const at::Tensor zd = z.to(at::kDouble).contiguous(), hd = h.to(at::kDouble).contiguous();
  {
    const at::Tensor xc = x.to(ct).contiguous(), wc = weight.to(ct).contiguous();
    const at::Tensor mc = m.to(ct).contiguous(), dyc = grad_y.to(ct).contiguous();
    const at::Tensor md = m.to(at::kDouble).contiguous();
    const at::Tensor f1d = fc1_weight.to(at::kDouble).contiguous(), f2d = fc2_weight.to(at::kDouble).contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_conv2d_backward_cpu", [&] {
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      scalar_t* dxp = need_x ? dx_c.mutable_data_ptr<scalar_t>() : nullptr;
      const int64_t HW = g.H * g.W, D = g.D, T = g.T;
      // The hypernetwork backward of samples [n0, n0 + nb) and their dx's hypernetwork route.
      const ChunkDone finish_samples = [&](int64_t n0, int64_t nb) {
        for (int64_t n = n0; n < n0 + nb; ++n) {
          const double* mv = md.const_data_ptr<double>() + n * T;
          double* gln = gl.mutable_data_ptr<double>() + n * T;
          const double* dmn = dm.const_data_ptr<double>() + n * T;
          for (int64_t t = 0; t < T; ++t) gln[t] = dmn[t] * mv[t] * (1.0 - mv[t]);
          double* gp = gpre.mutable_data_ptr<double>() + n * K;
          const double* hn = hd.const_data_ptr<double>() + n * K;
          const double* f2 = f2d.const_data_ptr<double>();
          for (int64_t k = 0; k < K; ++k) gp[k] = 0.0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t k = 0; k < K; ++k) gp[k] += gln[t] * f2[t * K + k];
          for (int64_t k = 0; k < K; ++k) gp[k] = hn[k] > 0.0 ? gp[k] : 0.0;
        }
        if (!hyper_x) return;
        // gz (nb x 2D) = gpre (nb x K) @ fc1_weight (K x 2D): one BLAS call for the chunk (a loop
        // per sample, compiled for x86-64-v2, cost ~0.2-0.3 ms more of a 512>512@4 layer's ~37 ms
        // fwd+bwd at batch 32)
        std::vector<double> gz(static_cast<size_t>(nb * 2 * D));
        mm<double>(nb, 2 * D, K, gpre.const_data_ptr<double>() + n0 * K, K, f1d.const_data_ptr<double>(), 2 * D,
                   gz.data(), 2 * D, false, false);
        for (int64_t n = n0; n < n0 + nb; ++n) {
          const double* gzn = gz.data() + (n - n0) * 2 * D;
          const double* zn = zd.const_data_ptr<double>() + n * 2 * D;
          for (int64_t d = 0; d < D; ++d)
            stats_backward_plane(dxp + (n * D + d) * HW, xp + (n * D + d) * HW, HW, gzn[d], gzn[D + d], zn[d],
                                 zn[D + d], conv_x);
        }
      };
      backward_impl<scalar_t>(g, dyc.const_data_ptr<scalar_t>(), xp, wc.const_data_ptr<scalar_t>(),
                              mc.const_data_ptr<scalar_t>(), conv_x ? dxp : nullptr,
                              need_w ? gw_c.mutable_data_ptr<scalar_t>() : nullptr,
                              need_map ? dm.mutable_data_ptr<double>() : nullptr,
                              need_b ? db.mutable_data_ptr<double>() : nullptr,
                              need_map ? &finish_samples : nullptr);
    });
  }
  const at::MemoryFormat fmt = x.suggest_memory_format();
  const auto empty = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  const auto as = [](const at::Tensor& grad, const at::Tensor& like) { return grad.to(like.scalar_type()); };
  at::Tensor gx = need_x ? finish(dx_c, x.scalar_type(), fmt) : empty(x);
  at::Tensor gw = need_w ? finish(gw_c, weight.scalar_type(), at::MemoryFormat::Contiguous) : empty(weight);
  at::Tensor gb = need_b ? as(db, weight) : empty(weight);
  at::Tensor gf2w = need_f2w ? as(gl.t().mm(hd), fc2_weight) : empty(fc2_weight);
  at::Tensor gf2b = need_f2b ? as(gl.sum(0), fc2_weight) : empty(fc2_weight);
  at::Tensor gf1w = need_f1w ? as(gpre.t().mm(zd), fc1_weight) : empty(fc1_weight);
  at::Tensor gf1b = need_f1b ? as(gpre.sum(0), fc1_weight) : empty(fc1_weight);
  return std::make_tuple(gx, gw, gb, gf1w, gf1b, gf2w, gf2b);
}

}  // namespace
}  // namespace shc_cpu

TORCH_LIBRARY_IMPL(shc, CPU, m) {
  m.impl("shc_conv2d", &shc_cpu::shc_conv2d_cpu);
  m.impl("channel_stats", &shc_cpu::channel_stats_cpu);
  m.impl("channel_stats_backward", &shc_cpu::channel_stats_backward_cpu);
  m.impl("modulated_conv2d", &shc_cpu::modulated_conv2d_cpu);
  m.impl("modulated_conv2d_backward", &shc_cpu::modulated_conv2d_backward_cpu);
  m.impl("shc_conv2d_backward", &shc_cpu::shc_conv2d_backward_cpu);
}
