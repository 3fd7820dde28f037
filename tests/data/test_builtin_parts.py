"""builtin-parts (data/builtin_parts.py): every image's head box is written to part_boxes.txt, is the tight box of
the head's ink, lies inside the GT box and is a small share of it; a cache made before part boxes existed is
rebuilt with the same files. Tiny sizes keep it fast."""
from __future__ import annotations

import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from dataset_digest import digest  # noqa: E402
from wsol_fast.data import builtin, builtin_parts, drawing  # noqa: E402
from wsol_fast.data.metadata import load_splits  # noqa: E402

TINY = dict(num_train=20, num_val=10, num_test=10)
DATASET = "builtin-parts"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("parts"))
    builtin.generate(root, seed=0, progress=False, dataset=DATASET, **TINY)
    return root


def test_every_image_has_a_small_head_box_inside_its_gt_box(root):
    metas = load_splits(builtin.metadata_root(root), DATASET)
    shares = []
    for meta in metas.values():
        assert set(meta.part_boxes) == set(meta.image_ids)
        for image_id in meta.image_ids:
            (hx0, hy0, hx1, hy1), = meta.part_boxes[image_id]
            (gx0, gy0, gx1, gy1), = meta.boxes[image_id]
            assert gx0 <= hx0 <= hx1 <= gx1 and gy0 <= hy0 <= hy1 <= gy1
            shares.append((hx1 - hx0 + 1) * (hy1 - hy0 + 1) / ((gx1 - gx0 + 1) * (gy1 - gy0 + 1)))
    # The module's promise: the head covers a fifth of the object's box or less (its box, tilted, a bit more).
    assert max(shares) < 0.4 and 0.03 < float(np.mean(shares)) < 0.25


def test_the_head_box_is_the_tight_box_of_the_head_ink(monkeypatch):
    """The renderer's third value against the head alpha it blends into the image (>= 0.5, inclusive)."""
    seen = []
    real_blend = drawing.blend
    monkeypatch.setattr(drawing, "blend", lambda img, alpha, x, y, colour: (seen.append((alpha.copy(), x, y)),
                                                                             real_blend(img, alpha, x, y, colour)))
    masks, pools = drawing.digit_masks(0)
    p = {**builtin.DEFAULTS, "seed": 0}
    for i in range(12):
        seen.clear()
        rng = np.random.default_rng([0, 0, i, builtin_parts.VERSION])
        image, box, head_box = builtin_parts.render(rng, p, i % 10, masks, pools["train"], drawing.backgrounds())
        alpha, x, y = seen[-1]                        # the last blend is the head (clutter is blended first)
        ys, xs = np.nonzero(alpha >= 0.5)
        assert head_box == (x + xs.min(), y + ys.min(), x + xs.max(), y + ys.max())
        assert box[0] <= head_box[0] and head_box[2] <= box[2] and box[1] <= head_box[1] and head_box[3] <= box[3]


def test_a_cache_without_part_boxes_is_rebuilt_with_the_same_images(tmp_path, root):
    copy = str(tmp_path / "parts")
    builtin.generate(copy, seed=0, progress=False, dataset=DATASET, **TINY)
    files = digest(copy)
    assert files == digest(root)          # deterministic
    os.remove(os.path.join(builtin.metadata_root(copy), DATASET, "val", "part_boxes.txt"))
    assert not builtin.is_complete(copy, seed=0, dataset=DATASET, **TINY)
    builtin.generate(copy, seed=0, progress=False, dataset=DATASET, **TINY)
    assert builtin.is_complete(copy, seed=0, dataset=DATASET, **TINY)
    assert digest(copy) == files             # the same images, and the same part boxes again
    assert os.path.isfile(os.path.join(builtin.metadata_root(copy), DATASET, "val", "part_boxes.txt"))
    assert len(load_splits(builtin.metadata_root(copy), DATASET)["val"].part_boxes) == TINY["num_val"]
