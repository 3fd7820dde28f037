"""python -m wsol_fast.evaluate --checkpoint RUN/best.pt [--split test]

The exact wsolevaluation protocol (SPEC 4) on any saved checkpoint: top-1 classification, top-1
localization (at the CAM threshold chosen on val), GT-known localization, MaxBoxAcc per IoU and
MaxBoxAccV2, with a centre-prior baseline scored by the same protocol; a table, results.json and CAM
overlay PNGs. `evaluate_model` is also what the trainer calls every epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch

from . import metrics, runtime

CAM_SIZE = (224, 224)  # the protocol scores every map at 224 x 224


def _boxes_224(meta, image_id: str) -> np.ndarray:
    w, h = meta.sizes[image_id]
    return metrics.rescale_boxes(meta.boxes[image_id], (w, h), CAM_SIZE)


def _scoremap(cam: np.ndarray) -> np.ndarray:
    """wsolevaluation's order: resize (bicubic) to 224, then min-max normalise."""
    return metrics.normalize_scoremap(metrics.resize_scoremap(cam.astype(np.float32), CAM_SIZE))


@torch.no_grad()
def evaluate_model(model, loader, meta, device, autocast, cfg, info=None, loc_threshold=None,
                   with_baseline=False, overlays=0) -> dict:
    """Score a model on one split. Under DDP each rank scores its shard; the evaluator counts and the
    per-image results are gathered, so every image counts exactly once."""
    info = info or runtime.DistInfo()
    model.eval()
    interval = cfg.runtime.cam_curve_interval
    box_eval = metrics.BoxEvaluator(cam_curve_interval=interval, multi_contour=True)
    per_image, samples = [], []
    for images, labels, ids in loader:
        images = images.to(device, non_blocking=True)
        if cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        with autocast:
            # One backbone pass; the class maps of the GT class (MaxBoxAcc, GT-known) and of the
            # predicted class (top-1 localization) both come from the same features.
            features, _ = model.forward_features(images, use_blocks=False)
            logits = model.logits(features)
            preds = logits.argmax(dim=1)
            cam_gt = model.class_map(features, labels).float().cpu()
            cam_pred = model.class_map(features, preds).float().cpu() if loc_threshold is not None else None
        preds, labels = preds.cpu(), labels.cpu()
        for k, image_id in enumerate(ids):
            label, pred = int(labels[k]), int(preds[k])
            gt_boxes = _boxes_224(meta, image_id)
            gt_map = _scoremap(cam_gt[k].numpy())
            box_eval.accumulate(gt_map, gt_boxes)
            rec = {"id": image_id, "label": label, "pred": pred}
            if loc_threshold is not None:
                pred_map = gt_map if pred == label else _scoremap(cam_pred[k].numpy())
                rec["iou_gt"] = metrics.best_iou_at_threshold(gt_map, gt_boxes, loc_threshold)
                rec["iou_pred"] = metrics.best_iou_at_threshold(pred_map, gt_boxes, loc_threshold)
                rec["coverage"] = box_coverage(gt_map, gt_boxes, loc_threshold)
            per_image.append(rec)
            if len(samples) < overlays:
                samples.append((image_id, gt_map, gt_boxes))
    model.train()

    # Gather: per-image records, evaluator state, overlay samples (rank 0 writes them).
    box_eval = metrics.BoxEvaluator.merge(runtime.all_gather_objects(box_eval, info))
    per_image = [r for part in runtime.all_gather_objects(per_image, info) for r in part]
    n = len(per_image)
    seen = {r["id"] for r in per_image}
    if n != len(meta.image_ids) or seen != set(meta.image_ids):
        raise RuntimeError(f"evaluation saw {n} images ({len(seen)} distinct) but the split has "
                           f"{len(meta.image_ids)}: every image must be scored exactly once")
    box = box_eval.compute()
    out = {
        "num_images": n,
        "top1_cls": 100.0 * sum(r["label"] == r["pred"] for r in per_image) / n,
        "maxboxacc": box["maxboxacc"],
        "maxboxacc_v2": box["maxboxacc_v2"],
        "best_threshold": box["best_threshold"],
        "best_threshold_iou50": box["best_threshold"][50] if 50 in box["best_threshold"] else None,
        "cam_curve_interval": interval,
        # The curves behind the maxima (wsol_fast.plot draws them): box accuracy (%) at every CAM threshold.
        "cam_thresholds": box_eval.thresholds.tolist(),
        "box_acc_curve": {iou: (box_eval.num_correct[r] * 100.0 / box_eval.cnt).tolist()
                          for r, iou in enumerate(box_eval.iou_thresholds)},
    }
    if loc_threshold is not None:
        out["loc_threshold"] = loc_threshold
        out["top1_loc"] = 100.0 * sum(r["label"] == r["pred"] and r["iou_pred"] >= 0.5 for r in per_image) / n
        out["gt_known_loc"] = 100.0 * sum(r["iou_gt"] >= 0.5 for r in per_image) / n
        # How much of the object the (GT-class, largest-component) box covers, and how much of the box is
        # object: a CAM that fires on a discriminative part only has high precision and low coverage.
        out["box_coverage"] = 100.0 * float(np.mean([r["coverage"][0] for r in per_image]))
        out["box_precision"] = 100.0 * float(np.mean([r["coverage"][1] for r in per_image]))
        out["box_area_ratio"] = float(np.median([r["coverage"][2] for r in per_image]))
    if with_baseline:
        out["baselines"] = {"centre_prior": centre_prior(meta, interval)}
    out["_samples"] = samples if info.is_main else []
    return out


def box_coverage(scoremap, gt_boxes, threshold: float) -> tuple[float, float, float]:
    """(|B ∩ G| / |G|, |B ∩ G| / |B|, |B| / |G|) of the largest-component box B at `threshold` and the GT
    box G it overlaps most (pixel areas with the +1 convention); (0, 0, 0) without a box."""
    box = metrics.boxes_at_threshold(scoremap, threshold, multi_contour=False)[0]
    area = lambda b: max(0, b[2] - b[0] + 1) * max(0, b[3] - b[1] + 1)  # noqa: E731
    best = (0.0, 0.0, 0.0)
    for g in np.asarray(gt_boxes):
        inter = area((max(box[0], g[0]), max(box[1], g[1]), min(box[2], g[2]), min(box[3], g[3])))
        if area(box) and inter / area(g) >= best[0]:
            best = (inter / area(g), inter / area(box), area(box) / area(g))
    return best


def centre_prior(meta, interval: float) -> dict:
    """The centred-Gaussian score map (metrics.center_prior_scoremap), scored by the same protocol."""
    ev = metrics.BoxEvaluator(cam_curve_interval=interval, multi_contour=True)
    prior = metrics.center_prior_scoremap(CAM_SIZE)
    for image_id in meta.image_ids:
        ev.accumulate(prior, _boxes_224(meta, image_id))
    r = ev.compute()
    return {"maxboxacc": r["maxboxacc"], "maxboxacc_v2": r["maxboxacc_v2"]}


# ------------------------------------------------------------------------------------- reporting

def _jsonable(results: dict) -> dict:
    def conv(v):
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        return v

    return conv({k: v for k, v in results.items() if not k.startswith("_")})


def write_outputs(results: dict, out_dir: str, data, cfg, name: str = "results.json") -> None:
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(_jsonable(results), fh, indent=2)
    os.replace(tmp, os.path.join(out_dir, name))
    write_overlays(results.get("_samples", []), results.get("loc_threshold"), out_dir, data)


def write_overlays(samples, threshold, out_dir: str, data) -> None:
    """CAM heatmap over the image, GT boxes in red, predicted boxes (at the val threshold) in green."""
    if not samples:
        return
    folder = os.path.join(out_dir, "overlays")
    os.makedirs(folder, exist_ok=True)
    for image_id, scoremap, gt_boxes in samples:
        path = os.path.join(data.image_root, image_id)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        image = cv2.resize(image, CAM_SIZE) if image is not None else np.zeros((*CAM_SIZE, 3), np.uint8)
        heat = cv2.applyColorMap((scoremap * 255).astype(np.uint8), cv2.COLORMAP_JET)
        canvas = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
        for x0, y0, x1, y1 in np.asarray(gt_boxes).reshape(-1, 4):
            cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), (0, 0, 255), 2)
        if threshold is not None:
            for x0, y0, x1, y1 in metrics.boxes_at_threshold(scoremap, threshold):
                cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
        safe = image_id.replace("/", "__").rsplit(".", 1)[0] + ".png"
        cv2.imwrite(os.path.join(folder, safe), canvas)


def print_table(results: dict, title: str) -> None:
    rows = [("top-1 classification", results.get("top1_cls"))]
    if "top1_loc" in results:
        rows += [("top-1 localization", results["top1_loc"]), ("GT-known localization", results["gt_known_loc"])]
    for iou, acc in results["maxboxacc"].items():
        rows.append((f"MaxBoxAcc @ IoU {iou}", acc))
    rows.append(("MaxBoxAccV2", results["maxboxacc_v2"]))
    prior = results.get("baselines", {}).get("centre_prior")
    print(f"\n{title}  ({results['num_images']} images)")
    print(f"{'metric':<26}{'model':>10}" + (f"{'centre prior':>15}" if prior else ""))
    for name, value in rows:
        base = ""
        if prior and name.startswith("MaxBoxAcc @"):
            base = f"{prior['maxboxacc'][int(name.split()[-1])]:>15.2f}"
        elif prior and name == "MaxBoxAccV2":
            base = f"{prior['maxboxacc_v2']:>15.2f}"
        print(f"{name:<26}{value:>10.2f}{base}")


# ------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    from .data.dali import BadImageError
    from .data.metadata import MetadataError

    p = argparse.ArgumentParser(prog="python -m wsol_fast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by wsol_fast.train")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--output", default=None, help="folder for results and overlays (default: the checkpoint's)")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--metadata-root", default=None)
    p.add_argument("--cam-curve-interval", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--num-overlays", type=int, default=16)
    a = p.parse_args(argv)

    try:
        return _evaluate_checkpoint(a)
    except (MetadataError, BadImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _evaluate_checkpoint(a) -> int:
    from .config import TrainConfig, resolve
    from .data.pipeline import prepare_data
    from .models import create_model

    state = runtime.load_checkpoint(a.checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    for key in ("data_root", "metadata_root"):
        if getattr(a, key):
            setattr(cfg.data, key, getattr(a, key))
    if a.cam_curve_interval:
        cfg.runtime.cam_curve_interval = a.cam_curve_interval
    info, device = runtime.init_distributed(a.device)
    resolve(cfg, device.type)
    data = prepare_data(cfg, info, device, splits=("val", "test") if a.split == "test" else ("val",))
    model = create_model(cfg.model.backbone, state["num_classes"], method=cfg.model.method, pretrained=None,
                         **cfg.model.overrides())
    model.load_state_dict(state["model"])
    model.to(device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = runtime.autocast_context(device, runtime.resolve_amp(cfg.runtime.amp, device))
    # The CAM threshold chosen on val at this checkpoint's own epoch (last.pt: the last epoch's; best.pt: the
    # best epoch's); older checkpoints without it store the best epoch's in "best".
    threshold = next((h.get("val_threshold") for h in reversed(state.get("history") or [])
                      if h.get("epoch") == state["epoch"]), None)
    if threshold is None and state["epoch"] == (state.get("best") or {}).get("epoch"):
        threshold = state["best"].get("threshold")
    if threshold is None or cfg.runtime.cam_curve_interval != state["config"]["runtime"]["cam_curve_interval"]:
        # Choose the CAM threshold on val (train-fullsup), as the protocol prescribes.
        val = evaluate_model(model, data.val_loader, data.val_meta, device, autocast, cfg, info)
        threshold = val["best_threshold_iou50"]
    loader, meta = (data.test_loader, data.test_meta) if a.split == "test" else (data.val_loader, data.val_meta)
    results = evaluate_model(model, loader, meta, device, autocast, cfg, info, loc_threshold=threshold,
                             with_baseline=True, overlays=a.num_overlays)
    if info.is_main:
        out = a.output or os.path.dirname(os.path.abspath(a.checkpoint))
        write_outputs(results, out, data, cfg, name=f"results_{a.split}.json" if a.split != "test" else
                      "results.json")
        print_table(results, f"{cfg.model.backbone} / {cfg.model.method} on {cfg.data.dataset} ({a.split} split)")
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
