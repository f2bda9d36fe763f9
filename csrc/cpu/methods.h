// The modulated conv's four methods, one file each (im2col.cpp, shift.cpp, taps.cpp, direct.cpp):
// what they apply to and their entry points. choose_method (knobs.cpp) picks one per shape;
// modulated_conv.cpp dispatches to it.
// modulated_conv2d: y[n] = conv2d(x[n], W * m[n], bias, ...), with m[n] one scalar per tap.
// None materializes per-sample kernels nor the whole batch's im2col: each works on blocks of
// samples, so its memory does not grow with the batch.
// Backward arguments: dx (conv route), grad_weight (gw), dm and grad_bias (db, C doubles); a null
// pointer is not computed. done (or null) is called as samples complete (ChunkDone).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "cpu_util.h"
#include "direct_kernels.h"
#include "knobs.h"

namespace shc_cpu {

// The shift method's convs (shift.cpp): the 3x3 conv with stride 1, padding 1, dilation 1 and one group.
inline bool shift_taps(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && g.dh == 1 &&
         g.dw == 1 && g.groups == 1 && g.OH == g.H && g.OW == g.W;
}

// The direct method's stride-2 convs (direct.h): 3x3, stride 2, padding 1, one group.
inline bool direct_stride2(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2 && g.ph == 1 && g.pw == 1 && g.dh == 1 && g.dw == 1 &&
         g.groups == 1;
}

// The taps method's convs (taps.cpp): one group, any kernel, stride, padding, dilation.
inline bool taps_apply(const Geom& g) { return g.groups == 1; }

// im2col.cpp: any conv.
template <typename T>
void forward_im2col(const Geom& g, const Knobs& k, const T* x, const T* w, const T* m, const T* bias, T* y);
template <typename T>
void backward_im2col(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx, T* gw,
                     double* dm, double* db, const ChunkDone* done);

// shift.cpp. backward_shift's direct_dx (fp32, the direct method): dx by that micro-kernel, not 9 GEMMs.
template <typename T>
void forward_shift(const Geom& g, const Knobs& k, const T* x, const T* w, const T* m, const T* bias, T* y);
template <typename T>
void backward_shift(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx,
                    T* gw, double* dm, double* db, const ChunkDone* done,
                    const direct::Kernel* direct_dx = nullptr);

// direct.cpp (fp32; its backward is backward_shift with direct_dx).
// shc::shc_conv2d's fused forward computes the map per block of samples: block_map(n0, nb)
// writes m for samples [n0, n0 + nb), from their x, which the block's pads then read from cache.
using SampleBlockMap = std::function<void(int64_t n0, int64_t nb)>;

void forward_direct(const Geom& g, const direct::Kernel& kern, const float* x, const float* w, const float* m,
                    const float* bias, float* y, const SampleBlockMap* block_map = nullptr);

// taps.cpp. taps_block: samples per block.
int64_t taps_block(const Geom& g, size_t elem, const Knobs& k);

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
                  const BlockMap<T>* block_map = nullptr);
template <typename T>
void backward_taps(const Geom& g, const Knobs& k, const T* dy, const T* x, const T* w, const T* m, T* dx, T* gw,
                   double* dm, double* db, const ChunkDone* done);

// modulated_conv.cpp: the conv's backward by the method choose_method picks.
template <typename T>
void backward_impl(const Geom& g, const T* dy, const T* x, const T* w, const T* m, T* dx,
                   T* gw, double* dm, double* db = nullptr, const ChunkDone* done = nullptr);

}  // namespace shc_cpu
