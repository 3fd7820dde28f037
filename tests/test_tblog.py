"""A training run's TensorBoard events (read back with tensorboard's EventAccumulator), figures and
per-threshold curves. (--no-tensorboard: tests/test_config_file.py's runs.)"""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_train import _args, tiny_root  # noqa: F401  (the module-scoped tiny built-in set)
from wsol_fast import figures, tblog, train

EPOCHS, STEPS = 2, 3


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("tb")
    config = folder / "log_every.yaml"
    config.write_text("runtime:\n  log_every: 2\n")    # log_every has no flag: a config file sets it
    out = folder / "run"
    assert train.main(["--config", str(config), *_args(tiny_root, out, "--epochs", str(EPOCHS),
                                                      "--max-steps-per-epoch", str(STEPS))]) == 0
    return out


def _events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_epoch_scalars_equal_metrics_csv(run):
    acc = _events(run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == EPOCHS
    columns = [k for k in rows[0] if k != "epoch"]
    # every column of metrics.csv is an epoch scalar: keys the trainer adds later appear on their own
    assert {f"epoch/{k}" for k in columns} == {t for t in acc.Tags()["scalars"] if t.startswith("epoch/")}
    for key in columns:
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [int(r["epoch"]) for r in rows]
        # event files hold float32: the csv's float64 value rounded once
        assert [e.value for e in events] == [float(np.float32(float(r[key]))) for r in rows], key


def test_step_scalars_are_interval_means(run):
    acc = _events(run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    steps_per_epoch = 4      # 32 training images, batch 8: the global step is epoch * 4 + step
    for name in ("loss", "loss_cls", "loss_ca", "loss_fc"):
        events = acc.Scalars(f"train/{name}")
        # log_every 2 over 3 steps: points after steps 2 and 3 of each epoch
        assert [e.step for e in events] == [e * steps_per_epoch + s for e in range(EPOCHS) for s in (2, 3)]
        for epoch in range(EPOCHS):
            first, last = events[2 * epoch].value, events[2 * epoch + 1].value
            # the mean of steps 1-2 and the value of step 3 recombine into the epoch mean of metrics.csv
            assert (2 * first + last) / 3 == pytest.approx(float(rows[epoch][name]), rel=1e-5), name
    lr = acc.Scalars("train/lr")
    assert [e.value for e in lr] == [pytest.approx(0.002)] * len(lr)
    assert all(e.value > 0 for e in acc.Scalars("train/images_per_s"))


def test_cam_grid_and_config_text(run):
    acc = _events(run)
    images = acc.Images("val/cam_overlays")
    assert [i.step for i in images] == list(range(1, EPOCHS + 1))
    grid = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert grid.shape == (2 * tblog.TILE, tblog.GRID_IMAGES // 2 * tblog.TILE, 3)
    assert grid.std() > 10      # a picture, not a blank canvas
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text) == json.loads((run / "config.json").read_text())


def test_run_ends_with_figures_and_curves(run):
    results = json.loads((run / "results.json").read_text())
    thresholds = results["cam_thresholds"]
    assert thresholds == pytest.approx(np.arange(0, 1, 0.01).tolist())
    for iou, curve in results["box_acc_curve"].items():
        assert len(curve) == len(thresholds)
        assert max(curve) == results["maxboxacc"][iou]       # the curve's maximum is MaxBoxAcc
        assert thresholds[int(np.argmax(curve))] == results["best_threshold"][iou]
    for name in (figures.THRESHOLD_FIGURE, figures.TRAINING_FIGURE):
        assert cv2.imread(str(run / name)) is not None, name
