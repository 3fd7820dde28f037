"""The ICL block (docs/spec.md §1.1): non-local attention map, importance map / dropped-foreground mask, and the
masked-GAP embeddings the contrastive loss needs.

Both heavy steps go through the public ops, in the forms of docs/spec.md §1.3:
  identity 1: A = softmax(f g^T s) zbar with zbar = mean_c z = w_bar^T x + b_bar, so the C-channel z is never
              built; w_bar, b_bar are means of Conv1x1_z's rows, so conv_z keeps the paper's C x C shape and
              gets exactly the gradient of the literal form;
  identity 2: e_alpha = Conv1x1_e(masked-GAP_alpha(x)): pool the C-channel x once, then project 3 vectors.

The map the thresholds, masks and losses see (docs/spec.md §1.1; the measurements: docs/method.md) is a named
option, `attention_form`:
  "paper":    A = P zbar, zbar = mean_c Conv1x1_z(x): the literal Eq. 5. Signed: z has a bias and zero-mean
              weights, so mean(A) and even max(A) can be negative and the thresholds of Eq. 1-2 lose their
              meaning; on post-ReLU features of realistic scale the unscaled softmax rows become one-hot
              on one key and A is constant (measured, docs/method.md).
  "relu":     A = P zbar, zbar = mean_c ReLU(Conv1x1_z(x)): a non-negative value. The C-channel z is built
              (identity 1 folds only a linear z); the attention itself keeps value dimension 1.
  "residual": A = mean_c x + P zbar with the ReLU value: ADL's channel-mean map (non-negative on the
              post-ReLU features every block sits on) refined by the non-local term, so the map keeps the
              features' spatial contrast even where the softmax rows are all alike (uniform or one-hot).
`attention_scale` is the logit scale s (a number, or "inv_sqrt" for 1/sqrt(C')); `mask_norm="minmax"`
computes the thresholds of Eq. 1-2 on the per-sample min-max normalised map instead of the raw one.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import math

import torch

from .. import ops
from .. import options as _options
from .adl import adl_drop_mask, apply_selected_map, channel_mean_attention, draw_drop
from .outputs import BlockRecord

ATTENTION_FORMS = _options.BY_NAME["attention_form"].choices
MASK_NORMS = _options.BY_NAME["mask_norm"].choices
# The defaults of a block built by hand: the option table's (wsol_fast/options.py), as create_model's; the
# per-backbone ones (drop_rate, gamma_fg, gamma_bg) have none here and are required.
_D = _options.defaults("icl")


def resolve_scale(scale, inner_channels: int) -> float:
    """The logit scale s: a number, or "inv_sqrt" for 1 / sqrt(C')."""
    if scale == "inv_sqrt":
        return 1.0 / math.sqrt(inner_channels)
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"attention_scale must be a number or 'inv_sqrt', got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"attention_scale must be positive and finite, got {scale!r}")
    return value


def normalize_for_masks(attention: torch.Tensor, mode: str, eps: float = 1e-6) -> torch.Tensor:
    """The map the thresholds see: A itself ("none") or (A - min) / (max - min) per sample ("minmax")."""
    if mode == "none":
        return attention
    low = attention.amin(dim=1, keepdim=True)
    high = attention.amax(dim=1, keepdim=True)
    return (attention - low) / (high - low).clamp_min(eps)


class ICLBlock(nn.Module):
    """In-sample contrastive learning block for a C-channel feature map.

    Training: returns (new_x, BlockRecord). new_x = x * M_dfg with probability drop_rate, else
    x * sigmoid(A). Eval: returns (x, None) with x untouched and nothing computed.

    Ablation switches (paper Table 2): nonlocal_attention=False uses the channel mean of x as A;
    use_dfg_mask=False drops with ADL's mask [A < t * max A], t = drop_threshold (None: gamma_fg);
    use_contrastive=False builds no Conv1x1_e and records no embeddings.
    `impl` is passed to both ops (None: fastest for the device).
    """

    def __init__(self, channels: int, drop_rate: float, gamma_fg: float, gamma_bg: float,
                 drop_threshold: float | None = _D["drop_threshold"], per_sample_drop: bool = _D["per_sample_drop"],
                 use_contrastive: bool = _D["use_contrastive"], nonlocal_attention: bool = _D["nonlocal_attention"],
                 use_dfg_mask: bool = _D["use_dfg_mask"], attention_scale: float | str = _D["attention_scale"],
                 inner_channels_ratio: float = _D["inner_channels_ratio"], embed_dim: int = _D["embed_dim"],
                 attention_form: str = _D["attention_form"], mask_norm: str = _D["mask_norm"],
                 impl: str | None = _D["impl"]):
        super().__init__()
        for name in ("drop_rate", "gamma_fg", "gamma_bg", "attention_form", "mask_norm"):
            _options.check(name, locals()[name])   # the flags' ranges (options.py), e.g. gamma_fg in (0, 1]
        self.channels = channels
        self.attention_form = attention_form
        self.mask_norm = mask_norm
        self.drop_rate = drop_rate
        self.gamma_fg = gamma_fg
        self.gamma_bg = gamma_bg
        self.drop_threshold = gamma_fg if drop_threshold is None else drop_threshold
        self.per_sample_drop = per_sample_drop
        self.use_contrastive = use_contrastive
        self.nonlocal_attention = nonlocal_attention
        self.use_dfg_mask = use_dfg_mask
        self.impl = impl
        inner = max(1, int(channels * inner_channels_ratio))   # C' = C // 2 by default
        self.attention_scale = resolve_scale(attention_scale, inner)
        if nonlocal_attention:
            self.conv_f = nn.Conv2d(channels, inner, kernel_size=1)
            self.conv_g = nn.Conv2d(channels, inner, kernel_size=1)
            self.conv_z = nn.Conv2d(channels, channels, kernel_size=1)   # C rows, as in the paper
        if use_contrastive:
            # A 1x1 conv applied to the three pooled vectors (identity 2), kept as a conv so its parameters
            # have the literal form's shape.
            self.conv_e = nn.Conv2d(channels, embed_dim, kernel_size=1)

    def attention_map(self, x: Tensor) -> Tensor:
        """A: [B, C, H, W] -> [B, N], with its graph."""
        if not self.nonlocal_attention:
            return channel_mean_attention(x)
        f = self.conv_f(x).flatten(2).transpose(1, 2).contiguous()       # [B, N, C']
        g = self.conv_g(x).flatten(2).transpose(1, 2).contiguous()       # [B, N, C']
        c = x.shape[1]
        if self.attention_form == "paper":
            # zbar = mean_c (W_z x + b_z) = w_bar^T x + b_bar: the channel mean folded into the weights.
            w_bar = self.conv_z.weight.mean(dim=0).view(1, c, 1)
            b_bar = self.conv_z.bias.mean().view(1)
            zbar = F.conv1d(x.flatten(2), w_bar, b_bar).squeeze(1)             # [B, N]
        else:
            zbar = F.relu(self.conv_z(x)).mean(dim=1).flatten(1)               # [B, N], >= 0
        attention = ops.nonlocal_attention_map(f, g, zbar.to(f.dtype), scale=self.attention_scale,
                                               impl=self.impl)
        if self.attention_form == "residual":
            attention = F.relu(x).mean(dim=1).flatten(1).to(attention.dtype) + attention
        return attention

    def embed(self, pooled: Tensor) -> Tensor:
        """Conv1x1_e on pooled vectors [B, 3, C] -> [B, 3, D] (pool-then-project, identity 2)."""
        return F.linear(pooled, self.conv_e.weight.flatten(1), self.conv_e.bias)

    def forward(self, x: Tensor):
        if not self.training:
            return x, None
        b, _, h, w = x.shape
        attention = self.attention_map(x)                                   # [B, N]
        mask_map = normalize_for_masks(attention.detach(), self.mask_norm)  # what the thresholds see
        embeddings = counts = dfg_mask = None
        if self.use_contrastive or self.use_dfg_mask:
            # Masks are hard, so the pooled features are differentiable w.r.t. x only.
            pooled, counts, dfg_mask = ops.masked_gap(x.flatten(2), mask_map, self.gamma_fg,
                                                      self.gamma_bg, impl=self.impl)
            if self.use_contrastive:
                embeddings = self.embed(pooled)
        drop_mask = dfg_mask if self.use_dfg_mask else adl_drop_mask(mask_map, self.drop_threshold)
        dropped = draw_drop(b, self.drop_rate, self.per_sample_drop, x.device)
        out = apply_selected_map(x, attention, drop_mask, dropped)
        record = BlockRecord(attention=attention.view(b, h, w), embeddings=embeddings, counts=counts,
                             drop_mask=drop_mask.view(b, h, w), dropped=dropped)
        return out, record

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, drop_rate={self.drop_rate}, gamma_fg={self.gamma_fg}, "
                f"gamma_bg={self.gamma_bg}, nonlocal_attention={self.nonlocal_attention}, "
                f"use_dfg_mask={self.use_dfg_mask}, use_contrastive={self.use_contrastive}, "
                f"form={self.attention_form}, mask_norm={self.mask_norm}, scale={self.attention_scale:.4g}, "
                f"impl={self.impl}")
