"""wsol_fast.figures, the PNGs of a run: the chosen threshold's line where it belongs, metrics.csv read back
with numbers as floats and blanks as NaN, the PR curve without its undefined points, only the loss and val
columns drawn, and plot_run writing where it is told. `python -m wsol_fast.plot` on top: tests/test_plot.py."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from test_plot import _png, _results  # noqa: E402

from wsol_fast import figures


def test_threshold_figure_marks_the_chosen_threshold(tmp_path):
    """The dashed line sits at x = loc_threshold: redraw without it and the only changed pixel column band
    is where 0.3 maps on the axis (which spans the same pixels in both figures)."""
    results = _results(with_pxap=False)
    figures.threshold_figure(results, str(tmp_path / "with.png"), title="t")
    results.pop("loc_threshold")
    figures.threshold_figure(results, str(tmp_path / "without.png"), title="t")
    diff = np.abs(_png(tmp_path / "with.png").astype(int) - _png(tmp_path / "without.png").astype(int)).sum(axis=2)
    # the legend gains a row too: look at the plot area's lower half only
    cols = np.nonzero(diff[200:340].sum(axis=0))[0]
    assert cols.size and cols.max() - cols.min() <= 3
    # x axis: 0 and 1 at the plot's left and right frame; 0.3 of the way across, within 2 pixels
    frame = np.nonzero((_png(tmp_path / "without.png")[300] < 60).all(axis=1))[0]
    left, right = frame.min(), frame.max()
    assert cols.mean() == pytest.approx(left + 0.3 * (right - left), abs=2)


def test_read_metrics_csv_numbers_blanks_and_text(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,loss,note\n1,0.5,\n2,,x\n")
    rows = figures.read_metrics_csv(str(tmp_path / "metrics.csv"))
    assert [list(r) for r in rows] == [["epoch", "loss", "note"]] * 2
    assert (rows[0]["epoch"], rows[0]["loss"], rows[1]["epoch"], rows[1]["note"]) == (1.0, 0.5, 2.0, "x")
    assert math.isnan(rows[0]["note"]) and math.isnan(rows[1]["loss"])


def test_the_pr_curve_leaves_out_undefined_points(tmp_path):
    """None (JSON null) and NaN points (no positive prediction) are not drawn: the figure equals the one
    drawn from the defined points alone."""
    full = {"pxap": 50.0, "pxap_curve": {"recall": [None, 0.0, 0.5, 1.0], "precision": [1.0, math.nan, 0.8, 0.6]}}
    defined = {"pxap": 50.0, "pxap_curve": {"recall": [0.5, 1.0], "precision": [0.8, 0.6]}}
    figures.pxap_figure(full, str(tmp_path / "full.png"))
    figures.pxap_figure(defined, str(tmp_path / "defined.png"))
    np.testing.assert_array_equal(_png(tmp_path / "full.png"), _png(tmp_path / "defined.png"))
    assert _png(tmp_path / "full.png").shape == (400, 450, 3)


def test_training_figure_draws_the_loss_and_val_columns_only(tmp_path):
    rows = [{"epoch": e, "loss": 2.0 / e, "loss_cls": 1.5 / e, "val_maxboxacc_v2": 10.0 * e, "val_top1_cls": 9.0 * e}
            for e in (1, 2, 3)]
    figures.training_figure(rows, str(tmp_path / "a.png"))
    figures.training_figure([{**r, "lr": 0.1, "diag_fg_mask_area": 0.3} for r in rows], str(tmp_path / "b.png"))
    np.testing.assert_array_equal(_png(tmp_path / "a.png"), _png(tmp_path / "b.png"))
    assert _png(tmp_path / "a.png").shape == (360, 900, 3)
    # a loss term drawn changes the picture
    figures.training_figure([{**r, "loss_ca": 0.1 * r["epoch"]} for r in rows], str(tmp_path / "c.png"))
    assert (_png(tmp_path / "a.png") != _png(tmp_path / "c.png")).any()


def test_plot_run_writes_into_the_output_folder(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "figs"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results(with_pxap=False)))
    written = figures.plot_run(str(run), str(out), quiet=True)
    assert written == [str(out / figures.THRESHOLD_FIGURE)] and os.listdir(run) == ["results.json"]
    assert capsys.readouterr() == ("", "")                                  # quiet
    figures.plot_run(str(run), str(out))
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out / figures.THRESHOLD_FIGURE}\n"
    assert captured.err == f"not drawn: no {run / 'metrics.csv'} (training curves)\n"
