"""Non-local attention map with value dimension 1 (docs/spec.md §1.3, identity 1), FlashAttention style.

    A_i = sum_j softmax_j(S_ij) zbar_j,    S = f g^T * scale,    f, g: [B, N, C'], zbar: [B, N]

docs/kernels.md has the design in full; in short:

* Forward (`_attention_forward_kernel`, grid (query block, B)). C' is a compile-time constant
  (`tl.constexpr` D): the head dim is cut into NUM_CHUNKS chunks of BLOCK_D unrolled by
  `tl.static_range`, so the key loop is the kernel's only loop and Triton software-pipelines its loads
  (num_stages of the config). With one chunk (C' <= BLOCK_D) the query tile is loaded once, before the
  loop, and stays resident. The full key blocks run without masks; the one partial last block (N not a
  multiple of BLOCK_N) runs after the loop with its key mask. Query rows past N are clamped to row N - 1
  on load (no masks in the loop) and dropped on store. Online softmax with a running *scalar* numerator
  (value dim 1). Saved: A [B, N] (input dtype) and lse [B, N] (fp32, natural log). fp32 tiles past one
  chunk use a runtime chunk loop instead (STATIC_CHUNKS=False): unrolled and pipelined, they would not
  fit in shared memory.
* Backward, "fused" (default; `_attention_backward_kernel`, one launch, grid (block, C' chunk, B)), the
  FlashAttention-2 scheme without atomics: program p first owns key block p and streams every query
  block (dg = dS^T f * scale, dzbar_j = sum_i P_ij dA_i), then owns query block p and streams every key
  block (df = dS g * scale). P = exp(S - lse) is recomputed from the saved lse; with value dim 1,
  dS_ij = P_ij dA_i (zbar_j - A_i). For C' <= 512 one program holds the full-C' fp32 accumulator and the
  owned tile stays resident: 4 passes of N x N x C' work (2 score products, 2 gradient products), no
  atomics, no memset. For C' > 512 (> 128 for fp32 tiles) the output columns are split over programs
  (chunks of 128), each recomputing the scores over the full C' (a correct fallback, not a fast path).
* Backward, "atomic": the key-block program also forms df with fp32 atomic adds (3 passes, a zeroed
  fp32 buffer and a cast). Selectable for measurement; not the default until a GPU run shows it wins.
* Backward, "bmm" (C' >= 384 only by policy): S by cuBLAS bmm (fp32 output), one Triton kernel for
  P, dS and dzbar (`_attention_softmax_grad_kernel`, no atomics), df and dg by cuBLAS bmm. Stores
  B * N^2 elements twice: O(N^2) memory, so only for shapes where a GPU run shows it wins.
  `BACKWARD_POLICY` maps (dtype, N, C') to a variant; empty until a GPU run fills it.
* Precision. Scores, softmax statistics and accumulators are fp32. fp16/bf16 tiles go to tl.dot in
  their own dtype (tensor cores). fp32 tiles use "tf32" when torch.get_float32_matmul_precision() is
  "high" or "medium" (as torch.bmm does then), else "tf32x3" (three TF32 products, about fp32
  accuracy); never plain "ieee" FMA code. The choice is a constexpr made by the launcher
  (`input_precision`); the interpreter computes every dot exactly whatever it is told.

Layers (Liger-Kernel style): @triton.jit kernels; launchers `nonlocal_attention_forward` /
`nonlocal_attention_backward` (pick blocks and variant, allocate, launch; any strides, no copies). The
autograd around them is the ops' own (wsol_fast/ops/_autograd.py; the eager Function in ops/_triton.py).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton import knobs

# Decided when this module is imported, exactly as triton.jit decides interpreted vs compiled.
INTERPRETING = bool(knobs.runtime.interpret)

LOG2E = 1.4426950408889634
# The backward holds a full-C' accumulator (one output chunk) up to this head dim.
MAX_FULL_D = 512
MAX_FULL_D_FP32 = 128
# Output-column chunk of the C' > MAX_FULL_D fallback.
SPLIT_BLOCK_DO = 128


def _configs(blocks_warps_stages, names):
    return [triton.Config(dict(zip(names, blocks)), num_warps=warps, num_stages=stages)
            for blocks, warps, stages in blocks_warps_stages]


# The autotune spaces on a GPU: tiles 64-128 wide (Hopper's wgmma wants >= 64 rows per warpgroup).
# For each launch `_prune_*` keeps, in list order, at most MAX_TUNED configs whose *compiled* kernel fits
# the device's shared memory per block (compiled here for this launch's specialisation, exactly the binary
# the autotuner then times; `_fitting`). A lower bound of the shared memory skips compiling configs that
# cannot fit. tests/ops/test_kernels_sm90_fit.py compiles every kept config offline for sm_90 (no GPU).
FORWARD_GPU_CONFIGS = _configs([((128, 64), 8, 3), ((128, 128), 8, 2), ((64, 64), 4, 3), ((64, 128), 4, 3),
                                ((64, 64), 4, 2), ((64, 32), 4, 2)], ("BLOCK_M", "BLOCK_N"))
# (owned block, streamed block): the owned tile and its fp32 accumulator stay on chip.
BACKWARD_GPU_CONFIGS = _configs([((64, 64), 4, 2), ((64, 64), 8, 2), ((128, 64), 8, 2), ((64, 128), 8, 2),
                                 ((64, 32), 8, 2), ((32, 32), 4, 2)], ("BLOCK_OWN", "BLOCK_STREAM"))
SOFTMAX_GRAD_GPU_CONFIGS = _configs([((64, 128), 4, 3), ((128, 128), 8, 3), ((32, 256), 4, 3)],
                                    ("BLOCK_M", "BLOCK_N"))
# Under the interpreter one small config each (no benchmarking), with BLOCK_M != BLOCK_N so that a
# swapped block size cannot pass the tests.
if INTERPRETING:
    _FORWARD_CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16})]
    _BACKWARD_CONFIGS = [triton.Config({"BLOCK_OWN": 16, "BLOCK_STREAM": 32})]
    _SOFTMAX_GRAD_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32})]
else:
    _FORWARD_CONFIGS, _BACKWARD_CONFIGS = FORWARD_GPU_CONFIGS, BACKWARD_GPU_CONFIGS
    _SOFTMAX_GRAD_CONFIGS = SOFTMAX_GRAD_GPU_CONFIGS
# Autotune results are cached per key in the process: per batch size (the grid's size against the SM
# count), N, C' and precision; Triton adds the tensors' dtypes to the key itself.
_FORWARD_KEY = ["B", "N", "D", "INPUT_PRECISION"]
_BACKWARD_KEY = ["B", "N", "D", "INPUT_PRECISION", "ATOMIC_DF"]
_SOFTMAX_GRAD_KEY = ["B", "N"]

MAX_TUNED = 3
# The autotuned kernels' JITFunctions by name, for `_fitting` (filled below the kernels).
_JIT: dict = {}


def _element_size(tensor) -> int:
    return tensor.element_size() if hasattr(tensor, "element_size") else 2


def device_max_shared() -> int:
    """Shared memory per block (opt-in maximum) of the device triton compiles for: 232,448 B on sm_90."""
    from triton.runtime import driver

    active = driver.active
    return int(active.utils.get_device_properties(active.get_current_device())["max_shared_mem"])


def compiled_shared(jit, named_args: dict, kwargs: dict, config) -> int | None:
    """Shared memory per block of `config` compiled for this launch (the launch's own specialisation,
    through `fn.warmup`; the binary lands in the kernel's cache, where the autotuner's run finds it),
    or None where it does not compile for the target."""
    from triton.compiler.errors import CompileTimeAssertionFailure
    from triton.runtime.errors import OutOfResources, PTXASError

    try:
        compiled = jit.warmup(*named_args.values(), grid=(1,), **kwargs, **config.all_kwargs())
    except (OutOfResources, PTXASError, CompileTimeAssertionFailure):
        return None
    return int(compiled.metadata.shared)


# sm_90's shared memory per block, and the last device limit read outside a trace (for `_fitting` while
# torch.compile traces the pruner, where nothing can be compiled and the driver is not called).
SM90_MAX_SHARED = 232448
_LIMIT_SEEN: list = []


def _tracing(named_args: dict) -> bool:
    """True under torch.compile, or with fake tensors (a trace of the launcher): nothing to compile."""
    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    return any(isinstance(value, FakeTensor) for value in named_args.values())


def shared_upper_estimate(kernel: str, config, args: dict) -> int:
    """A conservative estimate of the compiled kernel's shared memory, for traces only: 3 x (num_stages
    streamed tiles + the resident tile) + 1 KiB. Offline sm_90 compiles (triton 3.6 and 3.8) took at most
    2.8 x the tiles (the fp32 atomic backward); tests/ops/test_kernels_sm90_fit.py checks it is never below."""
    if kernel == "forward":
        rows = config.num_stages * config.kwargs["BLOCK_N"] + config.kwargs["BLOCK_M"]
    else:
        rows = config.num_stages * config.kwargs["BLOCK_STREAM"] + config.kwargs["BLOCK_OWN"]
    return 3 * rows * _width(kernel, args) * _element_size(args["f_ptr"]) + 1024


def _smallest(kernel: str, configs, args: dict):
    best = configs[0]   # a plain loop: torch.compile traces this (no min with a key)
    for config in configs:
        if shared_lower_bound(kernel, config, args) < shared_lower_bound(kernel, best, args):
            best = config
    return best


def _fitting(kernel: str, configs, named_args, kwargs):
    """At most MAX_TUNED configs, in list order, whose compiled kernel fits the device's shared memory.

    Only `candidate_configs` are compiled (a config whose pipelined tiles alone exceed the device, or whose
    accumulator cannot sit in registers, is not). If none fits, the candidate with the least shared memory
    (its launch then raises Triton's OutOfResources, naming the sizes). While torch.compile traces the
    launcher (fake tensors, nothing to compile) the conservative `shared_upper_estimate` decides instead."""
    if _tracing(named_args):
        args = {**named_args, **kwargs}
        limit = _LIMIT_SEEN[0] if _LIMIT_SEEN else SM90_MAX_SHARED
        kept = [c for c in candidate_configs(kernel, configs, args, limit)
                if shared_upper_estimate(kernel, c, args) <= limit][:MAX_TUNED]
        return kept or [_smallest(kernel, configs, args)]
    limit = device_max_shared()
    _LIMIT_SEEN[:] = [limit]
    kept, sizes = [], {}
    for config in candidate_configs(kernel, configs, {**named_args, **kwargs}, limit):
        if len(kept) == MAX_TUNED:
            break
        shared = compiled_shared(_JIT[kernel], named_args, kwargs, config)
        if shared is None:
            continue
        sizes[config] = shared
        if shared <= limit:
            kept.append(config)
    if kept:
        return kept
    return [min(sizes, key=sizes.get)] if sizes else [configs[-1]]


def _width(kernel: str, args: dict) -> int:
    """Head-dim columns of one pipelined step's tiles. Forward: all unrolled chunks, or one chunk of the
    runtime loop. Backward: the output chunk, plus the unrolled score chunks on the split path."""
    if kernel == "forward":
        width = args["D"] if args.get("STATIC_CHUNKS", True) else args["BLOCK_D"]
        return triton.cdiv(width, args["BLOCK_D"]) * args["BLOCK_D"]
    width = args["BLOCK_DO"]
    if args.get("SPLIT_D") and args.get("STATIC_CHUNKS", True):
        width += triton.cdiv(args["D"], args["BLOCK_D"]) * args["BLOCK_D"]
    return width


def shared_lower_bound(kernel: str, config, args: dict) -> int:
    """Bytes of the tiles a pipelined step must hold in shared memory: num_stages - 1 streamed tiles in
    flight (key tiles forward, query or key tiles backward; at least one) plus the resident tile (query
    block forward, owned block backward), each `_width` columns wide. The compiled kernels take this or
    more (offline sm_90 compiles, docs/kernels.md; tests/ops/test_kernels_sm90_fit.py checks every one it
    compiles); it only decides which configs are worth compiling, never which ones fit."""
    if kernel == "forward":
        stream, resident = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_M"]
    else:
        stream, resident = config.kwargs["BLOCK_STREAM"], config.kwargs["BLOCK_OWN"]
    rows = max(1, config.num_stages - 1) * stream + resident
    return rows * _width(kernel, args) * _element_size(args["f_ptr"])


def candidate_configs(kernel: str, configs, args: dict, limit: int) -> list:
    """The configs worth compiling for one launch (`args`: its arguments by name), in list order: shared
    memory lower bound within `limit`; backward: the fp32 accumulator at most 128 registers per thread."""
    def fits_registers(c):
        return kernel == "forward" or c.kwargs["BLOCK_OWN"] * args["BLOCK_DO"] <= 128 * 32 * c.num_warps
    return [c for c in configs if shared_lower_bound(kernel, c, args) <= limit and fits_registers(c)]


def _prune_forward(configs, named_args, **kwargs):
    return _fitting("forward", configs, named_args, kwargs)


def _prune_backward(configs, named_args, **kwargs):
    return _fitting("backward", configs, named_args, kwargs)


# ------------------------------------------------------------------------------------------ kernels

@triton.jit
def _scores(a_rows, b_cols, a_resident, stride_ad, stride_bd,
            D: tl.constexpr, BLOCK_D: tl.constexpr, A_RESIDENT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
            BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, STATIC_CHUNKS: tl.constexpr = True):
    """Unscaled fp32 scores [BLOCK_A, BLOCK_B] = a . b over the head dim D.

    a_rows: [BLOCK_A, 1] row pointers, b_cols: [1, BLOCK_B] row pointers of b (b is read transposed).
    STATIC_CHUNKS: the D chunks are unrolled at compile time and only a partial last chunk carries a
    mask. With A_RESIDENT (one chunk), `a_resident` is the [BLOCK_A, BLOCK_D] tile loaded before the
    caller's loop. Without STATIC_CHUNKS (fp32 tiles with C' > BLOCK_D, whose unrolled chunks would
    not fit in shared memory once pipelined), a runtime loop over masked chunks.
    """
    scores = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    if not STATIC_CHUNKS:
        for d_start in tl.range(0, D, BLOCK_D):
            offs_d = d_start + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            b_t = tl.load(b_cols + offs_d[:, None] * stride_bd, mask=mask_d[:, None], other=0.0)
            a = tl.load(a_rows + offs_d[None, :] * stride_ad, mask=mask_d[None, :], other=0.0)
            scores = tl.dot(a, b_t, scores, input_precision=INPUT_PRECISION)
        return scores
    for chunk in tl.static_range(0, (D + BLOCK_D - 1) // BLOCK_D):
        offs_d = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        if (chunk + 1) * BLOCK_D > D:
            mask_d = offs_d < D
            b_t = tl.load(b_cols + offs_d[:, None] * stride_bd, mask=mask_d[:, None], other=0.0)
            if A_RESIDENT:
                a = a_resident
            else:
                a = tl.load(a_rows + offs_d[None, :] * stride_ad, mask=mask_d[None, :], other=0.0)
        else:
            b_t = tl.load(b_cols + offs_d[:, None] * stride_bd)
            if A_RESIDENT:
                a = a_resident
            else:
                a = tl.load(a_rows + offs_d[None, :] * stride_ad)
        scores = tl.dot(a, b_t, scores, input_precision=INPUT_PRECISION)
    return scores


@triton.jit
def _forward_step(row_max, row_sum, numerator, q_rows, q_resident, g_ptr, zbar_ptr, n_start, N, scale,
                  stride_fd, stride_gn, stride_gd, stride_zn,
                  D: tl.constexpr, BLOCK_D: tl.constexpr, Q_RESIDENT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, STATIC_CHUNKS: tl.constexpr):
    """One key block of the online softmax; MASK_N only for the partial last block."""
    offs_n = n_start + tl.arange(0, BLOCK_N)
    if MASK_N:
        offs_n_load = tl.minimum(offs_n, N - 1)   # in bounds; the scores of these keys become -inf
    else:
        offs_n_load = offs_n
    s = _scores(q_rows, g_ptr + offs_n_load[None, :] * stride_gn, q_resident, stride_fd, stride_gd,
                D, BLOCK_D, Q_RESIDENT, INPUT_PRECISION, BLOCK_M, BLOCK_N, STATIC_CHUNKS) * scale
    zbar = tl.load(zbar_ptr + offs_n_load * stride_zn).to(tl.float32)
    if MASK_N:
        s = tl.where((offs_n < N)[None, :], s, float("-inf"))
    # Every key block holds at least one valid key, so new_max is finite from the first block on.
    new_max = tl.maximum(row_max, tl.max(s, axis=1))
    correction = tl.exp2((row_max - new_max) * 1.4426950408889634)
    p = tl.exp2((s - new_max[:, None]) * 1.4426950408889634)
    row_sum = row_sum * correction + tl.sum(p, axis=1)
    numerator = numerator * correction + tl.sum(p * zbar[None, :], axis=1)
    return new_max, row_sum, numerator


@triton.autotune(configs=_FORWARD_CONFIGS, key=_FORWARD_KEY,
                 prune_configs_by=None if INTERPRETING else {"early_config_prune": _prune_forward})
@triton.jit
def _attention_forward_kernel(
    f_ptr, g_ptr, zbar_ptr, a_out_ptr, lse_ptr, B, N, scale,
    stride_fb, stride_fn, stride_fd, stride_gb, stride_gn, stride_gd, stride_zb, stride_zn,
    D: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr, STATIC_CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """a_out and lse are contiguous [B, N]; f, g, zbar may have any strides."""
    pid_m = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    f_ptr += batch * stride_fb
    g_ptr += batch * stride_gb
    zbar_ptr += batch * stride_zb

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_rows = f_ptr + tl.minimum(offs_m, N - 1)[:, None] * stride_fn   # rows past N repeat row N - 1
    Q_RESIDENT: tl.constexpr = D <= BLOCK_D
    if Q_RESIDENT:
        offs_d = tl.arange(0, BLOCK_D)
        if BLOCK_D > D:
            q_resident = tl.load(q_rows + offs_d[None, :] * stride_fd, mask=(offs_d < D)[None, :], other=0.0)
        else:
            q_resident = tl.load(q_rows + offs_d[None, :] * stride_fd)
    else:
        q_resident = 0.0

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    numerator = tl.zeros([BLOCK_M], dtype=tl.float32)               # sum_j p_ij zbar_j
    n_full = (N // BLOCK_N) * BLOCK_N
    for n_start in tl.range(0, n_full, BLOCK_N):
        row_max, row_sum, numerator = _forward_step(
            row_max, row_sum, numerator, q_rows, q_resident, g_ptr, zbar_ptr, n_start, N, scale,
            stride_fd, stride_gn, stride_gd, stride_zn,
            D, BLOCK_D, Q_RESIDENT, INPUT_PRECISION, BLOCK_M, BLOCK_N, False, STATIC_CHUNKS)
    if n_full < N:
        row_max, row_sum, numerator = _forward_step(
            row_max, row_sum, numerator, q_rows, q_resident, g_ptr, zbar_ptr, n_full, N, scale,
            stride_fd, stride_gn, stride_gd, stride_zn,
            D, BLOCK_D, Q_RESIDENT, INPUT_PRECISION, BLOCK_M, BLOCK_N, True, STATIC_CHUNKS)

    mask_m = offs_m < N
    out_offs = batch * N + offs_m
    tl.store(a_out_ptr + out_offs, (numerator / row_sum).to(a_out_ptr.dtype.element_ty), mask=mask_m)
    tl.store(lse_ptr + out_offs, row_max + tl.log(row_sum), mask=mask_m)


@triton.jit
def _owned_tile(base, offs_rows_load, offs_out, stride_n, stride_d, D: tl.constexpr, BLOCK_DO: tl.constexpr,
                SPLIT_D: tl.constexpr):
    """The [rows, BLOCK_DO] tile of the output columns offs_out (masked only where it can pass D)."""
    ptrs = base + offs_rows_load[:, None] * stride_n + offs_out[None, :] * stride_d
    if SPLIT_D or BLOCK_DO > D:
        return tl.load(ptrs, mask=(offs_out < D)[None, :], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _key_side_step(dg, dzbar, g_owned, zbar_owned, f_ptr, g_cols, row_ptr_lse, row_ptr_grad, row_ptr_a,
                   df_ptr, m_start, N, scale, offs_out, stride_fn, stride_fd, stride_gd,
                   stride_dfn, stride_dfd,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, SPLIT_D: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, ATOMIC_DF: tl.constexpr,
                   BLOCK_OWN: tl.constexpr, BLOCK_STREAM: tl.constexpr, MASK_M: tl.constexpr,
                   STATIC_CHUNKS: tl.constexpr):
    """One query block streamed past the owned key block: dg, dzbar (and df by atomics)."""
    offs_m = m_start + tl.arange(0, BLOCK_STREAM)
    if MASK_M:
        offs_m_load = tl.minimum(offs_m, N - 1)
        valid_m = offs_m < N
        grad_a = tl.where(valid_m, tl.load(row_ptr_grad + offs_m_load).to(tl.float32), 0.0)  # kills rows past N
    else:
        offs_m_load = offs_m
        grad_a = tl.load(row_ptr_grad + offs_m_load).to(tl.float32)
    lse = tl.load(row_ptr_lse + offs_m_load)
    a_row = tl.load(row_ptr_a + offs_m_load).to(tl.float32)
    f_out = _owned_tile(f_ptr, offs_m_load, offs_out, stride_fn, stride_fd, D, BLOCK_DO, SPLIT_D)
    if SPLIT_D:
        s_t = _scores(g_cols, f_ptr + offs_m_load[None, :] * stride_fn, 0.0, stride_gd, stride_fd,
                      D, BLOCK_D, False, INPUT_PRECISION, BLOCK_OWN, BLOCK_STREAM, STATIC_CHUNKS)
    else:   # the full-C' tiles: S^T = g_owned f^T, one product, and f_out serves the gradient product too
        s_t = tl.dot(g_owned, tl.trans(f_out), input_precision=INPUT_PRECISION)
    p_t = tl.exp2((s_t * scale - lse[None, :]) * 1.4426950408889634)
    p_grad_a = p_t * grad_a[None, :]
    dzbar += tl.sum(p_grad_a, axis=1)
    ds_t = (p_grad_a * (zbar_owned[:, None] - a_row[None, :])).to(f_out.dtype)
    dg = tl.dot(ds_t, f_out, dg, input_precision=INPUT_PRECISION)
    if ATOMIC_DF:
        # df[i] += sum_j dS_ij g_j over this key block, in fp32, scaled here (the buffer is the output).
        df_part = tl.dot(tl.trans(ds_t), g_owned, input_precision=INPUT_PRECISION) * scale
        df_ptrs = df_ptr + offs_m[:, None] * stride_dfn + offs_out[None, :] * stride_dfd
        if MASK_M:
            tl.atomic_add(df_ptrs, df_part, mask=(offs_m < N)[:, None] & (offs_out < D)[None, :], sem="relaxed")
        else:
            tl.atomic_add(df_ptrs, df_part, mask=(offs_out < D)[None, :], sem="relaxed")
    return dg, dzbar


@triton.jit
def _query_side_step(df, f_owned, f_rows, lse, grad_a, a_row, g_ptr, zbar_ptr, n_start, N, scale, offs_out,
                     stride_fd, stride_gn, stride_gd, stride_zn,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, SPLIT_D: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, BLOCK_OWN: tl.constexpr, BLOCK_STREAM: tl.constexpr,
                     MASK_N: tl.constexpr, STATIC_CHUNKS: tl.constexpr):
    """One key block streamed past the owned query block: df."""
    offs_n = n_start + tl.arange(0, BLOCK_STREAM)
    if MASK_N:
        offs_n_load = tl.minimum(offs_n, N - 1)
    else:
        offs_n_load = offs_n
    g_out = _owned_tile(g_ptr, offs_n_load, offs_out, stride_gn, stride_gd, D, BLOCK_DO, SPLIT_D)
    zbar = tl.load(zbar_ptr + offs_n_load * stride_zn).to(tl.float32)
    if SPLIT_D:
        s = _scores(f_rows, g_ptr + offs_n_load[None, :] * stride_gn, 0.0, stride_fd, stride_gd,
                    D, BLOCK_D, False, INPUT_PRECISION, BLOCK_OWN, BLOCK_STREAM, STATIC_CHUNKS)
    else:
        s = tl.dot(f_owned, tl.trans(g_out), input_precision=INPUT_PRECISION)
    p = tl.exp2((s * scale - lse[:, None]) * 1.4426950408889634)
    if MASK_N:
        p = tl.where((offs_n < N)[None, :], p, 0.0)
    ds = (p * grad_a[:, None] * (zbar[None, :] - a_row[:, None])).to(g_out.dtype)
    return tl.dot(ds, g_out, df, input_precision=INPUT_PRECISION)


@triton.autotune(configs=_BACKWARD_CONFIGS, key=_BACKWARD_KEY,
                 prune_configs_by=None if INTERPRETING else {"early_config_prune": _prune_backward})
@triton.jit
def _attention_backward_kernel(
    grad_a_ptr, f_ptr, g_ptr, zbar_ptr, a_ptr, lse_ptr, df_ptr, dg_ptr, dzbar_ptr, B, N, scale,
    stride_fb, stride_fn, stride_fd, stride_gb, stride_gn, stride_gd, stride_zb, stride_zn,
    stride_dfb, stride_dfn, stride_dfd, stride_dgb, stride_dgn, stride_dgd, stride_dzb, stride_dzn,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, SPLIT_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ATOMIC_DF: tl.constexpr, STATIC_CHUNKS: tl.constexpr,
    BLOCK_OWN: tl.constexpr, BLOCK_STREAM: tl.constexpr,
):
    """Key block p (dg, dzbar), then query block p (df) of one sample and one output-column chunk.

    grad_a, a, lse are contiguous [B, N]; with ATOMIC_DF, df is a zeroed fp32 buffer and the query
    phase is skipped. Without SPLIT_D, BLOCK_DO = BLOCK_D >= D and the owned tile is resident.
    """
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    f_ptr += batch * stride_fb
    g_ptr += batch * stride_gb
    zbar_ptr += batch * stride_zb
    df_ptr += batch * stride_dfb
    row_ptr_lse = lse_ptr + batch * N
    row_ptr_grad = grad_a_ptr + batch * N
    row_ptr_a = a_ptr + batch * N
    offs_own = pid * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
    offs_own_load = tl.minimum(offs_own, N - 1)
    mask_own = offs_own < N
    offs_out = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    stream_full = (N // BLOCK_STREAM) * BLOCK_STREAM

    # ---- phase 1: the key block pid: dg and dzbar
    zbar_owned = tl.load(zbar_ptr + offs_own_load * stride_zn).to(tl.float32)
    g_cols = g_ptr + offs_own_load[:, None] * stride_gn
    g_owned = _owned_tile(g_ptr, offs_own_load, offs_out, stride_gn, stride_gd, D, BLOCK_DO, SPLIT_D)
    if ATOMIC_DF:   # owned rows past N repeat key N - 1: zero them, or they would add to df again
        g_owned = tl.where(mask_own[:, None], g_owned, 0.0).to(g_owned.dtype)
    dg = tl.zeros([BLOCK_OWN, BLOCK_DO], dtype=tl.float32)
    dzbar = tl.zeros([BLOCK_OWN], dtype=tl.float32)
    for m_start in tl.range(0, stream_full, BLOCK_STREAM):
        dg, dzbar = _key_side_step(
            dg, dzbar, g_owned, zbar_owned, f_ptr, g_cols, row_ptr_lse, row_ptr_grad, row_ptr_a, df_ptr,
            m_start, N, scale, offs_out, stride_fn, stride_fd, stride_gd, stride_dfn, stride_dfd,
            D, BLOCK_D, BLOCK_DO, SPLIT_D, INPUT_PRECISION, ATOMIC_DF, BLOCK_OWN, BLOCK_STREAM, False,
            STATIC_CHUNKS)
    if stream_full < N:
        dg, dzbar = _key_side_step(
            dg, dzbar, g_owned, zbar_owned, f_ptr, g_cols, row_ptr_lse, row_ptr_grad, row_ptr_a, df_ptr,
            stream_full, N, scale, offs_out, stride_fn, stride_fd, stride_gd, stride_dfn, stride_dfd,
            D, BLOCK_D, BLOCK_DO, SPLIT_D, INPUT_PRECISION, ATOMIC_DF, BLOCK_OWN, BLOCK_STREAM, True,
            STATIC_CHUNKS)
    mask_out = offs_out < D
    dg_ptrs = dg_ptr + batch * stride_dgb + offs_own[:, None] * stride_dgn + offs_out[None, :] * stride_dgd
    tl.store(dg_ptrs, (dg * scale).to(dg_ptr.dtype.element_ty), mask=mask_own[:, None] & mask_out[None, :])
    tl.store(dzbar_ptr + batch * stride_dzb + offs_own * stride_dzn, dzbar.to(dzbar_ptr.dtype.element_ty),
             mask=mask_own & (pid_d == 0))

    # ---- phase 2: the query block pid: df
    if not ATOMIC_DF:
        lse = tl.load(row_ptr_lse + offs_own_load)
        grad_a = tl.load(row_ptr_grad + offs_own_load).to(tl.float32)
        a_row = tl.load(row_ptr_a + offs_own_load).to(tl.float32)
        f_rows = f_ptr + offs_own_load[:, None] * stride_fn
        f_owned = _owned_tile(f_ptr, offs_own_load, offs_out, stride_fn, stride_fd, D, BLOCK_DO, SPLIT_D)
        df = tl.zeros([BLOCK_OWN, BLOCK_DO], dtype=tl.float32)
        for n_start in tl.range(0, stream_full, BLOCK_STREAM):
            df = _query_side_step(
                df, f_owned, f_rows, lse, grad_a, a_row, g_ptr, zbar_ptr, n_start, N, scale, offs_out,
                stride_fd, stride_gn, stride_gd, stride_zn,
                D, BLOCK_D, BLOCK_DO, SPLIT_D, INPUT_PRECISION, BLOCK_OWN, BLOCK_STREAM, False, STATIC_CHUNKS)
        if stream_full < N:
            df = _query_side_step(
                df, f_owned, f_rows, lse, grad_a, a_row, g_ptr, zbar_ptr, stream_full, N, scale, offs_out,
                stride_fd, stride_gn, stride_gd, stride_zn,
                D, BLOCK_D, BLOCK_DO, SPLIT_D, INPUT_PRECISION, BLOCK_OWN, BLOCK_STREAM, True, STATIC_CHUNKS)
        df_ptrs = df_ptr + offs_own[:, None] * stride_dfn + offs_out[None, :] * stride_dfd
        tl.store(df_ptrs, (df * scale).to(df_ptr.dtype.element_ty), mask=mask_own[:, None] & mask_out[None, :])


@triton.autotune(configs=_SOFTMAX_GRAD_CONFIGS, key=_SOFTMAX_GRAD_KEY)
@triton.jit
def _attention_softmax_grad_kernel(
    s_ptr, grad_a_ptr, zbar_ptr, a_ptr, lse_ptr, ds_ptr, dzbar_ptr, B, N, scale,
    stride_zb, stride_zn, stride_dzb, stride_dzn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The "bmm" backward's elementwise part, for one key block (a column strip of S) of one sample:
    ds = scale * P dA (zbar_j - A_i) with P = exp(S * scale - lse), dzbar_j = sum_i P_ij dA_i.

    s (fp32) and ds (input dtype) are contiguous [B, N, N]; grad_a, a, lse contiguous [B, N].
    """
    pid_n = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    s_ptr += batch * N * N
    ds_ptr += batch * N * N
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    zbar = tl.load(zbar_ptr + batch * stride_zb + offs_n * stride_zn, mask=mask_n, other=0.0).to(tl.float32)
    dzbar = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m_start in tl.range(0, N, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        mask = mask_m[:, None] & mask_n[None, :]
        lse = tl.load(lse_ptr + batch * N + offs_m, mask=mask_m, other=0.0)
        grad_a = tl.load(grad_a_ptr + batch * N + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        a_row = tl.load(a_ptr + batch * N + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        tile = offs_m[:, None] * N + offs_n[None, :]
        s = tl.load(s_ptr + tile, mask=mask, other=0.0)
        p_grad_a = tl.where(mask, tl.exp2((s * scale - lse[:, None]) * 1.4426950408889634), 0.0) * grad_a[:, None]
        dzbar += tl.sum(p_grad_a, axis=0)
        ds = p_grad_a * (zbar[None, :] - a_row[:, None]) * scale
        tl.store(ds_ptr + tile, ds.to(ds_ptr.dtype.element_ty), mask=mask)
    tl.store(dzbar_ptr + batch * stride_dzb + offs_n * stride_dzn, dzbar.to(dzbar_ptr.dtype.element_ty), mask=mask_n)


if not INTERPRETING:
    _JIT.update(forward=_attention_forward_kernel.fn, backward=_attention_backward_kernel.fn)


# ----------------------------------------------------------------------------------------- launchers

BACKWARD_VARIANTS = ("fused", "atomic", "bmm")
# (dtype name, N, C') -> backward variant, filled from a GPU run's measurements (scripts/dev/gpu_check.sh
# benchmarks every variant; docs/kernels.md). Empty: every shape takes "fused" until then.
BACKWARD_POLICY: dict[tuple[str, int, int], str] = {}
# WSOL_FAST_ATTENTION_BACKWARD=fused|atomic|bmm forces one variant (benchmarks, experiments). Read at
# import; the benchmarks set this attribute instead.
FORCE_BACKWARD: str | None = os.environ.get("WSOL_FAST_ATTENTION_BACKWARD") or None
# The bmm variant only where its O(N^2) buffers buy something: C' large enough for cuBLAS to beat 4 passes.
BMM_MIN_HEAD_DIM = 384


def _measured_variant(dtype: torch.dtype, n: int, head_dim: int) -> str | None:
    """The backward variant the dispatch table (wsol_fast/ops/dispatch_table.json) measured fastest at the
    nearest measured shape, where it names one."""
    from wsol_fast.ops import dispatch

    choice = dispatch.choose("nonlocal_attention_map", dtype, (n, head_dim))
    return choice.variant if choice is not None and choice.impl == "triton" else None


def backward_variant(dtype: torch.dtype, n: int, head_dim: int, force: str | None = None) -> str:
    """The backward variant for one shape: `force` / FORCE_BACKWARD, else BACKWARD_POLICY, else the
    dispatch table's measured variant (nearest shape), else "fused"."""
    choice = force or FORCE_BACKWARD
    if choice is None:
        choice = (BACKWARD_POLICY.get((str(dtype).removeprefix("torch."), n, head_dim))
                  or _measured_variant(dtype, n, head_dim) or "fused")
        if choice == "bmm" and head_dim < BMM_MIN_HEAD_DIM:
            choice = "fused"
    if choice not in BACKWARD_VARIANTS:
        raise ValueError(f"attention backward variant must be one of {BACKWARD_VARIANTS}, got {choice!r} "
                         "(WSOL_FAST_ATTENTION_BACKWARD or BACKWARD_POLICY)")
    return choice


def input_precision(dtype: torch.dtype, matmul_precision: str | None = None) -> str:
    """tl.dot precision of fp32 tiles under torch's float32 matmul policy: "tf32" where it allows TF32
    ("high", "medium"), else "tf32x3" (about fp32 accuracy on tensor cores), never "ieee". fp16/bf16
    tiles multiply in their own dtype (the argument only concerns fp32 operands)."""
    if dtype != torch.float32:
        return "tf32"
    policy = matmul_precision or torch.get_float32_matmul_precision()
    return "tf32" if policy in ("high", "medium") else "tf32x3"


def _head_block(head_dim: int) -> int:
    """Chunk of the head dim per tl.dot in the forward: >= 16 (tl.dot's minimum), at most 128 (32 under
    the interpreter, so that C' = 144 and 512 run several chunks, the last of 144 partial)."""
    cap = 32 if INTERPRETING else 128
    return min(max(16, triton.next_power_of_2(head_dim)), cap)


# Widest C' whose chunks are unrolled for 16-bit tiles: past it no config's pipelined tiles fit sm_90's
# 227 KiB (bf16 C' 1024: 64 x 32 at 2 stages needs (2 * 32 + 64) * 1024 * 2 * 2 = 256 KiB).
MAX_STATIC_D = 512


def _static_chunks(dtype: torch.dtype, head_dim: int) -> bool:
    """Unroll the C' chunks (static_range) up to MAX_STATIC_D for 16-bit tiles and within one chunk for
    fp32; past that a runtime chunk loop, whose pipelined tiles are one chunk wide (offline sm_90
    compiles, docs/kernels.md)."""
    if head_dim <= _head_block(head_dim):
        return True
    return dtype != torch.float32 and head_dim <= MAX_STATIC_D


def _max_full_d(dtype: torch.dtype) -> int:
    """Widest C' with a full-C' backward accumulator: MAX_FULL_D (512) for 16-bit tiles, 128 for fp32
    (its tiles take twice the bytes, and tf32x3 more: a 512-wide fp32 owned tile cannot fit)."""
    return MAX_FULL_D if dtype != torch.float32 else min(MAX_FULL_D, MAX_FULL_D_FP32)


def _backward_blocks(head_dim: int, dtype: torch.dtype = torch.float16) -> tuple[int, int, bool]:
    """(BLOCK_D score chunk, BLOCK_DO output chunk, SPLIT_D) of the backward."""
    if head_dim <= _max_full_d(dtype):
        full = max(16, triton.next_power_of_2(head_dim))
        return full, full, False
    return _head_block(head_dim), min(SPLIT_BLOCK_DO, max(16, triton.next_power_of_2(head_dim))), True


def _check_supported(f: torch.Tensor) -> None:
    if f.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"f must be float32, float16 or bfloat16 for the Triton kernels, got {f.dtype}")


def _launch(kernel, wrap):
    """The kernel itself (eager), or wrap_triton(kernel) inside a torch.library.triton_op."""
    return kernel if wrap is None else wrap(kernel)


def nonlocal_attention_forward(f: torch.Tensor, g: torch.Tensor, zbar: torch.Tensor, scale: float, wrap=None):
    """A [B, N] (dtype of f) and lse [B, N] (fp32, natural log) of softmax(f g^T * scale) zbar."""
    _check_supported(f)
    batch, n, head_dim = f.shape
    head_dim = int(head_dim)   # a compile-time constant of the kernels (specialised under torch.compile)
    a_out = torch.empty((batch, n), dtype=f.dtype, device=f.device)
    lse = torch.empty((batch, n), dtype=torch.float32, device=f.device)
    if batch == 0:
        return a_out, lse
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), batch)  # noqa: E731
    _launch(_attention_forward_kernel, wrap)[grid](
        f, g, zbar, a_out, lse, batch, n, float(scale),
        f.stride(0), f.stride(1), f.stride(2), g.stride(0), g.stride(1), g.stride(2), zbar.stride(0), zbar.stride(1),
        D=head_dim, BLOCK_D=_head_block(head_dim), INPUT_PRECISION=input_precision(f.dtype),
        STATIC_CHUNKS=_static_chunks(f.dtype, head_dim),
    )
    return a_out, lse


def _scores_fp32(f, g):
    """S = f g^T unscaled as fp32 [B, N, N]: cuBLAS with fp32 output for half inputs on CUDA."""
    if f.dtype == torch.float32:
        return torch.bmm(f, g.transpose(1, 2))
    if f.is_cuda:
        try:
            return torch.bmm(f, g.transpose(1, 2), out_dtype=torch.float32)
        except TypeError:   # a torch without bmm's out_dtype: the same product on fp32 copies
            pass
    return torch.bmm(f.float(), g.float().transpose(1, 2))   # CPU tensors (interpreter tests)


def _backward_bmm(grad_a, f, g, zbar, a, lse, scale, df, dg, dzbar, wrap):
    batch, n, _ = f.shape
    scores = _scores_fp32(f, g)
    ds = torch.empty((batch, n, n), dtype=f.dtype, device=f.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), batch)  # noqa: E731
    _launch(_attention_softmax_grad_kernel, wrap)[grid](
        scores, grad_a, zbar, a, lse, ds, dzbar, batch, n, scale,
        zbar.stride(0), zbar.stride(1), dzbar.stride(0), dzbar.stride(1))
    # ds carries the scale already. out= keeps the layouts of empty_like(f), as the fake kernel declares.
    torch.bmm(ds, g, out=df)
    torch.bmm(ds.transpose(1, 2), f, out=dg)
    return df, dg, dzbar


def nonlocal_attention_backward(grad_a: torch.Tensor, f: torch.Tensor, g: torch.Tensor, zbar: torch.Tensor,
                                a: torch.Tensor, lse: torch.Tensor, scale: float, variant: str | None = None,
                                wrap=None):
    """(df, dg, dzbar) of A = softmax(f g^T * scale) zbar, from the saved A and lse.

    `variant` ("fused", "atomic", "bmm") overrides `backward_variant`'s choice for this shape.
    """
    _check_supported(f)
    batch, n, head_dim = f.shape
    head_dim = int(head_dim)
    # [B, N] side inputs are read as contiguous rows (tiny; a copy only if a caller passes a view).
    grad_a, a, lse = grad_a.contiguous(), a.contiguous(), lse.contiguous().float()
    df, dg = torch.empty_like(f), torch.empty_like(g)
    dzbar = torch.empty_like(zbar)
    if batch == 0:
        return df, dg, dzbar
    scale = float(scale)
    variant = backward_variant(f.dtype, n, head_dim, force=variant)
    if variant == "bmm":
        return _backward_bmm(grad_a, f, g, zbar, a, lse, scale, df, dg, dzbar, wrap)
    block_d, block_do, split_d = _backward_blocks(head_dim, f.dtype)
    atomic = variant == "atomic"
    df_out = torch.zeros(f.shape, dtype=torch.float32, device=f.device) if atomic else df
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_OWN"]), triton.cdiv(head_dim, block_do), batch)  # noqa: E731
    _launch(_attention_backward_kernel, wrap)[grid](
        grad_a, f, g, zbar, a, lse, df_out, dg, dzbar, batch, n, scale,
        f.stride(0), f.stride(1), f.stride(2), g.stride(0), g.stride(1), g.stride(2), zbar.stride(0), zbar.stride(1),
        df_out.stride(0), df_out.stride(1), df_out.stride(2), dg.stride(0), dg.stride(1), dg.stride(2),
        dzbar.stride(0), dzbar.stride(1),
        D=head_dim, BLOCK_D=block_d, BLOCK_DO=block_do, SPLIT_D=split_d,
        INPUT_PRECISION=input_precision(f.dtype), ATOMIC_DF=atomic, STATIC_CHUNKS=_static_chunks(f.dtype, head_dim),
    )
    if atomic:
        df.copy_(df_out)
    return df, dg, dzbar
