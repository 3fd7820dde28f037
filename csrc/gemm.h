// The tile GEMM of the attention kernels: out = beta * out + alpha * (a @ b) on 2-D (strided) views.
//
// fp32 goes to oneDNN's matmul (at::native::mkldnn_matmul, exported by libtorch_cpu) when ATen has
// oneDNN; everything else (fp64, or WSOL_FAST_CPU_GEMM=blas) to at::addmm_out, i.e. the BLAS that
// torch.mm/bmm use (MKL in the PyPI wheels). Why: on AMD CPUs MKL's sgemm takes its AVX2 path while
// oneDNN uses AVX-512; on the 2-core EPYC of the README, a 784 x 784 x 512 sgemm runs at 218 GFLOP/s
// through torch.mm and 488 GFLOP/s through oneDNN. Both are exact fp32 (no reduced-precision math
// mode is set; the summation order differs, which the tests' fp64-based tolerances cover).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <cstdlib>
#include <cstring>

namespace at {
namespace native {
// Declared in ATen/native/mkldnn/Matmul.h, which the wheel does not ship: result = beta*result + alpha*mat1@mat2.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
                             float alpha);
}  // namespace native
}  // namespace at

namespace wsol_fast {

enum class TileGemm { kBlas, kOneDnn };

// Chosen once per op call (the environment variable is read then, so a benchmark can switch it).
inline TileGemm choose_tile_gemm(at::ScalarType dtype) {
  const char* choice = std::getenv("WSOL_FAST_CPU_GEMM");
  if (choice != nullptr && *choice != '\0') {
    TORCH_CHECK_VALUE(std::strcmp(choice, "blas") == 0 || std::strcmp(choice, "onednn") == 0,
                      "WSOL_FAST_CPU_GEMM must be 'blas' or 'onednn', got '", choice, "'");
    if (std::strcmp(choice, "blas") == 0) return TileGemm::kBlas;
  }
  return dtype == at::kFloat && at::hasMKLDNN() ? TileGemm::kOneDnn : TileGemm::kBlas;
}

inline void tile_gemm(TileGemm which, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta,
                      double alpha) {
  if (which == TileGemm::kOneDnn) {
    at::native::mkldnn_matmul(a, b, out, static_cast<float>(beta), static_cast<float>(alpha));
  } else {
    at::Tensor result = out;  // addmm_out takes a mutable reference; the view shares out's storage
    at::addmm_out(result, out, a, b, beta, alpha);
  }
}

}  // namespace wsol_fast
