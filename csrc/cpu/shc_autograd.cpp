// shc::shc_conv2d's autograd on the CPU, in C++ (registered for AutogradCPU; the other devices
// keep the Python formula that shc_kernels/ops.py registers for Autograd). A training step then
// runs no Python between the layer's forward and backward kernels: torch.library's Python
// autograd wrapper cost more per layer than F.conv2d's whole forward+backward at small sizes.
//
// First-order backward (no graph of the backward wanted, only y's gradient arriving) is the
// one-call shc::shc_conv2d_backward. Otherwise (create_graph=True, or gradients reaching m, z or
// h) it is shc::shc_conv2d_grad, which shc_kernels/ops.py composes of differentiable ops, so
// every order of derivative keeps working. Both are called through the dispatcher, so fake
// tensors (torch.compile) reach their fake kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace shc_cpu {
namespace {

using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LayerSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const OptTensor&, const Tensor&,
    const OptTensor&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t, double, c10::string_view);
using BackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t, c10::string_view, std::array<bool, 7>);
using GradSig = std::vector<Tensor>(const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef,
                                    int64_t, c10::string_view, std::array<bool, 3>, std::array<bool, 7>);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

OptTensor optional_grad(const Tensor& g) { return g.defined() ? OptTensor(g) : std::nullopt; }

struct LayerFunction : public torch::autograd::Function<LayerFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                               const Tensor& fc1_weight, const OptTensor& fc1_bias, const Tensor& fc2_weight,
                               const OptTensor& fc2_bias, IntArrayRef stride, IntArrayRef padding,
                               IntArrayRef dilation, int64_t groups, double eps, c10::string_view grad_route) {
    static const auto op = find_op<LayerSig>("shc::shc_conv2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, m, z, h] = op.call(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride, padding,
                                dilation, groups, eps, grad_route);
    ctx->save_for_backward({x, weight, fc1_weight, fc2_weight, m, z, h});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["grad_route"] = std::string(grad_route);
    ctx->saved_data["bias"] = present(bias);
    ctx->saved_data["fc1_bias"] = present(fc1_bias);
    ctx->saved_data["fc2_bias"] = present(fc2_bias);
    // Outputs nobody differentiates (m, z, h almost always) reach the backward undefined.
    ctx->set_materialize_grads(false);
    return {y, m, z, h};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &fc1_weight = saved[2], &fc2_weight = saved[3];
    const Tensor &m = saved[4], &z = saved[5], &h = saved[6];
    const std::array<bool, 3> has_bias = {ctx->saved_data["bias"].toBool(), ctx->saved_data["fc1_bias"].toBool(),
                                          ctx->saved_data["fc2_bias"].toBool()};
    // needs_input_grad counts the tensor inputs only: x, weight, [bias], fc1_weight, [fc1_bias], ...
    const std::array<bool, 7> is_tensor = {true, true, has_bias[0], true, has_bias[1], true, has_bias[2]};
    std::array<bool, 7> mask{};
    size_t edge = 0;
    for (size_t i = 0; i < 7; ++i) mask[i] = is_tensor[i] && ctx->needs_input_grad(edge++);
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const std::string route = ctx->saved_data["grad_route"].toStringRef();
    const Tensor &gy = grads[0], &gm = grads[1], &gz = grads[2], &gh = grads[3];

    std::vector<Tensor> out;
    if (!at::GradMode::is_enabled() && gy.defined() && !gm.defined() && !gz.defined() && !gh.defined()) {
      static const auto op = find_op<BackwardSig>("shc::shc_conv2d_backward");
      const auto r = op.call(gy, x, weight, m, z, h, fc1_weight, fc2_weight, stride, padding, dilation, groups,
                             route, mask);
      out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r),
             std::get<4>(r), std::get<5>(r), std::get<6>(r)};
    } else {
      static const auto op = find_op<GradSig>("shc::shc_conv2d_grad");
      out = op.call(optional_grad(gy), optional_grad(gm), optional_grad(gz), optional_grad(gh), x, weight, m, z,
                    h, fc1_weight, fc2_weight, stride, padding, dilation, groups, route, has_bias, mask);
    }
    TORCH_CHECK(out.size() == 7, "shc::shc_conv2d's backward: expected 7 gradients, got ", out.size());
    variable_list result(13);  // one per forward argument; the 6 non-tensor ones get none
    for (size_t i = 0; i < 7; ++i)
      if (mask[i]) result[i] = out[i];
    return result;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> shc_conv2d_autograd(
    const Tensor& x, const Tensor& weight, const OptTensor& bias, const Tensor& fc1_weight,
    const OptTensor& fc1_bias, const Tensor& fc2_weight, const OptTensor& fc2_bias, IntArrayRef stride,
    IntArrayRef padding, IntArrayRef dilation, int64_t groups, double eps, c10::string_view grad_route) {
  const variable_list r = LayerFunction::apply(x, weight, bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, stride,
                                               padding, dilation, groups, eps, grad_route);
  return std::make_tuple(r[0], r[1], r[2], r[3]);
}

}  // namespace
}  // namespace shc_cpu

TORCH_LIBRARY_IMPL(shc, AutogradCPU, m) { m.impl("shc_conv2d", &shc_cpu::shc_conv2d_autograd); }
