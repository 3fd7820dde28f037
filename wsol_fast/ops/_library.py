"""The `wsol_fast` torch.library ops: loading of the C++ library (csrc/), fake and autograd registration.

Four ops, declared once in C++ (csrc/wsol_fast_ops.cpp, TORCH_LIBRARY) with CPU kernels in csrc/:

    nonlocal_attention_map(f, g, zbar, scale) -> (A, lse)
    nonlocal_attention_map_backward(grad_A, f, g, zbar, A, lse, scale) -> (df, dg, dzbar)
    masked_gap(x, attention, gamma_fg, gamma_bg) -> (pooled, counts, dfg_mask)
    masked_gap_backward(grad_pooled, x, attention, counts, gamma_fg, gamma_bg) -> dx

This module (the extension-cpp pattern) adds what is device independent: a fake kernel for each op
(so torch.compile(fullgraph=True) traces through them) and autograd for the two forward ops, whose
backward calls the backward ops, so that it dispatches per device (C++ on CPU, Triton on CUDA).

Without the built library (not compiled, or WSOL_FAST_DISABLE_CPP=1) it warns once and defines the
same schemas from `SCHEMAS`, so the CUDA kernels (ops/_triton.py) still have ops to register to;
CPU calls then go through the reference (`CPP_AVAILABLE` is False). tests/ops/test_ops_registration.py
proves that `SCHEMAS` equals what the C++ library registers.
"""
from __future__ import annotations

import os
import warnings

import torch

from ._autograd import attention_autograd, masked_gap_autograd
from ._checks import check_attention_inputs, check_masked_gap_inputs

NAMESPACE = "wsol_fast"

# The schema strings of csrc/wsol_fast_ops.cpp, for builds without the C++ library.
SCHEMAS = {
    "nonlocal_attention_map": "(Tensor f, Tensor g, Tensor zbar, float scale) -> (Tensor, Tensor)",
    "nonlocal_attention_map_backward": ("(Tensor grad_A, Tensor f, Tensor g, Tensor zbar, Tensor A, "
                                        "Tensor lse, float scale) -> (Tensor, Tensor, Tensor)"),
    "masked_gap": "(Tensor x, Tensor attention, float gamma_fg, float gamma_bg) -> (Tensor, Tensor, Tensor)",
    "masked_gap_backward": ("(Tensor grad_pooled, Tensor x, Tensor attention, Tensor counts, "
                            "float gamma_fg, float gamma_bg) -> Tensor"),
}

DISABLE_ENV = "WSOL_FAST_DISABLE_CPP"


def _load_cpp_library() -> str | None:
    """Import wsol_fast._C (its static initialisers register the ops); return why not, or None."""
    if os.environ.get(DISABLE_ENV, "0") == "1":
        return f"disabled by {DISABLE_ENV}=1"
    try:
        from .. import _C  # noqa: F401
    except ImportError as exc:
        return f"wsol_fast._C is not built ({exc})"
    return None


_MISSING_REASON = _load_cpp_library()
CPP_AVAILABLE: bool = _MISSING_REASON is None
_python_defined = None  # keeps the Python-side definitions alive when the C++ library is absent
if not CPP_AVAILABLE:
    warnings.warn(f"wsol_fast: C++ operators unavailable ({_MISSING_REASON}); CPU tensors use the "
                  "pure-PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
                  RuntimeWarning, stacklevel=2)
    _python_defined = torch.library.Library(NAMESPACE, "DEF")
    for _name, _schema in SCHEMAS.items():
        _python_defined.define(_name + _schema)


def cpp_gemm() -> str | None:
    """The fp32 tile GEMM of the C++ attention kernels ("onednn" or "blas"), None without the library.
    Asks the library itself (csrc/gemm.h), so it honours WSOL_FAST_CPU_GEMM as the kernels do."""
    if not CPP_AVAILABLE:
        return None
    from .. import _C

    return _C.cpu_gemm()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- fake (meta) kernels: shapes and dtypes exactly as the real kernels produce them ----

@torch.library.register_fake(f"{NAMESPACE}::nonlocal_attention_map")
def _nonlocal_attention_map_fake(f, g, zbar, scale):
    check_attention_inputs(f, g, zbar)
    batch, n = f.shape[0], f.shape[1]
    return f.new_empty((batch, n)), f.new_empty((batch, n), dtype=_acc_dtype(f.dtype))


@torch.library.register_fake(f"{NAMESPACE}::nonlocal_attention_map_backward")
def _nonlocal_attention_map_backward_fake(grad_A, f, g, zbar, A, lse, scale):
    check_attention_inputs(f, g, zbar)
    return torch.empty_like(f), torch.empty_like(g), torch.empty_like(zbar)


@torch.library.register_fake(f"{NAMESPACE}::masked_gap")
def _masked_gap_fake(x, attention, gamma_fg, gamma_bg):
    check_masked_gap_inputs(x, attention)
    batch, channels, n = x.shape
    return (x.new_empty((batch, 3, channels)), x.new_empty((batch, 3), dtype=torch.int64),
            x.new_empty((batch, n), dtype=torch.bool))


@torch.library.register_fake(f"{NAMESPACE}::masked_gap_backward")
def _masked_gap_backward_fake(grad_pooled, x, attention, counts, gamma_fg, gamma_bg):
    check_masked_gap_inputs(x, attention)
    return x.new_empty(x.shape)


# ---- autograd: the forward ops save O(B*N) extras; backward calls the backward ops ----

_backward, _setup = attention_autograd("nonlocal_attention_map_backward")
torch.library.register_autograd(f"{NAMESPACE}::nonlocal_attention_map", _backward, setup_context=_setup)
_backward, _setup = masked_gap_autograd("masked_gap_backward")
torch.library.register_autograd(f"{NAMESPACE}::masked_gap", _backward, setup_context=_setup)
