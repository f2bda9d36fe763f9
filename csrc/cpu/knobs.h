// The CPU kernels' tuning knobs and the choice of method.
// Tuning knobs (environment, read and checked per call; a bad value is an error naming it):
// SHC_CPU_COLS, SHC_CPU_COLS_BWD (GEMM columns per block), SHC_CPU_KROWS (reduction rows per
// block), SHC_CPU_WS_BYTES (per-thread workspace), SHC_CPU_CHUNKS_PER_THREAD (all positive),
// SHC_CPU_NO_BRGEMM (0, or 1: use BLAS), SHC_CPU_METHOD (auto: the faster per shape (default);
// im2col; shift, taps, direct or depthwise, the other methods, wherever they apply; see
// choose_method), SHC_CPU_DIRECT_ISA (auto: the direct and depthwise methods' widest kernels this
// CPU runs (default); avx2: their AVX2 kernels even on an AVX-512 CPU).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_util.h"
#include "depthwise.h"
#include "direct_kernels.h"

namespace shc_cpu {

// The methods of the conv (see choose_method): im2col (any conv), shift (stride-1 3x3,
// padding 1), taps (one group; small output planes), direct (shift's convs, fp32, AVX2+FMA or
// AVX-512 CPUs; its backward is shift's with dx by the direct kernel), depthwise (grouped convs
// with at most 8 input channels per group: depthwise.h).
enum class Method { kAuto, kIm2col, kShift, kTaps, kDirect, kDepthwise };

struct Knobs {
  int64_t krows;       // SHC_CPU_KROWS: reduction rows per block
  int64_t cols;        // SHC_CPU_COLS / SHC_CPU_COLS_BWD: GEMM columns per block
  int64_t ws_bytes;    // SHC_CPU_WS_BYTES: per-thread workspace budget (taps: up to twice, see taps_block)
  int64_t chunks_per_thread;  // SHC_CPU_CHUNKS_PER_THREAD
  bool brgemm;         // brgemm probed OK and not SHC_CPU_NO_BRGEMM=1
  Method method;       // SHC_CPU_METHOD: auto (the faster per shape), im2col, shift, taps or direct (where it applies)
  const direct::Kernel* direct;  // the direct method's widest kernel here (SHC_CPU_DIRECT_ISA=avx2 caps it), or null
  bool backward;                 // read for a backward (cols is SHC_CPU_COLS_BWD)
};

// The knobs for a forward or a backward call, read on the calling thread.
Knobs read_knobs(bool backward);

// The method for this conv (knobs.cpp): SHC_CPU_METHOD where it applies, else the faster per shape.
Method choose_method(const Geom& g, const Knobs& k, size_t elem, bool backward);

// The depthwise method's copy for the direct method's ISA (SHC_CPU_DIRECT_ISA caps both).
inline depthwise::Isa depthwise_isa(const Knobs& k) {
  return depthwise::isa_from_name(k.direct != nullptr ? k.direct->isa : nullptr);
}

}  // namespace shc_cpu
