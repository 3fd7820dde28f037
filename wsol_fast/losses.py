"""The training objective (docs/spec.md §1.2): L = L_cls + lambda_ca * L_ca + lambda_fc * L_fc.

    loss_fn = WSOLLoss(lambda_ca=1.0, lambda_fc=1.0, margin=1.0, fc_norm="minmax", fc_reduction="mean")
    terms = loss_fn(model(images), labels)     # {"total", "cls", "ca", "fc"}: scalar fp32 tensors
    terms["total"].backward()

Every term is computed in fp32 (fp64 stays fp64) with autocast off, whatever the model's precision.
A term that the model's config disables (`use_contrastive` / `use_fc` on the output, or a CAM / ADL
model) is a zero tensor. The defaults are the option table's (options.LOSS_OPTIONS), and so are the
choices of fc_norm and fc_reduction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import options

DEFAULTS = options.loss_defaults()
FC_NORMS = options.LOSS_BY_NAME["fc_norm"].choices
FC_REDUCTIONS = options.LOSS_BY_NAME["fc_reduction"].choices
# Guard of the per-sample normalisation: a denominator with |d| < NORM_EPS is replaced by +-NORM_EPS
# (its own sign, + for an exact zero) for "max", and by NORM_EPS for "minmax" (max - min >= 0). So an
# all-zero map stays zero and a constant map gives zeros under "minmax"; nothing divides by zero.
NORM_EPS = 1e-6


def _acc(t: Tensor) -> Tensor:
    """fp32 for half / bf16 / fp32 input; fp64 stays fp64."""
    return t if t.dtype == torch.float64 else t.float()


def contrastive_attention_loss(e_fg: Tensor, e_dfg: Tensor, e_bg: Tensor,
                               margin: float = DEFAULTS["margin"]) -> Tensor:
    """Eq. 3 for one block: mean_b [ ||e_dfg - e_fg||_2 - ||e_dfg - e_bg||_2 + m ]_+ ; inputs [B, D]."""
    e_fg, e_dfg, e_bg = _acc(e_fg), _acc(e_dfg), _acc(e_bg)
    positive = torch.linalg.vector_norm(e_dfg - e_fg, dim=1)
    negative = torch.linalg.vector_norm(e_dfg - e_bg, dim=1)
    return F.relu(positive - negative + margin).mean()


def normalize_attention(attention: Tensor, mode: str = DEFAULTS["fc_norm"], eps: float = NORM_EPS) -> Tensor:
    """Per-sample normalisation of maps [B, h, w] for L_fc.

    "max": A / max(A), literally, so a map with a negative max flips sign (see NORM_EPS for the guard);
    "minmax": (A - min) / (max - min); "none": A."""
    if mode == "none":
        return attention
    flat = attention.flatten(1)
    top = flat.amax(dim=1)
    if mode == "max":
        small = top.abs() < eps
        denom = torch.where(small, torch.where(top < 0, -eps, eps).to(top.dtype), top)
        return attention / denom.view(-1, 1, 1)
    if mode == "minmax":
        low = flat.amin(dim=1)
        return (attention - low.view(-1, 1, 1)) / (top - low).clamp_min(eps).view(-1, 1, 1)
    raise ValueError(f"fc_norm must be one of {FC_NORMS}, got {mode!r}")


def foreground_consistency_loss(attentions: list[Tensor], norm: str = DEFAULTS["fc_norm"],
                                reduction: str = DEFAULTS["fc_reduction"], eps: float = NORM_EPS) -> Tensor:
    """Eq. 4 summed over early blocks: the last map is the reference, resized (bilinear) to each early
    map's size and detached, so no gradient reaches the reference layer (paper 3.5).

    Per block: mean_b (mean or sum)_i (norm(A_k) - norm(resize(A_last)))^2. Maps are [B, h, w]."""
    if reduction not in FC_REDUCTIONS:
        raise ValueError(f"fc_reduction must be one of {FC_REDUCTIONS}, got {reduction!r}")
    if len(attentions) < 2:
        raise ValueError("the foreground consistency loss needs at least two attention maps")
    reference = _acc(attentions[-1].detach())
    total = reference.new_zeros(())
    for early in attentions[:-1]:
        early = _acc(early)
        ref = reference
        if ref.shape[-2:] != early.shape[-2:]:
            ref = F.interpolate(ref.unsqueeze(1), size=early.shape[-2:], mode="bilinear",
                                align_corners=False).squeeze(1)
        sq = (normalize_attention(early, norm, eps) - normalize_attention(ref, norm, eps)) ** 2
        per_sample = sq.flatten(1).mean(dim=1) if reduction == "mean" else sq.flatten(1).sum(dim=1)
        total = total + per_sample.mean()
    return total


class WSOLLoss:
    """L = CE(logits, labels) + lambda_ca * L_ca + lambda_fc * L_fc (docs/spec.md §1.2).

    `__call__(output, labels)` takes the model's training output (a WSOLOutput; a bare logits tensor
    gives the CE term only) and returns {"total", "cls", "ca", "fc"}. L_ca sums over blocks that carry
    embeddings; L_fc needs at least two blocks. A lambda of 0 skips the term's computation."""

    def __init__(self, lambda_ca: float = DEFAULTS["lambda_ca"], lambda_fc: float = DEFAULTS["lambda_fc"],
                 margin: float = DEFAULTS["margin"], fc_norm: str = DEFAULTS["fc_norm"],
                 fc_reduction: str = DEFAULTS["fc_reduction"], norm_eps: float = NORM_EPS):
        if fc_norm not in FC_NORMS:
            raise ValueError(f"fc_norm must be one of {FC_NORMS}, got {fc_norm!r}")
        if fc_reduction not in FC_REDUCTIONS:
            raise ValueError(f"fc_reduction must be one of {FC_REDUCTIONS}, got {fc_reduction!r}")
        self.lambda_ca = float(lambda_ca)
        self.lambda_fc = float(lambda_fc)
        self.margin = float(margin)
        self.fc_norm = fc_norm
        self.fc_reduction = fc_reduction
        self.norm_eps = float(norm_eps)

    def __call__(self, output, labels: Tensor) -> dict[str, Tensor]:
        logits = output if isinstance(output, Tensor) else output.logits
        blocks = [] if isinstance(output, Tensor) else list(output.blocks)
        with torch.autocast(logits.device.type, enabled=False):
            cls = F.cross_entropy(_acc(logits), labels)
            ca = cls.new_zeros(())
            fc = cls.new_zeros(())
            if self.lambda_ca != 0 and getattr(output, "use_contrastive", False):
                for record in blocks:
                    if record.embeddings is not None:
                        ca = ca + contrastive_attention_loss(record.e_fg, record.e_dfg, record.e_bg,
                                                             self.margin)
            if self.lambda_fc != 0 and getattr(output, "use_fc", False) and len(blocks) >= 2:
                fc = foreground_consistency_loss([r.attention for r in blocks], self.fc_norm,
                                                 self.fc_reduction, self.norm_eps)
            total = cls + self.lambda_ca * ca + self.lambda_fc * fc
        return {"total": total, "cls": cls, "ca": ca, "fc": fc}

    def __repr__(self) -> str:
        return (f"WSOLLoss(lambda_ca={self.lambda_ca}, lambda_fc={self.lambda_fc}, margin={self.margin}, "
                f"fc_norm={self.fc_norm!r}, fc_reduction={self.fc_reduction!r})")
