"""What the op tests share on every device (the C++ CPU kernels, the Triton kernels interpreted on the
CPU or compiled on CUDA): the tolerance rule and the opcheck sample inputs."""
from __future__ import annotations

import torch

GAMMA_FG, GAMMA_BG = 0.72, 1.2   # vgg16's row of docs/spec.md §1.4


def assert_close_to_reference(name, fused, ref_same_dtype, ref64, atol, rtol=0.0, extra_rtol=0.0):
    """flash-attention's rule: max |fused - ref64| <= 2 max |ref_dtype - ref64| + atol, where ref64 is the
    reference in fp64 on the same (rounded) inputs and ref_dtype the reference run in the tested dtype.
    rtol (about the dtype's unit roundoff: the rounding of the output itself) and extra_rtol (a named
    extra term, e.g. Triton's recomputation of P from the fp32 lse) add (rtol + extra_rtol) max |ref64|."""
    assert fused.shape == ref64.shape, f"{name}: shape {tuple(fused.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(fused).all(), f"{name}: non-finite values"
    err = (fused.double() - ref64).abs().max().item()
    ref_err = (ref_same_dtype.double() - ref64).abs().max().item()
    bound = 2 * ref_err + atol
    if rtol or extra_rtol:
        bound += (rtol + extra_rtol) * ref64.abs().max().item()
    assert err <= bound, f"{name}: error {err:.3e} > bound {bound:.3e} (reference's own error {ref_err:.3e})"


# The opcheck samples by name; "triton-op-*" are the triton_op versions (CUDA, the torch.compile path).
OPCHECK_SAMPLES = ["attention-fp32-grad", "attention-bf16", "attention-fp64-grad", "attention-noncontiguous-grad",
                   "attention-fp64-noncontiguous-grad", "attention-head-dim-1-fp64-grad", "attention-fp32-scale-2",
                   "gap-fp32-grad", "gap-bf16", "gap-fp64-grad", "gap-fp32", "gap-noncontiguous-empty-masks",
                   "attention-backward-op", "gap-backward-op",
                   "triton-op-attention-fp32-grad", "triton-op-attention-bf16-grad",
                   "triton-op-attention-noncontiguous-grad", "triton-op-gap-fp32-grad", "triton-op-gap-bf16-grad"]


def opcheck_samples(device) -> dict:
    """name -> (op, args): each op on fp32 with grad, bf16, fp64 (on CUDA: the kernels' PyTorch
    fallback), non-contiguous inputs, a head dim of 1 and another logit scale; the masked GAP also on
    constant attention (empty masks); the backward ops; on CUDA the triton_op versions."""
    def attention(b, n, c, dtype, requires_grad, scale=1.0):
        ts = [torch.randn(b, n, c), torch.randn(b, n, c), torch.randn(b, n)]
        return [t.to(device, dtype).requires_grad_(requires_grad) for t in ts] + [scale]

    def gap(b, c, n, dtype, requires_grad):
        return [torch.randn(b, c, n).to(device, dtype).requires_grad_(requires_grad),
                torch.randn(b, n).to(device, dtype), GAMMA_FG, GAMMA_BG]

    attention_op, gap_op = torch.ops.wsol_fast.nonlocal_attention_map.default, torch.ops.wsol_fast.masked_gap.default
    samples = {
        "attention-fp32-grad": (attention_op, attention(2, 37, 24, torch.float32, True, 0.5)),
        "attention-bf16": (attention_op, attention(2, 40, 16, torch.bfloat16, False)),
        "attention-fp64-grad": (attention_op, attention(1, 9, 3, torch.float64, True)),
        "attention-noncontiguous-grad": (attention_op, [
            torch.randn(2, 8, 12, device=device).transpose(1, 2).requires_grad_(),
            torch.randn(2, 12, 8, device=device), torch.randn(2, 24, device=device)[:, ::2], 1.0]),
        "attention-fp64-noncontiguous-grad": (attention_op, [
            torch.randn(2, 4, 9, device=device, dtype=torch.float64).transpose(1, 2).requires_grad_(),
            torch.randn(2, 9, 4, device=device, dtype=torch.float64).requires_grad_(),
            torch.randn(2, 9, device=device, dtype=torch.float64).requires_grad_(), 0.7]),
        "attention-head-dim-1-fp64-grad": (attention_op, attention(1, 9, 1, torch.float64, True, 0.5)),
        "attention-fp32-scale-2": (attention_op, attention(2, 33, 3, torch.float32, False, 2.0)),
        "gap-fp32-grad": (gap_op, gap(2, 5, 70, torch.float32, True)),
        "gap-bf16": (gap_op, gap(2, 6, 33, torch.bfloat16, False)),
        "gap-fp64-grad": (gap_op, gap(1, 3, 9, torch.float64, True)),
        "gap-fp32": (gap_op, gap(3, 4, 7, torch.float32, False)),
        "gap-noncontiguous-empty-masks": (gap_op, [
            torch.randn(2, 7, 4, device=device).transpose(1, 2).requires_grad_(),
            torch.zeros(2, 7, device=device), 0.86, 1.2]),
    }
    f, g, zbar = (t.detach() for t in attention(2, 21, 5, torch.float32, False)[:3])
    a, lse = torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, 1.0)
    samples["attention-backward-op"] = (torch.ops.wsol_fast.nonlocal_attention_map_backward.default,
                                        [torch.randn(2, 21, device=device), f, g, zbar, a, lse, 1.0])
    x, att = torch.randn(2, 5, 21, device=device), torch.rand(2, 21, device=device)
    counts = torch.ops.wsol_fast.masked_gap(x, att, GAMMA_FG, GAMMA_BG)[1]
    samples["gap-backward-op"] = (torch.ops.wsol_fast.masked_gap_backward.default,
                                  [torch.randn(2, 3, 5, device=device), x, att, counts, GAMMA_FG, GAMMA_BG])
    if torch.device(device).type == "cuda":
        from wsol_fast.ops import _triton

        if _triton.triton_ops():   # defined by wsol_fast.ops._triton
            triton_attention = torch.ops.wsol_fast.nonlocal_attention_map_triton.default
            triton_gap = torch.ops.wsol_fast.masked_gap_triton.default
            samples["triton-op-attention-fp32-grad"] = (triton_attention,
                                                        attention(2, 37, 24, torch.float32, True, 0.5))
            samples["triton-op-attention-bf16-grad"] = (triton_attention,
                                                        attention(2, 40, 144, torch.bfloat16, True))
            samples["triton-op-attention-noncontiguous-grad"] = (triton_attention, [
                torch.randn(2, 8, 12, device=device).transpose(1, 2).requires_grad_(),
                torch.randn(2, 12, 8, device=device), torch.randn(2, 24, device=device)[:, ::2], 1.0])
            samples["triton-op-gap-fp32-grad"] = (triton_gap, gap(2, 5, 70, torch.float32, True))
            samples["triton-op-gap-bf16-grad"] = (triton_gap, gap(2, 6, 33, torch.bfloat16, True))
    return samples
