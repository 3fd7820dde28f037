"""The data side: metadata errors (each names file:line), the real CUB metadata, the OpenCV loader
(transforms against a hand-written cv2 version, formats, bad files, exact-once eval, exact resume), the
`check` CLI and `prepare_data`. Images are tiny and generated per test, so the file runs in seconds."""
from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest
import torch
from image_reference import cv2_normalised  # noqa: E402

cv2 = pytest.importorskip("cv2")

from wsol_fast.config import TrainConfig, resolve  # noqa: E402
from wsol_fast.data import builtin, dali, images, pipeline  # noqa: E402
from wsol_fast.data.__main__ import main as data_main  # noqa: E402
from wsol_fast.data.images import BadImageError, read_image_rgb  # noqa: E402
from wsol_fast.data.opencv import OpenCVLoader, augment_draws  # noqa: E402
from wsol_fast.data.metadata import MetadataError, load_metadata, load_splits  # noqa: E402
from wsol_fast.runtime import DistInfo  # noqa: E402

MEAN = np.array(images.IMAGENET_MEAN, np.float32)
STD = np.array(images.IMAGENET_STD, np.float32)
ONE_LEVEL = 1.0 / 255 / STD.min()   # see tests/test_dali.py


# ------------------------------------------------------------------------------------------- metadata

GOOD = {
    "image_ids.txt": ["a.jpg", "b.jpg", "c.jpg"],
    "class_labels.txt": ["a.jpg,0", "b.jpg,1", "c.jpg,2"],
    "image_sizes.txt": ["a.jpg,100,80", "b.jpg,100,80", "c.jpg,100,80"],
    "localization.txt": ["a.jpg,10,10,50,60", "b.jpg,0,0,100,80", "c.jpg,5,6,7,8"],
}


def _write_split(root, files, dataset="DS", split="val"):
    folder = os.path.join(root, dataset, split)
    os.makedirs(folder, exist_ok=True)
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return folder


# (file, line number, new text, what the message must say). Each is its own, clear error.
MALFORMED = {
    "missing column": ("class_labels.txt", 2, "b.jpg", "expected 2 comma-separated columns"),
    "box outside the image": ("localization.txt", 3, "c.jpg,5,6,101,8", "lies outside the 100x80 image"),
    "unknown image id": ("class_labels.txt", 2, "zzz.jpg,1", "unknown image id 'zzz.jpg'"),
    "negative label": ("class_labels.txt", 2, "b.jpg,-1", "bad class label -1"),
    "non-integer label": ("class_labels.txt", 2, "b.jpg,one", "class label 'one' is not an integer"),
    "fractional label": ("class_labels.txt", 3, "c.jpg,1.5", "class label '1.5' is not an integer"),
    "duplicate id": ("image_ids.txt", 3, "b.jpg", "duplicate line 'b.jpg' (first at line 2)"),
    "absolute path": ("image_ids.txt", 1, "/data/a.jpg", "is absolute"),
    "dot-dot path": ("image_ids.txt", 1, "../a.jpg", "escapes the data root through '..'"),
    "x0 > x1": ("localization.txt", 1, "a.jpg,50,10,40,60", "is not x0<=x1, y0<=y1"),
    "non-numeric box": ("localization.txt", 1, "a.jpg,1,2,three,4", "must be numbers"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_names_file_and_line(tmp_path, case):
    name, line, text, message = MALFORMED[case]
    files = {k: list(v) for k, v in GOOD.items()}
    files[name][line - 1] = text
    folder = _write_split(tmp_path, files)
    with pytest.raises(MetadataError) as err:
        load_metadata(str(tmp_path), "DS", "val")
    assert str(err.value).startswith(f"{os.path.join(folder, name)}:{line}: ")
    assert message in str(err.value)


def test_label_out_of_range_names_file_and_line(tmp_path):
    folder = _write_split(tmp_path, GOOD)
    with pytest.raises(MetadataError, match="out of range for 2 classes") as err:
        load_metadata(str(tmp_path), "DS", "val", num_classes=2)
    assert str(err.value).startswith(f"{os.path.join(folder, 'class_labels.txt')}:3: ")


def test_good_metadata_reads_back(tmp_path):
    _write_split(tmp_path, GOOD)
    meta = load_metadata(str(tmp_path), "DS", "val")
    assert meta.image_ids == GOOD["image_ids.txt"] and meta.num_classes == 3
    assert meta.sizes["a.jpg"] == (100, 80) and meta.boxes["c.jpg"].tolist() == [[5, 6, 7, 8]]


def test_real_cub_metadata_is_accepted_as_is(cub_metadata_root):
    metas = load_splits(cub_metadata_root, "CUB")
    assert {s: len(m) for s, m in metas.items()} == {"train": 5994, "val": 1000, "test": 5794}
    assert {m.num_classes for m in metas.values()} == {200}
    assert all(len(metas[s].boxes) == len(metas[s]) for s in ("val", "test"))


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


def test_train_transform_matches_hand_computed_cv2(tmp_path):
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
            want = cv2_normalised(str(tmp_path / "DS" / image_id), 40, ((off_y[j], off_x[j]), 32), bool(flip[j]))
            torch.testing.assert_close(x, want, atol=1e-5, rtol=0)
            seen_flips.add(int(flip[j]))
            seen_offsets.add((int(off_y[j]), int(off_x[j])))
    assert seen_flips == {0, 1} and len(seen_offsets) > 5


def test_eval_transform_matches_hand_computed_cv2(tmp_path):
    ids = _write_images(tmp_path, [(375, 500), (333, 241), (97, 130)])
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=64)
    got = {i: x for images, _, batch in loader for i, x in zip(batch, images)}
    assert list(got) == ids
    for image_id in ids:
        torch.testing.assert_close(got[image_id], cv2_normalised(str(tmp_path / "DS" / image_id), 64), atol=1e-5,
                                   rtol=0)


def test_channels_last_output_has_the_same_values(tmp_path):
    ids = _write_images(tmp_path, [(40, 50)] * 2)
    a = next(iter(_loader(tmp_path, ids, train=False, batch_size=2, crop_size=32)))[0]
    b = next(iter(_loader(tmp_path, ids, train=False, batch_size=2, crop_size=32, channels_last=True)))[0]
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


def test_draws_are_the_dali_loaders(tmp_path):
    """Same (seed, epoch, shard) -> the same crops and flips as DaliLoader (no DALI needed to check)."""
    ids = _write_images(tmp_path, [(40, 50)] * 9)
    d = dali.DaliLoader(ids, range(9), str(tmp_path), "DS", train=True, batch_size=2, resize_size=40,
                        crop_size=32, seed=7, shard_id=1, num_shards=2)
    d.set_epoch(3, 2)
    starts, _, offsets, flips = d._augment_draws(len(d.sampler))
    off_y, off_x, flip = augment_draws(7, 3, 1, d.sampler.per_rank, 40, 32)
    assert np.array_equal(np.round(starts * 40).astype(int), np.stack([off_y, off_x], 1)[2:])
    assert np.array_equal(offsets, np.stack([off_y, off_x], 1)[2:])
    assert np.array_equal(flips, flip[2:])


@pytest.mark.parametrize("resize, tolerance", [("opencv", 1e-5), ("dali", ONE_LEVEL + 1e-4)])
def test_train_batches_match_dali(tmp_path, resize, tolerance):
    """DALI's CPU default (cv2's resize inside the pipeline) gives the OpenCV loader's crops to float
    rounding; DALI's own resize within one uint8 level."""
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

def _break(path, how):
    data = open(path, "rb").read()
    if how == "missing":
        os.remove(path)
        return
    with open(path, "wb") as fh:
        fh.write({"truncated": data[: len(data) // 3], "garbage": b"definitely not a JPEG " * 20,
                  "empty": b"", "bad-inside": data[:2] + b"\x00" * 200 + data[-2:]}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "missing", "bad-inside"])
def test_read_image_rgb_names_the_bad_file(tmp_path, how):
    ids = _write_images(tmp_path, [(20, 24)])
    path = str(tmp_path / "DS" / ids[0])
    _break(path, how)
    with pytest.raises(BadImageError, match=ids[0]):
        read_image_rgb(path)


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
def test_bad_image_is_an_error_or_skipped_and_counted(tmp_path, how):
    ids = _write_images(tmp_path, [(40, 50)] * 5)
    _break(tmp_path / "DS" / ids[2], how)
    with pytest.raises(BadImageError, match=ids[2]):
        _loader(tmp_path, ids, train=False, batch_size=2, crop_size=32)
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=32, skip_bad_images=True)
    assert loader.bad_images == [ids[2]]
    assert sorted(i for _, _, b in loader for i in b) == sorted(ids[:2] + ids[3:])


@pytest.mark.parametrize("workers", [0, 1])
def test_decode_failure_after_the_prescan_names_the_file(tmp_path, workers):
    """A file with intact JPEG markers but a broken inside passes the cheap check; decoding it stops the
    pass with an error that still names it (also through a worker process)."""
    ids = _write_images(tmp_path, [(40, 50)] * 4)
    _break(tmp_path / "DS" / ids[1], "bad-inside")
    loader = _loader(tmp_path, ids, train=False, batch_size=2, crop_size=32, num_workers=workers)
    with pytest.raises(BadImageError, match=ids[1]):
        list(loader)


# ------------------------------------------------------------------------------------------- order

# 1: a lone sample; batch-1 / batch+1: one short or one spilling batch; 23: several batches, odd tail.
@pytest.mark.parametrize("size", [1, 3, 5, 23])
@pytest.mark.parametrize("num_shards", [1, 2])
def test_eval_sees_every_image_exactly_once(tmp_path, size, num_shards):
    ids = _write_images(tmp_path, [(20, 24)] * size)
    seen = []
    for shard in range(num_shards):
        loader = _loader(tmp_path, ids, train=False, batch_size=4, crop_size=16, shard_id=shard,
                         num_shards=num_shards)
        batches = [b for _, _, b in loader]
        assert len(batches) == len(loader)
        assert all(len(b) == 4 for b in batches[:-1]) and all(isinstance(i, str) for b in batches for i in b)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == sorted(ids)


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


def test_train_resume_mid_epoch_gives_the_same_batches(tmp_path):
    ids = _write_images(tmp_path, [(40, 50)] * 7)
    loader = _loader(tmp_path, ids, train=True, batch_size=2, resize_size=40, crop_size=32, seed=1,
                     num_workers=2)
    loader.set_epoch(2)
    full = list(loader)
    loader.set_epoch(2, start=2)  # one batch already done
    abandoned = iter(loader)
    next(abandoned)               # a pass left half-way (as --max-steps-per-epoch does) ...
    resumed = list(loader)        # ... does not disturb the next one
    assert len(full) == 3 and len(resumed) == 2 and len(loader) == 2
    for (a, la, ia), (b, lb, ib) in zip(full[1:], resumed):
        assert ia == ib and torch.equal(la, lb) and torch.equal(a, b)


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


# ------------------------------------------------------------------------------------------- check CLI

@pytest.fixture(scope="module")
def tiny_builtin(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    builtin.generate(root, seed=0, progress=False, num_train=40, num_val=20, num_test=20)
    return root


def _check(root, capsys, *extra):
    rc = data_main(["check", "--metadata-root", builtin.metadata_root(root), "--data-root",
                    builtin.data_root(root), "--dataset", "builtin", "--no-progress", "--workers", "2", *extra])
    return rc, capsys.readouterr().out


def test_check_cli_good_dataset(tiny_builtin, capsys):
    rc, out = _check(tiny_builtin, capsys)
    assert rc == 0, out
    assert "10 classes" in out and "train       40 images" in out and "all images decode" in out


def test_check_cli_broken_dataset(tmp_path, tiny_builtin, capsys):
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(tiny_builtin, root)
    meta = load_metadata(builtin.metadata_root(root), "builtin", "val")
    images = os.path.join(builtin.data_root(root), "builtin")
    _break(os.path.join(images, meta.image_ids[0]), "truncated")
    _break(os.path.join(images, meta.image_ids[1]), "missing")
    cv2.imwrite(os.path.join(images, meta.image_ids[2]), np.zeros((10, 12, 3), np.uint8))  # wrong size
    rc, out = _check(root, capsys, "--splits", "val", "test")
    assert rc == 1
    assert "val" in out and "3 bad" in out and "3 bad image(s)" in out
    assert f"{meta.image_ids[0]}': truncated JPEG" in out
    assert meta.image_ids[1] in out and "No such file" in out
    assert "decoded size 12x10 differs from image_sizes.txt" in out


def test_check_cli_malformed_metadata(tmp_path, capsys):
    files = {k: list(v) for k, v in GOOD.items()}
    files["class_labels.txt"][1] = "b.jpg"
    folder = _write_split(tmp_path, files, dataset="DS", split="val")
    rc = data_main(["check", "--metadata-root", str(tmp_path), "--data-root", str(tmp_path), "--dataset", "DS",
                    "--splits", "val", "--no-progress"])
    assert rc == 2 and f"{os.path.join(folder, 'class_labels.txt')}:2:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- pipeline

def _cfg(root, loader="opencv", **data):
    cfg = TrainConfig()
    cfg.data.dataset = "builtin"
    cfg.data.metadata_root = builtin.metadata_root(root)
    cfg.data.data_root = builtin.data_root(root)
    cfg.data.loader, cfg.data.workers, cfg.optim.batch_size = loader, 0, 8
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return resolve(cfg, "cpu")


def test_prepare_data_and_train_loader(tiny_builtin):
    cfg = _cfg(tiny_builtin)
    data = pipeline.prepare_data(cfg.data, DistInfo(), torch.device("cpu"), batch_size=8)
    assert data.num_classes == 10 and data.loader_name == "opencv" and data.bad_images == []
    assert os.path.isfile(os.path.join(data.image_root, data.test_meta.image_ids[0]))
    for loader, meta in ((data.val_loader, data.val_meta), (data.test_loader, data.test_meta)):
        assert sorted(i for _, _, b in loader for i in b) == sorted(meta.image_ids)
    train = data.train_loader
    assert len(train) == 40 // 8
    images, labels, ids = next(iter(train))
    assert images.shape == (8, 3, cfg.data.crop_size, cfg.data.crop_size)
    assert labels.tolist() == [data.train_meta.labels[i] for i in ids]


def test_prepare_data_shards_eval_over_ranks(tiny_builtin):
    cfg = _cfg(tiny_builtin)
    seen = []
    for rank in range(3):
        data = pipeline.prepare_data(cfg.data, DistInfo(rank=rank, world_size=3), torch.device("cpu"), batch_size=8,
                                     splits=("val",))
        seen += [i for _, _, b in data.val_loader for i in b]
    assert sorted(seen) == sorted(data.val_meta.image_ids) and data.train_meta is None
    with pytest.raises(ValueError, match="without the train split"):
        data.train_loader


def test_prepare_data_bad_image_error_or_skip(tmp_path, tiny_builtin):
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(tiny_builtin, root)
    victim = load_metadata(builtin.metadata_root(root), "builtin", "test").image_ids[3]
    _break(os.path.join(builtin.data_root(root), "builtin", victim), "truncated")
    with pytest.raises(BadImageError, match=victim):
        pipeline.prepare_data(_cfg(root).data, DistInfo(), torch.device("cpu"), batch_size=8)
    data = pipeline.prepare_data(_cfg(root, skip_bad_images=True).data, DistInfo(), torch.device("cpu"), batch_size=8)
    assert data.bad_images == [victim] and victim not in data.test_meta.image_ids
    assert len(data.test_meta) == 19 == sum(len(b) for _, _, b in data.test_loader)


def test_prepare_data_generates_the_builtin_set(tmp_path, monkeypatch):
    monkeypatch.setitem(builtin.DEFAULTS, "num_train", 20)
    monkeypatch.setitem(builtin.DEFAULTS, "num_val", 10)
    monkeypatch.setitem(builtin.DEFAULTS, "num_test", 10)
    cfg = _cfg(str(tmp_path / "cache"), metadata_root=None, data_root=str(tmp_path / "cache"), builtin_seed=3)
    data = pipeline.prepare_data(cfg.data, DistInfo(), torch.device("cpu"), batch_size=8)
    assert builtin.is_complete(str(tmp_path / "cache"), seed=3)
    assert [len(m) for m in (data.train_meta, data.val_meta, data.test_meta)] == [20, 10, 10]


def test_only_local_rank_zero_generates(tmp_path, monkeypatch):
    """Under DDP the other ranks wait at the barrier and read what local rank 0 generated."""
    calls = []
    monkeypatch.setattr(pipeline.runtime, "barrier", lambda info: calls.append("barrier"))
    monkeypatch.setattr(builtin, "generate", lambda *a, **k: calls.append("generate"))
    root = str(tmp_path)
    cfg = _cfg(root, metadata_root=None, data_root=root)
    roots = pipeline.resolve_roots(cfg.data, DistInfo(rank=1, world_size=2, local_rank=1))
    assert calls == ["barrier"] and roots == (builtin.metadata_root(root), builtin.data_root(root))
    pipeline.resolve_roots(cfg.data, DistInfo(rank=2, world_size=4, local_rank=0))   # another node's first rank
    assert calls == ["barrier", "generate", "barrier"]


def test_choose_loader(monkeypatch):
    cpu = torch.device("cpu")
    assert pipeline.choose_loader("opencv", cpu) == "opencv"
    assert pipeline.choose_loader("auto", cpu) == ("dali" if dali.dali_available() else "opencv")
    monkeypatch.setattr(dali, "dali_available", lambda: False)
    assert pipeline.choose_loader("auto", cpu) == "opencv"
    with pytest.raises(RuntimeError, match="nvidia.dali is not installed"):
        pipeline.choose_loader("dali", cpu)


def test_prepare_data_with_dali(tiny_builtin):
    pytest.importorskip("nvidia.dali")
    data = pipeline.prepare_data(_cfg(tiny_builtin, loader="dali").data, DistInfo(), torch.device("cpu"),
                                 batch_size=8, splits=("val",))
    assert data.loader_name == "dali" and isinstance(data.val_loader, dali.DaliLoader)
    assert sorted(i for _, _, b in data.val_loader for i in b) == sorted(data.val_meta.image_ids)
