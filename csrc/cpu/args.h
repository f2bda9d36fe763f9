// Argument checking and layout handling shared by the CPU op kernels (args.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../conv_geometry.h"
#include "cpu_util.h"

namespace shc_cpu {

using shc::compute_type;

// t is a CPU tensor (name: the argument's name in the error).
void check_cpu(const at::Tensor& t, const char* name);

// The conv's geometry from checked CPU arguments, within the CPU kernel's size limits.
Geom make_geom(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
               int64_t groups, const char* op);

// Write `src` (NCHW-contiguous, compute dtype) into a fresh tensor of `like`'s dtype laid out in
// `fmt`; returns src itself when that already is the requested dtype and layout.
at::Tensor finish(const at::Tensor& src, at::ScalarType dtype, at::MemoryFormat fmt);

// grad_y is a floating-point CPU tensor of the conv's output shape.
void check_grad_y(const at::Tensor& grad_y, const Geom& g, const char* op);

// The conv's bias checked and in the compute type (undefined when there is none).
at::Tensor conv_bias(const std::optional<at::Tensor>& bias, const Geom& g, at::ScalarType ct, const char* op);

}  // namespace shc_cpu
