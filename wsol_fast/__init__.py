"""wsol_fast: weakly supervised object localization with in-sample contrastive learning and
consistent attention (Ki et al., ACCV 2020), with exact wsolevaluation metrics and fused operators."""
from __future__ import annotations

__version__ = "0.1.0"


def _source_tree_kernels() -> None:
    """Make `wsol_fast.kernels` this tree's `kernels/` when wsol_fast is imported from a source checkout.

    setup.py installs `kernels/` as `wsol_fast.kernels` (package_dir). From a checkout on PYTHONPATH,
    with no install, or beside an editable install of another checkout, that name would be missing or
    would load the other checkout's kernels. A checkout is recognised by setup.py and both kernel modules
    beside this package; an installed wheel has neither, and keeps its own `wsol_fast.kernels`.
    Only the package is registered here: its __init__ imports nothing, so triton is not imported.
    """
    import importlib.util
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = os.path.join(root, "kernels")
    if "wsol_fast.kernels" in sys.modules or not all(
            os.path.isfile(os.path.join(folder, name)) for folder, name in (
                (root, "setup.py"), (source, "__init__.py"), (source, "nonlocal_attention.py"),
                (source, "masked_gap.py"))):
        return
    spec = importlib.util.spec_from_file_location(
        "wsol_fast.kernels", os.path.join(source, "__init__.py"), submodule_search_locations=[source])
    module = importlib.util.module_from_spec(spec)
    sys.modules["wsol_fast.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_source_tree_kernels()


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
        # On CUDA, impl=None takes the implementation measured fastest at the nearest measured shape:
        # the table's GPU, date and source, and each measured (op, dtype, shape)'s choice.
        "dispatch": ops.dispatch.summary(),
    }
