// Device helpers every CUDA kernel of csrc/cuda uses: element conversions between the global
// (c10) types, the accumulator type and the shared-memory operand type, a warp-wide sum, and the
// few PTX instructions the tensor-core conv tile issues (ldmatrix, mma.sync, cp.async), each with
// its host fallback for the CPU-run build (csrc/simt/ptx.h: the per-lane semantics of the PTX ISA).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "platform.h"

namespace shc_cuda {

// ------------------------------------------------------------------------------------------
// Element conversions: global (c10 types) -> accumulator type -> shared-memory operand type.
template <typename A, typename T>
__device__ __forceinline__ A to_acc(T v) {
  return static_cast<A>(v);
}
__device__ __forceinline__ void put(__half& d, float v) { d = __float2half_rn(v); }
__device__ __forceinline__ void put(__nv_bfloat16& d, float v) { d = __float2bfloat16_rn(v); }
__device__ __forceinline__ void put(float& d, float v) { d = v; }
__device__ __forceinline__ void put(double& d, double v) { d = v; }

// Two values rounded to S (__half / __nv_bfloat16), packed in one 32-bit word, lo in the low half.
template <typename S>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  S a, b;
  put(a, lo);
  put(b, hi);
  uint16_t ua, ub;
  memcpy(&ua, &a, 2);
  memcpy(&ub, &b, 2);
  return static_cast<uint32_t>(ua) | (static_cast<uint32_t>(ub) << 16);
}

// The two S values (__half / __nv_bfloat16) of a 32-bit word as floats, lo from the low half.
template <typename S>
__device__ __forceinline__ void unpack2(uint32_t v, float& lo, float& hi) {
  if constexpr (std::is_same_v<S, __nv_bfloat16>) {  // a bf16 is the high half of a float
    const uint32_t a = v << 16, b = v & 0xffff0000u;
    memcpy(&lo, &a, 4);
    memcpy(&hi, &b, 4);
  } else {
    const uint16_t a = static_cast<uint16_t>(v), b = static_cast<uint16_t>(v >> 16);
    __half ha, hb;
    memcpy(static_cast<void*>(&ha), &a, 2);
    memcpy(static_cast<void*>(&hb), &b, 2);
    lo = __half2float(ha);
    hi = __half2float(hb);
  }
}

// p[0], p[1] = a, b as one 8-byte store (p 8-byte aligned); the CPU-run build makes it one 8-byte
// access too, as the emulator's access metrics count it (the host compiler splits a float2).
__device__ __forceinline__ void store_float2(float* p, float a, float b) {
#ifdef SHC_SIMT
  uint32_t ua, ub;
  memcpy(&ua, &a, 4);
  memcpy(&ub, &b, 4);
  *reinterpret_cast<uint64_t*>(p) = static_cast<uint64_t>(ua) | (static_cast<uint64_t>(ub) << 32);
#else
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
#endif
}

// r = the N values at p, or the N values at p = r: a thread's row of a shared tile, which nvcc
// turns into 16-byte accesses (LDS.128 / STS.128 in the SIMT kernels' SASS; p 16-byte aligned).
// The CPU-run build copies the row in 16-byte pieces, so the emulator's access metrics count the
// accesses the GPU makes, not the 4-byte pieces the host compiler splits a copied row into.
template <int N, typename T>
__device__ __forceinline__ void load_row(T (&r)[N], const T* p) {
#ifdef SHC_SIMT
  constexpr int kBytes = N * static_cast<int>(sizeof(T)), kPiece = kBytes % 16 == 0 ? 16 : kBytes;
  for (int b = 0; b < kBytes; b += kPiece)
    memcpy(reinterpret_cast<char*>(r) + b, reinterpret_cast<const char*>(p) + b, kPiece);
#else
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = p[i];
#endif
}
template <int N, typename T>
__device__ __forceinline__ void store_row(T* p, const T (&r)[N]) {
#ifdef SHC_SIMT
  constexpr int kBytes = N * static_cast<int>(sizeof(T)), kPiece = kBytes % 16 == 0 ? 16 : kBytes;
  for (int b = 0; b < kBytes; b += kPiece)
    memcpy(reinterpret_cast<char*>(p) + b, reinterpret_cast<const char*>(r) + b, kPiece);
#else
#pragma unroll
  for (int i = 0; i < N; ++i) p[i] = r[i];
#endif
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ------------------------------------------------------------------------------------------
// PTX: 16-byte cp.async (L2 only, zero-filled when !valid), ldmatrix x4 (.trans) and the
// m16n8k16 tensor-core MMA with fp32 accumulators. Shared pointers are generic pointers into
// __shared__ arrays; ldmatrix rows and cp.async destinations must be 16-byte aligned.
namespace ptx {

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#ifdef SHC_SIMT
  uint4 v{0u, 0u, 0u, 0u};
  if (valid) v = *static_cast<const uint4*>(gmem);  // the source is read at issue
  simt::cp_async_push(smem, &v);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef SHC_SIMT
  simt::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef SHC_SIMT
  void* dst = nullptr;
  uint4 v;
  while (simt::cp_async_next(N, &dst, &v)) *static_cast<uint4*>(dst) = v;  // the copy lands here
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// r[i] <- matrix i of the four 8x8 b16 matrices whose rows the lanes address (lane l: row l % 8
// of matrix l / 8); Trans: each matrix transposed.
template <bool Trans>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* smem_row) {
#ifdef SHC_SIMT
  const uint4 row = *static_cast<const uint4*>(smem_row);  // this lane's row, as the hardware reads it
  simt::ldmatrix_x4<Trans>(r, &row);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  if constexpr (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

// d += A (16x16, row) @ B (16x8, col) over the warp; S: __half or __nv_bfloat16.
template <typename S>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef SHC_SIMT
  simt::mma_16816<S>(d, a, b);
#else
  if constexpr (std::is_same_v<S, __nv_bfloat16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

}  // namespace ptx

}  // namespace shc_cuda
