"""Non-local attention map A = softmax(f g^T s) zbar: providers x modes x shapes, time and peak memory.

Providers:
  reference     the literal form (stored N x N softmax, wsol_fast.ops.reference), fp32
  pytorch-best  F.scaled_dot_product_attention with zbar zero-padded to C' value columns (column 0 is A)
  fused         the C++ op (impl="cpp"): online softmax, O(B*N) extra memory
  roofline      the matrix products alone: the bmm giving S (forward); plus the two gradient products
                dS g and dS^T f (forward+backward), i.e. the least GEMM work of any method
  triton        the Triton op on CUDA (skipped without CUDA)
extra_info holds peak_mb (see conftest.py: bytes allocated during one call, gradients included).

    pytest benchmarks/test_bench_nonlocal_attention.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import synchronize
from wsol_fast import ops
from wsol_fast.ops import _library, reference

B = 8
SHAPES = [(784, 128), (784, 512), (3136, 128), (3136, 512)]   # (N, C'): 28x28 and 56x56 maps
PROVIDERS = ["reference", "pytorch-best", "fused", "roofline", "triton"]
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
    elif provider == "fused":
        forward = lambda: ops.nonlocal_attention_map(f, g, zbar, 1.0, impl="cpp")  # noqa: E731
    elif provider == "triton":
        forward = lambda: ops.nonlocal_attention_map(f, g, zbar, 1.0, impl="triton")  # noqa: E731
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
def test_nonlocal_attention(benchmark, record_peak_memory, n, c, provider, mode):
    device = "cuda" if provider == "triton" else "cpu"
    if provider == "triton":
        from wsol_fast.ops import _triton
        if not _triton.TRITON_CUDA_AVAILABLE:
            pytest.skip("the Triton op needs CUDA and triton")
    if provider == "fused" and not _library.CPP_AVAILABLE:
        pytest.skip("wsol_fast._C is not built")
    backward = mode == "forward+backward"
    f, g, zbar = _inputs(n, c, device, requires_grad=backward)
    call = _make_call(provider, f, g, zbar, backward, device)
    benchmark.group = f"nonlocal-attention B{B} N{n} C'{c} {mode}"
    benchmark.extra_info.update({"provider": provider, "mode": mode, "B": B, "N": n, "C'": c,
                                 "device": device, "threads": torch.get_num_threads()})
    record_peak_memory(call, device)   # also the warm-up
    # A few rounds: the N = 3136 reference stores 8 x 3136^2 floats per matrix and takes seconds.
    rounds = 3 if n <= 784 else 2
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
