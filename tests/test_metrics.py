"""wsol_fast.metrics and wsol_fast.box_search: hand-worked cases (answers derived in the comments), the
grouped fast path against wsolevaluation's literal per-threshold loop (tests/wsolevaluation_oracle.py),
rescaling on the real CUB metadata, and PxAP against the oracle's np.histogram formula."""
import os
import pickle

import cv2
import numpy as np
import pytest

from wsol_fast import box_search as B
from wsol_fast import metrics as M
from wsol_fast.data.metadata import load_metadata
import wsolevaluation_oracle as oracle

IOUS = (30, 50, 70)


# ------------------------------------------------------------------ map makers

def _gauss(shape, cx, cy, sx, sy):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))


def _random_case(rng, kind):
    """A (score map, GT boxes) pair of one of several families."""
    if kind == "white":                                        # many tiny contours: small map
        size = (24, 32)
        m = rng.random(size)
    else:
        size = (224, 224)
        m = np.zeros(size)
        for _ in range(rng.integers(1, 4)):
            m += rng.uniform(0.3, 1) * _gauss(size, *rng.uniform(0, 224, 2), *rng.uniform(6, 60, 2))
        if kind == "cam":                                     # smooth noise, like an upsampled CAM
            low = rng.random((14, 14))
            m += 0.3 * cv2.resize(low, size[::-1], interpolation=cv2.INTER_CUBIC)
        elif kind == "levels":                                # few distinct values, plateaus
            m = np.round(m * 4) / 4
        elif kind == "edge":                                  # blobs cut by the image border
            m = np.roll(m, (int(rng.integers(60, 160)), int(rng.integers(60, 160))), axis=(0, 1))
    m = M.normalize_scoremap(m)
    if kind == "dim":                                         # max < 1: the threshold scales with max
        m = m * rng.uniform(0.05, 0.6)
    h, w = m.shape
    k = int(rng.integers(1, 4))
    x0, y0 = rng.integers(0, w - 2, k), rng.integers(0, h - 2, k)
    x1 = np.minimum(w - 1, x0 + rng.integers(1, w, k))
    y1 = np.minimum(h - 1, y0 + rng.integers(1, h, k))
    return m, np.stack([x0, y0, x1, y1], axis=1)


KINDS = ["cam", "cam", "smooth", "levels", "edge", "dim", "white"]


def _cases(n, seed):
    rng = np.random.default_rng(seed)
    cases = [_random_case(rng, KINDS[i % len(KINDS)]) for i in range(n)]
    cases.append((np.zeros((224, 224)), np.array([[0, 0, 0, 1], [10, 10, 50, 50]])))   # no contour at all
    tiny = np.zeros((224, 224))
    tiny[100, 100] = 1 / 255 + 1e-9                          # uint8 max 1: int(t * 1) = 0 for every t
    cases.append((tiny, np.array([[100, 100, 101, 101]])))
    return cases


# ------------------------------------------------------------------ fast path == literal loop

@pytest.mark.parametrize("multi_contour", [True, False], ids=["multi", "largest"])
@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_fast_path_equals_literal_loop(interval, multi_contour):
    thresholds = np.arange(0, 1, interval)
    cases = _cases(48, seed=int(interval * 1e4) + multi_contour)
    ev = M.BoxEvaluator(interval, multi_contour=multi_contour)
    literal = []
    for m, gt in cases:
        literal.append(oracle.best_ious(m, gt, thresholds, multi_contour))
        np.testing.assert_array_equal(ev.accumulate(m, gt), literal[-1])
    want = oracle.maxboxacc(literal, thresholds, IOUS)
    got = ev.compute()
    assert [got["maxboxacc"][i] for i in IOUS] == want          # exact, not approx
    assert got["maxboxacc_v2"] == float(np.average(want))
    assert got["num_images"] == len(cases)


def test_the_oracles_evaluator_counts_as_the_fast_one():
    cases = _cases(6, seed=7)
    for multi in (True, False):
        fast = M.BoxEvaluator(0.001, multi_contour=multi)
        ref = oracle.LiteralBoxEvaluator(0.001, multi_contour=multi)
        for m, gt in cases:
            np.testing.assert_array_equal(fast.accumulate(m, gt), ref.accumulate(m, gt))
        np.testing.assert_array_equal(fast.num_correct, ref.num_correct)


def test_best_iou_and_boxes_at_threshold_match_literal():
    rng = np.random.default_rng(3)
    for i in range(12):
        m, gt = _random_case(rng, KINDS[i % len(KINDS)])
        for t in (0.0, 0.13, 0.5, 0.77, 0.999):
            assert M.boxes_at_threshold(m, t).tolist() == oracle.boxes(m, t, True)
            assert M.boxes_at_threshold(m, t, multi_contour=False).tolist() == oracle.boxes(m, t, False)
            assert M.best_iou_at_threshold(m, gt, t) == oracle.best_ious(m, gt, [t], False)[0]
            assert M.best_iou_at_threshold(m, gt, t, multi_contour=True) == \
                oracle.best_ious(m, gt, [t], True)[0]


# ------------------------------------------------------------------ hard maps: texture, holes, adversarial

def _textured(rng, size=(224, 224), amplitude=0.1):
    """Sums of Gaussians plus uniform pixel noise of `amplitude`, then min-max normalised (issue 13's
    textured maps: thousands of specks and pinholes at the low thresholds)."""
    m = np.zeros(size)
    for _ in range(rng.integers(1, 4)):
        m += rng.uniform(0.3, 1) * _gauss(size, *(rng.uniform(0, 1, 2) * size[::-1]),
                                          *(rng.uniform(0.03, 0.3, 2) * size[::-1]))
    return M.normalize_scoremap(m + amplitude * rng.random(size))


def _rings(rng, size=(224, 224)):
    """Nested square rings (1 to 9 pixels thick, 1-pixel-wide ones included) with islands in their
    holes, rings cut by the image border (their 'holes' open to the outside are no holes), and
    diagonal-only contacts: holes that touch only at a corner are two holes (background is
    4-connected), blobs that touch only at a corner are one component (foreground is 8-connected)."""
    m = np.zeros(size)
    h, w = size
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(-20, w - 10)), int(rng.integers(-20, h - 10))
        side = int(rng.integers(8, 90))
        thick = int(rng.integers(1, 10))
        v = rng.uniform(0.2, 1.0)
        ys, xs = slice(max(y0, 0), max(y0 + side, 0)), slice(max(x0, 0), max(x0 + side, 0))
        inner_y = slice(max(y0 + thick, 0), max(y0 + side - thick, 0))
        inner_x = slice(max(x0 + thick, 0), max(x0 + side - thick, 0))
        ring = np.zeros(size, bool)
        ring[ys, xs] = True
        ring[inner_y, inner_x] = False
        m[ring] = np.maximum(m[ring], v)
        if side > 6 * thick:                                  # an island inside the hole
            c = (y0 + side // 2, x0 + side // 2)
            if 0 <= c[0] < h and 0 <= c[1] < w:
                m[c[0]:c[0] + 2, c[1]:c[1] + 3] = rng.uniform(0.2, 1.0)
    # corner contacts: two pixels touching diagonally, two background pinholes touching diagonally
    m[5, 5] = m[6, 6] = 0.9
    m[40:44, w - 44:w - 40] = 0.8
    m[41, w - 43] = m[42, w - 42] = 0.0
    return M.normalize_scoremap(m + 0.001 * rng.random(size))


def _adversarial(rng, kind):
    if kind == "checker":            # every pixel a corner contact: 8- vs 4-connectivity everywhere
        yy, xx = np.mgrid[:22, :26]
        m = ((xx + yy) % 2) * rng.uniform(0.5, 1, (22, 26)) + 0.2 * ((xx // 3 + yy // 5) % 2)
    elif kind == "lines":            # 1-pixel lines and diagonals: zero-area contours, spurs
        m = np.zeros((64, 64))
        for _ in range(12):
            x, y = rng.integers(0, 64, 2)
            dx, dy = rng.integers(-1, 2, 2)
            for _ in range(int(rng.integers(3, 40))):
                if 0 <= x < 64 and 0 <= y < 64:
                    m[y, x] = max(m[y, x], rng.uniform(0.1, 1))
                x, y = x + dx, y + dy
    elif kind == "noise":            # every uint8 level, no structure at all
        m = rng.random((24, 32))
    elif kind == "levels":           # few levels: big plateaus with holes of several depths
        m = np.round(_textured(rng, (64, 56), 0.6) * 3) / 3
    else:                            # strips: 1-pixel-thin maps (1 x n, n x 1)
        m = rng.random((1, 37)) if kind == "row" else rng.random((29, 1))
    return M.normalize_scoremap(m)


def _hard_cases(seed, full_size=True):
    """(map, GT boxes) pairs: textured, rings with holes, adversarial; GT boxes random, plus one
    equal to a hole's box at some threshold, so that a hole can hold the best IoU. `full_size`
    False: the textured and ring maps at 64 x 64 and 80 x 72 instead of 224 x 224 and 96 x 80 (the
    literal loop in pure Python over thousands of specks at 1,000 thresholds takes minutes)."""
    rng = np.random.default_rng(seed)
    big, small = ((224, 224), (96, 80)) if full_size else ((64, 64), (48, 40))
    maps = [_textured(rng, big), _textured(rng, small, 0.3), _rings(rng, big if full_size else (80, 72)),
            _rings(rng, (120, 100) if full_size else (60, 52))]
    maps += [_adversarial(rng, k) for k in ("checker", "lines", "noise", "levels", "row", "col")]
    cases = []
    for m in maps:
        h, w = m.shape
        k = int(rng.integers(1, 4))
        x0, y0 = rng.integers(0, w, k), rng.integers(0, h, k)
        gt = np.stack([x0, y0, np.minimum(w - 1, x0 + rng.integers(0, w, k)),
                       np.minimum(h - 1, y0 + rng.integers(0, h, k))], axis=1)
        cases.append((m, gt))
    ring = _block((224, 224), 60, 60, 139, 139, value=0.0, base=_block((224, 224), 20, 20, 179, 179))
    cases.append((M.normalize_scoremap(ring + 0.05 * _textured(rng)), np.array([[59, 59, 141, 141]])))
    return cases


def _contour_boxes_at(img, k):
    """findContours(RETR_TREE) + boundingRect of every contour of img > k, as a sorted list."""
    height, width = img.shape
    _, binary = cv2.threshold(img, k, 255, cv2.THRESH_BINARY)
    boxes = []
    for contour in cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
    return sorted(boxes)


needs_tree = pytest.mark.skipif(B._threshold_boxes_op() is None,
                                reason="wsol_fast._C (threshold_boxes) is not built")


@needs_tree
def test_component_trees_give_findcontours_boxes_at_every_threshold():
    """The tree rows active at k are, as a multiset, exactly the boxes of findContours(RETR_TREE) on
    img > k (outer contours of 8-connected components, hole contours of 4-connected background
    components away from the border), at every k below the map's maximum."""
    maps = [m for m, _ in _hard_cases(21)] + [_textured(np.random.default_rng(22), (128, 128), a)
                                             for a in (0.02, 1.0)]
    import torch
    for m in maps:
        img = M.quantize_scoremap(m)
        rows = B._threshold_boxes_op()(torch.from_numpy(img)).numpy()
        assert rows.dtype == np.int32 and rows.shape[1] == 6
        for k in range(int(img.max())):
            active = (rows[:, 0] <= k) & (k < rows[:, 1])
            assert sorted(map(tuple, rows[active, 2:].tolist())) == _contour_boxes_at(img, k), (m.shape, k)



@needs_tree
def test_component_trees_on_many_tiny_maps():
    """The same multiset equality on 400 tiny maps (1 to 12 pixels a side; plateaus of 2 to 6 levels,
    all 256 levels, stripes, inverted maps), where every corner case of the flood (a descent at the
    first pixel, a level reached from several components, 1-pixel strips) occurs many times."""
    import torch
    rng = np.random.default_rng(41)
    op = B._threshold_boxes_op()
    for trial in range(400):
        h, w = (int(v) for v in rng.integers(1, 13, 2))
        levels = int(rng.choice([2, 3, 6, 256]))
        if trial % 3 == 0:
            img = rng.integers(0, levels, (h, w))
        else:
            yy, xx = np.mgrid[:h, :w]
            img = (xx * int(rng.integers(0, 4)) + yy * int(rng.integers(0, 4))) % levels
            img = np.where(rng.random((h, w)) < 0.3, rng.integers(0, levels, (h, w)), img)
        img = (img * (255 // max(levels - 1, 1))).astype(np.uint8)
        if trial % 4 == 1:
            img = 255 - img
        rows = op(torch.from_numpy(img)).numpy()
        for k in range(int(img.max())):
            active = (rows[:, 0] <= k) & (k < rows[:, 1])
            assert sorted(map(tuple, rows[active, 2:].tolist())) == _contour_boxes_at(img, k), (trial, k)


@needs_tree
def test_threshold_boxes_op_checks_its_input():
    import torch
    op = B._threshold_boxes_op()
    with pytest.raises(ValueError, match="image must be uint8"):
        op(torch.zeros(4, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="image must be 2D"):
        op(torch.zeros(2, 4, 4, dtype=torch.uint8))
    img = torch.from_numpy(M.quantize_scoremap(_textured(np.random.default_rng(2), (30, 40), 0.3)))
    assert torch.equal(op(img.t()), op(img.t().contiguous()))             # a strided view is read as such
    one = torch.full((1, 1), 7, dtype=torch.uint8)
    assert op(one).tolist() == [[0, 7, 0, 0, 0, 0]]    # one pixel: the whole image for 0 <= k < 7, clipped box


@pytest.mark.parametrize("multi_contour", [True, False], ids=["multi", "largest"])
@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_hard_maps_equal_literal_loop(interval, multi_contour):
    """MaxBoxAccV2 (all contours) and V1 (largest contour) on textured, hole and adversarial maps:
    every path (component trees where built, the contour search otherwise, and always the contour
    search itself) equals wsolevaluation's literal loop, bit for bit, and so do the accuracies."""
    thresholds = np.arange(0, 1, interval)
    cases = _hard_cases(int(interval * 1e4) + 3 * multi_contour, full_size=interval >= 0.01)
    ev = M.BoxEvaluator(interval, multi_contour=multi_contour)
    literal = []
    for m, gt in cases:
        literal.append(oracle.best_ious(m, gt, thresholds, multi_contour))
        np.testing.assert_array_equal(ev.accumulate(m, gt), literal[-1])
        contour_path = B._ThresholdBoxes(M.quantize_scoremap(m), thresholds, multi_contour)
        np.testing.assert_array_equal(contour_path.best_ious(gt), literal[-1])
    want = oracle.maxboxacc(literal, thresholds, IOUS)
    assert [ev.compute()["maxboxacc"][i] for i in IOUS] == want


@needs_tree
def test_a_hole_can_hold_the_best_iou():
    # The ring of test_hole_contours_are_boxes_too under texture: at the thresholds where the ring is
    # whole, the best box is the hole's (59, 59, 141, 141) (IoU 1), never the outer (20, 20, 180, 180).
    m, gt = _hard_cases(5)[-1]
    tree = B._TreeBoxes(M.quantize_scoremap(m), M.cam_thresholds(0.01), B._threshold_boxes_op())
    best = tree.best_ious(gt)
    assert best.max() == 1.0
    assert [59, 59, 141, 141] in tree.boxes.tolist()


def test_contour_areas_equal_cv2_contour_area():
    rng = np.random.default_rng(8)
    contours = []
    for m in [_textured(rng, (64, 64), 0.3), _adversarial(rng, "lines"), _adversarial(rng, "checker")]:
        img = M.quantize_scoremap(m)
        for k in (0, 40, 120, 200):
            contours += list(cv2.findContours((img > k).astype(np.uint8), cv2.RETR_TREE,
                                              cv2.CHAIN_APPROX_SIMPLE)[-2])
    assert len(contours) > 100 and min(map(len, contours)) == 1        # single points included
    np.testing.assert_array_equal(B._contour_areas(contours), [cv2.contourArea(c) for c in contours])
    assert B._largest(contours)[0] is max(contours, key=cv2.contourArea)
    # ties at the maximum: Python's max keeps the first, so must _largest
    big = max(contours, key=cv2.contourArea)
    small = min(contours, key=cv2.contourArea)
    tied = [small, big.copy(), big, big[::-1].copy()]
    assert B._largest(tied)[0] is tied[1] and max(tied, key=cv2.contourArea) is tied[1]
    zeros = [c for c in contours if cv2.contourArea(c) == 0][:5]
    assert len(zeros) == 5 and B._largest(zeros)[0] is zeros[0]


def test_interval_max_equals_brute_force():
    rng = np.random.default_rng(9)
    lo = rng.integers(0, 255, 500)
    hi = np.minimum(256, lo + rng.integers(1, 257, 500))
    values = rng.random(500)
    want = np.full(256, -np.inf)
    for a, b, v in zip(lo, hi, values):
        want[a:b] = np.maximum(want[a:b], v)
    np.testing.assert_array_equal(B._interval_max(lo, hi, values), want)
    np.testing.assert_array_equal(B._interval_max(np.array([0]), np.array([256]), np.array([0.5])),
                                  np.full(256, 0.5))



needs_level_op = pytest.mark.skipif(B._level_best_ious_op() is None,
                                    reason="wsol_fast._C (level_best_ious) is not built")


def _numpy_level_best_ious(rows, gt):
    """What _TreeBoxes computes without the C++ op: numpy IoU per row, then the max per level."""
    # check=False: the drill feeds degenerate boxes on purpose (the C++ op's own handling is compared)
    return B._interval_max(rows[:, 0], rows[:, 1], M.multiple_iou(rows[:, 2:], gt, check=False).max(axis=1))


@needs_level_op
def test_level_best_ious_equals_numpy_iou_and_interval_max():
    """The C++ IoU + max per level gives the very doubles of multiple_iou + _interval_max: random
    rows against one to five GT boxes, ties (repeated rows, equal IoUs at one level), the
    (0, 0, 0, 0) box, one-pixel boxes, boxes equal to a GT box (IoU 1), disjoint ones (IoU 0),
    degenerate rows with a non-positive union (IoU 0), and int64 overflow, which wraps as in numpy."""
    import torch
    op = B._level_best_ious_op()
    rng = np.random.default_rng(31)
    for trial in range(60):
        n = int(rng.integers(0, 400))
        lo = rng.integers(0, 256, n)
        hi = np.minimum(256, lo + rng.integers(1, 257, n))
        x0, y0 = rng.integers(0, 224, n), rng.integers(0, 224, n)
        boxes = np.stack([x0, y0, np.minimum(223, x0 + rng.integers(0, 120, n)),
                          np.minimum(223, y0 + rng.integers(0, 120, n))], axis=1)
        m = int(rng.integers(1, 6))
        gx, gy = rng.integers(0, 200, m), rng.integers(0, 200, m)
        gt = np.stack([gx, gy, gx + rng.integers(0, 60, m), gy + rng.integers(0, 60, m)], axis=1)
        if n >= 8:
            boxes[0] = 0                                   # the (0, 0, 0, 0) box
            boxes[1] = gt[0]                               # IoU 1
            boxes[2] = boxes[3]                            # a tie, over another interval
            boxes[4, 2:] = boxes[4, :2]                    # one pixel
            boxes[5] = [gt[0, 2] + 1, 0, gt[0, 2] + 5, 3]  # disjoint from the first GT box
            lo[6:8], hi[6:8] = lo[5], hi[5]                # three rows on one interval
            if trial % 3 == 0:                             # x1 = x0 - 1: zero area, union <= 0
                boxes[6] = [10, 10, 9, 9]
                gt = np.concatenate([gt, [[10, 10, 9, 9]]])
        rows = np.concatenate([lo[:, None], hi[:, None], boxes], axis=1).astype(np.int32)
        got = op(torch.from_numpy(rows), torch.from_numpy(gt.astype(np.int64))).numpy()
        assert got.dtype == np.float64 and got.shape == (256,)
        np.testing.assert_array_equal(got, _numpy_level_best_ious(rows, gt))
    # overflow: areas beyond 2^63 wrap in numpy's int64; the op wraps the same way
    rows = np.array([[0, 256, 0, 0, 2**31 - 1, 2**31 - 1], [3, 9, 5, 5, 2**30, 7]], np.int32)
    gt = np.array([[0, 0, 2**33, 2**33], [1, 1, 2**62, 2**40]], np.int64)
    with np.errstate(over="ignore"):
        want = _numpy_level_best_ious(rows, gt)
    np.testing.assert_array_equal(op(torch.from_numpy(rows), torch.from_numpy(gt)).numpy(), want)


@needs_level_op
def test_level_best_ious_checks_its_input():
    import torch
    op = B._level_best_ious_op()
    rows = torch.tensor([[0, 5, 1, 1, 4, 4]], dtype=torch.int32)
    gt = torch.tensor([[1, 1, 4, 4]])
    assert op(rows, gt)[:6].tolist() == [1.0] * 5 + [-np.inf]
    with pytest.raises(ValueError, match="rows must be int32"):
        op(rows.long(), gt)
    with pytest.raises(ValueError, match="gt_boxes must be int64"):
        op(rows, gt.int())
    with pytest.raises(ValueError, match=r"rows must be \[n, 6\]"):
        op(rows[:, :5], gt)
    with pytest.raises(ValueError, match="at least one box"):
        op(rows, gt[:0])
    for lo, hi in ((5, 5), (-1, 3), (250, 257)):
        with pytest.raises(ValueError, match="0 <= lo < hi <= 256"):
            op(torch.tensor([[lo, hi, 0, 0, 1, 1]], dtype=torch.int32), gt)
    assert op(rows.t().contiguous().t(), gt).tolist() == op(rows, gt).tolist()


@needs_tree
@needs_level_op
def test_tree_rows_scored_in_cpp_equal_numpy():
    """_TreeBoxes with the C++ scoring (what BoxEvaluator uses) == without it, on hard maps."""
    thresholds = M.cam_thresholds(0.001)
    for m, gt in _hard_cases(17):
        img = M.quantize_scoremap(m)
        fast = B.threshold_boxes(img, thresholds, True)
        assert isinstance(fast, B._TreeBoxes) and fast.level_op is not None
        slow = B._TreeBoxes(img, thresholds, B._threshold_boxes_op())
        np.testing.assert_array_equal(fast.best_ious(gt), slow.best_ious(gt))
        np.testing.assert_array_equal(fast.best_ious(gt[:1]), slow.best_ious(gt[:1]))


# ------------------------------------------------------------------ hand-worked maps

def _block(shape, x0, y0, x1, y1, value=1.0, base=None):
    m = np.zeros(shape) if base is None else base.copy()
    m[y0:y1 + 1, x0:x1 + 1] = value                          # pixels x0..x1, y0..y1 inclusive
    return m


def test_blob_one_pixel_short_of_gt_scores_iou_one():
    # boundingRect w = 100 for pixels 50..149, box x1 = x + w = 150: the box is one past the blob.
    # A blob on pixels 50..149 x 60..159 therefore gives (50, 60, 150, 160) == GT -> IoU 1 at every t.
    gt = np.array([[50, 60, 150, 160]])
    m = _block((224, 224), 50, 60, 149, 159)
    assert M.boxes_at_threshold(m, 0.5).tolist() == [[50, 60, 150, 160]]
    ev = M.BoxEvaluator(0.01)
    assert (ev.accumulate(m, gt) == 1.0).all()
    r = ev.compute()
    assert r["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 100.0}
    assert r["maxboxacc_v2"] == 100.0
    assert r["best_threshold"] == {30: 0.0, 50: 0.0, 70: 0.0}   # all tie: the first threshold


def test_blob_exactly_on_gt_pixels_is_one_pixel_too_big():
    # Blob on pixels 50..149 (100 x 100) -> box (50, 50, 150, 150), 101 x 101 = 10201 pixels;
    # GT (50, 50, 149, 149) has 10000, all inside -> IoU = 10000 / 10201.
    m = _block((224, 224), 50, 50, 149, 149)
    assert M.best_iou_at_threshold(m, np.array([[50, 50, 149, 149]]), 0.3) == 10000 / 10201


def test_half_blob_hand_computed_iou():
    # GT (20, 40, 119, 139): 100 x 100 = 10000. Blob pixels x 20..69, y 40..139 -> box (20, 40, 70, 140):
    # 51 x 101 = 5151. Intersection x 20..70 (51) x y 40..139 (100) = 5100.
    # IoU = 5100 / (5151 + 10000 - 5100) = 5100 / 10051 = 0.5074 -> correct at 30 and 50, not at 70.
    gt = np.array([[20, 40, 119, 139]])
    m = _block((224, 224), 20, 40, 69, 139)
    assert M.best_iou_at_threshold(m, gt, 0.5) == 5100 / 10051
    ev = M.BoxEvaluator(0.01)
    ev.accumulate(m, gt)
    ev.accumulate(_block((224, 224), 20, 40, 118, 138), gt)      # the IoU-1 blob: 100 everywhere
    r = ev.compute()
    assert r["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 50.0}
    assert r["maxboxacc_v2"] == pytest.approx(250 / 3)


def test_box_clipped_at_right_and_bottom_edges():
    # Blob on pixels 200..223: x + w = 224 is clipped to width - 1 = 223 (same for y).
    m = _block((224, 224), 200, 210, 223, 223)
    assert M.boxes_at_threshold(m, 0.0).tolist() == [[200, 210, 223, 223]]
    # A 100-wide map: the clip is at 99.
    m = _block((80, 100), 90, 0, 99, 79)
    assert M.boxes_at_threshold(m, 0.0).tolist() == [[90, 0, 99, 79]]


def test_all_zero_map_scores_the_zero_box():
    # No contour at any t -> box (0, 0, 0, 0), one pixel.
    zero = np.zeros((224, 224))
    assert M.boxes_at_threshold(zero, 0.0).tolist() == [[0, 0, 0, 0]]
    # vs GT (10, 10, 50, 50): no overlap -> IoU 0, accuracy 0.
    assert M.best_iou_at_threshold(zero, np.array([[10, 10, 50, 50]]), 0.5) == 0.0
    # vs GT (0, 0, 1, 1): 1 / 4 = 0.25; vs GT (0, 0, 0, 1): 1 / 2 = 0.5 -> "correct" at 30 and 50.
    assert M.best_iou_at_threshold(zero, np.array([[0, 0, 1, 1]]), 0.5) == 0.25
    ev = M.BoxEvaluator(0.01)
    ev.accumulate(zero, np.array([[10, 10, 50, 50]]))
    ev.accumulate(zero, np.array([[0, 0, 0, 1]]))
    assert ev.compute()["maxboxacc"] == {30: 50.0, 50: 50.0, 70: 0.0}


def test_threshold_is_relative_to_the_uint8_max_and_strict():
    # Outer block value 0.25 (uint8 63) on pixels 0..199, inner block 0.5 (uint8 127) on 50..99.
    # The cv2 threshold is int(t * 127), and THRESH_BINARY keeps img > thr:
    #   t = 0.49: int(62.23) = 62 -> 63 > 62 keeps the outer block;  t = 0.50: int(63.5) = 63 -> inner only.
    # (Were it t * 255, t = 0.5 would give 127 and keep nothing.)
    m = _block((224, 224), 50, 50, 99, 99, value=0.5, base=_block((224, 224), 0, 0, 199, 199, value=0.25))
    assert M.boxes_at_threshold(m, 0.49).tolist() == [[0, 0, 200, 200]]
    assert M.boxes_at_threshold(m, 0.50).tolist() == [[50, 50, 100, 100]]
    gt = np.array([[50, 50, 100, 100]])
    ev = M.BoxEvaluator(0.01)
    ev.accumulate(m, gt)
    r = ev.compute()
    assert r["maxboxacc"][70] == 100.0
    # t < 0.50: the outer box (0, 0, 200, 200) has IoU 51^2 / 201^2 = 2601 / 40401 = 0.064 -> wrong at
    # every IoU; t >= 0.50: IoU 1. The maximum (100) ties over 0.50..0.99: np.argmax picks the first.
    for iou in IOUS:
        curve = r["box_acc_curve"][iou]
        assert curve[:50].max() == 0.0 and curve[50:].min() == 100.0
        assert r["best_threshold"][iou] == ev.thresholds[50] == pytest.approx(0.5)


def test_hole_contours_are_boxes_too():
    # A ring: block 20..179 with a hole 60..139. RETR_TREE returns the hole's contour, which runs over
    # the foreground pixels around the hole, 59..140 -> box (59, 59, 141, 141). Multi-contour finds it
    # (IoU 1 against that GT); V1's largest contour is the outer one, (20, 20, 180, 180):
    # IoU = 83^2 / 161^2 = 6889 / 25921 = 0.266 -> wrong at every IoU threshold.
    m = _block((224, 224), 60, 60, 139, 139, value=0.0, base=_block((224, 224), 20, 20, 179, 179))
    boxes = M.boxes_at_threshold(m, 0.5).tolist()
    assert sorted(boxes) == [[20, 20, 180, 180], [59, 59, 141, 141]]
    gt = np.array([[59, 59, 141, 141]])
    multi, single = M.BoxEvaluator(0.01), M.BoxEvaluator(0.01, multi_contour=False)
    multi.accumulate(m, gt)
    single.accumulate(m, gt)
    assert multi.compute()["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 100.0}
    assert single.best_ious(m, gt)[0] == 6889 / 25921
    r = single.compute()
    assert r["maxboxacc"] == {30: 0.0, 50: 0.0, 70: 0.0}
    assert r["maxboxacc_v1"] == 0.0


def test_multi_contour_vs_largest_contour():
    # Big blob 0..119 (box (0,0,120,120)) and small blob 150..189 (box (150,150,190,190)) = GT.
    m = _block((224, 224), 150, 150, 189, 189, base=_block((224, 224), 0, 0, 119, 119))
    gt = np.array([[150, 150, 190, 190]])
    assert M.BoxEvaluator(0.01).best_ious(m, gt)[0] == 1.0
    assert M.BoxEvaluator(0.01, multi_contour=False).best_ious(m, gt)[0] == 0.0
    # several GT boxes: the best pair counts
    gts = np.array([[0, 0, 5, 5], [150, 150, 190, 190]])
    assert M.best_iou_at_threshold(m, gts, 0.2, multi_contour=True) == 1.0
    # one box per image (the largest contour, (0, 0, 120, 120)): 6 x 6 = 36 of 121 x 121 = 14641
    assert M.best_iou_at_threshold(m, gts, 0.2) == 36 / 14641


def test_top1_loc_and_gt_known_use_the_largest_contour_only():
    """wsolevaluation's compute_bboxes_from_scoremaps(multi_contour_eval=False), its default and the
    conventional top-1 loc / GT-known metric: ONE box per image, that of the contour of largest
    cv2.contourArea; MaxBoxAccV2 (multi_contour_eval=True) keeps every contour. The all-contour
    number is never lower, and here it is strictly higher: a small blob matches the GT box, the
    larger blob next to it does not."""
    gt = np.array([[150, 150, 190, 190]])
    m = _block((224, 224), 150, 150, 189, 189, value=0.8, base=_block((224, 224), 0, 0, 119, 119))
    for t in (0.0, 0.3, 0.79):
        largest = M.best_iou_at_threshold(m, gt, t)
        assert largest == oracle.best_ious(m, gt, [t], False)[0] == 0.0
        assert M.best_iou_at_threshold(m, gt, t, multi_contour=True) == 1.0
    assert M.best_iou_at_threshold(m, gt, 0.85) == 0.0      # uint8 203 <= int(0.85 * 255) = 216: big blob only
    # random maps: the largest-contour IoU equals the literal V1 loop's and never exceeds the all-contour one
    rng = np.random.default_rng(12)
    for i in range(8):
        m, gt = _random_case(rng, KINDS[i % len(KINDS)])
        for t in (0.1, 0.45, 0.8):
            largest = M.best_iou_at_threshold(m, gt, t)
            assert largest == oracle.best_ious(m, gt, [t], False)[0]
            assert largest <= M.best_iou_at_threshold(m, gt, t, multi_contour=True)


# ------------------------------------------------------------------ evaluator plumbing

def test_merge_equals_single_evaluator_and_pickles():
    cases = _cases(9, seed=11)
    whole = M.BoxEvaluator(0.01)
    parts = [M.BoxEvaluator(0.01) for _ in range(3)]
    for i, (m, gt) in enumerate(cases):
        whole.accumulate(m, gt)
        parts[i % 3].accumulate(m, gt)
    parts = [pickle.loads(pickle.dumps(p)) for p in parts]      # as all_gather_object ships them
    merged = M.BoxEvaluator.merge(parts)
    np.testing.assert_array_equal(merged.num_correct, whole.num_correct)
    a, b = merged.compute(), whole.compute()
    assert (a["maxboxacc"], a["maxboxacc_v2"], a["best_threshold"], a["num_images"]) == \
        (b["maxboxacc"], b["maxboxacc_v2"], b["best_threshold"], b["num_images"])
    with pytest.raises(ValueError):
        M.BoxEvaluator.merge([whole, M.BoxEvaluator(0.001)])
    with pytest.raises(ValueError):
        M.BoxEvaluator.merge([whole, M.BoxEvaluator(0.01, multi_contour=False)])


def test_repeated_map_reuses_boxes_without_changing_results():
    # The evaluator caches the last map's boxes (the centre prior is scored against every GT set);
    # a map changed in place must not hit the stale cache.
    m, _ = _random_case(np.random.default_rng(4), "cam")
    gts = [np.array([[10, 20, 100, 150]]), np.array([[60, 60, 200, 190], [0, 0, 30, 30]])]
    ev = M.BoxEvaluator(0.001)
    thresholds = ev.thresholds
    for gt in gts:
        np.testing.assert_array_equal(ev.accumulate(m, gt), oracle.best_ious(m, gt, thresholds, True))
    m[:100] = 0.0                                               # same object, new content
    np.testing.assert_array_equal(ev.accumulate(m, gts[0]), oracle.best_ious(m, gts[0], thresholds, True))
    assert pickle.loads(pickle.dumps(ev))._cache is None         # counts travel, boxes do not
    assert len(pickle.dumps(ev)) < 40_000


def test_thresholds_and_input_checks():
    assert np.array_equal(M.BoxEvaluator(0.001).thresholds, np.arange(0, 1, 0.001))
    assert len(M.BoxEvaluator(0.01).thresholds) == 100 and M.BoxEvaluator(0.01).thresholds[-1] < 1
    ev = M.BoxEvaluator()
    with pytest.raises(RuntimeError):
        ev.compute()                                            # no image
    with pytest.raises(ValueError):
        ev.accumulate(np.full((8, 8), 1.5), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError):
        ev.accumulate(np.full((8, 8), np.nan), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError):
        ev.accumulate(np.zeros((8, 8)), np.array([[3, 0, 1, 1]]))   # x1 < x0
    with pytest.raises(ValueError):
        ev.accumulate(np.zeros((8, 8)), np.array([[-1, 0, 1, 1]]))
    assert ev.cnt == 0


def test_float32_map_is_quantised_in_float64():
    # (m * 255) in float64, as wsolevaluation's float64 maps: a float32 map is cast first.
    m32 = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert np.array_equal(M.quantize_scoremap(m32), (m32.astype(np.float64) * 255).astype(np.uint8))


# ------------------------------------------------------------------ score-map preprocessing

def test_normalize_scoremap():
    const = np.full((5, 7), 3.0)
    assert (M.normalize_scoremap(const) == 0).all()
    assert const[0, 0] == 3.0                                   # input untouched
    nan = np.arange(12.0).reshape(3, 4)
    nan[1, 1] = np.nan
    assert (M.normalize_scoremap(nan) == 0).all()
    m = np.array([[2.0, 4.0], [6.0, 10.0]])
    assert M.normalize_scoremap(m).tolist() == [[0.0, 0.25], [0.5, 1.0]]
    x = np.random.default_rng(1).normal(size=(9, 9))
    shifted = x - x.min()
    np.testing.assert_array_equal(M.normalize_scoremap(x), shifted / shifted.max())


def test_resize_scoremap_is_float64_bicubic():
    cam = np.random.default_rng(2).random((14, 14)).astype(np.float32)
    out = M.resize_scoremap(cam, (224, 224))
    assert out.shape == (224, 224) and out.dtype == np.float64
    np.testing.assert_array_equal(out, cv2.resize(cam.astype(np.float64), (224, 224),
                                                  interpolation=cv2.INTER_CUBIC))
    assert M.resize_scoremap(np.zeros((7, 5)), (30, 20)).shape == (20, 30)   # size is (W, H)


def test_center_prior():
    p = M.center_prior_scoremap((224, 224))
    assert p.shape == (224, 224) and p.dtype == np.float32
    assert p.min() == 0.0 and p.max() == 1.0
    np.testing.assert_array_equal(p, p[::-1, :])
    np.testing.assert_array_equal(p, p.T)
    assert p[111:113, 111:113].min() == 1.0                     # the four centre pixels of an even side
    # sigma = 0.25 * 224 = 56 px around 111.5; min-max: lo at the corners, hi at the 4 centre pixels
    g = np.exp(-0.5 * ((111.5 / 56.0) ** 2 + ((np.arange(224) - 111.5) / 56.0) ** 2))   # row 0
    lo = np.exp(-0.5 * 2 * (111.5 / 56.0) ** 2)
    hi = np.exp(-0.5 * 2 * (0.5 / 56.0) ** 2)
    np.testing.assert_allclose(p[0], (g - lo) / (hi - lo), atol=1e-6)
    ev = M.BoxEvaluator(0.01)
    ev.accumulate(p, np.array([[56, 56, 167, 167]]))
    assert ev.compute()["maxboxacc"][70] == 100.0               # a centred box is found


# ------------------------------------------------------------------ GT boxes on the real CUB metadata

def _raw_lines(path, n=None):
    with open(path) as fh:
        lines = fh.read().splitlines()
    return [line.split(",") for line in lines[:n] if line.strip()]


def test_rescale_boxes_hand_computed():
    # First CUB test image: 500 x 335, box (60, 27, 385, 331):
    # 60*224/500 = 26.88 -> 26; 27*224/335 = 18.05 -> 18; 385*224/500 = 172.48 -> 172; 331*224/335 = 221.3 -> 221
    assert M.rescale_boxes(np.array([[60, 27, 385, 331]]), (500, 335)).tolist() == [[26, 18, 172, 221]]
    # truncation, not rounding: 499 * 224 / 500 = 223.55 -> 223
    assert M.rescale_boxes(np.array([[0, 0, 499, 334]]), (500, 335)).tolist() == [[0, 0, 223, 223]]
    assert M.rescale_boxes(np.array([[0, 0, 499, 334]]), (500, 335)).dtype == np.int64
    with pytest.raises(ValueError):
        M.rescale_boxes(np.array([[5, 0, 4, 3]]), (10, 10))


def test_rescale_boxes_on_cub_test_metadata(cub_metadata_root):
    folder = os.path.join(cub_metadata_root, "CUB", "test")
    sizes = {i: (int(w), int(h)) for i, w, h in _raw_lines(os.path.join(folder, "image_sizes.txt"))}
    rows = _raw_lines(os.path.join(folder, "localization.txt"))
    boxes = np.array([[int(v) for v in r[1:]] for r in rows])
    whs = np.array([sizes[r[0]] for r in rows], dtype=np.float64)
    # literal resize_bbox: int(float(x) * 224.0 / float(w)), one coordinate at a time, for every line
    want = [[int(float(x0) * 224.0 / w), int(float(y0) * 224.0 / h), int(float(x1) * 224.0 / w),
             int(float(y1) * 224.0 / h)] for (x0, y0, x1, y1), (w, h) in zip(boxes.tolist(), whs.tolist())]
    got = [M.rescale_boxes(b[None], wh).tolist()[0] for b, wh in zip(boxes[:400], whs[:400])]
    assert got == want[:400]
    # the whole split through the project's metadata reader
    meta = load_metadata(cub_metadata_root, "CUB", "test")
    got_all = [row for i in meta.image_ids for row in M.rescale_boxes(meta.boxes[i], meta.sizes[i]).tolist()]
    assert len(got_all) == len(want) == 5794
    by_id = {}
    for r, w in zip(rows, want):
        by_id.setdefault(r[0], []).append(w)
    assert got_all == [w for i in meta.image_ids for w in by_id[i]]
    assert any(int(float(v) * 224.0 / d) != round(float(v) * 224.0 / d)       # truncation matters
               for (v, d) in zip(boxes[:50, 0], whs[:50, 0]))


# ------------------------------------------------------------------ PxAP

def test_pxap_perfect_map_and_ignore_region():
    gt = np.zeros((224, 224), bool)
    gt[50:100, 60:120] = True                                   # F = 3000 foreground pixels
    ev = M.MaskEvaluator(0.01)
    ev.accumulate(gt.astype(np.float64), gt)
    # all foreground at 1.0 (bin [1, 2)), all background at 0.0: precision 1 at recall 1 -> 100
    assert ev.compute() == 100.0
    # An ignore region scored 1.0 as well: left out -> still 100; counted as background, the top point
    # has precision F / (F + I) = 3000 / (3000 + 1000) at recall 1 -> 75.
    ignore = np.zeros_like(gt)
    ignore[150:170, 10:60] = True                               # I = 1000
    m = (gt | ignore).astype(np.float64)
    with_ignore, without = M.MaskEvaluator(0.01), M.MaskEvaluator(0.01)
    with_ignore.accumulate(m, gt, ignore)
    without.accumulate(m, gt)
    assert with_ignore.compute() == 100.0
    assert without.compute() == pytest.approx(75.0)
    # the foreground part of an ignore box stays foreground (wsolevaluation: ignore = box \ foreground)
    both = M.MaskEvaluator(0.01)
    both.accumulate(gt.astype(np.float64), gt, gt | ignore)
    assert both.compute() == 100.0
    with pytest.raises(RuntimeError):
        M.MaskEvaluator(0.01).compute()                         # nothing accumulated


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_pxap_equals_literal_histogram_formula(interval):
    rng = np.random.default_rng(5)
    maps, gts, ignores = [], [], []
    for i in range(12):
        m, _ = _random_case(rng, KINDS[i % 6])
        m = cv2.resize(m, (224, 224)) if m.shape != (224, 224) else m
        m = np.clip(m, 0, 1)
        gt = _gauss((224, 224), *rng.uniform(40, 180, 2), *rng.uniform(10, 50, 2)) > 0.5
        ign = np.zeros_like(gt)
        ign[rng.integers(0, 150):, rng.integers(0, 150):] = True
        maps.append(m)
        gts.append(gt)
        ignores.append(ign)
    maps[0] = gts[0].astype(np.float64)                         # exact 0.0 and 1.0 values too
    ev = M.MaskEvaluator(interval)
    halves = [M.MaskEvaluator(interval), M.MaskEvaluator(interval)]
    for i, (m, gt, ign) in enumerate(zip(maps, gts, ignores)):
        ev.accumulate(m, gt, ign)
        halves[i % 2].accumulate(m, gt.astype(np.uint8), ign.astype(np.uint8))
    want = oracle.pxap(maps, [oracle.label_map(g, i) for g, i in zip(gts, ignores)], interval)
    assert ev.compute() == want                                  # exact
    merged = M.MaskEvaluator.merge([pickle.loads(pickle.dumps(h)) for h in halves])
    assert merged.compute() == want
    assert 0 < want < 100


def test_load_gt_mask(tmp_path):
    a = np.zeros((300, 400), np.uint8)
    a[30:90, 40:120] = 255
    b = np.zeros((300, 400), np.uint8)
    b[200:260, 300:380] = 255
    ignore = np.zeros((300, 400), np.uint8)
    ignore[0:150, 0:200] = 255
    for name, img in (("a.png", a), ("b.png", b), ("ignore.png", ignore)):
        cv2.imwrite(str(tmp_path / name), img)
    gt, ign = M.load_gt_mask([str(tmp_path / "a.png"), str(tmp_path / "b.png")], str(tmp_path / "ignore.png"))
    near = lambda img: cv2.resize(np.float32(img), (224, 224), interpolation=cv2.INTER_NEAREST) > 0.5  # noqa: E731
    assert np.array_equal(gt, near(a) | near(b))
    assert np.array_equal(ign, near(ignore) & ~gt)
    assert not (gt & ign).any()
