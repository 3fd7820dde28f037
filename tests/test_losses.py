"""L_ca, L_fc and the total objective on small hand-computed cases (answers written out here)."""
import pytest
import torch

from wsol_fast.options import paper_values
from wsol_fast import ops
from wsol_fast.losses import (NORM_EPS, WSOLLoss, contrastive_attention_loss, foreground_consistency_loss,
                              normalize_attention)
from wsol_fast.models import create_model
from wsol_fast.models.outputs import BlockRecord, WSOLOutput
from wsol_fast.models.icl import ICLBlock


def _emb(fg, dfg, bg):
    return torch.tensor([fg, dfg, bg], dtype=torch.float32).transpose(0, 1)     # [B, 3, D]


def test_contrastive_loss_hand_computed():
    # sample 0: ||(3,4) - 0|| = 5, ||(3,4) - 0|| = 5 -> [5 - 5 + 1]_+ = 1
    # sample 1: ||(3,4) - 0|| = 5, ||(3,4) - (3,14)|| = 10 -> [5 - 10 + 1]_+ = 0
    e = _emb(fg=[[0, 0], [0, 0]], dfg=[[3, 4], [3, 4]], bg=[[0, 0], [3, 14]])
    loss = contrastive_attention_loss(e[:, 0], e[:, 1], e[:, 2], margin=1.0)
    assert loss.item() == pytest.approx(0.5)
    # margin 2.5: [0 + 2.5] and [-5 + 2.5]_+ = 0 -> mean 1.25
    assert contrastive_attention_loss(e[:, 0], e[:, 1], e[:, 2], margin=2.5).item() == pytest.approx(1.25)


def test_wsol_loss_sums_contrastive_over_blocks_and_adds_terms():
    e = _emb(fg=[[0, 0], [0, 0]], dfg=[[3, 4], [3, 4]], bg=[[0, 0], [3, 14]])      # L_ca = 0.5 per block
    att = torch.zeros(2, 2, 2)
    blocks = [BlockRecord(att, embeddings=e), BlockRecord(att, embeddings=e)]
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    # CE: sample 0: log(1 + e^-2) = 0.126928; sample 1: log 2 = 0.693147 -> mean 0.410038
    terms = WSOLLoss(lambda_ca=2.0, lambda_fc=1.0)(WSOLOutput(logits, blocks, True, True), labels)
    assert terms["cls"].item() == pytest.approx(0.410038, abs=1e-6)
    assert terms["ca"].item() == pytest.approx(1.0)
    assert terms["fc"].item() == 0.0                 # all-zero maps: both normalise to zero
    assert terms["total"].item() == pytest.approx(0.410038 + 2.0 * 1.0, abs=1e-6)


def test_fc_loss_hand_computed_norms_and_reductions():
    early = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    ref = torch.tensor([[[2.0, 2.0], [2.0, 4.0]]])
    # max: [.25 .5 .75 1] vs [.5 .5 .5 1] -> squares [.0625 0 .0625 0]
    assert foreground_consistency_loss([early, ref], "max", "mean").item() == pytest.approx(0.03125)
    assert foreground_consistency_loss([early, ref], "max", "sum").item() == pytest.approx(0.125)
    # minmax: [0 1/3 2/3 1] vs [0 0 0 1] -> squares [0 1/9 4/9 0]
    assert foreground_consistency_loss([early, ref], "minmax", "mean").item() == pytest.approx(5 / 36)
    assert foreground_consistency_loss([early, ref], "minmax", "sum").item() == pytest.approx(5 / 9)
    # none: differences [-1 0 1 0]
    assert foreground_consistency_loss([early, ref], "none", "mean").item() == pytest.approx(0.5)


def test_fc_loss_negative_map_follows_literal_max_normalisation():
    # max(A) = -1, so A / max(A) = [2 1 4 3] (sign flips, literally); ref: all -1 -> [1 1 1 1]
    early = torch.tensor([[[-2.0, -1.0], [-4.0, -3.0]]])
    ref = torch.full((1, 2, 2), -1.0)
    assert normalize_attention(early, "max").flatten().tolist() == [2.0, 1.0, 4.0, 3.0]
    # squares [1 0 9 4]: mean 3.5, sum 14
    assert foreground_consistency_loss([early, ref], "max", "mean").item() == pytest.approx(3.5)
    assert foreground_consistency_loss([early, ref], "max", "sum").item() == pytest.approx(14.0)
    # minmax of [-2 -1 -4 -3]: min -4, range 3 -> [2/3 1 0 1/3]; constant ref -> zeros
    assert foreground_consistency_loss([early, ref], "minmax", "mean").item() == pytest.approx(
        (4 / 9 + 1 + 0 + 1 / 9) / 4)


def test_normalisation_guards_against_zero_max():
    zeros = torch.zeros(1, 2, 2)
    assert torch.equal(normalize_attention(zeros, "max"), zeros)
    assert torch.equal(normalize_attention(zeros, "minmax"), zeros)
    # |max| below the guard: divided by +-NORM_EPS with the max's own sign
    tiny = torch.tensor([[[-1e-8, -4e-8]]])
    torch.testing.assert_close(normalize_attention(tiny, "max"), tiny / -NORM_EPS)
    # zero early map vs a ones reference: [0 0 0 0] vs [1 1 1 1] -> 1
    assert foreground_consistency_loss([zeros, torch.ones(1, 2, 2)], "max", "mean").item() == 1.0


def test_fc_reference_is_resized_bilinear_to_early_size():
    early = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    ref = torch.tensor([[[5.0]]])            # 1x1 -> constant 2x2 map -> max-normalised ones
    # [.25 .5 .75 1] vs ones: squares [.5625 .25 .0625 0] -> mean .21875
    assert foreground_consistency_loss([early, ref], "max", "mean").item() == pytest.approx(0.21875)
    # a 2x2 reference upsampled to 4x4 (align_corners=False): row 0 of [[0, 4], [0, 4]] is [0 1 3 4]
    early4 = torch.ones(1, 4, 4)
    ref2 = torch.tensor([[[0.0, 4.0], [0.0, 4.0]]])
    # none: early 1 vs columns [0 1 3 4] -> squares [1 0 4 9] per row -> mean 3.5
    assert foreground_consistency_loss([early4, ref2], "none", "mean").item() == pytest.approx(3.5)


def test_fc_gradient_never_reaches_the_reference():
    early = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    middle = torch.tensor([[[0.5, 2.0], [1.0, 4.0]]], requires_grad=True)
    ref = torch.tensor([[[2.0, 2.0], [2.0, 4.0]]], requires_grad=True)
    foreground_consistency_loss([early, middle, ref], "max", "mean").backward()
    assert ref.grad is None
    assert early.grad.abs().max() > 0 and middle.grad.abs().max() > 0


def test_fc_gradient_never_reaches_the_reference_block_of_a_model():
    # drop_rate 0: at random init A is near constant, so M_dfg may be empty and a drawn drop would zero
    # the whole feature map (and every gradient through it); the importance branch keeps the path alive.
    model = create_model("vgg16", num_classes=3, method="icl", impl="reference", drop_rate=0.0).train()
    out = model(torch.randn(2, 3, 64, 64))
    fc = WSOLLoss(lambda_ca=0.0)(out, torch.tensor([0, 1]))["fc"]
    assert fc.item() > 0
    model.zero_grad(set_to_none=True)
    fc.backward()
    first, second, last = model.attention_blocks
    for conv in (last.conv_f, last.conv_g, last.conv_z):
        assert conv.weight.grad is None and conv.bias.grad is None
    for block in (first, second):
        assert block.conv_f.weight.grad.abs().max() > 0
        assert block.conv_z.weight.grad.abs().max() > 0


def test_empty_fg_and_bg_masks_give_zero_vectors_and_finite_losses():
    torch.manual_seed(3)
    block = ICLBlock(4, drop_rate=0.5, gamma_fg=0.7, gamma_bg=1.2, embed_dim=3, **paper_values()).train()
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    # sample 0: A = +1 everywhere -> fg = [A > 1.2] and dfg empty; sample 1: A = -1 -> bg = [A < -1.2] empty
    attention = torch.stack([torch.ones(9), -torch.ones(9)])
    pooled, counts, _ = ops.masked_gap(x.flatten(2), attention, 0.7, 1.2, impl="reference")
    assert counts.tolist() == [[0, 0, 9], [9, 9, 0]]
    assert torch.equal(pooled[0, :2], torch.zeros(2, 4)) and torch.equal(pooled[1, 2], torch.zeros(4))
    e = block.embed(pooled)
    loss = contrastive_attention_loss(e[:, 0], e[:, 1], e[:, 2])
    # sample 0: e_fg = e_dfg = bias -> d_pos = 0; sample 1: fg = dfg -> d_pos = 0 too.
    d_neg = torch.linalg.vector_norm(e[:, 1] - e[:, 2], dim=1)
    torch.testing.assert_close(loss, torch.relu(1 - d_neg).mean())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert torch.isfinite(block.conv_e.weight.grad).all()


def test_disabled_terms_are_zero():
    labels = torch.tensor([0, 1])
    x = torch.randn(2, 3, 64, 64)
    loss_fn = WSOLLoss()
    for method in ("cam", "adl"):
        terms = loss_fn(create_model("vgg16", 3, method=method, impl="reference").train()(x), labels)
        assert terms["ca"].item() == 0.0 and terms["fc"].item() == 0.0
        assert torch.equal(terms["total"], terms["cls"])
    no_ca = loss_fn(create_model("vgg16", 3, use_contrastive=False, impl="reference").train()(x), labels)
    assert no_ca["ca"].item() == 0.0 and no_ca["fc"].item() > 0
    no_fc = loss_fn(create_model("vgg16", 3, use_fc=False, impl="reference").train()(x), labels)
    assert no_fc["fc"].item() == 0.0 and no_fc["ca"].item() > 0
    eval_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert loss_fn(eval_logits, labels)["cls"].item() == pytest.approx(0.693147, abs=1e-6)


def test_losses_are_fp32_for_bf16_inputs_and_match_fp32():
    torch.manual_seed(0)
    e = torch.randn(4, 3, 8)
    maps = [torch.randn(4, 6, 6), torch.randn(4, 3, 3)]
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    as_bf16 = WSOLOutput(logits.bfloat16(), [BlockRecord(m.bfloat16(), e.bfloat16()) for m in maps],
                         True, True)
    as_fp32 = WSOLOutput(logits.bfloat16().float(),
                         [BlockRecord(m.bfloat16().float(), e.bfloat16().float()) for m in maps], True, True)
    got, want = WSOLLoss()(as_bf16, labels), WSOLLoss()(as_fp32, labels)
    for name in got:
        assert got[name].dtype == torch.float32
        # identical values once upcast: the loss does all its arithmetic in fp32
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="fc_norm"):
        WSOLLoss(fc_norm="l2")
    with pytest.raises(ValueError, match="fc_reduction"):
        WSOLLoss(fc_reduction="max")
    with pytest.raises(ValueError, match="two"):
        foreground_consistency_loss([torch.ones(1, 2, 2)])
