"""The built-in dataset: deterministic, idempotent, redone when interrupted, and with the promised content
(>= 10 classes, boxes inside the image covering 5..50% of it, off-centre objects, disjoint digit samples
per split). Tiny sizes (40/20/20 images) keep each test well under a second after the first generation."""
from __future__ import annotations

import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from dataset_digest import digest  # noqa: E402
from wsol_fast.data import builtin, drawing  # noqa: E402
from wsol_fast.data.metadata import load_splits  # noqa: E402

TINY = dict(num_train=40, num_val=20, num_test=20)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("builtin"))
    builtin.generate(root, seed=0, progress=False, **TINY)
    return root


@pytest.fixture(scope="module")
def metas(tiny):
    return load_splits(builtin.metadata_root(tiny), builtin.DATASET)


def test_layout_and_metadata_pass_the_reader(tiny, metas):
    assert {s: len(m) for s, m in metas.items()} == {"train": 40, "val": 20, "test": 20}
    for meta in metas.values():
        for image_id in meta.image_ids:
            path = os.path.join(builtin.data_root(tiny), builtin.DATASET, image_id)
            image = cv2.imread(path)
            assert image is not None and image.shape[2] == 3
            assert (image.shape[1], image.shape[0]) == meta.sizes[image_id]
            assert image_id.split("/")[:2] == [meta.split, str(meta.labels[image_id])]


def test_the_digits_set_has_no_part_boxes(tiny, metas):
    assert all(m.part_boxes == {} for m in metas.values())
    assert not os.path.exists(os.path.join(builtin.metadata_root(tiny), builtin.DATASET, "val", "part_boxes.txt"))


def test_at_least_ten_balanced_classes(metas):
    for meta in metas.values():
        assert meta.num_classes == 10
        counts = np.bincount(list(meta.labels.values()), minlength=10)
        assert counts.min() >= 2 and counts.max() - counts.min() <= 1


def test_sizes_vary_and_boxes_cover_5_to_50_percent_inside_the_image(metas):
    sizes = set()
    for meta in metas.values():
        for image_id, (w, h) in meta.sizes.items():
            sizes.add((w, h))
            assert 120 <= w <= 200 and 120 <= h <= 200
            boxes = meta.boxes[image_id]
            assert boxes.shape == (1, 4)
            x0, y0, x1, y1 = boxes[0]
            assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1    # inclusive pixel coordinates
            # Within the limits under either convention (inclusive +1, or continuous).
            for area in ((x1 - x0 + 1) * (y1 - y0 + 1), (x1 - x0) * (y1 - y0)):
                assert 0.05 <= area / (w * h) <= 0.5, (image_id, area / (w * h))
    assert len(sizes) > 60  # 80 images: nearly all sizes distinct


def test_objects_are_not_centred(metas):
    """A centre prior must be a weak baseline: box centres spread over the image."""
    dist, holds_centre = [], []
    for meta in metas.values():
        for image_id, (w, h) in meta.sizes.items():
            x0, y0, x1, y1 = meta.boxes[image_id][0]
            cx, cy = (x0 + x1) / 2 / w - 0.5, (y0 + y1) / 2 / h - 0.5
            dist.append(np.hypot(cx, cy))
            holds_centre.append(x0 <= w / 2 <= x1 and y0 <= h / 2 <= y1)
    # Measured on the default 3,600 images: mean 0.22 (a centred object: 0); the box holds the image
    # centre in 54% of the images (boxes are large: 25% of the area on average).
    assert np.mean(dist) > 0.15
    assert np.mean(holds_centre) < 0.75


def test_the_box_is_the_tight_box_of_the_ink(tiny, metas):
    """Inside the box the digit reaches every side; just outside it the object colour is gone (the
    clutter keeps out of a margin around the box)."""
    meta = metas["val"]
    for image_id in meta.image_ids[:10]:
        image = cv2.imread(os.path.join(builtin.data_root(tiny), builtin.DATASET, image_id)).astype(np.float32)
        x0, y0, x1, y1 = meta.boxes[image_id][0]
        inside = image[y0:y1 + 1, x0:x1 + 1]
        ring = np.concatenate([image[max(y0 - 3, 0):y0, x0:x1 + 1].reshape(-1, 3),
                               image[y1 + 1:y1 + 4, x0:x1 + 1].reshape(-1, 3),
                               image[y0:y1 + 1, max(x0 - 3, 0):x0].reshape(-1, 3),
                               image[y0:y1 + 1, x1 + 1:x1 + 4].reshape(-1, 3)])
        # The object colour: the pixels of the box that are farthest from the ring's colour.
        ref = np.median(ring, axis=0)
        far = np.linalg.norm(inside - ref, axis=2)
        ink = far > 0.5 * far.max()
        ys, xs = np.nonzero(ink)
        assert xs.min() <= 2 and ys.min() <= 2, image_id
        assert xs.max() >= inside.shape[1] - 3 and ys.max() >= inside.shape[0] - 3, image_id


def test_splits_use_disjoint_digit_samples():
    _, pools = drawing.digit_masks(0)
    used = {s: set(np.concatenate(pools[s]).tolist()) for s in builtin.SPLITS}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    assert len(used["train"] | used["val"] | used["test"]) == 1797


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny):
    again, other = str(tmp_path / "again"), str(tmp_path / "other")
    builtin.generate(again, seed=0, progress=False, **TINY)
    builtin.generate(other, seed=1, progress=False, **TINY)
    assert digest(again) == digest(tiny)
    assert digest(other) != digest(tiny)


def test_generate_is_idempotent(tiny):
    manifest = os.path.join(tiny, builtin.MANIFEST)
    stamp = os.stat(manifest).st_mtime_ns
    before = digest(tiny)
    assert builtin.generate(tiny, seed=0, progress=False, **TINY) == builtin.metadata_root(tiny)
    assert os.stat(manifest).st_mtime_ns == stamp and digest(tiny) == before


def test_interrupted_generation_is_redone(tmp_path):
    root = str(tmp_path / "ds")
    builtin.generate(root, seed=0, progress=False, **TINY)
    complete = digest(root)
    # An interruption: the manifest (written last) is missing, files are half there, a build folder lingers.
    os.remove(os.path.join(root, builtin.MANIFEST))
    victim = os.path.join(builtin.data_root(root), builtin.DATASET, "test", "0")
    for name in os.listdir(victim):
        os.remove(os.path.join(victim, name))
    os.makedirs(os.path.join(root, ".building-999999", "images"))
    assert not builtin.is_complete(root, seed=0, **TINY)
    builtin.generate(root, seed=0, progress=False, **TINY)
    assert builtin.is_complete(root, seed=0, **TINY) and digest(root) == complete


def test_other_parameters_regenerate(tmp_path):
    root = str(tmp_path / "ds")
    builtin.generate(root, seed=0, progress=False, **TINY)
    builtin.generate(root, seed=0, progress=False, num_train=30, num_val=10, num_test=10)
    metas = load_splits(builtin.metadata_root(root), builtin.DATASET)
    assert [len(m) for m in metas.values()] == [30, 10, 10]
    assert not builtin.is_complete(root, seed=0, **TINY)


def test_unknown_parameter_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="num_images"):
        builtin.generate(str(tmp_path), num_images=5)


def test_roots_and_default_cache(monkeypatch, tmp_path):
    assert builtin.data_root("R") == os.path.join("R", "images")
    assert builtin.metadata_root("R") == os.path.join("R", "metadata")
    monkeypatch.setenv("WSOL_FAST_CACHE", str(tmp_path))
    assert builtin.default_root() == os.path.join(str(tmp_path), "builtin")
    monkeypatch.delenv("WSOL_FAST_CACHE")
    assert builtin.default_root() == os.path.join(".wsol_fast_cache", "builtin")


def test_docstring_states_the_defaults():
    """The module docstring is copied into the README: keep its numbers true."""
    d = builtin.DEFAULTS
    for text in (f"{d['num_train']:,} train", f"{d['num_val']} val", f"{d['num_test']} test",
                 f"{d['min_size']}..{d['max_size']}", f"quality {d['quality']}"):
        assert text in builtin.__doc__, text
