"""models/conv.py: the im2col weight gradient equals oneDNN's convolution gradient, and it is used only
where it applies."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wsol_fast.models import conv as conv_mod
from wsol_fast.models import create_model
from wsol_fast.models.conv import Conv2d, conv_weight_grad, use_im2col_wgrad

# (in, out, kernel, stride, padding, H, W): the kernel shapes of the three backbones (1x1, 3x3, 5x5, 1x7,
# 7x1), strides 1 and 2, odd sizes where a strided window does not reach the last row.
SHAPES = [
    (8, 6, (3, 3), (1, 1), (1, 1), 7, 9),
    (8, 6, (3, 3), (2, 2), (0, 0), 9, 8),
    (5, 4, (1, 1), (1, 1), (0, 0), 6, 6),
    (5, 4, (1, 1), (2, 2), (0, 0), 7, 7),
    (6, 3, (1, 7), (1, 1), (0, 3), 5, 11),
    (6, 3, (7, 1), (1, 1), (3, 0), 11, 5),
    (4, 5, (5, 5), (1, 1), (2, 2), 8, 8),
    (3, 4, (3, 3), (2, 2), (1, 1), 10, 10),
]


@pytest.fixture
def small_k(monkeypatch):
    """Let the test shapes, far below the production gate, take the im2col path."""
    monkeypatch.setattr(conv_mod, "IM2COL_MIN_K", 1)
    monkeypatch.delenv("WSOL_FAST_CONV_WGRAD", raising=False)


def _pair(cin, cout, k, s, p, bias, dtype=torch.float64):
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, k, s, p, bias=bias).to(dtype)
    fast = Conv2d(cin, cout, k, s, p, bias=bias).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[2]}s{s[3]}p{s[4]}" for s in SHAPES])
def test_gradients_equal_native_in_float64(small_k, shape, bias, channels_last):
    cin, cout, k, s, p, h, w = shape
    ref, fast = _pair(cin, cout, k, s, p, bias)
    x = torch.randn(3, cin, h, w, dtype=torch.float64)
    if channels_last:
        ref, fast = ref.to(memory_format=torch.channels_last), fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, yf = ref(xr), fast(xf)
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (yf * g).sum().backward()
    torch.testing.assert_close(yf, yr, rtol=0, atol=0)  # the forward is oneDNN's own
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
    if channels_last:  # the gradient keeps the parameter's layout
        assert fast.weight.grad.is_contiguous(memory_format=torch.channels_last)


def test_weight_grad_by_hand():
    """dW[o, c, i, j] = sum over n, y, x of dY[n, o, y, x] * X[n, c, y*s + i - p, x*s + j - p], by loops."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    go = torch.randn(2, 4, 3, 3, dtype=torch.float64)  # 3 x 3 kernel, stride 2, padding 1 on 5 x 6
    gw = conv_weight_grad(x, go, (4, 3, 3, 3), (2, 2), (1, 1))
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    expect = torch.zeros(4, 3, 3, 3, dtype=torch.float64)
    for o in range(4):
        for c in range(3):
            for i in range(3):
                for j in range(3):
                    expect[o, c, i, j] = sum(go[n, o, yy, xx] * xp[n, c, yy * 2 + i, xx * 2 + j]
                                             for n in range(2) for yy in range(3) for xx in range(3))
    torch.testing.assert_close(gw, expect, rtol=1e-12, atol=1e-12)


def test_gradcheck(small_k):
    torch.manual_seed(2)
    fast = Conv2d(3, 2, 3, 2, 1).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv_mod._ConvIm2colWgrad.apply(x, w, b, (2, 2), (1, 1)),
                                    (x, fast.weight, fast.bias))


def test_bf16_autocast_matches_native_precision(small_k):
    """Under CPU autocast the output is bf16 like nn.Conv2d's, and the weight gradient is as close to the
    float64 truth as oneDNN's bf16 gradient (both round the same products; only the summation order
    differs)."""
    cin, cout = 64, 32
    ref, fast = _pair(cin, cout, 3, 1, 1, True, dtype=torch.float32)
    truth, _ = _pair(cin, cout, 3, 1, 1, True, dtype=torch.float64)
    x = torch.randn(4, cin, 8, 8)
    g = torch.randn(4, cout, 8, 8)
    grads = []
    for m in (ref, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16
        (y.float() * g).sum().backward()
        grads.append(m.weight.grad)
    xb, gb = x.bfloat16().double(), g.bfloat16().double()
    (truth(xb) * gb).sum().backward()  # truth on the bf16-rounded inputs and weights
    ref_err = (grads[0].double() - truth.weight.grad).abs().max()
    fast_err = (grads[1].double() - truth.weight.grad).abs().max()
    scale = truth.weight.grad.abs().max()
    assert fast_err <= 2 * ref_err + 1e-3 * scale, (fast_err, ref_err, scale)


def _count_calls(monkeypatch):
    calls = []
    real = conv_mod._ConvIm2colWgrad.apply
    monkeypatch.setattr(conv_mod._ConvIm2colWgrad, "apply", lambda *a: calls.append(1) or real(*a))
    return calls


def test_gate(monkeypatch):
    monkeypatch.delenv("WSOL_FAST_CONV_WGRAD", raising=False)
    calls = _count_calls(monkeypatch)
    big = Conv2d(256, 8, 3, padding=1)   # 256 * 9 = 2304 terms: applies
    small = Conv2d(16, 8, 3, padding=1)  # 144 terms: oneDNN's own
    grouped = Conv2d(256, 8, 3, padding=1, groups=2)
    x, xs = torch.randn(2, 256, 5, 5), torch.randn(2, 16, 5, 5)
    big(x).sum().backward()
    assert len(calls) == 1
    small(xs).sum().backward()
    grouped(x).sum().backward()
    with torch.no_grad():  # evaluation
        big(x)
    big.weight.requires_grad_(False)  # a frozen layer
    big(x.requires_grad_(True)).sum().backward()
    big.weight.requires_grad_(True)
    monkeypatch.setenv("WSOL_FAST_CONV_WGRAD", "native")
    big(x).sum().backward()
    assert len(calls) == 1


def test_create_model_converts_and_keeps_state_dict():
    torch.manual_seed(0)
    m = create_model("inceptionv3", 5, method="icl")
    torch.manual_seed(0)
    plain = create_model("inceptionv3", 5, method="icl", im2col_wgrad=False)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert convs and all(type(mod) is Conv2d for mod in convs)
    assert all(type(mod) is nn.Conv2d for mod in plain.modules() if isinstance(mod, nn.Conv2d))
    sd, psd = m.state_dict(), plain.state_dict()
    assert list(sd) == list(psd) and all(torch.equal(sd[k], psd[k]) for k in sd)
    use_im2col_wgrad(m, False)
    assert all(type(mod) is nn.Conv2d for mod in m.modules() if isinstance(mod, nn.Conv2d))
