"""Model registry (timm style): `create_model(backbone, num_classes, method, pretrained, **overrides)`.

    model = create_model("resnet50", num_classes=200, method="icl", pretrained=True, use_fc=False)
    model.config            # resolved options (write it to the run folder)
    model.default_config    # the backbone/method defaults before overrides
    model.parameter_groups()  # {"pretrained": [...], "new": [...]} for the 10x lr of new layers

Where the attention blocks sit: `icl_blocks=[...]` names the backbone's insertion points (`insertion_points
(backbone)`; None: the paper's three, `default_blocks(backbone)`); the last one is L_fc's reference.

Methods: "cam" (plain CAM), "adl" (ADL blocks), "icl" (the paper). Overrides set to None are dropped,
so CLI defaults stay model defaults; every option and its default (per backbone where the paper's Table 1
gives one) is defined once in wsol_fast/options.py.

Paper Table 2 rows: Baseline = method="adl"; w/o contrastive = use_contrastive=False; w/o L_fc =
use_fc=False; w/o non-local = nonlocal_attention=False (channel-mean A); w/o M_dfg = use_dfg_mask=False
(ADL's drop mask [A < t * max A], t = drop_threshold, default gamma_fg).
"""
from __future__ import annotations

from typing import Callable

from .base import (ALL_OPTIONS, METHOD_OPTIONS, METHODS, WSOLModel, check_fc_points, resolve_block_points,
                   resolve_config)
from .conv import use_im2col_wgrad
from .outputs import BlockRecord, WSOLOutput
from .pretrained import PretrainedMismatchError, PretrainedReport, load_pretrained

__all__ = ["create_model", "list_models", "register_model", "model_defaults", "WSOLModel", "WSOLOutput",
           "BlockRecord", "METHODS", "METHOD_OPTIONS", "ALL_OPTIONS", "PretrainedMismatchError",
           "PretrainedReport", "load_pretrained", "insertion_points", "default_blocks", "check_icl_blocks"]

_BUILDERS: dict[str, Callable[..., WSOLModel]] = {}
_METHOD_DEFAULTS: dict[str, dict] = {}
_CLASSES: dict[str, type] = {}   # the model class of a built-in backbone (its insertion points)


def register_model(name: str, builder: Callable[..., WSOLModel] | None = None,
                   method_defaults: dict | None = None):
    """Register `builder(num_classes, method, defaults, options, blocks=None) -> WSOLModel` under `name`
    (`blocks`: the insertion points of the attention blocks, None for the backbone's default).
    `method_defaults` maps a method to the backbone's own option defaults, over the option table's
    (wsol_fast/options.py, which holds the built-in backbones' values). Usable as a decorator."""
    def register(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = fn
        _METHOD_DEFAULTS[name] = dict(method_defaults or {})
        return fn
    return register if builder is None else register(builder)


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def model_defaults(backbone: str, method: str = "icl") -> dict:
    """The option defaults of (backbone, method), e.g. for a CLI's help text or a config file."""
    _check_backbone(backbone)
    return resolve_config(method, backbone, _METHOD_DEFAULTS[backbone], {})[0]


def _model_class(backbone: str) -> type:
    _check_backbone(backbone)
    return _CLASSES[backbone]


def insertion_points(backbone: str) -> dict[str, int]:
    """Where `backbone` can hold an attention block, in network order: point name -> channels there."""
    return dict(_model_class(backbone).insertion_points)


def default_blocks(backbone: str) -> list[str]:
    """The insertion points used when none are given (the paper's three; the last is L_fc's reference)."""
    return list(_model_class(backbone).default_blocks)


def check_icl_blocks(backbone: str, blocks, method: str = "icl", use_fc: bool | None = None) -> list[str]:
    """`blocks` (None: the default) checked and in network order, as create_model would place them; raises
    ValueError naming --icl-blocks for an unknown / repeated point, or a single point while L_fc is on."""
    points = resolve_block_points(_model_class(backbone), blocks)
    check_fc_points(points, method, use_fc)
    return points


def _check_backbone(backbone: str) -> None:
    if backbone not in _BUILDERS:
        raise ValueError(f"unknown backbone {backbone!r}; available: {list_models()}")


def create_model(backbone: str, num_classes: int, method: str = "icl", pretrained=None,
                 keep_classifier: bool = False, im2col_wgrad: bool = True, icl_blocks=None,
                 **overrides) -> WSOLModel:
    """Build a WSOL model. `pretrained`: None/False (from scratch), True (torchvision's hub cache file)
    or a path to a torchvision ImageNet state dict. The load report is kept as `model.pretrained_report`.
    keep_classifier: load the ImageNet classifier too where it fits (training on ILSVRC itself).
    im2col_wgrad: the convolutions' weight gradient on the CPU as one GEMM (`models/conv.py`; same
    parameters and numbers up to rounding); False keeps oneDNN's.
    icl_blocks: the insertion points of the attention blocks (None: the backbone's default three)."""
    _check_backbone(backbone)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    defaults, options = resolve_config(method, backbone, _METHOD_DEFAULTS[backbone], overrides)
    extra = {} if icl_blocks is None else {"blocks": icl_blocks}
    model = _BUILDERS[backbone](num_classes=int(num_classes), method=method, defaults=defaults,
                                options=options, **extra)
    model.pretrained_report = None
    if pretrained is not None and pretrained is not False:
        model.pretrained_report = load_pretrained(model, pretrained, keep_classifier=keep_classifier)
    model.config["pretrained"] = model.pretrained_report.path if model.pretrained_report else None
    use_im2col_wgrad(model, im2col_wgrad)
    return model


def _register_builtin() -> None:
    from . import inception, resnet, vgg

    register_model("vgg16", vgg.vgg16)
    register_model("inceptionv3", inception.inceptionv3)
    register_model("resnet50", resnet.resnet50)
    _CLASSES.update(vgg16=vgg.VGG16WSOL, inceptionv3=inception.InceptionV3WSOL, resnet50=resnet.ResNet50WSOL)


_register_builtin()
