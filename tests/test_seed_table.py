"""seed_table: one run's numbers from its files, mean and sample std over seeds, differences to ICL paired by
seed, and the markdown table, against hand-computed values."""
import json

import pytest

from wsol_fast import seed_table


def test_row_numbers_reads_test_results_and_the_last_val_row(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({
        "maxboxacc": {"30": 90.0, "50": 45.0, "70": 3.0}, "maxboxacc_v2": 46.0, "top1_cls": 98.0,
        "top1_loc": 38.0, "gt_known_loc": 39.0, "part_coverage": 86.5, "part_area_share": 21.0}))
    (tmp_path / "metrics.csv").write_text("epoch,val_maxboxacc_v2\n1,40.0\n2,47.5\n")
    assert seed_table.row_numbers(str(tmp_path)) == {
        "maxboxacc_30": 90.0, "maxboxacc_50": 45.0, "maxboxacc_70": 3.0, "maxboxacc_v2": 46.0, "top1_cls": 98.0,
        "top1_loc": 38.0, "gt_known_loc": 39.0, "val_maxboxacc_v2": 47.5, "part_coverage": 86.5,
        "part_area_share": 21.0}


def test_mean_and_sample_std():
    assert seed_table.mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, 7.0 ** 0.5))   # squares 4+1+9 over 2
    assert seed_table.mean_std([5.0]) == (5.0, 0.0)


def test_summarise_pairs_the_differences_to_icl_by_seed():
    per_seed = {"cam": [{"maxboxacc_v2": 40.0}, {"maxboxacc_v2": 44.0}],
                "icl": [{"maxboxacc_v2": 41.0}, {"maxboxacc_v2": 47.0}]}
    t = seed_table.summarise(per_seed, ["cam", "icl"])
    assert t["cam"]["maxboxacc_v2"]["mean"] == 42.0 and t["icl"]["maxboxacc_v2"]["mean"] == 44.0
    # per seed: -1, -3 -> mean -2, std sqrt(2); unpaired the stds would be 2.83 and 4.24
    assert t["cam"]["maxboxacc_v2"]["diffs_to_icl"] == [-1.0, -3.0]
    assert t["cam"]["maxboxacc_v2"]["diff_to_icl"] == -2.0
    assert t["cam"]["maxboxacc_v2"]["diff_to_icl_std"] == pytest.approx(2 ** 0.5)
    assert t["icl"]["maxboxacc_v2"]["diff_to_icl"] == 0.0


def test_render_table_labels_rows_and_adds_the_part_table_when_every_row_has_it():
    row = {k: 1.0 for k, _ in seed_table.METRICS}
    parts = {k: 2.0 for k, _ in seed_table.PART_METRICS}
    per_seed = {"cam": [dict(row, **parts)], "icl": [dict(row, **parts)]}
    text = seed_table.render_table(seed_table.summarise(per_seed, ["cam", "icl"]), ["cam", "icl"], 1,
                                   {"cam": "CAM", "icl": "ICL"})
    assert "| CAM | 1.0 ± 0.0 | 1.0 ± 0.0 | 1.0 ± 0.0 | 1.0 ± 0.0 | 1.0 ± 0.0 | 1.0 ± 0.0 | +0.0 ± 0.0 |" in text
    assert "| ICL | 1.0 ± 0.0 |" in text and text.count("| ICL |") == 2   # the main and the part table
    assert "| method | object covered | head covered | rest covered |" in text
    per_seed = {"cam": [row], "icl": [row]}   # no part numbers (a dataset without parts): no part table
    text = seed_table.render_table(seed_table.summarise(per_seed, ["cam", "icl"]), ["cam", "icl"], 1,
                                   {"cam": "CAM", "icl": "ICL"})
    assert "head covered" not in text
