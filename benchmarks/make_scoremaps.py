"""Generate score maps (and, for mask splits, mask PNGs) for a metadata split, to time
`python -m wsol_fast.evaluate --scoremap-root` on the protocol's real split sizes (README, "Evaluate
your own method's score maps").

    python benchmarks/make_scoremaps.py --metadata-root M --dataset CUB --split test --out /tmp/maps \
        [--limit N] [--mask-root R]

Maps: 224 x 224 float64 files (as wsolevaluation writes them), a CAM-like map per image: a 28 x 28
Gaussian near the first GT box (or the mask's centre), plus 0.25 x smooth noise, bicubic-resized and
min-max normalised. For mask splits (OpenImages) every mask and ignore file named in localization.txt
is written under MASK_ROOT/<dataset>/ as a 0/255 PNG of 500 x 375 pixels (an ellipse; the ignore
mask a corner box), since the real masks cannot be downloaded here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from wsol_fast import metrics, scoremaps  # noqa: E402
from wsol_fast.data.metadata import load_metadata, mask_paths  # noqa: E402

GRID = 28


def _map(rng, centre, side):
    c = (np.arange(GRID) + 0.5) * (224 / GRID)
    cx, cy = centre
    low = np.exp(-0.5 * (((c[None, :] - cx) / side[0]) ** 2 + ((c[:, None] - cy) / side[1]) ** 2))
    noise = cv2.GaussianBlur(rng.random((GRID, GRID)), (0, 0), 1)
    low = low + 0.25 * (noise - noise.min()) / max(noise.max() - noise.min(), 1e-9)
    return metrics.normalize_scoremap(metrics.resize_scoremap(low))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--metadata-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--mask-root", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    meta = load_metadata(a.metadata_root, a.dataset, a.split)
    ids = meta.image_ids[: a.limit] if a.limit else meta.image_ids
    rng = np.random.default_rng(0)
    written = set()
    for image_id in ids:
        if meta.has_masks:
            files, ignore = mask_paths(meta, a.mask_root, image_id)
            centre = rng.uniform(60, 164, 2)
            side = rng.uniform(20, 60, 2)
            for k, f in enumerate(files + ([ignore] if ignore else [])):
                if f in written:
                    continue
                m = np.zeros((375, 500), np.uint8)
                if f == ignore:
                    m[:120, 350:] = 255
                else:
                    cx, cy = centre[0] * 500 / 224 + 40 * k, centre[1] * 375 / 224
                    cv2.ellipse(m, (int(cx), int(cy)), (int(side[0] * 2), int(side[1] * 1.5)), 0, 0, 360, 255, -1)
                os.makedirs(os.path.dirname(f), exist_ok=True)
                cv2.imwrite(f, m)
                written.add(f)
        else:
            x0, y0, x1, y1 = scoremaps.gt_boxes_224(meta, image_id)[0]
            w, h = max(x1 - x0, 8), max(y1 - y0, 8)
            centre = ((x0 + x1) / 2 + rng.normal(0, 0.1 * w), (y0 + y1) / 2 + rng.normal(0, 0.1 * h))
            side = (w / 4, h / 4)
        scoremaps.save_scoremap(a.out, image_id, _map(rng, centre, side))
    print(f"{len(ids)} maps ({len(written)} mask files) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
