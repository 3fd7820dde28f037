"""Triton kernels (kernels/) against the literal reference: values and every gradient.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET=1 must be set
before the kernel modules are imported (conftest does it; so does this module, for a lone run). There:
fp32 and fp16, odd N, C' in {1, 8, 24, 72, 144, 512, 600}, B <= 2, every backward variant (fused,
atomic, bmm), the split-C' fallback, large logits, both host paths (the eager autograd.Function and the
triton_op of torch.compile) and the fp32 precision policy. The interpreter multiplies exactly whatever
tl.dot is told, so the precision policy is tested on what the launchers pass.
With a GPU and TRITON_INTERPRET=0 the same tests run compiled on CUDA, bf16 included, plus the
CUDA-only ones at the end: opcheck of the ops (the C++-declared ones with their CUDA kernels and the
triton_op versions), torch.compile(fullgraph=True) through them, and an ICL block's training steps
against the reference (fp32 and bf16 autocast). scripts/dev/gpu_check.sh runs them on a GPU machine.

Tolerance rule (flash-attention): max |fused - ref64| <= 2 * max |ref_dtype - ref64| + atol
+ rtol * max |ref64|, where ref64 is the reference in fp64 on the same (rounded) inputs and ref_dtype
the reference run in the tested dtype; rtol is about the dtype's unit roundoff (the rounding of the
output itself), atol a floor for outputs near zero. Two named extra terms: the recomputation of P from
the fp32 lse (lse_recompute_rtol) and, compiled on CUDA only, fp32 tiles multiplied as "tf32x3"
(tf32x3_rtol).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from wsol_fast.options import paper_values  # noqa: E402
import wsol_fast.ops as ops  # noqa: E402
from wsol_fast.kernels import masked_gap as gap_kernels  # noqa: E402
from wsol_fast.kernels import nonlocal_attention as attention_kernels  # noqa: E402
from wsol_fast.ops import _triton, reference  # noqa: E402
from op_testing import GAMMA_BG, GAMMA_FG, OPCHECK_SAMPLES, assert_close_to_reference, opcheck_samples  # noqa: E402

INTERPRETING = attention_kernels.INTERPRETING and gap_kernels.INTERPRETING
if INTERPRETING:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    DEVICE = None
pytestmark = pytest.mark.skipif(
    DEVICE is None, reason="no CUDA device, and the Triton interpreter is not active (TRITON_INTERPRET is not 1, "
                           "or the kernel modules were imported before it was set): the kernels cannot run here")

needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="compiled Triton on a CUDA device only")

# On CUDA the many-shape tests run one config per kernel, so that they do not compile and time every
# autotune config for every shape (minutes); test_*_every_gpu_config runs each config instead. The
# attention kernels keep their pruners with MAX_TUNED = 1: the first config whose compiled kernel fits
# the device for the test's shape (one fixed config cannot fit every C'), run untimed. The other kernels
# fit at any shape (a few KiB) and are pinned. WSOL_FAST_TEST_AUTOTUNE=1 keeps the full autotuning
# everywhere. The interpreter has one config anyway.
PINNED_CONFIGS = {
    attention_kernels._attention_softmax_grad_kernel: attention_kernels.SOFTMAX_GRAD_GPU_CONFIGS[0],
    gap_kernels._masked_gap_forward_kernel: gap_kernels.GPU_CONFIGS[0],
    gap_kernels._masked_gap_backward_kernel: gap_kernels.GPU_CONFIGS[0],
}


@pytest.fixture(autouse=True)
def _one_config_per_kernel_on_cuda(monkeypatch):
    if DEVICE == "cuda" and os.environ.get("WSOL_FAST_TEST_AUTOTUNE", "0") != "1":
        for kernel, config in PINNED_CONFIGS.items():
            monkeypatch.setattr(kernel, "configs", [config])   # one config: the autotuner runs it untimed
        monkeypatch.setattr(attention_kernels, "MAX_TUNED", 1)
    yield


# (dtype, atol, rtol). bf16 is not supported by the interpreter: it runs only compiled on CUDA.
DTYPE_TOLERANCES = [
    pytest.param(torch.float32, 1e-6, 1e-6, id="fp32"),
    pytest.param(torch.float16, 1e-4, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 1e-3, 8e-3, id="bf16",
                 marks=pytest.mark.skipif(DEVICE != "cuda", reason="bf16 needs compiled Triton on CUDA")),
]


# ------------------------------------------------------------------------- non-local attention map

def attention_inputs(batch, n, head_dim, dtype, logit_scale=1.0):
    f = (torch.randn(batch, n, head_dim) * logit_scale).to(DEVICE, dtype)
    g = (torch.randn(batch, n, head_dim) * logit_scale).to(DEVICE, dtype)
    zbar = torch.randn(batch, n).to(DEVICE, dtype)
    return f, g, zbar


def attention_reference(f, g, zbar, scale, grad_a):
    """(A, df, dg, dzbar) of the literal reference by autograd, in the inputs' dtype."""
    leaves = [t.detach().clone().requires_grad_() for t in (f, g, zbar)]
    a = reference.nonlocal_attention_map(*leaves, scale)
    a.backward(grad_a.to(a.dtype))
    return (a.detach(), *(t.grad for t in leaves))


def lse_recompute_rtol(f, g, scale):
    """Relative error of P = exp(S - lse) recomputed in the backward from the fp32 lse of the contract.

    lse and S * scale are fp32 numbers of size max|S|: half an ulp each is 2^-24 max|S|, and the fp32
    dot that forms S adds about as much again. The literal reference never rounds an lse, so this
    term is the price of O(N) memory; it matters only for large logits (1e-4 at |S| ~ 2e3).
    """
    s_max = (torch.bmm(f.double(), g.double().transpose(1, 2)) * scale).abs().max().item()
    return 4 * 2.0 ** -24 * s_max


def tf32x3_rtol(f, g, scale):
    """Relative error of P (and absolute error of lse) from fp32 tiles multiplied as "tf32x3" on a GPU.

    Three TF32 products drop the low x low term and round the low parts to TF32: about 2^-21 of
    |f_i| . |g_j| per score, against the 2^-24 of an fp32 FMA. The interpreter multiplies exactly (0).
    """
    if DEVICE != "cuda" or f.dtype != torch.float32 or attention_kernels.input_precision(f.dtype) != "tf32x3":
        return 0.0
    s_abs = (torch.bmm(f.double().abs(), g.double().abs().transpose(1, 2)) * abs(scale)).max().item()
    return 4 * 2.0 ** -21 * s_abs


def check_attention(f, g, zbar, scale, atol, rtol, variant=None):
    """Forward and backward launchers against the reference in fp64 and in the inputs' dtype."""
    a, lse = attention_kernels.nonlocal_attention_forward(f, g, zbar, scale)
    grad_a = torch.randn(a.shape).to(DEVICE, f.dtype)
    grads = attention_kernels.nonlocal_attention_backward(grad_a, f, g, zbar, a, lse, scale, variant=variant)
    fused = (a, *grads)
    ref_same = attention_reference(f, g, zbar, scale, grad_a)
    ref64 = attention_reference(f.double(), g.double(), zbar.double(), scale, grad_a)
    matmul_rtol = tf32x3_rtol(f, g, scale)
    backward_rtol = lse_recompute_rtol(f, g, scale) + matmul_rtol
    for name, out, same, exact in zip(("A", "df", "dg", "dzbar"), fused, ref_same, ref64):
        assert out.dtype == f.dtype and out.shape == exact.shape, name
        assert_close_to_reference(name, out, same, exact, atol, rtol,
                                  matmul_rtol if name == "A" else backward_rtol)
    # lse is fp32 for every input dtype (the reference's too): held to fp32 tolerances.
    assert lse.dtype == torch.float32
    lse64 = reference.nonlocal_attention_lse(f.double(), g.double(), scale)
    assert_close_to_reference("lse", lse, reference.nonlocal_attention_lse(f, g, scale), lse64, 1e-6 + matmul_rtol,
                              1e-6)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("batch, n, head_dim, scale", [
    (1, 1, 1, 1.0),        # N = 1: one key, P = 1, A = zbar, df = dg = 0
    (2, 35, 1, 1.0),       # C' = 1 (padded to 16 for tl.dot); N = 35: full key blocks and a partial last one
    (2, 37, 144, 0.08),    # odd N; C' = 144: several forward chunks (the last partial), 256-wide backward tiles
    (1, 21, 512, 0.045),   # C' = 512: the widest full-C' backward accumulator; small N, the interpreter is slow
    (1, 130, 8, 0.35),     # N = 10 x 13: many key blocks for the online softmax, many owned blocks backward
])
def test_attention_matches_reference(batch, n, head_dim, scale, dtype, atol, rtol):
    check_attention(*attention_inputs(batch, n, head_dim, dtype), scale, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("variant, n, head_dim", [
    ("atomic", 37, 144),   # df by fp32 atomics from the key-side programs (owned rows past N masked out)
    ("bmm", 37, 144),      # cuBLAS-style S, df, dg (forced below its C' >= 384 policy floor) + Triton dS
    ("bmm", 21, 512),
])
def test_attention_backward_variants(variant, n, head_dim, dtype, atol, rtol):
    check_attention(*attention_inputs(2, n, head_dim, dtype), 1.0 / head_dim ** 0.5, atol, rtol, variant=variant)


@pytest.mark.parametrize("variant", ["fused", "atomic"])
@pytest.mark.parametrize("max_full_d, head_dim", [(32, 72), (attention_kernels.MAX_FULL_D, 600)])
def test_attention_split_head_dim_fallback(variant, max_full_d, head_dim, monkeypatch):
    # Past MAX_FULL_D the backward splits the output columns over programs (chunks of SPLIT_BLOCK_DO),
    # each recomputing the scores over the full C'. Lowering the limit runs the same code on a small C'
    # (72 = 64 + a partial chunk of 8); C' = 600 is the real case, on a small N.
    monkeypatch.setattr(attention_kernels, "MAX_FULL_D", max_full_d)
    monkeypatch.setattr(attention_kernels, "SPLIT_BLOCK_DO", 64 if max_full_d < 64 else 128)
    assert attention_kernels._backward_blocks(head_dim)[2], "the split path must be the one under test"
    check_attention(*attention_inputs(1, 19, head_dim, torch.float32), 0.05, 1e-6, 1e-6, variant=variant)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("variant", ["fused", "atomic", "bmm"])
def test_attention_large_logits(variant, dtype, atol, rtol):
    # |S| up to ~3e3: a naive exp overflows in fp32 (and fp16); the running max must keep it finite.
    f, g, zbar = attention_inputs(1, 9 * 11, 8, dtype, logit_scale=11.0)
    s_max = torch.bmm(f.double(), g.double().transpose(1, 2)).abs().max().item()
    assert s_max > 1e3
    check_attention(f, g, zbar, 1.0, atol, rtol, variant=variant)


@pytest.mark.parametrize("dtype, atol, rtol", [DTYPE_TOLERANCES[0], DTYPE_TOLERANCES[2]])
@pytest.mark.parametrize("config", range(len(attention_kernels.FORWARD_GPU_CONFIGS)))
def test_attention_every_gpu_config(config, dtype, atol, rtol, monkeypatch):
    # Every block shape the autotuner may pick on a GPU (forward config i with backward config i), with
    # a partial last block for each, at a C' where every config fits sm_90's shared memory (a config
    # pinned alone skips the pruner). Compiled: N = 221; bf16 C' = 160 (two forward chunks of 128, the
    # second partial; a 256-wide backward accumulator: at most 225 KiB, offline sm_90 compiles); fp32
    # C' = 64 (at C' >= 128 the tf32x3 tiles of configs 0, 1 and 3 compile to 256-320 KiB, and the
    # pruner drops them). Interpreted (slow): N = 99, C' = 24.
    kernels = attention_kernels
    monkeypatch.setattr(kernels._attention_forward_kernel, "configs", [kernels.FORWARD_GPU_CONFIGS[config]])
    monkeypatch.setattr(kernels._attention_backward_kernel, "configs", [kernels.BACKWARD_GPU_CONFIGS[config]])
    n, head_dim = (13 * 17, 160 if dtype == torch.bfloat16 else 64) if DEVICE == "cuda" else (9 * 11, 24)
    check_attention(*attention_inputs(2, n, head_dim, dtype), 2.0 / head_dim ** 0.5, atol, rtol)


@pytest.mark.parametrize("config", range(len(attention_kernels.SOFTMAX_GRAD_GPU_CONFIGS)))
def test_attention_bmm_variant_every_gpu_config(config, monkeypatch):
    monkeypatch.setattr(attention_kernels._attention_softmax_grad_kernel, "configs",
                        [attention_kernels.SOFTMAX_GRAD_GPU_CONFIGS[config]])
    n = 13 * 17 if DEVICE == "cuda" else 9 * 11    # a partial block of every config; the interpreter is slow
    check_attention(*attention_inputs(2, n, 24, torch.float32), 0.4, 1e-6, 1e-6, variant="bmm")


@pytest.mark.parametrize("policy, expected", [("highest", "tf32x3"), ("high", "tf32"), ("medium", "tf32")])
def test_fp32_dot_precision_follows_torch_policy(policy, expected, monkeypatch):
    """fp32 tiles: TF32 where torch's float32 matmul policy allows it, else tf32x3, never "ieee"; the
    launchers pass that choice to every kernel as the INPUT_PRECISION constexpr."""
    assert attention_kernels.input_precision(torch.float32, policy) == expected
    seen = []

    class Spy:   # stands for a kernel: records the constexpr, then launches the real kernel
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs["INPUT_PRECISION"])
                return self.kernel[grid](*args, **kwargs)
            return launch

    for name in ("_attention_forward_kernel", "_attention_backward_kernel"):
        monkeypatch.setattr(attention_kernels, name, Spy(getattr(attention_kernels, name)))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(policy)
    try:
        f, g, zbar = attention_inputs(1, 20, 8, torch.float32)
        a, lse = attention_kernels.nonlocal_attention_forward(f, g, zbar, 0.5)
        attention_kernels.nonlocal_attention_backward(torch.ones_like(a), f, g, zbar, a, lse, 0.5, variant="fused")
        attention_kernels.nonlocal_attention_forward(f.half(), g.half(), zbar.half(), 0.5)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == [expected, expected, "tf32"]   # half tiles: their own dtype, the argument is moot


def test_backward_variant_policy(monkeypatch):
    choose = attention_kernels.backward_variant
    monkeypatch.setattr(attention_kernels, "FORCE_BACKWARD", None)
    monkeypatch.setattr(attention_kernels, "BACKWARD_POLICY", {("bfloat16", 784, 512): "bmm",
                                                              ("bfloat16", 784, 128): "bmm",
                                                              ("float32", 784, 128): "atomic"})
    assert choose(torch.float16, 784, 512) == "fused"           # not in the table: the default
    assert choose(torch.bfloat16, 784, 512) == "bmm"
    assert choose(torch.bfloat16, 784, 128) == "fused"          # bmm only from C' = BMM_MIN_HEAD_DIM on
    assert choose(torch.float32, 784, 128) == "atomic"
    assert choose(torch.float32, 784, 128, force="bmm") == "bmm"
    monkeypatch.setattr(attention_kernels, "FORCE_BACKWARD", "fused")
    assert choose(torch.bfloat16, 784, 512) == "fused"
    with pytest.raises(ValueError, match="WSOL_FAST_ATTENTION_BACKWARD"):
        choose(torch.float32, 10, 8, force="flash")


class _Config:   # stands for triton.Config in the pruning tests (no compile under the interpreter)
    def __init__(self, name, num_stages=2, num_warps=4, **kwargs):
        self.name, self.num_stages, self.num_warps, self.kwargs = name, num_stages, num_warps, kwargs


def test_pruning_keeps_compiled_configs_that_fit_in_list_order(monkeypatch):
    """`_fitting`: configs whose tiles alone exceed the device are not compiled; of the rest, at most
    MAX_TUNED whose *compiled* shared memory fits are kept, in list order; if none fits, the smallest."""
    compiled = {"a": 300_000, "b": 100_000, "c": 50_000, "d": 90_000, "e": 10_000}
    configs = [_Config(name, BLOCK_M=64, BLOCK_N=n) for name, n in zip("abcdef", (64, 64, 32, 64, 16, 4096))]
    calls = []

    def fake_compiled_shared(jit, named_args, kwargs, config):
        calls.append(config.name)
        return compiled[config.name]

    monkeypatch.setattr(attention_kernels, "compiled_shared", fake_compiled_shared)
    monkeypatch.setattr(attention_kernels, "device_max_shared", lambda: 232448)
    monkeypatch.setitem(attention_kernels._JIT, "forward", object())
    monkeypatch.setattr(attention_kernels, "MAX_TUNED", 2)
    args = {"f_ptr": torch.empty(1, dtype=torch.bfloat16), "D": 128, "BLOCK_D": 128, "STATIC_CHUNKS": True}
    # f's tiles: (2 * 4096 + 64) rows x 128 x 2 B > 227 KiB: never compiled
    assert attention_kernels.shared_lower_bound("forward", configs[5], args) > 232448
    kept = attention_kernels._prune_forward(configs, {"f_ptr": args["f_ptr"]}, D=128, BLOCK_D=128, STATIC_CHUNKS=True)
    assert [c.name for c in kept] == ["b", "c"]      # a compiled too large; stop after MAX_TUNED
    assert calls == ["a", "b", "c"]
    compiled.update(b=250_000, c=240_000, d=233_000, e=232_449)
    calls.clear()
    kept = attention_kernels._prune_forward(configs, {"f_ptr": args["f_ptr"]}, D=128, BLOCK_D=128, STATIC_CHUNKS=True)
    assert [c.name for c in kept] == ["e"] and calls == ["a", "b", "c", "d", "e"]   # none fits: the smallest


def test_pruning_under_a_trace_compiles_nothing(monkeypatch):
    """With fake tensors (torch.compile tracing the launcher) nothing can be compiled: the conservative
    estimate (3 x the tiles + 1 KiB) picks the configs, at most MAX_TUNED, in list order."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled under a trace")

    monkeypatch.setattr(attention_kernels, "compiled_shared", no_compile)
    monkeypatch.setattr(attention_kernels, "device_max_shared", no_compile)
    monkeypatch.setattr(attention_kernels, "_LIMIT_SEEN", [])
    monkeypatch.setattr(attention_kernels, "MAX_TUNED", 2)
    configs = [_Config(name, num_stages=2, BLOCK_M=m, BLOCK_N=n) for name, m, n in
               (("big", 128, 128), ("a", 64, 32), ("b", 32, 32), ("c", 16, 16))]
    with FakeTensorMode():
        f = torch.empty(2, 100, 128, dtype=torch.bfloat16)
    args = {"f_ptr": f, "D": 128, "BLOCK_D": 128, "STATIC_CHUNKS": True}
    # big: 3 x (2 x 128 + 128) x 128 x 2 + 1024 = 295,936 B > 232,448; a: 3 x 128 x 256 + 1024 = 99,328 B
    assert attention_kernels.shared_upper_estimate("forward", configs[0], args) == 295936
    kept = attention_kernels._prune_forward(configs, {"f_ptr": f}, D=128, BLOCK_D=128, STATIC_CHUNKS=True)
    assert [c.name for c in kept] == ["a", "b"]


@pytest.mark.parametrize("dtype, head_dim, static", [
    (torch.bfloat16, 512, True), (torch.bfloat16, attention_kernels.MAX_STATIC_D + 1, False),
    (torch.float16, 1024, False), (torch.float32, 16, True), (torch.float32, 512, False),
])
def test_static_chunks_policy(dtype, head_dim, static):
    # Unrolled C' chunks up to MAX_STATIC_D (16-bit) or one chunk (fp32); a runtime chunk loop past that.
    assert attention_kernels._static_chunks(dtype, head_dim) == static


def test_shared_lower_bound_by_hand():
    # ((stages - 1) x streamed rows + resident rows) x columns x bytes: bf16 C' 512 forward, 64 x 64, 3 stages.
    config = _Config("x", num_stages=3, BLOCK_M=64, BLOCK_N=64)
    args = {"f_ptr": torch.empty(1, dtype=torch.bfloat16), "D": 512, "BLOCK_D": 128, "STATIC_CHUNKS": True}
    assert attention_kernels.shared_lower_bound("forward", config, args) == (2 * 64 + 64) * 512 * 2
    args["STATIC_CHUNKS"] = False   # runtime chunk loop: one 128-wide chunk in flight
    assert attention_kernels.shared_lower_bound("forward", config, args) == (2 * 64 + 64) * 128 * 2
    backward = _Config("y", num_stages=2, BLOCK_OWN=64, BLOCK_STREAM=32)
    split = {"f_ptr": torch.empty(1), "D": 600, "BLOCK_D": 128, "BLOCK_DO": 128, "SPLIT_D": True, "STATIC_CHUNKS": True}
    assert attention_kernels.shared_lower_bound("backward", backward, split) == (32 + 64) * (128 + 640) * 4


def test_eager_path_is_one_autograd_function():
    # No dispatcher op and no second autograd layer between wsol_fast.ops and the launchers in eager mode.
    f, g, zbar = (t.requires_grad_() for t in attention_inputs(1, 20, 8, torch.float32))
    a = ops.nonlocal_attention_map(f, g, zbar, 0.5, impl="triton")
    assert type(a.grad_fn).__name__ == "NonlocalAttentionMapFunctionBackward"
    assert {type(n[0]).__name__ for n in a.grad_fn.next_functions} == {"AccumulateGrad"}
    x = torch.randn(1, 4, 20, device=DEVICE, requires_grad=True)
    pooled, counts, dfg_mask = ops.masked_gap(x, a.detach(), GAMMA_FG, GAMMA_BG, impl="triton")
    assert type(pooled.grad_fn).__name__ == "MaskedGapFunctionBackward"
    assert not counts.requires_grad and not dfg_mask.requires_grad
    # The autograd is the registrations' own, written once (ops/_autograd.py), not a copy in the kernels.
    attention_fn, gap_fn = _triton._eager_functions()
    assert attention_fn.backward.__qualname__ == "attention_autograd.<locals>.backward"
    assert gap_fn.backward.__qualname__ == "masked_gap_autograd.<locals>.backward"
    assert not hasattr(attention_kernels, "NonlocalAttentionMapFunction")


def test_attention_strided_inputs_need_no_copy():
    # Conv outputs arrive as [B, C', N] viewed as [B, N, C'] (stride 1 along N): same numbers, bit for bit.
    f, g, zbar = attention_inputs(2, 40, 24, torch.float32)
    f_t, g_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (f, g))
    assert not f_t.is_contiguous()
    a, lse = attention_kernels.nonlocal_attention_forward(f, g, zbar, 0.5)
    a_t, lse_t = attention_kernels.nonlocal_attention_forward(f_t, g_t, zbar, 0.5)
    assert torch.equal(a, a_t) and torch.equal(lse, lse_t)
    grad_a = torch.randn(a.shape, device=DEVICE)
    for variant in attention_kernels.BACKWARD_VARIANTS:
        grads = attention_kernels.nonlocal_attention_backward(grad_a, f, g, zbar, a, lse, 0.5, variant=variant)
        grads_t = attention_kernels.nonlocal_attention_backward(grad_a, f_t, g_t, zbar, a, lse, 0.5, variant=variant)
        for grad, grad_t, like in zip(grads, grads_t, (f_t, g_t, zbar)):
            assert grad_t.stride() == torch.empty_like(like).stride(), variant   # as the fake kernel declares
            if variant == "atomic":   # fp32 atomics add in any order: equal to rounding, not to the bit
                torch.testing.assert_close(grad_t, grad, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(grad, grad_t), variant


def _check_attention_autograd(a, f, g, zbar, scale, grad_a):
    a.backward(grad_a)
    ref64 = attention_reference(f.detach().double(), g.detach().double(), zbar.detach().double(), scale, grad_a)
    ref32 = attention_reference(f.detach(), g.detach(), zbar.detach(), scale, grad_a)
    extra = tf32x3_rtol(f.detach(), g.detach(), scale)
    for name, out, same, exact in zip(("A", "df", "dg", "dzbar"), (a.detach(), f.grad, g.grad, zbar.grad),
                                      ref32, ref64):
        assert_close_to_reference(name, out, same, exact, 1e-6, 1e-6, extra)


def test_attention_public_op_with_autograd():
    # Eager: wsol_fast.ops -> one autograd.Function -> the launchers.
    assert "triton" in ops.available_impls(DEVICE)
    f, g, zbar = (t.requires_grad_() for t in attention_inputs(2, 6 * 5, 12, torch.float32))
    a = ops.nonlocal_attention_map(f, g, zbar, 0.5, impl="triton")
    _check_attention_autograd(a, f, g, zbar, 0.5, torch.randn(a.shape, device=DEVICE))


def test_attention_triton_op_with_autograd():
    # The torch.compile path's op (torch.library.triton_op), called eagerly: same launchers, its own autograd.
    assert _triton.triton_ops()
    f, g, zbar = (t.requires_grad_() for t in attention_inputs(2, 6 * 5, 12, torch.float32))
    a, lse = torch.ops.wsol_fast.nonlocal_attention_map_triton(f, g, zbar, 0.5)
    assert not lse.requires_grad
    _check_attention_autograd(a, f, g, zbar, 0.5, torch.randn(a.shape, device=DEVICE))


# ------------------------------------------------------------------------------------- masked GAP

def masked_gap_reference(x, attention, grad_pooled):
    """(pooled, counts, dfg_mask, dx) of the literal reference by autograd, in x's dtype."""
    leaf = x.detach().clone().requires_grad_()
    pooled, counts, dfg_mask = reference.masked_gap(leaf, attention, GAMMA_FG, GAMMA_BG)
    pooled.backward(grad_pooled.to(pooled.dtype))
    return pooled.detach(), counts, dfg_mask, leaf.grad


def check_masked_gap(x, attention, atol, rtol):
    pooled, counts, dfg_mask = gap_kernels.masked_gap_forward(x, attention, GAMMA_FG, GAMMA_BG)
    grad_pooled = torch.randn(pooled.shape).to(DEVICE, x.dtype)
    dx = gap_kernels.masked_gap_backward(grad_pooled, x, attention, counts, GAMMA_FG, GAMMA_BG)
    ref_same = masked_gap_reference(x, attention, grad_pooled)
    ref64 = masked_gap_reference(x.double(), attention, grad_pooled)
    # The masks come from the same fp32 thresholds: they must agree exactly.
    assert counts.dtype == torch.int64 and torch.equal(counts, ref64[1])
    assert dfg_mask.dtype == torch.bool and torch.equal(dfg_mask, ref64[2])
    assert pooled.dtype == x.dtype and dx.dtype == x.dtype and dx.is_contiguous()
    assert_close_to_reference("pooled", pooled, ref_same[0], ref64[0], atol, rtol)
    assert_close_to_reference("dx", dx, ref_same[3], ref64[3], atol, rtol)
    return counts


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("batch, channels, height, width, signed", [
    (1, 1, 1, 1, False),      # N = 1, C = 1: the single position is below theta_bg = 1.2 A
    (2, 5, 13, 17, True),     # C = 5 < BLOCK_C, N = 221 a multiple of no tile; signed A (mean may be < 0)
    (2, 9, 28, 28, False),    # the ICL map size; two channel blocks (the second partial), 13 N tiles
])
def test_masked_gap_matches_reference(batch, channels, height, width, signed, dtype, atol, rtol):
    n = height * width
    x = torch.randn(batch, channels, n).to(DEVICE, dtype)
    attention = (torch.randn(batch, n) if signed else torch.rand(batch, n)).to(DEVICE, dtype)
    counts = check_masked_gap(x, attention, atol, rtol)
    if n > 1:  # the masks are not trivially empty or full, so the three sums really differ
        assert (counts > 0).all() and (counts < n).all()


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("value, expected_counts", [
    (0.0, (0, 0, 0)),         # theta_fg = theta_bg = 0 = A: every mask is empty -> zeros, not NaN
    (0.5, (0, 0, 70)),        # theta_bg = 0.6 > A: fg and dfg empty, bg full
    (-0.5, (70, 70, 0)),      # negative A: theta_bg = -0.6 < A < theta_fg = -0.36: bg empty
])
def test_masked_gap_constant_attention(value, expected_counts, dtype, atol, rtol):
    x = torch.randn(2, 5, 70).to(DEVICE, dtype)
    attention = torch.full((2, 70), value, device=DEVICE, dtype=dtype)
    counts = check_masked_gap(x, attention, atol, rtol)
    assert counts.tolist() == [list(expected_counts)] * 2


@pytest.mark.parametrize("dtype, atol, rtol", [DTYPE_TOLERANCES[0], DTYPE_TOLERANCES[2]])
@pytest.mark.parametrize("config", range(len(gap_kernels.GPU_CONFIGS)))
def test_masked_gap_every_gpu_config(config, dtype, atol, rtol, monkeypatch):
    # Every tile shape the autotuner may pick on a GPU, with a partial channel block and a partial last N
    # tile for each: compiled C = 80, N = 1000; interpreted (slow) C = 40, N = 520.
    for kernel in (gap_kernels._masked_gap_forward_kernel, gap_kernels._masked_gap_backward_kernel):
        monkeypatch.setattr(kernel, "configs", [gap_kernels.GPU_CONFIGS[config]])
    channels, n = (80, 1000) if DEVICE == "cuda" else (40, 520)
    x = torch.randn(2, channels, n).to(DEVICE, dtype)
    counts = check_masked_gap(x, torch.rand(2, n).to(DEVICE, dtype), atol, rtol)
    assert (counts > 0).all() and (counts < n).all()


def test_masked_gap_channels_last_input():
    # A channels_last [B, C, H, W] map viewed as [B, C, N] has stride 1 along C: read in place.
    x4d = torch.randn(2, 6, 5, 7, device=DEVICE).to(memory_format=torch.channels_last)
    x = x4d.view(2, 6, 35) if x4d.is_contiguous() else x4d.flatten(2)
    assert x.stride(1) == 1
    check_masked_gap(x, torch.rand(2, 35, device=DEVICE), 1e-6, 1e-6)


@pytest.mark.parametrize("path", ["eager", "triton_op"])
def test_masked_gap_public_op_with_autograd(path):
    # eager: wsol_fast.ops -> one autograd.Function -> the launchers; triton_op: the torch.compile path's op.
    assert "triton" in ops.available_impls(DEVICE) and _triton.triton_ops()
    x = torch.randn(2, 9, 50, device=DEVICE, requires_grad=True)
    attention = torch.rand(2, 50, device=DEVICE, requires_grad=True)
    if path == "eager":
        pooled, counts, dfg_mask = ops.masked_gap(x, attention, GAMMA_FG, GAMMA_BG, impl="triton")
    else:
        pooled, counts, dfg_mask = torch.ops.wsol_fast.masked_gap_triton(x, attention, GAMMA_FG, GAMMA_BG)
    grad_pooled = torch.randn(pooled.shape, device=DEVICE)
    pooled.backward(grad_pooled)
    assert attention.grad is None   # hard masks: no gradient reaches the attention
    ref32 = masked_gap_reference(x.detach(), attention.detach(), grad_pooled)
    ref64 = masked_gap_reference(x.detach().double(), attention.detach(), grad_pooled)
    assert torch.equal(counts, ref64[1]) and torch.equal(dfg_mask, ref64[2])
    assert_close_to_reference("pooled", pooled.detach(), ref32[0], ref64[0], 1e-6, 1e-6)
    assert_close_to_reference("dx", x.grad, ref32[3], ref64[3], 1e-6, 1e-6)


def test_interpreter_state_is_reported():
    assert _triton.triton_interpreter_active() == INTERPRETING


def test_fp64_fallback_of_the_cuda_kernels():
    # The registered CUDA kernels route fp64 (no Triton path) to plain PyTorch forms: same formulas.
    f, g, zbar = (t.double() for t in attention_inputs(2, 30, 6, torch.float32))
    grad_a = torch.randn(2, 30, dtype=torch.float64, device=DEVICE)
    a, lse = _triton.attention_forward_fp64(f, g, zbar, 0.5)
    ref = attention_reference(f, g, zbar, 0.5, grad_a)
    torch.testing.assert_close(a, ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, reference.nonlocal_attention_lse(f, g, 0.5), rtol=1e-12, atol=1e-12)
    for grad, expected in zip(_triton.attention_backward_fp64(grad_a, f, g, zbar, a, lse, 0.5), ref[1:]):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    x, attention = torch.randn(2, 5, 30, dtype=torch.float64, device=DEVICE), torch.rand(2, 30, device=DEVICE)
    grad_pooled = torch.randn(2, 3, 5, dtype=torch.float64, device=DEVICE)
    expected = masked_gap_reference(x, attention, grad_pooled)
    counts = expected[1]
    dx = _triton.masked_gap_backward_fp64(grad_pooled, x, attention, counts, GAMMA_FG, GAMMA_BG)
    torch.testing.assert_close(dx, expected[3], rtol=1e-12, atol=1e-12)


# ------------------------------------------- the ops on CUDA: opcheck, torch.compile, a training step
# Compiled-only: the interpreter path is a torch.autograd.Function, not the registered op. The helpers
# take (device, impl) so the same checks can be pointed at another registered kernel.

@needs_cuda
@pytest.mark.parametrize("sample", OPCHECK_SAMPLES)
def test_opcheck_on_cuda(sample):
    # Schema, fake kernel (shapes, dtypes and strides of the real outputs), autograd registration and
    # AOT dispatch, all through the Triton kernels registered for "cuda".
    op, args = opcheck_samples("cuda")[sample]
    torch.library.opcheck(op, args)


def _attention_then_pool(f, g, zbar, x, impl):
    attention = ops.nonlocal_attention_map(f, g, zbar, scale=0.5, impl=impl)
    pooled, counts, dfg = ops.masked_gap(x, attention.detach(), GAMMA_FG, GAMMA_BG, impl=impl)
    loss = (pooled * pooled).sum() + (attention * attention).sum()
    return loss, counts, dfg


def check_compile_fullgraph(device, impl):
    """torch.compile(fullgraph=True) through both ops equals eager, values and gradients."""
    torch._dynamo.reset()
    inputs = [torch.randn(2, 70, 24), torch.randn(2, 70, 24), torch.randn(2, 70), torch.randn(2, 40, 70)]
    eager_in = [t.to(device).requires_grad_() for t in inputs]
    compiled_in = [t.to(device).requires_grad_() for t in inputs]
    eager = _attention_then_pool(*eager_in, impl)
    compiled = torch.compile(_attention_then_pool, fullgraph=True)(*compiled_in, impl)
    # The ops are the same kernels in both; only the generated code around them sums in another order.
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5)
    eager[0].backward()
    compiled[0].backward()
    for e, c in zip(eager_in, compiled_in):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_compile_fullgraph_on_cuda():
    check_compile_fullgraph("cuda", "triton")


def icl_training_curve(impl, device, amp_dtype, steps=4):
    """Losses of a few SGD steps of one ICL block (attention, masked GAP, embedding, both outputs in
    the loss), from the same initial weights and input for every impl."""
    from wsol_fast.models.icl import ICLBlock

    torch.manual_seed(0)
    block = ICLBlock(channels=64, drop_rate=0.0, gamma_fg=GAMMA_FG, gamma_bg=GAMMA_BG, impl=impl,
                     **paper_values()).to(device).train()
    x = torch.randn(4, 64, 13, 15, device=device)   # N = 195: a partial tile in every kernel
    if amp_dtype is not None:
        x = x.to(amp_dtype)                          # as the conv before the block gives it under autocast
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            out, record = block(x)
            loss = out.float().square().mean() + record.embeddings.float().square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses)


# (amp dtype, rtol, atol). In bf16 the fused and literal attention maps round differently, which can
# move a position across a threshold: the curves agree to about bf16's resolution, not to the bit.
ICL_TRAINING_TOLERANCES = [
    pytest.param(None, 1e-4, 1e-6, id="fp32"),
    pytest.param(torch.bfloat16, 3e-2, 1e-3, id="bf16-autocast"),
]


@needs_cuda
@pytest.mark.parametrize("amp_dtype, rtol, atol", ICL_TRAINING_TOLERANCES)
def test_icl_block_training_step_on_cuda_matches_reference(amp_dtype, rtol, atol):
    reference_curve = icl_training_curve("reference", "cuda", amp_dtype)
    triton_curve = icl_training_curve("triton", "cuda", amp_dtype)
    assert torch.isfinite(triton_curve).all()
    assert reference_curve[-1] < reference_curve[0], "the loss must move for the test to mean anything"
    torch.testing.assert_close(triton_curve, reference_curve, rtol=rtol, atol=atol)
