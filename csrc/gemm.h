// The tile GEMM of the attention kernels: out = beta * out + alpha * (a @ b) on 2-D (strided) views.
//
// fp32 goes to oneDNN's matmul (at::native::mkldnn_matmul, exported by libtorch_cpu) when ATen has
// oneDNN; everything else (fp64, or WSOL_FAST_CPU_GEMM=blas) to at::addmm_out, i.e. the BLAS that
// torch.mm/bmm use (MKL in the PyPI wheels). Why: on the README's 2-core AMD EPYC a 784 x 784 x 512
// sgemm runs at 218 GFLOP/s through torch.mm and 488 GFLOP/s through oneDNN (AVX-512). Both are exact
// fp32 (no reduced-precision math mode is set; the summation order differs, which the tests'
// fp64-based tolerances cover).
//
// mkldnn_matmul is not declared in the headers the wheel ships, and its signature has changed across
// releases, so it is looked up by its mangled name at run time instead of linked: with a torch that
// lacks it (or whose call fails), this library still loads and the GEMMs use BLAS.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace wsol_fast {

enum class TileGemm { kBlas, kOneDnn };

// at::native::mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
// float alpha): result = beta * result + alpha * mat1 @ mat2.
using OneDnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

inline std::atomic<bool>& onednn_failed() {
  static std::atomic<bool> failed{false};
  return failed;
}

inline OneDnnMatmul onednn_matmul() {
  static const OneDnnMatmul fn = []() -> OneDnnMatmul {
    if (!at::hasMKLDNN()) return nullptr;
    void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);  // already loaded by torch
    if (torch_cpu == nullptr) return nullptr;
    constexpr const char* kSymbol = "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff";
    return reinterpret_cast<OneDnnMatmul>(dlsym(torch_cpu, kSymbol));
  }();
  return onednn_failed().load() ? nullptr : fn;
}

// Chosen once per op call (the environment variable is read then, so a benchmark can switch it).
inline TileGemm choose_tile_gemm(at::ScalarType dtype) {
  const char* choice = std::getenv("WSOL_FAST_CPU_GEMM");
  if (choice != nullptr && *choice != '\0') {
    TORCH_CHECK_VALUE(std::strcmp(choice, "blas") == 0 || std::strcmp(choice, "onednn") == 0,
                      "WSOL_FAST_CPU_GEMM must be 'blas' or 'onednn', got '", choice, "'");
    if (std::strcmp(choice, "blas") == 0) return TileGemm::kBlas;
  }
  return dtype == at::kFloat && onednn_matmul() != nullptr ? TileGemm::kOneDnn : TileGemm::kBlas;
}

inline void tile_gemm(TileGemm which, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta,
                      double alpha) {
  if (which == TileGemm::kOneDnn) {
    if (const OneDnnMatmul fn = onednn_matmul()) {
      try {
        fn(a, b, out, static_cast<float>(beta), static_cast<float>(alpha));
        return;
      } catch (const c10::Error&) {
        // A torch whose oneDNN matmul rejects this call: BLAS from now on, for this and every later tile
        // (out is untouched when oneDNN throws from its argument checks).
        onednn_failed().store(true);
      }
    }
  }
  at::Tensor result = out;  // addmm_out takes a mutable reference; the view shares out's storage
  at::addmm_out(result, out, a, b, beta, alpha);
}

}  // namespace wsol_fast
