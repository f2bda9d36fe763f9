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
// the plane's last vector and the rows past C (D) masked off (no copy out of a tiled buffer).
//
// Stride 2 (forward only): each padded input plane is split into its four phases (row parity a,
// column parity b), phase[a][b][i][j] = x_pad[2i + a][2j + b], i <= OH, j <= OW. Tap (ky, kx) of
// output (oh, ow) reads x_pad[2oh + ky][2ow + kx] = phase[ky % 2][kx % 2][oh + ky / 2][ow + kx / 2].
// The phases are stored at pitch OW: phase b = 1 (x column 2j) from j = 0, phase b = 0 (x column
// 2j - 1) from j = 1, whose j = 0 (the padding column) only the left taps read, at ow = 0, where
// they are masked. Output position oh * OW + ow plus a fixed offset per tap, the same kernel as
// stride 1 (im2col there builds 9 x D rows for every output position and runs a GEMM over them,
// slower than a plain conv).
// This header holds the method's layout and its per-sample convs, which the shift method's backward
// (shift.cpp) also runs for its dx; direct.cpp has the forward.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_util.h"
#include "direct_kernels.h"
#include "methods.h"

namespace shc_cpu {

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

void direct_panel(const PanelShape& ps, const float* w, int64_t D, bool transposed, float* wp);

inline PanelShape panel_shape(const DirectLayout& dl) { return {dl.kern.rows, dl.rows, dl.inner}; }

// One sample: out (rows planes of Pp positions, written in place) = bias + the padded `in`
// convolved with the panel scaled by its map m (9 values); bias holds rblocks * kern.rows values.
void direct_sample(const DirectLayout& dl, const float* wp, const float* m, bool transposed, const float* in,
                   float* panel, const float* bias, float* out);

// The direct method's convs with at least 32 rows (output channels forward, input channels for dx)
// take the rows tile (direct::RowsArgs), which skips the padded taps and reads its input unpadded
// and in place; fewer rows would leave most of its two row vectors empty (with 16 output
// channels the conv tile is faster). It beats the conv tile, forward and dx, on every plane the
// method takes (docs/cpu_methods.md).
inline bool rows_path(const Geom& g, const direct::Kernel& kern, int64_t nrows) {
  return kern.rows_conv != nullptr && (shift_taps(g) || direct_stride2(g)) && nrows >= direct::kRowsR;
}

// One sample by the rows tile: out (ps.rows planes of g.P positions) = bias + `in` (ps.inner planes
// of H x W) convolved with the panel wp scaled by m (flipped if transposed), one row block at a
// time: block rb's 9 * inner * 32 scaled values are written to `block`, which stays in L2 for the
// plane's tiles, where the whole scaled panel (2.3 MiB at 256 x 256 channels) would go to memory
// and back.
void rows_sample(const Geom& g, const direct::Kernel& kern, const PanelShape& ps, const float* wp, const float* m,
                 bool transposed, const float* in, float* block, const float* bias, float* out);

}  // namespace shc_cpu
