"""wsol_fast.data.builtin_masks, the `builtin-masks` dataset: OpenImages' layout as the protocol's reader
reads it, masks that are the placed digits' ink, ignore regions apart from them, byte-identical output per
seed, and each rendered image's masks against the digits the renderer placed. PxAP end to end on it
(train, evaluate): tests/test_pxap.py."""
from __future__ import annotations

import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from wsol_fast.data import builtin, builtin_masks, drawing  # noqa: E402
from wsol_fast.data.metadata import check_mask_files, load_metadata, mask_paths  # noqa: E402
from conftest import TINY_MASKS  # noqa: E402

def _split_dir(root, split):
    return os.path.join(builtin_masks.metadata_root(root), builtin_masks.DATASET, split)


def test_layout_is_openimages(tiny_masks):
    """As wsolevaluation ships OpenImages: empty image_sizes.txt everywhere, an empty localization.txt
    on train, and on val/test one `image,mask,ignore` line per instance with the ignore path on the
    image's first line only; masks beside the images (mask root = data root)."""
    for split in ("train", "val", "test"):
        assert os.path.getsize(os.path.join(_split_dir(tiny_masks, split), "image_sizes.txt")) == 0
    assert os.path.getsize(os.path.join(_split_dir(tiny_masks, "train"), "localization.txt")) == 0
    assert not load_metadata(builtin_masks.metadata_root(tiny_masks), builtin_masks.DATASET, "train").has_masks
    for split in ("val", "test"):
        meta = load_metadata(builtin_masks.metadata_root(tiny_masks), builtin_masks.DATASET, split)
        assert meta.has_masks and len(meta) == TINY_MASKS[f"num_{split}"]
        check_mask_files(meta, builtin_masks.mask_root(tiny_masks))
        with open(os.path.join(_split_dir(tiny_masks, split), "localization.txt")) as fh:
            lines = [line.rstrip("\n").split(",") for line in fh]
        first = {}
        for image_id, mask, ignore in lines:
            assert ignore == (f"{image_id[:-4]}_ignore.png" if image_id not in first else "")
            first.setdefault(image_id, mask)
        counts = [len(meta.masks[i][0]) for i in meta.image_ids]
        assert set(counts) <= {1, 2}
    assert len(lines) > len(meta)            # some images hold two instances


def test_masks_are_the_ink_and_ignore_regions_hold_no_foreground(tiny_masks):
    meta = load_metadata(builtin_masks.metadata_root(tiny_masks), builtin_masks.DATASET, "test")
    ignored = 0
    for image_id in meta.image_ids:
        files, ignore_file = mask_paths(meta, builtin_masks.mask_root(tiny_masks), image_id)
        image = cv2.imread(os.path.join(builtin_masks.data_root(tiny_masks), builtin_masks.DATASET, image_id))
        inst = [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]
        ignore = cv2.imread(ignore_file, cv2.IMREAD_GRAYSCALE)
        assert all(m.shape == image.shape[:2] and set(np.unique(m)) <= {0, 255} for m in inst)
        union = np.max(inst, axis=0) > 0
        assert 0.01 < union.mean() < 0.5
        assert not (union & (ignore > 0)).any()   # the ignored digit is placed apart from the instances
        ignored += bool(ignore.any())
        # the digit is light (HSV value >= 0.75) on a dark background: the masked pixels are brighter
        value = image.max(axis=2).astype(float)
        assert value[union].mean() > value[~union].mean() + 60
        assert (np.sum([m > 0 for m in inst], axis=0) <= 1).all()      # instances do not overlap
    assert 0 < ignored < len(meta)


def test_same_seed_same_bytes(tiny_masks, tmp_path):
    other = str(tmp_path / "again")
    builtin_masks.generate(other, seed=0, progress=False, **TINY_MASKS)
    for split in ("val", "test"):
        a = open(os.path.join(_split_dir(tiny_masks, split), "localization.txt"), "rb").read()
        b = open(os.path.join(_split_dir(other, split), "localization.txt"), "rb").read()
        assert a == b
    meta = load_metadata(builtin_masks.metadata_root(tiny_masks), builtin_masks.DATASET, "test")
    f = mask_paths(meta, builtin_masks.mask_root(tiny_masks), meta.image_ids[0])[0][0]
    g = f.replace(os.path.abspath(tiny_masks), os.path.abspath(other))
    assert open(f, "rb").read() == open(g, "rb").read()


def test_each_instance_mask_is_its_placed_digits_ink_and_the_ignore_mask_its_box(monkeypatch):
    """render's masks against the digits it placed (recorded from `_place`: coverage, x, y, ink box): an
    instance mask is 255 where that digit's coverage is >= 0.5 and 0 elsewhere, its ink box is the tight box
    of those pixels, boxes stay 4 pixels apart, and the ignore mask is the ignored digit's box grown by one
    pixel (clipped at the border). Over 40 images both one and two instances, and ignored digits, occur."""
    placed = []
    real_place = builtin_masks._place
    monkeypatch.setattr(builtin_masks, "_place", lambda *a: placed.append(real_place(*a)) or placed[-1])
    masks, pools = drawing.digit_masks(0)
    p = {**builtin_masks.DEFAULTS, "seed": 0}
    counts, ignored = set(), 0
    for i in range(40):
        placed.clear()
        image, instances, ignore = builtin_masks.render(np.random.default_rng([0, 1, i]), p, i % 10, masks,
                                                        pools["val"], drawing.backgrounds())
        h, w = image.shape[:2]
        assert p["min_size"] <= min(h, w) and max(h, w) <= p["max_size"]
        assert None not in placed and 1 <= len(instances) <= 2 and len(placed) - len(instances) in (0, 1)
        for inst, (alpha, x, y, box) in zip(instances, placed):
            want = np.zeros((h, w), np.uint8)
            want[y:y + alpha.shape[0], x:x + alpha.shape[1]][alpha >= 0.5] = 255
            np.testing.assert_array_equal(inst, want)
            ys, xs = np.nonzero(inst)
            assert box == (xs.min(), ys.min(), xs.max(), ys.max())
        boxes = [b for *_, b in placed]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
                assert ax1 + 4 < bx0 or bx1 + 4 < ax0 or ay1 + 4 < by0 or by1 + 4 < ay0
        want = np.zeros((h, w), np.uint8)
        for *_, (x0, y0, x1, y1) in placed[len(instances):]:
            want[max(0, y0 - 1):y1 + 2, max(0, x0 - 1):x1 + 2] = 255
        np.testing.assert_array_equal(ignore, want)
        counts.add(len(instances))
        ignored += ignore.any()
    assert counts == {1, 2} and 0 < ignored < 40


def test_image_names_are_16_hex_digits_as_openimages():
    names = {builtin_masks._image_name(0, "val", i) for i in range(200)}
    assert len(names) == 200 and all(len(n) == 16 and int(n, 16) >= 0 for n in names)
    assert builtin_masks._image_name(1, "val", 0) not in names     # the seed is part of the name


def test_parameters_and_their_checks(tmp_path):
    p = builtin_masks._params(3, {"num_val": 5})
    assert p == {**builtin.DEFAULTS, "num_val": 5, "seed": 3, "version": builtin_masks.VERSION,
                 "builtin_version": builtin.VERSION}
    with pytest.raises(TypeError, match="num_images"):
        builtin_masks.generate(str(tmp_path), num_images=5)
    assert not builtin_masks.is_complete(str(tmp_path))
    assert builtin_masks.mask_root("R") == builtin_masks.data_root("R") == os.path.join("R", "images")
