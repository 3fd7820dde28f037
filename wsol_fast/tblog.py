"""TensorBoard events of a training run, in its run folder (`tensorboard --logdir RUN`).

Written by rank 0 only (`--no-tensorboard` turns it off), through torch.utils.tensorboard:

* `train/loss`, `train/loss_cls`, `train/loss_ca`, `train/loss_fc`: the mean over the steps since the
  previous point, every `log_every` steps (the trainer reads the losses back only then); `train/lr`
  and `train/images_per_s` (the epoch's so far) at the same points; x = the global step;
* `epoch/<key>` for every numeric entry of the epoch's stats, i.e. every column of metrics.csv (losses,
  lr, throughput, val metrics, and whatever the trainer adds, e.g. mask diagnostics); x = the epoch;
* `val/cam_overlays`: a grid of the same val images every epoch: the GT class's score map over the
  image, GT boxes in red, the boxes at that epoch's val threshold in green;
* `config`: the resolved config as text.
"""
from __future__ import annotations

import json
import numbers

import cv2
import numpy as np
import torch

from . import cam, metrics

GRID_IMAGES = 8
TILE = 128   # pixels per grid tile: 8 tiles of 128 x 128 keep each epoch's image small in the event file


class TensorBoardLog:
    """A SummaryWriter on the run folder, or nothing at all when disabled (other ranks, --no-tensorboard)."""

    def __init__(self, out_dir: str, cfg, enabled: bool, data=None, autocast=None):
        self.writer = None
        self.cfg, self.data, self.autocast = cfg, data, autocast
        self._last = None   # (epoch, steps counted, the losses' running mean) at the previous point
        self._grid = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=out_dir)
        text = json.dumps(cfg.to_dict(), indent=2)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)   # a Markdown code block

    def train_step(self, global_step: int, epoch: int, count: int, means, lr: float, images_per_s: float):
        """`means`: the epoch's running means of (total, cls, ca, fc) over its first `count` steps."""
        if self.writer is None:
            return
        last_count, last_means = (0, None)
        if self._last is not None and self._last[0] == epoch and self._last[1] < count:
            last_count, last_means = self._last[1], self._last[2]
        for k, name in enumerate(("loss", "loss_cls", "loss_ca", "loss_fc")):
            total = means[k] * count - (last_means[k] * last_count if last_means else 0.0)
            self.writer.add_scalar(f"train/{name}", total / (count - last_count), global_step)
        self.writer.add_scalar("train/lr", lr, global_step)
        self.writer.add_scalar("train/images_per_s", images_per_s, global_step)
        self._last = (epoch, count, list(means))

    def epoch(self, stats: dict, model=None, threshold: float | None = None) -> None:
        """Every numeric entry of the epoch's stats (x = stats['epoch']) and the CAM overlay grid."""
        if self.writer is None:
            return
        step = int(stats["epoch"])
        for key, value in stats.items():
            if key != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", float(value), step)
        if model is not None and self.data is not None and self.data.val_meta is not None:
            self.writer.add_image("val/cam_overlays", self.cam_grid(model, threshold), step, dataformats="HWC")
        self.writer.flush()

    def _grid_inputs(self, device):
        """The first GRID_IMAGES val images: model input, 224 x 224 pictures, labels, GT boxes at 224."""
        from .data.images import read_image_rgb
        from .data.transforms import eval_resize

        meta = self.data.val_meta
        ids, images = [], []
        for i in meta.image_ids:   # the first GRID_IMAGES that decode (a bad one is the loaders' to report)
            try:
                images.append(read_image_rgb(f"{self.data.image_root}/{i}"))
            except Exception:
                continue
            ids.append(i)
            if len(ids) == GRID_IMAGES:
                break
        batch = torch.from_numpy(np.stack([eval_resize(im, self.cfg.data.crop_size) for im in images]))
        x = cam.normalise(batch, device, bool(self.cfg.runtime.channels_last))
        pictures = [cv2.resize(im, cam.CAM_SIZE, interpolation=cv2.INTER_LINEAR) for im in images]
        labels = torch.tensor([meta.class_labels[i] for i in ids], device=device)
        # Mask datasets (OpenImages' layout) have no boxes and no image sizes: no GT box is drawn there.
        boxes = [cam.gt_boxes_224(meta, i) if i in (meta.boxes or {}) and i in (meta.sizes or {}) else np.zeros((0, 4))
                 for i in ids]
        return x, pictures, labels, boxes

    @torch.no_grad()
    def cam_grid(self, model, threshold: float | None) -> np.ndarray:
        """uint8 RGB grid (2 rows) of the fixed val images with their GT-class score maps and boxes."""
        device = next(model.parameters()).device
        if self._grid is None:
            self._grid = self._grid_inputs(device)
        x, pictures, labels, gt_boxes = self._grid
        was_training = model.training
        model.eval()
        try:
            maps = cam.label_scoremaps(model, x, self.autocast, labels)
        finally:
            model.train(was_training)
        tiles = []
        for picture, scoremap, gt in zip(pictures, maps, gt_boxes):
            heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
            tile = cv2.addWeighted(picture, 0.5, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.5, 0)
            for x0, y0, x1, y1 in np.asarray(gt).reshape(-1, 4):
                cv2.rectangle(tile, (int(x0), int(y0)), (int(x1), int(y1)), (255, 0, 0), 2)
            if threshold is not None:
                for x0, y0, x1, y1 in metrics.boxes_at_threshold(scoremap, threshold):
                    cv2.rectangle(tile, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
            tiles.append(cv2.resize(tile, (TILE, TILE), interpolation=cv2.INTER_AREA))
        while len(tiles) % 2:
            tiles.append(np.zeros_like(tiles[0]))
        half = len(tiles) // 2
        return np.concatenate([np.concatenate(tiles[:half], axis=1), np.concatenate(tiles[half:], axis=1)], axis=0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
