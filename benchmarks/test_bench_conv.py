"""A convolution's forward + backward on the CPU under bf16 autocast, channels_last (the training step's
setting): providers x shapes, time and peak memory.

Providers:
  native        nn.Conv2d: oneDNN forward, input gradient and weight gradient
  im2col-wgrad  wsol_fast.models.conv.Conv2d: oneDNN forward and input gradient, the weight gradient as
                one GEMM over an NHWC im2col built from kh*kw strided slices
  unfold-mm     the best PyTorch-only alternative for the weight gradient written by hand: F.unfold and a
                batched matmul (standing in for a from-scratch im2col), with oneDNN's forward and input
                gradient
  roofline      three matmuls of the convolution's GEMM shape (forward, input and weight gradient: the
                FLOPs of the whole call) on already laid-out bf16 operands: what the AMX/AVX GEMM gives

Shapes: InceptionV3's head at the built-in profile's 64 x 64 input (8 x 8 maps, batch 32), the shapes
where the weight gradient dominated the training step, and a ResNet50 layer4 3 x 3 conv at the same size.
extra_info: gflop (forward + both gradients), gflop_per_s, peak_mb.

    pytest benchmarks/test_bench_conv.py --benchmark-only
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from wsol_fast.models.conv import Conv2d

BATCH = 32
SHAPES = {  # name: (in, out, kernel, padding, H)
    "inception-SPG_A3_1b": (768, 1024, 3, 1, 8),
    "inception-SPG_A3_2b": (1024, 1024, 3, 1, 8),
    "resnet50-layer4-3x3": (512, 512, 3, 1, 4),
}
PROVIDERS = ["native", "im2col-wgrad", "unfold-mm", "roofline"]


class _UnfoldWgrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, padding):
        ctx.save_for_backward(x, w)
        ctx.padding = padding
        return F.conv2d(x, w, b, 1, padding)

    @staticmethod
    def backward(ctx, go):
        x, w = ctx.saved_tensors
        gx = torch.ops.aten.convolution_backward(go, x, w, None, (1, 1), (ctx.padding,) * 2, (1, 1), False,
                                                 (0, 0), 1, (True, False, False))[0]
        cols = F.unfold(x, w.shape[-2:], padding=ctx.padding)               # [N, C*k*k, L]
        gw = torch.bmm(go.flatten(2), cols.transpose(1, 2)).sum(0)           # [O, C*k*k]
        return gx, gw.view_as(w), go.sum((0, 2, 3)), None


def _gflop(cin, cout, k, h):
    return 3 * 2 * BATCH * h * h * cout * cin * k * k / 1e9


def _make_call(provider, cin, cout, k, pad, h):
    torch.manual_seed(0)
    x = torch.randn(BATCH, cin, h, h).contiguous(memory_format=torch.channels_last)
    if provider == "roofline":
        m, n, kk = BATCH * h * h, cout, cin * k * k
        a = torch.randn(m, kk, dtype=torch.bfloat16)
        b = torch.randn(kk, n, dtype=torch.bfloat16)
        g = torch.randn(m, n, dtype=torch.bfloat16)
        return lambda: (a @ b, g @ b.t(), g.t() @ a)
    conv = Conv2d(cin, cout, k, padding=pad).to(memory_format=torch.channels_last)
    xg = x.requires_grad_(True)

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if provider == "unfold-mm":
                with torch.autocast("cpu", enabled=False):
                    y = _UnfoldWgrad.apply(xg.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), pad)
            else:
                y = conv(xg)
        y.float().sum().backward()
    return call


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv_cpu(benchmark, record_peak_memory, monkeypatch, shape, provider):
    cin, cout, k, pad, h = SHAPES[shape]
    if provider == "native":
        monkeypatch.setenv("WSOL_FAST_CONV_WGRAD", "native")
    else:
        monkeypatch.delenv("WSOL_FAST_CONV_WGRAD", raising=False)
    call = _make_call(provider, cin, cout, k, pad, h)
    call()
    record_peak_memory(call)
    benchmark.extra_info.update({"shape": shape, "provider": provider, "gflop": round(_gflop(cin, cout, k, h), 2),
                                 "threads": torch.get_num_threads(), "env": os.environ.get("WSOL_FAST_CONV_WGRAD")})
    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["gflop_per_s"] = round(_gflop(cin, cout, k, h) / benchmark.stats.stats.median, 1)
