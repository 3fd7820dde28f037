"""python -m wsol_fast.plot RUN

The protocol's figures of a run, as PNGs in its folder (the trainer also writes them at the end of a run):

* `box_acc_vs_threshold.png`: box accuracy against the CAM threshold for each IoU (Choe et al.'s
  figure; the maxima are MaxBoxAcc), the threshold chosen on val marked; from results.json;
* `training_curves.png`: the loss terms, and val MaxBoxAccV2 and top-1 classification, per epoch;
  from metrics.csv;
* `pxap_curve.png`: the pixel precision-recall curve of mask datasets (PxAP is its area), when
  results.json holds one (`pxap_curve`: {"precision": [...], "recall": [...]}).

matplotlib draws off-screen (the Agg canvas, no display needed); files are written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys

from .figures import plot_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.plot", description=__doc__.split("\n\n")[1])
    p.add_argument("run", metavar="RUN", help="a run folder (results.json, metrics.csv)")
    p.add_argument("--output", default=None, help="folder for the PNGs (default: RUN)")
    a = p.parse_args(argv)
    if not os.path.isdir(a.run):
        print(f"error: {a.run}: no such run folder", file=sys.stderr)
        return 2
    return 0 if plot_run(a.run, a.output) else 1


if __name__ == "__main__":
    sys.exit(main())
