// The out-of-line helpers of cpu_util.h: the brgemm probe, the per-worker grad_bias sum and the
// weight's tap-major re-layouts that the shift and taps methods share.
#include "cpu_util.h"

#include <type_traits>
#include <vector>

#include "direct_kernels.h"

namespace shc_cpu {

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

namespace {

// The weight's re-layouts (taps_major, sum_tap_major) run on every thread where they move enough
// values: serial, they were the layer's serial part at 256 x 256 channels and more (2.4 MiB a
// layout), which two threads wait on. grain: the parallel_for grain for items of `per_item` values,
// so that a thread gets at least 32 Ki values.
inline int64_t relayout_grain(int64_t per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, per_item));
}

}  // namespace

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

// In blocks of 16 of the destination's innermost index, so that each write is a run of 16 (one
// element per write, strided by C * D, cost 512>512@4's backward at batch 32 as long as its GEMMs).
template <typename T>
void taps_major(const T* w, int64_t C, int64_t D, int64_t taps, bool transposed, T* wt,
                const direct::Kernel* kern) {
  constexpr int64_t kB = 16;
  // fp32, 9 taps, AVX-512: 16 runs at a time through registers (direct::taps9_avx512), not a
  // scalar copy (the re-layout runs on every call, and is a visible part of a small plane's
  // forward).
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

template void taps_major<float>(const float*, int64_t, int64_t, int64_t, bool, float*, const direct::Kernel*);
template void taps_major<double>(const double*, int64_t, int64_t, int64_t, bool, double*, const direct::Kernel*);
template void sum_tap_major<float>(const float*, int64_t, int64_t, int64_t, int64_t, float*);
template void sum_tap_major<double>(const double*, int64_t, int64_t, int64_t, int64_t, double*);

}  // namespace shc_cpu
