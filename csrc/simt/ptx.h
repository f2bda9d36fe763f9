// Host fallbacks of the inline PTX in csrc/cuda (device_common.cuh, namespace shc_cuda::ptx) for
// the CPU-run build: warp-collective ldmatrix and mma.sync with the per-lane semantics the PTX ISA
// documents, and cp.async as a per-thread queue of copies that land when a wait covers them.
//
//   ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16  lane l supplies the address of row l % 8 of
//       matrix l / 8; it receives, of matrix i, in r[i]: the 32-bit word l % 4 of row l / 4
//       (elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1)); with .trans the elements (2(l%4), l/4) and
//       (2(l%4)+1, l/4), the lower-numbered in the low half.
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32  with g = l / 4, t = l % 4:
//       A (16x16): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//       B (16x8, k x n): b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8..2t+9, n g)
//       C/D (16x8): d[0], d[1] = (g, 2t), (g, 2t+1); d[2], d[3] = (g+8, 2t), (g+8, 2t+1)
//   cp.async.cg.shared.global 16 bytes (zero-filled when the source size is 0), commit_group,
//       wait_group N: the source is read when the copy is issued, the shared destination written
//       only when a wait_group releases its group (the latest a GPU may land it), so a read of a
//       stage before its wait sees the poisoned or stale bytes; a thread that exits with copies
//       pending is an error.
// tests/sim/test_emulator.py checks these against the documented layouts lane by lane.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace simt {

// cp.async queue of the running CUDA thread (simt_runtime.cpp).
void cp_async_push(void* dst, const void* data16);
void cp_async_commit();
// The next copy that a wait_group `keep` must land (false: none left), in issue order.
bool cp_async_next(int keep, void** dst, void* data16);

// The 16 bytes `row` this lane read at its ldmatrix address -> its four fragment registers.
template <bool Trans>
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  stats().ldmatrix.fetch_add(1, std::memory_order_relaxed);
  void* mine = nullptr;
  const unsigned char* all = static_cast<const unsigned char*>(warp_exchange(16, &mine));
  std::memcpy(mine, row, 16);
  warp_sync();
  const int l = lane_id();
  for (int i = 0; i < 4; ++i) {
    if (!Trans) {
      std::memcpy(&r[i], all + 16 * (8 * i + l / 4) + 4 * (l % 4), 4);
    } else {
      uint16_t lo, hi;
      std::memcpy(&lo, all + 16 * (8 * i + 2 * (l % 4)) + 2 * (l / 4), 2);
      std::memcpy(&hi, all + 16 * (8 * i + 2 * (l % 4) + 1) + 2 * (l / 4), 2);
      r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

inline float b16_to_float(uint16_t v, bool bf16) {
  if (bf16) {
    const uint32_t w = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &w, 4);
    return f;
  }
  __half h;
  std::memcpy(static_cast<void*>(&h), &v, 2);
  return __half2float(h);
}

// d += A @ B for one m16n8k16 tile over the warp (fp32 accumulation, k in order).
template <typename S>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>, "f16 or bf16 operands");
  constexpr bool bf16 = std::is_same_v<S, __nv_bfloat16>;
  stats().mma_sync.fetch_add(1, std::memory_order_relaxed);
  void* mine = nullptr;
  const unsigned char* all = static_cast<const unsigned char*>(warp_exchange(24, &mine));
  std::memcpy(mine, a, 16);
  std::memcpy(static_cast<unsigned char*>(mine) + 16, b, 8);
  warp_sync();
  auto half_at = [&](int lane, int word, int half) {
    uint16_t v;
    std::memcpy(&v, all + 24 * lane + 4 * word + 2 * half, 2);
    return b16_to_float(v, bf16);
  };
  auto A = [&](int row, int k) { return half_at((row % 8) * 4 + (k % 8) / 2, row / 8 + 2 * (k / 8), k % 2); };
  auto B = [&](int k, int n) { return half_at(n * 4 + (k % 8) / 2, 4 + k / 8, k % 2); };
  const int l = lane_id(), g = l / 4, t = l % 4;
  for (int q = 0; q < 4; ++q) {
    const int row = g + 8 * (q / 2), col = 2 * t + q % 2;
    float acc = d[q];
    for (int k = 0; k < 16; ++k) acc = std::fma(A(row, k), B(k, col), acc);
    d[q] = acc;
  }
}

}  // namespace simt
