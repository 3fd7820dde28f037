"""What the trainer and the evaluator get from the data side: validated metadata, checked images, loaders.

    data = prepare_data(cfg, info, device)                       # all splits, before any training
    train_loader = make_train_loader(cfg, data, info, device, amp_dtype)
    for images, labels, ids in data.val_loader: ...

Order of checks, all before the first step: (1) the built-in dataset is generated if needed (by local rank
0 of each node, the others wait at a barrier); (2) the metadata of every requested split is read and
validated (`metadata.load_splits`: errors name file and line; one class count for all splits); (3) every
image gets the loaders' cheap integrity check: an unreadable one is a `BadImageError` naming the file,
or, with `skip_bad_images`, it is dropped from its split's metadata (so evaluation counts stay
consistent) and listed in `RunData.bad_images`.

`--loader auto` picks DALI when it imports (the issue's rule) and OpenCV otherwise. Measured on the 2-core
CPU this was written on (shared, so best of 3 interleaved epochs; batch 32, 2 DALI threads against 2
DataLoader workers, CPU time includes the workers'):

    built-in train set, resize 146 / crop 128:   DALI 5,050 img/s, 0.37 CPU ms/img; OpenCV 3,640, 0.54
    400 JPEGs of 500 x 375, resize 256 / 224:    DALI   845 img/s, 2.27 CPU ms/img; OpenCV 1,110, 1.86

On the built-in set (the CPU default) DALI is ahead, so `auto` keeps the issue's rule on the CPU too;
either loader is far faster than a CPU training step. Under CUDA, DALI decodes on the GPU (`mixed`) on
this rank's device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .. import runtime
from . import builtin, dali, loaders
from .metadata import SplitMetadata, load_splits


@dataclass
class RunData:
    """The validated data of a run. Images are at `os.path.join(image_root, image_id)`."""

    dataset: str
    metadata_root: str
    data_root: str                       # images at <data_root>/<dataset>/<image_id>
    image_root: str                      # <data_root>/<dataset>
    num_classes: int
    loader_name: str                     # "dali" or "opencv": what --loader resolved to
    train_meta: SplitMetadata | None = None
    val_meta: SplitMetadata | None = None
    test_meta: SplitMetadata | None = None
    val_loader: object | None = None
    test_loader: object | None = None
    bad_images: list[str] = field(default_factory=list)   # ids left out (skip_bad_images), all splits


def choose_loader(requested: str, device: torch.device) -> str:
    """`--loader`: 'dali', 'opencv', or 'auto' (DALI when it imports, else OpenCV; see the module doc)."""
    if requested == "opencv":
        return "opencv"
    if requested == "dali":
        if not dali.dali_available():
            raise RuntimeError("--loader dali: nvidia.dali is not installed (pip install nvidia-dali-cuda130, "
                               "or use --loader opencv)")
        return "dali"
    if requested != "auto":
        raise ValueError(f"unknown loader {requested!r} (expected auto, dali or opencv)")
    return "dali" if dali.dali_available() else "opencv"


def resolve_roots(cfg, info: runtime.DistInfo) -> tuple[str, str]:
    """(metadata_root, data_root). The built-in dataset is generated on first use under data_root (its
    cache root; default `builtin.default_root()`) unless a metadata root is given too."""
    d = cfg.data
    if d.dataset in builtin.DATASETS and not d.metadata_root:  # both roots given: a generated copy, as is
        root = os.path.abspath(d.data_root or builtin.default_root(d.dataset))
        if info.local_rank == 0:  # one generator per node; a shared file system is serialised by a lock
            builtin.generate(root, seed=d.builtin_seed, progress=info.is_main, dataset=d.dataset)
        runtime.barrier(info)
        return builtin.metadata_root(root), builtin.data_root(root)
    if not d.metadata_root or not d.data_root:
        raise ValueError(f"dataset {d.dataset!r} needs both a metadata root and a data root")
    return d.metadata_root, d.data_root


def prepare_data(cfg, info: runtime.DistInfo, device: torch.device,
                 splits=("train", "val", "test")) -> RunData:
    """Validate metadata and images of `splits`, and build the eval loaders (sharded over the ranks, so
    gathering their results covers every image once)."""
    d = cfg.data
    metadata_root, data_root = resolve_roots(cfg, info)
    metas = load_splits(metadata_root, d.dataset, splits)
    bad_ids: list[str] = []
    for split, meta in metas.items():
        paths = [os.path.join(data_root, d.dataset, i) for i in meta.image_ids]
        bad = loaders.find_bad_images(paths)
        if bad and not d.skip_bad_images:
            shown = "\n  ".join(paths[k] for k in bad[:10]) + ("\n  ..." if len(bad) > 10 else "")
            raise loaders.BadImageError(
                f"{len(bad)} unreadable image(s) in the {split} split (missing, truncated or not an image):\n"
                f"  {shown}\nfix or remove them, or pass --skip-bad-images to leave them out")
        if bad:
            dropped = {meta.image_ids[k] for k in bad}
            bad_ids += [meta.image_ids[k] for k in bad]
            metas[split] = meta.subset([i for i in meta.image_ids if i not in dropped])
    num_classes = next(iter(metas.values())).num_classes
    data = RunData(dataset=d.dataset, metadata_root=metadata_root, data_root=data_root,
                   image_root=os.path.join(data_root, d.dataset), num_classes=num_classes,
                   loader_name=choose_loader(d.loader, device), train_meta=metas.get("train"),
                   val_meta=metas.get("val"), test_meta=metas.get("test"), bad_images=bad_ids)
    if data.val_meta is not None:
        data.val_loader = _build(data, cfg, info, device, data.val_meta, train=False, persistent=True)
    if data.test_meta is not None:  # used once: no workers kept between passes
        data.test_loader = _build(data, cfg, info, device, data.test_meta, train=False, persistent=False)
    return data


def make_train_loader(cfg, data: RunData, info: runtime.DistInfo, device: torch.device, amp_dtype=None):
    """The training loader: shuffled per (seed, epoch), sharded per rank, last incomplete batch dropped."""
    if data.train_meta is None:
        raise ValueError("prepare_data was called without the train split")
    fp16 = amp_dtype is torch.float16 and device.type == "cuda"
    return _build(data, cfg, info, device, data.train_meta, train=True, persistent=True, fp16=fp16)


def _build(data: RunData, cfg, info, device, meta, *, train: bool, persistent: bool, fp16: bool = False):
    """A loader over `meta`; prepare_data has already checked its images, so no loader scans them again."""
    d = cfg.data
    common = dict(train=train, batch_size=cfg.optim.batch_size, resize_size=d.resize_size,
                  crop_size=d.crop_size, seed=cfg.runtime.seed, shard_id=info.rank,
                  num_shards=info.world_size, skip_bad_images=d.skip_bad_images, device=device, fp16=fp16)
    if data.loader_name == "dali":
        threads = max(1, d.workers)  # --workers 0 (no worker processes) still needs one DALI thread
        return dali.build_dali_loader(meta, data.data_root, data.dataset, num_threads=threads,
                                      check_images=False, **common)
    return loaders.build_opencv_loader(meta, data.data_root, data.dataset, num_workers=d.workers,
                                       check_images=False, persistent_workers=persistent,
                                       channels_last=bool(cfg.runtime.channels_last), **common)
