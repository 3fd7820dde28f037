"""The predicted boxes of a score map at every CAM threshold, fast and bit-identical to wsolevaluation's
literal per-threshold loop (metrics.py states the protocol; tests/wsolevaluation_oracle.py holds the
loop the tests compare against), and the protocol's IoU.

Speed. wsolevaluation thresholds and runs findContours once per t (1,000 times per image at the
paper's interval 0.001). Here the binary image depends only on `k = int(t * max)`, and the best IoU
is computed once per k (at most 256 values) and scattered back to every t. Two ways to get the boxes
of every k, both bit-identical to the literal loop (tests/wsolevaluation_oracle.py, which the tests check
them against on smooth, textured, hole-containing and adversarial maps):

* MaxBoxAccV2 (all contours), when the C++ library is built: `threshold_boxes` (csrc/) builds the
  max-tree (8-connected components of img > k, for all k) and the min-tree (4-connected components
  of img <= k) in one pass each. At threshold k, findContours(RETR_TREE) returns exactly one outer
  contour per 8-connected foreground component (boundingRect = the component's extent) and one hole
  contour per 4-connected background component that does not touch the image border (the contour
  runs over the foreground pixels 4-adjacent to the hole: the hole's extent grown by one pixel).
  Every tree node is one box over an interval of k; its IoU is computed once and the best per k
  taken over the intervals, in C++ (`level_best_ious`: the same integer areas and float64
  division as `multiple_iou`, so the same doubles), or with numpy (`multiple_iou`, `_interval_max`)
  on a build without that op. A few ms per map whatever its texture.
* Otherwise, and for V1 (whose largest contour is chosen by polygon area, which the trees do not
  give): findContours once per distinct binarisation (at most 256), boxes and IoUs vectorised,
  V1's cv2.contourArea as one vectorised shoelace sum (exact on integer points).

A BoxEvaluator also keeps the boxes of the last map it scored: when the same map comes again
(the centre prior is one map for every image) only the IoUs are recomputed; the cache is keyed on
the map's uint8 image itself (compared in full), so it never changes a result.
"""
from __future__ import annotations

import os

import cv2
import numpy as np


def integer_thresholds(thresholds: np.ndarray, max_value: int) -> np.ndarray:
    """int(t * max) for every t (float64 product, truncated: all values are >= 0)."""
    return np.floor(np.asarray(thresholds, dtype=np.float64) * float(max_value)).astype(np.int64)


def multiple_iou(boxes_a, boxes_b, check: bool = True) -> np.ndarray:
    """IoU [num_a, num_b] of inclusive pixel boxes (side = x1 - x0 + 1), as calculate_multiple_iou:
    integer areas, one float64 division, IoU 0 where the union is not positive. Like its
    check_box_convention, a box with a negative coordinate, or with x1 < x0 or y1 < y0, is a ValueError
    (check=False: computed anyway, IoU 0 where the union is not positive, as the C++ level op does)."""
    a = np.asarray(boxes_a, dtype=np.int64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.int64).reshape(-1, 4)
    for name, boxes in (("boxes_a", a), ("boxes_b", b)) if check else ():
        bad = (boxes < 0).any(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            raise ValueError(f"multiple_iou: {name}[{int(np.flatnonzero(bad)[0])}] = "
                             f"{boxes[np.flatnonzero(bad)[0]].tolist()} does not follow the x0y0x1y1 convention "
                             "(0 <= x0 <= x1, 0 <= y0 <= y1)")
    a, b = a[:, None, :], b[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    bad = union <= 0
    ious = inter / np.where(bad, 1, union)
    ious[bad] = 0.0
    return ious


def find_contours(binary: np.ndarray):
    # [-2]: (image, contours, hierarchy) on OpenCV 3, (contours, hierarchy) on OpenCV 4 and 5.
    return cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]


def _contour_boxes(contours, width: int, height: int) -> np.ndarray:
    """[n, 4] int64 boxes of contours: boundingRect (x, y, w, h) -> (x, y, x + w, y + h), the right
    and bottom sides clipped to width - 1 / height - 1. boundingRect of integer points is the min
    and max of the points with w = max - min + 1, so it is computed here with reduceat in one go."""
    if len(contours) == 0:
        return np.zeros((0, 4), np.int64)
    lengths = np.array(list(map(len, contours)), dtype=np.int64)
    points = np.concatenate(contours).reshape(-1, 2)        # int32 (x, y)
    starts = np.zeros(len(contours), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    lo = np.minimum.reduceat(points, starts, axis=0)
    hi = np.maximum.reduceat(points, starts, axis=0)
    boxes = np.empty((len(contours), 4), np.int64)
    boxes[:, :2] = lo
    boxes[:, 2] = np.minimum(hi[:, 0] + 1, width - 1)
    boxes[:, 3] = np.minimum(hi[:, 1] + 1, height - 1)
    return boxes


def _contour_areas(contours) -> np.ndarray:
    """cv2.contourArea of each contour, as one vectorised shoelace sum: on integer points OpenCV's
    double sum of x_prev * y - y_prev * x is exact, so this int64 sum, halved, is the same number."""
    lengths = np.fromiter(map(len, contours), np.int64, len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.zeros(len(contours), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    prev = np.roll(points, 1, axis=0)
    prev[starts] = points[starts + lengths - 1]                  # each contour closes on itself
    cross = prev[:, 0] * points[:, 1] - prev[:, 1] * points[:, 0]
    return np.abs(np.add.reduceat(cross, starts)) * 0.5


def _largest(contours):
    """V1's single contour: the first of maximal cv2.contourArea, as Python's max(...) picks it."""
    if len(contours) == 1:
        return list(contours)
    return [contours[int(np.argmax(_contour_areas(contours)))]]


def boxes_of_binary(binary: np.ndarray, multi_contour: bool) -> np.ndarray:
    contours = find_contours(binary)
    if len(contours) == 0:
        return np.zeros((1, 4), np.int64)
    if not multi_contour:
        contours = _largest(contours)
    return _contour_boxes(contours, binary.shape[1], binary.shape[0])


class _ThresholdBoxes:
    """The predicted boxes of one uint8 map at every threshold, grouped by binarisation: `boxes`
    [n, 4] holds each group's boxes in turn (`counts` per group; a group with no contour gets the
    (0, 0, 0, 0) box, stored last), and `inverse` maps each threshold to its group."""

    def __init__(self, img: np.ndarray, thresholds: np.ndarray, multi_contour: bool):
        height, width = img.shape
        k = integer_thresholds(thresholds, int(img.max()))
        present = np.flatnonzero(np.bincount(img.ravel(), minlength=256))   # uint8 values in the map
        # img > k depends only on how many present values are <= k: that count names the binarisation.
        key = np.searchsorted(present, k, side="right")
        keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        contours_all, counts = [], np.zeros(len(keys), np.int64)
        for g, (key_g, i) in enumerate(zip(keys, first)):
            if key_g == len(present):      # nothing above k: findContours would find nothing
                continue
            _, binary = cv2.threshold(img, int(k[i]), 255, cv2.THRESH_BINARY)
            contours = find_contours(binary)
            if len(contours) and not multi_contour:
                contours = _largest(contours)
            counts[g] = len(contours)
            contours_all.extend(contours)
        self.num_contour_boxes = len(contours_all)
        self.empty = counts == 0
        boxes = _contour_boxes(contours_all, width, height)
        if self.empty.any():               # the (0, 0, 0, 0) box of "no contour"
            boxes = np.concatenate([boxes, np.zeros((1, 4), np.int64)])
        self.boxes, self.counts, self.inverse = boxes, counts, inverse.ravel()
        self.starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[~self.empty]
        self.img = img

    def best_ious(self, gt: np.ndarray) -> np.ndarray:
        """Best IoU over (boxes at t) x (GT boxes) for every threshold t."""
        per_box = multiple_iou(self.boxes, gt).max(axis=1)
        best = np.empty(len(self.counts), np.float64)
        if len(self.starts):
            best[~self.empty] = np.maximum.reduceat(per_box[:self.num_contour_boxes], self.starts)
        if self.empty.any():
            best[self.empty] = per_box[-1]
        return best[self.inverse]


_TREE_OPS = []   # [(threshold_boxes, level_best_ious)], each op or None, resolved on first use


def _tree_ops():
    """(threshold_boxes, level_best_ious) from torch.ops.wsol_fast_metrics (csrc/threshold_boxes.cpp),
    each None when the C++ library is not built, is an older build without it, or
    WSOL_FAST_DISABLE_CPP=1."""
    if not _TREE_OPS:
        ops = [None, None]
        if os.environ.get("WSOL_FAST_DISABLE_CPP", "0") != "1":
            try:
                import torch
                from . import _C  # noqa: F401  (its static initialisers register the ops)
                for i, name in enumerate(("threshold_boxes", "level_best_ious")):
                    try:
                        ops[i] = getattr(torch.ops.wsol_fast_metrics, name)
                    except (AttributeError, RuntimeError):
                        pass
            except (ImportError, AttributeError, RuntimeError):
                pass
        _TREE_OPS.append(tuple(ops))
    return _TREE_OPS[0]


def _threshold_boxes_op():
    """torch.ops.wsol_fast_metrics.threshold_boxes or None (see _tree_ops)."""
    return _tree_ops()[0]


def _level_best_ious_op():
    """torch.ops.wsol_fast_metrics.level_best_ious or None (see _tree_ops): the per-level best IoU of
    the tree rows, in C++ (the same IoU, bit for bit, as multiple_iou followed by _interval_max)."""
    return _tree_ops()[1]


def _interval_max(lo: np.ndarray, hi: np.ndarray, values: np.ndarray, size: int = 256) -> np.ndarray:
    """out[k] = max(values[i] for every i with lo[i] <= k < hi[i]) for k < size (-inf where none).
    Each interval is covered by two blocks of length 2^j (j = floor(log2(hi - lo))), written to
    level j of a table; the levels are then pushed down, each block into its two halves."""
    levels = max(int(size - 1).bit_length(), 1) + 1
    j = np.frexp((hi - lo).astype(np.float64))[1] - 1           # exact floor(log2) of an integer
    table = np.full(levels * size, -np.inf)
    base = j * size
    np.maximum.at(table, np.concatenate([base + lo, base + hi - (1 << j)]), np.concatenate([values, values]))
    table = table.reshape(levels, size)
    for level in range(levels - 1, 0, -1):
        half = 1 << (level - 1)
        np.maximum(table[level - 1], table[level], out=table[level - 1])
        np.maximum(table[level - 1, half:], table[level, :-half], out=table[level - 1, half:])
    return table[0]


class _TreeBoxes:
    """All contours' boxes of one uint8 map at every threshold, from its component trees: `rows`
    [n, 6] (lo, hi, x0, y0, x1, y1), each box found by findContours(RETR_TREE) at every k with
    lo <= k < hi (see the module docstring). Same interface as _ThresholdBoxes (multi-contour).
    `level_op` (level_best_ious) scores the rows in C++; without it, numpy does (multiple_iou, then
    _interval_max): the same numbers."""

    def __init__(self, img: np.ndarray, thresholds: np.ndarray, op, level_op=None):
        import torch
        self.img = img
        max_value = int(img.max())
        self.k = integer_thresholds(thresholds, max_value)      # cv2's integer threshold per t
        self.no_contour = max_value == 0       # img > 0 is empty: the (0, 0, 0, 0) box at every t
        self.level_op = level_op
        if not self.no_contour:
            self.rows = op(torch.from_numpy(np.ascontiguousarray(img)))     # int32 [n, 6]
            rows = self.rows.numpy()
            self.lo, self.hi, self.boxes = rows[:, 0], rows[:, 1], rows[:, 2:]
            self.num_contour_boxes = len(rows)

    def best_ious(self, gt: np.ndarray) -> np.ndarray:
        if self.no_contour:
            return np.full(len(self.k), multiple_iou(np.zeros((1, 4), np.int64), gt).max())
        if self.level_op is not None:
            import torch
            gt64 = np.ascontiguousarray(np.asarray(gt, dtype=np.int64).reshape(-1, 4))
            per_level = self.level_op(self.rows, torch.from_numpy(gt64)).numpy()
        else:
            per_level = _interval_max(self.lo, self.hi, multiple_iou(self.boxes, gt).max(axis=1))
        # every k < max has a foreground component (the maximal pixels), so every k used is covered
        return per_level[self.k]


def threshold_boxes(img: np.ndarray, thresholds: np.ndarray, multi_contour: bool):
    """The boxes of `img` at every threshold: the component-tree path where it is exact (all
    contours) and built, else one contour search per distinct binarisation."""
    op = _threshold_boxes_op() if multi_contour else None
    if op is not None and max(img.shape) <= 32767:          # the op's limit on the image sides
        return _TreeBoxes(img, thresholds, op, _level_best_ious_op())
    return _ThresholdBoxes(img, thresholds, multi_contour)
