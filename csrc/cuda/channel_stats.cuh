// Per-channel statistics (DESIGN.md §1 step 1) on the GPU: block_stats (one block's share, also
// run by the one-launch kernel in fused_shc.cu), the kernel of shc::channel_stats and the
// elementwise kernel of shc::channel_stats_backward.
#pragma once

#include <cstdint>

#include "device_common.cuh"

namespace shc_cuda {

// ------------------------------------------------------------------------------------------
// Channel statistics of DX channels [d0, d0 + DX) of sample n, by one block of NT threads laid
// out as DX channel lanes x (NT / DX) pixel lanes: DX = 1 for NCHW (a plane is contiguous),
// 32 for channels_last (neighbouring channels are). Two passes (mean, then squared deviations),
// accumulated in double whatever the input (as the cpu backend): fp32 squares of |x| > ~1e19
// overflow, and the results are stored in A (fp32, fp64 for fp64 input). red holds NT doubles.
template <typename scalar_t, typename A, int NT>
__device__ __forceinline__ void block_stats(const scalar_t* x, int64_t s0, int64_t s1, int64_t s2,
                                            int64_t s3, int n, int d0, int D, int H, int W, A eps,
                                            int DX, double* red, A* mu, A* sigma) {
  const int tid = threadIdx.x, PX = NT / DX, dx = tid % DX, px = tid / DX, d = d0 + dx;
  const int HW = H * W;
  const bool flat = s2 == static_cast<int64_t>(W) * s3;  // (h, w) collapse to one stride
  const scalar_t* base = x + n * s0 + static_cast<int64_t>(d < D ? d : 0) * s1;
  auto at = [&](int q) -> double {
    if (flat) return static_cast<double>(to_acc<A>(base[q * s3]));
    const int h = q / W, w = q - h * W;
    return static_cast<double>(to_acc<A>(base[h * s2 + w * s3]));
  };
  auto reduce = [&](double v) -> double {  // sum over the pixel lanes of channel lane dx
    red[tid] = v;
    __syncthreads();
    for (int st = PX / 2; st > 0; st >>= 1) {
      if (px < st) red[tid] += red[tid + st * DX];
      __syncthreads();
    }
    const double r = red[dx];
    __syncthreads();
    return r;
  };
  double s = 0.0;
  if (d < D)
    for (int q = px; q < HW; q += PX) s += at(q);
  const double mean = reduce(s) / static_cast<double>(HW);
  double v = 0.0;
  if (d < D)
    for (int q = px; q < HW; q += PX) {
      const double dl = at(q) - mean;
      v += dl * dl;
    }
  const double var = reduce(v) / static_cast<double>(HW);
  if (px == 0 && d < D) {
    mu[static_cast<int64_t>(n) * D + d] = static_cast<A>(mean);
    sigma[static_cast<int64_t>(n) * D + d] = static_cast<A>(sqrt(var + static_cast<double>(eps)));
  }
}

namespace {

// grid: N * ceil(D / DX) blocks of 256 threads
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(256)
    stats_kernel(const scalar_t* x, int64_t s0, int64_t s1, int64_t s2, int64_t s3, int N, int D,
                 int H, int W, A eps, int DX, A* mu, A* sigma) {
  __shared__ double red[256];
  const int dblocks = (D + DX - 1) / DX;
  const int n = blockIdx.x / dblocks, d0 = (blockIdx.x - n * dblocks) * DX;
  block_stats<scalar_t, A, 256>(x, s0, s1, s2, s3, n, d0, D, H, W, eps, DX, red, mu, sigma);
}

// out (dense in NCHW or channels_last order) = gmu/HW + gsig * (x - mu) / (HW * sigma)
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(256)
    stats_backward_kernel(const A* gmu, const A* gsig, const scalar_t* x, int64_t s0, int64_t s1,
                          int64_t s2, int64_t s3, const A* mu, const A* sigma, int64_t total, int D,
                          int H, int W, bool channels_last, scalar_t* out) {
  const A hw = static_cast<A>(H) * static_cast<A>(W);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, d, h, w, r = idx;
    if (channels_last) {
      d = r % D; r /= D; w = r % W; r /= W; h = r % H; n = r / H;
    } else {
      w = r % W; r /= W; h = r % H; r /= H; d = r % D; n = r / D;
    }
    const int64_t nd = n * D + d;
    const A xv = to_acc<A>(x[n * s0 + d * s1 + h * s2 + w * s3]);
    out[idx] = static_cast<scalar_t>(gmu[nd] / hw + gsig[nd] * (xv - mu[nd]) / (hw * sigma[nd]));
  }
}

}  // namespace
}  // namespace shc_cuda
