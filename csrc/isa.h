// Run-time SIMD selection shared by the CPU kernels. The build has no -march (the extension must
// run on any x86-64), so hot loops are compiled three times with GCC target attributes (baseline
// x86-64, AVX2+FMA, AVX-512) and the CPU's best is picked at run time, capped like ATen's own
// kernels by ATEN_CPU_CAPABILITY (default, avx2, avx512).
#pragma once
#include <algorithm>
#include <cstdlib>
#include <string>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define WSOL_X86_MULTIVERSION 1
#define WSOL_ALWAYS_INLINE inline __attribute__((always_inline))
#define WSOL_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define WSOL_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define WSOL_X86_MULTIVERSION 0
#define WSOL_ALWAYS_INLINE inline
#endif

namespace wsol_fast {

enum class Isa { kDefault, kAvx2, kAvx512 };

// What this CPU runs, capped by ATEN_CPU_CAPABILITY; read once per process.
inline Isa detected_isa() {
#if WSOL_X86_MULTIVERSION
  static const Isa isa = [] {
    Isa best = Isa::kDefault;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      best = Isa::kAvx512;
    }
    const char* env = std::getenv("ATEN_CPU_CAPABILITY");
    const std::string cap = env ? env : "";
    if (cap == "default") return Isa::kDefault;
    if (cap == "avx2") return std::min(best, Isa::kAvx2);
    return best;
  }();
  return isa;
#else
  return Isa::kDefault;
#endif
}

}  // namespace wsol_fast
