"""python -m wsol_fast.train --backbone inceptionv3

Trains a WSOL model (ICL, ADL or plain CAM) on wsolevaluation-format data, or on the built-in dataset
when no data flags are given, evaluates every epoch on val, and ends with the test evaluation, a
results table, results.json and CAM overlays. Works under `torchrun --nproc_per_node=N`.

Reading order: main -> _run (resume or fork, the run folder's lock) -> Trainer: __init__ (data, model,
optimizer, checkpoint state) -> fit (epochs of [train_epoch, validate, save]) -> test. Around the loop,
not in it: the flags (train_args.py), checkpoints (checkpoint.py), stop signals and failures
(guard.RunGuard), metrics.csv and the data issues (runlog.py), DDP and compilation (runtime.py). The
step avoids a host sync: losses are summed on the device and read back at the log interval.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch

from . import build, checkpoint, diagnostics, elastic, errors, figures, files, guard, runlog, runlock, runtime, signals
from .config import TrainConfig, icl_form, resolve
from .data import RunData, prepare_data
from .evaluation import evaluate_model, localization_score, print_table, write_outputs
from .losses import WSOLLoss
from .optim import build_optimizer, build_scheduler
from .tblog import TensorBoardLog
from .train_args import parse_args, resumed_config, run_dir

NonFiniteLoss = guard.NonFiniteLoss


class Trainer:
    def __init__(self, cfg: TrainConfig, resume_state: dict | None = None, fork: bool = False):
        """resume_state: a checkpoint to continue (resume) or, with fork=True, to start from (--init-from)."""
        self.info, self.device = runtime.init_distributed(cfg.runtime.device)
        self.cfg = c = resolve(cfg, self.device.type)
        self.out = run_dir(c)
        if self.info.is_main:
            os.makedirs(self.out, exist_ok=True)
            files.atomic_write(json.dumps(c.to_dict(), indent=2), os.path.join(self.out, "config.json"))
            if c.model.method == "icl":
                print(f"ICL form: {icl_form(c)}")
        runtime.seed_everything(c.runtime.seed)
        self.amp_dtype = runtime.resolve_amp(c.runtime.amp, self.device)
        self.data: RunData = prepare_data(c.data, self.info, self.device, batch_size=c.optim.batch_size,
                                          seed=c.runtime.seed, channels_last=bool(c.runtime.channels_last),
                                          amp_dtype=self.amp_dtype)
        self.issues = runlog.DataIssues(self.out, self.data.bad_images, self.info.is_main)
        if self.info.is_main and self.data.bad_images:
            print(f"skipped {len(self.data.bad_images)} unreadable images (--skip-bad-images; listed in "
                  f"{os.path.join(self.out, 'skipped_images.txt')})")
            self.issues.record([])

        pretrained = {None: None, "none": None, "imagenet": True}.get(c.model.pretrained, c.model.pretrained)
        self.raw_model = build.build_model(   # uncompiled, unwrapped: what checkpoints save
            c, self.data.num_classes, self.device, pretrained=pretrained, keep_classifier=c.data.dataset == "ILSVRC",
            sync_bn=c.runtime.sync_bn and self.info.enabled)
        self.autocast = runtime.autocast_context(self.device, self.amp_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer, self.scheduler = build_optimizer(self.raw_model, c)
        o = c.optim
        self.criterion = WSOLLoss(lambda_ca=o.lambda_ca, lambda_fc=o.lambda_fc, margin=o.margin, fc_norm=o.fc_norm,
                                  fc_reduction=o.fc_reduction)
        self.start_epoch, self.start_step, self.best = 0, 0, {"maxboxacc_v2": -1.0, "epoch": -1}
        self.history: list[dict] = []
        self.partial, self._acc = None, None   # the interrupted epoch's row so far (save mid-epoch, resume)
        if resume_state is not None and fork:   # this config's settings from the checkpoint's epoch on
            self.scheduler = checkpoint.fork(resume_state, c.runtime.init_from, c, self.raw_model, self.optimizer,
                                             self.scaler, self.data.num_classes,
                                             lambda opt, epoch: build_scheduler(opt, o, epoch))
            self.start_epoch = resume_state["epoch"]
        elif resume_state is not None:
            checkpoint.resume(resume_state, c.runtime.resume, self.raw_model, self.optimizer, self.scheduler,
                              self.scaler, self.data.num_classes)
            self.start_epoch, self.start_step = resume_state["epoch"], resume_state["step"]
            self.best, self.history = resume_state["best"], resume_state["history"]
            self.partial = resume_state.get("partial")
        # Warm-up epochs leave the blocks' parameters without gradients (DDP must know).
        self.train_model = runtime.wrap_for_training(self.raw_model, self.info, self.device, c.runtime.compile,
                                                     find_unused_parameters=o.block_warmup_epochs > 0)
        self.compile_timer = runtime.FirstStepTimer(c.runtime.compile not in (None, "off"), self.device,
                                                    report=self.info.is_main)
        self.train_loader = self.data.train_loader
        self.guard = guard.RunGuard(self.save, self.out, self.info.is_main)
        self.hooks = elastic.StepHooks(self.info, self.device, self.guard, self.save, c.runtime.checkpoint_every,
                                       c.runtime.log_every)   # step checkpoints; under torchrun, one stop
        self.tb = TensorBoardLog(self.out, c, self.info.is_main and c.runtime.tensorboard, self.data, self.autocast)

    def save(self, name: str, epoch: int, step: int) -> None:
        if self.info.is_main:
            checkpoint.save(os.path.join(self.out, name), self.raw_model, self.optimizer, self.scheduler,
                            self.scaler, epoch=epoch, step=step, best=self.best, history=self.history,
                            config=self.cfg.to_dict(), model_config=getattr(self.raw_model, "config", {}),
                            num_classes=self.data.num_classes, partial=self._partial_row(epoch, step))

    def save_epoch(self, epoch: int, best: bool) -> None:
        """The epoch-end checkpoint: last.pt; when the epoch is the best so far, best.pt written first (as
        before: a crash between the two leaves last.pt at the previous epoch, to be resumed) and last.pt
        then linked to it, so the same bytes are not written twice."""
        if not best:
            self.save("last.pt", epoch, 0)
            return
        self.save("best.pt", epoch, 0)
        if self.info.is_main:
            files.atomic_link(os.path.join(self.out, "best.pt"), os.path.join(self.out, "last.pt"))

    def _partial_row(self, epoch: int, step: int) -> dict | None:
        """The metrics-row sums of epoch `epoch` up to `step` (a save mid-epoch), or None: what the resumed
        epoch's row starts from, so that metrics.csv counts every step of it (runlog.write_metrics_csv)."""
        a = self._acc
        if step == 0 or a is None or a["epoch"] != epoch or a["step"] != step:
            return None
        return {"epoch": epoch, "step": step, "steps": a["counted"] + step - a["start"],
                "sums": a["sums"].tolist(), "diag": None if a["diag"] is None else a["diag"].tolist(),
                "images": a["images"], "wait": a["wait"], "seconds": a["seconds"] + time.perf_counter() - a["t0"]}

    def train_epoch(self, epoch: int, start_step: int) -> dict:
        c, dev, world = self.cfg, self.device, self.info.world_size
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
        p, self.partial = self.partial, None   # a resumed epoch: its row goes on from the steps done before
        p = p if p is not None and start_step and (p["epoch"], p["step"]) == (epoch, start_step) else None
        counted, seconds = (p["steps"], p["seconds"]) if p else (0, 0.0)
        if p:
            sums = torch.tensor(p["sums"], dtype=torch.float32, device=dev)
            diag = None if p["diag"] is None else torch.tensor(p["diag"], device=dev)
            n_img, wait = p["images"], p["wait"]
        self._acc = {"epoch": epoch, "start": start_step, "counted": counted, "sums": sums, "diag": diag,
                     "images": n_img, "wait": wait, "seconds": seconds, "t0": t0, "step": start_step}
        warmup = "" if self.raw_model.blocks_enabled or not len(self.raw_model.attention_blocks) else \
            " (block warm-up: blocks off)"
        bar = runlog.progress(steps, f"epoch {epoch + 1}/{c.optim.epochs}{warmup}", self.info.is_main)
        it, step = iter(loader), start_step
        for i in range(steps):
            t_wait = time.perf_counter()
            batch = next(it, None)
            if batch is None:   # every image of the last batch was skipped (--skip-bad-images)
                break
            images = batch[0].to(dev, non_blocking=True)
            labels = batch[1].to(dev, non_blocking=True)
            if c.runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            wait += time.perf_counter() - t_wait
            with self.compile_timer:
                with self.autocast:
                    output = self.train_model(images)
                    losses = self.criterion(output, labels)
                loss = losses["total"]
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            with torch.no_grad():
                sums += torch.stack([losses[k].detach().float() for k in ("total", "cls", "ca", "fc")])
                step_diag = diagnostics.block_stats(output, c.optim.margin)
                if step_diag is not None:
                    diag = step_diag if diag is None else diag + step_diag
                nonfinite |= ~torch.isfinite(loss.detach())
            n_img += images.shape[0]
            step += 1
            self._acc.update(diag=diag, images=n_img, wait=wait, step=step)
            self.guard.progress = (epoch, step, nonfinite)
            self.hooks.after_step(epoch, step, last=i + 1 == steps)
            if (i + 1) % c.runtime.log_every == 0 or i + 1 == steps or self.guard.signals.stop:
                if bool(nonfinite):  # one host sync per log interval, not per step
                    raise self.guard.nonfinite(epoch, step)
                avg, lr = (sums / (counted + i + 1)).tolist(), self.optimizer.param_groups[0]["lr"]
                img_s = n_img * world / (seconds + time.perf_counter() - t0)
                bar.set_postfix(loss=f"{avg[0]:.3f}", lr=f"{lr:.2g}", img_s=f"{img_s:.1f}", **({} if diag is None else
                                {"fg": "/".join(f"{v:.2f}" for v in (diag[:, 0] / (counted + i + 1)).tolist())}))
                self.tb.train_step(epoch * len(loader) + step, epoch, i + 1, avg, lr, img_s)
            bar.update(1)
            if self.guard.signals.stop:   # a signal arrived: this step is done, its weights are saved next
                bar.close()
                raise signals.Stopped(step)
        bar.close()
        runtime.synchronize(dev)
        self._acc = None
        elapsed = seconds + time.perf_counter() - t0   # a resumed epoch: its time before the stop too
        steps += counted
        avg = (sums / max(steps, 1)).tolist()
        self.epoch_diag = None if diag is None else diag / max(steps, 1)
        return {"epoch": epoch + 1, "loss": avg[0], "loss_cls": avg[1], "loss_ca": avg[2], "loss_fc": avg[3],
                "lr": self.optimizer.param_groups[0]["lr"], "steps": steps,
                "images_per_s": n_img * world / max(elapsed, 1e-9), "step_time_s": elapsed / max(steps, 1),
                "data_wait_frac": wait / max(elapsed, 1e-9), "epoch_time_s": elapsed,
                "peak_mem_mb": runtime.peak_memory_mb(dev), **diagnostics.as_columns(self.epoch_diag)}

    def fit(self) -> dict:
        c, t_run = self.cfg, time.perf_counter()
        loaders = (self.train_loader, self.data.val_loader, self.data.test_loader)
        # SIGINT / SIGTERM: finish the step, save, exit 130 / 143; signals during the save wait for it.
        with self.guard:
            for epoch in range(self.start_epoch, c.optim.epochs):
                start_step = self.start_step if epoch == self.start_epoch else 0
                with self.guard.epoch(epoch, start_step):   # a stop saves last.pt; a failure keeps the steps done
                    stats = self.train_epoch(epoch, start_step)
                self.scheduler.step()
                with self.guard.saved_on_failure("last.pt", epoch + 1, f"epoch {epoch + 1}'s training"):
                    val = evaluate_model(self.raw_model, self.data.val_loader, self.data.val_meta, self.device,
                                         self.autocast, c, self.info)
                self.issues.record(loaders)
                key, score, threshold = localization_score(val)   # MaxBoxAccV2, or PxAP on masks
                stats.update({"val_top1_cls": val["top1_cls"], f"val_{key}": score, "val_threshold": threshold})
                if "maxboxacc_v1" in val:   # GT-known loc at this val pass's own threshold (the one-box rule)
                    stats["val_gt_known_loc"] = val["maxboxacc_v1"]
                self.history.append(stats)
                improved = score > self.best.get(key, -1.0)
                if improved:
                    self.best = {key: score, "epoch": epoch + 1, "threshold": threshold}
                self.save_epoch(epoch + 1, improved)
                if self.info.is_main:
                    runlog.write_metrics_csv(self.history, self.out)
                    self.tb.epoch(stats, self.raw_model, threshold)
                    print(f"epoch {epoch + 1}: loss {stats['loss']:.3f}  {stats['images_per_s']:.1f} img/s  "
                          f"data wait {100 * stats['data_wait_frac']:.0f}%  val top-1 {val['top1_cls']:.1f}  "
                          f"val {'PxAP' if key == 'pxap' else 'MaxBoxAccV2'} {score:.1f}")
                    if self.epoch_diag is not None:
                        print(f"  {diagnostics.summary(self.epoch_diag)}")
                self.hooks.agree_stop()
                if self.guard.signals.stop:   # arrived during validation or the save: the epoch-end save stands
                    self.guard.exit_stopped(f"end of epoch {epoch + 1}")
        self.tb.close()
        if not c.runtime.test:   # --no-test: a tuning trial; test stays unseen
            if self.info.is_main:
                print(f"no test evaluation (--no-test); score it later with --resume "
                      f"{os.path.join(self.out, 'last.pt')} --test")
            return {}
        # The test pass writes nothing until results.json (atomically): a signal there just stops it.
        with signals.StopSignals(enabled=self.info.is_main, immediate=True):
            try:
                return self.test(time.perf_counter() - t_run)
            except Exception:
                self.issues.record(loaders)   # skipped_images.txt lists what the failing pass skipped
                if self.info.is_main:
                    print(f"the test evaluation failed; the trained checkpoints in {self.out} are kept "
                          f"(--resume {os.path.join(self.out, 'last.pt')} runs it again)", file=sys.stderr)
                raise

    def test(self, train_seconds: float) -> dict:
        c = self.cfg
        ddp = runtime.replica_checksums(self.raw_model, self.info)   # before best.pt replaces the weights
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
        self.issues.record((self.train_loader, self.data.val_loader, self.data.test_loader))
        if ddp is not None:
            results["ddp"] = ddp
        summary = runlog.summary(self.history, train_seconds, self.compile_timer.seconds)
        results.update(telemetry=summary, best_val=self.best, eval_checkpoint=c.runtime.eval_checkpoint)
        if self.info.is_main:
            write_outputs(results, self.out, self.data, c)
            figures.plot_run(self.out, quiet=True)   # the protocol's figures as PNGs in the run folder
            print_table(results, f"{c.model.backbone} / {c.model.method} on {c.data.dataset} (test split)")
            print(f"throughput {summary['images_per_s']:.1f} img/s, step {summary['step_time_s']:.2f} s, "
                  f"data wait {100 * summary['data_wait_frac']:.0f}%, peak memory {summary['peak_mem_mb']:.0f} MiB, "
                  f"train time {train_seconds:.0f} s")
            print(f"run folder: {self.out}")
        return results


def main(argv=None) -> int:
    """Exit codes: 0 done, 2 an expected error (one message), 3 non-finite loss, 130 / 143 stopped by
    SIGINT / SIGTERM with a resumable checkpoint (wsol_fast.guard)."""
    cfg = parse_args(argv)
    return errors.run_command(lambda: _run(cfg), cfg.cli["debug"])


def _run(cfg: TrainConfig) -> int:
    elastic.resume_after_restart(cfg, run_dir)   # a group that torchrun restarted continues RUN/last.pt
    resume_state = None
    fork = cfg.runtime.init_from is not None   # a resumed fork (its saved config names init_from) is a resume
    if fork:
        resume_state = checkpoint.load_checkpoint(cfg.runtime.init_from)
        resolved = resolve(copy.deepcopy(cfg), "cpu")   # resolve() fills in place; no device needed
        error = checkpoint.fork_mismatch(resolved, resume_state, resolved.optim.epochs)
        if error:
            print(f"error: --init-from {cfg.runtime.init_from}: {error}", file=sys.stderr)
            return 2
    if cfg.runtime.resume:
        resume_state = checkpoint.load_checkpoint(cfg.runtime.resume)
        cfg = resumed_config(cfg, resume_state)
    try:   # settings that only clash once resolved (e.g. the profile's resize below --crop-size)
        resolve(copy.deepcopy(cfg), "cpu")
    except ValueError as exc:
        raise errors.ConfigError(str(exc)) from None
    cfg.runtime.output = run_dir(cfg)   # fixed now: the lock and every rank use this folder
    main_rank = int(os.environ.get("RANK", "0")) == 0
    lock = runlock.claim_run_folder(cfg.runtime.output, resume=bool(cfg.runtime.resume),
                                  overwrite=cfg.cli["overwrite"]) if main_rank else None
    trainer = None
    try:
        trainer = Trainer(cfg, resume_state, fork=fork)
        trainer.fit()
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        if trainer is not None:   # its loader workers end now, not at the interpreter's exit (data/opencv.py)
            trainer.data.close()
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
