"""Model registry (timm style): `create_model(backbone, num_classes, method, pretrained, **overrides)`.

    model = create_model("resnet50", num_classes=200, method="icl", pretrained=True, use_fc=False)
    model.config            # resolved options (write it to the run folder)
    model.default_config    # the backbone/method defaults before overrides
    model.parameter_groups()  # {"pretrained": [...], "new": [...]} for the 10x lr of new layers

Methods: "cam" (plain CAM), "adl" (ADL blocks), "icl" (the paper). Overrides set to None are dropped,
so CLI defaults stay model defaults; per-backbone ICL defaults come from SPEC 1.4.

Paper Table 2 rows: Baseline = method="adl"; w/o contrastive = use_contrastive=False; w/o L_fc =
use_fc=False; w/o non-local = nonlocal_attention=False (channel-mean A); w/o M_dfg = use_dfg_mask=False
(ADL's drop mask [A < t * max A], t = drop_threshold, default gamma_fg).
"""
from __future__ import annotations

from typing import Callable

from .base import ALL_OPTIONS, METHOD_OPTIONS, METHODS, WSOLModel, resolve_config
from .conv import use_im2col_wgrad
from .outputs import BlockRecord, WSOLOutput
from .pretrained import PretrainedMismatchError, PretrainedReport, load_pretrained

__all__ = ["create_model", "list_models", "register_model", "model_defaults", "WSOLModel", "WSOLOutput",
           "BlockRecord", "METHODS", "METHOD_OPTIONS", "ALL_OPTIONS", "PretrainedMismatchError", "PretrainedReport",
           "load_pretrained"]

_BUILDERS: dict[str, Callable[..., WSOLModel]] = {}
_METHOD_DEFAULTS: dict[str, dict] = {}


def register_model(name: str, builder: Callable[..., WSOLModel] | None = None,
                   method_defaults: dict | None = None):
    """Register `builder(num_classes, method, defaults, options) -> WSOLModel` under `name`.
    `method_defaults` maps a method to its per-backbone option defaults. Usable as a decorator."""
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
    return resolve_config(method, _METHOD_DEFAULTS[backbone], {})[0]


def _check_backbone(backbone: str) -> None:
    if backbone not in _BUILDERS:
        raise ValueError(f"unknown backbone {backbone!r}; available: {list_models()}")


def create_model(backbone: str, num_classes: int, method: str = "icl", pretrained=None,
                 keep_classifier: bool = False, im2col_wgrad: bool = True, **overrides) -> WSOLModel:
    """Build a WSOL model. `pretrained`: None/False (from scratch), True (torchvision's hub cache file)
    or a path to a torchvision ImageNet state dict. The load report is kept as `model.pretrained_report`.
    keep_classifier: load the ImageNet classifier too where it fits (training on ILSVRC itself).
    im2col_wgrad: the convolutions' weight gradient on the CPU as one GEMM (`models/conv.py`; same
    parameters and numbers up to rounding); False keeps oneDNN's."""
    _check_backbone(backbone)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    defaults, options = resolve_config(method, _METHOD_DEFAULTS[backbone], overrides)
    model = _BUILDERS[backbone](num_classes=int(num_classes), method=method, defaults=defaults,
                                options=options)
    model.pretrained_report = None
    if pretrained is not None and pretrained is not False:
        model.pretrained_report = load_pretrained(model, pretrained, keep_classifier=keep_classifier)
    model.config["pretrained"] = model.pretrained_report.path if model.pretrained_report else None
    use_im2col_wgrad(model, im2col_wgrad)
    return model


def _register_builtin() -> None:
    from . import inception, resnet, vgg

    register_model("vgg16", vgg.vgg16, vgg.METHOD_DEFAULTS)
    register_model("inceptionv3", inception.inceptionv3, inception.METHOD_DEFAULTS)
    register_model("resnet50", resnet.resnet50, resnet.METHOD_DEFAULTS)


_register_builtin()
