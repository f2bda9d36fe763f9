// The "direct" method of the modulated conv (methods.h; its layout: direct.h; its micro-kernels:
// direct_kernels.h): the panels of scaled weights, one sample's conv by the position tile or the
// rows tile, and the forward.
#include "direct.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu_util.h"
#include "direct_kernels.h"
#include "methods.h"

namespace shc_cpu {

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

namespace {

// dst = row block rb of the unscaled panel wp with tap s scaled by the map m (9 values; flipped if
// transposed)
void scale_block(const PanelShape& ps, const float* wp, const float* m, bool transposed, int64_t rb, float* dst) {
  const int64_t size = ps.inner * ps.R;
  for (int64_t s = 0; s < 9; ++s) scale_copy(size, m[transposed ? 8 - s : s], wp + (rb * 9 + s) * size, dst + s * size);
}

void scale_panel(const PanelShape& ps, const float* wp, const float* m, bool transposed, float* panel) {
  for (int64_t rb = 0; rb < ps.rblocks(); ++rb) scale_block(ps, wp, m, transposed, rb, panel + rb * ps.block());
}

}  // namespace

void direct_sample(const DirectLayout& dl, const float* wp, const float* m, bool transposed, const float* in,
                   float* panel, const float* bias, float* out) {
  scale_panel(panel_shape(dl), wp, m, transposed, panel);
  dl.kern.conv({in, dl.plane, dl.inner, dl.off, dl.edge, panel, bias, dl.rows, dl.Pp, dl.band, out, dl.Pp});
}

void rows_sample(const Geom& g, const direct::Kernel& kern, const PanelShape& ps, const float* wp, const float* m,
                 bool transposed, const float* in, float* block, const float* bias, float* out) {
  for (int64_t rb = 0; rb < ps.rblocks(); ++rb) {
    scale_block(ps, wp, m, transposed, rb, block);
    const int64_t r0 = rb * ps.R;
    kern.rows_conv({in, g.H * g.W, ps.inner, g.H, g.W, g.sh, g.OH, g.OW, block, bias + r0,
                    std::min(ps.R, ps.rows - r0), out + r0 * g.P, g.P});
  }
}

void forward_direct(const Geom& g, const direct::Kernel& kern, const float* x, const float* w, const float* m,
                    const float* bias, float* y, const SampleBlockMap* block_map) {
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

}  // namespace shc_cpu
