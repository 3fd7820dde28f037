"""What every loader promises (data/base.py), checked on each: eval sees every image of the split exactly
once, over any number of shards and passes; a train pass resumed mid-epoch gives exactly the batches the
uninterrupted pass had left; a bad image is named, or skipped and counted. The DALI rows skip where
nvidia.dali does not import."""
from __future__ import annotations

import pytest
import torch
from image_reference import break_image, write_jpegs  # noqa: E402

pytest.importorskip("cv2")


def _loader(kind, root, ids, **kw):
    """The loader `kind` over `ids` (label k for image k), decoding on the CPU."""
    kw.setdefault("device", "cpu")
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
        from wsol_fast.data.dali import DaliLoader

        kw.setdefault("num_threads", 2)
        kw.pop("num_workers", None)
        return DaliLoader(ids, list(range(len(ids))), str(root), "DS", **kw)
    from wsol_fast.data.opencv import OpenCVLoader

    kw.setdefault("num_workers", 0)
    return OpenCVLoader(ids, list(range(len(ids))), str(root), "DS", **kw)


LOADERS = ["opencv", "dali"]


# 1: a lone sample; batch-1 / batch+1: one short or one spilling batch; 23: several batches, odd tail.
@pytest.mark.parametrize("size", [1, 3, 5, 23])
@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("kind", LOADERS)
def test_eval_sees_every_image_exactly_once(tmp_path, kind, size, num_shards):
    ids = write_jpegs(tmp_path, [(20, 24)] * size)
    seen = []
    for shard in range(num_shards):
        loader = _loader(kind, tmp_path, ids, train=False, batch_size=4, crop_size=16, shard_id=shard,
                         num_shards=num_shards)
        batches = [b for _, _, b in loader]
        assert len(batches) == len(loader)
        assert all(len(b) == 4 for b in batches[:-1]) and all(isinstance(i, str) for b in batches for i in b)
        for _ in range(2):  # a second pass is identical: nothing leaks over from the padding
            assert [b for _, _, b in loader] == batches
        seen += [i for b in batches for i in b]
    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize("kind", LOADERS)
def test_train_resume_mid_epoch_gives_the_same_batches(tmp_path, kind):
    ids = write_jpegs(tmp_path, [(40, 50)] * 7)
    loader = _loader(kind, tmp_path, ids, train=True, batch_size=2, resize_size=40, crop_size=32, seed=1,
                     num_workers=2)
    loader.set_epoch(2)
    full = list(loader)
    loader.set_epoch(2, start=2)  # one batch already done
    abandoned = iter(loader)
    next(abandoned)               # a pass left half-way (as --max-steps-per-epoch does) ...
    resumed = list(loader)        # ... does not disturb the next one
    assert len(full) == 3 and len(resumed) == 2 and len(loader) == 2  # 7 samples, batch 2, last one dropped
    for (a, la, ia), (b, lb, ib) in zip(full[1:], resumed):
        assert ia == ib and torch.equal(la, lb) and torch.equal(a, b)


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
@pytest.mark.parametrize("kind", LOADERS)
def test_bad_image_is_an_error_or_skipped_and_counted(tmp_path, kind, how):
    from wsol_fast.data.images import BadImageError

    ids = write_jpegs(tmp_path, [(40, 50)] * 5)
    break_image(tmp_path / "DS" / ids[2], how)
    with pytest.raises(BadImageError, match=ids[2]):
        _loader(kind, tmp_path, ids, train=False, batch_size=2, crop_size=32)
    loader = _loader(kind, tmp_path, ids, train=False, batch_size=2, crop_size=32, skip_bad_images=True)
    assert loader.bad_images == [ids[2]]
    assert sorted(i for _, _, b in loader for i in b) == sorted(ids[:2] + ids[3:])
