"""A Conv2d whose weight gradient on the CPU is one GEMM over an NHWC im2col.

oneDNN's convolution backward spends most of a CPU training step on the weight gradient: for
InceptionV3's head (1,024 -> 1,024, 3 x 3, 8 x 8 maps, batch 32, bf16) it took 240 ms of a 395 ms
forward + backward, where a matmul of the same 39 GFLOP takes about 60 ms (2-core Intel Xeon with
AMX; `benchmarks/test_bench_conv.py`). Here the forward and the input gradient stay oneDNN's, and the
weight gradient is

    dW[o, kh, kw, c] = sum over (n, y, x) of dY[n, y, x, o] * Xpad[n, y*s + kh, x*s + kw, c]

written as dY^T (O x NHW) @ cols (NHW x kh*kw*C), where cols is built from kh*kw strided slices of the
padded channels-last input (no unfold, no fold). The result is the same sum in another order: equal to
oneDNN's up to rounding (float64 to 1e-12 in the tests).

It applies only where it can be right and faster: CPU tensors, a weight that needs a gradient, groups=1,
dilation 1, zero padding, a reduction of at least IM2COL_MIN_K = C_in * kh * kw terms per weight (below
that, e.g. the 3- and 32-channel stem convs on 32 x 32 maps, oneDNN's own kernel measured as fast or
faster, and the slice copies cost more than they save), and not under torch.compile (which keeps its own
lowering). Everything else,
evaluation included, is nn.Conv2d's own forward. The module is an nn.Conv2d (same parameters, same
state_dict), so checkpoints do not change. `WSOL_FAST_CONV_WGRAD=native` in the environment turns it off.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2d", "use_im2col_wgrad", "conv_weight_grad", "IM2COL_MIN_K"]

IM2COL_MIN_K = 2048


def conv_weight_grad(x: Tensor, grad_out: Tensor, weight_shape, stride, padding) -> Tensor:
    """dL/dW of conv2d(x, W, stride, padding) (groups 1, dilation 1) as one GEMM; in the dtype of x."""
    o, c, kh, kw = weight_shape
    n, _, ho, wo = grad_out.shape
    xh = x.permute(0, 2, 3, 1)  # a view; contiguous when x is channels_last
    ph, pw = padding
    if ph or pw:
        xh = F.pad(xh, (0, 0, pw, pw, ph, ph))
    sh, sw = stride
    if kh == 1 and kw == 1:
        cols = xh[:, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw, :].reshape(n * ho * wo, c)
    else:
        cols = torch.cat([xh[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
                          for i in range(kh) for j in range(kw)], dim=3).reshape(n * ho * wo, kh * kw * c)
    g = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, o)
    return (g.t() @ cols).view(o, kh, kw, c).permute(0, 3, 1, 2)


class _ConvIm2colWgrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last) \
            if x.is_contiguous(memory_format=torch.channels_last) else grad_out.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1),
                                                     False, (0, 0), 1, (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            gw = conv_weight_grad(x, grad_out, weight.shape, ctx.stride, ctx.padding)
            fmt = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            gw = gw.contiguous(memory_format=fmt)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


def _native_forced() -> bool:
    return os.environ.get("WSOL_FAST_CONV_WGRAD", "").strip().lower() == "native"


class Conv2d(nn.Conv2d):
    """nn.Conv2d with the im2col weight gradient on the CPU (module docstring)."""

    def _im2col_applies(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and x.dim() == 4
                and self.in_channels * self.kernel_size[0] * self.kernel_size[1] >= IM2COL_MIN_K
                and not torch.compiler.is_compiling() and not _native_forced())

    def forward(self, x: Tensor) -> Tensor:
        if not self._im2col_applies(x):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # what autocast would do for conv2d: compute in its dtype
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
            with torch.autocast("cpu", enabled=False):
                return _ConvIm2colWgrad.apply(x, weight, bias, self.stride, self.padding)
        return _ConvIm2colWgrad.apply(x, weight, bias, self.stride, self.padding)


def use_im2col_wgrad(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every plain nn.Conv2d of `model` to `Conv2d` (or back), in place; parameters are untouched."""
    for module in model.modules():
        if enabled and type(module) is nn.Conv2d:
            module.__class__ = Conv2d
        elif not enabled and type(module) is Conv2d:
            module.__class__ = nn.Conv2d
    return model
