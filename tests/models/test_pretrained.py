"""Loading torchvision ImageNet state dicts: every backbone weight arrives, a wrong architecture is a clear
error, and pretrained=True reads torchvision's hub cache file or names where it must be."""
import os

import pytest
import torch
import torchvision

from wsol_fast.models import PretrainedMismatchError, create_model
from wsol_fast.models.pretrained import TORCHVISION_FILES, load_pretrained


def _torchvision_net(backbone: str) -> torch.nn.Module:
    if backbone == "vgg16":
        return torchvision.models.vgg16(weights=None)
    if backbone == "inceptionv3":
        # The ImageNet file holds AuxLogits too; init_weights=False skips a slow truncated-normal init.
        return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    return torchvision.models.resnet50(weights=None)


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """A torchvision state dict per backbone on disk, with batch-norm buffers made non-trivial so a
    buffer that failed to load would show."""
    folder = tmp_path_factory.mktemp("torchvision")
    files = {}
    for backbone in ("vgg16", "inceptionv3", "resnet50"):
        state = _torchvision_net(backbone).state_dict()
        gen = torch.Generator().manual_seed(7)
        for key, value in state.items():
            if key.endswith(("running_mean", "running_var")):
                state[key] = torch.rand(value.shape, generator=gen) + 0.5
        files[backbone] = str(folder / f"{backbone}.pth")
        torch.save(state, files[backbone])
        del state
    return files


# Checkpoint key prefixes our WSOL variants drop (docs/spec.md §2): the classifiers, Mixed_7*, AuxLogits.
DROPPED = {"vgg16": ("classifier.",), "inceptionv3": ("Mixed_7", "AuxLogits.", "fc."), "resnet50": ("fc.",)}


@pytest.mark.parametrize("backbone", ["vgg16", "inceptionv3", "resnet50"])
def test_every_backbone_weight_arrives(backbone, torchvision_files):
    source = torch.load(torchvision_files[backbone], weights_only=True)
    model = create_model(backbone, num_classes=7, method="icl", pretrained=torchvision_files[backbone])
    ours = model.state_dict()
    kept = [k for k in source if not k.startswith(DROPPED[backbone])]
    assert kept and all(k in ours for k in kept), "a torchvision backbone key has no home in our model"
    for key in kept:
        assert torch.equal(ours[key], source[key]), f"{key} did not load"
    report = model.pretrained_report
    assert sorted(report.loaded) == sorted(kept)
    assert sorted(report.unexpected) == sorted(k for k in source if k.startswith(DROPPED[backbone]))
    assert all(not model.is_pretrained_key(k) for k in report.missing)      # only new layers left at init
    assert any(k.startswith("attention_blocks.") for k in report.missing)
    assert model.config["pretrained"] == torchvision_files[backbone]


def test_loaded_model_still_gives_the_wsol_feature_maps(torchvision_files):
    model = create_model("resnet50", num_classes=3, method="cam", pretrained=torchvision_files["resnet50"])
    with torch.no_grad():
        assert model.eval().cam(torch.randn(1, 3, 64, 64), torch.tensor([0])).shape == (1, 8, 8)


def test_another_architecture_is_a_clear_error(torchvision_files):
    message = r"(?s)not a torchvision vgg16 checkpoint.*missing features\.0\.weight"
    with pytest.raises(PretrainedMismatchError, match=message):
        create_model("vgg16", num_classes=3, pretrained=torchvision_files["resnet50"])
    with pytest.raises(PretrainedMismatchError, match="resnet50"):
        create_model("resnet50", num_classes=3, pretrained=torchvision_files["inceptionv3"])


def test_a_mismatched_shape_is_a_clear_error(torchvision_files, tmp_path):
    state = torch.load(torchvision_files["vgg16"], weights_only=True)
    state["features.28.weight"] = torch.zeros(512, 256, 3, 3)
    path = str(tmp_path / "bad.pth")
    torch.save(state, path)
    model = create_model("vgg16", num_classes=3, method="cam")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedMismatchError, match=r"features\.28\.weight: file \(512, 256, 3, 3\)"):
        load_pretrained(model, path)
    # nothing was half loaded
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_wrapped_and_data_parallel_checkpoints_load(torchvision_files, tmp_path):
    state = torch.load(torchvision_files["vgg16"], weights_only=True)
    path = str(tmp_path / "wrapped.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = create_model("vgg16", num_classes=3, method="cam", pretrained=path)
    assert torch.equal(model.features[0].weight, state["features.0.weight"])


def test_pretrained_true_reads_the_hub_cache_or_names_the_path(torchvision_files, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = os.path.join(str(tmp_path), "checkpoints", "resnet50-0676ba61.pth")
    with pytest.raises(FileNotFoundError) as info:
        create_model("resnet50", num_classes=3, method="cam", pretrained=True)
    assert expected in str(info.value) and "resnet50-0676ba61.pth" in str(info.value)

    os.makedirs(os.path.dirname(expected))
    os.symlink(torchvision_files["resnet50"], expected)
    model = create_model("resnet50", num_classes=3, method="cam", pretrained=True)
    assert model.pretrained_report.path == expected
    source = torch.load(torchvision_files["resnet50"], weights_only=True)
    assert torch.equal(model.layer4[2].conv3.weight, source["layer4.2.conv3.weight"])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("vgg16", num_classes=3, pretrained=str(tmp_path / "nope.pth"))


def test_torchvision_file_names_match_torchvision():
    urls = {"vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1.url,
            "inceptionv3": torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url,
            "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url}
    for backbone, url in urls.items():
        assert TORCHVISION_FILES[backbone][0] == url.rsplit("/", 1)[1]
