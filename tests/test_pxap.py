"""PxAP end to end on the `builtin-masks` dataset (its layout and masks: tests/data/test_builtin_masks.py):
`train` and `evaluate` reporting PxAP and the PR curve's best threshold in results.json, the table and
overlays with the GT mask outline, and the saved maps scoring back to the same PxAP. The MaskEvaluator
formula itself is checked against wsolevaluation's in tests/test_metrics.py and tests/test_scoremaps.py."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from wsol_fast import evaluate, metrics, train
from wsol_fast.data import builtin_masks
from wsol_fast.data.metadata import load_metadata, mask_paths

def test_best_point_hand_computed():
    """Interval 0.5: bins [0, .5), [.5, 1), [1, 2), [2, 3]. Foreground scores 0.9, 0.9, 0.2 (tp from
    the top: 0, 0, 2, 3), background 0.6, 0.1, 0.1, 0.1 (fp: 0, 0, 1, 4). Points (t = 2, 1, .5, 0):
    F1 = 2tp / (2tp + fp + fn): -, -, 4 / (4 + 1 + 1) = 0.667, 6 / (6 + 4 + 0) = 0.6. Best: t = 0.5,
    precision 2/3, recall 2/3."""
    ev = metrics.MaskEvaluator(0.5)
    m = np.array([[0.9, 0.9, 0.2, 0.6, 0.1, 0.1, 0.1]])
    gt = np.array([[1, 1, 1, 0, 0, 0, 0]], bool)
    ev.accumulate(m, gt)
    best = ev.best_point()
    assert best["threshold"] == 0.5
    assert best["f1"] == pytest.approx(2 / 3) and best["precision"] == pytest.approx(2 / 3)
    assert best["recall"] == pytest.approx(2 / 3)


def _args(root, out, *extra):
    return ["--backbone", "vgg16", "--dataset", builtin_masks.DATASET,
            "--data-root", builtin_masks.data_root(root), "--metadata-root", builtin_masks.metadata_root(root),
            "--batch-size", "8", "--resize-size", "72", "--crop-size", "64", "--workers", "0",
            "--loader", "opencv", "--amp", "off", "--no-channels-last", "--lr", "0.002", "--output", str(out),
            "--num-overlays", "2", "--epochs", "1", "--max-steps-per-epoch", "1", "--block-warmup-epochs", "0",
            *extra]


def test_train_and_evaluate_report_pxap(tiny_masks, tmp_path, capsys):
    """The one-command path on a mask dataset: val selects best.pt by PxAP, the test results hold PxAP,
    the best PR threshold and the centre prior's PxAP; overlays are written; the saved maps score back
    to the same PxAP with `--scoremap-root`; `evaluate --checkpoint` reproduces the numbers."""
    out, maps = tmp_path / "run", tmp_path / "maps"
    assert train.main(_args(tiny_masks, out, "--save-scoremaps", str(maps))) == 0
    table = capsys.readouterr().out
    assert "val PxAP" in table and "PxAP" in table and "PR best threshold" in table
    results = json.loads((out / "results.json").read_text())
    for key in ("pxap", "pxap_best_threshold", "pxap_best_f1", "top1_cls"):
        assert key in results, key
    assert "maxboxacc" not in results and "top1_loc" not in results
    assert 0 < results["pxap"] <= 100 and 0 <= results["pxap_best_threshold"] <= 1
    assert 0 < results["baselines"]["centre_prior"]["pxap"] < 100
    assert results["best_val"]["epoch"] == 1 and "pxap" in results["best_val"]
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert "val_pxap" in (out / "metrics.csv").read_text().splitlines()[0]

    meta = load_metadata(builtin_masks.metadata_root(tiny_masks), builtin_masks.DATASET, "test")
    assert sorted(str(p.relative_to(maps)) for p in maps.rglob("*.npy")) == sorted(i + ".npy" for i in meta.image_ids)
    assert evaluate.main(["--scoremap-root", str(maps), "--metadata-root", builtin_masks.metadata_root(tiny_masks),
                          "--dataset", builtin_masks.DATASET, "--split", "test",
                          "--mask-root", builtin_masks.mask_root(tiny_masks), "--output", str(tmp_path / "s")]) == 0
    again = json.loads((tmp_path / "s" / "results.json").read_text())
    assert again["pxap"] == results["pxap"]

    assert evaluate.main(["--checkpoint", str(out / "best.pt"), "--output", str(tmp_path / "e"),
                          "--num-overlays", "1"]) == 0
    checked = json.loads((tmp_path / "e" / "results.json").read_text())
    assert checked["pxap"] == results["pxap"]
    overlay = cv2.imread(str(next((tmp_path / "e" / "overlays").glob("*.png"))))
    red = (overlay[..., 2] > 200) & (overlay[..., 1] < 60) & (overlay[..., 0] < 60)
    assert red.sum() > 20                     # the GT mask outline is drawn


def test_missing_mask_stops_before_training(tiny_masks, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_masks, copy)
    meta = load_metadata(builtin_masks.metadata_root(str(copy)), builtin_masks.DATASET, "val")
    victim = mask_paths(meta, builtin_masks.mask_root(str(copy)), meta.image_ids[2])[0][0]
    os.remove(victim)
    assert train.main(_args(str(copy), tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "1 mask file(s)" in err and victim in err
    assert not (tmp_path / "run" / "last.pt").exists()
