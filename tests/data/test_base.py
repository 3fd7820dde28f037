"""wsol_fast.data.base, what both loaders share, on its own (no decoding): batch counts worked out by hand,
the order over shards and epochs, resuming mid-epoch, the pre-scan leaving a bad file out, the one size
check, the device rule. What each loader does with it: tests/data/test_loader_contract.py."""
from __future__ import annotations

import os

import pytest
import torch
from image_reference import break_image, write_jpegs  # noqa: E402

pytest.importorskip("cv2")

from wsol_fast.data import base  # noqa: E402
from wsol_fast.data.images import BadImageError  # noqa: E402

IDS = [f"c/{k}.jpg" for k in range(10)]


def _loader(ids=IDS, root="/nowhere", **kw):
    kw.setdefault("check_images", False)
    return base.SplitLoader(ids, root, "DS", device="cpu", **kw)


def test_batch_counts_hand_computed():
    assert len(_loader(train=True, batch_size=3)) == 3                    # 10 // 3: the partial batch dropped
    assert len(_loader(train=True, batch_size=3, drop_last=False)) == 4   # kept
    assert len(_loader(train=False, batch_size=3)) == 4                   # eval: ceil(10 / 3)
    # 3 shards. Eval: shard 0 sees 0, 3, 6, 9 (2 batches of 3, one partial), shard 2 sees 2, 5, 8 (1).
    assert len(_loader(train=False, batch_size=3, num_shards=3)) == 2
    assert len(_loader(train=False, batch_size=3, shard_id=2, num_shards=3)) == 1
    # Train: every shard gets ceil(10 / 3) = 4 samples (padded), one full batch of 3.
    assert [len(_loader(train=True, batch_size=3, shard_id=r, num_shards=3)) for r in range(3)] == [1, 1, 1]


def test_paths_and_the_crop_check():
    loader = _loader(train=False, batch_size=2)
    assert loader.paths[3] == os.path.join("/nowhere", "DS", "c/3.jpg")
    with pytest.raises(ValueError, match=r"resize_size \(64\) must be >= crop_size \(72\)"):
        _loader(train=True, batch_size=2, resize_size=64, crop_size=72)
    assert _loader(train=False, batch_size=2, resize_size=64, crop_size=72).crop_size == 72   # eval: no resize


def test_eval_order_is_strided_over_shards_and_covers_every_image_once():
    orders = [_loader(train=False, batch_size=4, shard_id=r, num_shards=3)._order() for r in range(3)]
    assert orders == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_train_order_per_epoch_and_resume():
    loader = _loader(train=True, batch_size=2, seed=5)
    loader.set_epoch(1)
    first = loader._order()
    assert sorted(first) == list(range(10))                               # a permutation of the split
    assert _loader(train=True, batch_size=2, seed=5)._order() != first    # epoch 0 is another order
    again = _loader(train=True, batch_size=2, seed=5)
    again.set_epoch(1)
    assert again._order() == first                                        # a function of (seed, epoch)
    again.set_epoch(1, start=4)                                           # 4 samples already done
    assert again._order() == first[4:] and len(again) == 3                # (10 - 4) // 2
    shards = [_loader(train=True, batch_size=2, seed=5, shard_id=r, num_shards=3) for r in range(3)]
    for s in shards:
        s.set_epoch(1)
    seen = [i for s in shards for i in s._order()]
    assert len(seen) == 12 and set(seen) == set(range(10))                # 10 padded to 3 x 4


def test_the_pre_scan_leaves_a_bad_file_out_and_the_sizes_are_checked_once(tmp_path):
    ids = write_jpegs(tmp_path, [(6, 8), (6, 8), (6, 8)])                 # (h, w): 8 x 6 images
    break_image(os.path.join(tmp_path, "DS", ids[1]), "missing")
    with pytest.raises(BadImageError, match=ids[1]):
        _loader(ids, str(tmp_path), train=False, batch_size=2, check_images=True)
    loader = _loader(ids, str(tmp_path), train=False, batch_size=2, check_images=True, skip_bad_images=True)
    assert loader.bad_images == [ids[1]] and loader._order() == [0, 2] and len(loader) == 1
    assert loader.check_sizes(None) == {}
    # listed (w, h): the first right, the third wrong; the missing one is not read again
    assert loader.check_sizes([(8, 6), (5, 5), (9, 6)]) == {ids[2]: ((8, 6), (9, 6))}


def test_resolve_device():
    assert base.resolve_device("cpu") == torch.device("cpu")
    assert base.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
