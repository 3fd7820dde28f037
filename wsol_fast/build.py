"""A model from a resolved TrainConfig, with a checkpoint's weights when given: the one build-then-load of
train, evaluate and predict."""
from __future__ import annotations

import torch

from .checkpoint import describe_model, load_weights


def build_model(cfg, num_classes: int, device: torch.device, state: dict | None = None, path: str = "",
                pretrained=None, keep_classifier: bool = False, sync_bn: bool = False) -> torch.nn.Module:
    """create_model from a resolved TrainConfig, with `state`'s weights when given (load_weights: a model
    that does not fit is a CheckpointError naming `path`), on `device` in the config's memory format.
    The one build-then-load of train (pretrained; SyncBatchNorm under DDP), evaluate and predict."""
    from .models import create_model

    m = cfg.model
    model = create_model(m.backbone, num_classes, method=m.method, pretrained=pretrained,
                         keep_classifier=keep_classifier, **m.overrides())
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if state is not None:
        load_weights(model, state["model"], path, describe_model(m.backbone, m.method, num_classes))
    model.to(device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model
