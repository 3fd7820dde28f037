"""`python -m wsol_fast.plot RUN`: the figures from hand-written results.json / metrics.csv, PxAP's curve
only when results.json has one, clear outcomes when inputs are missing. (The figures themselves:
tests/test_figures.py; a real run's figures and curves: tests/test_tblog.py.)"""
from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np

from wsol_fast import figures, plot


def _results(with_pxap: bool) -> dict:
    thresholds = np.arange(0, 1, 0.01)
    curves = {str(iou): (100 * np.exp(-((thresholds - 0.3) / (0.1 + iou / 200)) ** 2)).tolist()
              for iou in (30, 50, 70)}
    out = {"num_images": 12, "cam_thresholds": thresholds.tolist(), "box_acc_curve": curves,
           "maxboxacc_v2": 70.0, "loc_threshold": 0.3}
    if with_pxap:
        recall = np.linspace(0, 1, 50)
        out["pxap_curve"] = {"precision": [float("nan")] + (1 - recall[1:] ** 2).tolist(),
                             "recall": recall.tolist()}
        out["pxap"] = 66.7
    return out


def _metrics_csv(path, epochs=3, extra=()):
    keys = ["epoch", "loss", "loss_cls", "loss_ca", "loss_fc", "lr", "val_top1_cls", "val_maxboxacc_v2", *extra]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for e in range(1, epochs + 1):
            w.writerow([e] + [round(1.0 / e + k, 3) for k in range(len(keys) - 1)])


def _png(path):
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def test_figures_of_a_box_run(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(_results(with_pxap=False)))
    _metrics_csv(tmp_path / "metrics.csv", extra=("diag_fg_mask_area",))
    assert plot.main([str(tmp_path)]) == 0
    threshold_png = _png(tmp_path / figures.THRESHOLD_FIGURE)
    assert threshold_png.shape == (400, 600, 3)               # 6 x 4 inches at 100 dpi
    assert _png(tmp_path / figures.TRAINING_FIGURE).shape == (360, 900, 3)
    assert not (tmp_path / figures.PXAP_FIGURE).exists()         # box dataset: no PxAP curve
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    assert "wrote" in capsys.readouterr().out


def test_pxap_curve_when_results_hold_one(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results(with_pxap=True)))
    written = figures.plot_run(str(tmp_path), quiet=True)
    assert [os.path.basename(p) for p in written] == [figures.THRESHOLD_FIGURE, figures.PXAP_FIGURE]
    assert _png(tmp_path / figures.PXAP_FIGURE).shape == (400, 450, 3)


def test_missing_inputs(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert plot.main([str(tmp_path)]) == 1                    # an empty folder: nothing to draw
    err = capsys.readouterr().err
    assert "results.json" in err and "metrics.csv" in err
    # a results.json written before the curves were kept: the training curves alone
    (tmp_path / "results.json").write_text(json.dumps({"maxboxacc_v2": 1.0}))
    _metrics_csv(tmp_path / "metrics.csv", epochs=1)
    out = tmp_path / "figs"
    assert plot.main([str(tmp_path), "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == [figures.TRAINING_FIGURE]
