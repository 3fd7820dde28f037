"""wsol_fast.data.drawing, the generated datasets' pen: hand-worked blends and placements, the background's
colour map worked out on a flat photo, the digit masks and their per-split pools, and the clutter's promise
(nothing drawn inside the box it keeps out of). The datasets built with it: tests/data/test_builtin*.py."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from wsol_fast.data import drawing  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return drawing.digit_masks(0)


def test_blend_hand_computed_and_clipped_at_the_border():
    img = np.zeros((4, 5, 3), np.float32)
    alpha = np.array([[0.5, 1.0], [0.25, 0.0]], np.float32)
    colour = np.array([200, 100, 40], np.float32)
    drawing.blend(img, alpha, 4, 3, colour)      # only alpha[0, 0] lands inside (pixel x 4, y 3)
    want = np.zeros((4, 5, 3), np.float32)
    want[3, 4] = 0.5 * colour
    np.testing.assert_array_equal(img, want)
    drawing.blend(img, alpha, -1, -1, colour)    # only alpha[1, 1] (0: no change) lands at (0, 0)
    np.testing.assert_array_equal(img, want)
    drawing.blend(img, alpha, 0, 0, colour)      # fully inside: img * (1 - a) + colour * a
    want[0, 0], want[0, 1], want[1, 0] = 0.5 * colour, colour, 0.25 * colour
    np.testing.assert_array_equal(img, want)
    drawing.blend(img, alpha, 7, 0, colour)      # entirely outside: nothing
    np.testing.assert_array_equal(img, want)


def test_touches_reads_the_inclusive_box():
    alpha = np.zeros((3, 3), np.float32)
    alpha[2, 2] = 0.1                            # one pixel of coverage, at (x + 2, y + 2)
    assert drawing._touches(alpha, 0, 0, (2, 2, 5, 5))          # the box's inclusive corner
    assert not drawing._touches(alpha, 0, 0, (3, 3, 5, 5))      # one past it
    assert not drawing._touches(alpha, 0, 0, (0, 0, 1, 1))      # covers the alpha's empty pixels only
    assert drawing._touches(alpha, 10, 20, (12, 22, 12, 22))    # placed at (10, 20)


def test_place_mask_sizes_and_rotations():
    ones = np.ones((5, 5), np.float32)
    assert drawing.place_mask(ones, 20, 10, 0).shape == (10, 20)            # w x h, cropped to the support
    np.testing.assert_allclose(drawing.place_mask(ones, 20, 10, 0), 1.0)
    assert drawing.place_mask(ones, 1.2, 0.4, 0).shape == (2, 2)            # at least 2 x 2
    # A square turned by 90 degrees about the canvas centre is the same square, to the pixel.
    np.testing.assert_allclose(drawing.place_mask(ones, 10, 10, 90), np.ones((10, 10)), atol=1e-5)
    # Turned by 45 degrees its support grows to about the diagonal, 10 * sqrt(2) = 14.1.
    assert 13 <= drawing.place_mask(ones, 10, 10, 45).shape[0] <= 16


def test_background_colour_map_on_a_flat_grey_photo():
    """On a flat grey photo (every channel c) the colour map's result is worked out by hand: the matrix
    maps grey c to contrast * c * gain_k + level - contrast * c * mean(gain) on channel k, so the image is
    flat, its channel mean is the drawn level (LEVEL: 25..60) and each channel is within
    contrast * c * (gain spread: 1.3 - 0.6) of it."""
    c = 64.0                                     # low enough that no channel is clipped at 0
    flat = [np.full((40, 60, 3), c, np.uint8)]
    for seed in range(8):
        img = drawing.background(np.random.default_rng(seed), flat, 30, 20)
        assert img.shape == (20, 30, 3) and img.dtype == np.float32
        assert np.abs(img - img[0, 0]).max() < 1e-3                  # flat (up to float32 rounding)
        level = float(img[0, 0].mean())
        assert drawing.LEVEL[0] - 1e-3 <= level <= drawing.LEVEL[1] + 1e-3
        assert np.abs(img[0, 0] - level).max() <= drawing.CONTRAST[1] * c * 0.7 + 1e-3


def test_object_colour_is_light():
    # HSV value 0.75..1: the brightest channel is at least 0.75 * 255 (within the uint8 rounding).
    brightest = [drawing.object_colour(np.random.default_rng(s)).max() for s in range(50)]
    assert min(brightest) >= 0.75 * 255 - 1


def test_digit_masks_and_their_pools(digits):
    masks, pools = digits
    assert len(masks) == 1797                                 # sklearn's digits
    for m in masks[:50]:
        assert m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
        # cropped to the ink: every border row and column holds some
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    from sklearn.datasets import load_digits
    target = load_digits().target
    for d in range(drawing.NUM_CLASSES):
        n = int((target == d).sum())
        sizes = [len(pools[s][d]) for s in drawing.SPLITS]
        assert sizes == [int(0.6 * n), int(0.8 * n) - int(0.6 * n), n - int(0.8 * n)]   # 60 / 20 / 20
        together = np.concatenate([pools[s][d] for s in drawing.SPLITS])
        assert sorted(together.tolist()) == np.flatnonzero(target == d).tolist()        # disjoint, all
    again = drawing.digit_masks(0)[1]
    other = drawing.digit_masks(1)[1]
    assert all((a == b).all() for a, b in zip(again["val"], pools["val"]))             # a function of the seed
    assert any((a != b).any() for a, b in zip(other["val"], pools["val"]))


def test_clutter_keeps_out_of_the_box(digits):
    """Strokes and fragments go anywhere but the keep-out box: inside it the image is untouched."""
    masks, pools = digits
    for seed in range(6):
        img = np.zeros((90, 120, 3), np.float32)
        keep_out = (40, 30, 80, 60)
        drawing.clutter(np.random.default_rng(seed), img, np.array([220.0, 200.0, 180.0], np.float32), 4,
                        masks, pools["train"], 30.0, keep_out)
        assert not img[30:61, 40:81].any()
        assert img.max() > 100                                # and something was drawn elsewhere


def test_write_jpeg_round_trip(tmp_path):
    image = np.zeros((12, 20, 3), np.uint8)
    image[:, 10:] = 255
    path = str(tmp_path / "a.jpg")
    drawing.write_jpeg(image, path, 95)
    back = cv2.imread(path)
    assert back.shape == (12, 20, 3)
    assert np.abs(back.astype(int) - image).mean() < 8
