"""Config resolution: the built-in CPU profile against the paper's defaults on real data."""
from __future__ import annotations

import pytest

from wsol_fast.config import BUILTIN_PROFILE, PAPER_PROFILE, TrainConfig, resolve


def _resolved(dataset: str, **optim) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.dataset = dataset
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return resolve(cfg, "cpu")


def test_real_data_gets_the_papers_settings():
    o = _resolved("CUB").optim
    assert (o.lr, o.new_layer_lr_mult, o.block_warmup_epochs, o.fc_norm) == (1e-3, 10.0, 0, "minmax")   # max diverged from scratch
    assert (o.epochs, o.lr_decay_every) == (50, 15)
    assert _resolved("CUB").model.pretrained == "imagenet"


def test_builtin_gets_its_cpu_profile():
    cfg = _resolved("builtin")
    assert cfg.optim.block_warmup_epochs == BUILTIN_PROFILE["block_warmup_epochs"] == 5
    # wsolevaluation's decay rule (start of 1-based epoch 6): the one ICL epoch, 6, runs at the decayed lr
    assert cfg.optim.epochs == 6 and cfg.optim.lr_decay_every == 6
    assert (cfg.data.resize_size, cfg.data.crop_size) == (73, 64)
    assert cfg.model.pretrained is None


def test_flags_override_the_profile():
    assert _resolved("builtin", block_warmup_epochs=0).optim.block_warmup_epochs == 0
    assert _resolved("CUB", block_warmup_epochs=2).optim.block_warmup_epochs == 2
    with pytest.raises(ValueError, match="block-warmup-epochs"):
        _resolved("CUB", block_warmup_epochs=-1)
    assert set(PAPER_PROFILE) <= set(BUILTIN_PROFILE)  # every key the resolver reads, in both
