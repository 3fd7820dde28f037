// CPU kernels of wsol_fast::nonlocal_attention_map and its backward (SPEC 1.3, identity 1).
//
//   A_i = sum_j P_ij zbar_j,  P = softmax_j(S),  S = f g^T * scale,  f, g: [B, N, C'], zbar: [B, N]
//
// Design (FlashAttention-style with value dimension 1; nothing of size B*N*N is ever allocated):
// - Forward: tasks are (batch, block of kQueryBlock queries). For each key block of kKeyBlock keys a
//   GEMM (at::addmm_out on tile views -> MKL sgemm/dgemm, alpha = scale) gives the score tile; an
//   online softmax keeps, per query row, the running max m, the running sum l = sum exp(S - m) and
//   the running weighted sum acc = sum exp(S - m) zbar, rescaled by exp(m_old - m_new) when the max
//   grows (so logits of 1e3 never overflow). A = acc / l and lse = m + log l are the only outputs.
// - Saved for backward: the inputs, A and lse (O(B*N)). The backward recomputes each score tile
//   from lse (P = exp(S - lse), no max needed), then dS_ij = P_ij dA_i (zbar_j - A_i) and
//   dzbar_j += P_ij dA_i in one vectorisable pass, and two GEMMs per tile: dg_k += dS^T f_q * scale,
//   df_q += dS g_k * scale. A task owns one batch (keys outer, queries inner) so that df and dg
//   accumulate without races; when B < threads, each batch's keys are split into chunks and each
//   chunk accumulates df into its own buffer (threads * N * C' floats, summed at the end).
// - A in the backward is the op's saved output upcast to fp32, as flash-attention uses its stored
//   output: exact for fp32/fp64, rounded to the input precision for bf16/fp16.
// - Precision: fp32 and fp64 run natively; bf16/fp16 inputs are upcast to fp32 (an input-sized copy)
//   and results are cast back. The exponentials use ATen's vectorised exp_ on the tile (runtime CPU
//   dispatch), the other per-element work is plain loops the compiler vectorises.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"

namespace wsol_fast {
namespace {

constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyBlock = 512;

// Contiguous [rows, cols] view of the front of a flat scratch buffer (keeps the GEMM output dense).
at::Tensor tile_view(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

void check_attention_inputs(const at::Tensor& f, const at::Tensor& g, const at::Tensor& zbar) {
  check_float_tensor(f, "f", 3, "[B, N, C']");
  check_float_tensor(g, "g", 3, "[B, N, C']");
  check_float_tensor(zbar, "zbar", 2, "[B, N]");
  TORCH_CHECK_VALUE(g.sizes() == f.sizes(), "g must have the shape of f ", f.sizes(), " [B, N, C'], got ",
                    g.sizes());
  TORCH_CHECK_VALUE(zbar.size(0) == f.size(0) && zbar.size(1) == f.size(1), "zbar must have shape [B, N] = [",
                    f.size(0), ", ", f.size(1), "], got ", zbar.sizes());
  TORCH_CHECK_VALUE(f.size(1) >= 1 && f.size(2) >= 1, "f must have N >= 1 and C' >= 1, got shape ", f.sizes());
  TORCH_CHECK_VALUE(f.scalar_type() == g.scalar_type() && f.scalar_type() == zbar.scalar_type(),
                    "f, g and zbar must share a dtype, got ", f.scalar_type(), ", ", g.scalar_type(), ", ",
                    zbar.scalar_type());
  check_same_device(f, "f", g, "g");
  check_same_device(f, "f", zbar, "zbar");
  check_cpu(f, "f");
}

template <typename acc_t>
void attention_forward_kernel(const at::Tensor& f, const at::Tensor& g, const at::Tensor& zbar, double scale,
                              at::Tensor& A, at::Tensor& lse) {
  const int64_t B = f.size(0), N = f.size(1);
  const int64_t n_qblocks = (N + kQueryBlock - 1) / kQueryBlock;
  const acc_t* zbar_data = zbar.data_ptr<acc_t>();
  acc_t* A_data = A.data_ptr<acc_t>();
  acc_t* lse_data = lse.data_ptr<acc_t>();

  at::parallel_for(0, B * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: worker threads need their own
    at::Tensor scores_buffer = at::empty({kQueryBlock * kKeyBlock}, f.options());
    std::vector<acc_t> row_max(kQueryBlock), row_sum(kQueryBlock), row_acc(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_qblocks, q0 = (task % n_qblocks) * kQueryBlock;
      const int64_t nq = std::min(kQueryBlock, N - q0);
      const at::Tensor f_q = f[b].narrow(0, q0, nq);
      std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
      std::fill(row_acc.begin(), row_acc.end(), acc_t(0));

      for (int64_t k0 = 0; k0 < N; k0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, N - k0);
        at::Tensor scores = tile_view(scores_buffer, nq, nk);
        at::addmm_out(scores, scores, f_q, g[b].narrow(0, k0, nk).t(), /*beta=*/0, /*alpha=*/scale);
        acc_t* s = scores.data_ptr<acc_t>();
        // New running max per row; shift the tile by it so that exp never overflows.
        for (int64_t i = 0; i < nq; ++i) {
          acc_t* s_row = s + i * nk;
          acc_t block_max = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : block_max)
          for (int64_t j = 0; j < nk; ++j) block_max = std::max(block_max, s_row[j]);
          const acc_t new_max = std::max(row_max[i], block_max);
          const acc_t rescale = std::exp(row_max[i] - new_max);  // 0 on the first block (m = -inf)
          row_sum[i] *= rescale;
          row_acc[i] *= rescale;
          row_max[i] = new_max;
#pragma omp simd
          for (int64_t j = 0; j < nk; ++j) s_row[j] -= new_max;
        }
        scores.exp_();
        const acc_t* z_k = zbar_data + b * N + k0;
        for (int64_t i = 0; i < nq; ++i) {
          const acc_t* p_row = s + i * nk;
          acc_t sum = 0, weighted = 0;
#pragma omp simd reduction(+ : sum, weighted)
          for (int64_t j = 0; j < nk; ++j) {
            sum += p_row[j];
            weighted += p_row[j] * z_k[j];
          }
          row_sum[i] += sum;
          row_acc[i] += weighted;
        }
      }
      for (int64_t i = 0; i < nq; ++i) {
        A_data[b * N + q0 + i] = row_acc[i] / row_sum[i];
        lse_data[b * N + q0 + i] = row_max[i] + std::log(row_sum[i]);
      }
    }
  });
}

template <typename acc_t>
void attention_backward_kernel(const at::Tensor& grad_A, const at::Tensor& f, const at::Tensor& g,
                               const at::Tensor& zbar, const at::Tensor& A, const at::Tensor& lse, double scale,
                               at::Tensor& df, at::Tensor& dg, at::Tensor& dzbar) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2);
  const int64_t n_kblocks = (N + kKeyBlock - 1) / kKeyBlock;
  // Key chunks per batch: 1 when there are enough batches to keep every thread busy.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n_kblocks, (threads + B - 1) / B));
  // df is summed over keys: with several chunks per batch each chunk accumulates into its own slot.
  at::Tensor df_slots = chunks == 1 ? df.unsqueeze(0) : at::zeros({chunks, B, N, C}, f.options());

  const acc_t* dA_data = grad_A.data_ptr<acc_t>();
  const acc_t* zbar_data = zbar.data_ptr<acc_t>();
  const acc_t* A_data = A.data_ptr<acc_t>();
  const acc_t* lse_data = lse.data_ptr<acc_t>();
  acc_t* dzbar_data = dzbar.data_ptr<acc_t>();

  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: worker threads need their own
    at::Tensor scores_buffer = at::empty({kQueryBlock * kKeyBlock}, f.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks;
      const int64_t kb_begin = chunk * n_kblocks / chunks, kb_end = (chunk + 1) * n_kblocks / chunks;
      const at::Tensor f_b = f[b], g_b = g[b], dg_b = dg[b], df_b = df_slots[chunk][b];
      for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
        const int64_t k0 = kb * kKeyBlock, nk = std::min(kKeyBlock, N - k0);
        const at::Tensor g_k = g_b.narrow(0, k0, nk);
        at::Tensor dg_k = dg_b.narrow(0, k0, nk);
        const acc_t* z_k = zbar_data + b * N + k0;
        acc_t* dz_k = dzbar_data + b * N + k0;
        for (int64_t q0 = 0; q0 < N; q0 += kQueryBlock) {
          const int64_t nq = std::min(kQueryBlock, N - q0);
          const at::Tensor f_q = f_b.narrow(0, q0, nq);
          at::Tensor scores = tile_view(scores_buffer, nq, nk);
          at::addmm_out(scores, scores, f_q, g_k.t(), /*beta=*/0, /*alpha=*/scale);
          acc_t* s = scores.data_ptr<acc_t>();
          for (int64_t i = 0; i < nq; ++i) {
            const acc_t row_lse = lse_data[b * N + q0 + i];
            acc_t* s_row = s + i * nk;
#pragma omp simd
            for (int64_t j = 0; j < nk; ++j) s_row[j] -= row_lse;
          }
          scores.exp_();  // P tile, exactly normalised by the saved lse
          // dzbar_j += P_ij dA_i and, in place, dS_ij = P_ij dA_i (zbar_j - A_i).
          for (int64_t i = 0; i < nq; ++i) {
            const acc_t dA_i = dA_data[b * N + q0 + i], A_i = A_data[b * N + q0 + i];
            acc_t* p_row = s + i * nk;
#pragma omp simd
            for (int64_t j = 0; j < nk; ++j) {
              const acc_t p_dA = p_row[j] * dA_i;
              dz_k[j] += p_dA;
              p_row[j] = p_dA * (z_k[j] - A_i);
            }
          }
          at::Tensor df_q = df_b.narrow(0, q0, nq);
          dg_k.addmm_(scores.t(), f_q, /*beta=*/1, /*alpha=*/scale);
          df_q.addmm_(scores, g_k, /*beta=*/1, /*alpha=*/scale);
        }
      }
    }
  });
  if (chunks > 1) at::sum_out(df, df_slots, {0});
}

std::tuple<at::Tensor, at::Tensor> nonlocal_attention_map_cpu(const at::Tensor& f, const at::Tensor& g,
                                                               const at::Tensor& zbar, double scale) {
  check_attention_inputs(f, g, zbar);
  // Autograd is handled by the Python registration; the ATen calls in here must not record it.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc = accumulation_dtype(f.scalar_type());
  const at::Tensor f_acc = f.to(acc).contiguous(), g_acc = g.to(acc).contiguous();
  const at::Tensor zbar_acc = zbar.to(acc).contiguous();
  at::Tensor A = at::empty({f.size(0), f.size(1)}, f_acc.options());
  at::Tensor lse = at::empty({f.size(0), f.size(1)}, f_acc.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "nonlocal_attention_map_cpu", [&] {
    attention_forward_kernel<scalar_t>(f_acc, g_acc, zbar_acc, scale, A, lse);
  });
  return {A.to(f.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nonlocal_attention_map_backward_cpu(
    const at::Tensor& grad_A, const at::Tensor& f, const at::Tensor& g, const at::Tensor& zbar, const at::Tensor& A,
    const at::Tensor& lse, double scale) {
  check_attention_inputs(f, g, zbar);
  const auto check_bn = [&](const at::Tensor& t, const char* name) {
    check_float_tensor(t, name, 2, "[B, N]");
    TORCH_CHECK_VALUE(t.sizes() == zbar.sizes(), name, " must have shape [B, N] = ", zbar.sizes(), ", got ",
                      t.sizes());
    check_same_device(f, "f", t, name);
  };
  check_bn(grad_A, "grad_A");
  check_bn(A, "A");
  check_bn(lse, "lse");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc = accumulation_dtype(f.scalar_type());
  const auto upcast = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  const at::Tensor f_acc = upcast(f), g_acc = upcast(g), zbar_acc = upcast(zbar);
  const at::Tensor dA_acc = upcast(grad_A), A_acc = upcast(A), lse_acc = upcast(lse);
  at::Tensor df = at::zeros_like(f_acc), dg = at::zeros_like(g_acc), dzbar = at::zeros_like(zbar_acc);
  AT_DISPATCH_FLOATING_TYPES(acc, "nonlocal_attention_map_backward_cpu", [&] {
    attention_backward_kernel<scalar_t>(dA_acc, f_acc, g_acc, zbar_acc, A_acc, lse_acc, scale, df, dg, dzbar);
  });
  const auto out = f.scalar_type();
  return {df.to(out), dg.to(out), dzbar.to(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(wsol_fast, CPU, m) {
  m.impl("nonlocal_attention_map", &nonlocal_attention_map_cpu);
  m.impl("nonlocal_attention_map_backward", &nonlocal_attention_map_backward_cpu);
}

}  // namespace wsol_fast
