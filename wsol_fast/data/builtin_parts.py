"""`builtin-parts`: a generated dataset where CAM's known failure can happen (paper, Fig. 1 and 3.1).

The paper's argument needs objects with a small, highly discriminative part and a larger body that is only
weakly class-informative: a bird's head against its body. Each image holds one such object:

* **Head**: a handwritten digit of the class (the same sklearn digits, per-split pools and pen as the
  `builtin` set) drawn in the class's own light colour (hue = 18 x class, +-4), small: its height is
  1.0-1.3x the body's thickness, so it covers a fifth of the object's box or less. It alone tells the class
  for sure, by its colour at a glance and by its shape.
* **Body**: a filled, striped ellipse (aspect 1.6-2.3, tilted -30..30 degrees) about 3-6x the head's area,
  the head attached at one end of its long axis. Its colour is the class's body hue (the head's hue + 90,
  the opposite colour) in 40% of the images and a random hue otherwise, so it is only weakly
  class-informative.
* **GT box**: the tight box of head and body together (coverage >= 0.5), 10-50% of the image.
* **Part box**: the head's own tight box, in `part_boxes.txt` beside `localization.txt` (same format). The
  evaluation uses it to say where a map's box lies: on the head only, or on the whole object.
* Backgrounds, clutter (strokes and digit fragments, kept off the object) and image sizes are those of the
  `builtin` set (data/builtin.py); the clutter takes a random light colour, independent of the class.

Version 1 drew the head in a random colour shared with the clutter. Its classifiers learned the body's
colour and not the small head (top-1 43% after the 5-epoch CAM warm-up, about the 46% that the body's hue
alone allows; the CAM's peak lay on the head in 1% of the test images, which the head covers 21% of), so
the part-domination the paper fixes could not arise there.

On disk it is the `builtin` layout with `builtin-parts` for `builtin`; it is generated on first use by
`python -m wsol_fast.train --dataset builtin-parts` (default cache `.wsol_fast_cache/builtin-parts`), and is
a pure function of (seed, parameters, VERSION).
"""
from __future__ import annotations

import numpy as np

from . import drawing

DATASET = "builtin-parts"
VERSION = 2   # 2: the head in the class's colour, the clutter not (1: a random head colour shared with the clutter)
BODY_AREA = (0.07, 0.16)      # ellipse area / image area
BODY_ASPECT = (1.6, 2.3)      # long / short axis
HEAD_SCALE = (1.0, 1.3)       # head height / body thickness (2 x short semi-axis)
CLASS_HUE_P = 0.4             # share of bodies in the class's body hue
BOX_LIMITS = (0.10, 0.50)     # GT box area / image area


def _hsv_to_bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    import cv2

    hsv = np.array([[[hue % 180, saturation * 255, value * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _head_colour(rng, label: int) -> np.ndarray:
    """The class's own light colour (the backgrounds are dark)."""
    return _hsv_to_bgr(18 * label + rng.uniform(-4, 4), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))


def _body_colour(rng, label: int) -> np.ndarray:
    """The class's body hue (opposite the head's) with probability CLASS_HUE_P, else a random hue."""
    hue = 18 * label + 90 + rng.uniform(-4, 4) if rng.random() < CLASS_HUE_P else rng.uniform(0, 180)
    return _hsv_to_bgr(hue, rng.uniform(0.5, 1.0), rng.uniform(0.6, 0.9))


def _object(rng, w: int, h: int, digit: np.ndarray):
    """(body coverage, head coverage) on one canvas cropped to the object's support, both float32."""
    import cv2

    area = rng.uniform(*BODY_AREA) * w * h
    aspect = rng.uniform(*BODY_ASPECT)
    b = np.sqrt(area / (np.pi * aspect))          # short semi-axis
    a = aspect * b                                 # long semi-axis
    angle = rng.uniform(-30, 30)
    head_h = 2 * b * rng.uniform(*HEAD_SCALE)
    head = drawing.place_mask(digit, head_h * digit.shape[1] / digit.shape[0], head_h, rng.uniform(-15, 15))
    side = int(2 * a + 2 * max(head.shape) + 8)
    cx = cy = side / 2
    body = np.zeros((side, side), np.uint8)
    shift = 4                                      # sub-pixel precision of cv2.ellipse
    cv2.ellipse(body, (int(cx * 16), int(cy * 16)), (int(a * 16), int(b * 16)), -angle, 0, 360, 255, -1,
                cv2.LINE_AA, shift)
    body = body.astype(np.float32) / 255
    heads = np.zeros((side, side), np.float32)
    end = 1 if rng.random() < 0.5 else -1          # which end of the long axis carries the head
    reach = a + 0.3 * head_h
    hx = cx + end * reach * np.cos(np.radians(angle)) - head.shape[1] / 2
    hy = cy - end * reach * np.sin(np.radians(angle)) - head.shape[0] / 2
    hx, hy = int(round(hx)), int(round(hy))
    heads[hy:hy + head.shape[0], hx:hx + head.shape[1]] = head
    support = np.maximum(body, heads)
    ys, xs = np.nonzero(support > 0.02)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return body[crop], heads[crop]


def render(rng, p: dict, label: int, masks, pool, backgrounds):
    """One image (uint8 BGR), its GT box and the head's box (x0, y0, x1, y1, inclusive): the `builtin`
    renderer's contract plus the part box, which `builtin` writes to part_boxes.txt."""
    w, h = (int(v) for v in rng.integers(p["min_size"], p["max_size"] + 1, 2))
    img = drawing.background(rng, backgrounds, w, h)
    head_colour = _head_colour(rng, label)
    clutter_colour = drawing.object_colour(rng)
    body_colour = _body_colour(rng, label)
    digit = masks[rng.choice(pool[label])]
    for _ in range(50):
        body, head = _object(rng, w, h, digit)
        union = np.maximum(body, head)
        ys, xs = np.nonzero(union >= 0.5)
        ink = (xs.min(), ys.min(), xs.max(), ys.max())
        frac = (ink[2] - ink[0] + 1) * (ink[3] - ink[1] + 1) / (w * h)
        if union.shape[1] <= w and union.shape[0] <= h and BOX_LIMITS[0] <= frac <= BOX_LIMITS[1]:
            break
    else:
        raise RuntimeError(f"cannot place a parts object in a {w}x{h} image; raise min_size")
    x = int(round(rng.beta(0.7, 0.7) * (w - union.shape[1])))
    y = int(round(rng.beta(0.7, 0.7) * (h - union.shape[0])))
    box = (x + int(ink[0]), y + int(ink[1]), x + int(ink[2]), y + int(ink[3]))
    hys, hxs = np.nonzero(head >= 0.5)
    head_box = (x + int(hxs.min()), y + int(hys.min()), x + int(hxs.max()), y + int(hys.max()))
    stroke = max(2, int(round(drawing.STROKE * head.shape[0] / 60)))
    keep_out = (box[0] - stroke, box[1] - stroke, box[2] + stroke, box[3] + stroke)
    drawing.clutter(rng, img, clutter_colour, stroke, masks, pool, box[3] - box[1] + 1, keep_out)
    # The body: striped (period 5-9 px, random direction) so it has texture, not only colour.
    bh, bw = body.shape
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    phi, period = rng.uniform(0, np.pi), rng.uniform(5, 9)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period)
    field = body_colour[None, None, :] * (0.7 + 0.3 * stripes[..., None])
    region = img[y:y + bh, x:x + bw]
    region[:] = region * (1 - body[..., None]) + field * body[..., None]
    drawing.blend(img, head, x, y, head_colour)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), box, head_box
