// CPU kernels of wsol_fast::nonlocal_attention_map and its backward (docs/spec.md §1.3, identity 1).
//
//   A_i = sum_j P_ij zbar_j,  P = softmax_j(S),  S = f g^T * scale,  f, g: [B, N, C'], zbar: [B, N]
//
// Design (FlashAttention-style with value dimension 1; nothing of size B*N*N is ever allocated):
// - Forward: tasks are (batch, block of kQueryBlock queries). For each key block of kKeyBlock keys a
//   GEMM (tile_gemm of gemm.h on tile views: oneDNN for fp32, BLAS for fp64; alpha = scale) gives the
//   score tile; an online softmax keeps, per query row, the running max m, the running sum
//   l = sum exp(S - m) and the running weighted sum acc = sum exp(S - m) zbar, rescaled by
//   exp(m_old - m_new) when the max grows (so logits of 1e3 never overflow). A = acc / l and
//   lse = m + log l are the only outputs.
// - Saved for backward: the inputs, A and lse (O(B*N)). The backward recomputes each score tile
//   from lse (P = exp(S - lse), no max needed), then dS_ij = P_ij dA_i (zbar_j - A_i) and
//   dzbar_j += P_ij dA_i in one vectorisable pass, and two GEMMs per tile: dg_k += dS^T f_q * scale,
//   df_q += dS g_k * scale. A task owns one batch (keys outer, queries inner) so that df and dg
//   accumulate without races; when B < threads, each batch's keys are split into chunks and each
//   chunk accumulates df into its own buffer (threads * N * C' floats, summed at the end).
// - A in the backward is the op's saved output upcast to fp32, as flash-attention uses its stored
//   output: exact for fp32/fp64, rounded to the input precision for bf16/fp16.
// - Precision: fp32 and fp64 run natively; bf16/fp16 inputs are upcast to fp32 (an input-sized copy)
//   and results are cast back. The per-element work of a tile (max, exp, sums; dS) is one or two
//   `omp simd` passes compiled for baseline x86-64, AVX2 and AVX-512 and picked at run time (isa.h),
//   with a polynomial exp for fp32 (tile_exp) that vectorises at every ISA.
// - Tiles of 256 queries x 512 keys (a 512 KiB fp32 score tile per thread, in L2): on the 2-core
//   EPYC of the README, 256 x 512 beat 128 x 512 by 5-20% (larger GEMM calls) and 512 x 512 gained
//   under 4% more at the price of half the parallel tasks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "gemm.h"
#include "isa.h"

namespace wsol_fast {
namespace {

constexpr int64_t kQueryBlock = 256;
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

// exp for the softmax tiles, written so that `omp simd` loops vectorise it at any ISA (no libm
// call): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, the degree-7 polynomial of e^r of the
// Cephes expf, and 2^n built in the exponent bits. Its error, measured against fp64 exp at 2M points
// of [-87, 0.5], is under 1 ulp (relative 8.1e-8); the op's outputs are tested against fp64.
// Inputs below -87 (where e^x nears the smallest normal float) give exactly 0; the tiles only ever
// feed it x <= ~0 (scores minus their max or their lse).
WSOL_ALWAYS_INLINE float tile_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundToInt = 12582912.0f;  // 1.5 * 2^23: (v + k) - k rounds v to an integer
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (xc * kLog2e + kRoundToInt) - kRoundToInt;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = (p * r) * r + r + 1.0f;
  const float two_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : e_r * two_n;
}
WSOL_ALWAYS_INLINE double tile_exp(double x) { return std::exp(x); }  // fp64: the exact path, libm

// Forward of one score tile s [nq, nk] (row-major, already scaled): online-softmax update of the
// rows' running max m, sum l and weighted sum acc (see the header comment). One read for the
// block max, one fused pass for exp, l and acc; the tile is not written back.
template <typename acc_t>
WSOL_ALWAYS_INLINE void forward_tile(const acc_t* s, int64_t nq, int64_t nk, const acc_t* z_k, acc_t* row_max,
                                     acc_t* row_sum, acc_t* row_acc) {
  for (int64_t i = 0; i < nq; ++i) {
    const acc_t* s_row = s + i * nk;
    acc_t block_max = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : block_max)
    for (int64_t j = 0; j < nk; ++j) block_max = std::max(block_max, s_row[j]);
    const acc_t new_max = std::max(row_max[i], block_max);
    const acc_t rescale = std::exp(row_max[i] - new_max);  // 0 on the first block (m = -inf)
    acc_t sum = 0, weighted = 0;
#pragma omp simd reduction(+ : sum, weighted)
    for (int64_t j = 0; j < nk; ++j) {
      const acc_t p = tile_exp(s_row[j] - new_max);
      sum += p;
      weighted += p * z_k[j];
    }
    row_sum[i] = row_sum[i] * rescale + sum;
    row_acc[i] = row_acc[i] * rescale + weighted;
    row_max[i] = new_max;
  }
}

// Backward of one score tile, in place: P = exp(S - lse) (exactly normalised by the saved lse),
// dzbar_j += P_ij dA_i and s becomes dS_ij = P_ij dA_i (zbar_j - A_i), in one pass.
template <typename acc_t>
WSOL_ALWAYS_INLINE void backward_tile(acc_t* s, int64_t nq, int64_t nk, const acc_t* lse_q, const acc_t* dA_q,
                                      const acc_t* A_q, const acc_t* z_k, acc_t* dz_k) {
  for (int64_t i = 0; i < nq; ++i) {
    const acc_t row_lse = lse_q[i], dA_i = dA_q[i], A_i = A_q[i];
    acc_t* s_row = s + i * nk;
#pragma omp simd
    for (int64_t j = 0; j < nk; ++j) {
      const acc_t p_dA = tile_exp(s_row[j] - row_lse) * dA_i;
      dz_k[j] += p_dA;
      s_row[j] = p_dA * (z_k[j] - A_i);
    }
  }
}

// Both tile loops compiled for baseline x86-64, AVX2 and AVX-512 (isa.h), picked at run time.
template <typename acc_t>
struct TileFns {
  void (*forward)(const acc_t*, int64_t, int64_t, const acc_t*, acc_t*, acc_t*, acc_t*);
  void (*backward)(acc_t*, int64_t, int64_t, const acc_t*, const acc_t*, const acc_t*, const acc_t*, acc_t*);
};

#define WSOL_TILE_VARIANT(SUFFIX, TARGET)                                                                   \
  template <typename acc_t>                                                                                 \
  TARGET void forward_tile_##SUFFIX(const acc_t* s, int64_t nq, int64_t nk, const acc_t* z_k, acc_t* row_max, \
                                    acc_t* row_sum, acc_t* row_acc) {                                       \
    forward_tile(s, nq, nk, z_k, row_max, row_sum, row_acc);                                                \
  }                                                                                                         \
  template <typename acc_t>                                                                                 \
  TARGET void backward_tile_##SUFFIX(acc_t* s, int64_t nq, int64_t nk, const acc_t* lse_q, const acc_t* dA_q, \
                                     const acc_t* A_q, const acc_t* z_k, acc_t* dz_k) {                     \
    backward_tile(s, nq, nk, lse_q, dA_q, A_q, z_k, dz_k);                                                  \
  }
WSOL_TILE_VARIANT(default, )
#if WSOL_X86_MULTIVERSION
WSOL_TILE_VARIANT(avx2, WSOL_TARGET_AVX2)
WSOL_TILE_VARIANT(avx512, WSOL_TARGET_AVX512)
#endif
#undef WSOL_TILE_VARIANT

template <typename acc_t>
TileFns<acc_t> select_tile_fns() {
#if WSOL_X86_MULTIVERSION
  switch (detected_isa()) {
    case Isa::kAvx512:
      return {&forward_tile_avx512<acc_t>, &backward_tile_avx512<acc_t>};
    case Isa::kAvx2:
      return {&forward_tile_avx2<acc_t>, &backward_tile_avx2<acc_t>};
    default:
      break;
  }
#endif
  return {&forward_tile_default<acc_t>, &backward_tile_default<acc_t>};
}

template <typename acc_t>
void attention_forward_kernel(const at::Tensor& f, const at::Tensor& g, const at::Tensor& zbar, double scale,
                              at::Tensor& A, at::Tensor& lse) {
  const TileGemm gemm = choose_tile_gemm(f.scalar_type());
  const TileFns<acc_t> tiles = select_tile_fns<acc_t>();
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
        tile_gemm(gemm, scores, f_q, g[b].narrow(0, k0, nk).t(), /*beta=*/0, /*alpha=*/scale);
        tiles.forward(scores.data_ptr<acc_t>(), nq, nk, zbar_data + b * N + k0, row_max.data(), row_sum.data(),
                      row_acc.data());
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
  const TileGemm gemm = choose_tile_gemm(f.scalar_type());
  const TileFns<acc_t> tiles = select_tile_fns<acc_t>();
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
          tile_gemm(gemm, scores, f_q, g_k.t(), /*beta=*/0, /*alpha=*/scale);
          const int64_t row0 = b * N + q0;
          tiles.backward(scores.data_ptr<acc_t>(), nq, nk, lse_data + row0, dA_data + row0, A_data + row0, z_k,
                         dz_k);
          at::Tensor df_q = df_b.narrow(0, q0, nq);
          tile_gemm(gemm, dg_k, scores.t(), f_q, /*beta=*/1, /*alpha=*/scale);
          tile_gemm(gemm, df_q, scores, g_k, /*beta=*/1, /*alpha=*/scale);
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
