"""The two exact identities of docs/spec.md §1.3, proved on the ICL block as built (not on a copy of its maths)."""
import pytest
import torch

from wsol_fast.options import paper_values
from wsol_fast.models.icl import ICLBlock
from wsol_fast.ops import reference


def _literal_attention(block: ICLBlock, x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 5 with the full C-channel z = Conv1x1_z(x), through the reference op."""
    f = block.conv_f(x).flatten(2).transpose(1, 2)
    g = block.conv_g(x).flatten(2).transpose(1, 2)
    z = block.conv_z(x).flatten(2)
    return reference.nonlocal_attention_map_full_z(f, g, z, block.attention_scale)


def _conv_params(block: ICLBlock):
    return {f"{name}.{kind}": getattr(getattr(block, name), kind)
            for name in ("conv_f", "conv_g", "conv_z") for kind in ("weight", "bias")}


# scale 1 is the paper's; 0.37 checks the scale reaches both forms the same way.
@pytest.mark.parametrize("scale", [1.0, 0.37])
# (C, H, W): an even C, an odd C (C' = C // 2 rounds down), a non-square map.
@pytest.mark.parametrize("shape", [(8, 4, 4), (7, 3, 5)])
def test_identity1_zbar_form_equals_full_z_form(shape, scale):
    c, h, w = shape
    block = ICLBlock(c, drop_rate=0.5, gamma_fg=0.7, gamma_bg=1.2, **{**paper_values(), "attention_scale": scale},
                     impl="reference").double()
    x = torch.randn(2, c, h, w, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, h * w, dtype=torch.float64)

    literal = _literal_attention(block, x)
    literal_grads = torch.autograd.grad((literal * upstream).sum(), [x, *_conv_params(block).values()])
    folded = block.attention_map(x)
    folded_grads = torch.autograd.grad((folded * upstream).sum(), [x, *_conv_params(block).values()])

    assert folded.shape == (2, h * w)
    torch.testing.assert_close(folded, literal, atol=1e-10, rtol=0)
    for name, a, b in zip(["x", *_conv_params(block)], folded_grads, literal_grads):
        assert b.abs().max() > 0, f"degenerate case: literal gradient of {name} is zero"
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=f"gradient of {name} differs")


def test_identity2_pool_then_project_equals_project_then_pool():
    torch.manual_seed(1)
    c, h, w = 6, 4, 5
    block = ICLBlock(c, drop_rate=0.5, gamma_fg=0.7, gamma_bg=1.0, embed_dim=5, **paper_values()).double()
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    attention = torch.randn(3, h * w, dtype=torch.float64)
    masks = reference.attention_masks(attention, 0.7, 1.0)            # fg, dfg, bg
    pooled, counts, _ = reference.masked_gap(x.flatten(2), attention, 0.7, 1.0)

    pool_then_project = block.embed(pooled)                             # [B, 3, D]
    projected = block.conv_e(x).flatten(2)                              # Conv1x1_e on every position
    for alpha, mask in enumerate(masks):
        assert bool((mask.sum(1) > 0).all()), "test needs non-empty masks"
        project_then_pool = (projected * mask.unsqueeze(1)).sum(2) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(pool_then_project[:, alpha], project_then_pool, atol=1e-12, rtol=0)
    assert torch.equal(counts, torch.stack([m.sum(1) for m in masks], dim=1))


def test_identity2_empty_mask_gives_the_bias():
    block = ICLBlock(4, drop_rate=0.5, gamma_fg=0.7, gamma_bg=1.2, embed_dim=3, **paper_values()).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    # A constant positive map: theta_bg = 1.2 * c > c, so fg and dfg are empty and bg is everything.
    attention = torch.full((2, 9), 0.5, dtype=torch.float64)
    pooled, counts, _ = reference.masked_gap(x.flatten(2), attention, 0.7, 1.2)
    assert counts.tolist() == [[0, 0, 9], [0, 0, 9]]
    e = block.embed(pooled)
    bias = block.conv_e.bias.detach()
    for alpha in (0, 1):
        assert torch.equal(pooled[:, alpha], torch.zeros_like(pooled[:, alpha]))
        torch.testing.assert_close(e[:, alpha], bias.expand(2, -1), atol=0, rtol=0)
    # The non-empty bg mask is the plain GAP, projected.
    expected_bg = block.conv_e(x).mean(dim=(2, 3))
    torch.testing.assert_close(e[:, 2], expected_bg, atol=1e-12, rtol=0)
