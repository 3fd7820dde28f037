"""Behaviour of the ICL and ADL blocks: the selected map, masks, switches, eval identity, impl, autocast."""
import pytest
import torch

from wsol_fast.options import paper_values
from wsol_fast.losses import WSOLLoss
from wsol_fast.models.adl import ADLBlock, adl_drop_mask, channel_mean_attention
from wsol_fast.models.outputs import WSOLOutput
from wsol_fast.models.icl import ICLBlock
from wsol_fast.ops import reference

C, H, W = 6, 4, 4


def _block(**kw):
    args = dict(drop_rate=0.5, gamma_fg=0.8, gamma_bg=1.2, impl="reference", **paper_values())
    args.update(kw)
    return ICLBlock(C, **args).train()


def test_eval_mode_is_the_identity_and_computes_nothing():
    block = _block().eval()
    x = torch.randn(2, C, H, W, requires_grad=True)
    out, record = block(x)
    assert out is x and record is None


def test_drop_branch_multiplies_by_the_dropped_foreground_mask():
    block = _block(drop_rate=1.0)
    x = torch.randn(3, C, H, W)
    out, record = block(x)
    attention = block.attention_map(x).detach()
    _, dfg, _ = reference.attention_masks(attention, 0.8, 1.2)
    assert torch.equal(record.drop_mask, dfg.view(3, H, W))
    assert bool(record.dropped.all())
    torch.testing.assert_close(out, x * dfg.view(3, 1, H, W).float(), atol=0, rtol=0)
    torch.testing.assert_close(record.attention, attention.view(3, H, W), atol=0, rtol=0)


def test_importance_branch_multiplies_by_sigmoid_of_attention_with_gradient():
    block = _block(drop_rate=0.0)
    x = torch.randn(2, C, H, W)
    out, record = block(x)
    assert not bool(record.dropped.any())
    expected = x * torch.sigmoid(record.attention).unsqueeze(1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    out.sum().backward()                      # the importance map carries gradient to conv_f / g / z
    for conv in (block.conv_f, block.conv_g, block.conv_z):
        assert conv.weight.grad is not None and conv.weight.grad.abs().max() > 0


def test_record_fields():
    block = _block(embed_dim=16)
    out, record = block(torch.randn(2, C, H, W))
    assert record.attention.shape == (2, H, W) and record.attention.requires_grad
    assert record.embeddings.shape == (2, 3, 16)
    assert record.e_fg.shape == record.e_dfg.shape == record.e_bg.shape == (2, 16)
    assert torch.equal(record.e_dfg, record.embeddings[:, 1])
    assert record.counts.dtype == torch.int64 and record.counts.shape == (2, 3)
    # fg = dfg + (positions at or above theta_fg that are also above theta_bg), bg = the rest below theta_bg.
    assert bool((record.counts[:, 0] >= record.counts[:, 1]).all())
    assert bool((record.counts[:, 0] + record.counts[:, 2] <= H * W).all())


def test_without_dfg_mask_drops_with_adl_mask_at_gamma_fg():
    block = _block(drop_rate=1.0, use_dfg_mask=False)
    x = torch.randn(2, C, H, W)
    out, record = block(x)
    attention = record.attention.detach().flatten(1)
    expected_mask = attention < 0.8 * attention.amax(dim=1, keepdim=True)
    assert torch.equal(record.drop_mask.flatten(1), expected_mask)
    torch.testing.assert_close(out, x * expected_mask.view(2, 1, H, W).float(), atol=0, rtol=0)
    assert record.embeddings is not None          # the contrastive branch is independent of the mask


def test_explicit_drop_threshold_without_dfg_mask():
    block = _block(drop_rate=1.0, use_dfg_mask=False, drop_threshold=0.3)
    _, record = block(torch.randn(2, C, H, W))
    a = record.attention.detach().flatten(1)
    assert torch.equal(record.drop_mask.flatten(1), a < 0.3 * a.amax(dim=1, keepdim=True))


def test_without_nonlocal_attention_uses_channel_mean():
    block = _block(nonlocal_attention=False)
    assert not hasattr(block, "conv_f") and not hasattr(block, "conv_z")
    x = torch.randn(2, C, H, W)
    _, record = block(x)
    torch.testing.assert_close(record.attention, x.mean(1), atol=0, rtol=0)
    assert record.embeddings.shape == (2, 3, 128)


def test_without_contrastive_has_no_embedding_layer():
    block = _block(use_contrastive=False)
    assert not hasattr(block, "conv_e")
    _, record = block(torch.randn(2, C, H, W))
    assert record.embeddings is None and record.e_fg is None
    assert record.counts is not None             # masked_gap still gives M_dfg


def test_inner_channels_ratio_and_default_half():
    assert _block().conv_f.out_channels == C // 2
    assert _block(inner_channels_ratio=0.25).conv_g.out_channels == 1
    assert _block().conv_z.weight.shape == (C, C, 1, 1)          # z keeps C rows as in the paper


def test_one_draw_per_batch_by_default_and_per_sample_option():
    torch.manual_seed(0)
    batch_wide = _block(drop_rate=0.5)
    per_sample = _block(drop_rate=0.5, per_sample_drop=True)
    x = torch.randn(64, C, 2, 2)
    mixed = False
    for _ in range(5):
        _, record = batch_wide(x)
        assert bool(record.dropped.all()) or not bool(record.dropped.any())
        _, record = per_sample(x)
        mixed |= 0 < int(record.dropped.sum()) < 64
    assert mixed, "per-sample draws of p=0.5 over 64 samples were never mixed in 5 tries"


def test_impl_reaches_the_ops():
    block = _block(impl="no-such-impl")
    with pytest.raises(ValueError, match="impl"):
        block(torch.randn(1, C, H, W))


def test_bf16_autocast_keeps_losses_fp32():
    block = _block(drop_rate=0.5)
    x = torch.randn(2, C, H, W, dtype=torch.bfloat16)        # as a conv under autocast would give it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, record = block(x)
        out2, record2 = block(out)
        logits = out2.mean(dim=(2, 3))[:, :3]
        terms = WSOLLoss()(WSOLOutput(logits, [record, record2], True, True), torch.tensor([0, 2]))
    assert out.dtype == torch.bfloat16 and record.embeddings.dtype == torch.bfloat16
    for name, value in terms.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    terms["total"].backward()
    assert block.conv_e.weight.grad.dtype == torch.float32


def test_adl_block_matches_adl_definition():
    x = torch.randn(2, C, H, W)
    block = ADLBlock(drop_rate=1.0, drop_threshold=0.9).train()
    out, record = block(x)
    attention = x.mean(1).flatten(1)
    mask = attention < 0.9 * attention.amax(dim=1, keepdim=True)
    torch.testing.assert_close(record.attention.flatten(1), attention, atol=0, rtol=0)
    assert torch.equal(record.drop_mask.flatten(1), mask)
    torch.testing.assert_close(out, x * mask.view(2, 1, H, W).float(), atol=0, rtol=0)
    assert record.embeddings is None and record.counts is None

    block = ADLBlock(drop_rate=0.0).train()
    out, _ = block(x)
    torch.testing.assert_close(out, x * torch.sigmoid(x.mean(1, keepdim=True)), atol=1e-6, rtol=1e-6)
    assert block.eval()(x) == (x, None)


def test_adl_helpers_and_argument_checks():
    a = torch.tensor([[1.0, 5.0, 4.4, 4.6]])
    assert adl_drop_mask(a, 0.9).tolist() == [[True, False, True, False]]
    assert channel_mean_attention(torch.ones(1, 3, 2, 2) * 2).tolist() == [[2.0] * 4]
    with pytest.raises(ValueError, match="drop_rate"):
        ADLBlock(drop_rate=1.5)
    with pytest.raises(ValueError, match="drop_rate"):
        ICLBlock(C, drop_rate=-0.1, gamma_fg=0.8, gamma_bg=1.2)
