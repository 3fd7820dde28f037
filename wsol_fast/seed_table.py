"""Runs summarised over seeds: the numbers of one finished run (results.json on test and the last row of
metrics.csv), mean and sample std over seeds, differences to ICL paired by seed, and their markdown table.
Shared by ablate (Table 2 and the location study) and compare (the fair comparison)."""
from __future__ import annotations

import csv
import json
import math
import os

METRICS = (("maxboxacc_30", "MaxBoxAcc@30"), ("maxboxacc_50", "@50"), ("maxboxacc_70", "@70"),
           ("maxboxacc_v2", "MaxBoxAccV2"), ("top1_cls", "top-1 cls"), ("val_maxboxacc_v2", "val MaxBoxAccV2"))
# builtin-parts only (results.json has them when the metadata has part_boxes.txt): where the val-threshold box
# lies, the CAM failure the paper fixes (a box on the discriminative head that misses the body).
PART_METRICS = (("box_coverage", "object covered"), ("part_coverage", "head covered"),
                ("rest_coverage", "rest covered"), ("box_precision", "box on object"),
                ("peak_on_part", "peak on head"), ("gt_known_loc", "GT-known"))


def row_numbers(folder: str) -> dict:
    with open(os.path.join(folder, "results.json")) as fh:
        r = json.load(fh)
    with open(os.path.join(folder, "metrics.csv")) as fh:
        last = list(csv.DictReader(fh))[-1]
    out = {f"maxboxacc_{k}": float(v) for k, v in r["maxboxacc"].items()}
    out.update(maxboxacc_v2=float(r["maxboxacc_v2"]), top1_cls=float(r["top1_cls"]),
               top1_loc=float(r["top1_loc"]), gt_known_loc=float(r["gt_known_loc"]),
               val_maxboxacc_v2=float(last["val_maxboxacc_v2"]))
    out.update({k: float(r[k]) for k in (*(k for k, _ in PART_METRICS), "part_area_share") if k in r})
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarise(per_seed: dict, rows: list[str]) -> dict:
    """{row: {metric: {"mean", "std", "values", "diffs_to_icl" (row - ICL per seed), "diff_to_icl",
    "diff_to_icl_std"}}} from {row: [numbers per seed]}; the last three only when ICL is a row."""
    table = {}
    for row in rows:
        runs = per_seed[row]
        table[row] = {}
        for key in runs[0]:
            m, s = mean_std([r[key] for r in runs])
            table[row][key] = {"mean": m, "std": s, "values": [r[key] for r in runs]}
    if "icl" in table:
        # Paired over seeds: a seed's rows fork from its own warm-up, so the spread of the per-seed differences
        # is what a row's difference to ICL must exceed (the rows' own spreads also hold the warm-ups').
        for row in rows:
            for key in table[row]:
                diffs = [a - b for a, b in zip(table[row][key]["values"], table["icl"][key]["values"])]
                table[row][key]["diffs_to_icl"] = diffs
                table[row][key]["diff_to_icl"], table[row][key]["diff_to_icl_std"] = mean_std(diffs)
    return table


def render_table(table: dict, rows: list[str], seeds: int, labels: dict) -> str:
    """The markdown table of summarise's output; labels: {row: its name in the table}."""
    head = "| method | " + " | ".join(label for _, label in METRICS) + " | Δ MaxBoxAccV2 vs ICL, paired |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for row in rows:
        cells = [f"{table[row][k]['mean']:.1f} ± {table[row][k]['std']:.1f}" for k, _ in METRICS]
        cell = table[row]["maxboxacc_v2"]
        diff = "—" if "diff_to_icl" not in cell or row == "icl" else \
            f"{round(cell['diff_to_icl'], 1) + 0.0:+.1f} ± {cell['diff_to_icl_std']:.1f}"
        lines.append(f"| {labels[row]} | " + " | ".join(cells) + f" | {diff} |")
    lines.append(f"\nmean ± std over {seeds} seed(s); test split (last epoch, CAM threshold chosen on val) except "
                 "the val column; the last column is the mean ± std of the per-seed differences (each seed's rows "
                 "share its warm-up).")
    part = [(k, label) for k, label in PART_METRICS if all(k in table[row] for row in rows)]
    if any(k == "part_coverage" for k, _ in part):
        lines += ["", "Where the boxes lie (test, % of images' mean; one largest-component box per image at the "
                      "val threshold; the head is about "
                      f"{table[rows[0]].get('part_area_share', {}).get('mean', float('nan')):.0f}% of the GT box):", "",
                  "| method | " + " | ".join(label for _, label in part) + " |", "|" + "---|" * (len(part) + 1)]
        for row in rows:
            lines.append(f"| {labels[row]} | " + " | ".join(
                f"{table[row][k]['mean']:.1f} ± {table[row][k]['std']:.1f}" for k, _ in part) + " |")
    return "\n".join(lines)
