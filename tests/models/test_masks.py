"""The masks of Eq. 1-2 mean what the paper intends (issue: attention whose masks mean something).

A hand-set block on a feature map with a known object region, the non-collapse of VGG16's map on post-ReLU
features, and the init check on every block of every backbone: masks neither empty nor full.
"""
import pytest
import torch
import torch.nn.functional as F

from wsol_fast.options import paper_values
from wsol_fast.models import create_model
from wsol_fast.models.icl import ICLBlock, normalize_for_masks, resolve_scale
from wsol_fast.ops import reference


def _object_features(b=2, c=16, h=12, w=12):
    """Post-ReLU-like features: low noise everywhere, an object region (rows 3..8, cols 2..7) whose
    activation rises towards a peak at (5, 4). Returns x [B, C, H, W] and the region mask [H, W]."""
    g = torch.Generator().manual_seed(0)
    x = 0.05 * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    region = torch.zeros(h, w, dtype=torch.bool)
    region[3:9, 2:8] = True
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    bump = torch.exp(-((yy - 5) ** 2 + (xx - 4) ** 2) / 8.0).double()
    x = x + (1.0 + 2.0 * bump) * region * (0.8 + 0.4 * torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64))
    return x, region


def test_hand_set_block_masks_cover_object_exclude_peak_and_split_background():
    """Residual form with the non-local term zeroed (z = 0): A is the channel mean, which favours the
    object. M_fg must be the object, M_dfg the object minus its peak, M_bg everything else."""
    x, region = _object_features()
    block = ICLBlock(16, drop_rate=0.0, gamma_fg=0.8, gamma_bg=1.2, attention_form="residual",
                     mask_norm="minmax", attention_scale="inv_sqrt").double().train()
    with torch.no_grad():
        block.conv_z.weight.zero_()
        block.conv_z.bias.zero_()
    _, rec = block(x)
    a = rec.attention.flatten(1)
    fg, dfg, bg = reference.attention_masks(normalize_for_masks(a, "minmax"), 0.8, 1.2)
    flat = region.flatten()
    peak = 5 * 12 + 4
    for s in range(x.shape[0]):
        assert torch.equal(fg[s], flat), "M_fg is exactly the object region"
        assert torch.equal(bg[s], ~flat), "M_bg is exactly the rest"
        assert not dfg[s, peak], "M_dfg drops the object's peak"
        assert dfg[s].sum() > 0 and bool((dfg[s] & ~flat).sum() == 0), "M_dfg is a non-empty part of the object"
        assert torch.equal(rec.drop_mask[s].flatten(), dfg[s]), "the block drops with that M_dfg"


def test_paper_form_is_signed_and_can_invert_the_thresholds():
    """The literal form's value has a bias: with a negative bias every A_i < 0, so theta_fg = gamma_fg max A
    lies ABOVE the max and M_dfg = M_fg (nothing discriminative is dropped)."""
    x, _ = _object_features()
    block = ICLBlock(16, drop_rate=0.0, gamma_fg=0.8, gamma_bg=1.2, **paper_values()).double().train()
    with torch.no_grad():
        block.conv_z.bias.fill_(-5.0)
    _, rec = block(x)
    a = rec.attention.flatten(1)
    assert bool((a.amax(dim=1) < 0).all())
    fg, dfg, _ = reference.attention_masks(a, 0.8, 1.2)
    assert torch.equal(fg, dfg)


def _post_relu_image(size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(2, 3, size, size, generator=g) * 0.15
    img[:, :, size // 4: size // 4 + size // 3, size // 3: size // 3 + size // 3] += 0.7
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    region = torch.zeros(size, size, dtype=torch.bool)
    region[size // 4: size // 4 + size // 3, size // 3: size // 3 + size // 3] = True
    return (img - mean) / std, region


def _records(model, images):
    model.train()
    for blk in model.attention_blocks:
        blk.drop_rate = 0.0
    with torch.no_grad():
        return model(images).blocks


def test_vgg16_map_collapses_in_the_paper_form_but_not_in_the_default():
    """On post-ReLU VGG16 features at init, softmax(f g^T) with s = 1 puts each row on one key, so the
    paper form's A is constant; the default form keeps the features' spatial contrast on every block."""
    images, _ = _post_relu_image()
    torch.manual_seed(0)
    paper = create_model("vgg16", 4, method="icl", attention_form="paper", attention_scale=1.0, mask_norm="none")
    torch.manual_seed(0)
    default = create_model("vgg16", 4, method="icl")
    spread = lambda a: (a.amax(1) - a.amin(1)) / a.abs().amax(1).clamp_min(1e-12)  # noqa: E731
    paper_spread = [spread(r.attention.flatten(1)) for r in _records(paper, images)]
    default_spread = [spread(r.attention.flatten(1)) for r in _records(default, images)]
    assert any(bool((s < 1e-2).all()) for s in paper_spread), paper_spread
    for s in default_spread:
        assert bool((s > 0.1).all()), default_spread


@pytest.mark.parametrize("backbone", ["vgg16", "inceptionv3", "resnet50"])
def test_default_masks_at_init_are_neither_empty_nor_full(backbone):
    """Every block, every sample: M_fg between 1% and 99% of positions, M_dfg non-empty, and M_fg
    holding a larger share of the object than of the background."""
    images, region = _post_relu_image()
    torch.manual_seed(0)
    model = create_model(backbone, 4, method="icl")
    for rec, blk in zip(_records(model, images), model.attention_blocks):
        a = rec.attention.flatten(1)
        fg, dfg, _ = reference.attention_masks(normalize_for_masks(a, blk.mask_norm), blk.gamma_fg, blk.gamma_bg)
        frac = fg.float().mean(dim=1)
        assert bool(((frac > 0.01) & (frac < 0.99)).all()), (backbone, frac)
        assert bool((dfg.sum(dim=1) > 0).all()), backbone
        h, w = rec.attention.shape[-2:]
        obj = F.interpolate(region[None, None].float(), size=(h, w), mode="area")[0, 0].flatten() > 0.5
        in_obj = (fg & obj).sum(1) / obj.sum()
        in_bg = (fg & ~obj).sum(1) / (~obj).sum()
        assert bool((in_obj > in_bg).all()), (backbone, in_obj, in_bg)


def test_options_are_checked_and_scale_resolves():
    assert resolve_scale("inv_sqrt", 64) == pytest.approx(0.125)
    assert resolve_scale(1, 64) == 1.0
    with pytest.raises(ValueError, match="attention_scale"):
        resolve_scale("fast", 64)
    with pytest.raises(ValueError, match="attention_scale"):
        resolve_scale(-1, 64)
    with pytest.raises(ValueError, match="attention_form"):
        ICLBlock(8, 0.5, 0.8, 1.2, attention_form="signed")
    with pytest.raises(ValueError, match="mask_norm"):
        ICLBlock(8, 0.5, 0.8, 1.2, mask_norm="max")
