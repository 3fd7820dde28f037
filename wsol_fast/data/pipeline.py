"""What the trainer and the evaluator get from the data side: validated metadata, checked images, loaders.

    data = prepare_data(cfg.data, info, device, batch_size=32, seed=0)   # all splits and loaders
    for images, labels, ids in data.train_loader: ...

Order of checks, all before the first step: (1) the built-in dataset is generated if needed (by local rank
0 of each node, the others wait at a barrier); (2) the metadata of every requested split is read and
validated (`metadata.load_splits`: errors name file and line; one class count for all splits); (3) every
image gets the cheap integrity check (`images.scan`): an unreadable one is a `BadImageError` naming the
file, or, with `skip_bad_images`, it is dropped from its split's metadata (so evaluation counts stay
consistent) and listed in `RunData.bad_images`; (4) one loader per split, none of which scans again.

`--loader auto` picks DALI when it imports (the issue's rule) and OpenCV otherwise. Measured on the 2-core
CPU this was written on (shared, so best of 3 interleaved epochs; batch 32, 2 DALI threads against 2
DataLoader workers, CPU time includes the workers'):

    built-in train set, resize 146 / crop 128:   DALI 5,050 img/s, 0.37 CPU ms/img; OpenCV 3,640, 0.54
    400 JPEGs of 500 x 375, resize 256 / 224:    DALI   845 img/s, 2.27 CPU ms/img; OpenCV 1,110, 1.86

(Those figures predate wsolevaluation's antialiased resize in both loaders, which costs 10-40% more CPU
per image than the cv2.INTER_LINEAR they used; measured again interleaved, CPU ms per image, DALI against
persistent OpenCV: 0.38 against 1.56 on the built-in set at 73 / 64, 2.90 against 4.79 on the 500 x 375
JPEGs; docs/operators.md "Input pipeline".) Both loaders give the same pixels (data/transforms.py).
On the built-in set (the CPU default) DALI is ahead, so `auto` keeps the issue's rule on the CPU too;
either loader is far faster than a CPU training step. Under CUDA, DALI decodes on the GPU (`mixed`) on
this rank's device.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from .. import errors, runtime
from . import dali, generated, images
from .metadata import SplitMetadata, check_mask_files, load_splits
from .opencv import OpenCVLoader


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
    _train_loader: object | None = None

    @property
    def train_loader(self):
        """Shuffled per (seed, epoch), sharded per rank; the last incomplete batch kept or dropped as the
        data config's partial_batches says (unresolved None: kept on real data, as wsolevaluation's
        DataLoader keeps it, dropped on the built-in sets)."""
        if self._train_loader is None:
            raise ValueError("prepare_data was called without the train split")
        return self._train_loader

    def close(self) -> None:
        """Stop every loader's worker processes (the run is over)."""
        for loader in (self._train_loader, self.val_loader, self.test_loader):
            if hasattr(loader, "close"):
                loader.close()


def choose_loader(requested: str, device: torch.device) -> str:
    """`--loader`: 'dali', 'opencv', or 'auto' (DALI when it imports, else OpenCV; see the module doc)."""
    if requested == "opencv":
        return "opencv"
    if requested == "dali":
        if not dali.dali_available():
            raise errors.UnavailableError("--loader dali: nvidia.dali is not installed (pip install "
                                           "nvidia-dali-cuda130, or use --loader opencv)")
        return "dali"
    if requested != "auto":
        raise ValueError(f"unknown loader {requested!r} (expected auto, dali or opencv)")
    return "dali" if dali.dali_available() else "opencv"


def resolve_roots(d, info: runtime.DistInfo) -> tuple[str, str]:
    """(metadata_root, data_root) of the data config `d`. A generated dataset (data/generated.py) is generated
    on first use under data_root (its cache root; default `$WSOL_FAST_CACHE/<dataset>`) unless a metadata root
    is given too (both roots given: a generated copy, used as is)."""
    entry = generated.GENERATED.get(d.dataset)
    if entry is not None and not d.metadata_root:
        root = os.path.abspath(d.data_root or entry.default_root())
        if info.local_rank == 0:  # one generator per node; a shared file system is serialised by a lock
            entry.generate(root, seed=d.builtin_seed, progress=info.is_main)
        runtime.barrier(info)
        return entry.metadata_root(root), entry.data_root(root)
    if not d.metadata_root or not d.data_root:
        raise ValueError(f"dataset {d.dataset!r} needs both a metadata root and a data root")
    return d.metadata_root, d.data_root


def prepare_data(d, info: runtime.DistInfo, device: torch.device, *, batch_size: int, seed: int = 0,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 splits=("train", "val", "test")) -> RunData:
    """Validate metadata and images of `splits` (data config `d`) and build their loaders: batch_size per
    rank, the train order and crops drawn from `seed`, eval sharded over the ranks (gathering their results
    covers every image once). amp_dtype float16 on CUDA: the train loader hands over fp16 batches."""
    metadata_root, data_root = resolve_roots(d, info)
    images.set_max_image_pixels(getattr(d, "max_image_pixels", None))
    metas = load_splits(metadata_root, d.dataset, splits, getattr(d, "num_classes", None))
    for meta in metas.values():   # masks (OpenImages) at <mask_root>/<dataset>/<mask_path>, default the data root
        if meta.has_masks:
            meta.mask_root = getattr(d, "mask_root", None) or data_root
            check_mask_files(meta, meta.mask_root)
    bad_ids: list[str] = []
    for split, meta in metas.items():
        paths = [os.path.join(data_root, d.dataset, i) for i in meta.image_ids]
        if info.is_main:
            images.warn_escaping_symlinks(paths, os.path.join(data_root, d.dataset))
        bad = images.scan(paths, d.skip_bad_images, f"the {split} split",
                          "train on" if split == "train" else "score")
        if bad:
            dropped = {meta.image_ids[k] for k in bad}
            bad_ids += [meta.image_ids[k] for k in bad]
            metas[split] = meta.subset([i for i in meta.image_ids if i not in dropped])
    num_classes = next(iter(metas.values())).num_classes
    data = RunData(dataset=d.dataset, metadata_root=metadata_root, data_root=data_root,
                   image_root=os.path.join(data_root, d.dataset), num_classes=num_classes,
                   loader_name=choose_loader(d.loader, device), train_meta=metas.get("train"),
                   val_meta=metas.get("val"), test_meta=metas.get("test"), bad_images=bad_ids)
    common = dict(batch_size=batch_size, seed=seed, channels_last=channels_last)
    if data.val_meta is not None:
        data.val_loader = _build(data, d, info, device, data.val_meta, train=False, persistent=True, **common)
    if data.test_meta is not None:  # used once: no workers kept between passes
        data.test_loader = _build(data, d, info, device, data.test_meta, train=False, persistent=False, **common)
    if data.train_meta is not None:
        data._train_loader = make_train_loader(data, d, info, device, amp_dtype=amp_dtype, **common)
    return data


def partial_batches(d) -> bool:
    """Whether the train loader keeps the last incomplete batch: the data config's resolved partial_batches,
    or where it is None, True on real data (wsolevaluation's DataLoader, drop_last False) and False on a
    generated set (data/generated.py: its profile's numbers were measured with it dropped)."""
    value = getattr(d, "partial_batches", None)
    if value is None:
        return not generated.is_generated(str(getattr(d, "dataset", "builtin")))
    return bool(value)


def make_train_loader(data: RunData, d, info, device, *, amp_dtype=None, **common):
    """The training loader (a seam the tests wrap to stop a run mid-epoch). A train split smaller than one
    batch per rank (without partial batches) is an error: no step would run."""
    fp16 = amp_dtype is torch.float16 and device.type == "cuda"
    partial = partial_batches(d)   # keep the last, incomplete batch
    loader = _build(data, d, info, device, data.train_meta, train=True, persistent=True, fp16=fp16,
                    **({"drop_last": False} if partial else {}), **common)
    if len(loader) == 0:
        n = len(data.train_meta)
        raise errors.UserError(
            f"--batch-size {common['batch_size']} is larger than the train split ({n} images"
            f"{f', {math.ceil(n / info.world_size)} per rank' if info.enabled else ''}): no step "
            "would run; lower --batch-size or pass --allow-partial-batches")
    return loader


def _build(data: RunData, d, info, device, meta, *, train: bool, persistent: bool, batch_size: int, seed: int,
           channels_last: bool, fp16: bool = False, **extra):
    """A loader over `meta`; prepare_data has already checked its images, so no loader scans them again."""
    ids = list(meta.image_ids)
    common = dict(train=train, batch_size=batch_size, resize_size=d.resize_size, crop_size=d.crop_size,
                  seed=seed, shard_id=info.rank, num_shards=info.world_size, skip_bad_images=d.skip_bad_images,
                  device=device, fp16=fp16, check_images=False, **extra)
    args = (ids, [meta.class_labels[i] for i in ids], data.data_root, data.dataset)
    common["sizes"] = [meta.sizes.get(i) for i in ids] if meta.sizes else None   # both check them (base.py)
    if data.loader_name == "dali":
        threads = max(1, d.workers)  # --workers 0 (no worker processes) still needs one DALI thread
        return dali.DaliLoader(*args, num_threads=threads, **common)
    return OpenCVLoader(*args, num_workers=d.workers, persistent_workers=persistent, channels_last=channels_last,
                        **common)
