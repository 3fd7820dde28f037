"""Masks of docs/spec.md §1.1 and the three masked global average pools, in one read of x (docs/spec.md §1.3,
identity 2).

    theta_fg = gamma_fg * max_i A_i,  theta_bg = gamma_bg * mean_i A_i          (per sample, fp32)
    M_fg = A > theta_bg,  M_bg = A < theta_bg,  M_dfg = (A < theta_fg) & (A > theta_bg)
    pooled[b, alpha, c] = sum_i M_alpha,i x[b, c, i] / max(count_alpha, 1)     (alpha = fg, dfg, bg)

Design
------
* Grid (B, C / BLOCK_C). Each program first reduces its sample's attention row (max and sum, fp32:
  N values, a 1 / BLOCK_C fraction of the x traffic, served from L2) to the two thresholds, so no
  separate reduction kernel and no launch in between. It then streams over N in [BLOCK_C, BLOCK_N]
  tiles of x, building the three masks of the tile from A and accumulating three fp32 sums per
  channel: x is read exactly once, where the literal form reads it three times and writes three
  masked copies. The programs of channel block 0 also write the counts and the dfg mask. The N loops
  are software-pipelined (`tl.range(..., num_stages=NUM_STAGES)`, a config parameter).
* Backward. dx[b, c, i] = sum_alpha M_alpha,i * grad_pooled[b, alpha, c] / max(count_alpha, 1), with
  the masks recomputed from A (nothing but the counts is saved) and dx written once. No gradient
  flows to the attention (hard masks).
* Saved for backward: the counts [B, 3] and the inputs; nothing of size B * C * N.
* x may have any strides (e.g. a [B, C, H, W] channels_last map viewed as [B, C, N]): no copy. dx is
  contiguous [B, C, N], as the ops' fake kernel declares. An empty mask gives count 0 and a zero vector, never NaN.

Layers (Liger-Kernel style): @triton.jit kernels; launchers `masked_gap_forward` /
`masked_gap_backward`. The autograd around them is the ops' own (wsol_fast/ops/_autograd.py; the eager
Function in ops/_triton.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

INTERPRETING = bool(knobs.runtime.interpret)


# The autotune space on a GPU: memory bound, so wide tiles along the contiguous N axis (16-byte vector
# loads of bf16 and fp32), enough programs (B * C / BLOCK_C) to fill every SM, and the N loop
# software-pipelined with NUM_STAGES loads in flight (tl.range(..., num_stages=NUM_STAGES)). Not measured
# on a GPU in this version (docs/kernels.md); each config is run against the reference by
# tests/ops/test_kernels_triton.py::test_masked_gap_every_gpu_config (compiled on CUDA, interpreted on CPU).
GPU_CONFIGS = [triton.Config({"BLOCK_C": c, "BLOCK_N": n, "NUM_STAGES": stages}, num_warps=w)
               for c, n, w, stages in ((32, 128, 4, 3), (16, 256, 4, 3), (8, 512, 4, 3), (32, 256, 8, 2),
                                       (64, 128, 8, 2))]
# Under the interpreter: BLOCK_C < 16 and BLOCK_N < N in the tests, so several channel blocks and N tiles run.
_CONFIGS = [triton.Config({"BLOCK_C": 8, "BLOCK_N": 64, "NUM_STAGES": 2})] if INTERPRETING else GPU_CONFIGS
_AUTOTUNE_KEY = ["C", "N"]


@triton.jit
def _thresholds(a_ptr, N, gamma_fg, gamma_bg, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr):
    """(theta_fg, theta_bg) of one contiguous attention row, in fp32."""
    running_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n_start in tl.range(0, N, BLOCK_N, num_stages=NUM_STAGES):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        a = tl.load(a_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        running_max = tl.maximum(running_max, tl.where(mask_n, a, float("-inf")))
        running_sum += a
    return gamma_fg * tl.max(running_max, axis=0), gamma_bg * (tl.sum(running_sum, axis=0) / N)


@triton.jit
def _tile_masks(a_ptr, offs_n, N, theta_fg, theta_bg):
    """(fg, dfg, bg) masks of one N tile; positions past N are in no mask."""
    mask_n = offs_n < N
    a = tl.load(a_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    fg = (a > theta_bg) & mask_n
    bg = (a < theta_bg) & mask_n
    dfg = (a < theta_fg) & fg
    return fg, dfg, bg


@triton.autotune(configs=_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _masked_gap_forward_kernel(
    x_ptr, a_ptr, pooled_ptr, counts_ptr, dfg_mask_ptr, C, N, gamma_fg, gamma_bg,
    stride_xb, stride_xc, stride_xn,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """a, pooled [B, 3, C], counts [B, 3] and dfg_mask [B, N] are contiguous."""
    batch = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    a_ptr += batch * N
    theta_fg, theta_bg = _thresholds(a_ptr, N, gamma_fg, gamma_bg, BLOCK_N, NUM_STAGES)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    x_rows = x_ptr + batch * stride_xb + offs_c[:, None] * stride_xc
    sum_fg = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_dfg = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_bg = tl.zeros([BLOCK_C], dtype=tl.float32)
    count_fg = tl.zeros([BLOCK_N], dtype=tl.int32)
    count_dfg = tl.zeros([BLOCK_N], dtype=tl.int32)
    count_bg = tl.zeros([BLOCK_N], dtype=tl.int32)
    for n_start in tl.range(0, N, BLOCK_N, num_stages=NUM_STAGES):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        fg, dfg, bg = _tile_masks(a_ptr, offs_n, N, theta_fg, theta_bg)
        x = tl.load(x_rows + offs_n[None, :] * stride_xn, mask=mask_c[:, None] & (offs_n < N)[None, :],
                    other=0.0).to(tl.float32)
        sum_fg += tl.sum(tl.where(fg[None, :], x, 0.0), axis=1)
        sum_dfg += tl.sum(tl.where(dfg[None, :], x, 0.0), axis=1)
        sum_bg += tl.sum(tl.where(bg[None, :], x, 0.0), axis=1)
        count_fg += fg.to(tl.int32)
        count_dfg += dfg.to(tl.int32)
        count_bg += bg.to(tl.int32)
        tl.store(dfg_mask_ptr + batch * N + offs_n, dfg.to(tl.uint8), mask=(offs_n < N) & (pid_c == 0))

    n_fg = tl.sum(count_fg, axis=0)
    n_dfg = tl.sum(count_dfg, axis=0)
    n_bg = tl.sum(count_bg, axis=0)
    out = pooled_ptr + batch * 3 * C + offs_c
    out_ty = pooled_ptr.dtype.element_ty
    tl.store(out, (sum_fg / tl.maximum(n_fg, 1).to(tl.float32)).to(out_ty), mask=mask_c)
    tl.store(out + C, (sum_dfg / tl.maximum(n_dfg, 1).to(tl.float32)).to(out_ty), mask=mask_c)
    tl.store(out + 2 * C, (sum_bg / tl.maximum(n_bg, 1).to(tl.float32)).to(out_ty), mask=mask_c)
    first = pid_c == 0
    tl.store(counts_ptr + batch * 3, n_fg.to(tl.int64), mask=first)
    tl.store(counts_ptr + batch * 3 + 1, n_dfg.to(tl.int64), mask=first)
    tl.store(counts_ptr + batch * 3 + 2, n_bg.to(tl.int64), mask=first)


@triton.autotune(configs=_CONFIGS, key=_AUTOTUNE_KEY)
@triton.jit
def _masked_gap_backward_kernel(
    grad_ptr, a_ptr, counts_ptr, dx_ptr, C, N, gamma_fg, gamma_bg,
    stride_dxb, stride_dxc, stride_dxn,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """grad [B, 3, C], a [B, N] and counts [B, 3] are contiguous; dx may have any strides."""
    batch = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    a_ptr += batch * N
    theta_fg, theta_bg = _thresholds(a_ptr, N, gamma_fg, gamma_bg, BLOCK_N, NUM_STAGES)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    grad_rows = grad_ptr + batch * 3 * C + offs_c
    counts_row = counts_ptr + batch * 3
    # d pooled / d x = mask / max(count, 1): fold the division into the incoming gradient once.
    grad_fg = tl.load(grad_rows, mask=mask_c, other=0.0).to(tl.float32) \
        / tl.maximum(tl.load(counts_row), 1).to(tl.float32)
    grad_dfg = tl.load(grad_rows + C, mask=mask_c, other=0.0).to(tl.float32) \
        / tl.maximum(tl.load(counts_row + 1), 1).to(tl.float32)
    grad_bg = tl.load(grad_rows + 2 * C, mask=mask_c, other=0.0).to(tl.float32) \
        / tl.maximum(tl.load(counts_row + 2), 1).to(tl.float32)

    dx_rows = dx_ptr + batch * stride_dxb + offs_c[:, None] * stride_dxc
    for n_start in tl.range(0, N, BLOCK_N, num_stages=NUM_STAGES):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        fg, dfg, bg = _tile_masks(a_ptr, offs_n, N, theta_fg, theta_bg)
        dx = tl.where(fg[None, :], grad_fg[:, None], 0.0) \
            + tl.where(dfg[None, :], grad_dfg[:, None], 0.0) \
            + tl.where(bg[None, :], grad_bg[:, None], 0.0)
        tl.store(dx_rows + offs_n[None, :] * stride_dxn, dx.to(dx_ptr.dtype.element_ty),
                 mask=mask_c[:, None] & (offs_n < N)[None, :])


# ----------------------------------------------------------------------------------------- launchers

def _check_supported(x: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x must be float32, float16 or bfloat16 for the Triton kernels, got {x.dtype}")


def _grid(batch: int, channels: int):
    return lambda meta: (batch, triton.cdiv(channels, meta["BLOCK_C"]))


def _launch(kernel, wrap):
    """The kernel itself (eager), or wrap_triton(kernel) inside a torch.library.triton_op."""
    return kernel if wrap is None else wrap(kernel)


def masked_gap_forward(x: torch.Tensor, attention: torch.Tensor, gamma_fg: float, gamma_bg: float, wrap=None):
    """(pooled [B, 3, C] in x's dtype, counts [B, 3] int64, dfg_mask [B, N] bool) for x: [B, C, N]."""
    _check_supported(x)
    batch, channels, n = x.shape
    attention = attention.contiguous()
    pooled = torch.empty((batch, 3, channels), dtype=x.dtype, device=x.device)
    counts = torch.empty((batch, 3), dtype=torch.int64, device=x.device)
    dfg_mask = torch.empty((batch, n), dtype=torch.bool, device=x.device)
    if batch == 0:
        return pooled, counts, dfg_mask
    if channels == 0:  # no channel block would run to write the masks and counts
        pooled_unused, counts, dfg_mask = masked_gap_forward(
            x.new_zeros((batch, 1, n)), attention, gamma_fg, gamma_bg, wrap)
        return pooled, counts, dfg_mask
    # The mask is written as bytes: a bool tensor viewed as uint8 keeps one byte per element.
    _launch(_masked_gap_forward_kernel, wrap)[_grid(batch, channels)](
        x, attention, pooled, counts, dfg_mask.view(torch.uint8), channels, n,
        float(gamma_fg), float(gamma_bg), x.stride(0), x.stride(1), x.stride(2))
    return pooled, counts, dfg_mask


def masked_gap_backward(grad_pooled: torch.Tensor, x: torch.Tensor, attention: torch.Tensor,
                        counts: torch.Tensor, gamma_fg: float, gamma_bg: float, wrap=None) -> torch.Tensor:
    """dx (contiguous, x's dtype), written once, with the masks recomputed from the attention."""
    _check_supported(x)
    batch, channels, n = x.shape
    dx = torch.empty((batch, channels, n), dtype=x.dtype, device=x.device)
    if dx.numel() == 0:
        return dx
    _launch(_masked_gap_backward_kernel, wrap)[_grid(batch, channels)](
        grad_pooled.contiguous(), attention.contiguous(), counts.contiguous(), dx, channels, n,
        float(gamma_fg), float(gamma_bg), dx.stride(0), dx.stride(1), dx.stride(2))
    return dx
