"""The checkpoint format, written atomically (files.py): save, load (weights_only), resume and fork (the
build-then-load of a model that train, evaluate and predict share is build.py).

A checkpoint (RUN/last.pt, RUN/best.pt) holds only tensors and plain values, so `torch.load(...,
weights_only=True)` reads it: the model's weights, optimizer, scheduler and scaler state, epoch and step
(the step is > 0 for a save mid-epoch), best and history, the resolved config, the model's options, the
class count and every RNG state.
"""
from __future__ import annotations

import io
import os
import random

import numpy as np
import torch

from .errors import ConfigError, UserError
from .files import atomic_write, load_failure, torch_load


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, of another kind, or does not fit the model."""


# ----------------------------------------------------------------------------- saving

def atomic_save(obj, path: str) -> None:
    """torch.save into memory, then one atomic write. Serialising to a buffer first makes a full disk an
    ordinary OSError (ENOSPC) instead of torch's zip writer's "enforce fail" without the reason."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(buf.getbuffer(), path)


# ----------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """All RNG states as weights_only-loadable values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ----------------------------------------------------------------------------- save and load

def save(path: str, model, optimizer, scheduler, scaler, *, epoch: int, step: int, best: dict, history: list,
         config: dict, model_config: dict, num_classes: int, partial: dict | None = None) -> None:
    """Everything a resume needs (the module doc's format), written atomically. `model` is the
    uncompiled, unwrapped one, so the keys are the model's own. partial (a save mid-epoch): the running
    sums of that epoch's metrics row, so a resumed epoch's row counts every step of it."""
    atomic_save({
        **({"partial": partial} if partial is not None else {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch, "step": step,
        "best": dict(best), "history": list(history),
        "config": config,
        "model_config": dict(model_config),
        "num_classes": num_classes,
        "rng": rng_state(),
    }, path)


CHECKPOINT_KEYS = ("model", "epoch", "step", "config", "num_classes")


def load_checkpoint(path: str, require=CHECKPOINT_KEYS) -> dict:
    """Checkpoints hold only tensors and plain Python values, so weights_only=True loads them. A missing,
    truncated or foreign file, or one without the `require`d keys (e.g. a bare state dict), is a
    CheckpointError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise CheckpointError(f"checkpoint {path}: {what}")
    try:
        st = torch_load(path)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated, corrupt or not a PyTorch "
                              f"checkpoint): {load_failure(exc)}") from exc
    if not isinstance(st, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(st).__name__}, not a wsol_fast checkpoint")
    missing = [k for k in require if k not in st]
    if missing:
        bare = all(isinstance(v, torch.Tensor) for v in st.values())
        kind = "a bare state dict" if bare and st else "not a checkpoint written by wsol_fast.train"
        raise CheckpointError(f"checkpoint {path} is {kind} (no {', '.join(repr(k) for k in missing)}); "
                              "pass the last.pt or best.pt of a run folder")
    return st


def load_weights(model: torch.nn.Module, weights: dict, path: str, what: str = "the model") -> None:
    """model.load_state_dict(weights), with a short CheckpointError (counts and the first few keys)
    instead of PyTorch's dump of every mismatched tensor."""
    target = model.state_dict()
    missing = [k for k in target if k not in weights]
    unexpected = [k for k in weights if k not in target]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in weights and hasattr(weights[k], "shape") and weights[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {name} (first: {x[0]})" for x, name in
                 ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if x]
        raise CheckpointError(f"the weights in {path} do not fit {what}: " + "; ".join(parts))
    model.load_state_dict(weights)


def describe_model(backbone: str, method: str, num_classes: int) -> str:
    """The model a load_weights error names."""
    return f"a {backbone} / {method} model with {num_classes} classes"


# ----------------------------------------------------------------------------- resume and fork

def resume(state: dict, path: str, model, optimizer, scheduler, scaler, num_classes: int) -> None:
    """Continue a run: weights, optimizer, scheduler, scaler and RNG exactly as saved."""
    cfg = state["config"]["model"]
    load_weights(model, state["model"], path, describe_model(cfg["backbone"], cfg["method"], num_classes))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


def fork(state: dict, path: str, cfg, model, optimizer, scaler, num_classes: int, make_scheduler):
    """--init-from: the checkpoint's weights, optimizer buffers (momentum), scaler and RNG at its epoch;
    everything else from this run's config `cfg`. Every optimizer hyperparameter is cfg's, and the lr is
    cfg's schedule at that epoch: `make_scheduler(optimizer, start_epoch)` places the scheduler there.
    With cfg.runtime.fork_weights_only, or when the checkpoint's method differs, only the weights
    (fork_weights) and the RNG. Returns the new scheduler."""
    if state["num_classes"] != num_classes:
        raise ConfigError(f"--init-from {path}: the checkpoint has {state['num_classes']} classes, this "
                          f"dataset {num_classes}")
    if cfg.runtime.fork_weights_only or state["config"]["model"]["method"] != cfg.model.method:
        fork_weights(model, state["model"], path, saved_block_points(state["config"]["model"]))
    else:   # as a resume, then this run's own settings on top
        load_weights(model, state["model"], path, describe_model(cfg.model.backbone, cfg.model.method, num_classes))
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    o = cfg.optim
    for group, base in zip(optimizer.param_groups, (o.lr, o.lr * o.new_layer_lr_mult)):
        group.update(initial_lr=base, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    return make_scheduler(optimizer, state["epoch"])


def fork_weights(model, weights: dict, path: str, their_points: list[str] | None = None) -> None:
    """A fork into another method (or --fork-weights-only): the backbone's weights must all load; an
    attention block loads from the checkpoint's block at the same insertion point (`their_points`, the
    checkpoint's icl_blocks in order; None: the same points as `model`) when its shapes fit, and keeps
    its fresh init otherwise (e.g. from a CAM warm-up, or at a point the checkpoint had no block at);
    optimizer momentum starts at zero."""
    mine = model.state_dict()
    theirs = {k: v for k, v in weights.items() if not k.startswith("attention_blocks.")}
    at = {point: j for j, point in enumerate(model.block_points if their_points is None else their_points)}
    blocks = {}
    for key, value in mine.items():
        if not key.startswith("attention_blocks."):
            continue
        index, rest = key[len("attention_blocks."):].split(".", 1)
        j = at.get(model.block_points[int(index)])
        source = weights.get(f"attention_blocks.{j}.{rest}") if j is not None else None
        if source is not None and source.shape == value.shape:
            blocks[key] = source
    missing = [k for k in mine if not k.startswith("attention_blocks.") and k not in theirs]
    unexpected = [k for k in theirs if k not in mine]
    if missing or unexpected:
        raise CheckpointError(f"--init-from {path}: the backbone's weights do not match this model's "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict({**theirs, **blocks}, strict=False)


def saved_block_points(model_config: dict) -> list[str]:
    """The insertion points a checkpoint's model config names (older checkpoints: None, the default)."""
    if model_config.get("icl_blocks") is None:
        from .models import default_blocks
        return default_blocks(model_config["backbone"])
    return list(model_config["icl_blocks"])


def fork_mismatch(cfg, state: dict, total_epochs: int) -> str | None:
    """Why --init-from cannot start this run (`cfg` resolved, so icl_blocks is filled in; `total_epochs`)
    from `state`, or None."""
    saved = state["config"]
    if saved["model"]["backbone"] != cfg.model.backbone:
        return (f"the checkpoint is a {saved['model']['backbone']} / {saved['model']['method']} run, "
                f"this command trains {cfg.model.backbone} / {cfg.model.method}")
    if state["step"] != 0:
        return (f"the checkpoint was written mid-epoch (epoch {state['epoch'] + 1}, step {state['step']}); fork "
                "from an epoch-end best.pt or last.pt, or --resume it")
    points, theirs = cfg.model.icl_blocks, saved_block_points(saved["model"])
    if (points is not None and list(points) != theirs and saved["model"]["method"] == cfg.model.method
            and not cfg.runtime.fork_weights_only):
        return (f"its {cfg.model.method} blocks sit at {', '.join(theirs)}, this run's at {', '.join(points)}; "
                "add --fork-weights-only to carry over the blocks at the points both share (fresh "
                "optimizer momentum)")
    if total_epochs <= state["epoch"]:
        return f"it ends epoch {state['epoch']}, so --epochs must be larger (the run's total), got {total_epochs}"
    return None
