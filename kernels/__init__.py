"""Triton kernels of the two fused operators (docs/spec.md §5), installed as `wsol_fast.kernels`.

    nonlocal_attention  FlashAttention-style attention map with value dimension 1 (forward, backward)
    masked_gap          masks of docs/spec.md §1.1 and the three masked means in one read of x (forward, backward)

Each module has three layers: @triton.jit kernels, launchers (`*_forward`, `*_backward`: pick blocks,
allocate, launch) and a torch.autograd.Function wrapper. `wsol_fast.ops._triton` registers the
launchers as the CUDA kernels of the torch.library ops and uses the wrappers under Triton's
interpreter (TRITON_INTERPRET=1, CPU tensors), which must be set before these modules are imported.
Nothing is imported here, so `import wsol_fast.kernels` does not import triton.
"""
