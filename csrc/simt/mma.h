// Shadow of the toolkit's <mma.h> for the CPU-run build (csrc/simt is first on the include path):
// WMMA m16n16k16 fragments hold each lane's share of the 256 elements, 8 per lane, through one
// mapping per fragment kind (the hardware's, or a scrambled one that catches code assuming a
// particular mapping); mma_sync is warp-collective: lanes publish their shares, meet at a warp
// barrier, and each computes its own outputs in fp32.
#pragma once

#include "simt.h"

namespace simt {
// g_map[kind][lane][e] = row * 16 + col of element e of a lane's share, g_inv[kind][pos] =
// lane * 8 + e; kind 0: matrix_a (row, k), 1: matrix_b (k, col), 2: accumulator (row, col).
extern int g_map[3][32][8];
extern int g_inv[3][256];
inline int fragment_pos(int kind, int lane, int e) { return g_map[kind][lane][e]; }
void set_mapping(Mapping mapping, uint64_t seed);

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else
    return v;
}
template <typename T>
void check_wmma_pointer(const T* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fail(std::string(what) + ": pointer not 256-bit aligned");
  if ((ldm * sizeof(T)) % 16 != 0) fail(std::string(what) + ": ldm not a multiple of 16 bytes");
}
}  // namespace simt

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only m16n16k16 WMMA is emulated");
  static constexpr int num_elements = 8;
  static constexpr int kind = std::is_same_v<Use, matrix_a> ? 0 : std::is_same_v<Use, matrix_b> ? 1 : 2;
  using element_type = T;
  T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = simt::from_float<T>(static_cast<float>(v));
}

// matrix_a / matrix_b: the layout is part of the type.
template <typename Use, typename T, typename L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  simt::check_wmma_pointer(p, ldm, "wmma::load_matrix_sync");
  const int lane = simt::lane_id();
  for (int e = 0; e < f.num_elements; ++e) {
    const int pos = simt::fragment_pos(f.kind, lane, e), r = pos / 16, c = pos % 16;
    f.x[e] = std::is_same_v<L, row_major> ? p[r * ldm + c] : p[r + c * ldm];
  }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  simt::check_wmma_pointer(p, ldm, "wmma::load_matrix_sync");
  const int lane = simt::lane_id();
  for (int e = 0; e < f.num_elements; ++e) {
    const int pos = simt::fragment_pos(2, lane, e), r = pos / 16, c = pos % 16;
    f.x[e] = layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  simt::check_wmma_pointer(p, ldm, "wmma::store_matrix_sync");
  const int lane = simt::lane_id();
  for (int e = 0; e < f.num_elements; ++e) {
    const int pos = simt::fragment_pos(2, lane, e), r = pos / 16, c = pos % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm]) = f.x[e];
  }
}

// d = a @ b + c over the warp: every lane's shares go through the warp's exchange buffer.
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  constexpr int E = 8;
  void* mine_v = nullptr;
  float* all = static_cast<float*>(simt::warp_exchange(3 * E * sizeof(float), &mine_v));
  float* mine = static_cast<float*>(mine_v);
  for (int e = 0; e < E; ++e) {
    mine[e] = simt::to_float(a.x[e]);
    mine[E + e] = simt::to_float(b.x[e]);
    mine[2 * E + e] = c.x[e];
  }
  simt::warp_sync();
  // element (lane l, e) of kind k sits at all[3E * l + E * k + e]
  auto at = [&](int kind, int pos) {
    const int le = simt::g_inv[kind][pos];
    return all[3 * E * (le / E) + E * kind + le % E];
  };
  const int lane = simt::lane_id();
  for (int e = 0; e < E; ++e) {
    const int pos = simt::fragment_pos(2, lane, e), r = pos / 16, col = pos % 16;
    float acc = at(2, pos);
    for (int k = 0; k < 16; ++k) acc = std::fma(at(0, r * 16 + k), at(1, k * 16 + col), acc);
    d.x[e] = acc;
  }
}
}  // namespace wmma
}  // namespace nvcuda
