// The "depthwise" method of the CPU modulated conv: grouped convs with few input channels per
// group (depthwise: one), the convs MobileNet and EfficientNet spend their time in. There the
// GEMM methods multiply a 1 x 9 panel per group and are 2-3x slower than F.conv2d; a group's
// output plane is instead a stencil of its Dg input planes,
//   y[n,c,p] = bias[c] + sum_{d in grp(c)} sum_t (W[c,d,t] * m[n,t]) * x[n,d,p (+) t],
// vectorised along output rows. Each input plane is copied once into a zero-padded buffer split
// into its column phases (stride s: s phases), so every tap is a contiguous load at a fixed
// offset from the output position, whatever the stride, padding and dilation.
// Backward per (sample, group), from the same buffers and a zero-padded copy of dy:
//   G[c,d,t] = sum_p dy[n,c,p] * x[n,d,p (+) t]   (9 vector accumulators per plane pair)
//   dW[c,d,t] += m[n,t] * G,  dm[n,t] += W[c,d,t] * G   (double)
//   dx[n,d] = the transposed stencil, gathered per column phase (registers, no scatter).
// AVX-512 and AVX2 copies (picked by the caller, like the direct method's SHC_CPU_DIRECT_ISA),
// and a plain C++ copy for float64 and CPUs without AVX2.
#pragma once

#include <cstdint>
#include <functional>

#include "../conv_geometry.h"

namespace shc_cpu {
namespace depthwise {

enum class Isa { kGeneric, kAvx2, kAvx512 };

// The ISA of a direct::Kernel's name ("avx512", "avx2") or kGeneric for nullptr.
Isa isa_from_name(const char* name);

// Whether the method takes this conv: more than one group and at most kMaxDg input channels per
// group (any stride, kernel size, padding, dilation; float32 or float64). Here, not in
// depthwise.cpp: the study's library hash (research/study.py) leaves depthwise.cpp and its kernels
// out because this test keeps every groups == 1 conv away from them.
constexpr int64_t kMaxDg = 8;
inline bool applies(const shc::ConvGeom& g) { return g.groups > 1 && g.Dg <= kMaxDg; }

// Called with a range of samples [n0, n0 + nb): before the forward reads their m (the fused
// layer computes their statistics and map there), after the backward wrote their dx and dm.
using SampleFn = std::function<void(int64_t n0, int64_t nb)>;

// y (N, C, OH, OW) from NCHW-contiguous x, weight (C, Dg, kh, kw), m (N, T), bias (C) or null.
template <typename T>
void forward(const shc::ConvGeom& g, Isa isa, const T* x, const T* w, const T* m, const T* bias, T* y,
             const SampleFn* before);

// dx (conv route), grad_weight, dm (N, T, double) and grad_bias (C, double); a null pointer is
// not computed. Every output is written (not accumulated). done(n0, nb) runs after the samples'
// dx and dm are final.
template <typename T>
void backward(const shc::ConvGeom& g, Isa isa, const T* dy, const T* x, const T* w, const T* m, T* dx, T* gw,
              double* dm, double* db, const SampleFn* done);

extern template void forward<float>(const shc::ConvGeom&, Isa, const float*, const float*, const float*,
                                    const float*, float*, const SampleFn*);
extern template void forward<double>(const shc::ConvGeom&, Isa, const double*, const double*, const double*,
                                     const double*, double*, const SampleFn*);
extern template void backward<float>(const shc::ConvGeom&, Isa, const float*, const float*, const float*,
                                     const float*, float*, float*, double*, double*, const SampleFn*);
extern template void backward<double>(const shc::ConvGeom&, Isa, const double*, const double*, const double*,
                                      const double*, double*, double*, double*, double*, const SampleFn*);

}  // namespace depthwise
}  // namespace shc_cpu
