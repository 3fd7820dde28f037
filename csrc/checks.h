// Argument checks shared by the CPU kernels. They mirror wsol_fast/ops/_checks.py and use
// TORCH_CHECK_VALUE so that Python sees a ValueError whose message names the argument.
#pragma once
#include <ATen/ATen.h>

namespace wsol_fast {

inline void check_float_tensor(const at::Tensor& t, const char* name, int64_t ndim, const char* shape_doc) {
  TORCH_CHECK_VALUE(t.dim() == ndim, name, " must have rank ", ndim, " ", shape_doc, ", got shape ", t.sizes());
  const auto dt = t.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, name,
                    " must be a floating tensor (float16, bfloat16, float32 or float64), got ", dt);
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "all inputs must be on one device, got ", a_name, " on ",
                    a.device(), ", ", b_name, " on ", b.device());
}

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for this kernel, got ", t.device());
}

// fp64 stays fp64; every other float type accumulates in fp32.
inline at::ScalarType accumulation_dtype(at::ScalarType dt) {
  return dt == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace wsol_fast
