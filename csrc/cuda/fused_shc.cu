// One-launch SHC forward: the CUDA kernel of shc::shc_conv2d (schema in csrc/shc.cpp; its
// backward is shc_kernels/ops.py's, from the m, z and h this returns).
//
//   y, m, z, h = shc_conv2d(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
//                           stride, padding, dilation, groups, eps, grad_route)
// computes what statistical_map + modulated_conv2d compute (docs/design.md §1) in one persistent
// kernel. Work items come from one global counter, in order: items [0, N) are samples (channel
// statistics, then the two-layer hypernetwork; the block publishes m[n] and sets ready[n] after a
// __threadfence), the items after them are conv tiles ordered by row tile, so early tiles need
// early samples. A conv tile waits for the ready flags of the samples its rows cover. No deadlock
// without co-residency: a CTA that holds a tile item only waits on sample items with smaller
// numbers, which were all claimed before it by running CTAs that finish them without waiting.
// The tiles read m through L2 (__ldcg), never a stale L1 line. The only other device work is
// the zeroing of the counter and flags (a memset) and the small dtype casts of the MLP weights.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "channel_stats.cuh"
#include "conv_tile.cuh"
#include "host_helpers.h"

namespace shc_cuda {
namespace {

template <typename scalar_t, typename A>
struct FusedArgs {
  const scalar_t* x;
  int64_t xs0, xs1, xs2, xs3;
  int N, D, H, W, K, T;
  A eps;
  const A* fc1w;  // (K, 2D)
  const A* fc1b;  // (K) or nullptr
  const A* fc2w;  // (T, K)
  const A* fc2b;  // (T) or nullptr
  A* z;           // (N, 2D) output: mu then sigma
  A* h;           // (N, K) output: the hidden units
  A* m;           // (N, T) output
  int* counter;   // work-item counter, zeroed
  int* ready;     // (N) flags, zeroed
  int tiles_m, tiles_n, groups;
};

template <typename scalar_t, typename Cfg>
__device__ __forceinline__ void sample_map(const FusedArgs<scalar_t, typename Cfg::A>& f, int n,
                                           double* red) {
  using A = typename Cfg::A;
  constexpr int NT = Cfg::NT;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
  const int D2 = 2 * f.D;
  A* z = f.z + static_cast<int64_t>(n) * D2;
  A* h = f.h + static_cast<int64_t>(n) * f.K;
  const int DX = (f.xs1 == 1 && f.D > 1) ? 32 : 1;
  const scalar_t* xn = f.x + n * f.xs0;
  for (int d0 = 0; d0 < f.D; d0 += DX)
    block_stats<scalar_t, A, NT>(xn, 0, f.xs1, f.xs2, f.xs3, 0, d0, f.D, f.H, f.W, f.eps, DX, red, z, z + f.D);
  __syncthreads();
  // h = relu(fc1 z + b1): one warp per hidden unit, lanes along z (coalesced rows of fc1).
  for (int k = warp; k < f.K; k += NT / 32) {
    const A* wr = f.fc1w + static_cast<int64_t>(k) * D2;
    A s = A(0);
    for (int j = lane; j < D2; j += 32) s += wr[j] * z[j];
    s = warp_sum(s);
    if (lane == 0) h[k] = max(s + (f.fc1b != nullptr ? f.fc1b[k] : A(0)), A(0));
  }
  __syncthreads();
  // m = sigmoid(fc2 h + b2)
  for (int t = warp; t < f.T; t += NT / 32) {
    const A* wr = f.fc2w + static_cast<int64_t>(t) * f.K;
    A s = A(0);
    for (int k = lane; k < f.K; k += 32) s += wr[k] * h[k];
    s = warp_sum(s);
    if (lane == 0) f.m[static_cast<int64_t>(n) * f.T + t] = A(1) / (A(1) + exp(-(s + (f.fc2b != nullptr ? f.fc2b[t] : A(0)))));
  }
  __threadfence();  // each writer's m is visible device-wide ...
  __syncthreads();  // ... every writer is done ...
  if (tid == 0) store_release(f.ready + n, 1);  // ... then the flag, ordered after the barrier
}

template <typename scalar_t, typename Cfg>
// One CTA of 256 threads per SM; ptxas' own choice (128 registers) spills in the bf16 variant.
__global__ void __maxnreg__(168)
    fused_shc_kernel(const FusedArgs<scalar_t, typename Cfg::A> f, const ConvArgs<scalar_t, typename Cfg::A> p) {
  using A = typename Cfg::A;
  __shared__ __align__(128) unsigned char raw[Cfg::kSmemBytes];
  __shared__ int64_t row_off[2 * Cfg::BM];
  __shared__ A scale[2 * Cfg::BM];
  __shared__ int item_s;
  static_assert(Cfg::kSmemBytes >= Cfg::NT * sizeof(double), "reduction buffer");
  double* red = reinterpret_cast<double*>(raw);
  const ConvSmem<Cfg> sm{raw, row_off, scale};
  const int per_tm = f.tiles_n * f.groups;
  const int total = f.N + f.tiles_m * per_tm;
  const int RP = p.RH * p.RW, M = p.N * RP;
  for (;;) {
    __syncthreads();  // everyone has read item_s and is done with shared memory
    if (threadIdx.x == 0) item_s = atomicAdd(f.counter, 1);
    __syncthreads();
    const int item = item_s;
    if (item >= total) break;
    if (item < f.N) {
      sample_map<scalar_t, Cfg>(f, item, red);
      continue;
    }
    const int tile = item - f.N;
    const int tm = tile / per_tm, rest = tile - tm * per_tm, g = rest / f.tiles_n, tn = rest - g * f.tiles_n;
    if (threadIdx.x == 0) {
      const int row_lo = tm * Cfg::BM, row_hi = min(M, row_lo + Cfg::BM) - 1;
      for (int n = row_lo / RP; n <= row_hi / RP; ++n)
        while (load_acquire(f.ready + n) == 0) __nanosleep(64);
      __threadfence();
    }
    __syncthreads();
    conv_tile<scalar_t, Cfg>(p, tm, tn, g, sm);
  }
}

at::Tensor mlp_arg(const std::optional<at::Tensor>& t, const at::Tensor& x, at::ScalarType ct, const char* op,
                   const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_cuda(*t, x, op, name);
  return t->to(ct).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
    const std::optional<at::Tensor>& fc2_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, c10::string_view grad_route) {
  const char* op = "shc::shc_conv2d";
  shc::check_grad_route(grad_route, op);
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, op, ": x and weight must be 4-D, got ", x.sizes(), " and ",
              weight.sizes());
  check_cuda(x, x, op, "x");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  const at::ScalarType ct = compute_type(x.scalar_type());
  at::Tensor m = at::empty({x.size(0), weight.size(2), weight.size(3)}, x.options().dtype(ct));
  const Geom g = make_geom(x, weight, m, stride, padding, dilation, groups, op);
  TORCH_CHECK(g.H * g.W > 0, op, ": x must have a non-empty H x W plane, got ", x.sizes());
  const DeviceGuard guard(x.device());
  check_cuda(fc1_weight, x, op, "fc1_weight");
  check_cuda(fc2_weight, x, op, "fc2_weight");
  const int64_t K = shc::hypernetwork_hidden(g.D, g.T, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op);
  const at::Tensor b = bias_arg(bias, x, g, ct, op);
  const at::Tensor b1 = mlp_arg(fc1_bias, x, ct, op, "fc1_bias");
  const at::Tensor b2 = mlp_arg(fc2_bias, x, ct, op, "fc2_bias");
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(x.suggest_memory_format()));
  at::Tensor z = at::empty({g.N, 2 * g.D}, x.options().dtype(ct));
  at::Tensor h = at::empty({g.N, K}, x.options().dtype(ct));
  if (g.N == 0) return std::make_tuple(y, m, z, h);
  const at::Tensor w1 = fc1_weight.to(ct).contiguous(), w2 = fc2_weight.to(ct).contiguous();
  const at::Tensor bt = weight_operand(weight, g, false);
  at::Tensor flags = at::zeros({g.N + 1}, x.options().dtype(at::kInt));
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shc_fused_forward_cuda", [&] {
    using Cfg = ConvCfg<scalar_t>;
    using A = typename Cfg::A;
    const ConvArgs<scalar_t, A> p = conv_args<scalar_t, A>(g, x, bt, m, b, y, false);
    FusedArgs<scalar_t, A> f{};
    f.x = x.const_data_ptr<scalar_t>();
    f.xs0 = x.stride(0);
    f.xs1 = x.stride(1);
    f.xs2 = x.stride(2);
    f.xs3 = x.stride(3);
    f.N = static_cast<int>(g.N);
    f.D = static_cast<int>(g.D);
    f.H = static_cast<int>(g.H);
    f.W = static_cast<int>(g.W);
    f.K = static_cast<int>(K);
    f.T = static_cast<int>(g.T);
    f.eps = static_cast<A>(eps);
    f.fc1w = w1.const_data_ptr<A>();
    f.fc1b = b1.defined() ? b1.const_data_ptr<A>() : nullptr;
    f.fc2w = w2.const_data_ptr<A>();
    f.fc2b = b2.defined() ? b2.const_data_ptr<A>() : nullptr;
    f.z = z.mutable_data_ptr<A>();
    f.h = h.mutable_data_ptr<A>();
    f.m = m.mutable_data_ptr<A>();
    f.counter = flags.mutable_data_ptr<int>();
    f.ready = f.counter + 1;
    const int64_t Mrows = g.N * g.P;
    f.tiles_m = static_cast<int>((Mrows + Cfg::BM - 1) / Cfg::BM);
    f.tiles_n = static_cast<int>((g.Cg + Cfg::BN - 1) / Cfg::BN);
    f.groups = static_cast<int>(g.groups);
    const int64_t items = g.N + static_cast<int64_t>(f.tiles_m) * f.tiles_n * f.groups;
    TORCH_CHECK(items < INT_MAX, op, ": problem too large for the CUDA kernel");
    const int occ = max_active_blocks(fused_shc_kernel<scalar_t, Cfg>, Cfg::NT, 0);
    const int64_t blocks = std::min<int64_t>(items, static_cast<int64_t>(std::max(occ, 1)) * sm_count(x.get_device()));
    launch(fused_shc_kernel<scalar_t, Cfg>, static_cast<unsigned>(blocks), Cfg::NT, 0, stream, f, p);
  });
  return std::make_tuple(y, m, z, h);
}

}  // namespace
}  // namespace shc_cuda

SHC_CUDA_LIBRARY_IMPL(m) { m.impl("shc_conv2d", &shc_cuda::shc_conv2d_cuda); }
