"""`--preset paper` is the paper's text: a literal, hand-written float64 implementation of Eq. 1-5 (the stored
N x N softmax P and the C-channel z, nothing folded) against the models the preset builds, for all three
backbones: the attention map, the masks, the pooled features, the embeddings, the block's output, L_ca and
L_fc, values and gradients.

Written from the paper (Ki et al., ACCV 2020, Sec. 3 and 4.1), not from the package:
  Eq. 5  A = E_C[softmax(f(x)^T g(x)) (.) z(x)]                 (no logit scale)
  Eq. 1  M_dfg = [A < theta_fg] and [A > theta_bg]
  Eq. 2  M_fg = [A > theta_bg],  M_bg = [A < theta_bg]
  4.1    theta_fg = gamma_fg * max A,  theta_bg = gamma_bg * mean A   (Table 1's gammas), on A itself
  3.2    z_alpha = masked global average pooling of F (.) M_alpha; e_alpha = 1x1 conv to 128 dims
  Eq. 3  L_ca = E_x[ d(e_dfg, e_fg) - d(e_dfg, e_bg) + m ]_+ ,  m = 1, d the L2 distance
  Eq. 4  L_fc = ||A_i - A_j||_2^2 (a plain sum of squares), A_j the last block's map, no gradient to it
  3.1    the block's output: F (.) M_dfg with probability drop_rate, else F (.) sigmoid(A)
Two things the paper leaves open are the project's stated choices (docs/method.md): an empty mask pools to a
zero vector, and the reference map is resized (bilinear) to an earlier block's size when they differ.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsol_fast.config import PAPER_TABLE1, TrainConfig, resolve
from wsol_fast.losses import WSOLLoss, contrastive_attention_loss
from wsol_fast.models import create_model

BACKBONES = ("vgg16", "inceptionv3", "resnet50")


def preset_config(backbone: str) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.backbone, cfg.model.preset, cfg.data.dataset = backbone, "paper", "builtin"
    return resolve(cfg, "cpu")


def preset_model(backbone: str, seed: int = 0):
    cfg = preset_config(backbone)
    torch.manual_seed(seed)
    model = create_model(backbone, num_classes=4, method=cfg.model.method, **cfg.model.overrides())
    return cfg, model.double().train()


def conv1x1(conv, x):
    """A 1x1 convolution written out: [B, C_in, N] -> [B, C_out, N]."""
    w = conv.weight.flatten(1)
    return torch.einsum("oc,bcn->bon", w, x) + conv.bias.view(1, -1, 1)


def literal_map(block, x):
    """Eq. 5 with the stored P [B, N, N] and the C-channel z [B, C, N]."""
    flat = x.flatten(2)
    f, g, z = conv1x1(block.conv_f, flat), conv1x1(block.conv_g, flat), conv1x1(block.conv_z, flat)
    p = torch.softmax(torch.einsum("bki,bkj->bij", f, g), dim=-1)     # softmax over j, scale 1
    return torch.einsum("bij,bcj->bci", p, z).mean(dim=1)             # E_C of sum_j P_ij z_cj


def literal_block(block, x, gamma_fg, gamma_bg, margin=1.0):
    """Everything one ICL block computes in training, from the paper's equations."""
    a = literal_map(block, x)                                         # [B, N]
    theta_fg = gamma_fg * a.amax(dim=1, keepdim=True)
    theta_bg = gamma_bg * a.mean(dim=1, keepdim=True)
    masks = {"fg": a > theta_bg, "dfg": (a < theta_fg) & (a > theta_bg), "bg": a < theta_bg}
    flat = x.flatten(2)                                               # [B, C, N]
    pooled, embedded = {}, {}
    for name, m in masks.items():
        m = m.to(x.dtype)
        pooled[name] = (flat * m.unsqueeze(1)).sum(-1) / m.sum(-1, keepdim=True).clamp_min(1)
        embedded[name] = pooled[name] @ block.conv_e.weight.flatten(1).T + block.conv_e.bias
    # d = the L2 distance; at d = 0 (two empty masks embed to the same bias) its subgradient 0 is taken
    d_pos = torch.linalg.vector_norm(embedded["dfg"] - embedded["fg"], dim=-1)
    d_neg = torch.linalg.vector_norm(embedded["dfg"] - embedded["bg"], dim=-1)
    l_ca = torch.clamp(d_pos - d_neg + margin, min=0).mean()
    return a, masks, pooled, embedded, l_ca


def literal_fc(maps):
    """Eq. 4 summed over the early blocks, E_x over the batch; maps [B, h, w], the last the reference."""
    ref = maps[-1].detach()
    total = 0.0
    for early in maps[:-1]:
        r = ref if ref.shape == early.shape else F.interpolate(ref.unsqueeze(1), size=early.shape[-2:],
                                                               mode="bilinear", align_corners=False).squeeze(1)
        total = total + (early - r).pow(2).flatten(1).sum(1).mean()
    return total


def test_the_preset_sets_the_papers_values():
    for backbone in BACKBONES:
        cfg = preset_config(backbone)
        m, o = cfg.model, cfg.optim
        assert (m.attention_form, m.mask_norm, m.attention_scale) == ("paper", "none", "1")
        assert (o.fc_norm, o.fc_reduction, o.margin, o.lambda_ca, o.lambda_fc) == ("none", "sum", 1.0, 1.0, 1.0)
        assert (m.drop_rate, m.gamma_fg, m.gamma_bg) == tuple(PAPER_TABLE1[backbone].values())
        # the numbers of Table 1 as printed in the paper
        assert PAPER_TABLE1[backbone] == {"vgg16": dict(drop_rate=0.33, gamma_fg=0.72, gamma_bg=1.2),
                                          "inceptionv3": dict(drop_rate=0.69, gamma_fg=0.86, gamma_bg=1.2),
                                          "resnet50": dict(drop_rate=0.85, gamma_fg=0.95, gamma_bg=1.2)}[backbone]


def object_features(block, gen):
    """[3, C, 6, 6] features whose literal map has all three masks non-empty on every sample: noise plus a
    bump along the direction that Eq. 5's channel mean of z reads (z_bar = w_bar . x + b_bar), so z_bar is a
    bump; and f, g scaled so the softmax rows are neither uniform nor one-hot. At the preset's init on
    unstructured input the literal map is near constant and the masks empty (docs/method.md), which would
    leave the mask and pooling terms of this check untested."""
    c = block.channels
    with torch.no_grad():
        s = 0.6 * (128 / block.conv_f.out_channels) ** 0.25
        block.conv_f.weight.mul_(s)
        block.conv_g.weight.mul_(s)
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    bump = torch.exp(-((yy - 2.5) ** 2 + (xx - 3) ** 2) / 4).double()
    w_bar = block.conv_z.weight.detach().flatten(1).mean(0)
    b_bar = block.conv_z.bias.detach().mean()
    x = torch.randn(3, c, 6, 6, generator=gen, dtype=torch.float64)
    return x + ((bump - b_bar) / w_bar.dot(w_bar)).view(1, 1, 6, 6) * w_bar.view(1, c, 1, 1)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_block_is_eq_1_to_5(backbone):
    """Every ICL block of the preset model: map, masks, pooled features, embeddings, output and L_ca, with
    their gradients."""
    cfg, model = preset_model(backbone)
    gamma_fg, gamma_bg = cfg.model.gamma_fg, cfg.model.gamma_bg
    gen = torch.Generator().manual_seed(1)
    for index, block in enumerate(model.attention_blocks):
        x = object_features(block, gen).requires_grad_(True)
        captured = {}
        embed = block.embed

        def capturing_embed(pooled):   # the pooled features the block projects (identity 2's input)
            captured["pooled"] = pooled
            return embed(pooled)
        block.embed = capturing_embed
        out, record = block(x)
        del block.embed
        a, masks, pooled, embedded, l_ca = literal_block(block, x, gamma_fg, gamma_bg)
        where = f"{backbone} block {index}"

        torch.testing.assert_close(record.attention.flatten(1), a, rtol=1e-10, atol=1e-12, msg=where)
        assert torch.equal(record.drop_mask.flatten(1), masks["dfg"]), where
        counts = torch.stack([masks[k].sum(1) for k in ("fg", "dfg", "bg")], dim=1)
        assert torch.equal(record.counts, counts), where
        assert (counts[:, 0] > 0).all() and (counts[:, 2] > 0).all() and (counts[:, 1] > 0).all(), \
            f"{where}: the check needs non-empty masks, got counts {counts.tolist()}"
        for i, name in enumerate(("fg", "dfg", "bg")):
            torch.testing.assert_close(captured["pooled"][:, i], pooled[name], rtol=1e-10, atol=1e-12, msg=where)
            torch.testing.assert_close(record.embeddings[:, i], embedded[name], rtol=1e-10, atol=1e-12, msg=where)
        model_ca = contrastive_attention_loss(record.e_fg, record.e_dfg, record.e_bg, cfg.optim.margin)
        torch.testing.assert_close(model_ca, l_ca, rtol=1e-10, atol=1e-12, msg=where)
        selected = masks["dfg"].to(x.dtype) if bool(record.dropped.all()) else torch.sigmoid(a)
        assert bool(record.dropped.all()) or not bool(record.dropped.any()), "one draw per batch"
        torch.testing.assert_close(out, x * selected.view_as(x[:, :1]), rtol=1e-10, atol=1e-12, msg=where)

        # Gradients of a loss that reaches every path: L_ca, the map (as L_fc would) and the output.
        weights = torch.randn(a.shape, generator=gen, dtype=torch.float64)
        params = [x, *block.parameters()]
        ours = torch.autograd.grad(model_ca + (record.attention.flatten(1) * weights).sum() + out.sum(), params)
        theirs = torch.autograd.grad(l_ca + (a * weights).sum() + (x * selected.view_as(x[:, :1])).sum(), params)
        for (name, _), g1, g2 in zip([("x", x), *block.named_parameters()], ours, theirs):
            torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11, msg=f"{where}: d/d{name}")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_whole_objective_is_eq_4_and_6(backbone):
    """A training forward of the preset model: L = L_cls + L_ca + L_fc with the literal L_ca (every block)
    and the plain Eq. 4 sum (no normalisation, reference detached), values and gradients of every ICL block."""
    cfg, model = preset_model(backbone, seed=2)
    inputs = {}
    hooks = [blk.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0]))
             for i, blk in enumerate(model.attention_blocks)]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([1, 3])
    output = model(images)
    for h in hooks:
        h.remove()
    o = cfg.optim
    terms = WSOLLoss(lambda_ca=o.lambda_ca, lambda_fc=o.lambda_fc, margin=o.margin, fc_norm=o.fc_norm,
                     fc_reduction=o.fc_reduction)(output, labels)

    maps, l_ca = [], 0.0
    for i, blk in enumerate(model.attention_blocks):
        a, _, _, _, block_ca = literal_block(blk, inputs[i], cfg.model.gamma_fg, cfg.model.gamma_bg)
        maps.append(a.view(inputs[i].shape[0], *inputs[i].shape[-2:]))
        l_ca = l_ca + block_ca
        torch.testing.assert_close(output.blocks[i].attention, maps[-1], rtol=1e-10, atol=1e-12)
    l_fc = literal_fc(maps)
    l_cls = F.cross_entropy(output.logits, labels)
    torch.testing.assert_close(terms["ca"], l_ca, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms["fc"], l_fc, rtol=1e-10, atol=1e-12)
    assert terms["fc"].item() > 0
    torch.testing.assert_close(terms["total"], l_cls + l_ca + l_fc, rtol=1e-10, atol=1e-12)

    # Every block's parameters reach L_ca + L_fc except the reference block's map (checked below).
    last = model.attention_blocks[-1]
    ref_params = [last.conv_f.weight, last.conv_g.weight, last.conv_z.weight]
    params = [p for blk in model.attention_blocks for p in blk.parameters()
              if not any(p is q for q in (*ref_params, last.conv_f.bias, last.conv_g.bias, last.conv_z.bias))]
    ours = torch.autograd.grad(terms["ca"] + terms["fc"], params, retain_graph=True)
    theirs = torch.autograd.grad(l_ca + l_fc, params)
    for p, g1, g2 in zip(params, ours, theirs):
        torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)
    # Eq. 4 sends no gradient to the reference block (paper 3.5): its map's parameters are not in L_fc's graph.
    assert torch.autograd.grad(terms["fc"], ref_params, allow_unused=True) == (None, None, None)
