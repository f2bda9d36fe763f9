// shc_kernels._C_sim: csrc/cuda's kernels compiled as host C++ against the SIMT layer (simt.h),
// in one translation unit (build.py; `make cuda-sim`). Registers the shc op schemas under
// `shc_sim` with CPU kernels that run the CUDA kernels through the emulator, and exposes
// configure() / counters() to pick the emulation settings. Test-only: never in the wheel.
#ifndef SHC_SIMT
#error "build with -DSHC_SIMT (tools/simt_build.py)"
#endif
#include <Python.h>

// Toolkit and ATen headers first: simt.h then defines CUDA's builtins as macros.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "simt.h"
#include "mma.h"
#include "simt_runtime.cpp"

#include "../shc.cpp"
#include "../cuda/shc_cuda.cu"
#include "../cuda/fused_shc.cu"

#include "emulator_checks.cpp"

// ------------------------------------------------------------------------------------------
// Python module.
namespace {

PyObject* settings_dict() {
  const simt::Config& c = simt::config();
  const char* order = c.order == simt::Order::forward ? "forward" : c.order == simt::Order::reverse ? "reverse" : "shuffled";
  return Py_BuildValue("{s:i,s:i,s:i,s:s,s:s,s:K,s:d}", "sm_count", c.sm_count, "occupancy", c.occupancy,
                       "live_blocks", c.live_blocks, "order", order, "mapping",
                       c.mapping == simt::Mapping::hardware ? "hardware" : "scrambled", "seed",
                       static_cast<unsigned long long>(c.seed), "spin_timeout", c.spin_timeout_s);
}

PyObject* configure(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* names[] = {"sm_count", "occupancy", "live_blocks", "order", "mapping", "seed", "spin_timeout",
                                nullptr};
  PyObject *sm = Py_None, *occ = Py_None, *live = Py_None, *order = Py_None, *mapping = Py_None, *seed = Py_None,
           *timeout = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOOOOO", const_cast<char**>(names), &sm, &occ, &live, &order,
                                   &mapping, &seed, &timeout))
    return nullptr;
  simt::Config c = simt::config();
  auto positive = [](PyObject* o, const char* name, int& out) {
    if (o == Py_None) return true;
    const long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return false;
    if (v < 1 || v > 4096) {
      PyErr_Format(PyExc_ValueError, "configure: %s must be an integer in [1, 4096], got %ld", name, v);
      return false;
    }
    out = static_cast<int>(v);
    return true;
  };
  if (!positive(sm, "sm_count", c.sm_count) || !positive(occ, "occupancy", c.occupancy) ||
      !positive(live, "live_blocks", c.live_blocks))
    return nullptr;
  if (c.live_blocks > 64) {
    PyErr_SetString(PyExc_ValueError, "configure: live_blocks must be at most 64 (one OS thread each)");
    return nullptr;
  }
  if (order != Py_None) {
    const char* s = PyUnicode_Check(order) ? PyUnicode_AsUTF8(order) : nullptr;
    const std::string o = s ? s : "";
    if (o == "forward") c.order = simt::Order::forward;
    else if (o == "reverse") c.order = simt::Order::reverse;
    else if (o == "shuffled") c.order = simt::Order::shuffled;
    else {
      PyErr_SetString(PyExc_ValueError, "configure: order must be 'forward', 'reverse' or 'shuffled'");
      return nullptr;
    }
  }
  if (mapping != Py_None) {
    const char* s = PyUnicode_Check(mapping) ? PyUnicode_AsUTF8(mapping) : nullptr;
    const std::string m = s ? s : "";
    if (m == "hardware") c.mapping = simt::Mapping::hardware;
    else if (m == "scrambled") c.mapping = simt::Mapping::scrambled;
    else {
      PyErr_SetString(PyExc_ValueError, "configure: mapping must be 'hardware' or 'scrambled'");
      return nullptr;
    }
  }
  if (seed != Py_None) {
    const unsigned long long v = PyLong_AsUnsignedLongLongMask(seed);
    if (PyErr_Occurred()) return nullptr;
    c.seed = v;
  }
  if (timeout != Py_None) {
    const double v = PyFloat_AsDouble(timeout);
    if (PyErr_Occurred()) return nullptr;
    if (!(v > 0)) {
      PyErr_SetString(PyExc_ValueError, "configure: spin_timeout must be positive (seconds)");
      return nullptr;
    }
    c.spin_timeout_s = v;
  }
  simt::config() = c;
  simt::set_mapping(c.mapping, c.seed);
  return settings_dict();
}

PyObject* settings(PyObject*, PyObject*) { return settings_dict(); }

PyObject* counters(PyObject*, PyObject*) {
  simt::Stats& s = simt::stats();
  return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "launches", static_cast<long long>(s.launches.load()),
                       "blocks", static_cast<long long>(s.blocks.load()), "barriers",
                       static_cast<long long>(s.barriers.load()), "max_live", static_cast<long long>(s.max_live.load()),
                       "cp_async", static_cast<long long>(s.cp_async.load()), "ldmatrix",
                       static_cast<long long>(s.ldmatrix.load()), "mma_sync", static_cast<long long>(s.mma_sync.load()));
}

PyObject* reset_counters(PyObject*, PyObject*) {
  simt::Stats& s = simt::stats();
  s.launches = 0;
  s.blocks = 0;
  s.barriers = 0;
  s.max_live = 0;
  s.cp_async = 0;
  s.ldmatrix = 0;
  s.mma_sync = 0;
  Py_RETURN_NONE;
}

PyObject* sanitizer(PyObject*, PyObject*) {
#if SIMT_TSAN
  return PyUnicode_FromString("thread");
#elif SIMT_ASAN
  return PyUnicode_FromString("address");
#else
  Py_RETURN_NONE;
#endif
}

// Memory-access totals per site (simt_metrics.h), for tools/gpu_model_sim.py.
PyObject* access_metrics(PyObject*, PyObject*) {
#if SIMT_METRICS
  simt::Metrics& m = simt::metrics();
  std::lock_guard<std::mutex> lock(m.mu);
  PyObject* out = PyList_New(0);
  if (out == nullptr) return nullptr;
  for (const auto& [k, v] : m.sites) {
    PyObject* d = Py_BuildValue(
        "{s:K,s:I,s:O,s:O,s:L,s:L,s:L,s:L,s:L,s:L}", "offset",
        static_cast<unsigned long long>(k.site - simt::module_base()), "size", k.size, "store",
        (k.flags & 1) ? Py_True : Py_False, "shared", (k.flags & 2) ? Py_True : Py_False, "requests",
        static_cast<long long>(v.requests), "lanes", static_cast<long long>(v.lanes), "bytes",
        static_cast<long long>(v.bytes), "sectors", static_cast<long long>(v.sectors), "wavefronts",
        static_cast<long long>(v.wavefronts), "ideal", static_cast<long long>(v.ideal));
    if (d == nullptr || PyList_Append(out, d) != 0) {
      Py_XDECREF(d);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(d);
  }
  return out;
#else
  PyErr_SetString(PyExc_RuntimeError, "access metrics need the metrics build (tools/gpu_model_sim.py)");
  return nullptr;
#endif
}

PyObject* reset_access_metrics(PyObject*, PyObject*) {
#if SIMT_METRICS
  simt::Metrics& m = simt::metrics();
  std::lock_guard<std::mutex> lock(m.mu);
  m.sites.clear();
#endif
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"configure", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&configure)), METH_VARARGS | METH_KEYWORDS,
     "configure(*, sm_count=None, occupancy=None, live_blocks=None, order=None, mapping=None, seed=None, "
     "spin_timeout=None) -> dict\n\n"
     "Emulation settings for the following launches (None keeps a setting); returns all of them.\n"
     "sm_count: what cudaDevAttrMultiProcessorCount reports (132: an H100); occupancy: what\n"
     "cudaOccupancyMaxActiveBlocksPerMultiprocessor reports; live_blocks: blocks running at once, each\n"
     "on its own OS thread; order: 'forward', 'reverse' or 'shuffled' (seeded), the order the threads\n"
     "of a block are resumed in; mapping: 'hardware' or 'scrambled' (seeded) WMMA fragment element\n"
     "mapping; spin_timeout: seconds a __nanosleep spin may last before it is reported as a hang."},
    {"settings", settings, METH_NOARGS, "The current emulation settings."},
    {"counters", counters, METH_NOARGS, "Launches, blocks and block barriers run; the most blocks live at once; lane calls of cp.async, ldmatrix, mma.sync."},
    {"reset_counters", reset_counters, METH_NOARGS, "Zero the counters."},
    {"sanitizer", sanitizer, METH_NOARGS, "'thread' or 'address' for a sanitizer build, else None."},
    {"access_metrics", access_metrics, METH_NOARGS,
     "Per instrumented site (offset in this module, access size, store, shared): warp-wide requests, active\n"
     "lanes, bytes, 32-byte sectors (global), wavefronts (shared), and the ideal (fewest) sectors or\n"
     "wavefronts for those bytes. Metrics build only (tools/gpu_model_sim.py)."},
    {"reset_access_metrics", reset_access_metrics, METH_NOARGS, "Forget the access metrics gathered so far."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_sim",
                      "csrc/cuda's kernels run on the CPU through a SIMT emulator (torch.ops.shc_sim.*); test-only",
                      -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit__C_sim() { return PyModule_Create(&module); }
