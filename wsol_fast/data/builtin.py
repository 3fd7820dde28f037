# Over 400 lines: one generated dataset end to end (drawing, splits, metadata, the locked build-and-swap).
"""The built-in dataset: handwritten digits placed on cluttered photo backgrounds, generated on first use.

What it contains (defaults; every number is a parameter of `generate`):

* 3,000 train / 300 val / 300 test JPEG images (quality 90), each with one object: a handwritten digit
  0-9 (10 classes, class k = digit k, balanced: counts differ by at most one per split).
* Image sizes vary: width and height are drawn independently from 120..200 pixels, so the rescaling of
  boxes to the 224 x 224 evaluation size is exercised.
* Objects are real handwriting: the 1,797 8 x 8 digits that scikit-learn ships
  (`sklearn.datasets.load_digits`), upscaled smoothly (bicubic, to 60 x 60), their pen path (the
  skeleton of the upscaled ink) redrawn as an even anti-aliased stroke about a tenth of the digit's
  height wide, with aspect jitter (x0.8..1.25) and rotation (-15..15 degrees). Each class's samples
  are split 60/20/20 into disjoint train / val / test pools, so val and test digits are never seen in
  training.
* Object size and position: the GT box covers 7..42% of the image area (always within 5..50%; the
  generator enforces it; 25% on average), and is placed at a random position (offsets drawn from
  Beta(0.7, 0.7), which favours the sides), so a centre prior is a weak baseline: a centred box of the
  image's aspect, at the best single scale, reaches IoU >= 0.5 on 16% of the default test images
  (IoU >= 0.7 on 2%).
* Backgrounds: random crops (random scale, flip) of the sample photographs and textures bundled inside
  scikit-image (`skimage.data`: brick, grass, gravel, camera, coffee, chelsea, astronaut, rocket, coins,
  moon, hubble_deep_field, immunohistochemistry, page), recoloured (per-channel gains, saturation) and
  dimmed: 12..30% of the photo's contrast around a dark mean level (25..60 of 255). Version 1 kept
  35..80% of the contrast at any level, with either polarity; a from-scratch InceptionV3 did not leave
  chance on it within the 10-minute CPU budget (README, "The built-in dataset").
* Clutter: 3..7 distractor strokes (straight lines, Bezier curves, elliptic arcs) of the digit's
  colour (jittered) and about its stroke width, plus 1..3 small fragments of digits (one half of a
  digit, 20..35% of the object's height), anywhere in the image except a margin around the object: a
  distractor that would touch it is drawn again elsewhere (or dropped), so the GT box holds the digit
  alone and no distractor is cut off at the box's edge.
* The object's colour is light (HSV value 0.75..1) with a random hue and saturation; the clutter takes
  the same colour (jittered), so colour alone does not tell the digit from the distractors.
* GT box: the tight box of the digit's ink as placed (the pixels where its coverage is >= 0.5), in
  inclusive pixel coordinates x0, y0, x1, y1 (wsolevaluation's IoU adds 1 to widths and heights).

On disk, in the wsolevaluation format (SPEC 3), under `root`:

    <root>/images/builtin/<split>/<digit>/<split>_<index>.jpg       image id: <split>/<digit>/<split>_<index>.jpg
    <root>/metadata/builtin/{train,val,test}/{image_ids,class_labels,image_sizes,localization}.txt
    <root>/builtin_manifest.json                                     written last: the dataset is complete

Everything is a pure function of (seed, parameters, VERSION): the same seed gives byte-identical files.
`generate` returns at once when a manifest with the same parameters exists; an interrupted generation
(no manifest) is redone from scratch, and a finished one is swapped into place by renames, so a half
written dataset is never used. Generating the default set takes about 7 s on one core (5.5 s when the
JPEG-writing thread gets a second core), imports included; it is about 36 MB.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..files import atomic_write

VERSION = 2   # 2: dark, low-contrast backgrounds and light objects (1: photo contrast, either polarity)
DATASET = "builtin"
SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
MANIFEST = "builtin_manifest.json"
DEFAULTS = dict(num_train=3000, num_val=300, num_test=300, min_size=120, max_size=200, quality=90)
BACKGROUNDS = ("brick", "grass", "gravel", "camera", "coffee", "chelsea", "astronaut", "rocket", "coins",
               "moon", "hubble_deep_field", "immunohistochemistry", "page")
AREA_RANGE = (0.07, 0.42)     # drawn GT box area / image area; the hard limits are 0.05..0.5
AREA_LIMITS = (0.05, 0.50)
STROKE = 5.0                  # pen width of the digit masks, in their 60 x 60 canvas
CONTRAST = (0.12, 0.3)        # background contrast kept (x the photo's); version 1 kept 0.35..0.8
LEVEL = (25.0, 60.0)          # background mean brightness (0..255)


def default_root(dataset: str = DATASET) -> str:
    """`$WSOL_FAST_CACHE/<dataset>`, else `./.wsol_fast_cache/<dataset>`."""
    return os.path.join(os.environ.get("WSOL_FAST_CACHE") or ".wsol_fast_cache", dataset)


def _kind(dataset: str):
    """(version, render function) of a built-in dataset: this module's digits, or builtin_parts'."""
    if dataset == DATASET:
        return VERSION, _render
    if dataset == "builtin-parts":
        from . import builtin_parts
        return builtin_parts.VERSION, builtin_parts.render
    raise ValueError(f"unknown built-in dataset {dataset!r}; known: {list(DATASETS)}")


DATASETS = (DATASET, "builtin-parts")


def data_root(root: str) -> str:
    """Images are at `os.path.join(data_root(root), "builtin", image_id)`."""
    return os.path.join(root, "images")


def metadata_root(root: str) -> str:
    """Metadata is at `<metadata_root(root)>/builtin/<split>/`."""
    return os.path.join(root, "metadata")


def is_complete(root: str, seed: int = 0, dataset: str = DATASET, **sizes) -> bool:
    """True when `root` holds a finished dataset with exactly these parameters."""
    return _complete(root, dataset, _params(seed, sizes, dataset), MANIFEST)


def generate(root: str | None = None, seed: int = 0, progress: bool = True, dataset: str = DATASET,
             **sizes) -> str:
    """Generate the dataset under `root` (default `default_root(dataset)`) unless it is already there;
    returns the metadata root. `dataset`: "builtin" (digits) or "builtin-parts" (data/builtin_parts.py).
    `sizes` overrides DEFAULTS: num_train, num_val, num_test, min_size, max_size, quality."""
    _kind(dataset)
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown builtin dataset parameters: {sorted(unknown)}")
    return _generate(root or default_root(dataset), dataset, _params(seed, sizes, dataset), MANIFEST,
                     lambda folder, p, show: _build(folder, p, show, dataset), progress)


def _complete(root: str, dataset: str, params: dict, manifest_name: str) -> bool:
    """A finished generation with exactly `params`: its manifest matches and every split is there."""
    try:
        with open(os.path.join(root, manifest_name)) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return False
    # builtin-parts also writes the heads' boxes; a cache made before they were written is rebuilt (same images).
    names = ("image_ids.txt", "part_boxes.txt") if dataset == "builtin-parts" else ("image_ids.txt",)
    files = [os.path.join(metadata_root(root), dataset, s, n) for s in SPLITS for n in names]
    return manifest.get("params") == params and all(os.path.isfile(f) for f in files)


def _generate(root: str, dataset: str, params: dict, manifest_name: str, build, progress: bool) -> str:
    """The generated datasets' shared life cycle: unless `root` already holds this generation, build it with
    `build(folder, params, progress) -> counts` in a temporary folder under a lock, then swap it in (the
    manifest removed first, so a crash in between reads as incomplete, and written last)."""
    root = os.path.abspath(root)
    if _complete(root, dataset, params, manifest_name):
        return metadata_root(root)
    os.makedirs(root, exist_ok=True)
    with _lock(root):
        if _complete(root, dataset, params, manifest_name):  # another process finished it while we waited
            return metadata_root(root)
        folder = os.path.join(root, f".building-{os.getpid()}")
        shutil.rmtree(folder, ignore_errors=True)
        counts = build(folder, params, progress)
        _remove(os.path.join(root, manifest_name))
        for sub in (data_root(""), metadata_root("")):
            target = os.path.join(root, sub, dataset)
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(folder, sub, dataset), target)
        shutil.rmtree(folder, ignore_errors=True)
        atomic_write(json.dumps({"version": params["version"], "params": params, "counts": counts}, indent=2),
                     os.path.join(root, manifest_name))
    return metadata_root(root)


# ----------------------------------------------------------------------------------- generation

def _params(seed: int, sizes: dict, dataset: str = DATASET) -> dict:
    p = {**DEFAULTS, **sizes, "seed": int(seed), "version": _kind(dataset)[0]}
    if dataset != DATASET:
        p["dataset"] = dataset
    if not 16 <= p["min_size"] <= p["max_size"]:
        raise ValueError(f"need 16 <= min_size <= max_size, got {p['min_size']}..{p['max_size']}")
    if min(p["num_train"], p["num_val"], p["num_test"]) < 1:
        raise ValueError("every split needs at least one image")
    return p


def _build(folder: str, p: dict, progress: bool, dataset: str = DATASET) -> dict:
    import cv2
    from tqdm.auto import tqdm

    cv2.setNumThreads(1)  # small images: threads cost more than they give, and keep the output exact
    masks, pools = _digit_masks(p["seed"])
    backgrounds = _backgrounds()
    version, render = _kind(dataset)
    counts = {}
    total = sum(p[f"num_{s}"] for s in SPLITS)
    pending = []
    # JPEG encoding and file writes (GIL released) overlap with drawing the next image.
    with ThreadPoolExecutor(max_workers=1) as writer, \
            tqdm(total=total, desc=f"generating {dataset} dataset", unit="img", disable=not progress,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        for split_no, split in enumerate(SPLITS):
            n = p[f"num_{split}"]
            labels = np.random.default_rng([p["seed"], split_no, version]).permutation(n) % NUM_CLASSES
            lines = {k: [] for k in ("image_ids", "class_labels", "image_sizes", "localization")}
            for d in range(NUM_CLASSES):
                os.makedirs(os.path.join(folder, "images", dataset, split, str(d)), exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([p["seed"], split_no, i, version])
                label = int(labels[i])
                image, box, *part = render(rng, p, label, masks, pools[split], backgrounds)
                image_id = f"{split}/{label}/{split}_{i:05d}.jpg"
                pending.append(writer.submit(_write_jpeg, image, os.path.join(folder, "images", dataset, image_id),
                                             p["quality"]))
                h, w = image.shape[:2]
                lines["image_ids"].append(image_id)
                lines["class_labels"].append(f"{image_id},{label}")
                lines["image_sizes"].append(f"{image_id},{w},{h}")
                lines["localization"].append(f"{image_id},{box[0]},{box[1]},{box[2]},{box[3]}")
                if part:   # builtin-parts: the head's box (data/builtin_parts.py)
                    lines.setdefault("part_boxes", []).append(f"{image_id},{','.join(map(str, part[0]))}")
                bar.update(1)
            meta = os.path.join(folder, "metadata", dataset, split)
            os.makedirs(meta, exist_ok=True)
            for name, rows in lines.items():
                with open(os.path.join(meta, f"{name}.txt"), "w") as fh:
                    fh.write("\n".join(rows) + "\n")
            counts[split] = n
        for job in pending:
            job.result()  # re-raise a failed write
    return counts


def _write_jpeg(image: np.ndarray, path: str, quality: int) -> None:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    data.tofile(path)


def _digit_masks(seed: int):
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


def _backgrounds() -> list:
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


def _background(rng, backgrounds, w: int, h: int) -> np.ndarray:
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


def _object_colour(rng) -> np.ndarray:
    """A light BGR colour of random hue and saturation (the backgrounds are dark)."""
    import cv2

    value = rng.uniform(0.75, 1.0)
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.3, 1.0) * 255, value * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _place_mask(mask: np.ndarray, w: float, h: float, angle: float) -> np.ndarray:
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


def _blend(img: np.ndarray, alpha: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
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


def _clutter(rng, img, colour, stroke: int, masks, pool, obj_h: float, keep_out) -> None:
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
                    _blend(img, alpha, x, y, np.clip(colour + rng.uniform(-35, 35, 3), 0, 255))
                    break


def _fragment(rng, h: int, w: int, masks, pool, obj_h: float):
    """Half of a random digit at 20..35% of the object's height: (coverage, x, y)."""
    m = masks[rng.choice(pool[rng.integers(NUM_CLASSES)])]
    mh, mw = m.shape
    part = [m[: mh // 2], m[mh // 2:], m[:, : mw // 2], m[:, mw // 2:]][rng.integers(4)]
    fh = obj_h * rng.uniform(0.2, 0.35) * part.shape[0] / mh
    frag = _place_mask(part, fh * part.shape[1] / part.shape[0], fh, rng.uniform(-30, 30))
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


def _render(rng, p: dict, label: int, masks, pool, backgrounds):
    """One image (uint8 BGR) and its GT box (x0, y0, x1, y1, inclusive pixel coordinates)."""
    w, h = (int(v) for v in rng.integers(p["min_size"], p["max_size"] + 1, 2))
    img = _background(rng, backgrounds, w, h)
    colour = _object_colour(rng)
    mask = masks[rng.choice(pool[label])]
    for _ in range(50):  # draw until the placed ink's box is within the area limits (almost always once)
        area = rng.uniform(*AREA_RANGE) * w * h
        aspect = mask.shape[1] / mask.shape[0] * np.exp(rng.uniform(-0.22, 0.22))
        bh = np.sqrt(area / aspect)
        alpha = _place_mask(mask, aspect * bh, bh, rng.uniform(-15, 15))
        ys, xs = np.nonzero(alpha >= 0.5)
        ink = (xs.min(), ys.min(), xs.max(), ys.max())
        frac = (ink[2] - ink[0] + 1) * (ink[3] - ink[1] + 1) / (w * h)
        if alpha.shape[1] <= w and alpha.shape[0] <= h and AREA_LIMITS[0] <= frac <= AREA_LIMITS[1]:
            break
    else:
        raise RuntimeError(f"cannot place a digit in a {w}x{h} image; raise min_size")
    # Offsets from Beta(0.7, 0.7): objects sit anywhere, more often towards the sides than the centre.
    x = int(round(rng.beta(0.7, 0.7) * (w - alpha.shape[1])))
    y = int(round(rng.beta(0.7, 0.7) * (h - alpha.shape[0])))
    box = (x + int(ink[0]), y + int(ink[1]), x + int(ink[2]), y + int(ink[3]))
    stroke = max(2, int(round(STROKE * bh / mask.shape[0])))   # the placed digit's pen width
    keep_out = (box[0] - stroke, box[1] - stroke, box[2] + stroke, box[3] + stroke)
    _clutter(rng, img, colour, stroke, masks, pool, box[3] - box[1] + 1, keep_out)
    _blend(img, alpha, x, y, colour)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), box


# ----------------------------------------------------------------------------------- files

@contextmanager
def _lock(root: str):
    """An exclusive lock on <root>/.lock so concurrent generators (several runs, DDP nodes) take turns."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, generation is still atomic by rename
        yield
        return
    with open(os.path.join(root, ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

