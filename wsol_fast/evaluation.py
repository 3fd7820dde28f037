"""Scoring a model on one split by the exact wsolevaluation protocol (the library under `python -m
wsol_fast.evaluate` and the trainer's validation): top-1 classification, top-1 / GT-known localization,
MaxBoxAcc (V1, V2), PxAP, box coverage, the centre-prior baseline; results.json and the table.

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
off while the CAMs are computed (`cam.true_fp32`), and the flags are restored afterwards.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from . import cam, errors, eval_parallel, files, metrics, runtime, scoremaps


def _mask_root(cfg, meta) -> str:
    """Where prepare_data found the masks, else --mask-root, else the data root (wsolevaluation's
    default: masks beside the images)."""
    return meta.mask_root or getattr(cfg.data, "mask_root", None) or cfg.data.data_root


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
           "prior": metrics.center_prior_scoremap(cam.CAM_SIZE) if use_masks and with_baseline else None}
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
        with cam.true_fp32():
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
        raise errors.UserError(f"every image of the {meta.split} split ({len(meta.image_ids)}) failed to decode "
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
        gt_map = cam.to_scoremap(batch[3][k])
        if ctx["save_scoremaps"]:
            scoremaps.save_scoremap(ctx["save_scoremaps"], image_id, gt_map)
        rec = {"id": image_id, "label": label, "pred": pred}
        if use_masks:
            mask_eval, prior_eval = evaluators
            gt = scoremaps.gt_mask_224(meta, ctx["mask_root"], image_id, cam.CAM_SIZE)   # (foreground, ignore)
            mask_eval.accumulate(gt_map, *gt)
            if prior_eval is not None:
                prior_eval.accumulate(ctx["prior"], *gt)
        else:
            box_eval, one_box_eval = evaluators
            gt = cam.gt_boxes_224(meta, image_id)
            box_eval.accumulate(gt_map, gt)
            one_box_eval.accumulate(gt_map, gt)
            if loc_threshold is not None:
                # One largest-component box of the GT-class map serves GT-known and the coverage
                # numbers; a correct prediction's map is the same map, so top-1 loc reuses its IoU.
                box = metrics.boxes_at_threshold(gt_map, loc_threshold, multi_contour=False)
                rec["iou_gt"] = float(metrics.multiple_iou(box, metrics.check_box_convention(gt)).max())
                rec["iou_pred"] = rec["iou_gt"] if pred == label else metrics.best_iou_at_threshold(
                    cam.to_scoremap(batch[4][k]), gt, loc_threshold)
                rec["coverage"] = box_coverage(box[0], gt)
                if part_boxes:   # builtin-parts: the head's share of that box, and the map's peak
                    part = metrics.rescale_boxes(part_boxes[image_id], meta.sizes[image_id], cam.CAM_SIZE)
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
    prior = metrics.center_prior_scoremap(cam.CAM_SIZE)
    for image_id in meta.image_ids:
        ev.accumulate(prior, cam.gt_boxes_224(meta, image_id))
    r = ev.compute()
    return {"maxboxacc": r["maxboxacc"], "maxboxacc_v2": r["maxboxacc_v2"]}


# ------------------------------------------------------------------------------------- reporting

def jsonable(results: dict) -> dict:
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
    files.atomic_write(json.dumps(jsonable(results), indent=2), os.path.join(out_dir, name))
    cam.write_overlays(results.get("_samples", []), results.get("loc_threshold"), out_dir, data)


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
