"""wsol_fast.box_search on its own: hand-worked thresholds, IoUs, contour boxes and areas, the interval max,
and every-threshold best IoUs on small maps against wsolevaluation's literal loop
(tests/wsolevaluation_oracle.py). The protocol on top (BoxEvaluator, MaxBoxAcc) and the search on hard
and large maps are in tests/test_metrics.py."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import wsolevaluation_oracle as oracle
from wsol_fast import box_search as B
from wsol_fast import metrics as M


def test_integer_thresholds_truncate_the_float64_product():
    # 0.5 * 255 = 127.5 -> 127; 0.999 * 255 = 254.745 -> 254; 0.1 * 255 = 25.5 -> 25.
    assert B.integer_thresholds(np.array([0.0, 0.5, 0.999, 0.1]), 255).tolist() == [0, 127, 254, 25]
    # 0.29 * 100 is 28.999999999999996 in float64: truncated to 28, as wsolevaluation's int(t * max).
    assert B.integer_thresholds(np.array([0.29]), 100).tolist() == [28] == [int(0.29 * 100)]


def test_multiple_iou_hand_computed():
    a = [[0, 0, 9, 9], [0, 0, 0, 0]]
    b = [[5, 5, 14, 14], [10, 0, 19, 9], [0, 0, 9, 9]]
    ious = B.multiple_iou(a, b)
    # 10 x 10 boxes overlapping on 5 x 5 pixels: 25 / (100 + 100 - 25) = 1 / 7; touching sides share no
    # pixel (x 0..9 against 10..19); a box against itself: 1. The one-pixel box (0, 0, 0, 0) lies in the
    # first: 1 / 100 against it, 0 against the others.
    want = [[1 / 7, 0.0, 1.0], [0.0, 0.0, 1 / 100]]
    assert ious.shape == (2, 3) and ious.dtype == np.float64
    np.testing.assert_array_equal(ious, want)
    np.testing.assert_array_equal(ious, oracle.multiple_iou(np.array(a), np.array(b)))


def test_multiple_iou_checks_the_box_convention():
    with pytest.raises(ValueError, match=r"boxes_a\[1\] = \[5, 0, 4, 3\]"):
        B.multiple_iou([[0, 0, 1, 1], [5, 0, 4, 3]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"boxes_b\[0\]"):
        B.multiple_iou([[0, 0, 1, 1]], [[-1, 0, 1, 1]])
    # check=False: computed anyway; a zero-area box (x1 = x0 - 1) has union 0, so IoU 0 (no division).
    with np.errstate(all="raise"):
        assert B.multiple_iou([[5, 5, 4, 9]], [[5, 5, 4, 9]], check=False).tolist() == [[0.0]]


def _block(binary, x0, y0, x1, y1):
    binary[y0:y1 + 1, x0:x1 + 1] = 255      # pixels x0..x1, y0..y1 inclusive


def test_boxes_of_binary_are_one_past_the_ink_and_clipped_at_the_border():
    binary = np.zeros((10, 12), np.uint8)   # h 10, w 12
    _block(binary, 2, 3, 5, 7)
    # boundingRect of pixels x 2..5, y 3..7 is (2, 3, w 4, h 5): the box is (x, y, x + w, y + h).
    assert B.boxes_of_binary(binary, True).tolist() == [[2, 3, 6, 8]]
    edge = np.zeros((10, 12), np.uint8)
    _block(edge, 8, 6, 11, 9)               # touches the right and bottom sides: x + w = 12 -> 11, y + h = 10 -> 9
    assert B.boxes_of_binary(edge, True).tolist() == [[8, 6, 11, 9]]
    assert B.boxes_of_binary(np.zeros((4, 4), np.uint8), True).tolist() == [[0, 0, 0, 0]]   # no contour


def test_boxes_of_binary_all_contours_or_the_largest():
    binary = np.zeros((10, 12), np.uint8)
    _block(binary, 0, 0, 1, 1)              # 2 x 2: polygon area 1
    _block(binary, 6, 5, 10, 8)             # 5 x 4: polygon area 4 x 3 = 12
    assert sorted(B.boxes_of_binary(binary, True).tolist()) == [[0, 0, 2, 2], [6, 5, 11, 9]]
    assert B.boxes_of_binary(binary, False).tolist() == [[6, 5, 11, 9]]
    for multi in (True, False):             # the oracle's boxes at any threshold of the same picture
        assert sorted(B.boxes_of_binary(binary, multi).tolist()) == sorted(oracle.boxes(binary / 255.0, 0.5, multi))


def test_contour_areas_hand_computed():
    square = np.array([[[0, 0]], [[4, 0]], [[4, 3]], [[0, 3]]], np.int32)       # 4 x 3 = 12
    triangle = np.array([[[0, 0]], [[4, 0]], [[0, 2]]], np.int32)               # 4 x 2 / 2 = 4
    point = np.array([[[7, 7]]], np.int32)                                      # 0
    contours = [square, triangle, point]
    np.testing.assert_array_equal(B._contour_areas(contours), [12.0, 4.0, 0.0])
    np.testing.assert_array_equal(B._contour_areas(contours), [cv2.contourArea(c) for c in contours])
    assert B._largest(contours)[0] is square and B._largest([point])[0] is point


def test_interval_max_hand_computed():
    # [0, 3) holds 0.5, [2, 5) holds 0.7: k = 0, 1 -> 0.5; 2, 3, 4 -> 0.7; 5.. -> none (-inf).
    got = B._interval_max(np.array([0, 2]), np.array([3, 5]), np.array([0.5, 0.7]), size=8)
    np.testing.assert_array_equal(got, [0.5, 0.5, 0.7, 0.7, 0.7, -np.inf, -np.inf, -np.inf])


def _two_plateaus():
    """A 20 x 20 map: block A (x, y 2..5) at 1.0 -> 255, block B (x, y 10..15) at 0.5 -> 127."""
    m = np.zeros((20, 20))
    m[2:6, 2:6] = 1.0
    m[10:16, 10:16] = 0.5
    return m


@pytest.mark.parametrize("multi_contour", [True, False], ids=["multi", "largest"])
def test_best_ious_of_two_plateaus_hand_computed(multi_contour):
    """GT = B's box (10, 10, 16, 16). Thresholds 0, 0.4, 0.6 are k = 0, 102, 153 of max 255: at 0 and 102
    both blocks are in, B's box equals the GT (IoU 1; B is also the larger contour, 25 against 9); at 153
    only A is left, (2, 2, 6, 6): IoU 0."""
    m, gt = _two_plateaus(), np.array([[10, 10, 16, 16]])
    thresholds = np.array([0.0, 0.4, 0.6])
    img = M.quantize_scoremap(m)
    assert B.threshold_boxes(img, thresholds, multi_contour).best_ious(gt).tolist() == [1.0, 1.0, 0.0]
    assert B._ThresholdBoxes(img, thresholds, multi_contour).best_ious(gt).tolist() == [1.0, 1.0, 0.0]
    assert oracle.best_ious(m, gt, thresholds, multi_contour).tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("multi_contour", [True, False], ids=["multi", "largest"])
def test_an_all_zero_map_scores_the_zero_box(multi_contour):
    # No contour at any threshold: the (0, 0, 0, 0) box, whose IoU with (0, 0, 1, 1) is 1 / 4.
    thresholds = M.cam_thresholds(0.05)
    search = B.threshold_boxes(np.zeros((16, 16), np.uint8), thresholds, multi_contour)
    best = search.best_ious(np.array([[0, 0, 1, 1]]))
    np.testing.assert_array_equal(best, np.full(len(thresholds), 0.25))


@pytest.mark.parametrize("multi_contour", [True, False], ids=["multi", "largest"])
def test_small_maps_equal_the_literal_loop(multi_contour):
    """Both searches (threshold_boxes, and the contour search by itself) against wsolevaluation's literal
    per-threshold loop, bit for bit, on small smooth and noisy maps with one or two GT boxes."""
    rng = np.random.default_rng(3)
    thresholds = M.cam_thresholds(0.01)
    yy, xx = np.mgrid[:40, :48]
    for trial in range(6):
        m = np.zeros((40, 48))
        for _ in range(2):
            cx, cy, s = rng.uniform(5, 43), rng.uniform(5, 35), rng.uniform(3, 10)
            m += rng.uniform(0.4, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        m += 0.2 * rng.random(m.shape) * (trial % 2)
        m = m / m.max()
        x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
        gt = np.array([[x0, y0, x0 + 10, y0 + 8], [2, 2, 20, 15]][: 1 + trial % 2])
        want = oracle.best_ious(m, gt, thresholds, multi_contour)
        img = M.quantize_scoremap(m)
        np.testing.assert_array_equal(B.threshold_boxes(img, thresholds, multi_contour).best_ious(gt), want)
        np.testing.assert_array_equal(B._ThresholdBoxes(img, thresholds, multi_contour).best_ious(gt), want)


def test_threshold_boxes_uses_the_component_trees_where_built():
    """All contours (MaxBoxAccV2) take the component-tree path when the C++ op is built; the largest
    contour (V1) always takes the contour search."""
    img = M.quantize_scoremap(_two_plateaus())
    thresholds = M.cam_thresholds(0.1)
    tree = B._TreeBoxes if B._threshold_boxes_op() is not None else B._ThresholdBoxes
    assert type(B.threshold_boxes(img, thresholds, True)) is tree
    assert type(B.threshold_boxes(img, thresholds, False)) is B._ThresholdBoxes
