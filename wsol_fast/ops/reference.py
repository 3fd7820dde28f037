"""Pure-PyTorch reference forms of the two operators (docs/spec.md §1.1, §1.3).

These are the *literal* forms: a materialised N x N softmax, and three separately
computed masked means. Every fused implementation (C++ in csrc/, Triton in kernels/)
is tested against these, and they are the fallback wherever no native op is built.

`upcast=True` computes in fp32 (fp64 stays fp64) and casts the result back, as
flash-attention's `*_ref` functions do; tests use it to get the "reference error in
the same precision" of the tolerance rule.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_probabilities(f: Tensor, g: Tensor, scale: float = 1.0) -> Tensor:
    """P = softmax_j(f_i . g_j * scale) as a stored [B, N, N] tensor (the literal form)."""
    return torch.softmax(torch.bmm(f, g.transpose(1, 2)) * scale, dim=-1)


def nonlocal_attention_map(f: Tensor, g: Tensor, zbar: Tensor, scale: float = 1.0,
                           upcast: bool = False) -> Tensor:
    """A_i = sum_j P_ij zbar_j with P stored. f, g: [B, N, C']; zbar: [B, N] -> A: [B, N]."""
    dtype = f.dtype
    if upcast:
        acc = _acc_dtype(dtype)
        f, g, zbar = f.to(acc), g.to(acc), zbar.to(acc)
    p = attention_probabilities(f, g, scale)
    return torch.bmm(p, zbar.unsqueeze(-1)).squeeze(-1).to(dtype)


def nonlocal_attention_lse(f: Tensor, g: Tensor, scale: float = 1.0) -> Tensor:
    """Row log-sum-exp of S = f g^T * scale, in fp32 (fp64 for fp64 input): [B, N]."""
    acc = _acc_dtype(f.dtype)
    s = torch.bmm(f.to(acc), g.to(acc).transpose(1, 2)) * scale
    return torch.logsumexp(s, dim=-1)


def nonlocal_attention_map_full_z(f: Tensor, g: Tensor, z: Tensor, scale: float = 1.0) -> Tensor:
    """The paper's Eq. 5 literally: A_i = mean_c sum_j P_ij z_cj with the full C-channel z.

    z: [B, C, N]. Used to prove identity 1 of docs/spec.md §1.3 (channel pooling folds into the values).
    """
    p = attention_probabilities(f, g, scale)             # [B, N, N]
    attended = torch.bmm(z, p.transpose(1, 2))          # [B, C, N]: sum_j P_ij z_cj
    return attended.mean(dim=1)


def attention_masks(attention: Tensor, gamma_fg: float, gamma_bg: float):
    """The three hard masks of docs/spec.md §1.1 (Eq. 1, 2), per sample: (fg, dfg, bg), each bool [B, N].

    Thresholds are computed in fp32 (fp64 for fp64 input): theta_fg = gamma_fg * max_i A_i,
    theta_bg = gamma_bg * mean_i A_i.
    """
    a = attention.detach().to(_acc_dtype(attention.dtype))
    theta_fg = gamma_fg * a.amax(dim=1, keepdim=True)
    theta_bg = gamma_bg * a.mean(dim=1, keepdim=True)
    fg = a > theta_bg
    bg = a < theta_bg
    dfg = (a < theta_fg) & (a > theta_bg)
    return fg, dfg, bg


def masked_gap(x: Tensor, attention: Tensor, gamma_fg: float, gamma_bg: float):
    """Three masked global average pools, each computed separately (the literal form).

    x: [B, C, N]; attention: [B, N].
    Returns pooled [B, 3, C] (order fg, dfg, bg; dtype of x), counts [B, 3] (int64) and
    dfg_mask [B, N] (bool). An empty mask gives a zero vector, never NaN. No gradient
    flows through the masks; the gradient w.r.t. x is that of the three means.
    """
    masks = attention_masks(attention, gamma_fg, gamma_bg)
    pooled, counts = [], []
    for m in masks:
        count = m.sum(dim=1)                                        # [B]
        mf = m.to(x.dtype).unsqueeze(1)                             # [B, 1, N]
        s = (x * mf).sum(dim=2)                                     # [B, C]
        pooled.append(s / count.clamp(min=1).to(x.dtype).unsqueeze(1))
        counts.append(count)
    return torch.stack(pooled, dim=1), torch.stack(counts, dim=1), masks[1]
