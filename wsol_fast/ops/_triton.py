"""Triton (kernels/) implementations registered as the CUDA kernels of the `wsol_fast` ops.

STUB: replaced by the Triton work (issue 5). Until then no Triton kernel is live.
"""
TRITON_CUDA_AVAILABLE = False


def triton_interpreter_active() -> bool:
    return False


def nonlocal_attention_map_interpreted(f, g, zbar, scale):
    raise NotImplementedError


def masked_gap_interpreted(x, attention, gamma_fg, gamma_bg):
    raise NotImplementedError
