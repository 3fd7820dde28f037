"""python -m wsol_fast.compare: the fair comparison's table from hand-made search summaries and final runs,
every number checked against a hand computation (mean, sample std, differences paired by seed)."""
import json
import math
import os

import pytest
from PIL import Image

from wsol_fast import compare, figures

# test MaxBoxAccV2 of the final runs, seeds 0..2
V2 = {"cam": [46.0, 47.0, 48.0], "adl": [40.0, 41.0, 45.0], "icl": [46.5, 47.0, 48.7]}


def _make(out, methods=("cam", "adl", "icl"), seeds=3, skip=None):
    for m in methods:
        os.makedirs(out / f"tune-{m}")
        best = {"budget": 12, "finished": 12, "failed": 1 if m == "icl" else 0, "sampler": "random",
                "objective": "auto", "best": {"number": 3, "val": 47.4444, "params": {"lr": 0.0723}},
                "train_args": ["--method", m]}
        (out / f"tune-{m}" / "best.json").write_text(json.dumps(best))
        for s in range(seeds):
            if (m, s) == skip:
                continue
            folder = out / "final" / m / f"seed{s}"
            os.makedirs(folder)
            v2 = V2[m][s]
            results = {"maxboxacc": {"30": 90.0, "50": v2, "70": 3.0}, "maxboxacc_v2": v2, "top1_cls": 90.0 + s,
                       "top1_loc": 40.0, "gt_known_loc": 41.0, "box_coverage": 70.0, "part_coverage": 85.0 + s,
                       "rest_coverage": 60.0, "box_precision": 61.0, "peak_on_part": 30.0, "part_area_share": 21.0}
            (folder / "results.json").write_text(json.dumps(results))
            (folder / "metrics.csv").write_text("epoch,val_maxboxacc_v2\n6,47.0\n")
            (folder / "config.json").write_text(json.dumps({"model": {"backbone": "inceptionv3", "method": m},
                                                            "data": {"dataset": "builtin-parts"}}))


def _std(v):
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def test_the_table_and_the_paired_verdicts_match_a_hand_computation(tmp_path):
    _make(tmp_path)
    assert compare.main([str(tmp_path)]) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert md.startswith("inceptionv3 on builtin-parts: each method tuned with 12 trials (random search")
    assert "| ICL | 12 of 12 | 1 | 47.44 | lr=0.0723 |" in md
    # means ± sample std of test MaxBoxAccV2: CAM 47.0 ± 1.0, ADL 42.0 ± 2.6, ICL 47.4 ± 1.2
    # @50 is the run's V2 here too; the last column is CAM - ICL paired
    assert "| CAM | 90.0 ± 0.0 | 47.0 ± 1.0 | 3.0 ± 0.0 | 47.0 ± 1.0 | 91.0 ± 1.0 | 47.0 ± 0.0 | -0.4 ± 0.4 |" \
        in md
    assert f"{sum(V2['adl']) / 3:.1f} ± {_std(V2['adl']):.1f}" == "42.0 ± 2.6" and "| 42.0 ± 2.6 |" in md
    # ICL - CAM per seed: 0.5, 0.0, 0.7 -> mean 0.40, std 0.36: larger than its spread
    d = [i - c for i, c in zip(V2["icl"], V2["cam"])]
    assert (round(sum(d) / 3, 2), round(_std(d), 2)) == (0.4, 0.36)
    assert "- ICL − CAM: +0.40 ± 0.36 test MaxBoxAccV2 points, mean ± std of the per-seed differences over 3 " \
           "seed(s); larger than its spread (ICL above CAM on 2 of 3 seeds)." in md
    # ICL - ADL per seed: 6.5, 6.0, 3.7 -> mean 5.40, std 1.49
    assert "- ICL − ADL: +5.40 ± 1.49 test MaxBoxAccV2 points, mean ± std of the per-seed differences over 3 " \
           "seed(s); larger than its spread (ICL above ADL on 3 of 3 seeds)." in md
    assert "| method | object covered | head covered |" in md   # builtin-parts: where the boxes lie
    assert md.endswith("\n![test MaxBoxAccV2 per seed](comparison.png)\n")
    # the figure: one line per seed through CAM, ADL, ICL, drawn on a PNG of the figure's size
    with Image.open(tmp_path / "comparison.png") as im:
        assert im.format == "PNG" and im.size == (550, 380)
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert figures.seed_lines(data["table"], ["cam", "adl", "icl"], "maxboxacc_v2") == \
        [[V2["cam"][s], V2["adl"][s], V2["icl"][s]] for s in range(3)]
    assert data["table"]["cam"]["maxboxacc_v2"]["values"] == V2["cam"]
    assert data["table"]["cam"]["maxboxacc_v2"]["diff_to_icl"] == pytest.approx(-0.4)


def test_a_difference_within_the_spread_is_said_to_be_no_result(tmp_path):
    V = {"cam": [46.0, 48.0, 47.0], "icl": [47.0, 46.0, 48.0]}   # differences 1, -2, 1: mean 0, std 1.73
    cell = {"values": V["cam"], "diffs_to_icl": [-1.0, 2.0, -1.0], "diff_to_icl": 0.0,
            "diff_to_icl_std": _std([1.0, -2.0, 1.0])}
    lines = compare.verdicts({"cam": {"maxboxacc_v2": cell}, "icl": {"maxboxacc_v2": {"values": V["icl"]}}},
                             ("cam", "icl"))
    assert lines == ["- ICL − CAM: +0.00 ± 1.73 test MaxBoxAccV2 points, mean ± std of the per-seed differences "
                     "over 3 seed(s); smaller than its spread: not a result (ICL above CAM on 2 of 3 seeds)."]


def test_a_missing_final_run_is_one_error_naming_its_file(tmp_path, capsys):
    _make(tmp_path, skip=("adl", 2))
    assert compare.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path}/final/adl/seed2/results.json: missing (has scripts/fair_comparison.sh " \
                  "finished this piece?)"
    assert not (tmp_path / "comparison.md").exists() and not (tmp_path / "comparison.png").exists()


def test_a_final_run_without_metrics_csv_or_a_number_is_one_error_naming_it(tmp_path, capsys):
    _make(tmp_path)
    os.remove(tmp_path / "final" / "cam" / "seed1" / "metrics.csv")
    assert compare.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}/final/cam/seed1/metrics.csv: missing (has " \
                                              "scripts/fair_comparison.sh finished this piece?)"
    _make(tmp_path / "b")
    results = tmp_path / "b" / "final" / "icl" / "seed0" / "results.json"
    r = json.loads(results.read_text())
    del r["top1_cls"]
    results.write_text(json.dumps(r))
    assert compare.main([str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}/b/final/icl/seed0: results.json or " \
                                              "metrics.csv lacks a number of a finished run (KeyError: 'top1_cls')"
    results.write_text("{not json")
    assert compare.main([str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {results}: not valid JSON (")
    assert not (tmp_path / "b" / "comparison.md").exists()


def test_the_committed_comparison_is_what_its_committed_runs_give(tmp_path):
    """docs/tune-results' comparison.md and README's table, recomputed from the committed runs' files."""
    root = os.path.join(os.path.dirname(__file__), "..")
    runs = os.path.join(root, "docs", "tune-results", "fair-inceptionv3-builtin-parts")
    for m in compare.METHODS:
        os.makedirs(tmp_path / f"tune-{m}")
        with open(os.path.join(runs, m, "best.json")) as fh:
            (tmp_path / f"tune-{m}" / "best.json").write_text(fh.read())
    os.symlink(os.path.join(runs, "final"), tmp_path / "final")
    text = compare.write(str(tmp_path), 3)
    with open(os.path.join(runs, "comparison.md")) as fh:
        assert text == fh.read()
    table = json.loads((tmp_path / "comparison.json").read_text())["table"]
    cells = [f"{table[m]['maxboxacc_v2']['mean']:.1f} ± {table[m]['maxboxacc_v2']['std']:.1f}"
             for m in compare.METHODS]
    diffs = [f"{-table[m]['maxboxacc_v2']['diff_to_icl']:+.1f} ± {table[m]['maxboxacc_v2']['diff_to_icl_std']:.1f}"
             .replace("-", "−") for m in ("cam", "adl")]
    with open(os.path.join(root, "README.md")) as fh:
        readme = fh.read()
    assert f"| test MaxBoxAccV2, 3 seeds | {' | '.join(cells)} |" in readme
    assert f"| ICL − method, paired by seed | {' | '.join(diffs)} | — |" in readme
