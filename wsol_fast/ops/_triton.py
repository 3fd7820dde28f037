"""Triton (kernels/) implementations of the `wsol_fast` ops.

* On CUDA: the launchers of `wsol_fast.kernels` are registered as the "cuda" kernels of the four
  torch.library ops (schemas, fake kernels and autograd come from `_library`, imported first), so
  `torch.ops.wsol_fast.*` and `torch.compile` reach them like any other device kernel.
* On CPU under Triton's interpreter (TRITON_INTERPRET=1, for tests without a GPU): the same
  launchers behind torch.autograd.Function wrappers, called directly by `wsol_fast.ops`.

Nothing here fails at import: without triton, without CUDA, or if the ops are not defined, the
Triton path is simply reported unavailable (`TRITON_CUDA_AVAILABLE`, `triton_interpreter_active()`).
The kernel modules are imported lazily on CPU-only machines, so `import wsol_fast` stays cheap
and TRITON_INTERPRET may be set any time before the first Triton call.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings

import torch

OPS = ("nonlocal_attention_map", "nonlocal_attention_map_backward", "masked_gap", "masked_gap_backward")
_ATTENTION_MODULE = "wsol_fast.kernels.nonlocal_attention"
_MASKED_GAP_MODULE = "wsol_fast.kernels.masked_gap"


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # not installed, or an install that cannot load
        return False
    return True


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_interpreter_active() -> bool:
    """True when the Triton kernels run (or will run) in the interpreter, on CPU tensors.

    Triton fixes interpreted-or-compiled when a kernel module is imported; if ours were imported
    without the interpreter, setting TRITON_INTERPRET afterwards does not make them interpreted.
    """
    if not (_interpret_env() and _triton_importable()):
        return False
    loaded = sys.modules.get(_ATTENTION_MODULE)
    return loaded is None or bool(loaded.INTERPRETING)


def _kernels():
    return importlib.import_module(_ATTENTION_MODULE), importlib.import_module(_MASKED_GAP_MODULE)


# ---------------------------------------------------------------- CPU tensors, Triton interpreter

def nonlocal_attention_map_interpreted(f, g, zbar, scale: float):
    """A [B, N] (differentiable in f, g, zbar) through the interpreted Triton kernels."""
    if not triton_interpreter_active():
        raise RuntimeError("the Triton interpreter is not active: set TRITON_INTERPRET=1 before "
                           "wsol_fast.kernels is first imported")
    attention, _ = _kernels()
    return attention.nonlocal_attention_map(f, g, zbar, float(scale))


def masked_gap_interpreted(x, attention_map, gamma_fg: float, gamma_bg: float):
    """(pooled, counts, dfg_mask), differentiable in x, through the interpreted Triton kernels."""
    if not triton_interpreter_active():
        raise RuntimeError("the Triton interpreter is not active: set TRITON_INTERPRET=1 before "
                           "wsol_fast.kernels is first imported")
    _, masked_gap = _kernels()
    return masked_gap.masked_gap(x, attention_map, float(gamma_fg), float(gamma_bg))


# ------------------------------------------------------------------- CUDA tensors, torch.library
# Triton has no fp64 tl.dot worth using; fp64 CUDA inputs (accepted by the ops) take these plain
# PyTorch forms of the same formulas (P stored, O(N^2) memory: a correctness path, not a fast one).

def attention_forward_fp64(f, g, zbar, scale):
    scores = torch.bmm(f, g.transpose(1, 2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    return torch.bmm(torch.exp(scores - lse.unsqueeze(-1)), zbar.unsqueeze(-1)).squeeze(-1), lse


def attention_backward_fp64(grad_a, f, g, zbar, a, lse, scale):
    p_grad_a = torch.exp(torch.bmm(f, g.transpose(1, 2)) * scale - lse.unsqueeze(-1)) * grad_a.unsqueeze(-1)
    ds = p_grad_a * (zbar.unsqueeze(1) - a.unsqueeze(-1))
    # Laid out as torch.empty_like(input), as the fake kernel declares (and the Triton path returns):
    # bmm alone would give contiguous gradients for, e.g., a transposed f.
    return tuple(torch.empty_like(like).copy_(grad) for like, grad in (
        (f, torch.bmm(ds, g) * scale), (g, torch.bmm(ds.transpose(1, 2), f) * scale), (zbar, p_grad_a.sum(dim=1))))


def masked_gap_backward_fp64(grad_pooled, x, attention_map, counts, gamma_fg, gamma_bg):
    from .reference import attention_masks
    masks = torch.stack(attention_masks(attention_map, gamma_fg, gamma_bg), dim=1).to(x.dtype)  # [B, 3, N]
    scaled = grad_pooled / counts.clamp(min=1).to(x.dtype).unsqueeze(-1)                       # [B, 3, C]
    return torch.bmm(scaled.transpose(1, 2), masks)


def _cuda_kernels():
    """The four "cuda" kernels, each launched on its input's device (Triton uses the current one)."""
    from .reference import masked_gap as masked_gap_fp64
    attention, masked_gap = _kernels()

    def nonlocal_attention_map(f, g, zbar, scale):
        if f.dtype == torch.float64:
            return attention_forward_fp64(f, g, zbar, scale)
        with torch.cuda.device(f.device):
            return attention.nonlocal_attention_forward(f, g, zbar, scale)

    def nonlocal_attention_map_backward(grad_A, f, g, zbar, A, lse, scale):  # noqa: N803 (schema names)
        if f.dtype == torch.float64:
            return attention_backward_fp64(grad_A, f, g, zbar, A, lse, scale)
        with torch.cuda.device(f.device):
            return attention.nonlocal_attention_backward(grad_A, f, g, zbar, A, lse, scale)

    def masked_gap_forward(x, attention_map, gamma_fg, gamma_bg):
        if x.dtype == torch.float64:
            return tuple(t.detach() for t in masked_gap_fp64(x, attention_map, gamma_fg, gamma_bg))
        with torch.cuda.device(x.device):
            return masked_gap.masked_gap_forward(x, attention_map, gamma_fg, gamma_bg)

    def masked_gap_backward(grad_pooled, x, attention_map, counts, gamma_fg, gamma_bg):
        if x.dtype == torch.float64:
            return masked_gap_backward_fp64(grad_pooled, x, attention_map, counts, gamma_fg, gamma_bg)
        with torch.cuda.device(x.device):
            return masked_gap.masked_gap_backward(grad_pooled, x, attention_map, counts, gamma_fg, gamma_bg)

    return dict(zip(OPS, (nonlocal_attention_map, nonlocal_attention_map_backward,
                          masked_gap_forward, masked_gap_backward)))


def _register_cuda_kernels() -> bool:
    """Register the Triton launchers as the CUDA kernels of the ops; False (with a warning) on failure."""
    try:
        for name, fn in _cuda_kernels().items():
            torch.library.register_kernel(f"wsol_fast::{name}", "cuda", fn)
    except Exception as exc:  # ops not defined (no _library), or a kernel module that cannot load
        warnings.warn(f"wsol_fast: Triton CUDA kernels not registered ({type(exc).__name__}: {exc}); "
                      "CUDA tensors fall back to the reference ops")
        return False
    return True


# triton importable, a GPU present, and the kernels registered with the ops.
TRITON_CUDA_AVAILABLE = bool(torch.cuda.is_available() and _triton_importable() and _register_cuda_kernels())
