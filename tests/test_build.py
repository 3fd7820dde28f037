"""wsol_fast.build.build_model, the one build-then-load of train, evaluate and predict: what it asks
create_model for (the config's backbone, method and every resolved option), SyncBatchNorm when asked, the
memory format, and a checkpoint's weights loaded as saved, or a CheckpointError naming the file and the
model when they do not fit."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wsol_fast import build, models
from wsol_fast.checkpoint import CheckpointError
from wsol_fast.config import TrainConfig, resolve

CPU = torch.device("cpu")


def _cfg(backbone="vgg16", method="icl", channels_last=True) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.backbone, cfg.model.method, cfg.runtime.channels_last = backbone, method, channels_last
    return resolve(cfg, "cpu")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)


def test_it_asks_create_model_for_the_configs_model(monkeypatch):
    seen = []
    monkeypatch.setattr(models, "create_model", lambda *a, **k: seen.append((a, k)) or _Tiny())
    cfg = _cfg()
    model = build.build_model(cfg, 7, CPU, pretrained=True, keep_classifier=True, sync_bn=True)
    assert seen == [(("vgg16", 7), {"method": "icl", "pretrained": True, "keep_classifier": True,
                                    **cfg.model.overrides()})]
    assert "icl_blocks" in seen[0][1] and "drop_rate" in seen[0][1]      # resolved: every option is given
    assert isinstance(model.bn, nn.SyncBatchNorm)                        # sync_bn: converted
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build.build_model(_cfg(channels_last=False), 7, CPU)
    assert type(plain.bn) is nn.BatchNorm2d and plain.conv.weight.is_contiguous()
    assert not plain.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_checkpoints_weights_are_loaded_as_saved():
    cfg = _cfg()
    torch.manual_seed(0)
    saved = build.build_model(cfg, 5, CPU).state_dict()
    torch.manual_seed(1)
    fresh = build.build_model(cfg, 5, CPU).state_dict()
    first = next(k for k in saved if k.endswith("weight"))
    assert not torch.equal(fresh[first], saved[first])                   # another seed: other weights
    torch.manual_seed(1)
    loaded = build.build_model(cfg, 5, CPU, state={"model": saved}, path="run/last.pt").state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_weights_that_do_not_fit_name_the_file_and_the_model():
    cfg = _cfg()
    saved = build.build_model(cfg, 5, CPU).state_dict()
    with pytest.raises(CheckpointError, match=r"the weights in run/best\.pt do not fit a vgg16 / icl model with 3 "
                                              r"classes: .*of another shape"):
        build.build_model(cfg, 3, CPU, state={"model": saved}, path="run/best.pt")
