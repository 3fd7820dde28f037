"""wsol_fast.runlog: metrics.csv, the telemetry summary, and the data issues a run reports."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from wsol_fast import runlog


def test_metrics_csv_keeps_late_columns(tmp_path):
    runlog.write_metrics_csv([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0, "diag_b0_fg": 0.5}], str(tmp_path))
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"epoch": "1", "loss": "2.0", "diag_b0_fg": ""}, {"epoch": "2", "loss": "1.0", "diag_b0_fg": "0.5"}]


def test_summary_is_time_weighted():
    history = [dict(steps=10, epoch_time_s=1.0, images_per_s=100.0, data_wait_frac=0.0, peak_mem_mb=5.0),
               dict(steps=10, epoch_time_s=3.0, images_per_s=20.0, data_wait_frac=0.4, peak_mem_mb=7.0)]
    s = runlog.summary(history, train_seconds=4.0, compile_seconds=0.5)
    assert s["images_per_s"] == pytest.approx(40.0) and s["step_time_s"] == pytest.approx(0.2)
    assert s["data_wait_frac"] == pytest.approx(0.3) and s["peak_mem_mb"] == 7.0
    assert runlog.summary([], 1.0, 0.0)["images_per_s"] == 0.0


def test_data_issues_lists_skipped_images_once(tmp_path, capsys):
    issues = runlog.DataIssues(str(tmp_path), ["a.jpg"], enabled=True)
    loader = SimpleNamespace(skipped={"b.jpg": "truncated"}, size_mismatches={"c.jpg": ((5, 6), (7, 8))})
    issues.record([loader])
    assert (tmp_path / "skipped_images.txt").read_text() == "a.jpg\nb.jpg\n"
    err = capsys.readouterr().err
    assert "skipped 1 image(s) that passed the pre-scan" in err and "c.jpg: 5x6, listed as 7x8" in err
    issues.record([loader])                                  # nothing new: nothing said
    assert capsys.readouterr().err == ""
