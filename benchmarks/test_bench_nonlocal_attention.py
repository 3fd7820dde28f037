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

CUDA rows (test_nonlocal_attention_cuda, skipped without CUDA), in fp32 and bf16, same shapes:
  reference-cuda     the literal form on CUDA, in the input dtype
  pytorch-best-cuda  the padded SDPA on CUDA (whichever backend PyTorch picks for the dtype and C')
  triton             the Triton op (impl="triton"): online softmax, O(B*N) extra memory
  roofline-cuda      the bmm giving S (plus the two gradient products backward), in the input dtype
  They follow conftest.run_cuda_benchmark: warm-up, peak memory, device_ms by CUDA events, then
  CUDA_ROUNDS synchronised rounds. fp32 products are exact fp32 everywhere (PyTorch's default
  float32 matmul precision "highest": no TF32 in cuBLAS, tl.dot "ieee" in Triton).
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

def _cuda_run(provider, f, g, zbar, backward):
    """One call's work on CUDA, enqueued without synchronising (conftest.run_cuda_benchmark times it)."""
    if provider == "roofline-cuda":
        return lambda: _roofline(f.detach(), g.detach(), zbar, backward)
    forward = {
        "reference-cuda": lambda: reference.nonlocal_attention_map(f, g, zbar, 1.0),
        "pytorch-best-cuda": lambda: _sdpa_attention_map(f, g, zbar),
        "triton": lambda: ops.nonlocal_attention_map(f, g, zbar, 1.0, impl="triton"),
    }[provider]

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
@pytest.mark.parametrize("provider", CUDA_PROVIDERS)
@pytest.mark.parametrize("n,c", SHAPES, ids=[f"N{n}-C{c}" for n, c in SHAPES])
def test_nonlocal_attention_cuda(benchmark, run_cuda_benchmark, n, c, provider, mode, dtype):
    if provider == "triton" and not _triton.TRITON_CUDA_AVAILABLE:
        pytest.skip("the Triton op needs triton and its CUDA kernels registered")
    backward = mode == "forward+backward"
    f, g, zbar = (t.detach().to(CUDA_DTYPES[dtype]).requires_grad_(backward)
                  for t in _inputs(n, c, "cuda", requires_grad=False))
    benchmark.group = f"cuda {dtype} nonlocal-attention B{B} N{n} C'{c} {mode}"
    benchmark.extra_info.update({"provider": provider, "mode": mode, "dtype": dtype, "B": B, "N": n, "C'": c,
                                 "device": "cuda"})
    run_cuda_benchmark(_cuda_run(provider, f, g, zbar, backward))
