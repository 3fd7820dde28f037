"""What a training run reports besides its checkpoints: metrics.csv (one row per epoch), the telemetry
summary of results.json, the progress bar, and the images the loaders skipped or found mis-sized."""
from __future__ import annotations

import csv
import os
import sys

from .files import atomic_open, atomic_write


def write_metrics_csv(history: list[dict], out: str) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))   # diag_* appear after a warm-up
    with atomic_open(os.path.join(out, "metrics.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(history)


def summary(history: list[dict], train_seconds: float, compile_seconds: float) -> dict:
    """Throughput, step time, data wait and peak memory over the epochs of `history` (time-weighted)."""
    if not history:
        return {"images_per_s": 0.0, "step_time_s": 0.0, "data_wait_frac": 0.0, "peak_mem_mb": 0.0,
                "train_seconds": train_seconds, "compile_seconds": compile_seconds}
    steps = sum(h["steps"] for h in history)
    t = sum(h["epoch_time_s"] for h in history)
    return {"images_per_s": sum(h["images_per_s"] * h["epoch_time_s"] for h in history) / max(t, 1e-9),
            "step_time_s": t / max(steps, 1),
            "data_wait_frac": sum(h["data_wait_frac"] * h["epoch_time_s"] for h in history) / max(t, 1e-9),
            "peak_mem_mb": max(h["peak_mem_mb"] for h in history),
            "train_seconds": train_seconds, "compile_seconds": compile_seconds}


def progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False,
                file=sys.stderr)


class DataIssues:
    """RUN/skipped_images.txt (ids left out: by the pre-scan, or failing to decode during the run) and a
    warning for images whose decoded size differs from image_sizes.txt, each time their counts grow."""

    def __init__(self, out: str, bad_images: list[str], enabled: bool):
        self.out, self.bad_images, self.enabled = out, bad_images, enabled
        self.seen = (0, 0)   # (skipped, size mismatches) already reported

    def record(self, loaders) -> None:
        if not self.enabled:
            return
        skipped = dict.fromkeys(self.bad_images, "failed the pre-scan")
        mismatched: dict = {}
        for loader in loaders:
            skipped.update(getattr(loader, "skipped", None) or {})
            mismatched.update(getattr(loader, "size_mismatches", None) or {})
        seen_skipped, seen_mismatched = self.seen
        if len(skipped) > seen_skipped:
            path = os.path.join(self.out, "skipped_images.txt")
            atomic_write("".join(f"{i}\n" for i in skipped), path)
            late = len(skipped) - max(seen_skipped, len(self.bad_images))
            if late > 0:
                why = next(reversed(skipped.values()))
                print(f"warning: skipped {late} image(s) that passed the pre-scan but did not decode "
                      f"(--skip-bad-images; {len(skipped)} skipped in all, listed in {path}): {why}",
                      file=sys.stderr)
        if len(mismatched) > seen_mismatched:
            image_id, (got, want) = next(iter(mismatched.items()))
            print(f"warning: {len(mismatched)} image(s) decode to a size other than image_sizes.txt's (e.g. "
                  f"{image_id}: {got[0]}x{got[1]}, listed as {want[0]}x{want[1]}); their boxes are rescaled "
                  f"from image_sizes.txt. `python -m wsol_fast.data check` lists them all", file=sys.stderr)
        self.seen = (len(skipped), len(mismatched))
