"""InceptionV3, wsolevaluation's WSOL variant with the large feature map.

Changes to torchvision's Inception3: Conv2d_1a_3x3 gets padding 1; the stem's max pools use padding 1 and
ceil_mode (wsolevaluation's, which keeps 28x28 at 224 input); Mixed_6a runs at stride 1 (its two stride-2
convs get stride 1 / padding 1, its max pool stride 1 / padding 1); Mixed_7*, AuxLogits and fc are gone.
Head: SPG_A3_1b (768 -> 1024, 3x3) + ReLU, SPG_A3_2b (1024 -> 1024, 3x3) + ReLU, SPG_A4 (1x1 -> classes),
GAP. Blocks by default after Mixed_5d, Mixed_6e and SPG_A3_2b (maps 28, 28, 28 at 224; class maps 28x28),
wsolevaluation's ADL positions (ADL_5d, ADL_6e, ADL_A3_2b in wsol/inception.py); `--icl-blocks` picks others:
after any Mixed_* block or either head conv (INSERTION_POINTS).

The modules are torchvision's own classes under torchvision's names, so ImageNet weights load by name.
wsolevaluation's CAM variant also applies dropout(0.5) inside the head; its ADL variant, which ICL builds
on, does not, and neither do we.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC

from .base import WSOLModel, init_like_wsolevaluation

# After each Mixed_* block and each head conv (+ ReLU): name -> channels, in network order.
INSERTION_POINTS = {"Mixed_5b": 256, "Mixed_5c": 288, "Mixed_5d": 288, "Mixed_6a": 768, "Mixed_6b": 768,
                    "Mixed_6c": 768, "Mixed_6d": 768, "Mixed_6e": 768, "SPG_A3_1b": 1024, "SPG_A3_2b": 1024}
DEFAULT_BLOCKS = ("Mixed_5d", "Mixed_6e", "SPG_A3_2b")
_POINT_NAMES = tuple(INSERTION_POINTS)


class InceptionBStride1(InceptionB):
    """torchvision's InceptionB (Mixed_6a) at stride 1, padding 1: the spatial size is kept."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        for conv_block in (self.branch3x3, self.branch3x3dbl_3):
            conv_block.conv.stride = (1, 1)
            conv_block.conv.padding = (1, 1)

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return [branch3x3, branch3x3dbl, branch_pool]


class InceptionV3WSOL(WSOLModel):
    backbone_name = "inceptionv3"
    pretrained_prefixes = ("Conv2d_", "Mixed_")
    insertion_points = INSERTION_POINTS
    default_blocks = DEFAULT_BLOCKS

    def __init__(self, num_classes: int, method: str, defaults: dict, options: dict, blocks=None):
        super().__init__(num_classes, method, defaults=defaults, options=options, blocks=blocks)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionBStride1(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, kernel_size=1)
        self._init_backbone()
        # The new layers as wsolevaluation initialises them: InceptionAdl and InceptionCam call
        # initialize_weights(self.modules(), init_mode='xavier') (wsol/inception.py lines 434-447 and
        # 156-167), i.e. xavier uniform weights and zero biases for SPG_A3_1b, SPG_A3_2b and SPG_A4.
        for head in (self.SPG_A3_1b, self.SPG_A3_2b, self.SPG_A4):
            init_like_wsolevaluation(head, "xavier")

    def _init_backbone(self) -> None:
        # He init (fan_out), as torchvision's ResNet and VGG use, rather than torchvision Inception3's
        # truncated normal of std 0.1 (about 3x He's std for the 3x3 convs of 192+ channels; under batch
        # norm, larger weights take smaller effective SGD steps). It only matters from scratch
        # (pretrained weights replace it): on the built-in set with the SGD profile, one seed each, a CAM
        # model's 300-step loss was 2.09 with He init against 2.22 with the truncated normal.
        for name, m in self.named_modules():
            if name.startswith(self.pretrained_prefixes) and isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def segment(self, index: int, x: Tensor) -> Tensor:
        if index >= len(_POINT_NAMES):
            return x
        if index == 0:
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))
            x = self.maxpool2(x)
        return getattr(self, _POINT_NAMES[index])(x)

    def logits(self, features: Tensor) -> Tensor:
        return self.SPG_A4(features).mean(dim=(2, 3))

    def class_map(self, features: Tensor, labels: Tensor) -> Tensor:
        # Only the wanted classes' 1x1 filters: [B, C] . [B, C, h, w] + bias, the rows of SPG_A4's output.
        w = self.SPG_A4.weight.flatten(1)[labels].to(features.dtype)
        b = self.SPG_A4.bias[labels].to(features.dtype)
        return torch.einsum("bc,bchw->bhw", w, features) + b.view(-1, 1, 1)


def inceptionv3(num_classes: int, method: str, defaults: dict, options: dict, blocks=None) -> InceptionV3WSOL:
    return InceptionV3WSOL(num_classes, method, defaults, options, blocks=blocks)
