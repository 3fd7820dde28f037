"""python -m wsol_fast.train --backbone inceptionv3

Trains a WSOL model (ICL, ADL or plain CAM) on wsolevaluation-format data, or on the built-in dataset
when no data flags are given, evaluates every epoch on val, and ends with the test evaluation, a
results table, results.json and CAM overlays. Works under `torchrun --nproc_per_node=N`.

Reading order: parse -> data -> model/optimizer -> (resume or fork) -> epochs [train, validate, checkpoint]
-> test. The loop avoids a host sync per step: losses are accumulated on the device and read back at
the log interval.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import signal
import sys
import time

import torch
import torch.nn as nn

from . import checkpoint, diagnostics, guard, plot, runtime
from .config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig, resolve
from .config_file import ConfigFileError, apply_to_parser, output_in_use
from .data import RunData, prepare_data
from .evaluate import evaluate_model, localization_score, print_table, write_outputs
from .losses import WSOLLoss
from .models import list_models
from .optim import build_optimizer, build_scheduler
from .tblog import TensorBoardLog


class NonFiniteLoss(RuntimeError):
    pass


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.train", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="inceptionv3", choices=list_models())
    m.add_argument("--method", default="icl", choices=["icl", "adl", "cam"])
    m.add_argument("--pretrained", default=None,
                   help="PATH to a torchvision ImageNet state dict, 'imagenet' (torchvision's hub cache) or "
                        "'none'. Default: imagenet on real data, none on the built-in dataset")
    m.add_argument("--drop-rate", type=guard.unit_interval, default=None, help="default: per backbone (SPEC 1.4)")
    m.add_argument("--gamma-fg", type=guard.unit_interval, default=None)
    m.add_argument("--gamma-bg", type=guard.unit_interval, default=None)
    m.add_argument("--no-contrastive", dest="use_contrastive", action="store_const", const=False,
                   help="ablation: no contrastive attention loss")
    m.add_argument("--no-fc", dest="use_fc", action="store_const", const=False,
                   help="ablation: no foreground consistency loss")
    m.add_argument("--no-nonlocal", dest="nonlocal_attention", action="store_const", const=False,
                   help="ablation: channel-mean attention instead of the non-local block")
    m.add_argument("--no-dfg-mask", dest="use_dfg_mask", action="store_const", const=False,
                   help="ablation: ADL's drop mask instead of the dropped-foreground mask")
    m.add_argument("--attention-form", default=None, choices=["paper", "relu", "residual"],
                   help="ICL's attention map: the paper's literal signed form, a ReLU value, or the channel "
                        "mean plus the non-local term (default residual; docs/method.md)")
    m.add_argument("--mask-norm", default=None, choices=["none", "minmax"],
                   help="thresholds of Eq. 1-2 on the raw map (paper) or the per-sample min-max normalised "
                        "map (default minmax)")
    m.add_argument("--attention-scale", default=None,
                   help="logit scale s of softmax(f g^T s): a number (paper: 1) or inv_sqrt (1/sqrt(C'), "
                        "default)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None,
                   help="dataset name under the metadata root (CUB, ILSVRC, OpenImages), or a generated one: "
                        "builtin (digits), builtin-parts (a small discriminative head on a weakly "
                        "informative body) or builtin-masks (digits with instance masks in OpenImages' layout, "
                        "scored by PxAP); default: builtin")
    d.add_argument("--data-root", default=None, help="images at DATA_ROOT/DATASET/<image_id>")
    d.add_argument("--metadata-root", default=None, help="metadata at METADATA_ROOT/DATASET/<split>/")
    d.add_argument("--resize-size", type=guard.positive_int, default=None,
                   help="train resize (default 256; built-in profile 73)")
    d.add_argument("--crop-size", type=guard.positive_int, default=None,
                   help="train crop / eval size (default 224; built-in profile 64); at least "
                        + ", ".join(f"{v} for {k}" for k, v in guard.MIN_CROP.items()))
    d.add_argument("--workers", type=guard.nonneg_int, default=None)
    d.add_argument("--loader", default="auto", choices=["auto", "dali", "opencv"])
    d.add_argument("--skip-bad-images", action="store_true",
                   help="skip and count corrupt/missing images (listed in RUN/skipped_images.txt)")
    d.add_argument("--num-classes", type=guard.positive_int, default=None,
                   help="class count (default: the train split's, max label + 1, every label present)")
    d.add_argument("--max-image-pixels", type=guard.positive_int, default=None,
                   help="refuse images whose header claims more pixels (default 64,000,000)")
    d.add_argument("--builtin-seed", type=int, default=0)
    d.add_argument("--mask-root", default=None,
                   help="masks at MASK_ROOT/DATASET/<mask_path> (OpenImages, PxAP); default: the data root")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=guard.positive_int, default=None,
                   help="total epochs; on --resume, a larger value extends the run")
    o.add_argument("--batch-size", type=guard.positive_int, default=32)
    o.add_argument("--allow-partial-batches", dest="partial_batches", action="store_true",
                   help="train on the last incomplete batch too (needed when the train split is smaller "
                        "than --batch-size)")
    o.add_argument("--lr", type=guard.positive_float, default=None,
                   help="default 1e-3 (paper); 0.02 on the built-in from-scratch profile (0 freezes the weights)")
    o.add_argument("--lr-decay-every", type=guard.positive_int, default=None)
    o.add_argument("--block-warmup-epochs", type=guard.nonneg_int, default=None,
                   help="epochs trained with the attention blocks (ICL / ADL) off, i.e. identities, and the "
                        "classification loss alone, before the method's blocks and losses come on (default 0 "
                        "on real data, the paper's; the built-in from-scratch profile's otherwise)")
    o.add_argument("--new-layer-lr-mult", type=guard.nonneg_float, default=None,
                   help="lr multiplier of new layers (default 10 on real data, 0.1 on the built-in profile)")
    o.add_argument("--weight-decay", type=guard.nonneg_float, default=1e-4)
    o.add_argument("--lambda-ca", type=guard.nonneg_float, default=1.0)
    o.add_argument("--lambda-fc", type=guard.nonneg_float, default=1.0)
    o.add_argument("--fc-norm", default=None, choices=["max", "minmax", "none"],
                   help="L_fc map normalisation (default minmax; SPEC 1.2's max diverged from scratch)")
    o.add_argument("--fc-reduction", default="mean", choices=["mean", "sum"])
    r = p.add_argument_group("run")
    r.add_argument("--output", default=None, help="run folder (default runs/<backbone>-<method>-<time>); one "
                                                   "run at a time (RUN/.lock)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the finished or interrupted run in --output (default: refuse)")
    r.add_argument("--resume", default=None, help="RUN/last.pt to continue from, with that run's settings")
    r.add_argument("--init-from", default=None, metavar="CKPT",
                   help="fork a run: start from CKPT's weights, optimizer state and epoch (an epoch-end "
                        "RUN/best.pt or RUN/last.pt) with this command's settings, e.g. an ablation of the "
                        "last epochs or a new schedule; --epochs counts from 0, so it must exceed "
                        "CKPT's epoch. The lr is this command's schedule at that epoch")
    r.add_argument("--fork-weights-only", action="store_true",
                   help="with --init-from: take only the checkpoint's weights (fresh optimizer momentum); "
                        "implied when the checkpoint's method differs (e.g. ICL, ADL and CAM rows forked from one "
                        "CAM warm-up, as `python -m wsol_fast.ablate` does)")
    r.add_argument("--eval-checkpoint", default="last", choices=["last", "best"],
                   help="which checkpoint the final test scores: the last epoch's (wsolevaluation's default) or "
                        "the best by val MaxBoxAccV2")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    r.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    r.add_argument("--compile", nargs="?", const="default", default=None,
                   help="torch.compile the model (optionally a mode: default, reduce-overhead, max-autotune). "
                        "Default: on where the training-step benchmark measured it faster (resnet50 on CPU)")
    r.add_argument("--no-compile", dest="compile", action="store_const", const="off")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    r.add_argument("--cam-curve-interval", type=guard.open_interval, default=0.01,
                   help="in (0, 1); 0.001 for the paper protocol")
    r.add_argument("--num-overlays", type=guard.nonneg_int, default=16)
    r.add_argument("--max-steps-per-epoch", type=guard.positive_int, default=None,
                   help="cap steps per epoch (smoke runs)")
    r.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    r.add_argument("--save-scoremaps", default=None, metavar="DIR",
                   help="write the final test's GT-class CAMs as DIR/<image_id>.npy (224 x 224 float64, min-max "
                        "normalised: wsolevaluation's layout, for `evaluate --scoremap-root` or its evaluate_wsol)")
    r.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="no TensorBoard events in the run folder (without this flag: tensorboard=%(default)s)")
    r.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a JSON or YAML file (a run's config.json reruns it); flags given on "
                        "the command line override them")
    # --config: the file's values become the defaults, then the command line is parsed again over them.
    config_file, without_flag = p.parse_known_args(argv)[0].config, {}
    if config_file:
        try:
            without_flag = apply_to_parser(p, config_file)
        except ConfigFileError as exc:
            p.error(str(exc))
    a = p.parse_args(argv)
    guard.check_crop(p, a.backbone, a.crop_size, a.resize_size)
    if config_file and a.output == p.get_default("output") and output_in_use(a.output):
        p.error(f"--config {config_file}: its output folder {a.output} already holds a run; give --output")
    if a.resume and a.init_from:
        p.error("--resume continues a run with its own settings, --init-from forks it with new ones: "
                "give one of them")

    dataset = a.dataset or ("builtin" if a.data_root is None and a.metadata_root is None else "CUB")
    if not dataset.startswith("builtin") and (a.data_root is None or a.metadata_root is None):
        p.error(f"--dataset {dataset} needs both --data-root and --metadata-root")
    pretrained = None if a.pretrained in (None,) else a.pretrained
    cfg = TrainConfig(
        DataConfig(dataset=dataset, data_root=a.data_root, metadata_root=a.metadata_root,
                   resize_size=a.resize_size, crop_size=a.crop_size, workers=a.workers, loader=a.loader,
                   skip_bad_images=a.skip_bad_images, builtin_seed=a.builtin_seed, num_classes=a.num_classes,
                   max_image_pixels=a.max_image_pixels, partial_batches=a.partial_batches,
                   mask_root=a.mask_root),
        ModelConfig(backbone=a.backbone, method=a.method, pretrained=pretrained, drop_rate=a.drop_rate,
                    gamma_fg=a.gamma_fg, gamma_bg=a.gamma_bg, use_contrastive=a.use_contrastive,
                    use_fc=a.use_fc, nonlocal_attention=a.nonlocal_attention, use_dfg_mask=a.use_dfg_mask,
                    attention_form=a.attention_form, mask_norm=a.mask_norm, attention_scale=a.attention_scale),
        OptimConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, lr_decay_every=a.lr_decay_every,
                    block_warmup_epochs=a.block_warmup_epochs,
                    new_layer_lr_mult=a.new_layer_lr_mult,
                    weight_decay=a.weight_decay, lambda_ca=a.lambda_ca, lambda_fc=a.lambda_fc,
                    fc_norm=a.fc_norm, fc_reduction=a.fc_reduction),
        RuntimeConfig(output=a.output, seed=a.seed, device=a.device, amp=a.amp, channels_last=a.channels_last,
                      compile=a.compile, sync_bn=a.sync_bn, resume=a.resume, init_from=a.init_from,
                      fork_weights_only=a.fork_weights_only, eval_checkpoint=a.eval_checkpoint,
                      cam_curve_interval=a.cam_curve_interval, num_overlays=a.num_overlays,
                      max_steps_per_epoch=a.max_steps_per_epoch, save_scoremaps=a.save_scoremaps,
                      tensorboard=a.tensorboard),
    )
    for (section, name), value in without_flag.items():   # e.g. optim.momentum: no flag, only the file
        setattr(getattr(cfg, section), name, value)
    # How the command was given (not part of the run's settings): flags written, --overwrite, --debug.
    cfg.cli = {"given": guard.given_dests(p, argv), "overwrite": a.overwrite, "debug": a.debug}
    return cfg


def run_dir(cfg: TrainConfig) -> str:
    if cfg.runtime.output:
        return cfg.runtime.output
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{cfg.model.backbone}-{cfg.model.method}-{cfg.data.dataset}-{stamp}")


class Trainer:
    def __init__(self, cfg: TrainConfig, resume_state: dict | None = None, fork: bool = False):
        """resume_state: a checkpoint to continue (resume) or, with fork=True, to start from (--init-from)."""
        self.info, self.device = runtime.init_distributed(cfg.runtime.device)
        self.cfg = resolve(cfg, self.device.type)
        c = self.cfg
        self.out = run_dir(c)
        if self.info.is_main:
            os.makedirs(self.out, exist_ok=True)
            checkpoint.atomic_write(json.dumps(c.to_dict(), indent=2), os.path.join(self.out, "config.json"))
        runtime.seed_everything(c.runtime.seed)
        self._data_issues_seen = (0, 0)   # (skipped, size mismatches) already reported
        self.amp_dtype = runtime.resolve_amp(c.runtime.amp, self.device)
        self.data: RunData = prepare_data(c.data, self.info, self.device, batch_size=c.optim.batch_size,
                                          seed=c.runtime.seed, channels_last=bool(c.runtime.channels_last),
                                          amp_dtype=self.amp_dtype)
        if self.info.is_main and self.data.bad_images:
            print(f"skipped {len(self.data.bad_images)} unreadable images (--skip-bad-images; listed in "
                  f"{os.path.join(self.out, 'skipped_images.txt')})")
            self._record_data_issues()

        pretrained = None if c.model.pretrained in (None, "none") else (
            True if c.model.pretrained == "imagenet" else c.model.pretrained)
        self.model = checkpoint.build_model(c, self.data.num_classes, self.device, pretrained=pretrained,
                                            keep_classifier=c.data.dataset == "ILSVRC",
                                            sync_bn=c.runtime.sync_bn and self.info.enabled)
        self.model_config = getattr(self.model, "config", {})
        self.raw_model = self.model  # uncompiled, unwrapped: what checkpoints save
        self.autocast = runtime.autocast_context(self.device, self.amp_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer, self.scheduler = build_optimizer(self.raw_model, c)
        self.criterion = WSOLLoss(lambda_ca=c.optim.lambda_ca, lambda_fc=c.optim.lambda_fc,
                                  margin=c.optim.margin, fc_norm=c.optim.fc_norm,
                                  fc_reduction=c.optim.fc_reduction)
        self.start_epoch, self.start_step, self.best = 0, 0, {"maxboxacc_v2": -1.0, "epoch": -1}
        self.history: list[dict] = []
        if resume_state is not None and fork:   # this config's settings from the checkpoint's epoch on
            self.scheduler = checkpoint.fork(resume_state, c.runtime.init_from, c, self.raw_model, self.optimizer,
                                             self.scaler, self.data.num_classes,
                                             lambda opt, epoch: build_scheduler(opt, c.optim, epoch))
            self.start_epoch = resume_state["epoch"]
        elif resume_state is not None:
            checkpoint.resume(resume_state, c.runtime.resume, self.raw_model, self.optimizer, self.scheduler,
                              self.scaler, self.data.num_classes)
            self.start_epoch, self.start_step = resume_state["epoch"], resume_state["step"]
            self.best, self.history = resume_state["best"], resume_state["history"]
        self.train_model = self.raw_model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Warm-up epochs leave the blocks' parameters without gradients.
            self.train_model = nn.parallel.DistributedDataParallel(
                self.raw_model, device_ids=ids, find_unused_parameters=c.optim.block_warmup_epochs > 0)
        self.compile_seconds = 0.0
        self._compiled_once = False
        if c.runtime.compile not in (None, "off"):
            mode = None if c.runtime.compile == "default" else c.runtime.compile
            # fullgraph: the whole model, ICL blocks and wsol_fast ops included, is one graph (the ops have
            # fake kernels). Under DDP, Dynamo splits the graph at gradient buckets, so no fullgraph there.
            self.train_model = torch.compile(self.train_model, mode=mode, fullgraph=not self.info.enabled)
        self.train_loader = self.data.train_loader
        self._signals = guard.StopSignals(enabled=False)
        self._progress = (self.start_epoch, self.start_step, None)   # (epoch, steps done, non-finite flag)
        self.tb = TensorBoardLog(self.out, c, self.info.is_main and c.runtime.tensorboard, self.data,
                                 self.autocast)

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, epoch: int, step: int) -> None:
        if self.info.is_main:
            checkpoint.save(os.path.join(self.out, name), self.raw_model, self.optimizer, self.scheduler,
                            self.scaler, epoch=epoch, step=step, best=self.best, history=self.history,
                            config=self.cfg.to_dict(), model_config=self.model_config,
                            num_classes=self.data.num_classes)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int, start_step: int) -> dict:
        c, dev = self.cfg, self.device
        self.train_model.train()
        self.raw_model.blocks_enabled = epoch >= c.optim.block_warmup_epochs
        loader = self.train_loader
        loader.set_epoch(epoch, start_step * c.optim.batch_size)
        steps = len(loader)
        if c.runtime.max_steps_per_epoch:
            steps = min(steps, c.runtime.max_steps_per_epoch - start_step)
        sums = torch.zeros(4, device=dev)  # total, cls, ca, fc, accumulated without host syncs
        diag = None                        # [blocks, fields] mask diagnostics, summed the same way
        nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
        n_img, wait, t0 = 0, 0.0, time.perf_counter()
        warmup = "" if self.raw_model.blocks_enabled or not len(self.raw_model.attention_blocks) else \
            " (block warm-up: blocks off)"
        bar = _progress(steps, f"epoch {epoch + 1}/{c.optim.epochs}{warmup}", self.info.is_main)
        it = iter(loader)
        step = start_step
        for i in range(steps):
            t_wait = time.perf_counter()
            batch = next(it, None)
            if batch is None:   # every image of the last batch was skipped (--skip-bad-images)
                break
            images, labels = batch[:2]
            images = images.to(dev, non_blocking=True)
            labels = labels.to(dev, non_blocking=True)
            if c.runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            wait += time.perf_counter() - t_wait
            first_compiled = c.runtime.compile not in (None, "off") and not self._compiled_once
            t_step = time.perf_counter()
            with self.autocast:
                output = self.train_model(images)
                losses = self.criterion(output, labels)
            loss = losses["total"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if first_compiled:  # the first compiled step pays for tracing and code generation
                runtime.synchronize(dev)
                self.compile_seconds = time.perf_counter() - t_step
                self._compiled_once = True
                if self.info.is_main:
                    print(f"torch.compile: first step took {self.compile_seconds:.1f} s (compilation included)",
                          file=sys.stderr)
            with torch.no_grad():
                sums += torch.stack([losses[k].detach().float() for k in ("total", "cls", "ca", "fc")])
                step_diag = diagnostics.block_stats(output, c.optim.margin)
                if step_diag is not None:
                    diag = step_diag if diag is None else diag + step_diag
                nonfinite |= ~torch.isfinite(loss.detach())
            n_img += images.shape[0]
            step += 1
            self._progress = (epoch, step, nonfinite)
            if (i + 1) % c.runtime.log_every == 0 or i + 1 == steps or self._signals.stop:
                if bool(nonfinite):  # one host sync per log interval, not per step
                    raise NonFiniteLoss(self._nonfinite_message(epoch, step))
                avg = (sums / (i + 1)).tolist()
                el = time.perf_counter() - t0
                bar.set_postfix(loss=f"{avg[0]:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2g}",
                                img_s=f"{n_img * self.info.world_size / el:.1f}",
                                **({} if diag is None else {"fg": "/".join(
                                    f"{v:.2f}" for v in (diag[:, 0] / (i + 1)).tolist())}))
                self.tb.train_step(epoch * len(loader) + step, epoch, i + 1, avg,
                                   self.optimizer.param_groups[0]["lr"], n_img * self.info.world_size / el)
            bar.update(1)
            if self._signals.stop:   # a signal arrived: this step is done, its weights are saved next
                bar.close()
                raise guard.Stopped(step)
        bar.close()
        runtime.synchronize(dev)
        elapsed = time.perf_counter() - t0
        avg = (sums / max(steps, 1)).tolist()
        self.epoch_diag = None if diag is None else diag / max(steps, 1)
        return {"epoch": epoch + 1, "loss": avg[0], "loss_cls": avg[1], "loss_ca": avg[2], "loss_fc": avg[3],
                "lr": self.optimizer.param_groups[0]["lr"], "steps": steps,
                "images_per_s": n_img * self.info.world_size / max(elapsed, 1e-9),
                "step_time_s": elapsed / max(steps, 1), "data_wait_frac": wait / max(elapsed, 1e-9),
                "epoch_time_s": elapsed, "peak_mem_mb": runtime.peak_memory_mb(dev),
                **diagnostics.as_columns(self.epoch_diag)}

    # ------------------------------------------------------------------ the whole run
    def fit(self) -> dict:
        c = self.cfg
        t_run = time.perf_counter()
        epoch, step = self.start_epoch, self.start_step
        # SIGINT / SIGTERM: finish the step, save, exit 130 / 143; signals during the save wait for it.
        with guard.StopSignals(enabled=self.info.is_main) as self._signals:
            for epoch in range(self.start_epoch, c.optim.epochs):
                step = self.start_step if epoch == self.start_epoch else 0
                try:
                    stats = self.train_epoch(epoch, step)
                except guard.Stopped as stopped:
                    self.save("last.pt", epoch, stopped.step)
                    self._exit_stopped(f"epoch {epoch + 1}, step {stopped.step}")
                except Exception as exc:
                    self._save_progress_before_failing(exc, epoch, step)
                    if self._signals.stop:   # e.g. a loader worker that the signal reached too
                        self._exit_stopped(f"epoch {epoch + 1}, step {self._progress[1]} ({exc})")
                    raise
                self.scheduler.step()
                try:
                    val = evaluate_model(self.raw_model, self.data.val_loader, self.data.val_meta, self.device,
                                         self.autocast, c, self.info)
                except Exception:
                    self._save_quietly("last.pt", epoch + 1, 0, f"epoch {epoch + 1}'s training")
                    raise
                self._record_data_issues()
                key, score, threshold = localization_score(val)   # MaxBoxAccV2, or PxAP on masks
                stats.update({"val_top1_cls": val["top1_cls"], f"val_{key}": score, "val_threshold": threshold})
                self.history.append(stats)
                if score > self.best.get(key, -1.0):
                    self.best = {key: score, "epoch": epoch + 1, "threshold": threshold}
                    self.save("best.pt", epoch + 1, 0)
                self.save("last.pt", epoch + 1, 0)
                if self.info.is_main:
                    self._write_metrics_csv()
                    self.tb.epoch(stats, self.raw_model, threshold)
                    print(f"epoch {epoch + 1}: loss {stats['loss']:.3f}  {stats['images_per_s']:.1f} img/s  "
                          f"data wait {100 * stats['data_wait_frac']:.0f}%  val top-1 {val['top1_cls']:.1f}  "
                          f"val {'PxAP' if key == 'pxap' else 'MaxBoxAccV2'} {score:.1f}")
                    if self.epoch_diag is not None:
                        print(f"  {diagnostics.summary(self.epoch_diag)}")
                if self._signals.stop:   # arrived during validation or the save: the epoch-end save stands
                    self._exit_stopped(f"end of epoch {epoch + 1}")
        self.tb.close()
        # The test pass writes nothing until results.json (atomically): a signal there just stops it.
        with guard.StopSignals(enabled=self.info.is_main, immediate=True):
            try:
                return self.test(time.perf_counter() - t_run)
            except Exception:
                self._record_data_issues()   # skipped_images.txt lists what the failing pass skipped
                if self.info.is_main:
                    print(f"the test evaluation failed; the trained checkpoints in {self.out} are kept "
                          f"(--resume {os.path.join(self.out, 'last.pt')} runs it again)", file=sys.stderr)
                raise

    # ------------------------------------------------------------------ stopping and failing safely
    def _exit_stopped(self, where: str):
        if self.info.is_main:
            name = signal.Signals(self._signals.signum).name
            print(f"\n{name}: stopped at {where}; resumable checkpoint written to {self.out}/last.pt "
                  f"(resume with --resume {self.out}/last.pt)", file=sys.stderr)
        raise SystemExit(self._signals.exit_code)

    def _save_quietly(self, name: str, epoch: int, step: int, what: str) -> None:
        """Save before a failure propagates; a failing save (e.g. a full disk) must not hide the failure."""
        try:
            self.save(name, epoch, step)
        except Exception as exc:   # the original error is what the user needs to see first
            print(f"could not save {what} before failing: {exc}", file=sys.stderr)
            return
        if self.info.is_main:
            print(f"{what} is kept: {os.path.join(self.out, name)} (epoch {epoch + (step == 0)}"
                  f"{f', step {step}' if step else ''}); after fixing the cause, --resume it", file=sys.stderr)

    def _save_progress_before_failing(self, exc: Exception, epoch: int, start_step: int) -> None:
        """A failure mid-epoch (e.g. an image that does not decode): keep the steps done, unless the loss
        had gone non-finite (those weights are not worth keeping) or nothing new was trained."""
        p_epoch, done, nonfinite = self._progress
        if isinstance(exc, NonFiniteLoss) or p_epoch != epoch or done <= start_step:
            return
        if nonfinite is not None and bool(nonfinite):
            return
        self._save_quietly("last.pt", epoch, done, f"the {done} step(s) trained in epoch {epoch + 1}")

    def _nonfinite_message(self, epoch: int, step: int) -> str:
        last = os.path.join(self.out, "last.pt")
        kept = (f"the last good checkpoint ({last}) is kept" if os.path.isfile(last) else
                "no checkpoint was written yet (it fails before the first epoch-end save)")
        return f"non-finite loss at epoch {epoch + 1}, step {step}; {kept}. Lower --lr, or check the data"

    def _record_data_issues(self) -> None:
        """skipped_images.txt (ids left out: by the pre-scan, or failing to decode during the run) and a
        warning for images whose decoded size differs from image_sizes.txt, each time their counts grow."""
        if not self.info.is_main:
            return
        loaders = (getattr(self, "train_loader", None), self.data.val_loader, self.data.test_loader)
        skipped = dict.fromkeys(self.data.bad_images, "failed the pre-scan")
        mismatched: dict = {}
        for loader in loaders:
            skipped.update(getattr(loader, "skipped", None) or {})
            mismatched.update(getattr(loader, "size_mismatches", None) or {})
        seen_skipped, seen_mismatched = self._data_issues_seen
        if len(skipped) > seen_skipped:
            path = os.path.join(self.out, "skipped_images.txt")
            checkpoint.atomic_write("".join(f"{i}\n" for i in skipped), path)
            late = len(skipped) - max(seen_skipped, len(self.data.bad_images))
            if late > 0:
                why = next(reversed(skipped.values()))
                print(f"warning: skipped {late} image(s) that passed the pre-scan but did not decode "
                      f"(--skip-bad-images; {len(skipped)} skipped in all, listed in {path}): {why}",
                      file=sys.stderr)
        if len(mismatched) > seen_mismatched:
            image_id, (got, want) = next(iter(mismatched.items()))
            print(f"warning: {len(mismatched)} image(s) decode to a size other than image_sizes.txt's (e.g. "
                  f"{image_id}: {got[0]}x{got[1]}, listed as {want[0]}x{want[1]}); their boxes are rescaled "
                  f"from image_sizes.txt. `python -m wsol_fast.data check` lists them all", file=sys.stderr)
        self._data_issues_seen = (len(skipped), len(mismatched))

    def test(self, train_seconds: float) -> dict:
        c = self.cfg
        ddp = None
        if self.info.enabled:
            # Replicas must end training with identical weights: gather one exact checksum per rank
            # (before best.pt replaces them). Then wait for rank 0's best.pt (a shared file system).
            with torch.no_grad():
                checksum = sum(float(p.double().sum()) for p in self.raw_model.parameters())
            ddp = {"world_size": self.info.world_size,
                   "replica_checksums": runtime.all_gather_objects(checksum, self.info)}
            runtime.barrier(self.info)
        # wsolevaluation scores test with its --eval_checkpoint_type, 'last' by default (the weights in
        # memory now), or 'best' by val localization. The top-1 loc threshold is that epoch's val choice.
        threshold = self.history[-1].get("val_threshold") if self.history else None
        best_path = os.path.join(self.out, "best.pt")
        if c.runtime.eval_checkpoint == "best" and os.path.exists(best_path):
            self.raw_model.load_state_dict(checkpoint.load_checkpoint(best_path)["model"])
            threshold = self.best.get("threshold")
        results = evaluate_model(self.raw_model, self.data.test_loader, self.data.test_meta, self.device,
                                 self.autocast, c, self.info, loc_threshold=threshold, with_baseline=True,
                                 overlays=c.runtime.num_overlays, save_scoremaps=c.runtime.save_scoremaps)
        self._record_data_issues()
        if ddp is not None:
            results["ddp"] = ddp
        summary = _summary(self.history, train_seconds, self.compile_seconds)
        results["telemetry"] = summary
        results["best_val"] = self.best
        results["eval_checkpoint"] = c.runtime.eval_checkpoint
        if self.info.is_main:
            write_outputs(results, self.out, self.data, c)
            plot.plot_run(self.out, quiet=True)   # the protocol's figures as PNGs in the run folder
            print_table(results, f"{c.model.backbone} / {c.model.method} on {c.data.dataset} (test split)")
            print(f"throughput {summary['images_per_s']:.1f} img/s, step {summary['step_time_s']:.2f} s, "
                  f"data wait {100 * summary['data_wait_frac']:.0f}%, peak memory {summary['peak_mem_mb']:.0f} MiB, "
                  f"train time {train_seconds:.0f} s")
            print(f"run folder: {self.out}")
        return results

    def _write_metrics_csv(self) -> None:
        path = os.path.join(self.out, "metrics.csv")
        keys = list(dict.fromkeys(k for row in self.history for k in row))   # diag_* appear after a warm-up
        with checkpoint.atomic_open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, restval="")
            w.writeheader()
            w.writerows(self.history)


def _summary(history: list[dict], train_seconds: float, compile_seconds: float) -> dict:
    if not history:
        return {"images_per_s": 0.0, "step_time_s": 0.0, "data_wait_frac": 0.0, "peak_mem_mb": 0.0,
                "train_seconds": train_seconds, "compile_seconds": compile_seconds}
    steps = sum(h["steps"] for h in history)
    t = sum(h["epoch_time_s"] for h in history)
    return {"images_per_s": sum(h["images_per_s"] * h["epoch_time_s"] for h in history) / max(t, 1e-9),
            "step_time_s": t / max(steps, 1),
            "data_wait_frac": sum(h["data_wait_frac"] * h["epoch_time_s"] for h in history) / max(t, 1e-9),
            "peak_mem_mb": max(h["peak_mem_mb"] for h in history),
            "train_seconds": train_seconds, "compile_seconds": compile_seconds}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False,
                file=sys.stderr)


def main(argv=None) -> int:
    """Exit codes: 0 done, 2 an expected error (one message), 3 non-finite loss, 130 / 143 stopped by
    SIGINT / SIGTERM with a resumable checkpoint (wsol_fast.guard)."""
    cfg = parse_args(argv)
    return guard.run_command(lambda: _run(cfg), cfg.cli["debug"])


def _run(cfg: TrainConfig) -> int:
    cli = cfg.cli
    resume_state = None
    fork = cfg.runtime.init_from is not None   # a resumed fork (its saved config names init_from) is a resume
    if fork:
        resume_state = checkpoint.load_checkpoint(cfg.runtime.init_from)
        epochs = resolve(copy.deepcopy(cfg), "cpu").optim.epochs   # resolve() fills in place; no device needed
        error = checkpoint.fork_mismatch(cfg, resume_state, epochs)
        if error:
            print(f"error: --init-from {cfg.runtime.init_from}: {error}", file=sys.stderr)
            return 2
    if cfg.runtime.resume:
        resume_state = checkpoint.load_checkpoint(cfg.runtime.resume)
        cfg = _resumed_config(cfg, resume_state)
    try:   # settings that only clash once resolved (e.g. the profile's resize below --crop-size)
        resolve(copy.deepcopy(cfg), "cpu")
    except ValueError as exc:
        raise runtime.ConfigError(str(exc)) from None
    cfg.runtime.output = run_dir(cfg)   # fixed now: the lock and every rank use this folder
    main_rank = int(os.environ.get("RANK", "0")) == 0
    lock = guard.claim_run_folder(cfg.runtime.output, resume=bool(cfg.runtime.resume),
                                  overwrite=cli["overwrite"]) if main_rank else None
    try:
        trainer = Trainer(cfg, resume_state, fork=fork)
        trainer.fit()
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        if lock is not None:
            lock.release()
    return 0


def _resumed_config(cfg: TrainConfig, state: dict) -> TrainConfig:
    """The run's own settings, with the flags that may change on a resume (guard.RESUME_MAY_CHANGE, e.g.
    --epochs to extend it) taken from this command; any other flag that differs is an error listing them."""
    given = cfg.cli["given"]
    conflicts = guard.resume_conflicts(cfg.to_dict(), state["config"], given)
    if conflicts:
        raise runtime.UserError(
            f"--resume {cfg.runtime.resume}: these settings differ from the run's and cannot change on a "
            f"resume: {'; '.join(conflicts)}. Drop them to continue the run as it was, or fork it with "
            "--init-from to train on with new settings")
    saved = TrainConfig.from_dict(state["config"])
    for section in ("data", "model", "optim", "runtime"):
        mine, theirs = getattr(cfg, section), getattr(saved, section)
        for key in given & guard.RESUME_MAY_CHANGE:
            if hasattr(theirs, key):
                setattr(theirs, key, getattr(mine, key))
    if saved.optim.epochs < state["epoch"] + (state["step"] > 0):
        raise runtime.UserError(f"--epochs {saved.optim.epochs}: the run in {cfg.runtime.resume} has already "
                                f"trained {state['epoch']} epoch(s){' and part of the next' if state['step'] else ''}")
    saved.runtime.resume = cfg.runtime.resume
    saved.runtime.output = cfg.runtime.output or os.path.dirname(os.path.abspath(cfg.runtime.resume))
    saved.cli = cfg.cli
    return saved


if __name__ == "__main__":
    sys.exit(main())
