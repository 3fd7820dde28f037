"""The autograd of the two ops, written once for every way in: the C++ ops' registration (_library.py), the
triton_op versions' (_triton.py), and the Triton eager path's torch.autograd.Function (_triton.py, built
here by `autograd_function`). The forward saves its O(B*N) extras; the backward calls the registration's
own backward: a `wsol_fast` op looked up by name at call time, or the Triton backward launcher itself."""
from __future__ import annotations

from typing import Callable

import torch


def _backward_call(backward: str | Callable) -> Callable:
    """The backward to call: a callable as it is, an op name as torch.ops.wsol_fast.<name> (looked up when
    called, so an op registered later is found)."""
    if callable(backward):
        return backward
    return lambda *args: getattr(torch.ops.wsol_fast, backward)(*args)


def attention_autograd(backward_op: str | Callable):
    """(backward, setup_context) of a nonlocal_attention_map whose gradient is `backward_op`: the name of a
    torch.ops.wsol_fast op, or a function with its signature (grad_A, f, g, zbar, A, lse, scale)."""
    call = _backward_call(backward_op)

    def setup_context(ctx, inputs, output):
        f, g, zbar, scale = inputs
        A, lse = output
        # lse is an auxiliary output for the backward (as in flash-attention), not differentiable.
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(f, g, zbar, A, lse)
        ctx.scale = scale

    def backward(ctx, grad_A, grad_lse):
        f, g, zbar, A, lse = ctx.saved_tensors
        df, dg, dzbar = call(grad_A, f, g, zbar, A, lse, ctx.scale)
        return df, dg, dzbar, None

    return backward, setup_context


def masked_gap_autograd(backward_op: str | Callable):
    """(backward, setup_context) of a masked_gap whose gradient is `backward_op`: the name of a
    torch.ops.wsol_fast op, or a function with its signature (grad_pooled, x, attention, counts, gamma_fg,
    gamma_bg)."""
    call = _backward_call(backward_op)

    def setup_context(ctx, inputs, output):
        x, attention, gamma_fg, gamma_bg = inputs
        _, counts, _ = output
        ctx.save_for_backward(x, attention, counts)
        ctx.gammas = (gamma_fg, gamma_bg)

    def backward(ctx, grad_pooled, grad_counts, grad_dfg_mask):
        x, attention, counts = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = call(grad_pooled, x, attention, counts, *ctx.gammas)
        # The masks are hard: no gradient flows to the attention (as in the reference).
        return dx, None, None, None

    return backward, setup_context


def autograd_function(name: str, forward: Callable, backward: Callable, setup_context: Callable,
                      non_differentiable: tuple[int, ...] = ()) -> type:
    """A torch.autograd.Function class called `name`: `forward(*inputs)`, then the same `setup_context` and
    `backward` as a registration (from attention_autograd / masked_gap_autograd). The Triton eager path:
    one Function straight to the launchers, no dispatcher round trip. `non_differentiable`: the indices of
    outputs that carry no gradient (masked_gap's counts and mask)."""

    def function_forward(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        if non_differentiable:
            ctx.mark_non_differentiable(*(output[i] for i in non_differentiable))
        return output

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(function_forward), "backward": staticmethod(backward),
        "__doc__": f"{name}: the Triton launchers with the ops' own autograd (wsol_fast/ops/_autograd.py)."})
