"""ADL, the baseline the paper builds on (Choe & Shim, CVPR 2019; wsolevaluation's `ADL`), and the pieces
of it that ICL's ablations reuse: channel-mean attention, the drop mask, and the random map selection.

In training the block multiplies its input by either the importance map sigmoid(A) or the hard drop mask
[A < t * max A] (probability drop_rate); in eval mode it is the identity.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import options as _options
from .outputs import BlockRecord

_D = _options.defaults("adl")   # the option table's (wsol_fast/options.py), as create_model's


def channel_mean_attention(x: Tensor) -> Tensor:
    """A = mean over channels of x: [B, C, H, W] -> [B, N] (ADL's "vanilla" attention)."""
    return x.mean(dim=1).flatten(1)


def adl_drop_mask(attention: Tensor, threshold: float) -> Tensor:
    """[A < threshold * max_i A_i] per sample: [B, N] -> bool [B, N]. Hard: no gradient."""
    a = attention.detach()
    return a < threshold * a.amax(dim=1, keepdim=True)


def draw_drop(batch: int, drop_rate: float, per_sample: bool, device: torch.device) -> Tensor:
    """Which samples get the drop mask: one draw for the whole batch (ADL's habit, docs/spec.md §1.1) or one per
    sample. Drawn on the tensors' device so no host sync is needed. Returns bool [B]."""
    if per_sample:
        return torch.rand(batch, device=device) < drop_rate
    return (torch.rand((), device=device) < drop_rate).expand(batch)


def apply_selected_map(x: Tensor, attention: Tensor, drop_mask: Tensor, dropped: Tensor) -> Tensor:
    """x * (drop_mask if dropped else sigmoid(attention)), broadcast over channels.

    x: [B, C, H, W]; attention, drop_mask: [B, N]; dropped: bool [B]. A blend instead of a Python branch
    keeps the step free of data-dependent control flow; the gradient reaches the attention only through
    the importance map of the samples that did not drop."""
    b, _, h, w = x.shape
    importance = torch.sigmoid(attention)
    selected = torch.where(dropped.view(b, 1), drop_mask.to(importance.dtype), importance)
    return x * selected.view(b, 1, h, w).to(x.dtype)


class ADLBlock(nn.Module):
    """Attention-based dropout layer. Training: returns (x * selected map, BlockRecord); eval: (x, None)."""

    def __init__(self, drop_rate: float = _D["drop_rate"], drop_threshold: float = _D["drop_threshold"],
                 per_sample_drop: bool = _D["per_sample_drop"]):
        super().__init__()
        for name in ("drop_rate", "drop_threshold"):
            _options.check(name, locals()[name])
        self.drop_rate = drop_rate
        self.drop_threshold = drop_threshold
        self.per_sample_drop = per_sample_drop

    def forward(self, x: Tensor):
        if not self.training:
            return x, None
        b, _, h, w = x.shape
        attention = channel_mean_attention(x)
        drop_mask = adl_drop_mask(attention, self.drop_threshold)
        dropped = draw_drop(b, self.drop_rate, self.per_sample_drop, x.device)
        out = apply_selected_map(x, attention, drop_mask, dropped)
        return out, BlockRecord(attention=attention.view(b, h, w), drop_mask=drop_mask.view(b, h, w),
                                dropped=dropped)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, drop_threshold={self.drop_threshold}, " \
               f"per_sample_drop={self.per_sample_drop}"
