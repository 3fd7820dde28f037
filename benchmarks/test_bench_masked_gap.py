"""Masks + masked GAP (SPEC 1.1, Eq. 3): providers x modes x shapes, time and peak memory.

Providers:
  reference     three masked multiplies and sums (wsol_fast.ops.reference): three reads of x, three copies
  pytorch-best  one bmm of x [B, C, N] with a [B, 3, N] matrix of mask / count weights
  fused         the C++ op (impl="cpp"): one read of x for all three sums, one write of dx backward
  roofline      one plain x.sum((2, 3)) on the [B, C, H, W] tensor (forward); plus one write of an
                x-sized tensor (forward+backward, standing for dx)
  triton        the Triton op on CUDA (skipped without CUDA)
extra_info holds peak_mb (see conftest.py: bytes allocated during one call, gradients included).

    pytest benchmarks/test_bench_masked_gap.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from conftest import synchronize
from wsol_fast import ops
from wsol_fast.ops import _library, reference

B, C = 32, 1024
SIZES = [28, 56]
PROVIDERS = ["reference", "pytorch-best", "fused", "roofline", "triton"]
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
    elif provider in ("fused", "triton"):
        impl = "cpp" if provider == "fused" else "triton"
        forward = lambda: ops.masked_gap(x, attention, GAMMA_FG, GAMMA_BG, impl=impl)[0]  # noqa: E731
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
    device = "cuda" if provider == "triton" else "cpu"
    if provider == "triton":
        from wsol_fast.ops import _triton
        if not _triton.TRITON_CUDA_AVAILABLE:
            pytest.skip("the Triton op needs CUDA and triton")
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
