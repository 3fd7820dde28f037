"""The OpenCV loader: transforms against wsolevaluation's (PIL + torchvision Resize), image formats, bad files named or
skipped, persistent workers, no reference cycle. Images are tiny and generated per test, so the file runs
in seconds."""
from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest
import torch
from image_reference import break_image  # noqa: E402
from resize_reference import pil_normalised  # noqa: E402

cv2 = pytest.importorskip("cv2")

from wsol_fast.data import dali, images  # noqa: E402
from wsol_fast.data.images import BadImageError, read_image_rgb  # noqa: E402
from wsol_fast.data.opencv import OpenCVLoader, augment_draws, shard_draws  # noqa: E402

MEAN = np.array(images.IMAGENET_MEAN, np.float32)
STD = np.array(images.IMAGENET_STD, np.float32)
ONE_LEVEL = 1.0 / 255 / STD.min()   # see tests/data/test_dali.py


# ------------------------------------------------------------------------------------------- images

def _write_images(root, sizes, seed=0, dataset="DS"):
    """Smooth colour JPEGs of the given (h, w) under root/dataset; returns their ids."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, dataset), exist_ok=True)
    ids = []
    for k, (h, w) in enumerate(sizes):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        img[:, : w // 4] = (0, 0, 255)  # a red band on the left: a flipped crop is told apart
        ids.append(f"img_{k:03d}.jpg")
        cv2.imwrite(os.path.join(root, dataset, ids[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return ids


def _loader(root, ids, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    return OpenCVLoader(ids, list(range(len(ids))), str(root), "DS", **kw)


def test_train_transform_matches_wsolevaluation(tmp_path):
    ids = _write_images(tmp_path, [(60, 80), (45, 35), (40, 40), (90, 50), (33, 47), (64, 64)])
    loader = _loader(tmp_path, ids, train=True, batch_size=3, resize_size=40, crop_size=32, seed=5)
    seen_flips, seen_offsets = set(), set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        off_y, off_x, flip = augment_draws(5, epoch, 0, len(ids), 40, 32)
        order = list(loader.sampler)
        got = [(x, i) for images, labels, batch in loader for x, i in zip(images, batch)]
        assert [i for _, i in got] == [ids[k] for k in order]
        for j, (x, image_id) in enumerate(got):
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            want = pil_normalised(str(tmp_path / "DS" / image_id), 40, ((off_y[j], off_x[j]), 32), bool(flip[j]))
            torch.testing.assert_close(x, want, atol=1e-5, rtol=0)
            seen_flips.add(int(flip[j]))
            seen_offsets.add((int(off_y[j]), int(off_x[j])))
    assert seen_flips == {0, 1} and len(seen_offsets) > 5


def test_eval_transform_matches_wsolevaluation(tmp_path):
    ids = _write_images(tmp_path, [(375, 500), (333, 241), (97, 130)])
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=64)
    got = {i: x for images, _, batch in loader for i, x in zip(batch, images)}
    assert list(got) == ids
    for image_id in ids:
        torch.testing.assert_close(got[image_id], pil_normalised(str(tmp_path / "DS" / image_id), 64), atol=1e-5,
                                   rtol=0)


def test_channels_last_output_has_the_same_values(tmp_path):
    ids = _write_images(tmp_path, [(40, 50)] * 2)
    a = next(iter(_loader(tmp_path, ids, train=False, batch_size=2, crop_size=32)))[0]
    b = next(iter(_loader(tmp_path, ids, train=False, batch_size=2, crop_size=32, channels_last=True)))[0]
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


def test_a_crop_belongs_to_its_place_in_the_epoch_not_to_the_rank():
    """Two ranks' draws, interleaved, are one process's draws (9 samples: the padded 10th place reuses the
    first sample's), so W ranks at batch B train on the crops of one process at batch W x B."""
    one = augment_draws(7, 3, 0, 9, 40, 32)
    two = [shard_draws(7, 3, 9, r, 2, 40, 32) for r in (0, 1)]
    for k in range(3):
        merged = np.empty(10, dtype=one[k].dtype)
        merged[0::2], merged[1::2] = two[0][k], two[1][k]
        assert np.array_equal(merged, np.concatenate([one[k], one[k][:1]]))
    assert all(np.array_equal(a, b) for a, b in zip(shard_draws(7, 3, 9, 0, 1, 40, 32), one))


def test_draws_are_the_dali_loaders(tmp_path):
    """Same (seed, epoch, shard) -> the same crops and flips as DaliLoader (no DALI needed to check)."""
    ids = _write_images(tmp_path, [(40, 50)] * 9)
    d = dali.DaliLoader(ids, range(9), str(tmp_path), "DS", train=True, batch_size=2, resize_size=40,
                        crop_size=32, seed=7, shard_id=1, num_shards=2)
    d.set_epoch(3, 2)
    starts, _, offsets, flips = d._augment_draws(len(d.sampler))
    off_y, off_x, flip = shard_draws(7, 3, 9, 1, 2, 40, 32)
    assert np.array_equal(np.round(starts * 40).astype(int), np.stack([off_y, off_x], 1)[2:])
    assert np.array_equal(offsets, np.stack([off_y, off_x], 1)[2:])
    assert np.array_equal(flips, flip[2:])


@pytest.mark.parametrize("resize, tolerance", [("exact", 1e-5), ("dali", ONE_LEVEL + 1e-4)])
def test_train_batches_match_dali(tmp_path, resize, tolerance):
    """DALI's default (this package's exact resize inside the pipeline) gives the OpenCV loader's crops to
    float rounding; DALI's own antialiased resize within one uint8 level on these smooth images (not Pillow's filter)."""
    pytest.importorskip("nvidia.dali")
    ids = _write_images(tmp_path, [(60, 80), (45, 35), (40, 40), (90, 50), (33, 47)])
    kw = dict(train=True, batch_size=2, resize_size=40, crop_size=32, seed=3)
    ours = _loader(tmp_path, ids, **kw)
    theirs = dali.DaliLoader(ids, list(range(len(ids))), str(tmp_path), "DS", num_threads=1, device="cpu",
                             resize=resize, **kw)
    for loader in (ours, theirs):
        loader.set_epoch(1)
    for (a, la, ia), (b, lb, ib) in zip(ours, theirs, strict=True):
        assert ia == ib and torch.equal(la, lb)
        assert (a - b).abs().max() <= tolerance


# ------------------------------------------------------------------------------------------- formats

def test_gray_rgba_sixteen_bit_png_become_rgb(tmp_path):
    rgb = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8), (0, 0), 2)
    gray = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([rgb[..., ::-1], np.full((30, 40), 90, np.uint8)]))
    cv2.imwrite(str(tmp_path / "gray16.png"), gray.astype(np.uint16) * 257)
    assert np.array_equal(read_image_rgb(str(tmp_path / "gray.png")), np.dstack([gray] * 3))
    assert np.array_equal(read_image_rgb(str(tmp_path / "rgba.png")), rgb)   # alpha dropped
    assert np.array_equal(read_image_rgb(str(tmp_path / "gray16.png")), np.dstack([gray] * 3))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG")
    rgb = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8), (0, 0), 2)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got = read_image_rgb(str(tmp_path / "cmyk.jpg"))
    want = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    assert got.shape == (30, 40, 3) and np.abs(got.astype(int) - want).max() <= 2


def test_exif_orientation_is_ignored_like_wsolevaluation(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow writes the EXIF tag")
    image = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image_rgb(str(tmp_path / "rotated.jpg")).shape == (30, 40, 3)  # stored size, as PIL reads it


# ------------------------------------------------------------------------------------------- bad images

@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "missing", "bad-inside"])
def test_read_image_rgb_names_the_bad_file(tmp_path, how):
    ids = _write_images(tmp_path, [(20, 24)])
    path = str(tmp_path / "DS" / ids[0])
    break_image(path, how)
    with pytest.raises(BadImageError, match=ids[0]):
        read_image_rgb(path)


@pytest.mark.parametrize("workers", [0, 1])
def test_decode_failure_after_the_prescan_names_the_file(tmp_path, workers):
    """A file with intact JPEG markers but a broken inside passes the cheap check; decoding it stops the
    pass with an error that still names it (also through a worker process)."""
    ids = _write_images(tmp_path, [(40, 50)] * 4)
    break_image(tmp_path / "DS" / ids[1], "bad-inside")
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=32, num_workers=workers)
    with pytest.raises(BadImageError, match=ids[1]):
        list(loader)


# ------------------------------------------------------------------------------------------- order
# Exactly-once eval and the mid-epoch resume of every loader: test_loader_contract.py.

def test_eval_with_persistent_workers_repeats_exactly(tmp_path):
    ids = _write_images(tmp_path, [(20, 24)] * 23)
    seen = []
    for shard in range(2):
        loader = _loader(tmp_path, ids, train=False, batch_size=4, crop_size=16, shard_id=shard, num_shards=2,
                         num_workers=2)
        first = [(b, x) for x, _, b in loader]
        second = [(b, x) for x, _, b in loader]
        assert [b for b, _ in first] == [b for b, _ in second]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(first, second))
        seen += [i for b, _ in first for i in b]
    assert sorted(seen) == sorted(ids)


def test_loader_is_freed_without_the_cyclic_collector(tmp_path):
    """No loader <-> DataLoader cycle: dropping the loader stops its persistent workers at once (in a
    cycle, the collector finalizes the worker queues first and shutdown waits 5 s per worker)."""
    ids = _write_images(tmp_path, [(20, 24)] * 4)
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=16, num_workers=1)
    for _ in loader:
        pass
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert ref() is None
    finally:
        gc.enable()
