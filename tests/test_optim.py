"""wsol_fast.optim: wsolevaluation's step decay and the two parameter groups."""
from __future__ import annotations

import pytest
import torch

from wsol_fast import optim
from wsol_fast.config import TrainConfig


def test_lr_factor_decays_at_multiples_of_the_one_based_epoch():
    # every = 15: 1-based epochs 1-14 at lr, 15-29 at 0.1 lr, 30- at 0.01 lr
    assert [optim.lr_factor(e, 15, 0.1) for e in (0, 13, 14, 28, 29)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


class TwoGroups(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.old, self.new = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    def parameter_groups(self):
        return {"pretrained": list(self.old.parameters()), "new": list(self.new.parameters())}


def test_new_layers_get_the_multiplied_lr():
    cfg = TrainConfig()
    cfg.optim.lr, cfg.optim.new_layer_lr_mult, cfg.optim.momentum = 0.01, 10.0, 0.9
    cfg.optim.weight_decay, cfg.optim.nesterov, cfg.optim.lr_decay_every, cfg.optim.lr_decay = 1e-4, True, 2, 0.1
    opt, sched = optim.build_optimizer(TwoGroups(), cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])   # 1-based epoch 2 decays
