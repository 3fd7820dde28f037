"""wsol_fast: weakly supervised object localization with in-sample contrastive learning and
consistent attention (Ki et al., ACCV 2020), with exact wsolevaluation metrics and fused operators."""
from __future__ import annotations

__version__ = "0.1.0"


def backends() -> dict:
    """Which implementations of the `wsol_fast` ops are live in this process, and the default per device."""
    from . import ops

    return {
        "reference": True,
        "cpp": ops._library.CPP_AVAILABLE,
        # The C++ attention's fp32 tile GEMM (csrc/gemm.h): "onednn", or "blas" (torch.mm's).
        "cpp_gemm": ops._library.cpp_gemm(),
        "triton_cuda": ops._triton.TRITON_CUDA_AVAILABLE,
        "triton_interpreter": ops._triton.triton_interpreter_active(),
        "default": {"cpu": ops.available_impls("cpu")[0], "cuda": ops.available_impls("cuda")[0]},
    }
