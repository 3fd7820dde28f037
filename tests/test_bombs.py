"""Decompression bombs of every format the issue names (WebP, PNG, TIFF, JPEG; tests/bomb_files.py),
named .jpg inside a dataset: `data check` and `train` refuse each from its header, naming the file, at
a peak memory no more than 200 MB above the same command on the same data without the bombs (one
undefended decode of one of them peaks at ~1.5 GB). predict's run is in tests/test_predict.py (it needs
a trained checkpoint). Every process is fresh and measured from inside (tests/peak_rss.py)."""
from __future__ import annotations

import os
import shutil

import pytest

from bomb_files import FORMATS, write_bomb
from peak_rss import run_measured
from wsol_fast import train
from wsol_fast.data import builtin, images

TINY = dict(num_train=16, num_val=4, num_test=4, min_size=40, max_size=48)
BOUND_MB = 200


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(clean root, bombed root, {format: bombed image path}): the val images replaced by one bomb each."""
    clean = str(tmp_path_factory.mktemp("clean"))
    builtin.generate(clean, seed=0, progress=False, **TINY)
    bombed = str(tmp_path_factory.mktemp("bombed") / "root")
    shutil.copytree(clean, bombed)
    ids = open(os.path.join(builtin.metadata_root(bombed), "builtin", "val", "image_ids.txt")).read().split()
    paths = {}
    for fmt, image_id in zip(FORMATS, ids):
        paths[fmt] = write_bomb(fmt, os.path.join(builtin.data_root(bombed), "builtin", image_id))
    return clean, bombed, paths


def _data_args(root):
    return ["--metadata-root", builtin.metadata_root(root), "--data-root", builtin.data_root(root),
            "--dataset", "builtin"]


def test_data_check_reports_each_bomb_without_decoding_it(datasets, tmp_path):
    clean, bombed, paths = datasets
    code, out, err, base = run_measured("wsol_fast.data", ["check", *_data_args(clean), "--no-progress"], tmp_path)
    assert code == 0, err
    code, out, err, peak = run_measured("wsol_fast.data", ["check", *_data_args(bombed), "--no-progress"], tmp_path)
    assert code == 1 and "4 bad image(s)" in out, out + err
    for fmt, path in paths.items():
        line = next(line for line in out.splitlines() if path in line)
        assert "refusing to decode image" in line and "above the cap of 64 MP" in line, (fmt, line)
    assert peak <= base + BOUND_MB, f"data check: {peak:.0f} MiB with the bombs, {base:.0f} MiB without"


def test_train_refuses_the_bombs_before_decoding_naming_the_file(datasets, tmp_path):
    clean, bombed, paths = datasets
    common = ["--backbone", "vgg16", "--method", "icl", "--dataset", "builtin", "--batch-size", "8",
              "--resize-size", "36", "--crop-size", "32", "--workers", "0", "--loader", "opencv", "--amp", "off",
              "--no-channels-last", "--no-compile", "--epochs", "1", "--max-steps-per-epoch", "1",
              "--num-overlays", "0", "--no-tensorboard", "--block-warmup-epochs", "0"]
    code, out, err, base = run_measured("wsol_fast.train", [*common, *_data_args(clean)[:4], "--output",
                                                            tmp_path / "clean"], tmp_path)
    assert code == 0, err
    code, out, err, peak = run_measured("wsol_fast.train", [*common, *_data_args(bombed)[:4], "--output",
                                                            tmp_path / "bombed"], tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: image "), err
    assert paths["webp"] in lines[0] and "its WEBP header claims 16000x16000" in lines[0]
    assert "3 more unreadable image(s) in the val split" in lines[0] and "Traceback" not in err
    assert peak <= base + BOUND_MB, f"train: {peak:.0f} MiB with the bombs, {base:.0f} MiB without"


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_bomb_is_refused_by_the_pre_scan_and_the_decoder_and_dali_too(datasets, fmt, capsys, tmp_path):
    """In-process: each format alone is refused by the pre-scan (both loaders share it: --loader auto is
    DALI where it is installed) and by the decoder every command uses (read_image_rgb)."""
    path = datasets[2][fmt]
    assert "above the cap of 64 MP" in images.image_problem(path)
    with pytest.raises(images.BadImageError, match=f"refusing to decode image '{path}'"):
        images.read_image_rgb(path)
    root = str(tmp_path / "one")
    shutil.copytree(datasets[0], root)
    victim = open(os.path.join(builtin.metadata_root(root), "builtin", "train", "image_ids.txt")).readline().strip()
    shutil.copyfile(path, os.path.join(builtin.data_root(root), "builtin", victim))
    args = ["--backbone", "vgg16", "--dataset", "builtin", *_data_args(root)[:4], "--batch-size", "8",
            "--resize-size", "36", "--crop-size", "32", "--workers", "0", "--loader", "auto", "--amp", "off",
            "--epochs", "1", "--output", str(tmp_path / "run"), "--no-compile"]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: image {os.path.join(builtin.data_root(root), 'builtin', victim)}")
