"""The generated datasets' drawing: handwritten digit masks (sklearn's digits, redrawn with an even pen),
dimmed photo backgrounds (skimage's samples), light object colours, placing and blending a mask, and the
clutter (strokes and digit fragments kept off the object). builtin.py, builtin_parts.py and builtin_masks.py
draw with these; each is a pure function of its rng and arguments.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
BACKGROUNDS = ("brick", "grass", "gravel", "camera", "coffee", "chelsea", "astronaut", "rocket", "coins",
               "moon", "hubble_deep_field", "immunohistochemistry", "page")
STROKE = 5.0                  # pen width of the digit masks, in their 60 x 60 canvas
CONTRAST = (0.12, 0.3)        # background contrast kept (x the photo's); version 1 kept 0.35..0.8
LEVEL = (25.0, 60.0)          # background mean brightness (0..255)


def write_jpeg(image: np.ndarray, path: str, quality: int) -> None:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    data.tofile(path)


def digit_masks(seed: int):
    """Each sklearn digit as a float32 coverage mask cropped to its ink, and the per-split pools:
    {split: [sample indices of class 0, ..., of class 9]} (disjoint 60/20/20 per class)."""
    import cv2
    from skimage.morphology import skeletonize
    from sklearn.datasets import load_digits

    digits = load_digits()
    masks = []
    for img in digits.images:
        padded = np.pad(img.astype(np.float32) / 16.0, 1)          # zero border: strokes end cleanly
        big = cv2.resize(padded, (60, 60), interpolation=cv2.INTER_CUBIC)
        # The pen's path (skeleton of the upscaled ink), redrawn with an even, anti-aliased stroke.
        path = skeletonize(big > 0.35)
        dist = cv2.distanceTransform((~path).astype(np.uint8), cv2.DIST_L2, 5)
        alpha = np.clip(STROKE / 2 + 0.5 - dist, 0.0, 1.0)
        ys, xs = np.nonzero(alpha)
        masks.append(alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy())
    pools = {s: [] for s in SPLITS}
    rng = np.random.default_rng([seed, 0xD1617])
    for d in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        cut = [0, int(0.6 * len(idx)), int(0.8 * len(idx)), len(idx)]
        for k, s in enumerate(SPLITS):
            pools[s].append(idx[cut[k]:cut[k + 1]])
    return masks, pools


_BACKGROUND_CACHE: list = []


def backgrounds() -> list:
    """The bundled skimage images as uint8 BGR, longest side at most 512 (comparable texture scale)."""
    if not _BACKGROUND_CACHE:
        import cv2
        import skimage.data

        for name in BACKGROUNDS:
            img = np.asarray(getattr(skimage.data, name)())
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img[..., 2::-1]
            scale = 512 / max(img.shape[:2])
            if scale < 1:
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            _BACKGROUND_CACHE.append(np.ascontiguousarray(img, dtype=np.uint8))
    return _BACKGROUND_CACHE


def background(rng, backgrounds, w: int, h: int) -> np.ndarray:
    """A random crop at a random scale, flipped, recoloured; float32 BGR in 0..255."""
    import cv2

    src = backgrounds[rng.integers(len(backgrounds))]
    sh, sw = src.shape[:2]
    scale = rng.uniform(0.5, 1.8)
    cw, ch = min(sw, max(8, int(w * scale))), min(sh, max(8, int(h * scale)))
    x, y = rng.integers(0, sw - cw + 1), rng.integers(0, sh - ch + 1)
    crop = src[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    # One affine colour map: saturation, per-channel gains (a tint), the contrast around the mean
    # scaled down to CONTRAST and the mean moved to a dark LEVEL, applied as a single 3 x 4 matrix.
    sat = rng.uniform(0.3, 1.2)
    colour = np.diag(rng.uniform(0.6, 1.3, 3)) @ (sat * np.eye(3) + (1 - sat) / 3)
    contrast = rng.uniform(*CONTRAST)
    mean = float((colour @ np.asarray(cv2.mean(img)[:3])).mean())
    matrix = np.hstack([contrast * colour, np.full((3, 1), rng.uniform(*LEVEL) - contrast * mean)])
    return np.clip(cv2.transform(img, matrix.astype(np.float32)), 0, 255)


def object_colour(rng) -> np.ndarray:
    """A light BGR colour of random hue and saturation (the backgrounds are dark)."""
    import cv2

    value = rng.uniform(0.75, 1.0)
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.3, 1.0) * 255, value * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def place_mask(mask: np.ndarray, w: float, h: float, angle: float) -> np.ndarray:
    """`mask` resized to w x h, rotated by `angle` degrees, cropped to its support."""
    import cv2

    w, h = max(2, int(round(w))), max(2, int(round(h)))
    m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    side = int(np.ceil(np.hypot(w, h))) + 2
    canvas = np.zeros((side, side), np.float32)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy:oy + h, ox:ox + w] = m
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, rot, (side, side), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(canvas > 0.02)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def blend(img: np.ndarray, alpha: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    """Blend `colour` into img with coverage `alpha` placed at (x, y), clipped at the image border."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + alpha.shape[1], w), min(y + alpha.shape[0], h)
    if x0 < x1 and y0 < y1:
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + colour * a


def _touches(alpha: np.ndarray, x: int, y: int, box) -> bool:
    """Whether coverage `alpha` placed at (x, y) reaches into `box` (x0, y0, x1, y1 inclusive)."""
    x0, y0, x1, y1 = max(box[0], x), max(box[1], y), min(box[2] + 1, x + alpha.shape[1]), \
        min(box[3] + 1, y + alpha.shape[0])
    return x0 < x1 and y0 < y1 and bool(alpha[y0 - y:y1 - y, x0 - x:x1 - x].any())


def clutter(rng, img, colour, stroke: int, masks, pool, obj_h: float, keep_out) -> None:
    """Distractor strokes (lines, curves, arcs) of the object's colour and width, and small fragments of
    other digits, drawn onto `img` in place. A distractor that would reach into `keep_out` (the object's
    box plus a margin) is drawn again elsewhere (up to 4 tries, then left out): the GT box holds the digit
    alone, and no distractor is cut off at the box's edge (which would outline it)."""
    h, w = img.shape[:2]
    for count, make in ((rng.integers(3, 8), lambda: _stroke(rng, h, w, stroke)),
                        (rng.integers(1, 4), lambda: _fragment(rng, h, w, masks, pool, obj_h))):
        for _ in range(count):
            for _attempt in range(4):
                alpha, x, y = make()
                if not _touches(alpha, x, y, keep_out):
                    blend(img, alpha, x, y, np.clip(colour + rng.uniform(-35, 35, 3), 0, 255))
                    break


def _fragment(rng, h: int, w: int, masks, pool, obj_h: float):
    """Half of a random digit at 20..35% of the object's height: (coverage, x, y)."""
    m = masks[rng.choice(pool[rng.integers(NUM_CLASSES)])]
    mh, mw = m.shape
    part = [m[: mh // 2], m[mh // 2:], m[:, : mw // 2], m[:, mw // 2:]][rng.integers(4)]
    fh = obj_h * rng.uniform(0.2, 0.35) * part.shape[0] / mh
    frag = place_mask(part, fh * part.shape[1] / part.shape[0], fh, rng.uniform(-30, 30))
    return frag, int(rng.integers(-frag.shape[1] // 2, w)), int(rng.integers(-frag.shape[0] // 2, h))


def _stroke(rng, h: int, w: int, stroke: int):
    """One random stroke (a straight line, a quadratic Bezier curve or an elliptic arc), about the
    digit's pen width: (coverage cropped to its bounding rectangle, x, y)."""
    import cv2

    thickness = max(1, int(round(stroke * rng.uniform(0.6, 1.0))))
    layer = np.zeros((h, w), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        start = rng.uniform([0, 0], [w, h])
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5) * max(w, h)
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        cv2.line(layer, tuple(int(v) for v in start), tuple(int(v) for v in end), 255, thickness, cv2.LINE_AA)
    elif kind == 1:
        c = rng.uniform(0, 1, (3, 2)) * rng.uniform(0.3, 0.6) * [w, h] + rng.uniform([0, 0], [w, h])
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * c[0] + 2 * (1 - t) * t * c[1] + t ** 2 * c[2]
        cv2.polylines(layer, [pts.astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    else:
        centre = tuple(int(v) for v in rng.uniform([0, 0], [w, h]))
        axes = tuple(int(v) for v in rng.uniform(0.06, 0.22, 2) * min(w, h))
        start = rng.uniform(0, 360)
        cv2.ellipse(layer, centre, axes, rng.uniform(0, 180), start, start + rng.uniform(90, 270), 255,
                    thickness, cv2.LINE_AA)
    x, y, bw, bh = cv2.boundingRect(layer)
    return layer[y:y + max(bh, 1), x:x + max(bw, 1)].astype(np.float32) * np.float32(1 / 255), x, y
