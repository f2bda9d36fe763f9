// The tuning knobs (knobs.h), read from the environment, and choose_method.
#include "knobs.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "direct.h"
#include "methods.h"

namespace shc_cpu {
namespace {

// Tuning knobs, read from the environment once per op call, on the calling thread, and checked:
// a bad value is an error naming the variable (it used to be a division by zero).
int64_t env_int(const char* name, int64_t dflt, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  char* end = nullptr;
  errno = 0;
  const long long r = std::strtoll(v, &end, 10);
  TORCH_CHECK(errno == 0 && end != v && *end == '\0' && r >= lo && r <= hi, "environment variable ", name,
              " must be an integer in [", lo, ", ", hi, "], got '", v, "'");
  return static_cast<int64_t>(r);
}

Method env_method() {
  const char* v = std::getenv("SHC_CPU_METHOD");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Method::kAuto;
  if (std::strcmp(v, "im2col") == 0) return Method::kIm2col;
  if (std::strcmp(v, "shift") == 0) return Method::kShift;
  if (std::strcmp(v, "taps") == 0) return Method::kTaps;
  if (std::strcmp(v, "direct") == 0) return Method::kDirect;
  if (std::strcmp(v, "depthwise") == 0) return Method::kDepthwise;
  TORCH_CHECK(false,
              "environment variable SHC_CPU_METHOD must be auto, im2col, shift, taps, direct or depthwise, got '", v,
              "'");
}

}  // namespace

Knobs read_knobs(bool backward) {
  Knobs k{};
  // 64 reduction rows (7 channels of a 3x3): the im2col block and the GEMM's C stay in a 512 KiB
  // L2 while the next block is built (256 rows were slower on every ResNet/Plain-10 shape).
  k.krows = env_int("SHC_CPU_KROWS", 64, 1, 1 << 20);
  k.cols = env_int(backward ? "SHC_CPU_COLS_BWD" : "SHC_CPU_COLS", 512, 1, 1 << 24);
  k.ws_bytes = env_int("SHC_CPU_WS_BYTES", 4 << 20, 1, int64_t(1) << 40);
  k.chunks_per_thread = env_int("SHC_CPU_CHUNKS_PER_THREAD", 2, 1, 1 << 20);
  const int64_t no_brgemm = env_int("SHC_CPU_NO_BRGEMM", 0, 0, 1);
  k.brgemm = no_brgemm == 0 && brgemm_f32_ok();
  k.method = env_method();
  const char* isa = std::getenv("SHC_CPU_DIRECT_ISA");
  const bool cap = isa != nullptr && *isa != '\0' && std::strcmp(isa, "auto") != 0;
  TORCH_CHECK(!cap || std::strcmp(isa, "avx2") == 0,
              "environment variable SHC_CPU_DIRECT_ISA must be auto or avx2, got '", isa, "'");
  k.direct = direct::kernel(cap);
  k.backward = backward;
  return k;
}

// The rules (their measurements: docs/cpu_methods.md, bench/ab_methods.py):
// - shift beats im2col for stride-1 planes of 7x7 and more with C * D <= 64 * 64 while a sample's
//   output (C x H x (W+1)) stays within a 512 KiB L2 (past it, it streams from memory nine times);
//   it is slower with 128 channels and for a 3-channel input;
// - taps beats both on output planes up to 8x8 with 8+ input channels and 8+ samples per block,
//   and is far slower on large planes (a block there holds 1-2 samples);
// - direct beats shift and im2col on the shift method's planes above 8x8 up to 128 x 128
//   channels, forward and fwd+bwd, with AVX-512 and with AVX2, and on stride 2 above 8x8
//   outputs; its backward (shift's) loses to im2col's on a 3-channel input, where its forward
//   wins. Up to 256 x 256 channels with AVX-512 (Kernel::max_cd), where 512 x 512 loses (its
//   panel is 9 MiB a sample); 128 x 128 with AVX2;
// - the direct method's rows tile (rows_path, AVX-512, 32+ output channels) also beats taps in the
//   forward on planes of 8x8 up to 128 x 128 channels and 7x7 up to 64 x 128, not with more
//   channels or smaller planes: there a sample's scaled panel is written for few positions, where
//   taps shares one per block.
Method choose_method(const Geom& g, const Knobs& k, size_t elem, bool backward) {
  const bool direct_ok = (shift_taps(g) || (!backward && direct_stride2(g))) && elem == sizeof(float) &&
                         k.direct != nullptr;
  // depthwise (csrc/cpu/depthwise.h): grouped convs with few input channels per group, where the
  // other methods are im2col's per-group GEMMs of a 1-8 channel panel (bench/results/cpu_grouped.md)
  if ((k.method == Method::kAuto || k.method == Method::kDepthwise) && depthwise::applies(g))
    return Method::kDepthwise;
  if (k.method == Method::kDirect && direct_ok) return Method::kDirect;
  if (k.method == Method::kShift && shift_taps(g)) return Method::kShift;
  if (k.method == Method::kTaps && taps_apply(g)) return Method::kTaps;
  if (k.method != Method::kAuto) return Method::kIm2col;
  if (!backward && direct_ok && rows_path(g, *k.direct, g.C) &&
      ((g.P >= 64 && g.C * g.D <= 128 * 128) || (g.P >= 49 && g.C * g.D <= 64 * 128)))
    return Method::kDirect;
  if (taps_apply(g) && g.P <= 64 && g.D >= 8 && taps_block(g, elem, k) >= 8) return Method::kTaps;
  if (direct_ok && g.C * g.D <= k.direct->max_cd && (!backward || g.D >= 8)) return Method::kDirect;
  if (shift_taps(g) && g.D >= 8 && g.C * g.D <= 64 * 64 && g.H >= 7 && g.W >= 7 &&
      g.C * g.H * (g.W + 1) <= 128 * 1024)
    return Method::kShift;
  return Method::kIm2col;
}

}  // namespace shc_cpu
