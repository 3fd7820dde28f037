"""python -m wsol_fast.predict --checkpoint RUN/best.pt PATH [PATH ...]

Localize objects in your own images with a trained checkpoint: per image the top-k classes with their
probabilities and the box(es) of each at the CAM threshold chosen on val (stored in the checkpoint;
`--threshold` overrides it). Writes OUTPUT/predictions.jsonl (one JSON object per image, boxes in the
original image's pixels), OUTPUT/overlays/<id>.png (heatmap, box, class name and probability) and, with
`--save-scoremaps DIR`, DIR/<id>.npy (the 224 x 224 min-max normalised score map of the top-1 class,
float32, the layout wsolevaluation writes: <image id>.npy).

PATHs are image files, folders (searched recursively for .jpg/.jpeg/.png) or glob patterns. An image
<id> is its path relative to the deepest folder holding all inputs.

Images go through the evaluation's path exactly: the data pipeline's decoder (`read_image_rgb`: any size,
grayscale, RGBA, CMYK), its eval resize to the checkpoint's crop size and ImageNet normalisation, the
model's class maps without the attention blocks, then `cam.to_scoremap` (bicubic resize to 224 x 224,
min-max normalisation) and `metrics.boxes_at_threshold` (one box per contour, as MaxBoxAccV2 scores
them). Boxes are mapped back with `metrics.rescale_boxes`, the protocol's box scaling, from 224 x 224 to
the image's size. An unreadable image is skipped, named and counted; every file is written atomically.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import cv2
import numpy as np
import torch

from . import build, cam, checkpoint, errors, files, flags, metrics, runtime
from .data import opencv
from .data.images import BadImageError, read_image_rgb
from .data.transforms import eval_resize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class PredictError(errors.WsolError, ValueError):
    """A bad input of predict (a path, --class-names, --threshold); the message names it."""


# ------------------------------------------------------------------------------------- inputs

def expand_inputs(paths) -> list[str]:
    """Image files of PATH arguments, in order, without duplicates: files as given, folders walked
    recursively (sorted), globs expanded (recursive `**` allowed). An argument that names nothing, or a
    folder or glob without a JPEG/PNG, is an error naming it."""
    out, seen = [], set()

    def add(path):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)

    def walk(folder):
        found = []
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
        return found

    for arg in paths:
        if os.path.isfile(arg):
            found = [arg]
        elif os.path.isdir(arg):
            found = walk(arg)
        elif glob.has_magic(arg):
            found = []
            for match in sorted(glob.glob(arg, recursive=True)):
                if os.path.isdir(match):
                    found += walk(match)
                elif match.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(match)
        else:
            raise PredictError(f"{arg}: no such file or folder")
        if not found:
            raise PredictError(f"{arg}: no .jpg/.jpeg/.png image found")
        for path in found:
            add(path)
    return out


def image_ids(paths) -> list[str]:
    """Each path relative to the deepest folder holding all of them ('/'-separated)."""
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.relpath(p, common).replace(os.sep, "/") for p in absolute]


def read_class_names(path: str, num_classes: int) -> list[str]:
    """One name per line (label k on line k + 1), or CUB's classes.txt (`<id> <name>`, ids from 1; the
    'NNN.' numbering of CUB names is dropped). Blank lines are ignored."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [(n, line.strip()) for n, line in enumerate(fh, 1) if line.strip()]
    except OSError as exc:
        raise PredictError(f"--class-names {path}: cannot read it: {exc.strerror or exc}") from None
    numbered = [re.match(r"^(\d+)\s+(\S.*)$", text) for _, text in lines]
    if lines and all(numbered):
        ids = [int(m.group(1)) for m in numbered]
        if sorted(ids) != list(range(min(ids), min(ids) + len(ids))):
            raise PredictError(f"--class-names {path}: the ids of an 'id name' file must be consecutive "
                               f"and distinct, got {sorted(ids)[:5]}...")
        names = [re.sub(r"^\d+\.", "", m.group(2)) for _, m in sorted(zip(ids, numbered))]
    else:
        names = [text for _, text in lines]
    if len(names) != num_classes:
        raise PredictError(f"--class-names {path}: {len(names)} names for a model of {num_classes} classes")
    return names


# ------------------------------------------------------------------------------------- model input

class _Images(torch.utils.data.Dataset):
    """k -> (k, uint8 size x size x 3 RGB or None, (width, height), error message or None)."""

    def __init__(self, paths, size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k):
        try:
            image = read_image_rgb(self.paths[k])
        except BadImageError as exc:
            return k, None, None, str(exc)
        h, w = image.shape[:2]
        return k, eval_resize(image, self.size), (w, h), None


def _collate(items):
    good = [it for it in items if it[1] is not None]
    batch = torch.from_numpy(np.stack([it[1] for it in good])) if good else None
    return batch, [it[0] for it in good], [it[2] for it in good], [(it[0], it[3]) for it in items if it[1] is None]


# ------------------------------------------------------------------------------------- outputs

def _atomic_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    files.atomic_write(data, path, fsync=False)   # one per image: no sync each


def save_scoremap(path: str, scoremap: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, scoremap.astype(np.float32))
    _atomic_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------- the command

def load_model(path: str, device):
    """(model in eval mode on device, checkpoint state, resolved TrainConfig)."""
    from .config import TrainConfig, resolve

    state = checkpoint.load_checkpoint(path)
    cfg = resolve(TrainConfig.from_dict(state["config"]), device.type)
    model = build.build_model(cfg, state["num_classes"], device, state, path).eval()
    return model, state, cfg


def checkpoint_threshold(state: dict, checkpoint: str) -> float:
    """The CAM threshold chosen on val for the checkpoint's epoch: best["threshold"] for best.pt, the
    epoch's `val_threshold` in the history for a last.pt of a later epoch."""
    best = state.get("best") or {}
    if best.get("epoch") == state.get("epoch") and best.get("threshold") is not None:
        return float(best["threshold"])
    for row in state.get("history") or []:
        if row.get("epoch") == state.get("epoch") and row.get("val_threshold") is not None:
            return float(row["val_threshold"])
    raise PredictError(f"{checkpoint} holds no CAM threshold chosen on val for its epoch "
                       f"({state.get('epoch')}); give --threshold")


def predict(a) -> int:
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = expand_inputs(a.paths)
    model, state, cfg = load_model(a.checkpoint, device)
    threshold = a.threshold if a.threshold is not None else checkpoint_threshold(state, a.checkpoint)
    if not 0 <= threshold < 1:
        raise PredictError(f"--threshold must lie in [0, 1), got {threshold}")
    num_classes = state["num_classes"]
    names = read_class_names(a.class_names, num_classes) if a.class_names else [str(k) for k in range(num_classes)]
    top_k = min(a.top_k, num_classes)   # --top-k >= 1 (parsed); a larger k reports every class
    ids = image_ids(paths)
    autocast = runtime.autocast_context(device, runtime.resolve_amp(cfg.runtime.amp, device))
    loader = torch.utils.data.DataLoader(_Images(paths, cfg.data.crop_size), batch_size=a.batch_size,
                                         num_workers=a.workers, collate_fn=_collate,
                                         worker_init_fn=opencv.worker_init if a.workers else None)
    os.makedirs(a.output, exist_ok=True)
    jsonl = os.path.join(a.output, "predictions.jsonl")
    skipped, done = [], 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True, file=sys.stderr)
    try:
        with files.atomic_open(jsonl, "w") as out:   # predictions.jsonl appears whole, or not at all
            if a.workers:   # workers forked with OpenCV at one thread (see opencv.cv2_single_threaded)
                with opencv.cv2_single_threaded():
                    batches = iter(loader)
            else:
                batches = iter(loader)
            for batch, index, sizes, bad in batches:
                for k, message in bad:
                    skipped.append(paths[k])
                    bar.write(f"skipped unreadable image {paths[k]}: {message}", file=sys.stderr)
                if batch is not None:
                    x = cam.normalise(batch, device, bool(cfg.runtime.channels_last))
                    probs, classes, maps = cam.class_scoremaps(model, x, autocast, top_k)
                    for i, k in enumerate(index):
                        record = _record(paths[k], ids[k], sizes[i], probs[i], classes[i], maps[i], names,
                                         threshold)
                        if a.save_scoremaps:
                            record["scoremap"] = os.path.join(a.save_scoremaps, ids[k] + ".npy")
                            save_scoremap(record["scoremap"], maps[i][0])
                        if not a.no_overlays:
                            record["overlay"] = os.path.join(a.output, "overlays", ids[k] + ".png")
                            _write_overlay(record, maps[i][0])
                        out.write(json.dumps(record) + "\n")
                        done += 1
                bar.update(len(index) + len(bad))
    finally:
        bar.close()
    print(f"{done} image(s) predicted, {len(skipped)} skipped (unreadable) -> {jsonl}"
          + ("" if a.no_overlays else f", overlays in {os.path.join(a.output, 'overlays')}"))
    return 0 if done else 1


def _record(path, image_id, size, probs, classes, maps, names, threshold) -> dict:
    w, h = size
    top = []
    for j in range(len(classes)):
        boxes = metrics.rescale_boxes(metrics.boxes_at_threshold(maps[j], threshold), cam.CAM_SIZE, (w, h))
        c = int(classes[j])
        top.append({"class": c, "name": names[c], "prob": float(probs[j]), "boxes": boxes.tolist()})
    first = top[0]
    return {"path": path, "id": image_id, "width": w, "height": h, "threshold": threshold,
            "class": first["class"], "name": first["name"], "prob": first["prob"], "boxes": first["boxes"],
            "top_k": top}


def _write_overlay(record: dict, scoremap: np.ndarray) -> None:
    image = read_image_rgb(record["path"])
    canvas = cam.overlay(image, scoremap, record["boxes"], f"{record['name']} {record['prob']:.2f}")
    ok, png = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError(f"could not encode the overlay of {record['path']}")
    _atomic_bytes(record["overlay"], png.tobytes())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.predict", description=__doc__.split("\n\n")[1],
                                formatter_class=flags.DefaultsHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--checkpoint", required=True, help="a best.pt (or last.pt) written by wsol_fast.train")
    p.add_argument("--output", default="predictions", help="folder for predictions.jsonl and overlays/")
    p.add_argument("--threshold", type=float, default=None,
                   help="CAM threshold in [0, 1) (default: the one chosen on val, stored in the checkpoint)")
    p.add_argument("--top-k", type=flags.positive_int, default=5,
                   help="classes reported per image (>= 1; at most the model's class count), each with its boxes")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="one class name per line, or CUB's classes.txt ('id name'); default: the label index")
    p.add_argument("--save-scoremaps", default=None, metavar="DIR",
                   help="write each image's top-1 score map to DIR/<id>.npy (224 x 224 float32, min-max "
                        "normalised)")
    p.add_argument("--no-overlays", action="store_true", help="no overlay PNGs")
    p.add_argument("--batch-size", type=flags.positive_int, default=32)
    p.add_argument("--workers", type=flags.nonneg_int, default=min(4, os.cpu_count() or 1),
                   help="image decoding processes (0: decode in this process)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    a = p.parse_args(argv)
    return errors.run_command(lambda: predict(a), a.debug)


if __name__ == "__main__":
    sys.exit(main())
