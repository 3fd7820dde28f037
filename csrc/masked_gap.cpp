// CPU kernels of wsol_fast::masked_gap and its backward (SPEC 1.1 masks, Eq. 3 masked means).
//
//   theta_fg = gamma_fg * max_i A_i, theta_bg = gamma_bg * mean_i A_i     (per sample)
//   M_fg = A > theta_bg,  M_bg = A < theta_bg,  M_dfg = (A < theta_fg) & (A > theta_bg)
//   pooled[b, alpha, c] = sum_i M_alpha[b, i] x[b, c, i] / max(count_alpha, 1)
//
// Design: the masks are O(B*N) and computed with the same ATen ops as the reference
// (reference.attention_masks: upcast, amax, mean = sum / N, scalar multiply), so the thresholds
// round identically and the masks match bit for bit. They become three 0/1 weight rows per sample.
// The pooling is then ONE pass over x: x is [B, C, N], so each (b, c) row is contiguous in N and
// one vectorised loop accumulates the three masked sums at once (fp32, fp64 for fp64). Rows are
// split across threads. Nothing but the outputs and the O(B*N) weights is allocated.
// Backward: dx[b, c, i] = sum_alpha grad[b, alpha, c] / max(count_alpha, 1) * M_alpha[b, i], written
// once per element, masks recomputed from the attention (no gradient flows to the attention).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"

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

template <typename scalar_t>
void masked_gap_forward_kernel(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& denominators,
                               at::Tensor& pooled) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const scalar_t* x_data = x.data_ptr<scalar_t>();
  const acc_t* w_data = weights.data_ptr<acc_t>();
  const acc_t* den_data = denominators.data_ptr<acc_t>();
  acc_t* out = pooled.data_ptr<acc_t>();
  // Rows of N elements: a grain of ~32k elements amortises the thread hand-off.
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / C, c = row % C;
      const scalar_t* x_row = x_data + row * N;
      const acc_t* w_fg = w_data + b * kMasks * N;
      const acc_t* w_dfg = w_fg + N;
      const acc_t* w_bg = w_dfg + N;
      acc_t sum_fg = 0, sum_dfg = 0, sum_bg = 0;
#pragma omp simd reduction(+ : sum_fg, sum_dfg, sum_bg)
      for (int64_t i = 0; i < N; ++i) {
        const acc_t v = static_cast<acc_t>(x_row[i]);
        sum_fg += w_fg[i] * v;
        sum_dfg += w_dfg[i] * v;
        sum_bg += w_bg[i] * v;
      }
      const acc_t* den = den_data + b * kMasks;
      out[(b * kMasks + 0) * C + c] = sum_fg / den[0];
      out[(b * kMasks + 1) * C + c] = sum_dfg / den[1];
      out[(b * kMasks + 2) * C + c] = sum_bg / den[2];
    }
  });
}

template <typename scalar_t>
void masked_gap_backward_kernel(const at::Tensor& grad_pooled, const at::Tensor& weights,
                                const at::Tensor& denominators, at::Tensor& dx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = dx.size(0), C = dx.size(1), N = dx.size(2);
  const acc_t* grad = grad_pooled.data_ptr<acc_t>();
  const acc_t* w_data = weights.data_ptr<acc_t>();
  const acc_t* den_data = denominators.data_ptr<acc_t>();
  scalar_t* dx_data = dx.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / C, c = row % C;
      const acc_t* den = den_data + b * kMasks;
      const acc_t k_fg = grad[(b * kMasks + 0) * C + c] / den[0];
      const acc_t k_dfg = grad[(b * kMasks + 1) * C + c] / den[1];
      const acc_t k_bg = grad[(b * kMasks + 2) * C + c] / den[2];
      const acc_t* w_fg = w_data + b * kMasks * N;
      const acc_t* w_dfg = w_fg + N;
      const acc_t* w_bg = w_dfg + N;
      scalar_t* dx_row = dx_data + row * N;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) {
        dx_row[i] = static_cast<scalar_t>(k_fg * w_fg[i] + k_dfg * w_dfg[i] + k_bg * w_bg[i]);
      }
    }
  });
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
