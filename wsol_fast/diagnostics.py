"""Mask diagnostics: what the attention blocks' masks looked like during an epoch, so that degenerate
masks (empty, full, never dropping) show in the first epoch's progress line and metrics.csv.

    stats = block_stats(output, margin)          # [blocks, len(FIELDS)] per-step values, on the device
    sums += stats                                # no host sync per step
    row.update(as_columns(sums / steps))         # diag_b{k}_{field} columns at the epoch's end

Per block and step (means over the batch):
    fg, dfg, bg   fraction of positions in M_fg, M_dfg, M_bg (ICL blocks; ADL: fg = 1 - drop mask, dfg = bg = 0)
    empty         share of samples with an empty M_fg, M_dfg or M_bg (ICL)
    dropped       share of samples that got the drop mask (the drop draw)
    hinge         share of samples whose L_ca hinge is active: ||e_dfg - e_fg|| - ||e_dfg - e_bg|| + m > 0
"""
from __future__ import annotations

import torch
from torch import Tensor

FIELDS = ("fg", "dfg", "bg", "empty", "dropped", "hinge")


def block_stats(output, margin: float) -> Tensor | None:
    """[blocks, 6] fp32 statistics of one training step's block records, or None without records."""
    blocks = getattr(output, "blocks", None)
    if not blocks:
        return None
    rows = []
    with torch.no_grad():
        for rec in blocks:
            n = rec.attention[0].numel()
            dev = rec.attention.device
            row = torch.zeros(len(FIELDS), device=dev)
            if rec.counts is not None:
                frac = rec.counts.float() / n                            # [B, 3]
                row[0:3] = frac.mean(dim=0)
                row[3] = (rec.counts == 0).any(dim=1).float().mean()
            elif rec.drop_mask is not None:
                row[0] = 1.0 - rec.drop_mask.flatten(1).float().mean()
            if rec.dropped is not None:
                row[4] = rec.dropped.float().mean()
            if rec.embeddings is not None:
                e = rec.embeddings.float()
                pos = torch.linalg.vector_norm(e[:, 1] - e[:, 0], dim=1)
                neg = torch.linalg.vector_norm(e[:, 1] - e[:, 2], dim=1)
                row[5] = (pos - neg + margin > 0).float().mean()
            rows.append(row)
    return torch.stack(rows)


def as_columns(mean_stats: Tensor | None) -> dict:
    """{"diag_b{k}_{field}": value} for metrics.csv, from [blocks, 6] epoch means (host floats)."""
    if mean_stats is None:
        return {}
    values = mean_stats.tolist()
    return {f"diag_b{k}_{name}": round(v, 4) for k, row in enumerate(values) for name, v in zip(FIELDS, row)}


def summary(mean_stats: Tensor | None) -> str:
    """A compact progress-line text: per block fg/dfg/bg fractions, and the warnings that matter."""
    if mean_stats is None:
        return ""
    parts = []
    warn = []
    for k, row in enumerate(mean_stats.tolist()):
        fg, dfg, bg, empty, _, hinge = row
        parts.append(f"b{k} {fg:.2f}/{dfg:.2f}/{bg:.2f}")
        if empty > 0.5:
            warn.append(f"b{k} empty masks on {100 * empty:.0f}% of samples")
        if fg > 0.99 or fg < 0.01:
            warn.append(f"b{k} M_fg {'full' if fg > 0.99 else 'empty'}")
    text = "masks fg/dfg/bg " + ", ".join(parts)
    if warn:
        text += "  WARNING: " + "; ".join(warn)
    return text
