// pybind11 part of shc_kernels._C. The ops themselves live in the `shc` torch library
// (csrc/shc.cpp); importing this module loads them into torch.ops.shc.
#include <torch/extension.h>

#include <string>

#ifndef SHC_TORCH_VERSION
#define SHC_TORCH_VERSION "unknown"
#endif

namespace {
bool cuda_compiled() {
#ifdef SHC_WITH_CUDA
  return true;
#else
  return false;
#endif
}
std::string built_torch_version() { return SHC_TORCH_VERSION; }
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "shc_kernels compiled ops (torch.ops.shc.*)";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled in");
  m.def("built_torch_version", &built_torch_version,
        "torch.__version__ the extension was compiled against");
}
