// The `wsol_fast` operator library: the ONE place the op schemas are declared (docs/spec.md §5).
//
// Pattern of pytorch/extension-cpp: schemas here with TORCH_LIBRARY; each op file adds its CPU
// kernels with TORCH_LIBRARY_IMPL(wsol_fast, CPU, m); fake (meta) kernels and autograd are
// registered from Python (wsol_fast/ops/_library.py), which also holds the same schema strings
// for builds without this library (a test proves the two copies are equal).
#include <Python.h>
#include <torch/library.h>

#include "gemm.h"

// A minimal Python module, so that `import wsol_fast._C` loads this .so and runs the static
// registrations below (no pybind11: the ops are reached through torch.ops.wsol_fast). Its one
// function, cpu_gemm(), names the fp32 tile GEMM the attention kernels use now (wsol_fast.backends()).
namespace {
PyObject* cpu_gemm(PyObject*, PyObject*) {
  try {
    const bool onednn = wsol_fast::choose_tile_gemm(at::kFloat) == wsol_fast::TileGemm::kOneDnn;
    return PyUnicode_FromString(onednn ? "onednn" : "blas");
  } catch (const c10::Error& exc) {  // a bad WSOL_FAST_CPU_GEMM
    PyErr_SetString(PyExc_ValueError, exc.what_without_backtrace());
    return nullptr;
  }
}
PyMethodDef methods[] = {{"cpu_gemm", cpu_gemm, METH_NOARGS, "The C++ attention's fp32 tile GEMM."},
                         {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(wsol_fast, m) {
  // A [B,N] (input dtype), lse [B,N] (fp32; fp64 for fp64) of softmax_j(f_i.g_j*scale) zbar_j.
  m.def("nonlocal_attention_map(Tensor f, Tensor g, Tensor zbar, float scale) -> (Tensor, Tensor)");
  m.def("nonlocal_attention_map_backward(Tensor grad_A, Tensor f, Tensor g, Tensor zbar, Tensor A, "
        "Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
  // pooled [B,3,C] (fg, dfg, bg), counts [B,3] int64, dfg_mask [B,N] bool.
  m.def("masked_gap(Tensor x, Tensor attention, float gamma_fg, float gamma_bg) -> (Tensor, Tensor, Tensor)");
  m.def("masked_gap_backward(Tensor grad_pooled, Tensor x, Tensor attention, Tensor counts, "
        "float gamma_fg, float gamma_bg) -> Tensor");
}
