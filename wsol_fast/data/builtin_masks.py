"""`builtin-masks`: the built-in digits (wsol_fast/data/builtin.py) with instance masks, in OpenImages'
layout, so that PxAP runs end to end with no download:

    python -m wsol_fast.train --dataset builtin-masks        # generated on first use, scored by PxAP

What differs from `builtin` (the backgrounds, digits, colours and clutter are drawing.py's, as builtin's):

* Each image holds one digit of its class (70%) or two (30%, each at half the area, not touching).
  Every instance has its own mask: the pixels where the placed digit's ink coverage is >= 0.5, a
  0/255 PNG at the image's size. PxAP scores the union of the instances.
* Half of the images also hold a small digit of the same class (15..25% of the image height) whose box
  is an ignore region, as OpenImages ignores ambiguous instances (its `_ignore.png`): those pixels are
  neither foreground nor background. An image without one gets an all-zero ignore mask.
* On disk, as wsolevaluation ships OpenImages (image ids of 16 hex digits under `<split>/<class>/`):

      <root>/images/builtin-masks/<split>/<class>/<id>.jpg                     the image
      <root>/images/builtin-masks/<split>/<class>/<id>_m<class>_<k>.png        instance k's mask (val, test)
      <root>/images/builtin-masks/<split>/<class>/<id>_ignore.png              the ignore mask   (val, test)
      <root>/metadata/builtin-masks/<split>/image_ids.txt, class_labels.txt
                                           image_sizes.txt                     empty, as OpenImages'
                                           localization.txt                    id,mask,ignore (val, test;
                                                                               the ignore path on an
                                                                               image's first line only)

  Masks sit beside the images, so the mask root is the data root (wsolevaluation's default).
* 3,000 / 300 / 300 images by default; generation is deterministic, atomic and locked like builtin's.
"""
from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import builtin, drawing

VERSION = 1
DATASET = "builtin-masks"
SPLITS = builtin.SPLITS
NUM_CLASSES = builtin.NUM_CLASSES
MANIFEST = "builtin_masks_manifest.json"
DEFAULTS = dict(builtin.DEFAULTS)
TWO_INSTANCES = 0.3      # share of images with two instances
IGNORED_DIGIT = 0.5      # share of images with a small ignored digit


def default_root() -> str:
    """`$WSOL_FAST_CACHE/builtin-masks`, else `./.wsol_fast_cache/builtin-masks`."""
    return builtin.default_root(DATASET)


data_root = builtin.data_root           # images (and masks) at <data_root>/builtin-masks/<image_id>
metadata_root = builtin.metadata_root   # metadata at <metadata_root>/builtin-masks/<split>/
mask_root = builtin.data_root           # masks beside the images


def is_complete(root: str, seed: int = 0, **sizes) -> bool:
    return builtin.is_built(root, DATASET, _params(seed, sizes), MANIFEST)


def generate(root: str | None = None, seed: int = 0, progress: bool = True, **sizes) -> str:
    """Generate the dataset under `root` unless it is there; returns the metadata root. `sizes`
    overrides DEFAULTS (num_train, num_val, num_test, min_size, max_size, quality)."""
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown builtin-masks dataset parameters: {sorted(unknown)}")
    return builtin.build_once(root or default_root(), DATASET, _params(seed, sizes), MANIFEST, _build, progress)


def _params(seed: int, sizes: dict) -> dict:
    p = builtin.make_params(seed, sizes)
    p["version"] = VERSION
    p["builtin_version"] = builtin.VERSION
    return p


def _image_name(seed: int, split: str, index: int) -> str:
    return hashlib.blake2b(f"{DATASET}/{seed}/{split}/{index}".encode(), digest_size=8).hexdigest()


def _build(folder: str, p: dict, progress: bool) -> dict:
    import cv2
    from tqdm.auto import tqdm

    cv2.setNumThreads(1)
    masks, pools = drawing.digit_masks(p["seed"])
    backgrounds = drawing.backgrounds()
    counts, pending = {}, []
    total = sum(p[f"num_{s}"] for s in SPLITS)
    with ThreadPoolExecutor(max_workers=1) as writer, \
            tqdm(total=total, desc="generating builtin-masks", unit="img", disable=not progress,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        for split_no, split in enumerate(SPLITS):
            n = p[f"num_{split}"]
            labels = np.random.default_rng([p["seed"], split_no, VERSION, 77]).permutation(n) % NUM_CLASSES
            lines = {k: [] for k in ("image_ids", "class_labels", "image_sizes", "localization")}
            for d in range(NUM_CLASSES):
                os.makedirs(os.path.join(folder, "images", DATASET, split, str(d)), exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([p["seed"], split_no, i, VERSION, 77])
                label = int(labels[i])
                image, instances, ignore = render(rng, p, label, masks, pools[split], backgrounds)
                stem = f"{split}/{label}/{_image_name(p['seed'], split, i)}"
                image_id = f"{stem}.jpg"
                base = os.path.join(folder, "images", DATASET)
                pending.append(writer.submit(drawing.write_jpeg, image, os.path.join(base, image_id), p["quality"]))
                lines["image_ids"].append(image_id)
                lines["class_labels"].append(f"{image_id},{label}")
                if split != "train":   # weak supervision: no masks for training, as OpenImages' train
                    for k, inst in enumerate(instances):
                        mask_id = f"{stem}_m{label}_{k:08x}.png"
                        pending.append(writer.submit(_write_png, inst, os.path.join(base, mask_id)))
                        ignore_id = f"{stem}_ignore.png" if k == 0 else ""
                        lines["localization"].append(f"{image_id},{mask_id},{ignore_id}")
                    pending.append(writer.submit(_write_png, ignore, os.path.join(base, f"{stem}_ignore.png")))
                bar.update(1)
            meta = os.path.join(folder, "metadata", DATASET, split)
            os.makedirs(meta, exist_ok=True)
            for name, rows in lines.items():   # image_sizes.txt (and train's localization.txt) empty
                with open(os.path.join(meta, f"{name}.txt"), "w") as fh:
                    fh.write("\n".join(rows) + ("\n" if rows else ""))
            counts[split] = n
        for job in pending:
            job.result()
    return counts


def _write_png(mask: np.ndarray, path: str) -> None:
    import cv2

    ok, data = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    data.tofile(path)


def _place(rng, mask, w: int, h: int, area: float, taken: list):
    """A placed digit (coverage, x, y, ink box) of about `area` pixels, its box apart from `taken` boxes
    by a margin; None when no spot is found."""
    for _ in range(30):
        aspect = mask.shape[1] / mask.shape[0] * np.exp(rng.uniform(-0.22, 0.22))
        bh = np.sqrt(area / aspect)
        alpha = drawing.place_mask(mask, aspect * bh, bh, rng.uniform(-15, 15))
        if alpha.shape[1] > w or alpha.shape[0] > h:
            area *= 0.8
            continue
        x = int(rng.integers(0, w - alpha.shape[1] + 1))
        y = int(rng.integers(0, h - alpha.shape[0] + 1))
        ys, xs = np.nonzero(alpha >= 0.5)
        box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()), y + int(ys.max()))
        margin = 4
        if all(box[2] + margin < t[0] or t[2] + margin < box[0] or box[3] + margin < t[1] or t[3] + margin < box[1]
               for t in taken):
            return alpha, x, y, box
    return None


def render(rng, p: dict, label: int, masks, pool, backgrounds):
    """One image (uint8 BGR), its instance masks (uint8 0/255 [h, w] each) and ignore mask."""
    w, h = (int(v) for v in rng.integers(p["min_size"], p["max_size"] + 1, 2))
    img = drawing.background(rng, backgrounds, w, h)
    colour = drawing.object_colour(rng)
    count = 2 if rng.random() < TWO_INSTANCES else 1
    placed, taken = [], []
    for _ in range(count):
        area = rng.uniform(*builtin.AREA_RANGE) * w * h / count
        got = _place(rng, masks[rng.choice(pool[label])], w, h, area, taken)
        if got is not None:
            placed.append(got)
            taken.append(got[3])
    if not placed:
        raise RuntimeError(f"cannot place a digit in a {w}x{h} image; raise min_size")
    ignored = None
    if rng.random() < IGNORED_DIGIT:
        small = rng.uniform(0.15, 0.25) * h
        ignored = _place(rng, masks[rng.choice(pool[label])], w, h, small * small * 0.7, taken)
    boxes = taken + ([ignored[3]] if ignored else [])
    stroke = max(2, int(round(drawing.STROKE * (placed[0][3][3] - placed[0][3][1] + 1) / 60)))
    keep_out = (min(b[0] for b in boxes) - stroke, min(b[1] for b in boxes) - stroke,
                max(b[2] for b in boxes) + stroke, max(b[3] for b in boxes) + stroke)
    drawing.clutter(rng, img, colour, stroke, masks, pool, placed[0][3][3] - placed[0][3][1] + 1, keep_out)
    instances = []
    for alpha, x, y, _box in placed:
        drawing.blend(img, alpha, x, y, colour)
        inst = np.zeros((h, w), np.uint8)
        inst[y:y + alpha.shape[0], x:x + alpha.shape[1]] = np.where(alpha >= 0.5, 255, 0)
        instances.append(inst)
    ignore = np.zeros((h, w), np.uint8)
    if ignored is not None:
        alpha, x, y, (x0, y0, x1, y1) = ignored
        drawing.blend(img, alpha, x, y, colour)
        ignore[max(0, y0 - 1):y1 + 2, max(0, x0 - 1):x1 + 2] = 255
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), instances, ignore
