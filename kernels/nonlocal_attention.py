"""Non-local attention map with value dimension 1 (SPEC 1.3, identity 1), FlashAttention style.

    A_i = sum_j softmax_j(S_ij) zbar_j,    S = f g^T * scale,    f, g: [B, N, C'], zbar: [B, N]

Design
------
* Tiling. One program owns BLOCK_M query rows (or BLOCK_N key rows in the key-side backward) of one
  sample and streams over the other side in blocks. A score tile S[BLOCK_M, BLOCK_N] is a tl.dot
  reduced over the head dim C' in chunks of BLOCK_D (masked, so any C' works, C' = 1 included);
  rows beyond N are masked on load and keys beyond N get -inf / zero probability.
* Forward. Online softmax: running max m_i, running sum l_i and a running *scalar* numerator
  acc_i = sum_j p_ij zbar_j, because the value dim is 1: there is no [BLOCK_M, d] output
  accumulator at all. Saved: A [B, N] (input dtype) and the natural-log row log-sum-exp
  lse [B, N] (fp32). Nothing N x N is ever written.
* Backward. P is recomputed per tile from lse: P_ij = exp(S_ij - lse_i). With the value dim 1 the
  FlashAttention preprocessing pass (D_i = rowsum(dO * O)) is just A_i, already saved, and
  dP_ij = dA_i zbar_j needs no product: dS_ij = P_ij dA_i (zbar_j - A_i). Two kernels, no atomics:
    - query side, grid (query block, C' chunk, B):  df = dS g * scale
    - key side,   grid (key block,   C' chunk, B):  dg = dS^T f * scale,  dzbar_j = sum_i P_ij dA_i
  When C' > BLOCK_D the output is split over C' chunks and each chunk recomputes S over the full
  C' (extra work only for C' > 128 on GPU; it bounds the fp32 accumulator to [BLOCK, BLOCK_D]).
* Memory. The literal form stores P: B * N^2 floats (N = 3136, B = 32: 1.26 GB per block in fp32,
  kept for backward). This stores A and lse: 2 * B * N floats (0.8 MB at the same size).
* Precision. Scores, softmax statistics and accumulators are fp32. exp is exp2((S - m) * log2 e)
  with the difference formed first: folding log2 e into the scale (FlashAttention's one multiply
  fewer) rounds S * log2 e at |S| ~ 1e3 and costs ~1e-4 relative error in P. The backward's P comes
  from the fp32 lse of the contract, so it carries a relative error of a few 2^-24 max|S| that the
  literal form does not have: negligible for |S| < 100, ~1e-4 at |S| ~ 2e3 (tested).
  fp16/bf16 tiles go to tl.dot in their own dtype (tensor cores, fp32 accumulation); dS is cast to
  the input dtype for its product, as FlashAttention does. fp32 tiles use input_precision "ieee"
  unless torch.get_float32_matmul_precision() is "high"/"medium" (then "tf32", ~1e-3 relative in
  S), so the op follows the same switch as torch.bmm in the reference. The interpreter: "ieee".

Layers (Liger-Kernel style): @triton.jit kernels; launchers `nonlocal_attention_forward` /
`nonlocal_attention_backward` (pick blocks, allocate, launch; any strides, no copies); the autograd
wrapper `NonlocalAttentionMapFunction`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

# Decided when this module is imported, exactly as triton.jit decides interpreted vs compiled.
INTERPRETING = bool(knobs.runtime.interpret)


def _gpu_configs(blocks_warps_stages):
    return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
            for (block_m, block_n), warps, stages in blocks_warps_stages]


# The autotune space on a GPU: (BLOCK_M, BLOCK_N), num_warps, num_stages. Four each, because every
# config is compiled (about 1 s for fp32, whose "ieee" tl.dot is FMA code) and timed per autotune
# key. Checked offline with triton 3.6 and 3.8 for sm_90 (no GPU here): all compile, shared memory
# <= 192 KiB (fp32 128x64); the fp32 configs above 64x32 spill registers, the bf16/fp16 ones do not.
# Each one is also run against the reference, compiled on CUDA and interpreted on CPU
# (tests/test_kernels_triton.py::test_attention_every_gpu_config).
FORWARD_GPU_CONFIGS = _gpu_configs([((128, 64), 8, 3), ((64, 64), 4, 3), ((64, 32), 4, 4), ((32, 32), 4, 2)])
BACKWARD_GPU_CONFIGS = _gpu_configs([((64, 64), 4, 3), ((64, 32), 4, 3), ((32, 64), 4, 3), ((32, 32), 4, 2)])
# Under the interpreter one small config (no benchmarking, quick), BLOCK_M != BLOCK_N so that a
# swapped block size cannot pass the tests.
_FORWARD_CONFIGS = ([triton.Config({"BLOCK_M": 64, "BLOCK_N": 32})] if INTERPRETING else FORWARD_GPU_CONFIGS)
_BACKWARD_CONFIGS = ([triton.Config({"BLOCK_M": 32, "BLOCK_N": 64})] if INTERPRETING else BACKWARD_GPU_CONFIGS)
_AUTOTUNE_KEY = ["N", "D", "INPUT_PRECISION"]


@triton.jit
def _score_tile(a_ptr, b_ptr, offs_a, offs_b, N, D, stride_an, stride_ad, stride_bn, stride_bd,
                BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                INPUT_PRECISION: tl.constexpr):
    """Unscaled scores a[offs_a] . b[offs_b] as an fp32 [BLOCK_A, BLOCK_B] tile, reduced over D in chunks.

    Rows past N and columns past D load as zero, so they add nothing.
    """
    mask_a = offs_a < N
    mask_b = offs_b < N
    scores = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for d_start in range(0, D, BLOCK_D):
        offs_d = d_start + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        a = tl.load(a_ptr + offs_a[:, None] * stride_an + offs_d[None, :] * stride_ad,
                    mask=mask_a[:, None] & mask_d[None, :], other=0.0)
        # b is loaded already transposed, [BLOCK_D, BLOCK_B].
        b_t = tl.load(b_ptr + offs_b[None, :] * stride_bn + offs_d[:, None] * stride_bd,
                      mask=mask_b[None, :] & mask_d[:, None], other=0.0)
        scores = tl.dot(a, b_t, scores, input_precision=INPUT_PRECISION)
    return scores


@triton.autotune(configs=_FORWARD_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _attention_forward_kernel(
    f_ptr, g_ptr, zbar_ptr, a_out_ptr, lse_ptr, N, D, scale,
    stride_fb, stride_fn, stride_fd, stride_gb, stride_gn, stride_gd, stride_zb, stride_zn,
    INPUT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    f_ptr += batch * stride_fb
    g_ptr += batch * stride_gb
    zbar_ptr += batch * stride_zb

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    numerator = tl.zeros([BLOCK_M], dtype=tl.float32)               # sum_j p_ij zbar_j
    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        s = _score_tile(f_ptr, g_ptr, offs_m, offs_n, N, D, stride_fn, stride_fd, stride_gn, stride_gd,
                        BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION) * scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # Every key block holds at least one valid key, so new_max is finite from the first block on.
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        correction = tl.exp2((row_max - new_max) * 1.4426950408889634)
        p = tl.exp2((s - new_max[:, None]) * 1.4426950408889634)
        zbar = tl.load(zbar_ptr + offs_n * stride_zn, mask=mask_n, other=0.0).to(tl.float32)
        row_sum = row_sum * correction + tl.sum(p, axis=1)
        numerator = numerator * correction + tl.sum(p * zbar[None, :], axis=1)
        row_max = new_max

    mask_m = offs_m < N
    out_offs = batch * N + offs_m
    tl.store(a_out_ptr + out_offs, (numerator / row_sum).to(a_out_ptr.dtype.element_ty), mask=mask_m)
    tl.store(lse_ptr + out_offs, row_max + tl.log(row_sum), mask=mask_m)


@triton.autotune(configs=_BACKWARD_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _attention_backward_query_kernel(
    grad_a_ptr, f_ptr, g_ptr, zbar_ptr, a_ptr, lse_ptr, df_ptr, N, D, scale,
    stride_fb, stride_fn, stride_fd, stride_gb, stride_gn, stride_gd, stride_zb, stride_zn,
    stride_dfb, stride_dfn, stride_dfd,
    INPUT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """df[i, d-chunk] = scale * sum_j dS_ij g_j; grad_a, a, lse are contiguous [B, N]."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    f_ptr += batch * stride_fb
    g_ptr += batch * stride_gb
    zbar_ptr += batch * stride_zb

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    row_offs = batch * N + offs_m
    lse = tl.load(lse_ptr + row_offs, mask=mask_m, other=0.0)
    grad_a = tl.load(grad_a_ptr + row_offs, mask=mask_m, other=0.0).to(tl.float32)
    a_row = tl.load(a_ptr + row_offs, mask=mask_m, other=0.0).to(tl.float32)
    offs_out = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_out = offs_out < D

    df = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        s = _score_tile(f_ptr, g_ptr, offs_m, offs_n, N, D, stride_fn, stride_fd, stride_gn, stride_gd,
                        BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION) * scale
        p = tl.where(mask_n[None, :], tl.exp2((s - lse[:, None]) * 1.4426950408889634), 0.0)
        zbar = tl.load(zbar_ptr + offs_n * stride_zn, mask=mask_n, other=0.0).to(tl.float32)
        ds = p * grad_a[:, None] * (zbar[None, :] - a_row[:, None])
        g_out = tl.load(g_ptr + offs_n[:, None] * stride_gn + offs_out[None, :] * stride_gd,
                        mask=mask_n[:, None] & mask_out[None, :], other=0.0)
        df = tl.dot(ds.to(g_out.dtype), g_out, df, input_precision=INPUT_PRECISION)

    df_ptrs = df_ptr + batch * stride_dfb + offs_m[:, None] * stride_dfn + offs_out[None, :] * stride_dfd
    tl.store(df_ptrs, (df * scale).to(df_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_out[None, :])


@triton.autotune(configs=_BACKWARD_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _attention_backward_key_kernel(
    grad_a_ptr, f_ptr, g_ptr, zbar_ptr, a_ptr, lse_ptr, dg_ptr, dzbar_ptr, N, D, scale,
    stride_fb, stride_fn, stride_fd, stride_gb, stride_gn, stride_gd, stride_zb, stride_zn,
    stride_dgb, stride_dgn, stride_dgd, stride_dzb, stride_dzn,
    INPUT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dg[j, d-chunk] = scale * sum_i dS_ij f_i and dzbar_j = sum_i P_ij dA_i (stored by chunk 0)."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    f_ptr += batch * stride_fb
    g_ptr += batch * stride_gb
    zbar_ptr += batch * stride_zb

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    zbar = tl.load(zbar_ptr + offs_n * stride_zn, mask=mask_n, other=0.0).to(tl.float32)
    offs_out = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_out = offs_out < D

    dg = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dzbar = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m_start in range(0, N, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        row_offs = batch * N + offs_m
        lse = tl.load(lse_ptr + row_offs, mask=mask_m, other=0.0)
        grad_a = tl.load(grad_a_ptr + row_offs, mask=mask_m, other=0.0).to(tl.float32)
        a_row = tl.load(a_ptr + row_offs, mask=mask_m, other=0.0).to(tl.float32)
        # The transposed tile S^T[j, i] = g_j . f_i, so no transpose is needed before the dot.
        s_t = _score_tile(g_ptr, f_ptr, offs_n, offs_m, N, D, stride_gn, stride_gd, stride_fn, stride_fd,
                          BLOCK_N, BLOCK_M, BLOCK_D, INPUT_PRECISION) * scale
        p_t = tl.where(mask_m[None, :], tl.exp2((s_t - lse[None, :]) * 1.4426950408889634), 0.0)
        p_grad_a = p_t * grad_a[None, :]
        dzbar += tl.sum(p_grad_a, axis=1)
        ds_t = p_grad_a * (zbar[:, None] - a_row[None, :])
        f_out = tl.load(f_ptr + offs_m[:, None] * stride_fn + offs_out[None, :] * stride_fd,
                        mask=mask_m[:, None] & mask_out[None, :], other=0.0)
        dg = tl.dot(ds_t.to(f_out.dtype), f_out, dg, input_precision=INPUT_PRECISION)

    dg_ptrs = dg_ptr + batch * stride_dgb + offs_n[:, None] * stride_dgn + offs_out[None, :] * stride_dgd
    tl.store(dg_ptrs, (dg * scale).to(dg_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_out[None, :])
    tl.store(dzbar_ptr + batch * stride_dzb + offs_n * stride_dzn, dzbar.to(dzbar_ptr.dtype.element_ty),
             mask=mask_n & (pid_d == 0))


# ----------------------------------------------------------------------------------------- launchers

def _block_d(head_dim: int) -> int:
    """Chunk of the head dim per tl.dot: >= 16 (tl.dot's minimum), at most 128 (16 under the
    interpreter, so the tests cover the multi-chunk path with a small C')."""
    cap = 16 if INTERPRETING else 128
    return min(max(16, triton.next_power_of_2(head_dim)), cap)


def _input_precision(dtype: torch.dtype) -> str:
    """tl.dot precision. fp32 tiles follow torch's float32 matmul precision ("highest" -> exact "ieee",
    else "tf32"), always "ieee" in the interpreter (which ignores it anyway); fp16/bf16 tiles keep
    Triton's default, which only concerns fp32 operands."""
    if dtype != torch.float32:
        return "tf32"
    if INTERPRETING or torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _check_supported(f: torch.Tensor) -> None:
    if f.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"f must be float32, float16 or bfloat16 for the Triton kernels, got {f.dtype}")


def nonlocal_attention_forward(f: torch.Tensor, g: torch.Tensor, zbar: torch.Tensor, scale: float):
    """A [B, N] (dtype of f) and lse [B, N] (fp32, natural log) of softmax(f g^T * scale) zbar."""
    _check_supported(f)
    batch, n, head_dim = f.shape
    a_out = torch.empty((batch, n), dtype=f.dtype, device=f.device)
    lse = torch.empty((batch, n), dtype=torch.float32, device=f.device)
    if batch == 0:
        return a_out, lse
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), batch)  # noqa: E731
    _attention_forward_kernel[grid](
        f, g, zbar, a_out, lse, n, head_dim, float(scale),
        *f.stride(), *g.stride(), *zbar.stride(),
        INPUT_PRECISION=_input_precision(f.dtype), BLOCK_D=_block_d(head_dim),
    )
    return a_out, lse


def nonlocal_attention_backward(grad_a: torch.Tensor, f: torch.Tensor, g: torch.Tensor, zbar: torch.Tensor,
                                a: torch.Tensor, lse: torch.Tensor, scale: float):
    """(df, dg, dzbar) of A = softmax(f g^T * scale) zbar, from the saved A and lse."""
    _check_supported(f)
    batch, n, head_dim = f.shape
    # [B, N] side inputs are read as contiguous rows (tiny; a copy only if a caller passes a view).
    grad_a, a, lse = grad_a.contiguous(), a.contiguous(), lse.contiguous().float()
    df, dg = torch.empty_like(f), torch.empty_like(g)
    dzbar = torch.empty_like(zbar)
    if batch == 0:
        return df, dg, dzbar
    block_d = _block_d(head_dim)
    common = dict(INPUT_PRECISION=_input_precision(f.dtype), BLOCK_D=block_d)
    strides = (*f.stride(), *g.stride(), *zbar.stride())
    scale = float(scale)
    query_grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(head_dim, block_d), batch)  # noqa: E731
    _attention_backward_query_kernel[query_grid](
        grad_a, f, g, zbar, a, lse, df, n, head_dim, scale, *strides, *df.stride(), **common)
    key_grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(head_dim, block_d), batch)  # noqa: E731
    _attention_backward_key_kernel[key_grid](
        grad_a, f, g, zbar, a, lse, dg, dzbar, n, head_dim, scale, *strides, *dg.stride(), *dzbar.stride(),
        **common)
    return df, dg, dzbar


# ------------------------------------------------------------------------------------------- wrapper

class NonlocalAttentionMapFunction(torch.autograd.Function):
    """A = softmax(f g^T * scale) zbar with the fused forward and backward; lse is saved, P never."""

    @staticmethod
    def forward(ctx, f, g, zbar, scale):
        a_out, lse = nonlocal_attention_forward(f, g, zbar, scale)
        ctx.save_for_backward(f, g, zbar, a_out, lse)
        ctx.scale = scale
        return a_out

    @staticmethod
    def backward(ctx, grad_a):
        f, g, zbar, a_out, lse = ctx.saved_tensors
        df, dg, dzbar = nonlocal_attention_backward(grad_a, f, g, zbar, a_out, lse, ctx.scale)
        return df, dg, dzbar, None


def nonlocal_attention_map(f: torch.Tensor, g: torch.Tensor, zbar: torch.Tensor, scale: float = 1.0):
    """Differentiable A [B, N] through the Triton kernels."""
    return NonlocalAttentionMapFunction.apply(f, g, zbar, float(scale))
