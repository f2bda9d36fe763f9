// Registers the CPU kernels of the shc ops (ops.h) for the CPU dispatch key.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(shc, CPU, m) {
  m.impl("shc_conv2d", &shc_cpu::shc_conv2d_cpu);
  m.impl("channel_stats", &shc_cpu::channel_stats_cpu);
  m.impl("channel_stats_backward", &shc_cpu::channel_stats_backward_cpu);
  m.impl("modulated_conv2d", &shc_cpu::modulated_conv2d_cpu);
  m.impl("modulated_conv2d_backward", &shc_cpu::modulated_conv2d_backward_cpu);
  m.impl("shc_conv2d_backward", &shc_cpu::shc_conv2d_backward_cpu);
}
