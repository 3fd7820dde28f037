"""What every WSOL backbone shares: the stage/block loop, CAM extraction, the
split of parameters into pretrained backbone and new layers, and block construction from a config.

A backbone subclass declares its ordered insertion points (`insertion_points`: name -> channels of the
feature map there, in network order) and the default ones (`default_blocks`: the paper's three), and provides
`segment(i, x)` (the layers from point i - 1, or the input, up to point i; i = len(points): what follows
the last point, often nothing), an optional `head` after the trunk, `logits(features)` and
`class_map(features, labels)`. An attention block sits at each chosen point (`--icl-blocks`), the last one
being L_fc's reference. The blocks live in their own `attention_blocks` ModuleList, never inside the
torchvision modules, so the backbone's parameter names stay torchvision's and pretrained weights load by
name, wherever the blocks sit.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .. import options as _options
# The options each method accepts and their defaults: wsol_fast/options.py's table, defined once there.
from ..options import ALL_OPTIONS, BLOCK_OPTIONS, METHOD_OPTIONS, METHODS
from .outputs import BlockRecord, WSOLOutput


def resolve_config(method: str, backbone: str, backbone_defaults: dict, overrides: dict) -> tuple[dict, dict]:
    """(defaults, resolved) block options for `method` on `backbone`: the option table's (options.py), with a
    registered backbone's own `backbone_defaults` (method -> {option: value}) on top. None-valued overrides
    are dropped (timm style) so CLI defaults stay model defaults; unknown keys are an error naming them."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    unknown = sorted(set(overrides) - set(ALL_OPTIONS))
    if unknown:
        raise TypeError(f"unknown model option(s) {unknown}; known: {list(ALL_OPTIONS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    ignored = sorted(set(overrides) - set(METHOD_OPTIONS[method]))
    if ignored:
        warnings.warn(f"model option(s) {ignored} do not apply to method {method!r} and are ignored",
                      stacklevel=3)
    defaults = _options.defaults(method, backbone)
    defaults.update({k: v for k, v in backbone_defaults.get(method, {}).items()})
    resolved = dict(defaults)
    resolved.update({k: v for k, v in overrides.items() if k in METHOD_OPTIONS[method]})
    if "drop_rate" in resolved:
        _options.check("drop_rate", resolved["drop_rate"])
    return defaults, resolved


def resolve_block_points(model_cls, blocks) -> list[str]:
    """The insertion points of `blocks` (None: the backbone's default) in network order; an unknown or
    repeated name, or an empty list, is an error naming the valid points (the --icl-blocks flag)."""
    valid = list(model_cls.insertion_points)
    if blocks is None:
        return list(model_cls.default_blocks)
    if isinstance(blocks, str):
        blocks = [blocks]
    blocks = [str(b) for b in blocks]
    if not blocks:
        raise ValueError(f"--icl-blocks needs at least one insertion point; {model_cls.backbone_name}'s: "
                         f"{', '.join(valid)}")
    unknown = [b for b in blocks if b not in model_cls.insertion_points]
    if unknown:
        raise ValueError(f"--icl-blocks: unknown insertion point(s) {', '.join(unknown)} for "
                         f"{model_cls.backbone_name}; valid: {', '.join(valid)}")
    repeated = sorted({b for b in blocks if blocks.count(b) > 1})
    if repeated:
        raise ValueError(f"--icl-blocks: insertion point(s) {', '.join(repeated)} given more than once")
    return sorted(blocks, key=valid.index)


def check_fc_points(points: list[str], method: str, use_fc) -> None:
    """ICL with L_fc on needs two blocks or more (the last is the reference): else a ValueError naming the
    flags that fix it. use_fc None counts as on (the default)."""
    if method == "icl" and use_fc is not False and len(points) < 2:
        raise ValueError(f"--icl-blocks {' '.join(points)}: the foreground consistency loss (L_fc) needs at "
                         "least two blocks (the last one is its reference); give two or more points, or "
                         "disable L_fc with --no-fc (use_fc=False)")


def build_attention_blocks(method: str, channels: list[int], options: dict) -> nn.ModuleList:
    """One block per insertion point: none for CAM, ADL blocks, or ICL blocks, configured by the resolved options."""
    # Imported on use, not for a cycle (the blocks import only .outputs): icl.py loads wsol_fast.ops (the
    # C++ library, Triton), which a CAM model or a plain `import wsol_fast.models` does not need.
    from .adl import ADLBlock
    from .icl import ICLBlock

    if method == "cam":
        return nn.ModuleList()
    kwargs = {k: options[k] for k in BLOCK_OPTIONS[method]}
    if method == "adl":
        return nn.ModuleList(ADLBlock(**kwargs) for _ in channels)
    return nn.ModuleList(ICLBlock(c, **kwargs) for c in channels)


class WSOLModel(nn.Module):
    """Backbone + attention blocks + class-map head. Train mode: `model(x)` -> WSOLOutput; eval mode:
    `model(x)` -> logits (the blocks are the identity). `model.cam(x, labels)` -> [B, h, w] class maps."""

    backbone_name: str = ""
    # State-dict prefixes of the modules that come from the torchvision network (pretrained weights).
    pretrained_prefixes: tuple[str, ...] = ()
    # Pretrained modules that nevertheless train at the new layers' lr (wsolevaluation's optimizer groups:
    # for ResNet50 it puts every parameter whose name holds 'layer4.' or 'fc.' in the 10x group).
    fast_lr_prefixes: tuple[str, ...] = ()
    # The torchvision classifier, loaded from ImageNet weights only when the task is ImageNet itself.
    classifier_prefixes: tuple[str, ...] = ()

    # Where attention blocks may sit, in network order: point name -> channels of the feature map there.
    insertion_points: dict[str, int] = {}
    # The points used when none are given (the paper's three); the last is L_fc's reference.
    default_blocks: tuple[str, ...] = ()

    def __init__(self, num_classes: int, method: str, defaults: dict, options: dict,
                 blocks: list[str] | tuple[str, ...] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.method = method
        points = resolve_block_points(type(self), blocks)
        check_fc_points(points, method, options.get("use_fc"))
        self.block_points = points
        names = list(self.insertion_points)
        # segment index after which block k runs -> k
        self._block_after = {names.index(name): k for k, name in enumerate(points)}
        self.default_config = {"backbone": self.backbone_name, "num_classes": num_classes, "method": method,
                               **defaults, "icl_blocks": list(self.default_blocks)}
        self.config = {"backbone": self.backbone_name, "num_classes": num_classes, "method": method,
                       **options, "icl_blocks": list(points)}
        self.attention_blocks = build_attention_blocks(method, [self.insertion_points[n] for n in points],
                                                       options)
        # False: training forwards bypass the blocks (identities, no records: the loss is the CE term
        # alone), as the trainer's block warm-up epochs do. Not saved in the state dict.
        self.blocks_enabled = True

    # --- what a backbone provides ---------------------------------------------------------------
    def segment(self, index: int, x: Tensor) -> Tensor:
        """The layers between insertion point index - 1 (the input for 0) and point `index`; index
        len(insertion_points): the rest of the trunk after the last point (before `head`)."""
        raise NotImplementedError

    def head(self, x: Tensor) -> Tensor:
        """Layers between the last block and the class-map layer (e.g. VGG's conv6)."""
        return x

    def logits(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def class_map(self, features: Tensor, labels: Tensor) -> Tensor:
        """[B, h, w] class activation map of class labels[b] for each sample."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, use_blocks: bool = True) -> tuple[Tensor, list[BlockRecord]]:
        """Features entering the class-map layer, and the block records (training with blocks only)."""
        records: list[BlockRecord] = []
        active = use_blocks and self.training and len(self.attention_blocks) > 0
        for i in range(len(self.insertion_points) + 1):
            x = self.segment(i, x)
            k = self._block_after.get(i)
            if active and k is not None:
                x, record = self.attention_blocks[k](x)
                records.append(record)
        return self.head(x), records

    def forward(self, x: Tensor):
        features, records = self.forward_features(x, use_blocks=self.blocks_enabled)
        logits = self.logits(features)
        if not self.training:
            return logits
        return WSOLOutput(logits=logits, blocks=records,
                          use_contrastive=self.method == "icl" and bool(self.config.get("use_contrastive")),
                          use_fc=self.method == "icl" and bool(self.config.get("use_fc")))

    def cam(self, x: Tensor, labels: Tensor | None = None, return_logits: bool = False):
        """Class activation maps [B, h, w] for `labels` (the predicted class where None).

        The blocks are always bypassed (they are identities at test time); call it in eval mode so that
        batch norm uses its running statistics."""
        features, _ = self.forward_features(x, use_blocks=False)
        logits = self.logits(features)
        if labels is None:
            labels = logits.argmax(dim=1)
        cams = self.class_map(features, labels)
        return (cams, logits) if return_logits else cams

    def is_pretrained_key(self, name: str) -> bool:
        return name.startswith(self.pretrained_prefixes)

    def remap_pretrained_key(self, key: str) -> str:
        """torchvision checkpoint key -> our key. Identity: the blocks live in `attention_blocks`, outside
        the torchvision modules, so no inserted module shifts a torchvision name."""
        return key

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"pretrained": torchvision backbone params, "new": blocks, extra convs, classifier}, so the
        trainer can give new layers 10x the learning rate (wsolevaluation's habit, docs/spec.md §1.4)."""
        groups: dict[str, list[nn.Parameter]] = {"pretrained": [], "new": []}
        for name, p in self.named_parameters():
            slow = self.is_pretrained_key(name) and not name.startswith(self.fast_lr_prefixes)
            groups["pretrained" if slow else "new"].append(p)
        return groups

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name}, method={self.method}, num_classes={self.num_classes}"


def linear_class_map(weight: Tensor, features: Tensor, labels: Tensor) -> Tensor:
    """CAM of a GAP + fc classifier: mean over channels of w[label]_c * F_c (wsolevaluation's form; the
    bias and the 1/C factor do not matter after the per-image min-max normalisation of the metrics)."""
    w = weight[labels].to(features.dtype)                   # [B, C]
    return torch.einsum("bc,bchw->bhw", w, features) / features.shape[1]


def init_like_wsolevaluation(module: nn.Module, init_mode: str) -> None:
    """wsolevaluation's `initialize_weights` (wsol/util.py, lines 44-61) over `module`'s submodules: Conv2d
    weights He (kaiming normal, fan_out, relu) for "he" or xavier uniform for "xavier", biases 0;
    BatchNorm2d weight 1, bias 0; Linear weight normal(0, 0.01), bias 0. Applied to a backbone's new
    layers only (its pretrained layers keep torchvision's / the project's from-scratch init)."""
    if init_mode not in ("he", "xavier"):
        raise ValueError(f"init_mode must be 'he' or 'xavier', got {init_mode!r}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if init_mode == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def init_new_conv(module: nn.Module) -> None:
    """He init for convolutions of new layers; small normal for linear classifiers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
