"""ResNet50, wsolevaluation's WSOL variant with the large feature map (SPEC 2): layer3 and layer4 run at
stride 1 (no dilation), then global average pooling and fc. Blocks after layer3 block 0, layer4 block 0
and layer4 block 2 (maps 28, 28, 28 at 224; class maps 28x28).

The trunk is torchvision's resnet50 under torchvision's names (the stride sits on conv2 and the
downsample conv in torchvision's Bottleneck, as in wsolevaluation's), so ImageNet weights load by name.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet50 as torchvision_resnet50

from .base import WSOLModel, init_new_conv, linear_class_map

# SPEC 1.4 (paper Table 1).
METHOD_DEFAULTS = {"icl": {"drop_rate": 0.85, "gamma_fg": 0.95, "gamma_bg": 1.2}}


def _set_stride_one(layer: nn.Sequential) -> None:
    first = layer[0]
    first.conv2.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    first.stride = 1


class ResNet50WSOL(WSOLModel):
    backbone_name = "resnet50"
    pretrained_prefixes = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    fast_lr_prefixes = ("layer4.",)       # wsolevaluation: 'layer4.' and 'fc.' train at 10x
    classifier_prefixes = ("fc.",)        # kept from ImageNet weights on ILSVRC (wsolevaluation)

    def __init__(self, num_classes: int, method: str, defaults: dict, options: dict):
        super().__init__(num_classes, method, block_channels=[1024, 2048, 2048], defaults=defaults,
                         options=options)
        trunk = torchvision_resnet50(weights=None)    # torchvision's from-scratch init for the trunk
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2 = trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4
        _set_stride_one(self.layer3)
        _set_stride_one(self.layer4)
        self.fc = nn.Linear(2048, num_classes)
        init_new_conv(self.fc)

    def stage(self, index: int, x: Tensor) -> Tensor:
        if index == 0:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer3[0](self.layer2(self.layer1(x)))
        if index == 1:
            for block in self.layer3[1:]:
                x = block(x)
            return self.layer4[0](x)
        return self.layer4[2](self.layer4[1](x))

    def logits(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3)))

    def class_map(self, features: Tensor, labels: Tensor) -> Tensor:
        return linear_class_map(self.fc.weight, features, labels)


def resnet50(num_classes: int, method: str, defaults: dict, options: dict) -> ResNet50WSOL:
    return ResNet50WSOL(num_classes, method, defaults, options)
