"""ResNet50, wsolevaluation's WSOL variant with the large feature map: layer3 and layer4 run at
stride 1 (no dilation), then global average pooling and fc. Blocks by default after layer3 block 0, layer4
block 0 and layer4 block 2 (maps 28, 28, 28 at 224; class maps 28x28), wsolevaluation's ADL positions
(`_ADL_POSITION`, wsol/resnet.py); `--icl-blocks` picks others: after any bottleneck block, named as its
module (layer1.0 .. layer4.2).

The trunk is torchvision's resnet50 under torchvision's names (the stride sits on conv2 and the
downsample conv in torchvision's Bottleneck, as in wsolevaluation's), so ImageNet weights load by name.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet50 as torchvision_resnet50

from .base import WSOLModel, init_like_wsolevaluation, linear_class_map

# After each bottleneck block of torchvision's resnet50 (blocks per layer 3, 4, 6, 3): name -> channels.
_LAYERS = (("layer1", 3, 256), ("layer2", 4, 512), ("layer3", 6, 1024), ("layer4", 3, 2048))
INSERTION_POINTS = {f"{layer}.{i}": channels for layer, n, channels in _LAYERS for i in range(n)}
DEFAULT_BLOCKS = ("layer3.0", "layer4.0", "layer4.2")
_POINT_BLOCKS = tuple((layer, i) for layer, n, _ in _LAYERS for i in range(n))


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
    insertion_points = INSERTION_POINTS
    default_blocks = DEFAULT_BLOCKS

    def __init__(self, num_classes: int, method: str, defaults: dict, options: dict, blocks=None):
        super().__init__(num_classes, method, defaults=defaults, options=options, blocks=blocks)
        trunk = torchvision_resnet50(weights=None)    # torchvision's from-scratch init for the trunk
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2 = trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4
        _set_stride_one(self.layer3)
        _set_stride_one(self.layer4)
        self.fc = nn.Linear(2048, num_classes)
        # The new layer as wsolevaluation initialises it (wsol/resnet.py lines 364-366, ResNetAdl, and 87-89,
        # ResNetCam: initialize_weights(..., init_mode='xavier'), whose Linear rule is normal(0, 0.01), bias 0).
        init_like_wsolevaluation(self.fc, "xavier")

    def segment(self, index: int, x: Tensor) -> Tensor:
        if index >= len(_POINT_BLOCKS):
            return x
        if index == 0:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer, i = _POINT_BLOCKS[index]
        return getattr(self, layer)[i](x)

    def logits(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3)))

    def class_map(self, features: Tensor, labels: Tensor) -> Tensor:
        return linear_class_map(self.fc.weight, features, labels)


def resnet50(num_classes: int, method: str, defaults: dict, options: dict, blocks=None) -> ResNet50WSOL:
    return ResNet50WSOL(num_classes, method, defaults, options, blocks=blocks)
