"""The optimizer and lr schedule of a run (wsolevaluation's): SGD with nesterov momentum, new layers at
new_layer_lr_mult x lr, and a step decay of the lr every lr_decay_every epochs."""
from __future__ import annotations

import torch
import torch.nn as nn


def lr_factor(epoch: int, every: int, decay: float) -> float:
    """The lr multiplier of 0-based epoch `epoch`. wsolevaluation decays at the start of every 1-based epoch
    that is a multiple of lr_decay_frequency (its adjust_learning_rate(epoch + 1)), so with every = 15,
    1-based epochs 1-14 run at lr and 15-29 at 0.1 lr."""
    return decay ** ((epoch + 1) // every)


class StepDecay:
    """lr_factor as a picklable callable (LambdaLR saves callable objects' state with the scheduler)."""

    def __init__(self, every: int, decay: float):
        self.every, self.decay = every, decay

    def __call__(self, epoch: int) -> float:
        return lr_factor(epoch, self.every, self.decay)


def build_optimizer(model: nn.Module, cfg):
    """(SGD over the model's "pretrained" and "new" parameter groups, its scheduler at epoch 0) for a
    TrainConfig's optim settings."""
    o = cfg.optim
    params = model.parameter_groups()
    groups = [{"params": params["pretrained"], "lr": o.lr},
              {"params": params["new"], "lr": o.lr * o.new_layer_lr_mult}]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=o.lr, momentum=o.momentum,
                          weight_decay=o.weight_decay, nesterov=o.nesterov)
    return opt, build_scheduler(opt, o, 0)


def build_scheduler(optimizer, optim_cfg, start_epoch: int):
    """The step decay, placed by LambdaLR itself so that `start_epoch` (0-based) is the next epoch to train:
    its lr is set and each scheduler.step() moves one epoch on. A start_epoch > 0 (a fork) needs every
    group's `initial_lr`, the base its schedule scales."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, StepDecay(optim_cfg.lr_decay_every, optim_cfg.lr_decay),
                                             last_epoch=start_epoch - 1)
