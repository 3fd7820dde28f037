"""wsol_fast: weakly supervised object localization with in-sample contrastive learning and
consistent attention (Ki et al., ACCV 2020), with exact wsolevaluation metrics and fused operators."""
from __future__ import annotations

__version__ = "0.1.0"


def backends() -> dict:
    """Which implementations of the `wsol_fast` ops are live in this process, and the default per device."""
    import os

    import torch

    from . import ops

    # The C++ attention's fp32 tile GEMM (csrc/gemm.h): oneDNN when ATen has it, unless overridden.
    onednn = torch.backends.mkldnn.is_available() and os.environ.get("WSOL_FAST_CPU_GEMM") != "blas"
    gemm = "onednn" if onednn else "blas"

    return {
        "reference": True,
        "cpp": ops._library.CPP_AVAILABLE,
        "cpp_gemm": gemm if ops._library.CPP_AVAILABLE else None,
        "triton_cuda": ops._triton.TRITON_CUDA_AVAILABLE,
        "triton_interpreter": ops._triton.triton_interpreter_active(),
        "default": {"cpu": ops.available_impls("cpu")[0], "cuda": ops.available_impls("cuda")[0]},
    }
