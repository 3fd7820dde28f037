"""What a run gets from the data side (`prepare_data`: roots, metadata, the image scan, one loader per
split) and the `python -m wsol_fast.data check` command."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from image_reference import break_image  # noqa: E402
from test_metadata import GOOD, _write_split  # noqa: E402

cv2 = pytest.importorskip("cv2")

from wsol_fast.config import TrainConfig, resolve  # noqa: E402
from wsol_fast.data import builtin, dali, pipeline  # noqa: E402
from wsol_fast.data.__main__ import main as data_main  # noqa: E402
from wsol_fast.data.images import BadImageError  # noqa: E402
from wsol_fast.data.metadata import load_metadata  # noqa: E402
from wsol_fast.runtime import DistInfo  # noqa: E402


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
    break_image(os.path.join(images, meta.image_ids[0]), "truncated")
    break_image(os.path.join(images, meta.image_ids[1]), "missing")
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
    assert rc == 2 and f"error: {os.path.join(folder, 'class_labels.txt')}:2:" in capsys.readouterr().err


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
    break_image(os.path.join(builtin.data_root(root), "builtin", victim), "truncated")
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
