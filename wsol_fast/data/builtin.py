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

On disk, in the wsolevaluation format (docs/spec.md §3), under `root`:

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
from . import builtin_parts, drawing
from .drawing import NUM_CLASSES, SPLITS, STROKE  # noqa: F401  (the built-in sets' own constants too)

VERSION = 2   # 2: dark, low-contrast backgrounds and light objects (1: photo contrast, either polarity)
DATASET = "builtin"
MANIFEST = "builtin_manifest.json"
DEFAULTS = dict(num_train=3000, num_val=300, num_test=300, min_size=120, max_size=200, quality=90)
AREA_RANGE = (0.07, 0.42)     # drawn GT box area / image area; the hard limits are 0.05..0.5
AREA_LIMITS = (0.05, 0.50)
def default_root(dataset: str = DATASET) -> str:
    """`$WSOL_FAST_CACHE/<dataset>`, else `./.wsol_fast_cache/<dataset>`."""
    return os.path.join(os.environ.get("WSOL_FAST_CACHE") or ".wsol_fast_cache", dataset)


def _kind(dataset: str):
    """(version, render function) of a built-in dataset: this module's digits, or builtin_parts'."""
    if dataset == DATASET:
        return VERSION, _render
    if dataset == builtin_parts.DATASET:
        return builtin_parts.VERSION, builtin_parts.render
    raise ValueError(f"unknown built-in dataset {dataset!r}; known: {list(DATASETS)}")


DATASETS = (DATASET, builtin_parts.DATASET)   # the sets this module draws (data/generated.py lists them all)


def data_root(root: str) -> str:
    """Images are at `os.path.join(data_root(root), "builtin", image_id)`."""
    return os.path.join(root, "images")


def metadata_root(root: str) -> str:
    """Metadata is at `<metadata_root(root)>/builtin/<split>/`."""
    return os.path.join(root, "metadata")


def is_complete(root: str, seed: int = 0, dataset: str = DATASET, **sizes) -> bool:
    """True when `root` holds a finished dataset with exactly these parameters."""
    return is_built(root, dataset, make_params(seed, sizes, dataset), MANIFEST)


def generate(root: str | None = None, seed: int = 0, progress: bool = True, dataset: str = DATASET,
             **sizes) -> str:
    """Generate the dataset under `root` (default `default_root(dataset)`) unless it is already there;
    returns the metadata root. `dataset`: "builtin" (digits) or "builtin-parts" (data/builtin_parts.py).
    `sizes` overrides DEFAULTS: num_train, num_val, num_test, min_size, max_size, quality."""
    _kind(dataset)
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown builtin dataset parameters: {sorted(unknown)}")
    return build_once(root or default_root(dataset), dataset, make_params(seed, sizes, dataset), MANIFEST,
                     lambda folder, p, show: _build(folder, p, show, dataset), progress)


def is_built(root: str, dataset: str, params: dict, manifest_name: str) -> bool:
    """A finished generation with exactly `params`: its manifest matches and every split is there."""
    try:
        with open(os.path.join(root, manifest_name)) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return False
    # builtin-parts also writes the heads' boxes; a cache made before they were written is rebuilt (same images).
    names = ("image_ids.txt", "part_boxes.txt") if dataset == builtin_parts.DATASET else ("image_ids.txt",)
    files = [os.path.join(metadata_root(root), dataset, s, n) for s in SPLITS for n in names]
    return manifest.get("params") == params and all(os.path.isfile(f) for f in files)


def build_once(root: str, dataset: str, params: dict, manifest_name: str, build, progress: bool) -> str:
    """The generated datasets' shared life cycle: unless `root` already holds this generation, build it with
    `build(folder, params, progress) -> counts` in a temporary folder under a lock, then swap it in (the
    manifest removed first, so a crash in between reads as incomplete, and written last)."""
    root = os.path.abspath(root)
    if is_built(root, dataset, params, manifest_name):
        return metadata_root(root)
    os.makedirs(root, exist_ok=True)
    with _lock(root):
        if is_built(root, dataset, params, manifest_name):  # another process finished it while we waited
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

def make_params(seed: int, sizes: dict, dataset: str = DATASET) -> dict:
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
    masks, pools = drawing.digit_masks(p["seed"])
    backgrounds = drawing.backgrounds()
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
                pending.append(writer.submit(drawing.write_jpeg, image, os.path.join(folder, "images", dataset, image_id),
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


def _render(rng, p: dict, label: int, masks, pool, backgrounds):
    """One image (uint8 BGR) and its GT box (x0, y0, x1, y1, inclusive pixel coordinates)."""
    w, h = (int(v) for v in rng.integers(p["min_size"], p["max_size"] + 1, 2))
    img = drawing.background(rng, backgrounds, w, h)
    colour = drawing.object_colour(rng)
    mask = masks[rng.choice(pool[label])]
    for _ in range(50):  # draw until the placed ink's box is within the area limits (almost always once)
        area = rng.uniform(*AREA_RANGE) * w * h
        aspect = mask.shape[1] / mask.shape[0] * np.exp(rng.uniform(-0.22, 0.22))
        bh = np.sqrt(area / aspect)
        alpha = drawing.place_mask(mask, aspect * bh, bh, rng.uniform(-15, 15))
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
    drawing.clutter(rng, img, colour, stroke, masks, pool, box[3] - box[1] + 1, keep_out)
    drawing.blend(img, alpha, x, y, colour)
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

