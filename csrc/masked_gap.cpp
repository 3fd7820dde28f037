// CPU kernels of wsol_fast::masked_gap and its backward (docs/spec.md §1.1 masks, Eq. 3 masked means).
//
//   theta_fg = gamma_fg * max_i A_i, theta_bg = gamma_bg * mean_i A_i     (per sample)
//   M_fg = A > theta_bg,  M_bg = A < theta_bg,  M_dfg = (A < theta_fg) & (A > theta_bg)
//   pooled[b, alpha, c] = sum_i M_alpha[b, i] x[b, c, i] / max(count_alpha, 1)
//
// Design: the masks are O(B*N) and computed with the same ATen ops as the reference
// (reference.attention_masks: upcast, amax, mean = sum / N, scalar multiply), so the thresholds
// round identically and the masks match bit for bit. They become three 0/1 weight rows per sample.
// The pooling is then ONE pass over x: x is [B, C, N], so each (b, c) row is contiguous in N and
// one vectorised loop accumulates the three masked sums at once (fp32, fp64 for fp64; bf16/fp16 are
// widened to fp32 on load). Two things keep it at the memory roofline when N is large (56x56:
// 3 * 3136 * 4 B = 37.6 KB of weights per sample, more than L1 next to the x stream):
//  - register blocking, when the weights outgrow L1 (3 * N * sizeof(acc) > 16 KB): kRows = 4
//    channel rows of one sample share each pass over the weights, so a weight load serves 4 x
//    elements (1.75 loads per x element instead of 4) and the x rows still stream front to back;
//    the fp32 AVX-512 forward (forward_rows_f32_avx512) takes 8 rows and prefetches. At 28x28 the
//    weights stay in L1 and one row at a time is faster, so it is kept there. (Blocking over N
//    instead was tried: the short strided x segments defeat the hardware prefetcher; it was slower.)
//  - wider SIMD: the build has no -march (any x86-64), so the row loops are compiled three times,
//    for baseline x86-64, AVX2+FMA and AVX-512 (GCC target attributes), and the CPU's best is picked
//    at run time (isa.h), capped by ATEN_CPU_CAPABILITY like ATen's kernels. The weights are
//    exactly 0 or 1, so w * v is exact and every variant gives the same products; sums differ only
//    in order.
// Rows are split across threads (a sample's last rows, or a thread's, fall back to one row at a
// time). Nothing but the outputs and the O(B*N) weights is allocated.
// Backward: dx[b, c, i] = sum_alpha grad[b, alpha, c] / max(count_alpha, 1) * M_alpha[b, i], written
// once per element (same 4-row blocking and SIMD variants), masks recomputed from the attention (no
// gradient flows to the attention).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <utility>

#include "checks.h"
#include "isa.h"

namespace wsol_fast {
namespace {

constexpr int kMasks = 3;  // order fg, dfg, bg

void check_masked_gap_inputs(const at::Tensor& x, const at::Tensor& attention) {
  check_float_tensor(x, "x", 3, "[B, C, N]");
  check_float_tensor(attention, "attention", 2, "[B, N]");
  TORCH_CHECK_VALUE(attention.size(0) == x.size(0) && attention.size(1) == x.size(2),
                    "attention must have shape [B, N] = [", x.size(0), ", ", x.size(2), "] to match x ", x.sizes(),
                    " [B, C, N], got ", attention.sizes());
  TORCH_CHECK_VALUE(x.size(2) >= 1, "x must have N >= 1 positions, got shape ", x.sizes());
  check_same_device(x, "x", attention, "attention");
  check_cpu(x, "x");
}

struct Masks {
  at::Tensor weights;   // [B, 3, N] 0/1 in `weight_dtype`
  at::Tensor counts;    // [B, 3] int64
  at::Tensor dfg_mask;  // [B, N] bool
};

Masks attention_masks(const at::Tensor& attention, double gamma_fg, double gamma_bg, at::ScalarType weight_dtype) {
  // Same ops, same order as reference.attention_masks, so the thresholds round identically.
  const at::Tensor a = attention.to(accumulation_dtype(attention.scalar_type()));
  const at::Tensor theta_fg = a.amax({1}, /*keepdim=*/true).mul(gamma_fg);
  const at::Tensor theta_bg = a.mean({1}, /*keepdim=*/true).mul(gamma_bg);
  const at::Tensor fg = a.gt(theta_bg), bg = a.lt(theta_bg);
  const at::Tensor dfg = a.lt(theta_fg).logical_and_(fg);
  const at::Tensor stacked = at::stack({fg, dfg, bg}, 1);  // [B, 3, N] bool
  return {stacked.to(weight_dtype).contiguous(), stacked.sum({2}), dfg};
}

// Register blocking (see the header comment): kRows channel rows of one sample go through the
// inner loop together, so each weight element loaded serves kRows x elements.
constexpr int64_t kRows = 4;
// Only when the three weight rows of a sample would not stay in L1: when they do (28x28: 9.4 KB),
// one row at a time streams a single x row and measured faster (2.4 ms against 3.3 ms there).
constexpr int64_t kL1WeightBytes = 16 * 1024;

template <typename acc_t>
inline bool use_row_blocking(int64_t N) {
  return kMasks * N * static_cast<int64_t>(sizeof(acc_t)) > kL1WeightBytes;
}

template <typename scalar_t>
struct GapArgs {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t C, N;
  const acc_t* weights;  // [B, 3, N]
  const acc_t* den;      // [B, 3]
  const scalar_t* x;     // forward: [B, C, N]
  acc_t* pooled;         // forward: [B, 3, C]
  const acc_t* grad;     // backward: [B, 3, C]
  scalar_t* dx;          // backward: [B, C, N]
};

// Forward over the rows [begin, end) of the flattened [B * C, N] x. Each inner loop is one pass
// over the three weight rows of a sample and kRows (or, at a sample's end, 1) x rows.
template <typename scalar_t>
WSOL_ALWAYS_INLINE void forward_rows(const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, N = a.N;
  const bool block_rows = use_row_blocking<acc_t>(N);
  int64_t row = begin;
  while (row < end) {
    const int64_t b = row / C, c = row % C;
    const acc_t* w_fg = a.weights + b * kMasks * N;
    const acc_t* w_dfg = w_fg + N;
    const acc_t* w_bg = w_dfg + N;
    const acc_t* den = a.den + b * kMasks;
    acc_t* out = a.pooled + b * kMasks * C + c;
    const scalar_t* x0 = a.x + row * N;
    if (block_rows && c + kRows <= C && row + kRows <= end) {
      const scalar_t* x1 = x0 + N;
      const scalar_t* x2 = x1 + N;
      const scalar_t* x3 = x2 + N;
      acc_t f0 = 0, d0 = 0, g0 = 0, f1 = 0, d1 = 0, g1 = 0, f2 = 0, d2 = 0, g2 = 0, f3 = 0, d3 = 0, g3 = 0;
#pragma omp simd reduction(+ : f0, d0, g0, f1, d1, g1, f2, d2, g2, f3, d3, g3)
      for (int64_t i = 0; i < N; ++i) {
        const acc_t wf = w_fg[i], wd = w_dfg[i], wb = w_bg[i];
        const acc_t v0 = static_cast<acc_t>(x0[i]);
        const acc_t v1 = static_cast<acc_t>(x1[i]);
        const acc_t v2 = static_cast<acc_t>(x2[i]);
        const acc_t v3 = static_cast<acc_t>(x3[i]);
        f0 += wf * v0; d0 += wd * v0; g0 += wb * v0;
        f1 += wf * v1; d1 += wd * v1; g1 += wb * v1;
        f2 += wf * v2; d2 += wd * v2; g2 += wb * v2;
        f3 += wf * v3; d3 += wd * v3; g3 += wb * v3;
      }
      out[0] = f0 / den[0]; out[C] = d0 / den[1]; out[2 * C] = g0 / den[2];
      out[1] = f1 / den[0]; out[C + 1] = d1 / den[1]; out[2 * C + 1] = g1 / den[2];
      out[2] = f2 / den[0]; out[C + 2] = d2 / den[1]; out[2 * C + 2] = g2 / den[2];
      out[3] = f3 / den[0]; out[C + 3] = d3 / den[1]; out[2 * C + 3] = g3 / den[2];
      row += kRows;
    } else {
      acc_t f = 0, d = 0, g = 0;
#pragma omp simd reduction(+ : f, d, g)
      for (int64_t i = 0; i < N; ++i) {
        const acc_t v = static_cast<acc_t>(x0[i]);
        f += w_fg[i] * v; d += w_dfg[i] * v; g += w_bg[i] * v;
      }
      out[0] = f / den[0]; out[C] = d / den[1]; out[2 * C] = g / den[2];
      row += 1;
    }
  }
}

// Backward over the rows [begin, end): each dx row is written once, kRows rows per weight pass.
template <typename scalar_t>
WSOL_ALWAYS_INLINE void backward_rows(const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, N = a.N;
  const bool block_rows = use_row_blocking<acc_t>(N);
  int64_t row = begin;
  while (row < end) {
    const int64_t b = row / C, c = row % C;
    const acc_t* den = a.den + b * kMasks;
    const acc_t* w_fg = a.weights + b * kMasks * N;
    const acc_t* w_dfg = w_fg + N;
    const acc_t* w_bg = w_dfg + N;
    const acc_t* grad = a.grad + b * kMasks * C + c;
    const auto coef = [&](int64_t r, int k) { return grad[k * C + r] / den[k]; };
    scalar_t* dx0 = a.dx + row * N;
    if (block_rows && c + kRows <= C && row + kRows <= end) {
      const acc_t f0 = coef(0, 0), d0 = coef(0, 1), g0 = coef(0, 2), f1 = coef(1, 0), d1 = coef(1, 1),
                  g1 = coef(1, 2), f2 = coef(2, 0), d2 = coef(2, 1), g2 = coef(2, 2), f3 = coef(3, 0),
                  d3 = coef(3, 1), g3 = coef(3, 2);
      scalar_t* dx1 = dx0 + N;
      scalar_t* dx2 = dx1 + N;
      scalar_t* dx3 = dx2 + N;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) {
        const acc_t wf = w_fg[i], wd = w_dfg[i], wb = w_bg[i];
        dx0[i] = static_cast<scalar_t>(f0 * wf + d0 * wd + g0 * wb);
        dx1[i] = static_cast<scalar_t>(f1 * wf + d1 * wd + g1 * wb);
        dx2[i] = static_cast<scalar_t>(f2 * wf + d2 * wd + g2 * wb);
        dx3[i] = static_cast<scalar_t>(f3 * wf + d3 * wd + g3 * wb);
      }
      row += kRows;
    } else {
      const acc_t k_fg = coef(0, 0), k_dfg = coef(0, 1), k_bg = coef(0, 2);
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) {
        dx0[i] = static_cast<scalar_t>(k_fg * w_fg[i] + k_dfg * w_dfg[i] + k_bg * w_bg[i]);
      }
      row += 1;
    }
  }
}

// The same loops compiled three times, for baseline x86-64 (the build has no -march), AVX2 and
// AVX-512; detected_isa() (isa.h, capped by ATEN_CPU_CAPABILITY) picks one at run time.
template <typename scalar_t>
void forward_rows_default(const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  forward_rows(a, begin, end);
}
template <typename scalar_t>
void backward_rows_default(const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  backward_rows(a, begin, end);
}
#if WSOL_X86_MULTIVERSION
template <typename scalar_t>
WSOL_TARGET_AVX2 void forward_rows_avx2(const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  forward_rows(a, begin, end);
}
template <typename scalar_t>
WSOL_TARGET_AVX2 void backward_rows_avx2(const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  backward_rows(a, begin, end);
}
template <typename scalar_t>
WSOL_TARGET_AVX512 void forward_rows_avx512(
    const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  forward_rows(a, begin, end);
}
// fp32 forward on AVX-512, the training and benchmark case: 8 rows per weight pass instead of 4
// (24 zmm accumulators + 3 weights of the 32 registers) and a software prefetch 1 KiB ahead in each
// row. Measured at 56x56 (B 32, C 1024, 2-core EPYC, interleaved runs of stand-alone copies of the
// loops): plain read 5.5 ms, the generic 4-row loop 9.2-9.6 ms, 8 rows 7.3 ms, 8 rows + prefetch
// 6.8 ms: more rows in flight keep more cache misses outstanding (the op with its masks: 9.6 -> 7.8
// ms). GCC vector types (target-attributed, no intrinsics headers).
typedef float v16sf __attribute__((vector_size(64), aligned(4)));  // aligned(4): unaligned loads
constexpr int64_t kRowsAvx512 = 8;
constexpr int64_t kPrefetchFloats = 256;

WSOL_TARGET_AVX512 void forward_rows_f32_avx512(const GapArgs<float>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C, N = a.N;
  if (!use_row_blocking<float>(N)) return forward_rows(a, begin, end);
  int64_t row = begin;
  while (row < end) {
    const int64_t b = row / C, c = row % C;
    if (c + kRowsAvx512 > C || row + kRowsAvx512 > end) {  // a sample's or a thread's last rows
      forward_rows(a, row, row + 1);
      row += 1;
      continue;
    }
    const float* w_fg = a.weights + b * kMasks * N;
    const float* w_dfg = w_fg + N;
    const float* w_bg = w_dfg + N;
    const float* x = a.x + row * N;
    v16sf f[kRowsAvx512] = {}, d[kRowsAvx512] = {}, g[kRowsAvx512] = {};
    int64_t i = 0;
    for (; i + 16 <= N; i += 16) {
      const v16sf wf = *reinterpret_cast<const v16sf*>(w_fg + i);
      const v16sf wd = *reinterpret_cast<const v16sf*>(w_dfg + i);
      const v16sf wb = *reinterpret_cast<const v16sf*>(w_bg + i);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRowsAvx512; ++r) {
        const float* xr = x + r * N + i;
        __builtin_prefetch(xr + kPrefetchFloats);
        v16sf v = *reinterpret_cast<const v16sf*>(xr);
        __asm__("" : "+v"(v));  // one load into a register, not three memory operands of the FMAs
        f[r] += wf * v;
        d[r] += wd * v;
        g[r] += wb * v;
      }
    }
    const float* den = a.den + b * kMasks;
    float* out = a.pooled + b * kMasks * C + c;
    for (int64_t r = 0; r < kRowsAvx512; ++r) {
      float fs = 0, ds = 0, gs = 0;
      for (int lane = 0; lane < 16; ++lane) {
        fs += f[r][lane];
        ds += d[r][lane];
        gs += g[r][lane];
      }
      for (int64_t j = i; j < N; ++j) {  // the last N % 16 positions
        const float v = x[r * N + j];
        fs += w_fg[j] * v;
        ds += w_dfg[j] * v;
        gs += w_bg[j] * v;
      }
      out[r] = fs / den[0];
      out[C + r] = ds / den[1];
      out[2 * C + r] = gs / den[2];
    }
    row += kRowsAvx512;
  }
}
template <typename scalar_t>
WSOL_TARGET_AVX512 void backward_rows_avx512(
    const GapArgs<scalar_t>& a, int64_t begin, int64_t end) {
  backward_rows(a, begin, end);
}
#endif

template <typename scalar_t>
using RowsFn = void (*)(const GapArgs<scalar_t>&, int64_t, int64_t);

template <typename scalar_t>
std::pair<RowsFn<scalar_t>, RowsFn<scalar_t>> select_rows_kernels() {
#if WSOL_X86_MULTIVERSION
  switch (detected_isa()) {
    case Isa::kAvx512:
      if constexpr (std::is_same_v<scalar_t, float>) {
        return {&forward_rows_f32_avx512, &backward_rows_avx512<float>};
      }
      return {&forward_rows_avx512<scalar_t>, &backward_rows_avx512<scalar_t>};
    case Isa::kAvx2:
      return {&forward_rows_avx2<scalar_t>, &backward_rows_avx2<scalar_t>};
    default:
      break;
  }
#endif
  return {&forward_rows_default<scalar_t>, &backward_rows_default<scalar_t>};
}

// Rows of N elements: a grain of ~32k elements amortises the thread hand-off.
inline int64_t row_grain(int64_t N) { return std::max<int64_t>(kRows, 32768 / N); }

template <typename scalar_t>
void masked_gap_forward_kernel(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& denominators,
                               at::Tensor& pooled) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  GapArgs<scalar_t> args{C, N, weights.data_ptr<acc_t>(), denominators.data_ptr<acc_t>(), x.data_ptr<scalar_t>(),
                         pooled.data_ptr<acc_t>(), nullptr, nullptr};
  const auto rows_fn = select_rows_kernels<scalar_t>().first;
  at::parallel_for(0, B * C, row_grain(N), [&](int64_t begin, int64_t end) { rows_fn(args, begin, end); });
}

template <typename scalar_t>
void masked_gap_backward_kernel(const at::Tensor& grad_pooled, const at::Tensor& weights,
                                const at::Tensor& denominators, at::Tensor& dx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = dx.size(0), C = dx.size(1), N = dx.size(2);
  GapArgs<scalar_t> args{C, N, weights.data_ptr<acc_t>(), denominators.data_ptr<acc_t>(), nullptr, nullptr,
                         grad_pooled.data_ptr<acc_t>(), dx.data_ptr<scalar_t>()};
  const auto rows_fn = select_rows_kernels<scalar_t>().second;
  at::parallel_for(0, B * C, row_grain(N), [&](int64_t begin, int64_t end) { rows_fn(args, begin, end); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_gap_cpu(const at::Tensor& x, const at::Tensor& attention,
                                                              double gamma_fg, double gamma_bg) {
  check_masked_gap_inputs(x, attention);
  // Autograd is handled by the Python registration; the ATen calls in here must not record it.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc = accumulation_dtype(x.scalar_type());
  Masks masks = attention_masks(attention, gamma_fg, gamma_bg, acc);
  const at::Tensor denominators = masks.counts.clamp_min(1).to(acc);
  const at::Tensor x_c = x.contiguous();
  at::Tensor pooled = at::empty({x.size(0), kMasks, x.size(1)}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_gap_cpu", [&] {
    masked_gap_forward_kernel<scalar_t>(x_c, masks.weights, denominators, pooled);
  });
  return {pooled.to(x.scalar_type()), masks.counts, masks.dfg_mask};
}

at::Tensor masked_gap_backward_cpu(const at::Tensor& grad_pooled, const at::Tensor& x, const at::Tensor& attention,
                                   const at::Tensor& counts, double gamma_fg, double gamma_bg) {
  check_masked_gap_inputs(x, attention);
  check_float_tensor(grad_pooled, "grad_pooled", 3, "[B, 3, C]");
  TORCH_CHECK_VALUE(grad_pooled.size(0) == x.size(0) && grad_pooled.size(1) == kMasks &&
                        grad_pooled.size(2) == x.size(1),
                    "grad_pooled must have shape [B, 3, C] = [", x.size(0), ", 3, ", x.size(1), "], got ",
                    grad_pooled.sizes());
  TORCH_CHECK_VALUE(counts.dim() == 2 && counts.size(0) == x.size(0) && counts.size(1) == kMasks,
                    "counts must have shape [B, 3] = [", x.size(0), ", 3], got ", counts.sizes());
  check_same_device(x, "x", grad_pooled, "grad_pooled");
  check_same_device(x, "x", counts, "counts");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc = accumulation_dtype(x.scalar_type());
  // Only the weights are needed: the counts saved by the forward give the denominators.
  const at::Tensor weights = attention_masks(attention, gamma_fg, gamma_bg, acc).weights;
  const at::Tensor denominators = counts.clamp_min(1).to(acc);
  const at::Tensor grad_acc = grad_pooled.to(acc).contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_gap_backward_cpu", [&] {
    masked_gap_backward_kernel<scalar_t>(grad_acc, weights, denominators, dx);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsol_fast, CPU, m) {
  m.impl("masked_gap", &masked_gap_cpu);
  m.impl("masked_gap_backward", &masked_gap_backward_cpu);
}

}  // namespace wsol_fast
