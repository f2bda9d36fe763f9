// The hypernetwork of the fused layer (shc::shc_conv2d): m = sigmoid(fc2(relu(fc1(z)))) per sample,
// z = cat(mu, sigma).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "cpu_util.h"

namespace shc_cpu {

// The hypernetwork on nb rows of z (2D each): h = relu(z fc1^T + b1) (hid each), m = sigmoid(h
// fc2^T + b2) (T each); fc1t (2D x hid) and fc2t (hid x T) are the weights transposed, a null bias
// is zero.
template <typename T>
void hyper_rows(const T* z, int64_t nb, int64_t D2, int64_t hid, int64_t taps, const T* fc1t, const T* b1,
                const T* fc2t, const T* b2, bool brgemm, T* h, T* m);

// The hypernetwork's parameters for hyper_rows, in the compute type: the weights transposed, the
// biases undefined where absent.
struct HyperParams {
  at::Tensor fc1t, b1, fc2t, b2;
  HyperParams(const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
              const std::optional<at::Tensor>& fc2_bias, at::ScalarType ct) {
    const auto opt = [ct](const std::optional<at::Tensor>& t) {
      return t.has_value() && t->defined() ? t->to(ct).contiguous() : at::Tensor();
    };
    // fc1 (D/2 x 2D at the default width: D^2 values) by cpu_util's transpose (8x8 register tiles):
    // ATen's t().contiguous() was 0.3-0.5 ms of a 4 ms 672-channel 7x7 forward (batch 32, one
    // thread), and BLAS reading fc1 transposed in place repacked it on every block of samples.
    const at::Tensor fc1 = fc1_weight.to(ct).contiguous();
    fc1t = at::empty({fc1.size(1), fc1.size(0)}, fc1.options());
    AT_DISPATCH_FLOATING_TYPES(ct, "shc_hyper_fc1t", [&] {
      transpose<scalar_t>(fc1.size(0), fc1.size(1), fc1.const_data_ptr<scalar_t>(), fc1.size(1),
                          fc1t.mutable_data_ptr<scalar_t>(), fc1.size(0));
    });
    fc2t = fc2_weight.to(ct).t().contiguous();
    b1 = opt(fc1_bias), b2 = opt(fc2_bias);
  }
  // rows [n0, n0 + nb) of h and m from those of z
  template <typename S>
  void rows(const at::Tensor& z, int64_t n0, int64_t nb, bool brgemm, at::Tensor& h, at::Tensor& m) const {
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<S>() : nullptr; };
    const int64_t D2 = z.size(1), hid = h.size(1), taps = m.numel() / std::max<int64_t>(1, m.size(0));
    hyper_rows<S>(z.const_data_ptr<S>() + n0 * D2, nb, D2, hid, taps, ptr(fc1t), ptr(b1), ptr(fc2t), ptr(b2), brgemm,
                  h.mutable_data_ptr<S>() + n0 * hid, m.mutable_data_ptr<S>() + n0 * taps);
  }
};

}  // namespace shc_cpu
