"""python -m wsol_fast.evaluate --checkpoint RUN/best.pt [--split test] [--save-scoremaps DIR]
python -m wsol_fast.evaluate --scoremap-root DIR --metadata-root M --dataset D --split test [--workers N]

The exact wsolevaluation protocol (docs/spec.md §4) on any saved checkpoint: top-1 classification, top-1
localization (at the CAM threshold chosen on val), GT-known localization, MaxBoxAcc per IoU and
MaxBoxAccV2 on box datasets, PxAP on mask datasets (OpenImages), with a centre-prior baseline scored
by the same protocol; a table, results.json and CAM overlay PNGs. The scoring itself is evaluation.py
(`evaluate_model`, also what the trainer calls every epoch). With `--scoremap-root` it scores any method's
saved score maps instead, with no model (wsol_fast/scoremaps.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import build, checkpoint, errors, files, flags, metrics, runtime, scoremaps
from .evaluation import evaluate_model, jsonable, localization_score, print_table, write_outputs


# ------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a last.pt or best.pt written by wsol_fast.train")
    p.add_argument("--scoremap-root", default=None,
                   help="score saved maps instead of a checkpoint: DIR/<image_id>.npy, 224 x 224 in [0, 1], as "
                        "wsolevaluation saves them (needs --metadata-root and --dataset)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--output", default=None, help="folder for results and overlays (default: the checkpoint's; "
                                                  "with --scoremap-root, results.json only when given)")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--metadata-root", default=None, help="metadata at METADATA_ROOT/DATASET/<split>/")
    p.add_argument("--dataset", default=None, help="with --scoremap-root: CUB, ILSVRC, OpenImages or any "
                                                   "dataset folder under the metadata root")
    p.add_argument("--mask-root", default=None, help="masks at MASK_ROOT/DATASET/<mask_path> (OpenImages; "
                                                     "default: the data root)")
    p.add_argument("--cam-curve-interval", type=flags.open_interval, default=None,
                   help="default: the checkpoint's; 0.01 with --scoremap-root (wsolevaluation's evaluation.py); "
                        "0.001 for the paper protocol")
    p.add_argument("--iou-thresholds", type=int, nargs="+", default=list(metrics.DEFAULT_IOU_THRESHOLDS),
                   help="with --scoremap-root: the IoU thresholds (percent) of MaxBoxAcc")
    p.add_argument("--no-multi-contour", dest="multi_contour", action="store_false",
                   help="with --scoremap-root: only the largest contour's box per threshold (MaxBoxAcc V1; "
                        "wsolevaluation's multi_contour_eval=False). Default: all contours (V2)")
    p.add_argument("--workers", type=flags.positive_int, default=1,
                   help="processes scoring the maps (with --checkpoint: per rank, the box or mask search while "
                        "the rank computes the next CAMs; under torchrun the ranks split the images)")
    p.add_argument("--save-scoremaps", default=None, metavar="DIR",
                   help="with --checkpoint: write every GT-class CAM of the split as DIR/<image_id>.npy "
                        "(224 x 224 float64, min-max normalised, as wsolevaluation writes them)")
    p.add_argument("--device", default=None)
    p.add_argument("--num-overlays", type=flags.nonneg_int, default=16)
    p.add_argument("--max-image-pixels", type=flags.positive_int, default=None,
                   help="refuse images whose header claims more pixels (default 64,000,000)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    a = p.parse_args(argv)
    if (a.checkpoint is None) == (a.scoremap_root is None):
        p.error("give either --checkpoint (score a model) or --scoremap-root (score saved maps)")
    if a.scoremap_root is not None and (a.metadata_root is None or a.dataset is None):
        p.error("--scoremap-root needs --metadata-root and --dataset")
    # Exit codes: 0 done, 2 an expected error (one message naming the file, line or flag).
    return errors.run_command(
        lambda: _evaluate_scoremaps(a) if a.scoremap_root is not None else _evaluate_checkpoint(a), a.debug)


def _evaluate_scoremaps(a) -> int:
    """Any method's saved maps against the split's boxes or masks; no model, no images."""
    from .data.metadata import load_metadata

    meta = load_metadata(a.metadata_root, a.dataset, a.split)
    mask_root = a.mask_root or a.data_root
    if meta.has_masks and mask_root is None:
        raise FileNotFoundError(f"the {a.dataset} {a.split} split is scored against masks: give --mask-root "
                                "(masks are read at MASK_ROOT/<dataset>/<mask_path>)")
    interval = a.cam_curve_interval or 0.01
    results = scoremaps.evaluate_scoremaps(a.scoremap_root, meta, mask_root, interval, a.iou_thresholds,
                                           a.multi_contour, a.workers)
    if a.output:
        os.makedirs(a.output, exist_ok=True)
        files.atomic_write(json.dumps(jsonable(results), indent=2),
                                os.path.join(a.output, "results.json"))
    results["top1_cls"] = None
    contour = "" if a.multi_contour or meta.has_masks else ", largest contour only"
    print_table(results, f"score maps {a.scoremap_root} on {a.dataset} ({a.split} split, interval {interval:g}"
                         f"{contour})")
    if a.output:
        print(f"results written to {os.path.join(a.output, 'results.json')}")
    return 0


def _evaluate_checkpoint(a) -> int:
    from .config import TrainConfig, resolve
    from .data import prepare_data

    state = checkpoint.load_checkpoint(a.checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    cfg.data.num_classes = state["num_classes"]   # a label the model cannot score is an error (file:line)
    if a.max_image_pixels:
        cfg.data.max_image_pixels = a.max_image_pixels
    for key in ("data_root", "metadata_root", "mask_root"):
        if getattr(a, key):
            setattr(cfg.data, key, getattr(a, key))
    if a.cam_curve_interval:
        cfg.runtime.cam_curve_interval = a.cam_curve_interval
    info, device = runtime.init_distributed(a.device)
    resolve(cfg, device.type)
    data = prepare_data(cfg.data, info, device, batch_size=cfg.optim.batch_size, seed=cfg.runtime.seed,
                        channels_last=bool(cfg.runtime.channels_last),
                        splits=("val", "test") if a.split == "test" else ("val",))
    model = build.build_model(cfg, state["num_classes"], device, state, a.checkpoint)
    autocast = runtime.autocast_context(device, runtime.resolve_amp(cfg.runtime.amp, device))
    # The CAM threshold chosen on val at this checkpoint's own epoch (last.pt: the last epoch's; best.pt: the
    # best epoch's); older checkpoints without it store the best epoch's in "best".
    threshold = next((h.get("val_threshold") for h in reversed(state.get("history") or [])
                      if h.get("epoch") == state["epoch"]), None)
    if threshold is None and state["epoch"] == (state.get("best") or {}).get("epoch"):
        threshold = state["best"].get("threshold")
    if threshold is None or cfg.runtime.cam_curve_interval != state["config"]["runtime"]["cam_curve_interval"]:
        # Choose the CAM threshold on val (train-fullsup), as the protocol prescribes.
        val = evaluate_model(model, data.val_loader, data.val_meta, device, autocast, cfg, info, workers=a.workers)
        threshold = localization_score(val)[2]
    loader, meta = (data.test_loader, data.test_meta) if a.split == "test" else (data.val_loader, data.val_meta)
    results = evaluate_model(model, loader, meta, device, autocast, cfg, info, loc_threshold=threshold,
                             with_baseline=True, overlays=a.num_overlays, save_scoremaps=a.save_scoremaps,
                             workers=a.workers)
    data.close()
    if info.is_main:
        out = a.output or os.path.dirname(os.path.abspath(a.checkpoint))
        write_outputs(results, out, data, cfg, name=f"results_{a.split}.json" if a.split != "test" else
                      "results.json")
        print_table(results, f"{cfg.model.backbone} / {cfg.model.method} on {cfg.data.dataset} ({a.split} split)")
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
