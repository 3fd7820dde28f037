"""VGG16, wsolevaluation's WSOL variant (SPEC 2): torchvision's `features` without pool5, then
conv6 (3x3, 512 -> 1024) + ReLU, global average pooling and fc. Blocks sit after pool3, conv4_3 and conv5_3
(maps 28, 28, 14 at 224; class maps 14x14).

`features` keeps torchvision's indices 0..29, so torchvision's `features.*` weights load by name.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from .base import WSOLModel, init_new_conv, linear_class_map

# SPEC 1.4 (paper Table 1).
METHOD_DEFAULTS = {"icl": {"drop_rate": 0.33, "gamma_fg": 0.72, "gamma_bg": 1.2}}

# Slices of torchvision's vgg16 `features`: [0, 17) ends with pool3, [17, 23) with conv4_3 + ReLU,
# [23, 30) is pool4 .. conv5_3 + ReLU; index 30 (pool5) is dropped.
_STAGE_BOUNDS = ((0, 17), (17, 23), (23, 30))


class VGG16WSOL(WSOLModel):
    backbone_name = "vgg16"
    pretrained_prefixes = ("features.",)

    def __init__(self, num_classes: int, method: str, defaults: dict, options: dict):
        super().__init__(num_classes, method, block_channels=[256, 512, 512], defaults=defaults,
                         options=options)
        self.features = make_layers(cfgs["D"], batch_norm=False)[:_STAGE_BOUNDS[-1][1]]
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu6 = nn.ReLU(inplace=False)
        self.fc = nn.Linear(1024, num_classes)
        init_new_conv(self.features)     # torchvision VGG's own init for convs (He, fan_out)
        init_new_conv(self.conv6)
        init_new_conv(self.fc)

    def stage(self, index: int, x: Tensor) -> Tensor:
        start, stop = _STAGE_BOUNDS[index]
        for i in range(start, stop):
            x = self.features[i](x)
        return x

    def head(self, x: Tensor) -> Tensor:
        return self.relu6(self.conv6(x))

    def logits(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3)))

    def class_map(self, features: Tensor, labels: Tensor) -> Tensor:
        return linear_class_map(self.fc.weight, features, labels)


def vgg16(num_classes: int, method: str, defaults: dict, options: dict) -> VGG16WSOL:
    return VGG16WSOL(num_classes, method, defaults, options)
