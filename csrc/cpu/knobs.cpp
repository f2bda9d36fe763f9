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
  TORCH_CHECK(false, "environment variable SHC_CPU_METHOD must be auto, im2col, shift, taps or direct, got '", v,
              "'");
}

}  // namespace

Knobs read_knobs(bool backward) {
  Knobs k{};
  // 64 reduction rows (7 channels of a 3x3): the im2col block and the GEMM's C stay in a 512 KiB
  // L2 while the next block is built (256 rows measured 10-40% slower on every ResNet/Plain-10 shape).
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

// Measured one thread, batch 128 and 32, ratios of the minima to F.conv2d (python
// bench/ab_methods.py, bench/results/cpu_methods_ab_b{128,32}_2026-12-03.md; the shift/im2col A/B
// of 2026-12-02 in cpu_shift_ab_b*_2026-12-02.md):
// - shift beats im2col for stride-1 planes of 7x7 and more with C * D <= 64 * 64 (16>16@28, batch
//   128: forward 0.81x against 0.90x, fwd+bwd 0.83x against 1.09x) while a sample's output
//   (C x H x (W+1)) stays within a 512 KiB L2: at 64>64@56 it streams from memory nine times
//   (1.43x against 0.96x forward); slower with 128 channels (128>128@8: 1.49x against 1.05x) and
//   for a 3-channel input;
// - taps beats both on output planes up to 8x8 with 8+ input channels and 8+ samples per block
//   (128>128@4, batch 128: forward 0.73x against im2col's 1.20x, fwd+bwd 0.72x against 1.26x;
//   64>128@7/2: 0.74x against 1.24x; 64>64@7, batch 32, blocks of 8 samples: 0.98x against
//   shift's 1.16x, fwd+bwd 1.02x against 1.24x) and is far slower on large planes (a block there
//   holds 1-2 samples: 4.3x at 16>16@28).
// - direct (bench/results/cpu_methods_ab_b{32,128}_2026-12-04.md: AMD EPYC with AVX-512;
//   cpu_methods_ab_b32_avx2_2026-12-04.md: the same machine with oneDNN, MKL and the direct
//   kernel capped at AVX2) beats shift and im2col on the shift method's planes above 8x8 up to
//   128 x 128 channels, forward and fwd+bwd, on both ISAs (AVX-512, batch 32, forward: 16>16@28
//   0.83x against shift's 1.05x, 32>32@14 1.00x against 1.12x, 64>64@56 0.85x against im2col's
//   1.00x, 128>128@28 0.96x against shift's 1.08x; AVX2: 0.65x against 0.75x, 0.97x against
//   1.00x, 0.97x against 1.04x) and on stride 2 above 8x8 outputs (16>32@28/2: 0.96x against
//   im2col's 1.18x; 32>64@14/2, 7x7 out: 1.23x against taps' 0.86x); its backward (shift's) loses
//   to im2col's on a 3-channel input (fwd+bwd 0.75x against 0.71x), where its forward wins (0.73x
//   against 1.11x). Up to 256 x 256 channels with AVX-512 (Kernel::max_cd; since its tail kernel
//   and the phase split per plane, the layer, one thread, direct against im2col, median of paired
//   runs in one process, batch 32: 256>256@14 forward 0.92, fwd+bwd 0.93; 256>256@16 0.91 and
//   0.93; 128>256@14 0.88; stride 2 128>256@32/2 0.81, 256>256@28/2 0.92; batch 128 256>256@14
//   0.85), where 512 x 512 loses (its panel, 9 MiB a sample: 512>512@14 batch 8 1.12 and 1.21,
//   512>512@28/2 1.20); 128 x 128 with AVX2 (oneDNN, MKL and the kernel capped at AVX2: 256>256@14
//   forward 1.08, 256>256@28/2 1.15).
// - the direct method's rows tile (rows_path, AVX-512, 32+ output channels) also beats taps in the
//   forward on planes of 8x8 up to 128 x 128 channels and 7x7 up to 64 x 128
//   (bench/results/cpu_ab_rows_2026-12-07.md, one thread, batch 32, against taps: 32>32@8 0.98x
//   against 1.30x, 128>128@8 1.06x against 1.14x, 64>64@7 1.10x against 1.14x, 32>64@16/2 1.05x
//   against 1.15x, 32>64@14/2 0.91x against 1.00x), not with more channels or smaller planes
//   (128>128@7 1.19x against 1.09x, 256>256@7 1.17x against 1.08x, 64>64@4 1.39x against 1.09x):
//   there a sample's scaled panel is written for few positions, where taps shares one per block.
Method choose_method(const Geom& g, const Knobs& k, size_t elem, bool backward) {
  const bool direct_ok = (shift_taps(g) || (!backward && direct_stride2(g))) && elem == sizeof(float) &&
                         k.direct != nullptr;
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
