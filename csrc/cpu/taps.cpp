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
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu_util.h"
#include "knobs.h"
#include "methods.h"

namespace shc_cpu {
namespace {

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
// in double per element. Here dm
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
}  // namespace

// Samples per block: ~SHC_CPU_COLS GEMM columns (nb * P), within the per-thread workspace, and a
// block for every thread where the batch allows (the samples are the SIMD lanes of the gathers
// and scatters, so fewer, wider blocks beat more chunks per thread here), rounded down to a
// multiple of 8 lanes (a block of 10 leaves 2 lanes to the scalar tail).
int64_t taps_block(const Geom& g, size_t elem, const Knobs& k) {
  const int64_t per_sample = static_cast<int64_t>(elem) * (2 * g.D * g.H * g.W + 2 * g.D * g.P + 3 * g.C * g.P);
  // Below 16 samples the workspace may grow up to fourfold to reach 16: each block streams all nine
  // W_t, and at 512 channels (9 MiB of weights) blocks of 8 pay for that twice as often as blocks
  // of 16 (twofold left 512>512@8, 917 KiB a sample, at 8). A bigger budget everywhere was no
  // faster on the shapes that already had 16 or more.
  const int64_t fit = k.ws_bytes / std::max<int64_t>(1, per_sample);
  const int64_t cap = std::max<int64_t>(1, fit >= 16 ? fit : std::min<int64_t>(16, 4 * fit));
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t balance = std::max<int64_t>(1, (g.N + nthreads - 1) / nthreads);
  // Forwards on planes above 32 positions take twice the columns (7x7 and 8x8: 16 samples, not
  // 8), on planes of 9-32 positions half (4x4: 16 samples, not 32, so a block's GEMM operands stay
  // in L2; 2x2 planes, which keep the full columns, were slower with half). The backward keeps the
  // columns: with 16 samples, not 8, it was slower (with the kernels capped at AVX2).
  const int64_t cols = k.backward ? k.cols : g.P > 32 ? 2 * k.cols : g.P > 8 ? k.cols / 2 : k.cols;
  const int64_t nb = std::max<int64_t>(1, std::min({cols / std::max<int64_t>(1, g.P), cap, balance, g.N}));
  return nb >= 8 ? nb - nb % 8 : nb;
}

template <typename T>
void forward_taps(const Geom& g, const Knobs& k, const T* x, const T* w, const T* m, const T* bias, T* y,
                  const BlockMap<T>* block_map) {
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

template void forward_taps<float>(const Geom&, const Knobs&, const float*, const float*, const float*, const float*,
                                  float*, const BlockMap<float>*);
template void forward_taps<double>(const Geom&, const Knobs&, const double*, const double*, const double*,
                                   const double*, double*, const BlockMap<double>*);
template void backward_taps<float>(const Geom&, const Knobs&, const float*, const float*, const float*, const float*,
                                   float*, float*, double*, double*, const ChunkDone*);
template void backward_taps<double>(const Geom&, const Knobs&, const double*, const double*, const double*,
                                    const double*, double*, double*, double*, double*, const ChunkDone*);

}  // namespace shc_cpu
