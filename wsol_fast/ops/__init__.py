"""Public entry points of the two operators of docs/spec.md §5, with dispatch to the fastest live implementation.

    nonlocal_attention_map(f, g, zbar, scale=1.0, impl=None) -> A          [B, N]
    masked_gap(x, attention, gamma_fg, gamma_bg, impl=None) -> (pooled [B, 3, C], counts [B, 3], dfg_mask [B, N])

`impl` forces one implementation: "reference" (pure PyTorch, literal form), "cpp" (csrc/, CPU tensors)
or "triton" (kernels/, CUDA tensors, or CPU tensors under TRITON_INTERPRET=1). `None` picks by device:
on CUDA the implementation that measured fastest at the nearest measured shape and dtype (dispatch.py,
dispatch_table.json; Triton where the table has no row), on CPU the C++ ops, else the reference.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch, reference
from ._checks import check_attention_inputs, check_masked_gap_inputs
from . import _library, _triton

IMPLS = ("reference", "cpp", "triton")

__all__ = ["nonlocal_attention_map", "masked_gap", "available_impls", "resolve_impl", "reference", "dispatch", "IMPLS"]


def available_impls(device: torch.device | str) -> list[str]:
    """Implementations that can run on tensors of `device`, fastest first."""
    device_type = torch.device(device).type
    out = []
    if device_type == "cuda" and _triton.TRITON_CUDA_AVAILABLE:
        out.append("triton")
    if device_type == "cpu" and _library.CPP_AVAILABLE:
        out.append("cpp")
    if device_type == "cpu" and _triton.triton_interpreter_active():
        out.append("triton")
    out.append("reference")
    return out


def resolve_impl(impl: str | None, device: torch.device | str, op: str | None = None, dtype=None,
                 shape=None) -> str:
    """`impl`, checked; for None the device's default, on CUDA by measurement (dispatch.choose) when the
    op, dtype and shape key are given and the table's choice is available here."""
    if impl is None:
        available = available_impls(device)
        if torch.device(device).type == "cuda" and op is not None:
            choice = dispatch.choose(op, dtype, shape)
            if choice is not None and choice.impl in available:
                return choice.impl
        return available[0]
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
    if impl not in available_impls(device):
        raise ValueError(f"impl={impl!r} is not available for {torch.device(device).type} tensors here; "
                         f"available: {available_impls(device)} (see wsol_fast.backends())")
    return impl


def nonlocal_attention_map(f: Tensor, g: Tensor, zbar: Tensor, scale: float = 1.0,
                           impl: str | None = None) -> Tensor:
    """A = softmax(f g^T * scale) zbar, for f, g: [B, N, C'] and zbar: [B, N]; returns A: [B, N].

    Differentiable with respect to f, g and zbar. The fused implementations never store the
    N x N matrix (online softmax; the backward recomputes it from the saved row log-sum-exp).
    """
    check_attention_inputs(f, g, zbar)
    impl = resolve_impl(impl, f.device, "nonlocal_attention_map", f.dtype, f.shape[1:])
    if impl == "reference":
        # Autocast would cast the reference's bmm back to half precision; keep fp32 accumulation.
        with torch.autocast(f.device.type, enabled=False):
            return reference.nonlocal_attention_map(f, g, zbar, float(scale), upcast=True)
    if impl == "triton":   # eager: one autograd.Function to the launchers; compiled: the triton_op
        return _triton.nonlocal_attention_map(f, g, zbar, float(scale))
    return torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, float(scale))[0]


def masked_gap(x: Tensor, attention: Tensor, gamma_fg: float, gamma_bg: float,
               impl: str | None = None):
    """Masks of docs/spec.md §1.1 from `attention` and the three masked means of x: [B, C, N].

    Returns (pooled [B, 3, C] in the order fg, dfg, bg; counts [B, 3] int64; dfg_mask [B, N] bool).
    Differentiable with respect to x only (the masks are hard).
    """
    check_masked_gap_inputs(x, attention)
    impl = resolve_impl(impl, x.device, "masked_gap", x.dtype, x.shape[1:])
    if impl == "reference":
        return reference.masked_gap(x, attention, float(gamma_fg), float(gamma_bg))
    if impl == "triton":
        return _triton.masked_gap(x, attention, float(gamma_fg), float(gamma_bg))
    return torch.ops.wsol_fast.masked_gap(x, attention, float(gamma_fg), float(gamma_bg))
