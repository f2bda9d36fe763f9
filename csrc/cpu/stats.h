// The per-channel statistics (mu, sigma of every plane) and their backward: the kernels of
// shc::channel_stats and shc::channel_stats_backward (stats.cpp), and the pieces the fused layer
// (shc_layer.cpp) runs inside its own loops.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu_util.h"

namespace shc_cpu {

// One plane of the statistics' backward (the hypernetwork route of dx):
//   o (+)= grad_mu / HW + grad_sigma * (x - mu) / (HW * sigma)
// the coefficients in double, the plane in T. shc::channel_stats_backward and
// shc::shc_conv2d_backward both go through it.
// mu arrives rounded to T (the saved statistics), and x - mu weighs that rounding error against
// the plane's spread: where |mu| > sigma it would cost dx digits (a plane of mean 1000 and spread
// 0.01 in fp32: 3 of them). There the plane's mean relative to the rounded m, r = mean(x - m)
// summed in double, goes into the constant: o = (c - a r) + a (x - m), with x - m exact in T for
// the x near m.
template <typename T>
SHC_MULTIVERSION void stats_backward_plane(T* o, const T* x, int64_t HW, double grad_mu, double grad_sigma, double mu,
                          double sigma, bool accumulate) {
  const double n = static_cast<double>(HW);
  const double ad = grad_sigma / (n * sigma);
  const T m = static_cast<T>(mu);
  double cd = grad_mu / n;
  if (std::abs(mu) > sigma) {
    double r = 0.0;
#pragma omp simd reduction(+ : r)
    for (int64_t q = 0; q < HW; ++q) r += static_cast<double>(x[q] - m);
    cd -= ad * (r / n);
  }
  const T a = static_cast<T>(ad), c = static_cast<T>(cd);
  if (accumulate) {
#pragma omp simd
    for (int64_t q = 0; q < HW; ++q) o[q] += c + a * (x[q] - m);
  } else {
#pragma omp simd
    for (int64_t q = 0; q < HW; ++q) o[q] = c + a * (x[q] - m);
  }
}

// mu and sigma of plane p = n*D + d go to mu[n*ld + d] and sigma[n*ld + d] (ld = D for separate
// (N, D) outputs; ld = 2D with sigma = mu + D writes z = cat(mu, sigma) in place). float, double.
template <typename T>
void stats_impl(const T* x, int64_t planes, int64_t D, int64_t HW, double eps, T* mu, T* sigma, int64_t ld);

// The statistics of a taps block from its transposed input xs[d][q][s] (nb samples in the lanes):
// mu and sigma of sample s, channel d go to z[s * 2D + d] and z[s * 2D + D + d]. float, double.
template <typename T>
void lane_stats(const T* xs, int64_t D, int64_t HW, int64_t nb, double eps, T* z);

}  // namespace shc_cpu
