"""The wsolevaluation metrics (docs/spec.md §4), bit-identical to clovaai/wsolevaluation, and fast.

What is scored, in wsolevaluation's order:

1. CAM -> `resize_scoremap` (cv2 bicubic to 224 x 224) -> `normalize_scoremap` (min-max per image).
2. GT boxes -> `rescale_boxes` (original pixels -> 224 x 224, integer truncation).
3. `BoxEvaluator.accumulate(scoremap, gt_boxes)` for each image, `compute()` at the end:
   MaxBoxAcc(delta) for delta in {30, 50, 70}, MaxBoxAccV2 = their mean (all contours);
   V1 = `multi_contour=False` (largest contour only), read at delta = 50.
4. OpenImages: `MaskEvaluator` (PxAP, the area under the pixel precision-recall curve).

wsolevaluation details this module reproduces (checked against clovaai/wsolevaluation's
`evaluation.py`, `inference.py`, `util.py` and `data_loaders.py`), several of them subtle:

* The score map is float64 there: `t2n` casts the model's CAM with `.astype(np.float)` *before*
  `cv2.resize(..., interpolation=cv2.INTER_CUBIC)` (inference.py), so the bicubic resize runs in
  double precision. `resize_scoremap` therefore casts to float64 first and returns float64; a float32
  resize would differ in the last bits and could move a pixel across a uint8 boundary.
* `normalize_scoremap` (inference.py): any NaN -> all zeros; constant map (min == max) -> all zeros;
  else `m - m.min()` then divided by the max *of the shifted map*.
* Thresholds: `np.arange(0, 1, cam_curve_interval)` (1.0 is never a threshold). Their interval
  defaults to 0.001 in training (config.py, `CAMComputer`, `evaluate_wsol`) and to 0.01 on
  evaluation.py's command line; ours defaults to 0.01 (docs/spec.md §4), 0.001 for the paper protocol.
* Quantisation (`compute_bboxes_from_scoremaps`): `img = (scoremap * 255).astype(np.uint8)`, i.e.
  truncation, on the float64 map. The cv2 threshold is `int(t * img.max())`: an *integer* that
  scales with the map's uint8 maximum (not `t * 255`), truncated toward zero.
* `cv2.THRESH_BINARY` keeps pixels strictly *greater* than that integer (`img > int(t * max)`).
  Consequence: with any non-zero uint8 max m, int(t * m) < m, so every t < 1 keeps at least the
  maximal pixels; an all-zero map (m = 0) gives an empty binary image at every t.
* Contours: `cv2.findContours(..., cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)`, so the contours of
  *holes* are boxes too (a hole's contour runs over the foreground pixels around it). Modern
  OpenCV pads the image with a 1-pixel zero border, so blobs touching the image edge are found.
* Boxes: `x, y, w, h = cv2.boundingRect(contour)` and then `x1 = x + w`, `y1 = y + h`, i.e. one
  pixel *past* the blob's last column/row (boundingRect's w is max_x - min_x + 1), clipped to
  `width - 1` / `height - 1`. So a blob covering exactly pixels x0..x1 gives the box
  (x0, y0, x1 + 1, y1 + 1) unless it touches the right/bottom edge.
* No contour at a threshold -> the single box (0, 0, 0, 0) (it still takes part in the IoU).
* V1 (`multi_contour_eval=False`): the single contour `max(contours, key=cv2.contourArea)`; Python's
  `max` keeps the first of equal areas, in findContours' order.
* IoU (`calculate_multiple_iou`): inclusive pixel boxes, every side length + 1; a non-positive
  union gives IoU 0. An image is correct at (t, delta) when the best IoU over (predicted boxes at t)
  x (all GT boxes) is `>= delta / 100`.
* Accuracy curve `num_correct * 100. / cnt`; MaxBoxAcc(delta) = its max over t; MaxBoxAccV2 =
  `np.average` of the three. `best_threshold` is the first t attaining the max (np.argmax).
* GT boxes (`resize_bbox`): `int(float(x) * new_w / w)` per coordinate (multiply, then divide,
  then truncate); `check_box_convention`: coordinates >= 0 and x1 >= x0, y1 >= y0.
* PxAP (`MaskEvaluator`): histograms of the map values at GT-foreground and GT-background pixels
  (ignored pixels dropped) over the bin edges `thresholds + [1, 2, 3]` (np.histogram: [e_i, e_i+1),
  so a value of exactly 1.0 falls in [1, 2)); tp/fp are the cumulative sums from the top bin down,
  precision = tp / (tp + fp), recall = tp / (tp + fn); PxAP = 100 * sum(precision[1:] *
  diff(recall)) over the points with tp + fp != 0. Their ignore mask is the ignore-box region minus
  the foreground; GT masks are read with INTER_NEAREST resizing and `> 0.5`.

Speed: box_search.py finds the boxes of every threshold at once, bit-identical to the literal loop.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .box_search import boxes_of_binary, find_contours, integer_thresholds, multiple_iou, threshold_boxes

__all__ = [
    "BoxEvaluator", "MaskEvaluator", "rescale_boxes", "resize_scoremap", "normalize_scoremap",
    "cam_thresholds", "quantize_scoremap", "multiple_iou", "boxes_at_threshold",
    "best_iou_at_threshold", "center_prior_scoremap", "load_gt_mask",
    "check_box_convention", "check_scoremap",
]

DEFAULT_IOU_THRESHOLDS = (30, 50, 70)
CENTER_PRIOR_SIGMA = 0.25   # the centre prior's Gaussian sigma, as a fraction of each side


# ------------------------------------------------------------------------------- inputs

def cam_thresholds(cam_curve_interval: float) -> np.ndarray:
    """The CAM thresholds of the protocol: np.arange(0, 1, interval) (float64, 1.0 excluded)."""
    if not (0 < cam_curve_interval < 1):
        raise ValueError(f"cam_curve_interval must lie in (0, 1), got {cam_curve_interval}")
    return np.arange(0, 1, cam_curve_interval)


def check_box_convention(boxes, what: str = "boxes") -> np.ndarray:
    """[k, 4] (or [4]) x0, y0, x1, y1 boxes with non-negative coordinates and x1 >= x0, y1 >= y0
    (wsolevaluation's check_box_convention 'x0y0x1y1'); returns them as a [k, 4] array."""
    b = np.asarray(boxes)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what} must have shape [k, 4] (x0, y0, x1, y1); got {np.shape(boxes)}")
    if (b < 0).any():
        raise ValueError(f"{what}: box coordinates must be non-negative")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError(f"{what}: boxes must follow x0 <= x1, y0 <= y1")
    return b


def check_scoremap(scoremap) -> np.ndarray:
    """wsolevaluation's check_scoremap_validity (2D, no NaN, values in [0, 1]); returns float64.
    They also demand dtype float64; here other float dtypes are cast (exactly) instead."""
    s = np.asarray(scoremap)
    if s.ndim != 2:
        raise ValueError(f"score map must be 2D; it is {s.ndim}D")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError("score map must not contain NaNs")
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError(f"score map must lie in [0, 1]; min {s.min()}, max {s.max()}")
    return s


def rescale_boxes(boxes, size, target_size=(224, 224)) -> np.ndarray:
    """Boxes [k, 4] (x0, y0, x1, y1) of an image of size (w, h) -> target size (W, H), int64.
    wsolevaluation's resize_bbox: `int(x * W / w)` in float64, multiply first, truncating."""
    b = check_box_convention(boxes).astype(np.float64)
    w, h = (float(v) for v in size)
    new_w, new_h = (float(v) for v in target_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    out = np.empty_like(b)
    out[:, 0::2] = b[:, 0::2] * new_w / w
    out[:, 1::2] = b[:, 1::2] * new_h / h
    return out.astype(np.int64)   # truncation toward zero, as int(); all values are >= 0


def resize_scoremap(cam, size=(224, 224)) -> np.ndarray:
    """cv2 bicubic resize to `size` = (W, H) (cv2's dsize order), in float64 as wsolevaluation
    does (their t2n casts the CAM to float64 before the resize). Returns float64 [H, W]."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"CAM must be 2D [h, w]; got shape {cam.shape}")
    return cv2.resize(cam, (int(size[0]), int(size[1])), interpolation=cv2.INTER_CUBIC)


def normalize_scoremap(scoremap) -> np.ndarray:
    """Min-max normalise to [0, 1] like wsolevaluation: a map with any NaN, or a constant map,
    becomes all zeros. The input is not modified; the dtype is kept (float64 from resize_scoremap)."""
    m = np.asarray(scoremap)
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    if np.isnan(m).any() or m.min() == m.max():
        return np.zeros_like(m)
    m = m - m.min()
    m /= m.max()
    return m


def quantize_scoremap(scoremap) -> np.ndarray:
    """The uint8 image wsolevaluation binarises: (float64 map * 255) truncated."""
    return (check_scoremap(scoremap) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------- boxes and IoU

def boxes_at_threshold(scoremap, threshold: float, multi_contour: bool = True) -> np.ndarray:
    """Predicted boxes [m, 4] (x0, y0, x1, y1, int64) at one CAM threshold; (0, 0, 0, 0) if none."""
    img = quantize_scoremap(scoremap)
    k = int(integer_thresholds([threshold], int(img.max()))[0])
    _, binary = cv2.threshold(img, k, 255, cv2.THRESH_BINARY)
    return boxes_of_binary(binary, multi_contour)


def best_iou_at_threshold(scoremap, gt_boxes, threshold: float, multi_contour: bool = False) -> float:
    """Best IoU over (predicted boxes at `threshold`) x (GT boxes) at one t: top-1 localization and
    GT-known at the threshold chosen on val. By default ONE box per image, the largest contour's
    (wsolevaluation's compute_bboxes_from_scoremaps with its default multi_contour_eval=False, the
    conventional metric); `multi_contour=True` takes the best over all contours, as MaxBoxAccV2 does,
    which can only raise the number."""
    gt = check_box_convention(gt_boxes, "gt_boxes")
    return float(multiple_iou(boxes_at_threshold(scoremap, threshold, multi_contour), gt).max())


# ------------------------------------------------------------------------------- evaluators

class BoxEvaluator:
    """MaxBoxAcc / MaxBoxAccV2 (multi_contour=True) or V1's box accuracy (multi_contour=False).

    State is counts only (picklable, mergeable across DDP ranks with `merge`). The literal per-threshold
    loop it equals, bit for bit, is tests/wsolevaluation_oracle.py (outside the package)."""

    def __init__(self, cam_curve_interval: float = 0.01, iou_thresholds=DEFAULT_IOU_THRESHOLDS,
                 multi_contour: bool = True):
        self.cam_curve_interval = float(cam_curve_interval)
        self.thresholds = cam_thresholds(self.cam_curve_interval)
        self.iou_thresholds = tuple(int(i) for i in iou_thresholds)
        if not self.iou_thresholds:
            raise ValueError("iou_thresholds must not be empty")
        self.multi_contour = bool(multi_contour)
        self.num_correct = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)
        self.cnt = 0
        # The boxes of the last map: a map scored again (the centre prior, the same CAM for several
        # GT sets) reuses them; equality of the uint8 image is checked, so the result is unchanged.
        self._cache = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None             # counts only travel (all_gather_object, pickling)
        return state

    def best_ious(self, scoremap, gt_boxes) -> np.ndarray:
        """Best IoU at every threshold for one image (float64 [num_thresholds])."""
        img = quantize_scoremap(scoremap)
        gt = check_box_convention(gt_boxes, "gt_boxes")
        cached = self._cache
        if cached is None or cached.img.shape != img.shape or not np.array_equal(cached.img, img):
            cached = self._cache = threshold_boxes(img, self.thresholds, self.multi_contour)
        return cached.best_ious(gt)

    def accumulate(self, scoremap, gt_boxes) -> np.ndarray:
        """Score one image: `scoremap` [H, W] in [0, 1], `gt_boxes` [k, 4] in the map's pixels.
        Returns the best IoU at every threshold."""
        best = self.best_ious(scoremap, gt_boxes)
        for row, iou in enumerate(self.iou_thresholds):
            self.num_correct[row] += best >= (iou / 100)
        self.cnt += 1
        return best

    def curves(self) -> np.ndarray:
        """Box accuracy (percent) [num_iou_thresholds, num_thresholds]: num_correct * 100. / cnt."""
        if self.cnt == 0:
            raise RuntimeError("BoxEvaluator.compute: no image was accumulated")
        return self.num_correct.astype(np.float64) * 100.0 / float(self.cnt)

    def compute(self) -> dict:
        acc = self.curves()
        best_idx = acc.argmax(axis=1)
        maxboxacc = {iou: float(acc[r].max()) for r, iou in enumerate(self.iou_thresholds)}
        out = {
            "maxboxacc": maxboxacc,
            "maxboxacc_v2": float(np.average([maxboxacc[i] for i in self.iou_thresholds])),
            "best_threshold": {iou: float(self.thresholds[best_idx[r]])
                               for r, iou in enumerate(self.iou_thresholds)},
            "num_images": int(self.cnt),
            "multi_contour": self.multi_contour,
            "cam_curve_interval": self.cam_curve_interval,
            "thresholds": self.thresholds.copy(),
            "box_acc_curve": {iou: acc[r] for r, iou in enumerate(self.iou_thresholds)},
        }
        if not self.multi_contour and 50 in maxboxacc:
            out["maxboxacc_v1"] = maxboxacc[50]
        return out

    def _same_protocol(self, other: "BoxEvaluator") -> bool:
        return (self.iou_thresholds == other.iou_thresholds and self.multi_contour == other.multi_contour
                and np.array_equal(self.thresholds, other.thresholds))

    @classmethod
    def merge(cls, evaluators) -> "BoxEvaluator":
        """One evaluator holding the summed counts of `evaluators` (e.g. gathered from DDP ranks)."""
        evaluators = list(evaluators)
        if not evaluators:
            raise ValueError("BoxEvaluator.merge needs at least one evaluator")
        head = evaluators[0]
        out = cls(head.cam_curve_interval, head.iou_thresholds, head.multi_contour)
        for ev in evaluators:
            if not head._same_protocol(ev):
                raise ValueError("BoxEvaluator.merge: evaluators use different thresholds or settings")
            out.num_correct += ev.num_correct
            out.cnt += ev.cnt
        return out


def load_gt_mask(mask_files, ignore_file=None, size=(224, 224)):
    """OpenImages GT as wsolevaluation's get_mask reads it: each mask (grayscale) resized with
    INTER_NEAREST to `size` = (W, H), `> 0.5`, OR-ed over instances; the ignore mask is the ignore
    box region minus the foreground. Returns (gt_mask bool [H, W], ignore_mask bool [H, W])."""
    def read(path):
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(f"cannot read mask {path}")
        return cv2.resize(np.float32(image), tuple(size), interpolation=cv2.INTER_NEAREST) > 0.5

    gt = np.stack([read(p) for p in mask_files]).any(axis=0)
    ignore = read(ignore_file) & ~gt if ignore_file else np.zeros_like(gt)
    return gt, ignore


class MaskEvaluator:
    """PxAP (OpenImages): histograms of score-map values at foreground / background pixels.

    `compute()` returns PxAP in percent (float), as wsolevaluation's MaskEvaluator.compute;
    `curve()` returns the precision/recall points."""

    def __init__(self, cam_curve_interval: float = 0.01):
        self.cam_curve_interval = float(cam_curve_interval)
        self.thresholds = cam_thresholds(self.cam_curve_interval)
        # bins [0, bw), ..., [1 - bw, 1), [1, 2), [2, 3]
        self.bin_edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.num_bins = len(self.bin_edges) - 1
        self.gt_true_hist = np.zeros(self.num_bins, np.int64)
        self.gt_false_hist = np.zeros(self.num_bins, np.int64)
        self.cnt = 0

    def accumulate(self, scoremap, gt_mask, ignore_mask=None) -> None:
        """`gt_mask` foreground (bool / 0-1 [H, W]); `ignore_mask` pixels (outside the foreground)
        are left out of the background, as wsolevaluation's ignore region."""
        s = check_scoremap(scoremap)
        gt = np.asarray(gt_mask).astype(bool)
        if gt.shape != s.shape:
            raise ValueError(f"gt_mask shape {gt.shape} differs from the score map's {s.shape}")
        background = ~gt
        if ignore_mask is not None:
            ignore = np.asarray(ignore_mask).astype(bool)
            if ignore.shape != s.shape:
                raise ValueError(f"ignore_mask shape {ignore.shape} differs from the score map's {s.shape}")
            background &= ~ignore
        # np.histogram's bins [e_i, e_i+1): searchsorted(right) - 1; values lie in [0, 1] < 3.
        bins = np.searchsorted(self.bin_edges, s.ravel(), side="right") - 1
        self.gt_true_hist += np.bincount(bins[gt.ravel()], minlength=self.num_bins)
        self.gt_false_hist += np.bincount(bins[background.ravel()], minlength=self.num_bins)
        self.cnt += 1

    def curve(self) -> dict:
        """Points of the PR curve, from the highest threshold down (tp, fp cumulated from the top)."""
        true_hist = self.gt_true_hist.astype(np.float64)
        false_hist = self.gt_false_hist.astype(np.float64)
        tp = true_hist[::-1].cumsum()
        fn = true_hist.sum() - tp
        fp = false_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise RuntimeError("No positive ground truth in the eval set.")
        if ((tp + fp) <= 0).all():
            raise RuntimeError("No positive prediction in the eval set.")
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        return {"precision": precision, "recall": recall, "valid": (tp + fp) != 0}

    def compute(self) -> float:
        c = self.curve()
        auc = (c["precision"][1:] * np.diff(c["recall"]))[c["valid"][1:]].sum()
        return float(auc * 100)

    def best_point(self) -> dict:
        """The PR curve's best operating point, by pixel F1 = 2 tp / (2 tp + fp + fn) (not part of
        wsolevaluation, which reports PxAP only): the threshold t (a pixel is foreground when its
        score is >= t, the lower edge of the curve point's bin), its precision, recall and F1."""
        c = self.curve()
        tp = self.gt_true_hist[::-1].cumsum().astype(np.float64)
        fp = self.gt_false_hist[::-1].cumsum().astype(np.float64)
        fn = tp[-1] - tp
        f1 = np.where(c["valid"], 2 * tp / np.maximum(2 * tp + fp + fn, 1), -1.0)
        j = int(np.argmax(f1))
        return {"threshold": float(self.bin_edges[self.num_bins - 1 - j]), "f1": float(f1[j]),
                "precision": float(c["precision"][j]), "recall": float(c["recall"][j])}

    @classmethod
    def merge(cls, evaluators) -> "MaskEvaluator":
        evaluators = list(evaluators)
        if not evaluators:
            raise ValueError("MaskEvaluator.merge needs at least one evaluator")
        out = cls(evaluators[0].cam_curve_interval)
        for ev in evaluators:
            if not np.array_equal(ev.bin_edges, out.bin_edges):
                raise ValueError("MaskEvaluator.merge: evaluators use different thresholds")
            out.gt_true_hist += ev.gt_true_hist
            out.gt_false_hist += ev.gt_false_hist
            out.cnt += ev.cnt
        return out


# ------------------------------------------------------------------------------- baseline

def center_prior_scoremap(size=(224, 224), sigma: float = CENTER_PRIOR_SIGMA) -> np.ndarray:
    """A centred isotropic-per-axis Gaussian score map of `size` = (W, H): centre ((W-1)/2, (H-1)/2),
    standard deviations sigma * W and sigma * H (sigma = 0.25 of each side by default), min-max
    normalised like a CAM. float32 [H, W] in [0, 1]."""
    width, height = int(size[0]), int(size[1])
    if sigma <= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive fraction of the side, got {sigma}")
    x = (np.arange(width, dtype=np.float64) - (width - 1) / 2) / (sigma * width)
    y = (np.arange(height, dtype=np.float64) - (height - 1) / 2) / (sigma * height)
    prior = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
    return normalize_scoremap(prior).astype(np.float32)
