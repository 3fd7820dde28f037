"""wsol_fast.checkpoint: the RNG round trip, and a fork's
learning-rate schedule placed by the scheduler itself. Expected values are computed by hand."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from wsol_fast import checkpoint
from wsol_fast.config import OptimConfig
from wsol_fast.optim import build_scheduler


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
    checkpoint.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == draws


def _lrs(scheduler, optimizer, epochs):
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return out


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_a_scheduler_placed_at_an_epoch_continues_the_schedule():
    # lr 0.02, decay 0.1 at the start of each 1-based epoch that is a multiple of 2: 0-based epochs
    # 0, 1, 2, 3, 4 run at 0.02, 0.002, 0.002, 0.0002, 0.0002.
    cfg = OptimConfig(lr=0.02, lr_decay_every=2, lr_decay=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    fresh = torch.optim.SGD([param], lr=cfg.lr)
    assert _lrs(build_scheduler(fresh, cfg, 0), fresh, 5) == pytest.approx([0.02, 0.002, 0.002, 2e-4, 2e-4])
    forked = torch.optim.SGD([param], lr=0.5)          # a checkpoint's optimizer, another lr
    forked.param_groups[0]["initial_lr"] = cfg.lr       # fork() sets this config's base lr
    scheduler = build_scheduler(forked, cfg, 2)         # epoch index 2 is the next to train
    assert scheduler.last_epoch == 2
    assert _lrs(scheduler, forked, 3) == pytest.approx([0.002, 2e-4, 2e-4])


def test_fork_mismatch_reasons():
    from wsol_fast.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.backbone = "vgg16"
    state = {"config": {"model": {"backbone": "vgg16", "method": "cam"}}, "epoch": 3, "step": 0}
    assert checkpoint.fork_mismatch(cfg, state, 5) is None
    assert "--epochs must be larger" in checkpoint.fork_mismatch(cfg, state, 3)
    assert "mid-epoch" in checkpoint.fork_mismatch(cfg, {**state, "step": 4}, 5)
    cfg.model.backbone = "resnet50"
    assert "vgg16 / cam run" in checkpoint.fork_mismatch(cfg, state, 5)


def test_a_fork_with_other_block_points_needs_weights_only():
    from wsol_fast.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.backbone, cfg.model.method = "vgg16", "icl"
    cfg.model.icl_blocks = ["conv4_3", "pool4", "conv5_3"]
    saved = {"backbone": "vgg16", "method": "icl", "icl_blocks": ["pool3", "conv4_3", "conv5_3"]}
    state = {"config": {"model": saved}, "epoch": 3, "step": 0}
    assert "blocks sit at pool3, conv4_3, conv5_3, this run's at conv4_3, pool4, conv5_3; add --fork-weights-only" in checkpoint.fork_mismatch(cfg, state, 5)
    cfg.runtime.fork_weights_only = True
    assert checkpoint.fork_mismatch(cfg, state, 5) is None
    # a checkpoint written before icl_blocks was recorded holds the backbone's default points
    cfg.runtime.fork_weights_only = False
    cfg.model.icl_blocks = ["pool3", "conv4_3", "conv5_3"]
    assert checkpoint.fork_mismatch(cfg, {**state, "config": {"model": {**saved, "icl_blocks": None}}}, 5) is None


def test_fork_weights_takes_each_block_from_the_same_insertion_point():
    """conv4_3 and pool4 both have 512 channels: loading by block index would put the checkpoint's
    conv4_3 block at pool4 (same shapes, no error); loading by point puts it at conv4_3."""
    from wsol_fast.models import create_model

    torch.manual_seed(0)
    theirs = create_model("vgg16", 3, "icl", icl_blocks=["pool3", "conv4_3", "conv5_3"])
    torch.manual_seed(1)
    mine = create_model("vgg16", 3, "icl", icl_blocks=["conv4_3", "pool4", "conv5_3"])
    fresh_pool4 = {k: v.clone() for k, v in mine.attention_blocks[1].state_dict().items()}
    assert fresh_pool4, "the ICL block has parameters to carry over"
    checkpoint.fork_weights(mine, theirs.state_dict(), "ckpt.pt", ["pool3", "conv4_3", "conv5_3"])
    for (mine_k, theirs_k) in ((0, 1), (2, 2)):   # conv4_3 <- their block 1, conv5_3 <- their block 2
        for name, value in mine.attention_blocks[mine_k].state_dict().items():
            assert torch.equal(value, theirs.attention_blocks[theirs_k].state_dict()[name]), (mine_k, name)
    for name, value in mine.attention_blocks[1].state_dict().items():   # pool4: no block there, fresh init
        assert torch.equal(value, fresh_pool4[name]), name
    for name, value in mine.features.state_dict().items():
        assert torch.equal(value, theirs.features.state_dict()[name]), name
