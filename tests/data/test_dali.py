"""The DALI loader on the CPU (device_id=None): wsolevaluation's tensors (PIL + torchvision Resize) and the
OpenCV loader's in eval, real crops and flips in train, every eval image exactly once, clear errors on bad JPEGs. The GPU (`mixed`) row skips without
CUDA. Images are tiny and generated per test, so the file runs in seconds."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from image_reference import break_image  # noqa: E402
from resize_reference import pil_normalised  # noqa: E402

pytest.importorskip("nvidia.dali")
cv2 = pytest.importorskip("cv2")

from wsol_fast.data import images as image_checks  # noqa: E402
from wsol_fast.data.dali import DaliLoader  # noqa: E402
from wsol_fast.data.images import IMAGENET_MEAN, IMAGENET_STD, BadImageError  # noqa: E402

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)
ONE_LEVEL = 1.0 / 255 / STD.min()   # one uint8 level after normalisation
# resize="exact" (the default) runs wsol_fast.data.transforms inside the pipeline: the pixels are
# wsolevaluation's, and only the normalisation's float rounding differs (DALI: (x - 255 m) / (255 s);
# reference: (x/255 - m) / s). resize="dali" (fn.resize, antialias=True) is not Pillow's filter: on these
# smooth images it is within one level (measured: mean ~0.0023 after normalisation, ~0.13 levels), on
# photos up to 12 levels at single pixels (wsol_fast/data/dali.py).
FLOAT_ROUNDING = 1e-5
TOLERANCE = {"exact": FLOAT_ROUNDING, "dali": ONE_LEVEL + 1e-4}
MEAN_TOLERANCE = {"exact": FLOAT_ROUNDING, "dali": 0.004}


def _write_images(root, sizes, seed=0, asymmetric=False):
    """JPEGs of the given (h, w) under root/DS; returns their ids. Smooth content, like photos."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "DS"), exist_ok=True)
    ids = []
    for k, (h, w) in enumerate(sizes):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        if asymmetric:  # a red band on the left only: tells a flipped crop from an unflipped one
            img[:, : w // 3] = (0, 0, 255)
            img[:, w // 3:] = (255, 0, 0)
        image_id = f"img_{k:03d}.jpg"
        cv2.imwrite(os.path.join(root, "DS", image_id), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        ids.append(image_id)
    return ids


def _loader(root, ids, **kw):
    kw.setdefault("num_threads", 2)
    return DaliLoader(ids, list(range(len(ids))), str(root), "DS", **kw)


# Odd sizes, down- and up-scaling, portrait and landscape: each exercises the resize geometry.
EVAL_SIZES = [(375, 500), (333, 241), (150, 201), (224, 224), (97, 130)]


def test_default_resize_is_exact(tmp_path):
    ids = _write_images(tmp_path, [(20, 30)])
    assert _loader(tmp_path, ids, train=False, batch_size=2, device="cpu").resize == "exact"
    assert _loader(tmp_path, ids, train=False, batch_size=2, device="cpu", resize="dali").resize == "dali"
    with pytest.raises(ValueError, match="resize must be"):
        _loader(tmp_path, ids, train=False, batch_size=2, device="cpu", resize="opencv")


@pytest.mark.parametrize("resize", ["exact", "dali"])
def test_eval_matches_wsolevaluation(tmp_path, resize):
    ids = _write_images(tmp_path, EVAL_SIZES)
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=224, resize=resize)
    got = {i: x for images, _, batch_ids in loader for i, x in zip(batch_ids, images)}
    diffs = torch.stack([(got[i] - pil_normalised(str(tmp_path / "DS" / i), 224)).abs().flatten()
                         for i in ids])
    assert diffs.max() <= TOLERANCE[resize]
    assert diffs.mean() <= MEAN_TOLERANCE[resize]


@pytest.mark.parametrize("resize", ["exact", "dali"])
def test_eval_matches_opencv_loader(tmp_path, resize):
    """Against the package's OpenCV loader itself: same ids in the same order, the same tensors (to float
    rounding with resize="exact", within one level with DALI's resize on these smooth images)."""
    from wsol_fast.data import opencv
    ids = _write_images(tmp_path, EVAL_SIZES)
    ours = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=224, resize=resize)
    theirs = opencv.OpenCVLoader(ids, list(range(len(ids))), str(tmp_path), "DS", train=False, batch_size=2,
                                  crop_size=224, num_workers=0, device="cpu")
    diffs = []
    for (x, labels_x, ids_x), (y, labels_y, ids_y) in zip(ours, theirs, strict=True):
        assert ids_x == ids_y and torch.equal(labels_x, labels_y)
        diffs.append((x - y).abs().flatten())
    diffs = torch.cat(diffs)
    assert diffs.max() <= TOLERANCE[resize]
    assert diffs.mean() <= MEAN_TOLERANCE[resize]


@pytest.mark.parametrize("resize", ["exact", "dali"])
def test_train_crops_flips_and_range(tmp_path, resize):
    ids = _write_images(tmp_path, [(120, 160), (90, 70), (64, 64)], asymmetric=True)
    loader = _loader(tmp_path, ids, train=True, batch_size=3, resize_size=64, crop_size=48, seed=3, resize=resize)
    lo, hi = float(((0 - MEAN) / STD).min()), float(((1 - MEAN) / STD).max())
    orientations = set()
    for epoch in range(4):
        loader.set_epoch(epoch)
        starts, _, offsets, flips = loader._augment_draws(len(ids))
        assert np.array_equal(offsets, (starts * 64).round().astype(int))
        for images, labels, batch_ids in loader:
            assert images.shape == (3, 3, 48, 48) and images.dtype == torch.float32
            assert lo - 1e-4 <= float(images.min()) and float(images.max()) <= hi + 1e-4
            assert labels.tolist() == [ids.index(i) for i in batch_ids]
            for k, image_id in enumerate(batch_ids):
                y, x = (starts[k] * 64).round().astype(int)
                want = pil_normalised(str(tmp_path / "DS" / image_id), 64, ((y, x), 48), bool(flips[k]))
                assert (images[k] - want).abs().max() <= TOLERANCE[resize], (epoch, image_id)
                red = images[k, 0]  # red band on the left unless flipped
                orientations.add(bool(red[:, :4].mean() < red[:, -4:].mean()))
    assert orientations == {False, True}, "both flipped and unflipped crops must occur"


def test_train_shards_are_even_and_cover_the_split(tmp_path):
    ids = _write_images(tmp_path, [(20, 24)] * 9)
    shards = [_loader(tmp_path, ids, train=True, batch_size=2, resize_size=20, crop_size=16, shard_id=r,
                      num_shards=2, drop_last=False) for r in range(2)]
    seen = [[i for _, _, b in s for i in b] for s in shards]
    assert len(seen[0]) == len(seen[1]) == 5  # padded like DistributedSampler: equal steps per rank
    assert set(seen[0]) | set(seen[1]) == set(ids)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_decode_failure_inside_dali_names_the_file(tmp_path, how, monkeypatch):
    """If a file passes the pre-scan but DALI cannot decode it, the error still names it (no hang)."""
    ids = _write_images(tmp_path, [(40, 50)] * 6)
    break_image(tmp_path / "DS" / ids[3], how)
    monkeypatch.setattr(image_checks, "looks_like_image", lambda path: True)
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=32)
    with pytest.raises(BadImageError, match=ids[3]):
        list(loader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed (GPU) decoding needs CUDA")
def test_gpu_mixed_decoding_fp16(tmp_path):
    ids = _write_images(tmp_path, EVAL_SIZES)
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=224, device="cuda", fp16=True,
                     resize="dali")   # nvJPEG + DALI's resize; the default ("exact") decodes on the CPU
    got = {i: x for images, _, batch_ids in loader for i, x in zip(batch_ids, images)}
    assert all(x.is_cuda and x.dtype == torch.float16 for x in got.values())
    for i in ids:  # nvJPEG's IDCT differs from libjpeg-turbo's by a few levels; fp16 adds ~1e-3
        assert (got[i].float().cpu() - pil_normalised(str(tmp_path / "DS" / i), 224)).abs().mean() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU graph needs CUDA")
def test_gpu_default_is_wsolevaluations_pixels(tmp_path):
    """On a GPU the default ("exact") decodes and resizes on the CPU and normalises on the GPU: still
    wsolevaluation's tensors to float rounding."""
    ids = _write_images(tmp_path, EVAL_SIZES)
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=224, device="cuda")
    assert loader.resize == "exact"
    got = {i: x for images, _, batch_ids in loader for i, x in zip(batch_ids, images)}
    for i in ids:
        torch.testing.assert_close(got[i].cpu(), pil_normalised(str(tmp_path / "DS" / i), 224), atol=FLOAT_ROUNDING,
                                   rtol=0)
