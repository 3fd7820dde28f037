"""Triton (kernels/) implementations of the `wsol_fast` ops, and the host path to them.

Three ways in, one set of launchers (`wsol_fast.kernels.*_forward` / `*_backward`):

* Eager (`nonlocal_attention_map`, `masked_gap` here; what `wsol_fast.ops` calls for impl="triton"):
  one torch.autograd.Function straight to the launchers, no dispatcher round trips (built by
  _autograd.autograd_function with the same set-up and backward as the registrations). On CUDA, and on
  CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, for tests without a GPU).
* Under torch.compile (CUDA): the `*_triton` ops below, defined with torch.library.triton_op and
  launching through wrap_triton, so Inductor sees the Triton kernels themselves (not an opaque op)
  and their fake kernels come from tracing the launchers. Autograd is registered on them.
* `torch.ops.wsol_fast.<op>` on CUDA tensors (the four ops of `_library`, declared in C++ with CPU
  kernels): the same launchers registered as their "cuda" kernels, fp64 through plain PyTorch forms.

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

from ._autograd import attention_autograd, autograd_function, masked_gap_autograd

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


# --------------------------------------------------------------------------------- the eager path

@functools.lru_cache(maxsize=None)
def _eager_functions() -> tuple[type, type]:
    """The two autograd.Functions of the eager path: the launchers, with the ops' own autograd."""
    attention, gap = _kernels()
    return (autograd_function("NonlocalAttentionMapFunction", attention.nonlocal_attention_forward,
                              *attention_autograd(attention.nonlocal_attention_backward)),
            autograd_function("MaskedGapFunction", gap.masked_gap_forward,
                              *masked_gap_autograd(gap.masked_gap_backward), non_differentiable=(1, 2)))


def _require_runnable(t) -> None:
    if t.device.type == "cpu" and not triton_interpreter_active():
        raise RuntimeError("the Triton interpreter is not active: set TRITON_INTERPRET=1 before "
                           "wsol_fast.kernels is first imported")


def nonlocal_attention_map(f, g, zbar, scale: float):
    """A [B, N], differentiable in f, g, zbar, through the Triton kernels (impl="triton").

    Eager: one autograd.Function straight to the launchers. Under torch.compile on CUDA: the triton_op
    (Inductor sees the kernels). fp64 on CUDA: the registered op (plain PyTorch forms).
    """
    _require_runnable(f)
    if f.is_cuda and (f.dtype == torch.float64 or torch.compiler.is_compiling()):
        if f.dtype != torch.float64 and _TRITON_OPS_DEFINED:
            return torch.ops.wsol_fast.nonlocal_attention_map_triton(f, g, zbar, float(scale))[0]
        return torch.ops.wsol_fast.nonlocal_attention_map(f, g, zbar, float(scale))[0]
    return _eager_functions()[0].apply(f, g, zbar, float(scale))[0]


def masked_gap(x, attention_map, gamma_fg: float, gamma_bg: float):
    """(pooled, counts, dfg_mask), differentiable in x, through the Triton kernels (impl="triton")."""
    _require_runnable(x)
    if x.is_cuda and (x.dtype == torch.float64 or torch.compiler.is_compiling()):
        if x.dtype != torch.float64 and _TRITON_OPS_DEFINED:
            return torch.ops.wsol_fast.masked_gap_triton(x, attention_map, float(gamma_fg), float(gamma_bg))
        return torch.ops.wsol_fast.masked_gap(x, attention_map, float(gamma_fg), float(gamma_bg))
    return _eager_functions()[1].apply(x, attention_map, float(gamma_fg), float(gamma_bg))


# ------------------------------------------------------------ the compile path: torch.library.triton_op

TRITON_OPS = ("nonlocal_attention_map_triton", "nonlocal_attention_map_backward_triton",
              "masked_gap_triton", "masked_gap_backward_triton")


_TRITON_OPS_DEFINED: bool | None = None   # None: not tried yet


def triton_ops() -> bool:
    """Define the four `wsol_fast::*_triton` ops (once); False, with a warning, where that fails.

    On CUDA machines this runs at import, so a torch.compile trace only reads the flag (a plain global,
    not a cached call that Dynamo would trace into)."""
    global _TRITON_OPS_DEFINED
    if _TRITON_OPS_DEFINED is None:
        try:
            _define_triton_ops()
            _TRITON_OPS_DEFINED = True
        except Exception as exc:  # no triton_op in this torch, no triton, a kernel module that cannot load
            warnings.warn(f"wsol_fast: triton_op versions of the ops not defined ({type(exc).__name__}: {exc}); "
                          "torch.compile falls back to the opaque ops")
            _TRITON_OPS_DEFINED = False
    return _TRITON_OPS_DEFINED


def _define_triton_ops() -> None:
    from torch.library import triton_op, wrap_triton

    attention, gap = _kernels()

    # Explicit schemas: this module has `from __future__ import annotations`, which infer_schema cannot read.
    @triton_op("wsol_fast::nonlocal_attention_map_triton", mutates_args=(),
               schema="(Tensor f, Tensor g, Tensor zbar, float scale) -> (Tensor, Tensor)")
    def attention_forward(f, g, zbar, scale):
        if f.dtype == torch.float64:
            return attention_forward_fp64(f, g, zbar, scale)
        return attention.nonlocal_attention_forward(f, g, zbar, scale, wrap=wrap_triton)

    @triton_op("wsol_fast::nonlocal_attention_map_backward_triton", mutates_args=(),
               schema="(Tensor grad_a, Tensor f, Tensor g, Tensor zbar, Tensor a, Tensor lse, float scale) "
                      "-> (Tensor, Tensor, Tensor)")
    def attention_backward(grad_a, f, g, zbar, a, lse, scale):
        if f.dtype == torch.float64:
            return attention_backward_fp64(grad_a, f, g, zbar, a, lse, scale)
        return attention.nonlocal_attention_backward(grad_a, f, g, zbar, a, lse, scale, wrap=wrap_triton)

    @triton_op("wsol_fast::masked_gap_triton", mutates_args=(),
               schema="(Tensor x, Tensor attention, float gamma_fg, float gamma_bg) -> (Tensor, Tensor, Tensor)")
    def gap_forward(x, attention_map, gamma_fg, gamma_bg):
        return gap.masked_gap_forward(x, attention_map, gamma_fg, gamma_bg, wrap=wrap_triton)

    @triton_op("wsol_fast::masked_gap_backward_triton", mutates_args=(),
               schema="(Tensor grad_pooled, Tensor x, Tensor attention, Tensor counts, float gamma_fg, "
                      "float gamma_bg) -> Tensor")
    def gap_backward(grad_pooled, x, attention_map, counts, gamma_fg, gamma_bg):
        return gap.masked_gap_backward(grad_pooled, x, attention_map, counts, gamma_fg, gamma_bg, wrap=wrap_triton)

    attention_grad, attention_setup = attention_autograd("nonlocal_attention_map_backward_triton")
    attention_forward.register_autograd(attention_grad, setup_context=attention_setup)
    gap_grad, gap_setup = masked_gap_autograd("masked_gap_backward_triton")
    gap_forward.register_autograd(gap_grad, setup_context=gap_setup)


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
if TRITON_CUDA_AVAILABLE:
    triton_ops()   # defined now, not inside the first torch.compile trace
