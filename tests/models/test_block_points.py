"""Where the attention blocks sit (--icl-blocks): each backbone's ordered insertion points, the forward run as
segments between the chosen points, and the errors of a bad choice.

The reference chains below are written out by hand, module by module, from the networks' definitions (torchvision's
vgg16 `features` indices, resnet50's bottleneck blocks, the Inception3 modules), so they check the segment tables
of the models independently."""
import pytest
import torch
from torch import nn

from wsol_fast.models import check_icl_blocks, create_model, default_blocks, insertion_points

REF = {"impl": "reference"}

# The paper's three per backbone (docs/spec.md §2), and wsolevaluation's ADL positions they follow.
PAPER_BLOCKS = {"vgg16": ["pool3", "conv4_3", "conv5_3"], "resnet50": ["layer3.0", "layer4.0", "layer4.2"],
         "inceptionv3": ["Mixed_5d", "Mixed_6e", "SPG_A3_2b"]}


def _vgg_chain(m):
    # torchvision vgg16 `features`: pools at 4, 9, 16, 23; conv4_3 = 21 (+ ReLU 22); conv5_3 = 28 (+ ReLU 29).
    points = {4: "pool1", 9: "pool2", 16: "pool3", 22: "conv4_3", 23: "pool4", 29: "conv5_3"}
    for i in (4, 9, 16, 23):
        assert isinstance(m.features[i], nn.MaxPool2d)
    for i in (21, 28):
        assert isinstance(m.features[i], nn.Conv2d) and m.features[i].out_channels == 512
    assert len(m.features) == 30
    return [(m.features[i], points.get(i)) for i in range(30)]


def _resnet_chain(m):
    chain = [(m.conv1, None), (m.bn1, None), (m.relu, None), (m.maxpool, None)]
    for layer, n in (("layer1", 3), ("layer2", 4), ("layer3", 6), ("layer4", 3)):
        assert len(getattr(m, layer)) == n
        chain += [(getattr(m, layer)[i], f"{layer}.{i}") for i in range(n)]
    return chain


def _inception_chain(m):
    chain = [(getattr(m, name), None) for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                                                    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2")]
    return chain + [(getattr(m, name), name) for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                                                          "Mixed_6c", "Mixed_6d", "Mixed_6e", "SPG_A3_1b",
                                                          "SPG_A3_2b")]


CHAINS = {"vgg16": _vgg_chain, "resnet50": _resnet_chain, "inceptionv3": _inception_chain}


def _reference(model, chain, x, modulate=False):
    """The trunk module by module; with `modulate`, x * sigmoid(mean_c x) after each point (an ADL block of
    drop_rate 0). Returns the trunk's output and {point: the feature map entering its block}."""
    seen = {}
    for module, point in chain:
        x = module(x)
        if point is not None:
            seen[point] = x
            if modulate:
                x = x * torch.sigmoid(x.mean(dim=1, keepdim=True))
    return model.head(x), seen


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "inceptionv3"])
def test_default_points_are_the_papers_three_and_every_point_is_listed_in_network_order(backbone):
    assert default_blocks(backbone) == PAPER_BLOCKS[backbone]
    chain = CHAINS[backbone](create_model(backbone, num_classes=3, method="cam"))
    assert list(insertion_points(backbone)) == [p for _, p in chain if p is not None]
    model = create_model(backbone, num_classes=3, method="icl", **REF)
    assert model.block_points == PAPER_BLOCKS[backbone] and model.config["icl_blocks"] == PAPER_BLOCKS[backbone]
    assert len(model.attention_blocks) == 3


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "inceptionv3"])
def test_each_block_sees_its_points_feature_map_and_the_trunk_is_unchanged(backbone):
    """ADL blocks of drop rate 0 at every point: block k's attention is the channel mean of the feature map at
    point k of the hand-written chain (earlier blocks' modulation included); its channel count is the declared
    one; in eval mode (blocks off) the features equal the plain chain's."""
    torch.manual_seed(0)
    points = list(insertion_points(backbone))
    model = create_model(backbone, num_classes=3, method="adl", drop_rate=0.0, icl_blocks=points[::-1]).train()
    assert model.block_points == points          # given in any order, kept in network order
    chain = CHAINS[backbone](model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, records = model.forward_features(x)
        expected, seen = _reference(model, chain, x, modulate=True)
        torch.testing.assert_close(features, expected, rtol=0, atol=0)
        assert len(records) == len(points)
        for record, point in zip(records, points):
            torch.testing.assert_close(record.attention, seen[point].mean(dim=1), rtol=0, atol=0)
            assert seen[point].shape[1] == insertion_points(backbone)[point]
        model.eval()
        plain, _ = _reference(model, chain, x)
        torch.testing.assert_close(model.forward_features(x)[0], plain, rtol=0, atol=0)


@pytest.mark.parametrize("backbone,blocks", [("vgg16", ["pool1", "pool4"]), ("resnet50", ["layer1.0", "layer2.3"]),
                                             ("inceptionv3", ["Mixed_5b", "SPG_A3_1b"])])
def test_icl_blocks_take_their_points_channels_and_leave_torchvision_names_alone(backbone, blocks):
    default = create_model(backbone, num_classes=3, method="icl", **REF)
    moved = create_model(backbone, num_classes=3, method="icl", icl_blocks=blocks, **REF)
    assert [b.channels for b in moved.attention_blocks] == [insertion_points(backbone)[p] for p in blocks]
    trunk = [k for k in default.state_dict() if not k.startswith("attention_blocks.")]
    assert [k for k in moved.state_dict() if not k.startswith("attention_blocks.")] == trunk
    assert {k.split(".")[1] for k in moved.state_dict() if k.startswith("attention_blocks.")} == {"0", "1"}
    out = moved.train()(torch.randn(2, 3, 64, 64))
    assert len(out.blocks) == 2 and out.use_fc


def test_a_bad_choice_of_points_is_an_error_naming_the_flag_and_the_valid_points():
    with pytest.raises(ValueError, match=r"--icl-blocks: unknown insertion point\(s\) conv9, layer3.0 for vgg16; "
                                         r"valid: pool1, pool2, pool3, conv4_3, pool4, conv5_3"):
        create_model("vgg16", num_classes=3, icl_blocks=["conv5_3", "conv9", "layer3.0"])
    with pytest.raises(ValueError, match="pool3 given more than once"):
        check_icl_blocks("vgg16", ["pool3", "conv5_3", "pool3"])
    with pytest.raises(ValueError, match="needs at least one insertion point"):
        check_icl_blocks("vgg16", [])
    # One block and L_fc on: L_fc needs a reference and an earlier block.
    with pytest.raises(ValueError, match="L_fc.*needs at least two blocks.*--no-fc"):
        create_model("vgg16", num_classes=3, method="icl", icl_blocks=["conv5_3"])
    with pytest.raises(ValueError, match="--no-fc"):
        check_icl_blocks("resnet50", ["layer4.2"], "icl", None)
    # ... which --no-fc (use_fc=False) allows, as does a method without L_fc.
    assert create_model("vgg16", num_classes=3, method="icl", icl_blocks=["conv5_3"], use_fc=False,
                        **REF).block_points == ["conv5_3"]
    assert check_icl_blocks("vgg16", ["conv5_3"], "adl") == ["conv5_3"]


def test_train_flag_errors_name_the_flag(capsys):
    from wsol_fast.train_args import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--backbone", "resnet50", "--icl-blocks", "Mixed_5d", "layer4.2"])
    assert "--icl-blocks: unknown insertion point(s) Mixed_5d for resnet50; valid: layer1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--backbone", "vgg16", "--icl-blocks", "conv5_3"])
    assert "--no-fc" in capsys.readouterr().err
    cfg = parse_args(["--backbone", "vgg16", "--icl-blocks", "conv5_3", "--no-fc"])
    assert cfg.model.icl_blocks == ["conv5_3"]
    assert parse_args(["--backbone", "vgg16", "--icl-blocks", "conv5_3", "pool1"]).model.icl_blocks == \
        ["pool1", "conv5_3"]
