"""Class activation maps: from a model to score maps, boxes and pictures. The one CAM path that train
(validation, TensorBoard), evaluate and predict share:

* `normalise`: uint8 images -> the model's input (the loaders' arithmetic);
* `class_scoremaps` / `label_scoremaps`: the class maps of the top-k / given classes, blocks bypassed;
* `to_scoremap`: wsolevaluation's order, bicubic resize to CAM_SIZE then min-max normalisation;
* `gt_boxes_224`: an image's GT boxes at CAM_SIZE; boxes at a threshold are `metrics.boxes_at_threshold`
  (the protocol's own box rule);
* `overlay` (one picture at the image's size, predict) and `write_overlays` (evaluation's overlay PNGs).
"""
from __future__ import annotations

import contextlib
import os

import cv2
import numpy as np
import torch

from . import metrics
from .data.images import IMAGENET_MEAN, IMAGENET_STD

CAM_SIZE = (224, 224)  # the protocol scores every map at 224 x 224


@contextlib.contextmanager
def true_fp32():
    """TF32 off inside (torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32), both
    flags restored to their values on the way out, whatever happens inside. No effect on CPU computations."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def to_scoremap(cam: np.ndarray) -> np.ndarray:
    """wsolevaluation's order: resize (bicubic) to 224, then min-max normalise."""
    return metrics.normalize_scoremap(metrics.resize_scoremap(cam.astype(np.float32), CAM_SIZE))


def gt_boxes_224(meta, image_id: str) -> np.ndarray:
    w, h = meta.sizes[image_id]
    return metrics.rescale_boxes(meta.boxes[image_id], (w, h), CAM_SIZE)


def normalise(batch: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W, normalised by the loaders' arithmetic (x - 255 mean)
    * 1 / (255 std), in the memory format the evaluation runs the model in."""
    mean = (torch.tensor(IMAGENET_MEAN) * 255).view(1, 3, 1, 1).to(device)
    scale = (1.0 / (torch.tensor(IMAGENET_STD) * 255)).view(1, 3, 1, 1).to(device)
    x = batch.to(device).permute(0, 3, 1, 2).to(torch.float32).sub_(mean).mul_(scale)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.no_grad()
def class_scoremaps(model, images: torch.Tensor, autocast, top_k: int):
    """(probabilities [N, k], classes [N, k], score maps [N][k] of 224 x 224 float64): the evaluation's
    CAM path (blocks bypassed, class maps of the same features) for the k most probable classes."""
    with autocast:
        features, _ = model.forward_features(images, use_blocks=False)
        logits = model.logits(features)
    probs, classes = torch.softmax(logits.float(), dim=1).topk(top_k, dim=1)
    maps = []
    with autocast:
        cams = [model.class_map(features, classes[:, j]).float().cpu() for j in range(top_k)]
    for i in range(images.shape[0]):
        maps.append([to_scoremap(cams[j][i].numpy()) for j in range(top_k)])
    return probs.cpu(), classes.cpu(), maps


@torch.no_grad()
def label_scoremaps(model, images: torch.Tensor, autocast, labels: torch.Tensor) -> list[np.ndarray]:
    """224 x 224 score maps (float64) of the given class of each image, by the same path."""
    with autocast:
        features, _ = model.forward_features(images, use_blocks=False)
        cams = model.class_map(features, labels).float().cpu()
    return [to_scoremap(cam.numpy()) for cam in cams]


def overlay(image_rgb: np.ndarray, scoremap: np.ndarray, boxes, label: str, min_side: int = 320,
            max_side: int = 1024) -> np.ndarray:
    """BGR picture: the score map as a JET heatmap over the image, the boxes in green, `label` on the
    largest box. Drawn at the image's size, scaled so that its longer side lies in [min_side, max_side]
    (a small image is enlarged so that the label stays legible)."""
    h, w = image_rgb.shape[:2]
    scale = min(max(1.0, min_side / max(h, w)), max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image_rgb if scale == 1 else cv2.resize(
        image_rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    heat = cv2.resize(scoremap.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    canvas = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
    thick = max(1, round(max(size) / 200))
    font = max(0.4, max(size) / 700)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    largest = int(np.argmax((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)))
    for n, (x0, y0, x1, y1) in enumerate(boxes * scale):
        p0, p1 = (int(x0), int(y0)), (int(x1), int(y1))
        cv2.rectangle(canvas, p0, p1, (0, 255, 0), thick)
        if n == largest and label:
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, max(1, thick // 2))
            ty = p0[1] - base - 2 if p0[1] - th - base - 2 >= 0 else p0[1] + th + 2
            tx = min(p0[0], max(0, size[0] - tw))
            cv2.rectangle(canvas, (tx, ty - th - 1), (tx + tw, ty + base), (0, 255, 0), -1)
            cv2.putText(canvas, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), max(1, thick // 2),
                        cv2.LINE_AA)
    return canvas


def write_overlays(samples, threshold, out_dir: str, data) -> None:
    """CAM heatmap over the image, the GT in red (boxes, or the outline of the GT mask), the prediction
    at the val threshold in green (the boxes, or the outline of the region scoring >= the threshold)."""
    if not samples:
        return
    folder = os.path.join(out_dir, "overlays")
    os.makedirs(folder, exist_ok=True)
    for image_id, scoremap, gt in samples:
        path = os.path.join(data.image_root, image_id)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        image = cv2.resize(image, CAM_SIZE) if image is not None else np.zeros((*CAM_SIZE, 3), np.uint8)
        heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
        canvas = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
        if isinstance(gt, tuple):           # (GT mask, ignore mask) of a mask dataset
            _outline(canvas, gt[0], (0, 0, 255))
            if threshold is not None:
                _outline(canvas, scoremap >= threshold, (0, 255, 0))
        else:
            for x0, y0, x1, y1 in np.asarray(gt).reshape(-1, 4):
                cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), (0, 0, 255), 2)
            if threshold is not None:
                for x0, y0, x1, y1 in metrics.boxes_at_threshold(scoremap, threshold):
                    cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
        safe = image_id.replace("/", "__").rsplit(".", 1)[0] + ".png"
        cv2.imwrite(os.path.join(folder, safe), canvas)


def _outline(canvas: np.ndarray, mask: np.ndarray, colour) -> None:
    contours = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    cv2.drawContours(canvas, contours, -1, colour, 1)
