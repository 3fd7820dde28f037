"""Score maps on disk, both ways, in clovaai/wsolevaluation's layout: any WSOL method's maps scored here,
and this project's CAMs saved for any other tool.

    python -m wsol_fast.evaluate --scoremap-root DIR --metadata-root M --dataset {CUB,ILSVRC,OpenImages} \
        --split test [--mask-root R] [--cam-curve-interval 0.001] [--iou-thresholds 30 50 70] \
        [--no-multi-contour] [--workers N]

The layout (wsolevaluation's `CAMComputer` writes it, its `evaluate_wsol` reads it): one map per image at
`DIR/<image_id>.npy` (the image id keeps its extension and subfolders: `val/1/a.jpg` ->
`DIR/val/1/a.jpg.npy`), a 2D array of 224 x 224 (the protocol scores every map at 224 x 224: boxes are
rescaled and masks resized to it), values in [0, 1], no NaN. wsolevaluation writes float64 maps,
min-max normalised; `evaluate_wsol` feeds the loaded map, cast to float64, to its evaluators as is.
Here any real dtype is accepted and cast to float64 (exact), the same as their cast.

Scoring equals `evaluate_wsol` for the same flags: boxes (CUB, ILSVRC, any box dataset) by
`metrics.BoxEvaluator` (MaxBoxAcc per IoU threshold; their `multi_iou_eval` number is our MaxBoxAccV2,
the mean; `--no-multi-contour` is their default `multi_contour_eval=False`, read at IoU 50 for V1),
masks (OpenImages) by `metrics.MaskEvaluator` (PxAP). `--workers N` splits the images over N processes;
each accumulates its own evaluator and the counts are merged exactly (`merge`), so the numbers do not
depend on N.
"""
from __future__ import annotations

import os

import numpy as np

from . import metrics
from .files import atomic_open
from .errors import WsolError

SCOREMAP_SIZE = (224, 224)   # (W, H), as wsolevaluation's _RESIZE_LENGTH


class ScoremapError(WsolError, ValueError):
    """A missing or invalid score map file; the message names the file."""


def scoremap_path(root: str, image_id: str) -> str:
    """`root/<image_id>.npy`, as wsolevaluation's CamDataset and np.save (which appends .npy) name it."""
    return os.path.join(root, image_id + ".npy")


def save_scoremap(root: str, image_id: str, scoremap: np.ndarray) -> str:
    """Write one map (float64, as wsolevaluation saves it) atomically; returns its path."""
    path = scoremap_path(root, image_id)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with atomic_open(path, "wb", fsync=False) as fh:   # one per image: no sync each
        np.save(fh, np.asarray(scoremap, dtype=np.float64))
    return path


def load_scoremap(root: str, image_id: str, size=SCOREMAP_SIZE) -> np.ndarray:
    """The map of one image as float64 [H, W], checked: exists, is a 2D real array of `size` (W, H),
    no NaN, values in [0, 1] (wsolevaluation's check_scoremap_validity). Errors name the file."""
    path = scoremap_path(root, image_id)
    if not os.path.isfile(path):
        raise ScoremapError(f"{path}: score map not found (image {image_id!r}; maps are read at "
                            "<scoremap_root>/<image_id>.npy)")
    try:
        m = np.load(path, allow_pickle=False)
    except Exception as exc:   # not an .npy file, truncated, or an object array
        raise ScoremapError(f"{path}: cannot read the score map as a numpy array: {exc}") from None
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)
            or m.dtype == np.bool_):
        raise ScoremapError(f"{path}: score map has dtype {m.dtype}; expected a real-valued array")
    want = (int(size[1]), int(size[0]))
    if m.shape != want:
        raise ScoremapError(f"{path}: score map has shape {m.shape}; expected {want[0]} x {want[1]} "
                            "(the protocol scores maps at 224 x 224)")
    m = m.astype(np.float64)
    if np.isnan(m).any():
        raise ScoremapError(f"{path}: score map contains NaN")
    lo, hi = float(m.min()), float(m.max())
    if lo < 0 or hi > 1:
        raise ScoremapError(f"{path}: score map values must lie in [0, 1]; min {lo:g}, max {hi:g}")
    return m


def gt_boxes_224(meta, image_id: str, size=SCOREMAP_SIZE) -> np.ndarray:
    """The image's GT boxes rescaled to the map size, as wsolevaluation's resize_bbox."""
    return metrics.rescale_boxes(meta.boxes[image_id], meta.sizes[image_id], size)


def gt_mask_224(meta, mask_root: str, image_id: str, size=SCOREMAP_SIZE):
    """(foreground bool [H, W], ignore bool [H, W]) as wsolevaluation's get_mask builds them."""
    from .data.metadata import mask_paths

    files, ignore = mask_paths(meta, mask_root, image_id)
    return metrics.load_gt_mask(files, ignore, size)


# ------------------------------------------------------------------------------------- scoring

def _new_evaluator(kind: str, settings: dict):
    if kind == "mask":
        return metrics.MaskEvaluator(cam_curve_interval=settings["cam_curve_interval"])
    return metrics.BoxEvaluator(cam_curve_interval=settings["cam_curve_interval"],
                                iou_thresholds=settings["iou_thresholds"],
                                multi_contour=settings["multi_contour"])


def _score_chunk(args):
    """One worker's share: (kind, settings, scoremap_root, [(image_id, gt)]) -> its evaluator.
    gt is the boxes [k, 4] (box datasets) or (mask files, ignore file or None)."""
    kind, settings, root, items = args
    ev = _new_evaluator(kind, settings)
    for image_id, gt in items:
        scoremap = load_scoremap(root, image_id)
        if kind == "mask":
            fg, ignore = metrics.load_gt_mask(gt[0], gt[1], SCOREMAP_SIZE)
            ev.accumulate(scoremap, fg, ignore)
        else:
            ev.accumulate(scoremap, gt)
    return ev


def _pool_context():
    import multiprocessing as mp

    # fork starts at once and shares the parent's imports; elsewhere spawn (a fresh interpreter).
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def evaluate_scoremaps(scoremap_root: str, meta, mask_root: str | None = None, cam_curve_interval: float = 0.01,
                       iou_thresholds=metrics.DEFAULT_IOU_THRESHOLDS, multi_contour: bool = True,
                       workers: int = 1, progress: bool = False) -> dict:
    """Score every image of `meta` (a SplitMetadata) from its saved map; returns the results dict
    (box datasets: maxboxacc per IoU, maxboxacc_v2, best_threshold, and maxboxacc_v1 without
    multi_contour; mask datasets: pxap and the PR curve's best threshold)."""
    kind = "mask" if meta.has_masks else "box"
    if kind == "box" and not meta.boxes:
        raise ValueError(f"the {meta.dataset} {meta.split} split has neither boxes nor masks to score against")
    if kind == "mask":
        from .data.metadata import check_mask_files, mask_paths

        if mask_root is None:
            raise ValueError(f"{meta.dataset} is scored against masks: give --mask-root")
        check_mask_files(meta, mask_root)
        items = [(i, mask_paths(meta, mask_root, i)) for i in meta.image_ids]
    else:
        items = [(i, gt_boxes_224(meta, i)) for i in meta.image_ids]
    settings = {"cam_curve_interval": float(cam_curve_interval),
                "iou_thresholds": tuple(int(t) for t in iou_thresholds), "multi_contour": bool(multi_contour)}
    workers = max(1, int(workers))
    if workers == 1:
        evaluators = [_score_chunk((kind, settings, scoremap_root, items))]
    else:
        from concurrent.futures import ProcessPoolExecutor

        # Several chunks per worker even out slow and fast maps; the merge is a sum of counts.
        n = min(len(items), workers * 4)
        bounds = np.linspace(0, len(items), n + 1).astype(int)
        chunks = [(kind, settings, scoremap_root, items[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            evaluators = list(pool.map(_score_chunk, chunks))
    cls = metrics.MaskEvaluator if kind == "mask" else metrics.BoxEvaluator
    ev = cls.merge(evaluators)
    out = {"dataset": meta.dataset, "split": meta.split, "num_images": int(ev.cnt),
           "cam_curve_interval": settings["cam_curve_interval"], "scoremap_root": scoremap_root}
    if kind == "mask":
        out.update(mask_results(ev))
    else:
        out.update(box_results(ev))
    return out


def box_results(ev) -> dict:
    """The box numbers of a BoxEvaluator, as results.json names them."""
    r = ev.compute()
    out = {"maxboxacc": r["maxboxacc"], "maxboxacc_v2": r["maxboxacc_v2"], "best_threshold": r["best_threshold"],
           "multi_contour": r["multi_contour"], "iou_thresholds": list(ev.iou_thresholds)}
    if "maxboxacc_v1" in r:
        out["maxboxacc_v1"] = r["maxboxacc_v1"]
    return out


def mask_results(ev) -> dict:
    """PxAP and the PR curve's best point of a MaskEvaluator, as results.json names them."""
    best = ev.best_point()
    return {"pxap": ev.compute(), "pxap_best_threshold": best["threshold"], "pxap_best_f1": best["f1"],
            "pxap_best_precision": best["precision"], "pxap_best_recall": best["recall"]}
