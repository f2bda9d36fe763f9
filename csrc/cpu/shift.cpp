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
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu_util.h"
#include "direct.h"
#include "direct_kernels.h"
#include "knobs.h"
#include "methods.h"

namespace shc_cpu {
namespace {

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

}  // namespace

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

template <typename T>
void backward_shift(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx,
                    T* gw, double* dm, double* db, const ChunkDone* done, const direct::Kernel* direct_dx) {
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

template void forward_shift<float>(const Geom&, const Knobs&, const float*, const float*, const float*, const float*,
                                   float*);
template void forward_shift<double>(const Geom&, const Knobs&, const double*, const double*, const double*,
                                    const double*, double*);
template void backward_shift<float>(const Geom&, const Knobs&, const float*, const float*, const float*, const float*,
                                    float*, float*, double*, double*, const ChunkDone*, const direct::Kernel*);
template void backward_shift<double>(const Geom&, const Knobs&, const double*, const double*, const double*,
                                     const double*, double*, double*, double*, double*, const ChunkDone*,
                                     const direct::Kernel*);

}  // namespace shc_cpu
