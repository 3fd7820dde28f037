"""The protocol's figures of a run, drawn from its results.json and metrics.csv (`python -m wsol_fast.plot`
and the trainer's end of run write them; plot.py lists them). matplotlib draws off-screen (the Agg canvas,
no display needed); files are written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys

from .files import atomic_write

THRESHOLD_FIGURE = "box_acc_vs_threshold.png"
TRAINING_FIGURE = "training_curves.png"
PXAP_FIGURE = "pxap_curve.png"
LOSS_TERMS = ("loss", "loss_cls", "loss_ca", "loss_fc")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(buf.getvalue(), path)
    return path


def threshold_figure(results: dict, path: str, title: str = "") -> str:
    """Box accuracy (%) against CAM threshold, one line per IoU, the chosen threshold as a dashed line."""
    thresholds = results["cam_thresholds"]
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for iou, curve in sorted(results["box_acc_curve"].items(), key=lambda kv: int(kv[0])):
        best = max(range(len(curve)), key=curve.__getitem__)
        line, = ax.plot(thresholds, curve, label=f"IoU {int(iou) / 100:.1f}: MaxBoxAcc {curve[best]:.1f}")
        ax.plot([thresholds[best]], [curve[best]], "o", color=line.get_color(), markersize=4)
    chosen = results.get("loc_threshold")
    if chosen is not None:
        ax.axvline(chosen, color="k", linestyle="--", linewidth=1, label=f"chosen on val: {chosen:.3g}")
    ax.set_xlabel("CAM threshold")
    ax.set_ylabel("box accuracy (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    v2 = results.get("maxboxacc_v2")
    ax.set_title(title or f"{results.get('num_images', '?')} images"
                 + (f", MaxBoxAccV2 {v2:.1f}" if v2 is not None else ""), fontsize=10)
    return _save(fig, path)


def read_metrics_csv(path: str) -> list[dict]:
    """metrics.csv rows with every numeric cell as float (empty cells as NaN)."""
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    with open(path, newline="") as fh:
        return [{k: num(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(fh)]


def training_figure(rows: list[dict], path: str) -> str:
    """Loss terms (left) and val MaxBoxAccV2 / top-1 classification (right) per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig = _figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    marker = "o" if len(rows) < 30 else None
    for key in LOSS_TERMS:
        if key in rows[0]:
            left.plot(epochs, [r[key] for r in rows], marker=marker, markersize=3,
                      label={"loss": "total"}.get(key, key.replace("loss_", "L_")))
    left.set_xlabel("epoch")
    left.set_ylabel("mean training loss")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for key, label in (("val_maxboxacc_v2", "val MaxBoxAccV2"), ("val_top1_cls", "val top-1 classification")):
        if key in rows[0]:
            right.plot(epochs, [r[key] for r in rows], marker=marker, markersize=3, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def pxap_figure(results: dict, path: str) -> str:
    """Pixel precision against recall; NaN points (no positive prediction) are left out."""
    curve = results["pxap_curve"]
    points = [(r, p) for r, p in zip(curve["recall"], curve["precision"])
              if r is not None and p is not None and not (math.isnan(r) or math.isnan(p))]
    fig = _figure(4.5, 4.0)
    ax = fig.subplots()
    ax.plot([r for r, _ in points], [p for _, p in points])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    pxap = results.get("pxap")
    ax.set_title("pixel precision-recall" + (f", PxAP {pxap:.1f}" if isinstance(pxap, (int, float)) else ""),
                 fontsize=10)
    return _save(fig, path)


def seed_lines(table: dict, rows: list[str], metric: str) -> list[list[float]]:
    """One line per seed through the rows' values of `metric` (seed_table.summarise's table): a seed's rows
    share its warm-up, so the lines show the paired differences that the rows' means hide."""
    seeds = len(table[rows[0]][metric]["values"])
    return [[table[row][metric]["values"][s] for row in rows] for s in range(seeds)]


def seeds_figure(table: dict, rows: list[str], labels: dict, path: str, metric: str = "maxboxacc_v2",
                 ylabel: str = "test MaxBoxAccV2 (%)", title: str = "") -> str:
    """Each row's per-seed values joined seed by seed (thin lines), and its mean ± std (black bars)."""
    lines = seed_lines(table, rows, metric)
    xs = list(range(len(rows)))
    fig = _figure(1.6 + 1.3 * len(rows), 3.8)
    ax = fig.subplots()
    for s, ys in enumerate(lines):
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1, alpha=0.8, label=f"seed {s}")
    means = [table[row][metric]["mean"] for row in rows]
    stds = [table[row][metric]["std"] for row in rows]
    ax.errorbar([x + 0.12 for x in xs], means, yerr=stds, fmt="s", color="k", markersize=5, capsize=4,
                label="mean ± std")
    ax.set_xticks(xs, [labels[row] for row in rows])
    ax.set_xlim(-0.4, len(rows) - 0.6)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_run(run_dir: str, out_dir: str | None = None, quiet: bool = False) -> list[str]:
    """Every figure the run's files allow; returns the paths written. Missing inputs are reported."""
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    written, missing = [], []
    results_path = os.path.join(run_dir, "results.json")
    results = None
    if os.path.isfile(results_path):
        with open(results_path) as fh:
            results = json.load(fh)
    if results and "box_acc_curve" in results and "cam_thresholds" in results:
        written.append(threshold_figure(results, os.path.join(out_dir, THRESHOLD_FIGURE)))
    else:
        missing.append(f"{results_path} with per-threshold curves (box accuracy vs threshold)")
    if results and results.get("pxap_curve"):
        written.append(pxap_figure(results, os.path.join(out_dir, PXAP_FIGURE)))
    metrics_path = os.path.join(run_dir, "metrics.csv")
    rows = read_metrics_csv(metrics_path) if os.path.isfile(metrics_path) else []
    if rows:
        written.append(training_figure(rows, os.path.join(out_dir, TRAINING_FIGURE)))
    else:
        missing.append(f"{metrics_path} (training curves)")
    if not quiet:
        for path in written:
            print(f"wrote {path}")
        for what in missing:
            print(f"not drawn: no {what}", file=sys.stderr)
    return written


