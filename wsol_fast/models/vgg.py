"""VGG16, wsolevaluation's WSOL variant: torchvision's `features` without pool5, then
conv6 (3x3, 512 -> 1024) + ReLU, global average pooling and fc. Blocks by default after pool3, conv4_3 and
conv5_3 (maps 28, 28, 14 at 224; class maps 14x14); `--icl-blocks` picks others among INSERTION_POINTS.

`features` keeps torchvision's indices 0..29, so torchvision's `features.*` weights load by name.

The paper's Table 3 names ADL's VGG16 positions (wsolevaluation's `configs_dict['adl']['14x14']`, wsol/vgg.py:
blocks 'A' after pool3, after conv4_3 before pool4, and after conv5_3). Its rows map onto these points as
conv_5_3 -> conv5_3, pool_4 -> conv4_3 (ADL's block in front of pool4, at 28 x 28), pool_3 -> pool3,
pool_2 -> pool2, pool_1 -> pool1 (the max-pool outputs). `pool4` (after pool4, 14 x 14) is a point too.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from .base import WSOLModel, init_like_wsolevaluation, init_new_conv, linear_class_map

# Insertion point -> (end index, exclusive, in torchvision's vgg16 `features`; channels there).
# features: conv1_1 0, conv1_2 2, pool1 4 | conv2_x 5-8, pool2 9 | conv3_x 10-15, pool3 16 |
# conv4_x 17-22 (conv4_3 + ReLU end at 22), pool4 23 | conv5_x 24-29 (conv5_3 + ReLU end at 29); 30 (pool5)
# is dropped.
INSERTION_POINTS = {"pool1": (5, 64), "pool2": (10, 128), "pool3": (17, 256), "conv4_3": (23, 512),
                    "pool4": (24, 512), "conv5_3": (30, 512)}
DEFAULT_BLOCKS = ("pool3", "conv4_3", "conv5_3")
# The paper's Table 3 (cumulative, from later to earlier; conv_5_3 is the reference): its label -> our point.
TABLE3_POINTS = (("conv_5_3", "conv5_3"), ("pool_4", "conv4_3"), ("pool_3", "pool3"), ("pool_2", "pool2"),
                 ("pool_1", "pool1"))
_BOUNDS = (0, *(end for end, _ in INSERTION_POINTS.values()))


class VGG16WSOL(WSOLModel):
    backbone_name = "vgg16"
    pretrained_prefixes = ("features.",)
    insertion_points = {name: channels for name, (_, channels) in INSERTION_POINTS.items()}
    default_blocks = DEFAULT_BLOCKS

    def __init__(self, num_classes: int, method: str, defaults: dict, options: dict, blocks=None):
        super().__init__(num_classes, method, defaults=defaults, options=options, blocks=blocks)
        self.features = make_layers(cfgs["D"], batch_norm=False)[:_BOUNDS[-1]]
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu6 = nn.ReLU(inplace=False)
        self.fc = nn.Linear(1024, num_classes)
        init_new_conv(self.features)     # torchvision VGG's own init for convs (He, fan_out)
        # The new layers as wsolevaluation's VggCam initialises them (wsol/vgg.py lines 56-60:
        # initialize_weights(..., init_mode='he'); its ADL variant is the same class).
        init_like_wsolevaluation(self.conv6, "he")
        init_like_wsolevaluation(self.fc, "he")

    def segment(self, index: int, x: Tensor) -> Tensor:
        if index >= len(_BOUNDS) - 1:
            return x
        for i in range(_BOUNDS[index], _BOUNDS[index + 1]):
            x = self.features[i](x)
        return x

    def head(self, x: Tensor) -> Tensor:
        return self.relu6(self.conv6(x))

    def logits(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3)))

    def class_map(self, features: Tensor, labels: Tensor) -> Tensor:
        return linear_class_map(self.fc.weight, features, labels)


def vgg16(num_classes: int, method: str, defaults: dict, options: dict, blocks=None) -> VGG16WSOL:
    return VGG16WSOL(num_classes, method, defaults, options, blocks=blocks)
