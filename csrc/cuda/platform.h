// What differs between nvcc's build of csrc/cuda and its CPU-run build (SHC_SIMT: the same
// sources compiled as host C++ against csrc/simt, `make cuda-sim`): includes, the device guard
// and stream, device queries, kernel launches, the one-launch kernel's flag handshake, and the
// library the kernels register under (shc on CUDA; shc_sim on CPU, as the CPU key of shc:: is
// the cpu backend's).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <utility>

#ifdef SHC_SIMT
#include "../simt/simt.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda/atomic>
#endif

namespace shc_cuda {

#ifdef SHC_SIMT

#define SHC_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(shc_sim, CPU, m)
constexpr const char* kDeviceName = "CPU (emulated CUDA)";
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
inline int sm_count(int /*device*/) { return std::max(simt::config().sm_count, 1); }
template <typename Kernel>
int max_active_blocks(Kernel, int /*threads*/, size_t /*smem*/) {
  return simt::config().occupancy;
}
// kernel<<<grid, block, smem, stream>>>(args...)
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, A&&... args) {
  TORCH_CHECK(smem == 0, "simt: dynamic shared memory is not emulated");
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  simt::run_grid(grid, block, [&] { std::apply(kernel, params); });
}
inline int load_acquire(int* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void store_release(int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

#else

#define SHC_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(shc, CUDA, m)
constexpr const char* kDeviceName = "CUDA";
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
inline int sm_count(int device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  return std::max(v, 1);
}
template <typename Kernel>
int max_active_blocks(Kernel kernel, int threads, size_t smem) {
  int occ = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, threads, smem));
  return occ;
}
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
__device__ __forceinline__ int load_acquire(int* p) {
  return cuda::atomic_ref<int, cuda::thread_scope_device>(*p).load(cuda::memory_order_acquire);
}
__device__ __forceinline__ void store_release(int* p, int v) {
  cuda::atomic_ref<int, cuda::thread_scope_device>(*p).store(v, cuda::memory_order_release);
}

#endif

}  // namespace shc_cuda
