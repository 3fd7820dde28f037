"""clovaai/wsolevaluation's protocol written out literally: the oracle the tests (and the benchmarks'
literal rows) hold the package's fast metrics to, bit for bit. Written from reading wsolevaluation's
evaluation.py (compute_bboxes_from_scoremaps, calculate_multiple_iou, BoxEvaluator, MaskEvaluator), not
copied; it is deliberately slow and plain, and lives outside the package."""
from __future__ import annotations

import cv2
import numpy as np

from wsol_fast import metrics


def boxes(scoremap, threshold, multi_contour):
    """One threshold, spelled out as wsolevaluation's compute_bboxes_from_scoremaps does it: a list of
    [x0, y0, x1, y1] (the single [0, 0, 0, 0] when there is no contour)."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap.astype(np.float64) * 255).astype(np.uint8), 2)
    _, binary = cv2.threshold(src=image, thresh=int(threshold * np.max(image)), maxval=255,
                              type=cv2.THRESH_BINARY)
    contours = cv2.findContours(image=binary, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return [[0, 0, 0, 0]]
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    out = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        out.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return out


def multiple_iou(a, b):
    """calculate_multiple_iou: [len(a), len(b)] IoUs of inclusive pixel boxes, 0 where the union is not
    positive."""
    a = np.asarray(a)[:, None, :]
    b = np.asarray(b)[None, :, :]
    inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
             * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1))
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    den = area_a + area_b - inter
    bad = np.where(den <= 0)
    den[bad] = 1
    out = inter / den
    out[bad] = 0
    return out


def best_ious(scoremap, gt_boxes, thresholds, multi_contour):
    """The best IoU over (boxes at t) x (GT boxes) at every threshold t, one findContours per t."""
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    return np.array([multiple_iou(boxes(scoremap, t, multi_contour), gt).max() for t in thresholds])


def maxboxacc(best_ious_per_image, thresholds, iou_list=(30, 50, 70)):
    """num_correct per IoU threshold, then max over t of num_correct * 100. / cnt, one per IoU threshold."""
    num_correct = {iou: np.zeros(len(thresholds)) for iou in iou_list}
    for best in best_ious_per_image:
        for iou in iou_list:
            num_correct[iou][np.where(np.asarray(best) >= iou / 100)[0]] += 1
    return [float((num_correct[iou] * 100. / float(len(best_ious_per_image))).max()) for iou in iou_list]


def label_map(foreground, ignore):
    """MaskEvaluator's per-pixel label: 1 foreground, 255 ignored (the ignore region minus the
    foreground), 0 background."""
    return foreground.astype(np.uint8) + 255 * np.logical_and(ignore, np.logical_not(foreground)).astype(np.uint8)


def pxap(maps, labels, interval):
    """MaskEvaluator: float histograms over thresholds + [1, 2, 3] (np.histogram), tp / fp summed from the
    top bin down, PxAP = 100 * sum(precision[1:] * diff(recall)) where tp + fp != 0."""
    edges = np.append(list(np.arange(0, 1, interval)), [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(edges) - 1)
    false_hist = np.zeros(len(edges) - 1)
    for m, label in zip(maps, labels):
        true_hist += np.histogram(m[label == 1], bins=edges)[0].astype(float)
        false_hist += np.histogram(m[label == 0], bins=edges)[0].astype(float)
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    valid = (tp + fp) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return (precision[1:] * np.diff(recall))[valid[1:]].sum() * 100


class LiteralBoxEvaluator(metrics.BoxEvaluator):
    """metrics.BoxEvaluator with the literal per-threshold loop in place of the fast search (the same
    counts, compute and merge; the benchmarks' naive / literal rows)."""

    def best_ious(self, scoremap, gt_boxes) -> np.ndarray:
        metrics.check_box_convention(gt_boxes, "gt_boxes")
        return best_ious(metrics.check_scoremap(scoremap), gt_boxes, self.thresholds, self.multi_contour)
