// Small kernels that test the SIMT layer itself (tests/sim/test_emulator.py), each in a correct
// and a mutated form: a planted missing __syncthreads, a removed ready-flag wait, a code path
// that assumes one WMMA fragment mapping, and the errors the layer must raise. Written in the
// CUDA dialect of csrc/cuda, registered as torch.ops.shc_sim_test.*; part of _C_sim only.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <mma.h>

#include <chrono>

namespace shc_sim_test {
namespace {
constexpr int NT = 256;

// out[b*NT + i] = in[b*NT + NT-1-i] through shared memory; `barrier` false plants the bug.
__global__ void reverse_kernel(const float* in, float* out, bool barrier) {
  __shared__ float s[NT];
  const int t = threadIdx.x, base = blockIdx.x * NT;
  s[t] = in[base + t];
  if (barrier) __syncthreads();
  out[base + t] = s[NT - 1 - t];
}

at::Tensor reverse_blocks(const at::Tensor& x, bool barrier) {
  TORCH_CHECK(x.dim() == 1 && x.numel() % NT == 0 && x.scalar_type() == at::kFloat, "x: float, a multiple of 256");
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  shc_cuda::launch(reverse_kernel, static_cast<unsigned>(in.numel() / NT), NT, 0, nullptr, in.const_data_ptr<float>(),
                   out.mutable_data_ptr<float>(), barrier);
  return out;
}

// Reads shared memory nobody wrote (write = false): the layer poisons it (NaN), as a GPU leaves
// garbage. (The write keeps the compiler from folding reads of a never-written static to 0.)
__global__ void uninitialised_kernel(float* out, bool write) {
  __shared__ float s[NT];
  if (write) s[threadIdx.x] = 2.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

at::Tensor read_shared(bool write) {
  at::Tensor out = at::zeros({NT}, at::kFloat);
  shc_cuda::launch(uninitialised_kernel, 1, NT, 0, nullptr, out.mutable_data_ptr<float>(), write);
  return out;
}

// Only the first half of the block reaches the barrier: a hang on a GPU, an error here.
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x < NT / 2) __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Two different barriers: undefined behaviour on a GPU, an error here.
__global__ void split_barrier_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// A spin that is never released: a hang on a GPU, a timeout error here.
__global__ void hang_kernel(int* flag) {
  if (threadIdx.x == 0)
    while (shc_cuda::load_acquire(flag) == 0) __nanosleep(64);
  __syncthreads();
}

// Warp sum over a partial mask: not emulated, so an error rather than a silent answer.
__global__ void partial_mask_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffu, 1.f, 1); }

// Warp reduction, as shc_cuda::warp_sum.
__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

void run_error_kernel(c10::string_view which, double spin_timeout) {
  at::Tensor out = at::zeros({NT}, at::kFloat);
  at::Tensor flag = at::zeros({1}, at::kInt);
  float* o = out.mutable_data_ptr<float>();
  if (which == "divergent") {
    shc_cuda::launch(divergent_kernel, 1, NT, 0, nullptr, o);
  } else if (which == "split_barrier") {
    shc_cuda::launch(split_barrier_kernel, 1, NT, 0, nullptr, o);
  } else if (which == "partial_mask") {
    shc_cuda::launch(partial_mask_kernel, 1, NT, 0, nullptr, o);
  } else if (which == "hang") {
    const double saved = simt::config().spin_timeout_s;
    simt::config().spin_timeout_s = spin_timeout;
    try {
      shc_cuda::launch(hang_kernel, 1, NT, 0, nullptr, flag.mutable_data_ptr<int>());
    } catch (...) {
      simt::config().spin_timeout_s = saved;
      throw;
    }
    simt::config().spin_timeout_s = saved;
  } else {
    TORCH_CHECK(false, "unknown error kernel ", which);
  }
}

at::Tensor warp_sums(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 1 && x.numel() % NT == 0 && x.scalar_type() == at::kFloat, "x: float, a multiple of 256");
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  shc_cuda::launch(warp_sum_kernel, static_cast<unsigned>(in.numel() / NT), NT, 0, nullptr,
                   in.const_data_ptr<float>(), out.mutable_data_ptr<float>());
  return out;
}

// The one-launch kernel's handshake in miniature: items [0, P) are producers (a long stretch of
// block-wide work, then publish data[i] and set ready[i]), items [P, 2P) consumers that wait for
// ready[i - P] (unless `wait` is false: the planted bug) and copy data. The producer first waits,
// up to `grace` seconds, for its consumer to report a read: so without the wait the consumer
// reads before the write whenever another block is live, and the correct kernel only pays the grace.
struct HandshakeArgs {
  int* counter;
  int* ready;
  int* consumed;
  float* data;
  float* out;
  int P;
  bool wait;
  double grace;
};

__global__ void handshake_kernel(HandshakeArgs a) {
  __shared__ int item_s;
  for (;;) {
    __syncthreads();
    if (threadIdx.x == 0) item_s = atomicAdd(a.counter, 1);
    __syncthreads();
    const int item = item_s;
    if (item >= 2 * a.P) break;
    if (item < a.P) {
      if (threadIdx.x == 0) {
        const auto start = std::chrono::steady_clock::now();
        while (shc_cuda::load_acquire(a.consumed + item) == 0 &&
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < a.grace)
          __nanosleep(64);
        a.data[item] = 1000.f + item;
      }
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) shc_cuda::store_release(a.ready + item, 1);
    } else {
      const int i = item - a.P;
      if (threadIdx.x == 0) {
        if (a.wait)
          while (shc_cuda::load_acquire(a.ready + i) == 0) __nanosleep(64);
        a.out[i] = a.data[i];
        shc_cuda::store_release(a.consumed + i, 1);
      }
    }
  }
}

at::Tensor handshake(int64_t P, bool wait, double grace, int64_t blocks) {
  at::Tensor ints = at::zeros({1 + 2 * P}, at::kInt);
  at::Tensor data = at::full({P}, -1.f, at::kFloat);
  at::Tensor out = at::full({P}, -2.f, at::kFloat);
  HandshakeArgs a{};
  a.counter = ints.mutable_data_ptr<int>();
  a.ready = a.counter + 1;
  a.consumed = a.ready + P;
  a.data = data.mutable_data_ptr<float>();
  a.out = out.mutable_data_ptr<float>();
  a.P = static_cast<int>(P);
  a.wait = wait;
  a.grace = grace;
  shc_cuda::launch(handshake_kernel, static_cast<unsigned>(blocks), NT, 0, nullptr, a);
  return out;
}

// sum(W * (A @ B)) for one 16x16x16 WMMA tile (one warp). `hardwired` reads the accumulator as
// if element e of lane l sat where sm_80's mma layout puts it, instead of loading W into a
// fragment of the same mapping (as the dW kernel did before it moved to mma.sync): right only on
// that mapping.
__global__ void wmma_dot_kernel(const __half* A, const __half* B, const float* W, float* out, bool hardwired) {
  using namespace nvcuda;
  __shared__ __align__(128) __half As[256];
  __shared__ __align__(128) __half Bs[256];
  __shared__ __align__(128) float Ws[256];
  for (int i = threadIdx.x; i < 256; i += 32) {
    As[i] = A[i];
    Bs[i] = B[i];
    Ws[i] = W[i];
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c, w;
  wmma::fill_fragment(c, 0.f);
  wmma::load_matrix_sync(a, As, 16);
  wmma::load_matrix_sync(b, Bs, 16);
  wmma::mma_sync(c, a, b, c);
  float s = 0.f;
  if (hardwired) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int e = 0; e < c.num_elements; ++e) {
      const int row = g + 8 * ((e >> 1) & 1), col = 2 * t + (e & 1) + 8 * (e >> 2);
      s += Ws[row * 16 + col] * c.x[e];
    }
  } else {
    wmma::load_matrix_sync(w, Ws, 16, wmma::mem_row_major);
    for (int e = 0; e < c.num_elements; ++e) s += w.x[e] * c.x[e];
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x == 0) out[0] = s;
}

at::Tensor wmma_dot(const at::Tensor& A, const at::Tensor& B, const at::Tensor& W, bool hardwired) {
  TORCH_CHECK(A.sizes() == at::IntArrayRef({16, 16}) && B.sizes() == A.sizes() && W.sizes() == A.sizes(),
              "A, B, W: 16 x 16");
  const at::Tensor a = A.to(at::kHalf).contiguous(), b = B.to(at::kHalf).contiguous(), w = W.to(at::kFloat).contiguous();
  at::Tensor out = at::zeros({1}, at::kFloat);
  shc_cuda::launch(wmma_dot_kernel, 1, 32, 0, nullptr, reinterpret_cast<const __half*>(a.const_data_ptr<at::Half>()),
                   reinterpret_cast<const __half*>(b.const_data_ptr<at::Half>()), w.const_data_ptr<float>(),
                   out.mutable_data_ptr<float>(), hardwired);
  return out;
}
// The PTX fallbacks (csrc/simt/ptx.h) through csrc/cuda's wrappers (shc_cuda::ptx), one warp each,
// for tests/sim/test_emulator.py to check lane by lane against the PTX ISA's documented layouts.
// ldmatrix: rows[32][8] (b16 bit patterns) are written to shared memory in a shuffled order, lane
// l passes the address where row l (row l % 8 of matrix l / 8) was put; out[l][i] = register i.
__global__ void ldmatrix_kernel(const int16_t* rows, int32_t* out, bool trans) {
  __shared__ __align__(128) int16_t s[32 * 16];
  const int l = threadIdx.x, slot = (l * 7 + 3) % 32;  // a permutation of the 32 slots
  for (int k = 0; k < 8; ++k) s[slot * 16 + 8 + k] = rows[l * 8 + k];  // the second 16 bytes of a slot
  __syncthreads();
  uint32_t r[4];
  if (trans)
    shc_cuda::ptx::ldsm_x4<true>(r, s + slot * 16 + 8);
  else
    shc_cuda::ptx::ldsm_x4<false>(r, s + slot * 16 + 8);
  for (int i = 0; i < 4; ++i) out[l * 4 + i] = static_cast<int32_t>(r[i]);
}

at::Tensor ldmatrix_probe(const at::Tensor& rows, bool trans) {
  TORCH_CHECK(rows.sizes() == at::IntArrayRef({32, 8}) && rows.scalar_type() == at::kShort, "rows: (32, 8) int16");
  const at::Tensor in = rows.contiguous();
  at::Tensor out = at::zeros({32, 4}, at::kInt);
  shc_cuda::launch(ldmatrix_kernel, 1, 32, 0, nullptr, in.const_data_ptr<int16_t>(), out.mutable_data_ptr<int32_t>(),
                   trans);
  return out;
}

// mma.sync m16n8k16: lane l's registers a[l][4], b[l][2] (packed b16 pairs) and c[l][4] in;
// d[l][4] = the lane's share of A @ B + C out.
template <typename S>
__global__ void mma_kernel(const int32_t* a, const int32_t* b, const float* c, float* d) {
  const int l = threadIdx.x;
  uint32_t ar[4], br[2];
  float acc[4];
  for (int i = 0; i < 4; ++i) {
    ar[i] = static_cast<uint32_t>(a[l * 4 + i]);
    acc[i] = c[l * 4 + i];
  }
  for (int i = 0; i < 2; ++i) br[i] = static_cast<uint32_t>(b[l * 2 + i]);
  shc_cuda::ptx::mma_16816<S>(acc, ar, br);
  for (int i = 0; i < 4; ++i) d[l * 4 + i] = acc[i];
}

at::Tensor mma_probe(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool bf16) {
  TORCH_CHECK(a.sizes() == at::IntArrayRef({32, 4}) && a.scalar_type() == at::kInt, "a: (32, 4) int32");
  TORCH_CHECK(b.sizes() == at::IntArrayRef({32, 2}) && b.scalar_type() == at::kInt, "b: (32, 2) int32");
  TORCH_CHECK(c.sizes() == at::IntArrayRef({32, 4}) && c.scalar_type() == at::kFloat, "c: (32, 4) float");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), cc = c.contiguous();
  at::Tensor d = at::zeros({32, 4}, at::kFloat);
  auto kernel = bf16 ? mma_kernel<__nv_bfloat16> : mma_kernel<__half>;
  shc_cuda::launch(kernel, 1, 32, 0, nullptr, ac.const_data_ptr<int32_t>(), bc.const_data_ptr<int32_t>(),
                   cc.const_data_ptr<float>(), d.mutable_data_ptr<float>());
  return d;
}

// cp.async: thread 0 copies 16 bytes (or zero-fills them) into a shared word that holds -1, and
// reports what the shared word holds before the wait, after a wait that does not cover the copy's
// group, and after one that does; mode "no_wait" exits with the copy pending (an error).
__global__ void cp_async_kernel(const float* src, float* out, int mode) {
  __shared__ __align__(16) float s[4];
  if (threadIdx.x == 0) {
    for (int i = 0; i < 4; ++i) s[i] = -1.f;
    shc_cuda::ptx::cp_async16(s, src, mode != 1);
    shc_cuda::ptx::cp_async_commit();
    out[0] = s[0];  // issued, not waited
    shc_cuda::ptx::cp_async_commit();  // an empty group after it
    if (mode == 2) return;
    shc_cuda::ptx::cp_async_wait<2>();  // both groups may still be in flight
    out[1] = s[0];
    shc_cuda::ptx::cp_async_wait<1>();  // the copy's group has landed
    for (int i = 0; i < 4; ++i) out[2 + i] = s[i];
  }
}

at::Tensor cp_async_probe(const std::string& mode) {
  const int m = mode == "copy" ? 0 : mode == "zero_fill" ? 1 : mode == "no_wait" ? 2 : -1;
  TORCH_CHECK(m >= 0, "cp_async_probe: mode is copy, zero_fill or no_wait");
  at::Tensor src = at::arange(1, 5, at::kFloat);
  at::Tensor out = at::full({6}, 7.f, at::kFloat);
  shc_cuda::launch(cp_async_kernel, 1, 32, 0, nullptr, src.const_data_ptr<float>(), out.mutable_data_ptr<float>(), m);
  return out;
}

// Planted access patterns for the access metrics (simt_metrics.h, tests/sim/test_access_metrics.py):
// each launch of one warp (32 threads) makes one kind of warp-wide access whose profiler counts
// are known. "copy": out[i] = in[i * stride] in fp32 (stride 1: 4 sectors a request; 2: 8; 32:
// 32), fp16 (stride 1: 2 sectors) or float4 (16-byte lanes: 16 sectors); "shared": a store and a
// load of s[lane * stride] in fp32 (stride 1 or 33: 1 wavefront; 2: 2; 32: 32; 0: every lane the
// same word, 1) or as float4 copies (stride 1: 4 wavefronts, the fewest for 512 bytes; 2: 8).
__global__ void copy_f32_kernel(const float* in, float* out, int stride) {
  out[threadIdx.x] = in[threadIdx.x * stride];
}
__global__ void copy_f16_kernel(const __half* in, __half* out, int stride) {
  out[threadIdx.x] = in[threadIdx.x * stride];
}
__global__ void copy_f32x4_kernel(const float4* in, float4* out, int stride) {
  out[threadIdx.x] = in[threadIdx.x * stride];
}
__global__ void shared_f32_kernel(float* out, int stride) {
  __shared__ float s[32 * 33];
  s[threadIdx.x * stride] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x * stride];
}
__global__ void shared_f32x4_kernel(const float4* in, float4* out, int stride) {
  __shared__ __align__(16) float4 s[32 * 33];
  s[threadIdx.x * stride] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x * stride];
}

at::Tensor access_pattern(const std::string& kind, int64_t stride) {
  TORCH_CHECK(stride >= 0 && stride <= 33, "access_pattern: stride in [0, 33]");
  const int st = static_cast<int>(stride);
  if (kind == "copy_f32") {
    at::Tensor in = at::arange(32 * 33, at::kFloat), out = at::empty({32}, at::kFloat);
    shc_cuda::launch(copy_f32_kernel, 1, 32, 0, nullptr, in.const_data_ptr<float>(), out.mutable_data_ptr<float>(), st);
    return out;
  }
  if (kind == "copy_f16") {
    at::Tensor in = at::arange(32 * 33, at::kFloat).to(at::kHalf), out = at::empty({32}, at::kHalf);
    shc_cuda::launch(copy_f16_kernel, 1, 32, 0, nullptr, reinterpret_cast<const __half*>(in.const_data_ptr<at::Half>()),
                     reinterpret_cast<__half*>(out.mutable_data_ptr<at::Half>()), st);
    return out.to(at::kFloat);
  }
  if (kind == "copy_f32x4") {
    at::Tensor in = at::arange(4 * 32 * 33, at::kFloat), out = at::empty({4 * 32}, at::kFloat);
    shc_cuda::launch(copy_f32x4_kernel, 1, 32, 0, nullptr, reinterpret_cast<const float4*>(in.const_data_ptr<float>()),
                     reinterpret_cast<float4*>(out.mutable_data_ptr<float>()), st);
    return out;
  }
  if (kind == "shared_f32x4") {
    at::Tensor in = at::arange(4 * 32, at::kFloat), out = at::empty({4 * 32}, at::kFloat);
    shc_cuda::launch(shared_f32x4_kernel, 1, 32, 0, nullptr, reinterpret_cast<const float4*>(in.const_data_ptr<float>()),
                     reinterpret_cast<float4*>(out.mutable_data_ptr<float>()), st);
    return out;
  }
  at::Tensor out = at::empty({32}, at::kFloat);
  TORCH_CHECK(kind == "shared_f32", "access_pattern: unknown kind ", kind);
  shc_cuda::launch(shared_f32_kernel, 1, 32, 0, nullptr, out.mutable_data_ptr<float>(), st);
  return out;
}
}  // namespace
}  // namespace shc_sim_test

TORCH_LIBRARY(shc_sim_test, m) {
  m.def("reverse_blocks(Tensor x, bool barrier) -> Tensor", &shc_sim_test::reverse_blocks);
  m.def("read_shared(bool write) -> Tensor", &shc_sim_test::read_shared);
  m.def("run_error_kernel(str which, float spin_timeout) -> ()", &shc_sim_test::run_error_kernel);
  m.def("warp_sums(Tensor x) -> Tensor", &shc_sim_test::warp_sums);
  m.def("handshake(int P, bool wait, float grace, int blocks) -> Tensor", &shc_sim_test::handshake);
  m.def("wmma_dot(Tensor A, Tensor B, Tensor W, bool hardwired) -> Tensor", &shc_sim_test::wmma_dot);
  m.def("access_pattern(str kind, int stride) -> Tensor", &shc_sim_test::access_pattern);
  m.def("ldmatrix_probe(Tensor rows, bool trans) -> Tensor", &shc_sim_test::ldmatrix_probe);
  m.def("mma_probe(Tensor a, Tensor b, Tensor c, bool bf16) -> Tensor", &shc_sim_test::mma_probe);
  m.def("cp_async_probe(str mode) -> Tensor", &shc_sim_test::cp_async_probe);
}
