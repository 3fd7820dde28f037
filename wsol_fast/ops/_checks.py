"""Argument checks shared by every implementation of the ops (clear errors that name the argument)."""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor(name: str, t, ndim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {shape_doc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have rank {ndim} {shape_doc}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
                         f"got {t.dtype}")


def _same_device(named: dict) -> None:
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {desc}")


def check_attention_inputs(f: Tensor, g: Tensor, zbar: Tensor) -> None:
    _tensor("f", f, 3, "[B, N, C']")
    _tensor("g", g, 3, "[B, N, C']")
    _tensor("zbar", zbar, 2, "[B, N]")
    if g.shape != f.shape:
        raise ValueError(f"g must have the shape of f {tuple(f.shape)} [B, N, C'], got {tuple(g.shape)}")
    if zbar.shape != f.shape[:2]:
        raise ValueError(f"zbar must have shape [B, N] = {tuple(f.shape[:2])}, got {tuple(zbar.shape)}")
    if f.shape[1] == 0 or f.shape[2] == 0:
        raise ValueError(f"f must have N >= 1 and C' >= 1, got shape {tuple(f.shape)}")
    if not (f.dtype == g.dtype == zbar.dtype):
        raise ValueError(f"f, g and zbar must share a dtype, got {f.dtype}, {g.dtype}, {zbar.dtype}")
    _same_device({"f": f, "g": g, "zbar": zbar})


def check_masked_gap_inputs(x: Tensor, attention: Tensor) -> None:
    _tensor("x", x, 3, "[B, C, N]")
    _tensor("attention", attention, 2, "[B, N]")
    if attention.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"attention must have shape [B, N] = {(x.shape[0], x.shape[2])} to match "
                         f"x {tuple(x.shape)} [B, C, N], got {tuple(attention.shape)}")
    if x.shape[2] == 0:
        raise ValueError(f"x must have N >= 1 positions, got shape {tuple(x.shape)}")
    _same_device({"x": x, "attention": attention})
