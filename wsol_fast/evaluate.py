"""python -m wsol_fast.evaluate --checkpoint RUN/best.pt [--split test] [--save-scoremaps DIR]
python -m wsol_fast.evaluate --scoremap-root DIR --metadata-root M --dataset D --split test [--workers N]

The exact wsolevaluation protocol (SPEC 4) on any saved checkpoint: top-1 classification, top-1
localization (at the CAM threshold chosen on val), GT-known localization, MaxBoxAcc per IoU and
MaxBoxAccV2 on box datasets, PxAP on mask datasets (OpenImages), with a centre-prior baseline scored
by the same protocol; a table, results.json and CAM overlay PNGs. `evaluate_model` is also what the
trainer calls every epoch. With `--scoremap-root` it scores any method's saved score maps instead,
with no model (wsol_fast/scoremaps.py).

The top-1 localization / GT-known threshold is chosen on val by the rule that makes their box: one box per
image, the largest contour's (wsolevaluation's multi_contour_eval=False, evaluation.py lines 148-149), scored
at IoU 50. Its box-accuracy curve is wsolevaluation's MaxBoxAcc V1 curve (config.py's box_v2_metric=False:
largest contour, IoU 50; evaluation.py BoxEvaluator.compute), and the threshold is its first maximum
(`loc_best_threshold`; the curve's maximum is reported as `maxboxacc_v1`). MaxBoxAccV2 (all contours, IoU
30/50/70) is unchanged and is what val selects best.pt by.

CAMs are computed in fp32 whatever the training precision: wsolevaluation's CAMComputer runs the
model's CAM forward without autocast, and a bf16 map differs in the low bits that decide its uint8
quantisation. On CUDA that means true fp32 too: TF32 (10-bit mantissa products in matmuls and cuDNN
convolutions, which PyTorch allows for cuDNN by default and a trainer may allow for matmuls) is switched
off while the CAMs are computed (`true_fp32`), and the flags are restored afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import cv2
import numpy as np
import torch

from . import checkpoint, eval_parallel, metrics, runtime, scoremaps

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


def _boxes_224(meta, image_id: str) -> np.ndarray:
    w, h = meta.sizes[image_id]
    return metrics.rescale_boxes(meta.boxes[image_id], (w, h), CAM_SIZE)


def _mask_root(cfg, meta) -> str:
    """Where prepare_data found the masks, else --mask-root, else the data root (wsolevaluation's
    default: masks beside the images)."""
    return meta.mask_root or getattr(cfg.data, "mask_root", None) or cfg.data.data_root


def _scoremap(cam: np.ndarray) -> np.ndarray:
    """wsolevaluation's order: resize (bicubic) to 224, then min-max normalise."""
    return metrics.normalize_scoremap(metrics.resize_scoremap(cam.astype(np.float32), CAM_SIZE))


@torch.no_grad()
def evaluate_model(model, loader, meta, device, autocast, cfg, info=None, loc_threshold=None,
                   with_baseline=False, overlays=0, save_scoremaps=None, mask_root=None, workers: int = 1) -> dict:
    """Score a model on one split. Under DDP each rank scores its shard; the evaluator counts and the
    per-image results are gathered, so every image counts exactly once.

    `autocast` is not used for the CAMs: they are computed in fp32, as wsolevaluation computes them
    (the argument stays for the callers' sake), with TF32 off on CUDA (true_fp32). Mask datasets (`meta.has_masks`) are scored by PxAP
    with masks read under `mask_root` (default: --mask-root, else the data root); box datasets by
    MaxBoxAcc. `save_scoremaps`: a folder that receives every GT-class map as wsolevaluation writes
    them (scoremaps.save_scoremap). `workers` > 1: the maps' box (or mask) search runs in that many processes
    of this rank, batch by batch while the next CAMs are computed, with the same results (eval_parallel)."""
    info = info or runtime.DistInfo()
    model.eval()
    interval = cfg.runtime.cam_curve_interval
    use_masks = meta.has_masks
    ctx = {"meta": meta, "use_masks": use_masks, "interval": interval, "with_baseline": with_baseline,
           "mask_root": (mask_root or _mask_root(cfg, meta)) if use_masks else None, "loc_threshold": loc_threshold,
           "save_scoremaps": save_scoremaps, "overlays": overlays,
           "prior": metrics.center_prior_scoremap(CAM_SIZE) if use_masks and with_baseline else None}
    # The CAMs here, the box (or mask) search of each batch inline or in `workers` processes (eval_parallel).
    scorer = eval_parallel.BatchScorer(_score_batch, _new_evaluators, ctx, workers)
    for images, labels, ids in loader:
        images = images.to(device, non_blocking=True)
        if cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        # fp32, no autocast (wsolevaluation's CAMComputer). One backbone pass; the class maps of the GT
        # class (MaxBoxAcc, GT-known, PxAP) and of the predicted class (top-1 loc) share the features.
        # True fp32 on CUDA as well: TF32 off for this forward (true_fp32).
        with true_fp32():
            features, _ = model.forward_features(images, use_blocks=False)
            logits = model.logits(features)
            preds = logits.argmax(dim=1)
            cam_gt = model.class_map(features, labels).float().cpu()
            cam_pred = (model.class_map(features, preds).float().cpu()
                        if loc_threshold is not None and not use_masks else None)
        scorer.submit((list(ids), labels.cpu().numpy(), preds.cpu().numpy(), cam_gt.numpy(),
                       None if cam_pred is None else cam_pred.numpy()))
    model.train()
    evaluators, per_image, samples = scorer.result()
    part_boxes = getattr(meta, "part_boxes", None)
    if use_masks:
        mask_eval, prior_eval = evaluators
    else:
        box_eval, one_box_eval = evaluators

    # Gather: per-image records, evaluator state, overlay samples (rank 0 writes them).
    if use_masks:
        mask_eval = metrics.MaskEvaluator.merge(runtime.all_gather_objects(mask_eval, info))
        if prior_eval is not None:
            prior_eval = metrics.MaskEvaluator.merge(runtime.all_gather_objects(prior_eval, info))
    else:
        box_eval = metrics.BoxEvaluator.merge(runtime.all_gather_objects(box_eval, info))
        one_box_eval = metrics.BoxEvaluator.merge(runtime.all_gather_objects(one_box_eval, info))
    per_image = [r for part in runtime.all_gather_objects(per_image, info) for r in part]
    # In the split's order, so that the means below add up alike whatever the number of ranks (bit for bit).
    place = {image_id: k for k, image_id in enumerate(meta.image_ids)}
    per_image.sort(key=lambda r: place.get(r["id"], len(place)))
    # Images that failed to decode during this pass and were skipped (--skip-bad-images) are not scored.
    skipped = {i for part in runtime.all_gather_objects(sorted(getattr(loader, "skipped", {})), info) for i in part}
    expected = set(meta.image_ids) - skipped
    n = len(per_image)
    seen = {r["id"] for r in per_image}
    if not expected:
        raise runtime.UserError(f"every image of the {meta.split} split ({len(meta.image_ids)}) failed to decode "
                                "and was skipped: nothing is left to score")
    if n != len(expected) or seen != expected:
        raise RuntimeError(f"evaluation saw {n} images ({len(seen)} distinct) but the split has "
                           f"{len(expected)}: every image must be scored exactly once")
    out = {
        "num_images": n,
        "top1_cls": 100.0 * sum(r["label"] == r["pred"] for r in per_image) / n,
        "cam_curve_interval": interval,
    }
    if use_masks:
        out.update(scoremaps.mask_results(mask_eval))
        # Overlays outline the map at the threshold chosen on val (else this split's best PR point).
        out["loc_threshold"] = loc_threshold if loc_threshold is not None else out["pxap_best_threshold"]
        if prior_eval is not None:
            out["baselines"] = {"centre_prior": {"pxap": prior_eval.compute()}}
        out["_samples"] = samples if info.is_main else []
        return out
    box = box_eval.compute()
    one_box = one_box_eval.compute()
    out.update({
        "maxboxacc": box["maxboxacc"],
        "maxboxacc_v2": box["maxboxacc_v2"],
        "best_threshold": box["best_threshold"],
        "best_threshold_iou50": box["best_threshold"][50] if 50 in box["best_threshold"] else None,
        # The curves behind the maxima (wsol_fast.plot draws them): box accuracy (%) at every CAM threshold.
        "cam_thresholds": box_eval.thresholds.tolist(),
        "box_acc_curve": {iou: (box_eval.num_correct[r] * 100.0 / box_eval.cnt).tolist()
                          for r, iou in enumerate(box_eval.iou_thresholds)},
        # The one-box rule of top-1 loc / GT-known (module docstring): its curve's max and first argmax.
        "maxboxacc_v1": one_box["maxboxacc_v1"],
        "loc_best_threshold": one_box["best_threshold"][50],
    })
    if len(expected) < len(meta.image_ids):
        out["num_skipped"] = len(meta.image_ids) - len(expected)
    if loc_threshold is not None:
        out["loc_threshold"] = loc_threshold
        out["top1_loc"] = 100.0 * sum(r["label"] == r["pred"] and r["iou_pred"] >= 0.5 for r in per_image) / n
        out["gt_known_loc"] = 100.0 * sum(r["iou_gt"] >= 0.5 for r in per_image) / n
        # How much of the object the (GT-class, largest-component) box covers, and how much of the box is
        # object: a CAM that fires on a discriminative part only has high precision and low coverage.
        out["box_coverage"] = 100.0 * float(np.mean([r["coverage"][0] for r in per_image]))
        out["box_precision"] = 100.0 * float(np.mean([r["coverage"][1] for r in per_image]))
        out["box_area_ratio"] = float(np.median([r["coverage"][2] for r in per_image]))
        if part_boxes:
            # CAM's known failure, measured: a box that covers the discriminative part (the head) but not the
            # rest of the object, and a map whose peak lies on the part more often than its area share.
            parts = np.array([r["part"] for r in per_image])
            out.update({"part_coverage": 100.0 * float(parts[:, 0].mean()),
                        "rest_coverage": 100.0 * float(parts[:, 1].mean()),
                        "peak_on_part": 100.0 * float(parts[:, 2].mean()),
                        "part_area_share": 100.0 * float(parts[:, 3].mean())})
    if with_baseline:
        out["baselines"] = {"centre_prior": centre_prior(meta, interval)}
    out["_samples"] = samples if info.is_main else []
    return out


def _new_evaluators(ctx) -> list:
    """Empty evaluators of one split's scoring: [mask, centre prior or None] or [boxes, one box]."""
    interval = ctx["interval"]
    if ctx["use_masks"]:
        return [metrics.MaskEvaluator(cam_curve_interval=interval),
                metrics.MaskEvaluator(cam_curve_interval=interval) if ctx["with_baseline"] else None]
    return [metrics.BoxEvaluator(cam_curve_interval=interval, multi_contour=True), one_box_evaluator(interval)]


def _score_batch(ctx, batch, evaluators, first: int) -> tuple[list, list]:
    """Score one batch's CAMs (batch: ids, labels, predictions, GT-class CAMs, predicted-class CAMs or None)
    into `evaluators` (_new_evaluators); `first`: the batch's first image's place in this rank's pass.
    Returns the per-image records and the overlay samples among them."""
    meta, use_masks, loc_threshold = ctx["meta"], ctx["use_masks"], ctx["loc_threshold"]
    part_boxes = getattr(meta, "part_boxes", None)
    per_image, samples = [], []
    for k, (image_id, label, pred) in enumerate(zip(*batch[:3])):
        label, pred = int(label), int(pred)
        gt_map = _scoremap(batch[3][k])
        if ctx["save_scoremaps"]:
            scoremaps.save_scoremap(ctx["save_scoremaps"], image_id, gt_map)
        rec = {"id": image_id, "label": label, "pred": pred}
        if use_masks:
            mask_eval, prior_eval = evaluators
            gt = scoremaps.gt_mask_224(meta, ctx["mask_root"], image_id, CAM_SIZE)   # (foreground, ignore)
            mask_eval.accumulate(gt_map, *gt)
            if prior_eval is not None:
                prior_eval.accumulate(ctx["prior"], *gt)
        else:
            box_eval, one_box_eval = evaluators
            gt = _boxes_224(meta, image_id)
            box_eval.accumulate(gt_map, gt)
            one_box_eval.accumulate(gt_map, gt)
            if loc_threshold is not None:
                # One largest-component box of the GT-class map serves GT-known and the coverage
                # numbers; a correct prediction's map is the same map, so top-1 loc reuses its IoU.
                box = metrics.boxes_at_threshold(gt_map, loc_threshold, multi_contour=False)
                rec["iou_gt"] = float(metrics.multiple_iou(box, metrics.check_box_convention(gt)).max())
                rec["iou_pred"] = rec["iou_gt"] if pred == label else metrics.best_iou_at_threshold(
                    _scoremap(batch[4][k]), gt, loc_threshold)
                rec["coverage"] = box_coverage(box[0], gt)
                if part_boxes:   # builtin-parts: the head's share of that box, and the map's peak
                    part = metrics.rescale_boxes(part_boxes[image_id], meta.sizes[image_id], CAM_SIZE)
                    rec["part"] = part_coverage(box[0], gt[0], part[0], gt_map)
        per_image.append(rec)
        if first + k < ctx["overlays"]:
            samples.append((image_id, gt_map, gt))
    return per_image, samples


def one_box_evaluator(interval: float) -> metrics.BoxEvaluator:
    """The curve the top-1 loc / GT-known threshold is chosen on: the largest contour's box per threshold at
    IoU 50, i.e. wsolevaluation's MaxBoxAcc V1 (multi_contour_eval=False, iou_threshold_list [50])."""
    return metrics.BoxEvaluator(cam_curve_interval=interval, iou_thresholds=(50,), multi_contour=False)


def localization_score(results: dict) -> tuple[str, float, float | None]:
    """The protocol's headline localization number of a results dict and the CAM threshold that top-1 loc and
    GT-known use: ("pxap", PxAP, the PR curve's best threshold) on mask datasets, ("maxboxacc_v2", MaxBoxAccV2,
    the one-box rule's threshold: the first argmax of the largest contour's box accuracy at IoU 50) on box
    datasets. Val selects best.pt by the score."""
    if "pxap" in results:
        return "pxap", results["pxap"], results["pxap_best_threshold"]
    return "maxboxacc_v2", results["maxboxacc_v2"], results["loc_best_threshold"]


def _area(b) -> int:
    """Pixels of an inclusive box (x0, y0, x1, y1), 0 when empty."""
    return max(0, b[2] - b[0] + 1) * max(0, b[3] - b[1] + 1)


def _meet(a, b) -> tuple:
    """The intersection of two inclusive boxes (empty when x0 > x1 or y0 > y1)."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def box_coverage(box, gt_boxes) -> tuple[float, float, float]:
    """(|B ∩ G| / |G|, |B ∩ G| / |B|, |B| / |G|) of a predicted box B (x0, y0, x1, y1; the largest
    component's at the val threshold) and the GT box G it covers most (pixel areas with the +1
    convention; the no-contour box (0, 0, 0, 0) counts as the one pixel it spans)."""
    best = (0.0, 0.0, 0.0)
    for g in np.asarray(gt_boxes):
        inter = _area(_meet(box, g))
        if _area(box) and inter / _area(g) >= best[0]:
            best = (inter / _area(g), inter / _area(box), _area(box) / _area(g))
    return best


def part_coverage(box, gt_box, part_box, scoremap) -> tuple[float, float, float, float]:
    """Where a predicted box B lies on an object of GT box G with a discriminative part P (P inside G; all
    x0, y0, x1, y1 inclusive): (|B ∩ P| / |P|, |B ∩ (G \\ P)| / |G \\ P|, whether the score map's maximum lies in
    P (1.0 or 0.0; the first maximum in row-major order), |P| / |G|)."""
    part = _meet(part_box, gt_box)             # the part as far as it lies in the GT box
    on_part = _area(_meet(box, part))
    rest = _area(gt_box) - _area(part)
    y, x = np.unravel_index(int(np.argmax(scoremap)), scoremap.shape)
    peak = float(part[0] <= x <= part[2] and part[1] <= y <= part[3])
    return (on_part / max(_area(part), 1), (_area(_meet(box, gt_box)) - on_part) / max(rest, 1), peak,
            _area(part) / max(_area(gt_box), 1))


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
    checkpoint.atomic_write(json.dumps(_jsonable(results), indent=2), os.path.join(out_dir, name))
    write_overlays(results.get("_samples", []), results.get("loc_threshold"), out_dir, data)


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


def print_table(results: dict, title: str) -> None:
    rows = [("top-1 classification", results.get("top1_cls"))]
    if "top1_loc" in results:
        rows += [("top-1 localization", results["top1_loc"]), ("GT-known localization", results["gt_known_loc"])]
    for iou, acc in results.get("maxboxacc", {}).items():
        rows.append((f"MaxBoxAcc @ IoU {iou}", acc))
    if "maxboxacc_v2" in results:
        rows.append(("MaxBoxAccV2", results["maxboxacc_v2"]))
    if "maxboxacc_v1" in results:
        rows.append(("MaxBoxAccV1 (IoU 50)", results["maxboxacc_v1"]))
    if "box_coverage" in results:    # the one box per image at the val threshold (GT-known's)
        rows += [("  object in its box", results["box_coverage"]), ("  box on the object", results["box_precision"])]
    if "part_coverage" in results:   # builtin-parts: the head against the rest of the object
        rows += [("  head in its box", results["part_coverage"]), ("  rest in its box", results["rest_coverage"]),
                 ("  map peak on the head", results["peak_on_part"]),
                 ("  head's share of GT box", results["part_area_share"])]
    if "pxap" in results:
        rows += [("PxAP", results["pxap"]), ("PR best threshold", results["pxap_best_threshold"]),
                 ("  pixel F1 there", 100.0 * results["pxap_best_f1"])]
    rows = [(name, value) for name, value in rows if value is not None]
    prior = results.get("baselines", {}).get("centre_prior")
    print(f"\n{title}  ({results['num_images']} images)")
    print(f"{'metric':<26}{'model':>10}" + (f"{'centre prior':>15}" if prior else ""))
    for name, value in rows:
        base = ""
        if prior and name.startswith("MaxBoxAcc @"):
            base = f"{prior['maxboxacc'][int(name.split()[-1])]:>15.2f}"
        elif prior and name in ("MaxBoxAccV2", "PxAP"):
            base = f"{prior['pxap' if name == 'PxAP' else 'maxboxacc_v2']:>15.2f}"
        fmt = ".3f" if name == "PR best threshold" else ".2f"
        print(f"{name:<26}{value:>10{fmt}}{base}")


# ------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    from . import guard

    p = argparse.ArgumentParser(prog="python -m wsol_fast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a last.pt or best.pt written by wsol_fast.train")
    p.add_argument("--scoremap-root", default=None,
                   help="score saved maps instead of a checkpoint: DIR/<image_id>.npy, 224 x 224 in [0, 1], as "
                        "wsolevaluation saves them (needs --metadata-root and --dataset)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--output", default=None, help="folder for results and overlays (default: the checkpoint's; "
                                                  "with --scoremap-root, results.json only when given)")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--metadata-root", default=None, help="metadata at METADATA_ROOT/DATASET/<split>/")
    p.add_argument("--dataset", default=None, help="with --scoremap-root: CUB, ILSVRC, OpenImages or any "
                                                   "dataset folder under the metadata root")
    p.add_argument("--mask-root", default=None, help="masks at MASK_ROOT/DATASET/<mask_path> (OpenImages; "
                                                     "default: the data root)")
    p.add_argument("--cam-curve-interval", type=guard.open_interval, default=None,
                   help="default: the checkpoint's; 0.01 with --scoremap-root (wsolevaluation's evaluation.py); "
                        "0.001 for the paper protocol")
    p.add_argument("--iou-thresholds", type=int, nargs="+", default=list(metrics.DEFAULT_IOU_THRESHOLDS),
                   help="with --scoremap-root: the IoU thresholds (percent) of MaxBoxAcc")
    p.add_argument("--no-multi-contour", dest="multi_contour", action="store_false",
                   help="with --scoremap-root: only the largest contour's box per threshold (MaxBoxAcc V1; "
                        "wsolevaluation's multi_contour_eval=False). Default: all contours (V2)")
    p.add_argument("--workers", type=guard.positive_int, default=1,
                   help="processes scoring the maps (with --checkpoint: per rank, the box or mask search while "
                        "the rank computes the next CAMs; under torchrun the ranks split the images)")
    p.add_argument("--save-scoremaps", default=None, metavar="DIR",
                   help="with --checkpoint: write every GT-class CAM of the split as DIR/<image_id>.npy "
                        "(224 x 224 float64, min-max normalised, as wsolevaluation writes them)")
    p.add_argument("--device", default=None)
    p.add_argument("--num-overlays", type=guard.nonneg_int, default=16)
    p.add_argument("--max-image-pixels", type=guard.positive_int, default=None,
                   help="refuse images whose header claims more pixels (default 64,000,000)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    a = p.parse_args(argv)
    if (a.checkpoint is None) == (a.scoremap_root is None):
        p.error("give either --checkpoint (score a model) or --scoremap-root (score saved maps)")
    if a.scoremap_root is not None and (a.metadata_root is None or a.dataset is None):
        p.error("--scoremap-root needs --metadata-root and --dataset")
    # Exit codes: 0 done, 2 an expected error (one message naming the file, line or flag).
    return guard.run_command(
        lambda: _evaluate_scoremaps(a) if a.scoremap_root is not None else _evaluate_checkpoint(a), a.debug)


def _evaluate_scoremaps(a) -> int:
    """Any method's saved maps against the split's boxes or masks; no model, no images."""
    from .data.metadata import load_metadata

    meta = load_metadata(a.metadata_root, a.dataset, a.split)
    mask_root = a.mask_root or a.data_root
    if meta.has_masks and mask_root is None:
        raise FileNotFoundError(f"the {a.dataset} {a.split} split is scored against masks: give --mask-root "
                                "(masks are read at MASK_ROOT/<dataset>/<mask_path>)")
    interval = a.cam_curve_interval or 0.01
    results = scoremaps.evaluate_scoremaps(a.scoremap_root, meta, mask_root, interval, a.iou_thresholds,
                                           a.multi_contour, a.workers)
    if a.output:
        os.makedirs(a.output, exist_ok=True)
        checkpoint.atomic_write(json.dumps(_jsonable(results), indent=2),
                                os.path.join(a.output, "results.json"))
    results["top1_cls"] = None
    contour = "" if a.multi_contour or meta.has_masks else ", largest contour only"
    print_table(results, f"score maps {a.scoremap_root} on {a.dataset} ({a.split} split, interval {interval:g}"
                         f"{contour})")
    if a.output:
        print(f"results written to {os.path.join(a.output, 'results.json')}")
    return 0


def _evaluate_checkpoint(a) -> int:
    from .config import TrainConfig, resolve
    from .data import prepare_data

    state = checkpoint.load_checkpoint(a.checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    cfg.data.num_classes = state["num_classes"]   # a label the model cannot score is an error (file:line)
    if a.max_image_pixels:
        cfg.data.max_image_pixels = a.max_image_pixels
    for key in ("data_root", "metadata_root", "mask_root"):
        if getattr(a, key):
            setattr(cfg.data, key, getattr(a, key))
    if a.cam_curve_interval:
        cfg.runtime.cam_curve_interval = a.cam_curve_interval
    info, device = runtime.init_distributed(a.device)
    resolve(cfg, device.type)
    data = prepare_data(cfg.data, info, device, batch_size=cfg.optim.batch_size, seed=cfg.runtime.seed,
                        channels_last=bool(cfg.runtime.channels_last),
                        splits=("val", "test") if a.split == "test" else ("val",))
    model = checkpoint.build_model(cfg, state["num_classes"], device, state, a.checkpoint)
    autocast = runtime.autocast_context(device, runtime.resolve_amp(cfg.runtime.amp, device))
    # The CAM threshold chosen on val at this checkpoint's own epoch (last.pt: the last epoch's; best.pt: the
    # best epoch's); older checkpoints without it store the best epoch's in "best".
    threshold = next((h.get("val_threshold") for h in reversed(state.get("history") or [])
                      if h.get("epoch") == state["epoch"]), None)
    if threshold is None and state["epoch"] == (state.get("best") or {}).get("epoch"):
        threshold = state["best"].get("threshold")
    if threshold is None or cfg.runtime.cam_curve_interval != state["config"]["runtime"]["cam_curve_interval"]:
        # Choose the CAM threshold on val (train-fullsup), as the protocol prescribes.
        val = evaluate_model(model, data.val_loader, data.val_meta, device, autocast, cfg, info, workers=a.workers)
        threshold = localization_score(val)[2]
    loader, meta = (data.test_loader, data.test_meta) if a.split == "test" else (data.val_loader, data.val_meta)
    results = evaluate_model(model, loader, meta, device, autocast, cfg, info, loc_threshold=threshold,
                             with_baseline=True, overlays=a.num_overlays, save_scoremaps=a.save_scoremaps,
                             workers=a.workers)
    data.close()
    if info.is_main:
        out = a.output or os.path.dirname(os.path.abspath(a.checkpoint))
        write_outputs(results, out, data, cfg, name=f"results_{a.split}.json" if a.split != "test" else
                      "results.json")
        print_table(results, f"{cfg.model.backbone} / {cfg.model.method} on {cfg.data.dataset} ({a.split} split)")
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
