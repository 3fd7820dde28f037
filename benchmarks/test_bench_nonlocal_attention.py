"""Non-local attention map A = softmax(f g^T s) zbar: providers x modes x shapes, time and peak memory.

Providers:
  reference     the literal form (stored N x N softmax, wsol_fast.ops.reference), fp32
  pytorch-best  F.scaled_dot_product_attention with zbar zero-padded to C' value columns (column 0 is A)
  fused         the C++ op (impl="cpp"): online softmax, O(B*N) extra memory; fp32 tile GEMMs through
                oneDNN (csrc/gemm.h), the default wherever ATen has oneDNN
  fused-blas    the same op with WSOL_FAST_CPU_GEMM=blas: tile GEMMs through the BLAS of torch.bmm
                (MKL), which separates the kernel's design from the GEMM library's speed
  roofline      the matrix products alone: the bmm giving S (forward); plus the two gradient products
                dS g and dS^T f (forward+backward), i.e. the least GEMM work of any method

CUDA rows (test_nonlocal_attention_cuda, skipped without CUDA), fp32 and bf16, B = CUDA_B = 32 (the
training batch), CUDA_SHAPES: N = 784 with C' in {128, 256, 512, 1024} and N = 3136 with C' in {128, 512}:
  reference-cuda     the literal form on CUDA, in the input dtype
  pytorch-best-cuda  the padded SDPA on CUDA (whichever backend PyTorch picks for the dtype and C')
  triton             the Triton op (impl="triton"): online softmax, O(B*N) extra memory; its backward is
                     the variant the policy picks for the shape (kernels/nonlocal_attention.py)
  triton-atomic      forward+backward only: the same with the atomic-df backward forced
  triton-bmm         forward+backward, C' >= 384 only: the cuBLAS-bmm backward forced
  roofline-cuda      the bmm giving S (plus the two gradient products backward), in the input dtype
  Each row records device_ms (CUDA-graph replay, the GPU's own time), eager_events_ms (events around
  the eager call: host launch gaps included) and pytest-benchmark's host-inclusive median
  (benchmarks/cuda_timing.py). fp32 products follow PyTorch's float32 matmul precision, default
  "highest": no TF32 in cuBLAS, "tf32x3" tl.dot in Triton.
extra_info holds peak_mb (see conftest.py: bytes allocated during one call, gradients included) and
extra_mb: peak_mb minus the call's results every method must allocate (A; with backward also the
gradients of f, g and zbar), i.e. the method's own working memory.

    pytest benchmarks/test_bench_nonlocal_attention.py --benchmark-only
    pytest benchmarks/test_bench_nonlocal_attention.py --benchmark-only -k "cuda or triton"   # CUDA rows only
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import synchronize
from wsol_fast import ops
from wsol_fast.ops import _library, _triton, reference

B = 8
SHAPES = [(784, 128), (784, 512), (3136, 128), (3136, 512)]   # (N, C'): 28x28 and 56x56 maps
PROVIDERS = ["reference", "pytorch-best", "fused", "fused-blas", "roofline"]
CUDA_PROVIDERS = ["reference-cuda", "pytorch-best-cuda", "triton", "roofline-cuda"]
CUDA_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ["forward", "forward+backward"]


def _inputs(n, c, device, requires_grad):
    torch.manual_seed(0)
    f = torch.randn(B, n, c, device=device) / c ** 0.5
    g = torch.randn(B, n, c, device=device)
    zbar = torch.randn(B, n, device=device)
    return [t.requires_grad_(requires_grad) for t in (f, g, zbar)]


def _sdpa_attention_map(f, g, zbar):
    # SDPA wants one head dim for q, k and v: the value is zbar padded with zeros to C' columns.
    value = F.pad(zbar.unsqueeze(-1), (0, f.shape[-1] - 1))
    out = F.scaled_dot_product_attention(f.unsqueeze(1), g.unsqueeze(1), value.unsqueeze(1), scale=1.0)
    return out[:, 0, :, 0]


def _roofline(f, g, zbar, backward):
    s = torch.bmm(f, g.transpose(1, 2))
    if backward:   # the two products of the gradient, with S standing in for dS
        torch.bmm(s, g)
        torch.bmm(s.transpose(1, 2), f)
    return s


def _make_call(provider, f, g, zbar, backward, device):
    if provider == "reference":
        forward = lambda: reference.nonlocal_attention_map(f, g, zbar, 1.0)  # noqa: E731
    elif provider == "pytorch-best":
        forward = lambda: _sdpa_attention_map(f, g, zbar)  # noqa: E731
    elif provider in ("fused", "fused-blas"):
        forward = lambda: ops.nonlocal_attention_map(f, g, zbar, 1.0, impl="cpp")  # noqa: E731
    else:
        return lambda: (_roofline(f.detach(), g.detach(), zbar, backward), synchronize(device))

    def call():
        out = forward()
        if backward:
            for t in (f, g, zbar):
                t.grad = None
            out.sum().backward()
        synchronize(device)
    return call


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n,c", SHAPES, ids=[f"N{n}-C{c}" for n, c in SHAPES])
def test_nonlocal_attention(benchmark, record_peak_memory, monkeypatch, n, c, provider, mode):
    device = "cpu"
    if provider.startswith("fused") and not _library.CPP_AVAILABLE:
        pytest.skip("wsol_fast._C is not built")
    monkeypatch.setenv("WSOL_FAST_CPU_GEMM", "blas" if provider == "fused-blas" else "")
    backward = mode == "forward+backward"
    f, g, zbar = _inputs(n, c, device, requires_grad=backward)
    call = _make_call(provider, f, g, zbar, backward, device)
    benchmark.group = f"nonlocal-attention B{B} N{n} C'{c} {mode}"
    benchmark.extra_info.update({"provider": provider, "mode": mode, "B": B, "N": n, "C'": c,
                                 "device": device, "threads": torch.get_num_threads()})
    peak = record_peak_memory(call, device)   # also the warm-up
    results = B * n + (2 * B * n * c + B * n if backward else 0)   # A (+ df, dg, dzbar), fp32
    benchmark.extra_info["extra_mb"] = round((peak - 4 * results) / 2**20, 2)
    # A few rounds: the N = 3136 reference stores 8 x 3136^2 floats per matrix and takes seconds.
    rounds = 3 if n <= 784 else 2
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)


# ---------------------------------------------------------------------------------------------- CUDA

CUDA_B = 32
CUDA_SHAPES = [(784, 128), (784, 256), (784, 512), (784, 1024), (3136, 128), (3136, 512)]
TRITON_VARIANTS = {"triton": None, "triton-atomic": "atomic", "triton-bmm": "bmm"}


def _cuda_inputs(n, c, dtype, requires_grad):
    torch.manual_seed(0)
    f = torch.randn(CUDA_B, n, c, device="cuda") / c ** 0.5
    g = torch.randn(CUDA_B, n, c, device="cuda")
    zbar = torch.randn(CUDA_B, n, device="cuda")
    return [t.to(dtype).requires_grad_(requires_grad) for t in (f, g, zbar)]


def _cuda_run(provider, f, g, zbar, backward):
    """One call's work on CUDA, enqueued without synchronising (cuda_timing.measure_cuda times it)."""
    if provider == "roofline-cuda":
        return lambda: _roofline(f.detach(), g.detach(), zbar, backward)
    forward = {
        "reference-cuda": lambda: reference.nonlocal_attention_map(f, g, zbar, 1.0),
        "pytorch-best-cuda": lambda: _sdpa_attention_map(f, g, zbar),
    }.get(provider, lambda: ops.nonlocal_attention_map(f, g, zbar, 1.0, impl="triton"))

    def run():
        out = forward()
        if backward:
            for t in (f, g, zbar):
                t.grad = None
            out.sum().backward()
    return run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA rows: no CUDA device")
@pytest.mark.parametrize("dtype", list(CUDA_DTYPES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", CUDA_PROVIDERS + ["triton-atomic", "triton-bmm"])
@pytest.mark.parametrize("n,c", CUDA_SHAPES, ids=[f"N{n}-C{c}" for n, c in CUDA_SHAPES])
def test_nonlocal_attention_cuda(benchmark, record_peak_memory, monkeypatch, n, c, provider, mode, dtype):
    from cuda_timing import measure_cuda

    backward = mode == "forward+backward"
    if provider.startswith("triton"):
        if not _triton.TRITON_CUDA_AVAILABLE:
            pytest.skip("the Triton op needs triton and its CUDA kernels registered")
        variant = TRITON_VARIANTS[provider]
        if variant is not None and not backward:
            pytest.skip("backward variants: the forward is the same kernel")
        if variant == "bmm" and c < 384:
            pytest.skip("the bmm backward is a candidate only for C' >= 384")
        from wsol_fast.kernels import nonlocal_attention as attention_kernels
        monkeypatch.setattr(attention_kernels, "FORCE_BACKWARD", variant)
        if variant is None:
            benchmark.extra_info["backward_variant"] = attention_kernels.backward_variant(CUDA_DTYPES[dtype], n, c)
    f, g, zbar = _cuda_inputs(n, c, CUDA_DTYPES[dtype], backward)
    benchmark.group = f"cuda {dtype} nonlocal-attention B{CUDA_B} N{n} C'{c} {mode}"
    benchmark.extra_info.update({"provider": provider, "mode": mode, "dtype": dtype, "B": CUDA_B, "N": n, "C'": c,
                                 "device": "cuda", "op": "nonlocal-attention",
                                 "float32_matmul_precision": torch.get_float32_matmul_precision()})
    measure_cuda(benchmark, record_peak_memory, _cuda_run(provider, f, g, zbar, backward))
