"""Masks + masked GAP (docs/spec.md §1.1, Eq. 3): providers x modes x shapes, time and peak memory.

Providers:
  reference     three masked multiplies and sums (wsol_fast.ops.reference): three reads of x, three copies
  pytorch-best  one bmm of x [B, C, N] with a [B, 3, N] matrix of mask / count weights
  fused         the C++ op (impl="cpp"): one read of x for all three sums, one write of dx backward
  roofline      one plain x.sum((2, 3)) on the [B, C, H, W] tensor (forward); plus one write of an
                x-sized tensor (forward+backward, standing for dx)

CUDA rows (test_masked_gap_cuda, skipped without CUDA), in fp32 and bf16, same shapes:
  reference-cuda     the literal form on CUDA
  pytorch-best-cuda  the bmm with the [B, 3, N] mask / count matrix on CUDA
  triton             the Triton op (impl="triton"): one read of x, one write of dx backward
  roofline-cuda      one plain x.sum((2, 3)) on CUDA (plus one x-sized write backward)
  Each row records device_ms (CUDA-graph replay, the GPU's own time), eager_events_ms (events around
  the eager call: host launch gaps included) and pytest-benchmark's host-inclusive median
  (benchmarks/cuda_timing.py); "bytes" is the read + write roofline traffic (x read once, dx written
  once backward) for the bandwidth target.
extra_info holds peak_mb (see conftest.py: bytes allocated during one call, gradients included).

    pytest benchmarks/test_bench_masked_gap.py --benchmark-only
    pytest benchmarks/test_bench_masked_gap.py --benchmark-only -k "cuda or triton"   # CUDA rows only
"""
from __future__ import annotations

import pytest
import torch

from conftest import synchronize
from wsol_fast import ops
from wsol_fast.ops import _library, _triton, reference

B, C = 32, 1024
SIZES = [28, 56]
PROVIDERS = ["reference", "pytorch-best", "fused", "roofline"]
CUDA_PROVIDERS = ["reference-cuda", "pytorch-best-cuda", "triton", "roofline-cuda"]
CUDA_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ["forward", "forward+backward"]
GAMMA_FG, GAMMA_BG = 0.72, 1.2


def _bmm_masked_gap(x, attention):
    fg, dfg, bg = reference.attention_masks(attention, GAMMA_FG, GAMMA_BG)
    masks = torch.stack([fg, dfg, bg], dim=1).to(x.dtype)                      # [B, 3, N]
    weights = masks / masks.sum(dim=2, keepdim=True).clamp(min=1)
    return torch.bmm(weights, x.transpose(1, 2))                                # [B, 3, C]


def _make_call(provider, x4d, attention, backward, device):
    x = x4d.flatten(2)
    if provider == "reference":
        forward = lambda: reference.masked_gap(x, attention, GAMMA_FG, GAMMA_BG)[0]  # noqa: E731
    elif provider == "pytorch-best":
        forward = lambda: _bmm_masked_gap(x, attention)  # noqa: E731
    elif provider == "fused":
        forward = lambda: ops.masked_gap(x, attention, GAMMA_FG, GAMMA_BG, impl="cpp")[0]  # noqa: E731
    else:
        def roofline():
            x4d.detach().sum((2, 3))
            if backward:
                torch.empty_like(x4d).fill_(1.0)
            synchronize(device)
        return roofline

    def call():
        out = forward()
        if backward:
            x4d.grad = None
            out.sum().backward()
        synchronize(device)
    return call


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{s}x{s}" for s in SIZES])
def test_masked_gap(benchmark, record_peak_memory, size, provider, mode):
    device = "cpu"
    if provider == "fused" and not _library.CPP_AVAILABLE:
        pytest.skip("wsol_fast._C is not built")
    backward = mode == "forward+backward"
    torch.manual_seed(0)
    x4d = torch.randn(B, C, size, size, device=device, requires_grad=backward)
    attention = torch.randn(B, size * size, device=device)
    call = _make_call(provider, x4d, attention, backward, device)
    benchmark.group = f"masked-gap B{B} C{C} {size}x{size} {mode}"
    benchmark.extra_info.update({"provider": provider, "mode": mode, "B": B, "C": C, "N": size * size,
                                 "device": device, "threads": torch.get_num_threads()})
    record_peak_memory(call, device)   # also the warm-up
    benchmark.pedantic(call, rounds=5 if size <= 28 else 3, iterations=1, warmup_rounds=0)


# ---------------------------------------------------------------------------------------------- CUDA

def _cuda_run(provider, x4d, attention, backward):
    """One call's work on CUDA, enqueued without synchronising (cuda_timing.measure_cuda times it)."""
    x = x4d.flatten(2)
    if provider == "roofline-cuda":
        def roofline():
            x4d.detach().sum((2, 3))
            if backward:
                torch.empty_like(x4d).fill_(1.0)
        return roofline
    forward = {
        "reference-cuda": lambda: reference.masked_gap(x, attention, GAMMA_FG, GAMMA_BG)[0],
        "pytorch-best-cuda": lambda: _bmm_masked_gap(x, attention),
        "triton": lambda: ops.masked_gap(x, attention, GAMMA_FG, GAMMA_BG, impl="triton")[0],
    }[provider]

    def run():
        out = forward()
        if backward:
            x4d.grad = None
            out.sum().backward()
    return run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA rows: no CUDA device")
@pytest.mark.parametrize("dtype", list(CUDA_DTYPES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", CUDA_PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{s}x{s}" for s in SIZES])
def test_masked_gap_cuda(benchmark, record_peak_memory, size, provider, mode, dtype):
    from cuda_timing import measure_cuda

    if provider == "triton" and not _triton.TRITON_CUDA_AVAILABLE:
        pytest.skip("the Triton op needs triton and its CUDA kernels registered")
    backward = mode == "forward+backward"
    torch.manual_seed(0)
    x4d = torch.randn(B, C, size, size, device="cuda").to(CUDA_DTYPES[dtype]).requires_grad_(backward)
    attention = torch.randn(B, size * size, device="cuda").to(CUDA_DTYPES[dtype])
    benchmark.group = f"cuda {dtype} masked-gap B{B} C{C} {size}x{size} {mode}"
    benchmark.extra_info.update({"provider": provider, "mode": mode, "dtype": dtype, "B": B, "C": C,
                                 "N": size * size, "device": "cuda", "op": "masked-gap",
                                 "bytes": x4d.numel() * x4d.element_size() * (2 if backward else 1)})
    measure_cuda(benchmark, record_peak_memory, _cuda_run(provider, x4d, attention, backward))
