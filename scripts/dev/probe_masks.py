"""Probe: at init, on images with one clear object, what do each block's masks look like?

    python scripts/dev/probe_masks.py [--size 128] [--forms paper relu residual] [--scales 1 inv_sqrt]

For every backbone x attention form x logit scale x mask_norm: per block, the fractions of positions in
M_fg / M_dfg / M_bg, the share of the object's positions inside M_fg and of the background's, and whether
the map is constant (max - min < 1e-3 of |max|). The object is a bright textured square on a dark noisy
background, at a random place, in a batch of 4.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from wsol_fast.models import create_model
from wsol_fast.ops import reference


def object_batch(size: int, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 0.15
    region = torch.zeros(batch, size, size, dtype=torch.bool)
    for b in range(batch):
        side = int(size * (0.3 + 0.2 * torch.rand((), generator=g)))
        x0, y0 = (torch.randint(0, size - side, (2,), generator=g)).tolist()
        tex = 0.6 + 0.4 * torch.rand(3, side, side, generator=g)
        images[b, :, y0:y0 + side, x0:x0 + side] = tex
        region[b, y0:y0 + side, x0:x0 + side] = True
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std, region


def probe(backbone, form, scale, mask_norm, size, seed=0):
    torch.manual_seed(seed)
    model = create_model(backbone, 10, method="icl", attention_form=form, attention_scale=scale,
                         mask_norm=mask_norm)
    model.train()
    for blk in model.attention_blocks:
        blk.drop_rate = 0.0
    images, region = object_batch(size, seed=seed)
    with torch.no_grad():
        out = model(images)
    rows = []
    for k, (rec, blk) in enumerate(zip(out.blocks, model.attention_blocks)):
        a = rec.attention.flatten(1)
        from wsol_fast.models.icl import normalize_for_masks
        m = normalize_for_masks(a, mask_norm)
        fg, dfg, bg = reference.attention_masks(m, blk.gamma_fg, blk.gamma_bg)
        h, w = rec.attention.shape[-2:]
        obj = F.interpolate(region[:, None].float(), size=(h, w), mode="area")[:, 0].flatten(1) > 0.5
        cover_obj = ((fg & obj).sum(1) / obj.sum(1).clamp_min(1)).mean().item()
        cover_bg = ((fg & ~obj).sum(1) / (~obj).sum(1).clamp_min(1)).mean().item()
        const = ((a.amax(1) - a.amin(1)) < 1e-3 * a.abs().amax(1).clamp_min(1e-12)).float().mean().item()
        rows.append(dict(block=k, fg=fg.float().mean().item(), dfg=dfg.float().mean().item(),
                         bg=bg.float().mean().item(), dfg_empty=(dfg.sum(1) == 0).float().mean().item(),
                         obj_in_fg=cover_obj, bg_in_fg=cover_bg, constant=const,
                         amean=a.mean().item(), amax=a.amax(1).mean().item()))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--backbones", nargs="+", default=["vgg16", "inceptionv3", "resnet50"])
    p.add_argument("--forms", nargs="+", default=["paper", "relu", "residual"])
    p.add_argument("--scales", nargs="+", default=["1", "inv_sqrt"])
    p.add_argument("--mask-norms", nargs="+", default=["none", "minmax"])
    a = p.parse_args()
    print("backbone form scale mask_norm | block: fg dfg bg dfg_empty obj_in_fg bg_in_fg constant mean(A) max(A)")
    for bb, form, scale, mn in itertools.product(a.backbones, a.forms, a.scales, a.mask_norms):
        sc = scale if scale == "inv_sqrt" else float(scale)
        for r in probe(bb, form, sc, mn, a.size):
            print(f"{bb:11s} {form:8s} {scale:8s} {mn:6s} | {r['block']}: {r['fg']:.2f} {r['dfg']:.2f} "
                  f"{r['bg']:.2f} {r['dfg_empty']:.2f} {r['obj_in_fg']:.2f} {r['bg_in_fg']:.2f} "
                  f"{r['constant']:.2f} {r['amean']:+.4f} {r['amax']:+.4f}", flush=True)


if __name__ == "__main__":
    main()
