// The hypernetwork of the fused layer (shc::shc_conv2d): m = sigmoid(fc2(relu(fc1(z)))) per sample,
// z = cat(mu, sigma).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>

#include "cpu_util.h"

namespace shc_cpu {

// The hypernetwork on nb rows of z (2D each): h = relu(z fc1^T + b1) (hid each), m = sigmoid(h
// fc2^T + b2) (T each); fc1 (hid x 2D) is the weight as it is, fc2t (hid x T) transposed, a null
// bias is zero. With fc1t (2D x hid, fc1 transposed) h is one GEMM of nb rows; with fc1t null, h^T =
// fc1 z^T, fc1 read in place and only z's rows and h^T transposed.
template <typename T>
void hyper_rows(const T* z, int64_t nb, int64_t D2, int64_t hid, int64_t taps, const T* fc1, const T* fc1t,
                const T* b1, const T* fc2t, const T* b2, bool brgemm, T* h, T* m);

// The hypernetwork's parameters for hyper_rows, in the compute type, the biases undefined where
// absent. fc1 (D/2 x 2D at the default width: D^2 values) is transposed only for blocks of fewer
// than kInPlaceRows samples, once per op call, on first use: a block of many samples multiplies
// fc1 in place (h^T = fc1 z^T), where transposing it on every call (1.8 MB at 672 channels) cost
// as much as the GEMM; for a block of one or a few samples that GEMM has a vector lane per sample.
struct HyperParams {
  static constexpr int64_t kInPlaceRows = 8;
  at::Tensor fc1, b1, fc2t, b2;
  HyperParams(const at::Tensor& fc1_weight, const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
              const std::optional<at::Tensor>& fc2_bias, at::ScalarType ct) {
    const auto opt = [ct](const std::optional<at::Tensor>& t) {
      return t.has_value() && t->defined() ? t->to(ct).contiguous() : at::Tensor();
    };
    fc1 = fc1_weight.to(ct).contiguous();
    fc2t = fc2_weight.to(ct).t().contiguous();
    b1 = opt(fc1_bias), b2 = opt(fc2_bias);
  }
  // rows [n0, n0 + nb) of h and m from those of z (from any thread)
  template <typename S>
  void rows(const at::Tensor& z, int64_t n0, int64_t nb, bool brgemm, at::Tensor& h, at::Tensor& m) const {
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<S>() : nullptr; };
    const int64_t D2 = z.size(1), hid = h.size(1), taps = m.numel() / std::max<int64_t>(1, m.size(0));
    const S* f1t = nb >= kInPlaceRows ? nullptr : transposed_fc1().template const_data_ptr<S>();
    hyper_rows<S>(z.const_data_ptr<S>() + n0 * D2, nb, D2, hid, taps, fc1.const_data_ptr<S>(), f1t, ptr(b1),
                  ptr(fc2t), ptr(b2), brgemm, h.mutable_data_ptr<S>() + n0 * hid,
                  m.mutable_data_ptr<S>() + n0 * taps);
  }

 private:
  mutable std::once_flag fc1t_once_;
  mutable at::Tensor fc1t_;
  // fc1 transposed (2D x hid) by cpu_util's transpose (8x8 register tiles; ATen's
  // t().contiguous() was several times slower), made once
  const at::Tensor& transposed_fc1() const {
    std::call_once(fc1t_once_, [&] {
      at::Tensor t = at::empty({fc1.size(1), fc1.size(0)}, fc1.options());
      AT_DISPATCH_FLOATING_TYPES(fc1.scalar_type(), "shc_hyper_fc1t", [&] {
        transpose<scalar_t>(fc1.size(0), fc1.size(1), fc1.const_data_ptr<scalar_t>(), fc1.size(1),
                            t.mutable_data_ptr<scalar_t>(), fc1.size(0));
      });
      fc1t_ = std::move(t);
    });
    return fc1t_;
  }
};

}  // namespace shc_cpu
