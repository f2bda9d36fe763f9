// A SIMT execution layer: csrc/cuda's kernels compiled as host C++ run with CUDA's execution model
// (../shared/SIMT.md; `make cuda-sim`). Included by csrc/cuda/platform.h when SHC_SIMT is
// defined, after every toolkit and ATen header (cuda_runtime_api.h has members named blockDim).
//
//   grid      blocks handed out in blockIdx order to `live_blocks` OS threads (>= 2: blocks
//             really run at once, so cross-block handshakes are exercised)
//   block     one fiber per CUDA thread on its OS thread; a fiber runs until it blocks
//             (__syncthreads, a warp collective, __nanosleep); the scheduler resumes fibers in
//             forward, reverse or shuffled order, releases a barrier when every thread of the
//             block (warp) waits at the same one, and reports divergence and deadlock
//   shared    `__shared__` is `static thread_local`: one copy per OS thread = per live block,
//             poisoned (all bytes 0xff: NaN, -1) before each block
//   warp      shuffles and WMMA's mma_sync exchange values through per-warp buffers at a warp
//             barrier; WMMA fragments hold each lane's share (8 of 256 elements) through the
//             hardware's mapping or a scrambled one
//   memory    atomics are std::atomic_ref (relaxed), __threadfence a seq_cst fence
// Under ThreadSanitizer every fiber is a TSan fiber, barriers are release/acquire on one sync
// object per generation, and a switch from the scheduler to a fiber carries no synchronisation
// of its own (the threads of a block stay concurrent for TSan). Under AddressSanitizer the fiber
// switches are announced (__sanitizer_start/finish_switch_fiber). Only x86-64 (the switch is
// written in assembly: glibc's swapcontext makes a system call per switch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <source_location>
#include <stdexcept>
#include <string>

#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif
// The metrics build (SIMT_METRICS) uses the address instrumentation without its runtime.
#if defined(__SANITIZE_ADDRESS__) && !SIMT_METRICS
#define SIMT_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif

namespace simt {

enum class Order { forward, reverse, shuffled };
enum class Mapping { hardware, scrambled };

// Emulation settings, chosen by the tests (shc_kernels._C_sim.configure).
struct Config {
  int sm_count = 132;       // cudaDevAttrMultiProcessorCount
  int occupancy = 1;        // cudaOccupancyMaxActiveBlocksPerMultiprocessor
  int live_blocks = 1;      // blocks running at once (OS threads)
  Order order = Order::forward;
  Mapping mapping = Mapping::hardware;
  uint64_t seed = 0;        // shuffled order and scrambled mapping
  double spin_timeout_s = 60;  // a __nanosleep spin longer than this is reported as a hang
};
Config& config();
// Counters for the tests: launches, blocks run, barriers released.
struct Stats {
  std::atomic<int64_t> launches{0}, blocks{0}, barriers{0}, max_live{0};
  // Lane-level calls of the PTX fallbacks (ptx.h): cp.async copies issued, ldmatrix, mma.sync.
  std::atomic<int64_t> cp_async{0}, ldmatrix{0}, mma_sync{0};
};
Stats& stats();

// Index of the CUDA thread, block and their sizes for the running fiber.
struct Ctx {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
struct Fiber;
struct Block;
// The running fiber of this OS thread (nullptr: host code); written by the scheduler only.
extern thread_local std::atomic<Fiber*> tl_fiber;
const Ctx& ctx();

// Builtins (called through the macros at the bottom of this file).
void syncthreads(const std::source_location& where = std::source_location::current());
void warp_sync(const std::source_location& where = std::source_location::current());
void nanosleep_yield();
int lane_id();
// Per-warp exchange buffer of 32 * 2 slots of 8 bytes, double-buffered per call.
void* warp_exchange(int bytes_per_lane, void** mine);
[[noreturn]] void fail(const std::string& what);

template <typename T>
T shfl_xor_sync(unsigned mask, T v, int offset) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a register value");
  if (mask != 0xffffffffu) fail("__shfl_xor_sync with a partial mask is not emulated");
  if (offset <= 0 || offset >= 32) fail("__shfl_xor_sync: lane offset out of range");
  void* mine = nullptr;
  unsigned char* buf = static_cast<unsigned char*>(warp_exchange(8, &mine));
  std::memcpy(mine, &v, sizeof(T));
  warp_sync();
  T r;
  std::memcpy(&r, buf + 8 * (lane_id() ^ offset), sizeof(T));
  return r;
}

// Run kernel() for every thread of every block of the grid.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& kernel);

}  // namespace simt

// ------------------------------------------------------------------------------------------
// CUDA's device-side vocabulary on the host.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#undef __maxnreg__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __maxnreg__(n)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

#define threadIdx (::simt::ctx().thread)
#define blockIdx (::simt::ctx().block)
#define blockDim (::simt::ctx().block_dim)
#define gridDim (::simt::ctx().grid_dim)

inline void __syncthreads(const std::source_location& where = std::source_location::current()) {
  ::simt::syncthreads(where);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) { ::simt::nanosleep_yield(); }
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int offset, int width = 32) {
  if (width != 32) ::simt::fail("__shfl_xor_sync: only width 32 is emulated");
  return ::simt::shfl_xor_sync(mask, v, offset);
}
template <typename T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v, std::memory_order_relaxed); }
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
using std::exp;
using std::fma;
using std::sqrt;

#include "ptx.h"  // host fallbacks of csrc/cuda's inline PTX
