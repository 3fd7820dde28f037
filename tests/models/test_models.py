"""Backbones, registry and model outputs: map sizes (docs/spec.md §2), eval identity, CAMs, one train step each."""
import warnings

import pytest
import torch

from wsol_fast.losses import WSOLLoss
from wsol_fast.models import create_model, list_models, model_defaults
from wsol_fast.models.adl import ADLBlock
from wsol_fast.models.outputs import WSOLOutput
from wsol_fast.models.icl import ICLBlock

BACKBONES = ("vgg16", "inceptionv3", "resnet50")
METHODS = ("cam", "adl", "icl")
# The ops' own implementations are tested elsewhere; here the model side runs on the reference ops.
REF = {"impl": "reference"}

# docs/spec.md §2 at 224 input: (block maps, class map)
MAPS_AT_224 = {"vgg16": ([28, 28, 14], 14), "inceptionv3": ([28, 28, 28], 28), "resnet50": ([28, 28, 28], 28)}
# Same nets at 128 input (the CPU default size): VGG /8 /8 /16; the large-map nets /8 throughout.
MAPS_AT_128 = {"vgg16": ([16, 16, 8], 8), "inceptionv3": ([16, 16, 16], 16), "resnet50": ([16, 16, 16], 16)}


def test_registry_lists_the_three_backbones():
    assert list_models() == ["inceptionv3", "resnet50", "vgg16"]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("size,expected", [(224, MAPS_AT_224), (128, MAPS_AT_128)])
def test_block_and_class_map_sizes(backbone, size, expected):
    block_sizes, cam_size = expected[backbone]
    model = create_model(backbone, num_classes=3, method="icl", **REF).train()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        assert [r.attention.shape[-2:] for r in out.blocks] == [(s, s) for s in block_sizes]
        model.eval()
        cams = model.cam(x, torch.tensor([2]))
    assert cams.shape == (1, cam_size, cam_size)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_one_sgd_step(backbone, method):
    model = create_model(backbone, num_classes=5, method=method, **REF).train()
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])
    out = model(x)
    assert isinstance(out, WSOLOutput) and out.logits.shape == (2, 5)
    assert len(out.blocks) == (0 if method == "cam" else 3)
    for record in out.blocks:
        assert record.attention.requires_grad and record.attention.dim() == 3
        if method == "icl":
            assert record.e_fg.shape == (2, 128) and record.counts.shape == (2, 3)
        else:
            assert record.embeddings is None and record.counts is None
    terms = WSOLLoss()(out, labels)
    assert all(torch.isfinite(v) for v in terms.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    terms["total"].backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("fc.") or n.startswith("SPG_A4.") for n in changed)
    assert any(model.is_pretrained_key(n) for n in changed)
    if method == "icl":
        assert any(n.startswith("attention_blocks.") for n in changed)
        if terms["ca"] > 0:      # the hinge can be inactive for every block; then conv_e gets no gradient
            assert any(".conv_e." in n for n in changed)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", ("adl", "icl"))
def test_eval_logits_equal_the_blockless_model_exactly(backbone, method):
    model = create_model(backbone, num_classes=4, method=method, **REF)
    plain = create_model(backbone, num_classes=4, method="cam")
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("attention_blocks.")}
    plain.load_state_dict(shared, strict=True)      # the same weights, every one of them
    calls = []
    for block in model.attention_blocks:
        block.register_forward_hook(lambda *args: calls.append(1))
    model.eval(), plain.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, plain(x))
        assert torch.equal(model.cam(x, torch.tensor([0, 3])), plain.cam(x, torch.tensor([0, 3])))
    assert calls == [], "eval mode must not run the attention blocks"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cam_is_the_class_map_whose_average_is_the_logit(backbone):
    model = create_model(backbone, num_classes=4, method="cam").eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model.double()
    labels = torch.tensor([3, 1])
    with torch.no_grad():
        logits = model(x)
        cams, logits_too = model.cam(x, labels, return_logits=True)
        predicted = model.cam(x)
    assert torch.equal(logits, logits_too)
    picked = logits[torch.arange(2), labels]
    if backbone == "inceptionv3":      # SPG_A4's output row, bias included: its GAP is the logit
        torch.testing.assert_close(cams.mean(dim=(1, 2)), picked, atol=1e-10, rtol=0)
    else:                              # mean_c w_c F_c (wsolevaluation's form): GAP * C + b is the logit
        features, _ = model.forward_features(x, use_blocks=False)
        recovered = cams.mean(dim=(1, 2)) * features.shape[1] + model.fc.bias[labels]
        torch.testing.assert_close(recovered, picked, atol=1e-10, rtol=0)
    assert torch.equal(predicted, model.cam(x, logits.argmax(dim=1)))


def test_per_backbone_defaults_and_none_overrides_are_dropped():
    expected = {"vgg16": (0.33, 0.72, 1.2), "inceptionv3": (0.69, 0.86, 1.2), "resnet50": (0.85, 0.95, 1.2)}
    for backbone, (drop_rate, gamma_fg, gamma_bg) in expected.items():
        model = create_model(backbone, num_classes=3, drop_rate=None, gamma_fg=None, use_fc=None)
        for block in model.attention_blocks:
            assert (block.drop_rate, block.gamma_fg, block.gamma_bg) == (drop_rate, gamma_fg, gamma_bg)
        assert model.config["drop_rate"] == drop_rate and model.config["use_fc"] is True
        assert model_defaults(backbone)["gamma_fg"] == gamma_fg
    adl = create_model("resnet50", num_classes=3, method="adl")
    assert all(isinstance(b, ADLBlock) and (b.drop_rate, b.drop_threshold) == (0.75, 0.9)
               for b in adl.attention_blocks)
    assert len(create_model("vgg16", num_classes=3, method="cam").attention_blocks) == 0


def test_overrides_reach_the_blocks_and_the_config():
    model = create_model("vgg16", num_classes=3, drop_rate=0.5, gamma_fg=0.6, nonlocal_attention=False,
                         use_dfg_mask=False, use_contrastive=False, use_fc=False, per_sample_drop=True,
                         **REF)
    for block in model.attention_blocks:
        assert isinstance(block, ICLBlock)
        assert (block.drop_rate, block.gamma_fg, block.drop_threshold) == (0.5, 0.6, 0.6)
        assert not block.nonlocal_attention and not block.use_dfg_mask and block.per_sample_drop
        assert not hasattr(block, "conv_f") and not hasattr(block, "conv_e")
    assert model.default_config["drop_rate"] == 0.33 and model.config["drop_rate"] == 0.5
    assert model.config["backbone"] == "vgg16" and model.config["method"] == "icl"
    assert model.config["pretrained"] is None
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert not out.use_contrastive and not out.use_fc
    scaled = create_model("vgg16", num_classes=3, attention_scale=0.1, inner_channels_ratio=0.25,
                          embed_dim=32)
    assert scaled.attention_blocks[0].attention_scale == 0.1
    assert scaled.attention_blocks[0].conv_f.out_channels == 64
    assert scaled.attention_blocks[2].conv_e.out_channels == 32


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model("alexnet", num_classes=3)
    with pytest.raises(ValueError, match="method"):
        create_model("vgg16", num_classes=3, method="spg")
    with pytest.raises(TypeError, match="gamma_fgg"):
        create_model("vgg16", num_classes=3, gamma_fgg=0.5)
    with pytest.raises(ValueError, match="drop_rate"):
        create_model("vgg16", num_classes=3, drop_rate=2.0)
    with pytest.warns(UserWarning, match="gamma_fg"):
        create_model("vgg16", num_classes=3, method="adl", gamma_fg=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("vgg16", num_classes=3, method="cam", impl="reference", gamma_fg=None)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_parameter_groups_split_backbone_from_new_layers(backbone):
    model = create_model(backbone, num_classes=3, method="icl")
    groups = model.parameter_groups()
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert not ids["pretrained"] & ids["new"]
    assert ids["pretrained"] | ids["new"] == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    new_roots = {names[i].split(".")[0] for i in ids["new"]}
    expected_new = {"vgg16": {"attention_blocks", "conv6", "fc"},
                    "inceptionv3": {"attention_blocks", "SPG_A3_1b", "SPG_A3_2b", "SPG_A4"},
                    "resnet50": {"attention_blocks", "fc", "layer4"}}[backbone]   # wsolevaluation: layer4 at 10x
    assert new_roots == expected_new
    assert all(model.is_pretrained_key(names[i]) for i in ids["pretrained"])


def test_blocks_disabled_trains_the_plain_classifier():
    """blocks_enabled=False (the trainer's block warm-up): a training forward with no block records,
    whose logits are those of the blockless network."""
    torch.manual_seed(0)
    model = create_model("vgg16", 5, method="icl").train()
    x = torch.randn(2, 3, 64, 64)
    model.blocks_enabled = False
    out = model(x)
    assert out.blocks == []
    torch.manual_seed(0)
    features, records = model.forward_features(x, use_blocks=False)
    assert records == [] and torch.equal(out.logits, model.logits(features))
    model.blocks_enabled = True
    assert len(model(x).blocks) == 3
