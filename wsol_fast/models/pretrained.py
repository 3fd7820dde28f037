"""Loading torchvision ImageNet weights into a WSOL model, never from the network.

`pretrained=PATH` reads a torchvision state dict; `pretrained=True` reads torchvision's own hub cache file
(torch.hub.get_dir()/checkpoints/<torchvision file name>) and, when it is absent, says exactly where to
put it. Every backbone weight that our model keeps from the torchvision network must be in the file with
the right shape, otherwise it is an error (a ResNet file into VGG is never a silent partial load).
Checkpoint keys our model drops (fc, classifier, Mixed_7*, AuxLogits) are reported as unexpected.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import WsolError

logger = logging.getLogger(__name__)

# torchvision's file names (current first, then older releases' names that may sit in a cache) and URLs.
TORCHVISION_FILES = {
    "vgg16": ("vgg16-397923af.pth",),
    "inceptionv3": ("inception_v3_google-0cc3c7bd.pth", "inception_v3_google-1a9a5a14.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
}
DOWNLOAD_BASE = "https://download.pytorch.org/models/"


class PretrainedMismatchError(WsolError, ValueError):
    """The checkpoint does not hold the backbone this model needs (wrong architecture or shapes)."""


@dataclass
class PretrainedReport:
    path: str
    loaded: list[str] = field(default_factory=list)       # our keys filled from the file
    missing: list[str] = field(default_factory=list)      # our keys left at init (new layers)
    unexpected: list[str] = field(default_factory=list)   # file keys we do not use

    def summary(self) -> str:
        return (f"pretrained {self.path}: {len(self.loaded)} tensors loaded, {len(self.missing)} new "
                f"(kept at init), {len(self.unexpected)} checkpoint tensors unused")


def hub_checkpoint_path(backbone: str) -> str:
    """The torchvision cache file for `backbone`: the first existing name, else the current name."""
    if backbone not in TORCHVISION_FILES:
        raise ValueError(f"no torchvision weights known for backbone {backbone!r}; "
                         f"known: {sorted(TORCHVISION_FILES)}")
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    for name in TORCHVISION_FILES[backbone]:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return os.path.join(folder, TORCHVISION_FILES[backbone][0])


def resolve_checkpoint(backbone: str, pretrained) -> str:
    """PATH as given, or for `True` the hub cache file, which must exist (no download is ever tried)."""
    if pretrained is True:
        path = hub_checkpoint_path(backbone)
        if not os.path.isfile(path):
            name = TORCHVISION_FILES[backbone][0]
            raise FileNotFoundError(
                f"pretrained=True needs torchvision's ImageNet weights for {backbone} at {path} "
                f"(download {DOWNLOAD_BASE}{name} elsewhere and copy it there, or pass pretrained=PATH); "
                f"this package never downloads")
        return path
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    return path


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from `path` (weights_only load); unwraps {"state_dict"|"model": ...} and "module."."""
    from ..files import load_failure, torch_load

    try:
        obj = torch_load(path)
    except Exception as exc:   # truncated, random bytes, or a pickle of more than tensors (never run)
        raise PretrainedMismatchError(f"pretrained weights {path} cannot be read (truncated, corrupt or not a "
                                      f"PyTorch state dict): {load_failure(exc)}") from exc
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedMismatchError(f"{path} does not hold a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_pretrained(model: nn.Module, pretrained, keep_classifier: bool = False) -> PretrainedReport:
    """Fill `model`'s torchvision-backbone weights from `pretrained` (PATH or True); returns the report.

    keep_classifier: also load the torchvision classifier (`model.classifier_prefixes`, e.g. ResNet50's fc)
    when its shape fits, as wsolevaluation does for ImageNet (ILSVRC) with CAM and ADL: it drops the
    pretrained fc only for other datasets.

    Raises PretrainedMismatchError listing every backbone key that is missing or has another shape."""
    path = resolve_checkpoint(model.backbone_name, pretrained)
    source = {model.remap_pretrained_key(k): v for k, v in read_state_dict(path).items()}
    target = model.state_dict()
    # num_batches_tracked is absent from older torchvision files and carries no learned value.
    required = [k for k in target if model.is_pretrained_key(k) and not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in source]
    mismatched = [f"{k}: file {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in required if k in source and source[k].shape != target[k].shape]
    if missing or mismatched:
        lines = [f"{path} is not a torchvision {model.backbone_name} checkpoint: "
                 f"{len(missing)} of {len(required)} backbone tensors missing, {len(mismatched)} mismatched"]
        lines += [f"  missing {k}" for k in missing[:10]] + (["  ..."] if len(missing) > 10 else [])
        lines += [f"  shape {m}" for m in mismatched[:10]] + (["  ..."] if len(mismatched) > 10 else [])
        raise PretrainedMismatchError("\n".join(lines))
    to_load = {k: source[k] for k in target if model.is_pretrained_key(k) and k in source}
    if keep_classifier:
        to_load.update({k: source[k] for k in target if k.startswith(getattr(model, "classifier_prefixes", ()))
                        and k in source and source[k].shape == target[k].shape})
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys    # to_load only holds our own keys
    report = PretrainedReport(path=path, loaded=sorted(to_load),
                              missing=sorted(k for k in target if k not in to_load),
                              unexpected=sorted(k for k in source if k not in to_load))
    logger.info(report.summary())
    return report
