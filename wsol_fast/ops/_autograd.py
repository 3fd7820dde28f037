"""The autograd of the two ops, written once for both registrations (the C++ ops in _library.py, the
triton_op versions in _triton.py): the forward saves its O(B*N) extras, the backward calls the
registration's own backward op, looked up by name at call time."""
from __future__ import annotations

import torch


def attention_autograd(backward_op: str):
    """(backward, setup_context) of a nonlocal_attention_map op whose gradient is torch.ops.wsol_fast.<backward_op>."""

    def setup_context(ctx, inputs, output):
        f, g, zbar, scale = inputs
        A, lse = output
        # lse is an auxiliary output for the backward (as in flash-attention), not differentiable.
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(f, g, zbar, A, lse)
        ctx.scale = scale

    def backward(ctx, grad_A, grad_lse):
        f, g, zbar, A, lse = ctx.saved_tensors
        df, dg, dzbar = getattr(torch.ops.wsol_fast, backward_op)(grad_A, f, g, zbar, A, lse, ctx.scale)
        return df, dg, dzbar, None

    return backward, setup_context


def masked_gap_autograd(backward_op: str):
    """(backward, setup_context) of a masked_gap op whose gradient is torch.ops.wsol_fast.<backward_op>."""

    def setup_context(ctx, inputs, output):
        x, attention, gamma_fg, gamma_bg = inputs
        _, counts, _ = output
        ctx.save_for_backward(x, attention, counts)
        ctx.gammas = (gamma_fg, gamma_bg)

    def backward(ctx, grad_pooled, grad_counts, grad_dfg_mask):
        x, attention, counts = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = getattr(torch.ops.wsol_fast, backward_op)(grad_pooled, x, attention, counts, *ctx.gammas)
        # The masks are hard: no gradient flows to the attention (as in the reference).
        return dx, None, None, None

    return backward, setup_context
