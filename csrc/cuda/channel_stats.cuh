// Per-channel statistics (docs/design.md §1 step 1) on the GPU.
//
// shc::channel_stats on a plane whose pixels share one stride (NCHW, channels_last) is a wide,
// memory-parallel pass in two stages: stats_rows_kernel (pixels contiguous) or stats_cols_kernel
// (channels contiguous) spread (sample, channel block, pixel chunk) over the grid, each thread
// keeping four 16-byte loads in flight, and write per chunk the sums of x - p and (x - p)^2 in
// double, with the pivot p = x[n, d, 0] (the plane's first pixel), into part, laid out
// (2 * split + 1, N * D) so that neighbouring channels are neighbouring doubles (rows: S1 of each
// chunk, then S2 of each chunk, then p); stats_combine_kernel adds a plane's chunks and writes
// mu = p + S1/HW and sigma = sqrt(S2/HW - (S1/HW)^2 + eps). Shifting by
// a value of the plane keeps a large mean over a small spread from cancelling, and double holds
// the square of any finite fp32 value, so sigma is finite for every finite fp32 x.
// block_stats (two passes by one block, any strides) serves other layouts and the one-launch
// kernel (fused_shc.cu); stats_backward_kernel is shc::channel_stats_backward, elementwise.
#pragma once

#include <cstdint>
#include <type_traits>

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

constexpr int kStatsThreads = 256;
constexpr int kStatsInFlight = 4;  // vector loads in flight per thread

// VEC elements as loaded: one scalar, or one 16-byte vector (p 16-byte aligned). Loads stay in
// this form while in flight and are widened to double only when summed (registers).
template <typename scalar_t, int VEC>
using RawVec = std::conditional_t<VEC == 1, scalar_t, uint4>;

template <typename scalar_t, int VEC>
__device__ __forceinline__ RawVec<scalar_t, VEC> load_raw(const scalar_t* p) {
  static_assert(VEC == 1 || VEC * sizeof(scalar_t) == 16, "one 16-byte vector");
#ifdef SHC_SIMT
  // One 16-byte access, as the GPU's LDG.E.128 (SASS: tools/gpu_model.py): the host compiler
  // splits a uint4 copied into an array into four 4-byte loads, which the emulator's access
  // metrics would count as four requests of 16-byte-strided lanes (store_float2 does the same).
  RawVec<scalar_t, VEC> r;
  memcpy(&r, p, sizeof r);
  return r;
#else
  return *reinterpret_cast<const RawVec<scalar_t, VEC>*>(p);
#endif
}

template <typename scalar_t, typename A, int VEC>
__device__ __forceinline__ double element(const RawVec<scalar_t, VEC>& r, int i) {
  return static_cast<double>(to_acc<A>(reinterpret_cast<const scalar_t*>(&r)[i]));
}

// Pixels contiguous (NCHW): one warp per channel, lanes along the pixels of chunk blockIdx.y.
// grid: (N * ceil(D / 8), split). part as at the top of this file, ND = N * D.
// VEC > 1 needs sq == 1 and HW, chunk, s0, s1 multiples of VEC on a 16-byte aligned x.
template <typename scalar_t, typename A, int VEC>
__global__ void __launch_bounds__(kStatsThreads)
    stats_rows_kernel(const scalar_t* x, int64_t s0, int64_t s1, int64_t sq, int D, int HW, int chunk,
                      int split, int64_t ND, double* part) {
  constexpr int kWarps = kStatsThreads / 32, STEP = 32 * VEC;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int dblocks = (D + kWarps - 1) / kWarps;
  const int n = blockIdx.x / dblocks, d = (blockIdx.x - n * dblocks) * kWarps + warp, s = blockIdx.y;
  if (d >= D) return;  // warp-uniform, and no block barrier below
  const scalar_t* row = x + n * s0 + d * s1;
  const double pivot = static_cast<double>(to_acc<A>(row[0]));
  const int q0 = s * chunk, q1 = min(HW, q0 + chunk);
  double a = 0.0, b = 0.0;
  for (int q = q0 + lane * VEC; q < q1; q += STEP * kStatsInFlight) {
    RawVec<scalar_t, VEC> v[kStatsInFlight];
#pragma unroll
    for (int u = 0; u < kStatsInFlight; ++u)
      if (q + u * STEP < q1) v[u] = load_raw<scalar_t, VEC>(row + (q + u * STEP) * sq);
#pragma unroll
    for (int u = 0; u < kStatsInFlight; ++u)
      if (q + u * STEP < q1)
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const double t = element<scalar_t, A, VEC>(v[u], e) - pivot;
          a += t;
          b += t * t;
        }
  }
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    const int64_t nd = static_cast<int64_t>(n) * D + d;
    part[s * ND + nd] = a;
    part[(split + s) * ND + nd] = b;
    if (s == 0) part[2 * split * ND + nd] = pivot;
  }
}

// Channels contiguous (channels_last): thread (dl, pl) = (tid % DL, tid / DL) owns channels
// [d0 + dl * VEC, + VEC) and every (256 / DL)-th pixel of chunk blockIdx.y; the pixel lanes are
// then reduced in shared memory, and the block's DL * VEC channels are written by as many
// consecutive threads. grid: (N * ceil(D / (DL * VEC)), split); DL a power of two <= 32.
// VEC > 1 needs s1 == 1 and D, sq, s0 multiples of VEC on a 16-byte aligned x.
template <typename scalar_t, typename A, int VEC>
__global__ void __launch_bounds__(kStatsThreads)
    stats_cols_kernel(const scalar_t* x, int64_t s0, int64_t s1, int64_t sq, int D, int HW, int chunk,
                      int split, int DL, int64_t ND, double* part) {
  __shared__ double red[2][kStatsThreads];
  // The block's channels' S1, S2 and pivot: value e of channel lane dl at fin[k][e * P + dl], with
  // P = 16 / VEC (mod 16) so that the writes (one e, consecutive dl) and the coalesced reads at the
  // end (consecutive channels dl * VEC + e) both meet 16 distinct 8-byte banks per phase.
  __shared__ double fin[3][VEC * (32 + 15)];
  const int tid = threadIdx.x, dl = tid % DL, pl = tid / DL, PL = kStatsThreads / DL;
  const int dblocks = (D + DL * VEC - 1) / (DL * VEC);
  const int n = blockIdx.x / dblocks, dbase = (blockIdx.x - n * dblocks) * DL * VEC, s = blockIdx.y;
  const int d0 = dbase + dl * VEC;
  const int P = VEC == 1 ? DL : DL + ((16 / VEC) % 16 - DL % 16 + 16) % 16;
  const bool own = d0 < D;  // VEC > 1: D % VEC == 0, so all VEC channels exist
  const scalar_t* base = x + n * s0 + static_cast<int64_t>(own ? d0 : 0) * s1;
  double pivot[VEC], a[VEC], b[VEC];
  const RawVec<scalar_t, VEC> first = load_raw<scalar_t, VEC>(base);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    pivot[e] = element<scalar_t, A, VEC>(first, e);
    a[e] = b[e] = 0.0;
  }
  const int q0 = s * chunk, q1 = min(HW, q0 + chunk);
  if (own)
    for (int q = q0 + pl; q < q1; q += PL * kStatsInFlight) {
      RawVec<scalar_t, VEC> v[kStatsInFlight];
#pragma unroll
      for (int u = 0; u < kStatsInFlight; ++u)
        if (q + u * PL < q1) v[u] = load_raw<scalar_t, VEC>(base + (q + u * PL) * sq);
#pragma unroll
      for (int u = 0; u < kStatsInFlight; ++u)
        if (q + u * PL < q1)
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const double t = element<scalar_t, A, VEC>(v[u], e) - pivot[e];
            a[e] += t;
            b[e] += t * t;
          }
    }
#pragma unroll  // a[e], b[e] stay in registers only when e is a constant
  for (int e = 0; e < VEC; ++e) {
    red[0][tid] = a[e];
    red[1][tid] = b[e];
    __syncthreads();
    for (int st = PL / 2; st > 0; st >>= 1) {
      if (pl < st) {
        red[0][tid] += red[0][tid + st * DL];
        red[1][tid] += red[1][tid + st * DL];
      }
      __syncthreads();
    }
    if (pl == 0) {
      fin[0][e * P + dl] = red[0][tid];
      fin[1][e * P + dl] = red[1][tid];
      fin[2][e * P + dl] = pivot[e];
    }
    __syncthreads();
  }
  if (tid < DL * VEC && dbase + tid < D) {  // coalesced: thread i writes channel dbase + i
    const int64_t nd = static_cast<int64_t>(n) * D + dbase + tid;
    const int f = (tid % VEC) * P + tid / VEC;
    part[s * ND + nd] = fin[0][f];
    part[(split + s) * ND + nd] = fin[1][f];
    if (s == 0) part[2 * split * ND + nd] = fin[2][f];
  }
}

// One thread per (n, d): the chunks' sums -> mu, sigma. grid: ceil(N * D / 256).
template <typename A>
__global__ void __launch_bounds__(kStatsThreads)
    stats_combine_kernel(int64_t ND, int HW, int split, const double* part, A eps, A* mu, A* sigma) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(kStatsThreads) + threadIdx.x;
  if (idx >= ND) return;
  const double pivot = part[2 * split * ND + idx];
  double a = 0.0, b = 0.0;
  for (int s = 0; s < split; ++s) {
    a += part[s * ND + idx];
    b += part[(split + s) * ND + idx];
  }
  const double hw = static_cast<double>(HW), m1 = a / hw;
  const double var = b / hw - m1 * m1;
  mu[idx] = static_cast<A>(pivot + m1);
  sigma[idx] = static_cast<A>(sqrt((var > 0.0 ? var : 0.0) + static_cast<double>(eps)));
}

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

// out (dense in NCHW or channels_last order) = gmu/HW + gsig * (x - mu) / (HW * sigma), computed as
// c + a * (x - mu) with a = gsig / (HW * sigma) and c = gmu/HW - a * r. mu arrives rounded to A (the
// saved statistics) and x - mu weighs that rounding against the plane's spread: a plane of mean 1000
// and spread 0.01 in fp32 would lose three digits of dx. r[plane] = mean(x) - mu, the rounding
// error, in double from the launcher (nullptr: zero, for fp64), puts it into the constant; x - mu is
// exact in A for the x near mu (as csrc/cpu's stats_backward_plane does).
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(256)
    stats_backward_kernel(const A* gmu, const A* gsig, const scalar_t* x, int64_t s0, int64_t s1,
                          int64_t s2, int64_t s3, const A* mu, const A* sigma, const double* r,
                          int64_t total, int D, int H, int W, bool channels_last, scalar_t* out) {
  const A hw = static_cast<A>(H) * static_cast<A>(W);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, d, h, w, q = idx;
    if (channels_last) {
      d = q % D; q /= D; w = q % W; q /= W; h = q % H; n = q / H;
    } else {
      w = q % W; q /= W; h = q % H; q /= H; d = q % D; n = q / D;
    }
    const int64_t nd = n * D + d;
    const A xv = to_acc<A>(x[n * s0 + d * s1 + h * s2 + w * s3]);
    const A a = gsig[nd] / (hw * sigma[nd]);
    const A c = gmu[nd] / hw - (r != nullptr ? a * static_cast<A>(r[nd]) : A(0));
    out[idx] = static_cast<scalar_t>(c + a * (xv - mu[nd]));
  }
}

}  // namespace
}  // namespace shc_cuda
