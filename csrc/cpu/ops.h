// The CPU kernels of the shc ops (schemas: csrc/shc.cpp), registered for the CPU key in register.cpp.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace shc_cpu {

// modulated_conv.cpp
at::Tensor modulated_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& m,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask);

// stats.cpp
std::tuple<at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& x, double eps);
at::Tensor channel_stats_backward_cpu(const at::Tensor& grad_mu, const at::Tensor& grad_sigma,
                                      const at::Tensor& x, const at::Tensor& mu,
                                      const at::Tensor& sigma);

// shc_layer.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shc_conv2d_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
    const std::optional<at::Tensor>& fc2_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, c10::string_view grad_route);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
shc_conv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& m, const at::Tensor& z, const at::Tensor& h,
                        const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups, c10::string_view grad_route, std::array<bool, 7> output_mask);

}  // namespace shc_cpu
