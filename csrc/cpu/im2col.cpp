// The im2col method of the modulated conv (methods.h): any conv.
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
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_util.h"
#include "knobs.h"
#include "methods.h"

namespace shc_cpu {
namespace {

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
// im2col_flat, instead of a loop per output row.
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
// samples gave 512 columns), so such widths are avoided.
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
}  // namespace

template <typename T>
void forward_im2col(const Geom& g, const Knobs& k, const T* x, const T* w, const T* m, const T* bias, T* y) {
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

template <typename T>
void backward_im2col(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx, T* gw,
                     double* dm, double* db, const ChunkDone* done) {
  const bool need_gw = gw != nullptr;
  const bool need_cols_bwd = dx != nullptr || dm != nullptr;
  const int64_t CK = g.C * g.K;
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

template void forward_im2col<float>(const Geom&, const Knobs&, const float*, const float*, const float*, const float*,
                                    float*);
template void forward_im2col<double>(const Geom&, const Knobs&, const double*, const double*, const double*,
                                     const double*, double*);
template void backward_im2col<float>(const Geom&, const Knobs&, const float*, const float*, const float*,
                                     const float*, float*, float*, double*, double*, const ChunkDone*);
template void backward_im2col<double>(const Geom&, const Knobs&, const double*, const double*, const double*,
                                      const double*, double*, double*, double*, double*, const ChunkDone*);

}  // namespace shc_cpu
