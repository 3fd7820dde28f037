"""The C++ CPU kernels (csrc/) against the literal reference (wsol_fast.ops.reference): values and
all gradients, edge shapes, large logits, empty masks, non-contiguous inputs, gradcheck, errors.

Tolerance rule of flash-attention: the fused result's error against an fp64 reference is at most
twice the reference's own error when the reference runs in the same dtype, plus a small atol.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

import wsol_fast
from wsol_fast import ops
from wsol_fast.ops import _library, reference
from op_testing import GAMMA_BG, GAMMA_FG, assert_close_to_reference

pytestmark = pytest.mark.skipif(not _library.CPP_AVAILABLE, reason="wsol_fast._C is not built")



# Small atol per dtype: covers results whose reference error happens to be ~0 (e.g. exact zeros).
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}


# ---------------------------------------------------------------- nonlocal attention map

@pytest.fixture(params=["onednn", "blas"])
def cpu_gemm(request, monkeypatch):
    """The attention kernels' fp32 tile GEMM (csrc/gemm.h): oneDNN by default, the BLAS of torch.mm
    with WSOL_FAST_CPU_GEMM=blas. Both paths must meet the same tolerances (fp64 is always BLAS)."""
    monkeypatch.setenv("WSOL_FAST_CPU_GEMM", request.param)
    if _library.cpp_gemm() != request.param:
        pytest.skip("this torch has no usable oneDNN matmul; the kernels use BLAS")
    return request.param


def _attention_inputs(b, n, c, dtype, logit_scale=1.0):
    # f ~ N(0, 1/c) keeps |S| ~ logit_scale; logit_scale = 1e3 tests the running max.
    f = torch.randn(b, n, c, dtype=torch.float64) * (logit_scale / c) ** 0.5
    g = torch.randn(b, n, c, dtype=torch.float64) * (logit_scale ** 0.5)
    zbar = torch.randn(b, n, dtype=torch.float64)
    return f.to(dtype), g.to(dtype), zbar.to(dtype)


def _attention_values_and_grads(fn, f, g, zbar, weights):
    f, g, zbar = (t.detach().clone().requires_grad_() for t in (f, g, zbar))
    out = fn(f, g, zbar)
    grads = torch.autograd.grad((out.double() * weights).sum(), (f, g, zbar))
    return [out.detach(), *grads]


def _check_attention(f, g, zbar, scale, check_grads=True, lse_rounding=0.0):
    """`lse_rounding`: relative error of the saved lse (eps * max|lse|), which every recomputed P_ij of
    the backward inherits; it only matters for huge logits, where the reference's normalised softmax
    rows are exact and its own error is tiny."""
    dtype = f.dtype
    weights = torch.randn(f.shape[:2], dtype=torch.float64)
    fused = _attention_values_and_grads(
        lambda *a: ops.nonlocal_attention_map(*a, scale=scale, impl="cpp"), f, g, zbar, weights)
    ref_dtype = _attention_values_and_grads(
        lambda *a: reference.nonlocal_attention_map(*a, scale=scale), f, g, zbar, weights)
    ref64 = _attention_values_and_grads(
        lambda *a: reference.nonlocal_attention_map(*a, scale=scale), f.double(), g.double(), zbar.double(),
        weights)
    assert fused[0].dtype == dtype
    names = ["A", "df", "dg", "dzbar"] if check_grads else ["A"]
    for name, a, r, r64 in zip(names, fused, ref_dtype, ref64):
        assert a.dtype == dtype, f"{name} dtype {a.dtype}"
        atol = ATOL[dtype] + (lse_rounding * r64.abs().max().item() if name != "A" else 0.0)
        assert_close_to_reference(name, a, r, r64, atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,n,c", [
    (2, 29 * 31, 16),   # N = 899 is a multiple of neither block (128 queries, 512 keys)
    (1, 37, 1),         # B = 1 and C' = 1
    (1, 700, 8),        # B = 1 < threads with 2 key blocks: df summed over per-chunk buffers
    (3, 64, 5),         # one partial tile
])
def test_attention_matches_reference(b, n, c, dtype, cpu_gemm):
    _check_attention(*_attention_inputs(b, n, c, dtype), scale=0.7)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_attention_backward_same_for_any_thread_count(threads):
    # The key-chunk split (and its df buffers) depends on the thread count; results must not.
    f, g, zbar = _attention_inputs(1, 600, 4, torch.float64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _check_attention(f, g, zbar, scale=1.0)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_half_precision(dtype, cpu_gemm):
    # Forward and backward accumulate in fp32; the backward uses the stored (rounded) A as
    # flash-attention does, and must still beat the reference run in half precision.
    _check_attention(*_attention_inputs(2, 29 * 31, 16, dtype), scale=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_large_logits_do_not_overflow(dtype, cpu_gemm):
    f, g, zbar = _attention_inputs(2, 300, 8, dtype, logit_scale=1e3)
    s = torch.bmm(f.double(), g.double().transpose(1, 2))
    assert s.abs().max() > 1e3 - 1, "the test must reach |S| ~ 1e3"
    A, lse = torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, 1.0)
    assert torch.isfinite(A).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), rtol=1e-6, atol=1e-3)
    lse_rounding = torch.finfo(dtype).eps * lse.abs().max().item()
    _check_attention(f, g, zbar, scale=1.0, lse_rounding=lse_rounding)


def test_attention_lse_output():
    for dtype, lse_dtype in [(torch.float32, torch.float32), (torch.float64, torch.float64),
                             (torch.bfloat16, torch.float32)]:
        f, g, zbar = _attention_inputs(2, 70, 6, dtype)
        A, lse = torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, 0.5)
        assert A.dtype == dtype and lse.dtype == lse_dtype
        torch.testing.assert_close(lse, reference.nonlocal_attention_lse(f, g, 0.5).to(lse_dtype),
                                   rtol=1e-5, atol=1e-5)


def test_attention_non_contiguous_inputs(cpu_gemm):
    b, n, c = 2, 150, 6
    # f as the conv output would give it ([B, C', N] transposed), g a strided slice, zbar every other.
    f = torch.randn(b, c, n).transpose(1, 2)
    g = torch.randn(b, n, 2 * c)[:, :, ::2]
    zbar = torch.randn(b, 2 * n)[:, ::2]
    assert not (f.is_contiguous() or g.is_contiguous() or zbar.is_contiguous())
    _check_attention(f, g, zbar, scale=1.0)


def test_attention_cpu_gemm_choice_is_checked(monkeypatch):
    f, g, zbar = _attention_inputs(1, 20, 3, torch.float32)
    monkeypatch.setenv("WSOL_FAST_CPU_GEMM", "mkl")
    with pytest.raises(ValueError, match="WSOL_FAST_CPU_GEMM must be 'blas' or 'onednn', got 'mkl'"):
        torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, 1.0)
    with pytest.raises(ValueError, match="WSOL_FAST_CPU_GEMM must be"):
        wsol_fast.backends()
    monkeypatch.setenv("WSOL_FAST_CPU_GEMM", "blas")
    assert wsol_fast.backends()["cpp_gemm"] == "blas"
    monkeypatch.delenv("WSOL_FAST_CPU_GEMM")
    # The default is oneDNN wherever this torch's ATen has it (the PyPI wheels for x86-64 do). Asked in a
    # fresh process: in this one, an earlier test may have made oneDNN's matmul reject a call, after which
    # the op uses BLAS for the rest of the process (csrc/gemm.h) and backends() says so.
    fresh = subprocess.run([sys.executable, "-c", "import wsol_fast; print(wsol_fast.backends()['cpp_gemm'])"],
                           capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items()
                                                                             if k != "WSOL_FAST_CPU_GEMM"})
    assert fresh.stdout.strip() == ("onednn" if torch.backends.mkldnn.is_available() else "blas"), fresh.stderr


def test_attention_gemm_backends_agree(cpu_gemm):
    # At a model-sized C' (a 256-long dot product per score) the two GEMMs sum in different orders;
    # both stay at fp32 rounding of the fp64 kernel (measured max error over 5 seeds: 6.4e-7).
    f, g, zbar = _attention_inputs(2, 200, 256, torch.float32)
    A, lse = torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, 1.0)
    A64, lse64 = torch.ops.wsol_fast.nonlocal_attention_map(f.double(), g.double(), zbar.double(), 1.0)
    torch.testing.assert_close(A.double(), A64, rtol=0, atol=2e-6)
    torch.testing.assert_close(lse.double(), lse64, rtol=0, atol=2e-6)


def test_attention_gradcheck_fp64():
    f, g, zbar = (t.requires_grad_() for t in _attention_inputs(2, 11, 3, torch.float64))
    assert torch.autograd.gradcheck(
        lambda f, g, z: torch.ops.wsol_fast.nonlocal_attention_map(f, g, z, 0.8)[0], (f, g, zbar))


# ---------------------------------------------------------------- masks + masked GAP

def _gap_values_and_grad(fn, x, attention, weights):
    x = x.detach().clone().requires_grad_()
    pooled, counts, dfg = fn(x, attention)
    (dx,) = torch.autograd.grad((pooled.double() * weights).sum(), x)
    return pooled.detach(), counts, dfg, dx


def _check_masked_gap(x, attention, gamma_fg=GAMMA_FG, gamma_bg=GAMMA_BG):
    weights = torch.randn(x.shape[0], 3, x.shape[1], dtype=torch.float64)
    fused = _gap_values_and_grad(lambda x, a: ops.masked_gap(x, a, gamma_fg, gamma_bg, impl="cpp"),
                                 x, attention, weights)
    ref = _gap_values_and_grad(lambda x, a: reference.masked_gap(x, a, gamma_fg, gamma_bg), x, attention, weights)
    ref64 = _gap_values_and_grad(lambda x, a: reference.masked_gap(x, a, gamma_fg, gamma_bg),
                                 x.double(), attention, weights)
    # Same thresholds, same rounding: the masks and counts are identical, not just close.
    assert fused[1].dtype == torch.int64 and torch.equal(fused[1], ref[1])
    assert fused[2].dtype == torch.bool and torch.equal(fused[2], ref[2])
    for name, i in [("pooled", 0), ("dx", 3)]:
        assert fused[i].dtype == x.dtype, f"{name} dtype {fused[i].dtype}"
        assert_close_to_reference(name, fused[i], ref[i], ref64[i], ATOL[x.dtype])
    return fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,c,n", [
    (3, 17, 29 * 31),   # odd N (no vector-width multiple)
    (1, 1, 5),          # B = 1, C = 1, a tail-only row
    (4, 64, 49),
    (2, 11, 57 * 55),   # 56x56-sized rows: three weight rows exceed 16 KB, the 4-row blocked path (8
                        # rows in the fp32 AVX-512 kernel) with a 3-row remainder (C = 11), N not a
                        # multiple of the vector width
])
def test_masked_gap_matches_reference(b, c, n, dtype):
    x = torch.randn(b, c, n, dtype=torch.float64).to(dtype)
    attention = torch.randn(b, n, dtype=torch.float64).to(dtype)
    _check_masked_gap(x, attention)


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_masked_gap_constant_attention_gives_empty_masks(value):
    # A constant map: theta_bg = 1.2 * value, so fg and dfg are empty (and bg too when value = 0).
    x = torch.randn(2, 8, 30)
    pooled, counts, dfg, _ = _check_masked_gap(x, torch.full((2, 30), value))
    assert counts[:, 0].eq(0).all() and counts[:, 1].eq(0).all() and not dfg.any()
    assert torch.isfinite(pooled).all() and pooled[:, :2].eq(0).all()
    assert counts[:, 2].eq(0 if value == 0.0 else 30).all()


def test_masked_gap_ties_follow_the_reference():
    # Integer maps with gamma_bg = 1 put positions exactly on theta_bg: in neither fg nor bg.
    attention = torch.tensor([[0.0, 1.0, 2.0, 1.0], [3.0, 3.0, 0.0, 2.0]])
    x = torch.randn(2, 5, 4)
    _, counts, _, _ = _check_masked_gap(x, attention, gamma_fg=1.0, gamma_bg=1.0)
    assert counts.sum(1).lt(4).any(), "the test must contain a tie"


def test_masked_gap_non_contiguous_inputs():
    x = torch.randn(2, 40, 12).transpose(1, 2)            # [B, C=12, N=40] from a [B, N, C] tensor
    attention = torch.randn(2, 80)[:, ::2]
    assert not (x.is_contiguous() or attention.is_contiguous())
    _check_masked_gap(x, attention)


def test_masked_gap_gradcheck_fp64():
    x = torch.randn(2, 3, 13, dtype=torch.float64, requires_grad=True)
    attention = torch.randn(2, 13, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.wsol_fast.masked_gap(x, attention, GAMMA_FG, GAMMA_BG)[0], (x,))


def test_masked_gap_gives_no_gradient_to_attention():
    x = torch.randn(2, 4, 9, requires_grad=True)
    attention = torch.randn(2, 9, requires_grad=True)
    pooled, _, _ = torch.ops.wsol_fast.masked_gap(x, attention, GAMMA_FG, GAMMA_BG)
    pooled.sum().backward()
    assert x.grad is not None and attention.grad is None


# ---------------------------------------------------------------- errors name the argument

def _attention_call(direct):
    if direct:
        return lambda f, g, z: torch.ops.wsol_fast.nonlocal_attention_map(f, g, z, 1.0)
    return lambda f, g, z: ops.nonlocal_attention_map(f, g, z, impl="cpp")


def _gap_call(direct):
    if direct:
        return lambda x, a: torch.ops.wsol_fast.masked_gap(x, a, GAMMA_FG, GAMMA_BG)
    return lambda x, a: ops.masked_gap(x, a, GAMMA_FG, GAMMA_BG, impl="cpp")


@pytest.mark.parametrize("direct", [True, False], ids=["torch.ops", "entry-point"])
def test_attention_bad_inputs_raise_value_error_naming_the_argument(direct):
    call = _attention_call(direct)
    f, g, z = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 5)
    cases = [
        ((f[0], g, z), "f must have rank 3"),
        ((f, g, z[0]), "zbar must have rank 2"),
        ((f, torch.randn(2, 6, 3), z), "g must have the shape of f"),
        ((f, g, torch.randn(2, 4)), "zbar must have shape"),
        ((f, g.to(torch.int64), z), "g must be a floating tensor"),
        ((f, g, z.to("meta")), "all inputs must be on one device"),
        ((f, g, z.double()), "must share a dtype"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            call(*args)


@pytest.mark.parametrize("direct", [True, False], ids=["torch.ops", "entry-point"])
def test_masked_gap_bad_inputs_raise_value_error_naming_the_argument(direct):
    call = _gap_call(direct)
    x, a = torch.randn(2, 4, 6), torch.randn(2, 6)
    cases = [
        ((x[0], a), "x must have rank 3"),
        ((x, a[0]), "attention must have rank 2"),
        ((x, torch.randn(2, 7)), "attention must have shape"),
        ((x.to(torch.int32), a), "x must be a floating tensor"),
        ((x, a.to("meta")), "all inputs must be on one device"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            call(*args)


def test_backward_ops_check_their_extra_arguments():
    f, g, z = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 5)
    A, lse = torch.ops.wsol_fast.nonlocal_attention_map(f, g, z, 1.0)
    with pytest.raises(ValueError, match="grad_A must have shape"):
        torch.ops.wsol_fast.nonlocal_attention_map_backward(torch.ones(2, 4), f, g, z, A, lse, 1.0)
    x, a = torch.randn(2, 4, 6), torch.randn(2, 6)
    _, counts, _ = torch.ops.wsol_fast.masked_gap(x, a, GAMMA_FG, GAMMA_BG)
    with pytest.raises(ValueError, match="grad_pooled must have shape"):
        torch.ops.wsol_fast.masked_gap_backward(torch.ones(2, 3, 5), x, a, counts, GAMMA_FG, GAMMA_BG)
    with pytest.raises(ValueError, match="counts must have shape"):
        torch.ops.wsol_fast.masked_gap_backward(torch.ones(2, 3, 4), x, a, counts[:, :2], GAMMA_FG, GAMMA_BG)


# ---------------------------------------------------------------- every SIMD variant

@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 SIMD variants")
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_kernels_match_reference_at_every_simd_level(capability):
    """csrc/isa.h compiles the attention tiles and the masked-GAP rows for baseline x86-64, AVX2 and
    AVX-512 and picks one per process, capped by ATEN_CPU_CAPABILITY. This process runs the best one
    (AVX-512 on the CI machine); the value tests run again here in processes capped lower."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    selection = "matches_reference or large_logits or half_precision or non_contiguous"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
