"""What both loaders (opencv.py, dali.py) share: the split's files and their pre-scan, the sample order,
sharding and resume (`set_epoch`), the batch count, and the augmentation draws.

    loader.set_epoch(epoch, start)            # start = samples of this rank's share already done
    for images, labels, ids in loader: ...    # float32 (N,3,H,W), int64 (N,), list[str]

The order comes from the samplers (TrainSampler / ShardSampler) and the crop offsets and flips from
`transforms.shard_draws`, both pure functions of (seed, epoch, shard), so the two loaders give the same
images in the same order with the same crops (a crop belongs to the sample's place in the epoch, so W ranks
at batch B see the crops of one process at batch W x B), and a run resumed mid-epoch (`set_epoch(epoch, start)`)
gets exactly the remaining batches it would have had.
"""
from __future__ import annotations

import math
import os

import torch

from . import images
from .sampler import ShardSampler, TrainSampler


def resolve_device(device) -> torch.device:
    """`device`, or CUDA when it is available and `device` is None, else the CPU (both loaders)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class SplitLoader:
    """One split's images under `data_root/dataset/<image_id>`, in batches.

    Train: the TrainSampler order for (seed, epoch, shard), the last incomplete batch dropped (unless
    drop_last=False). Eval: the ShardSampler order (shard r sees r, r+W, ...), every image exactly once,
    the last batch partial. check_images=False: the caller (data.pipeline) has already scanned the files;
    otherwise they are scanned here (images.scan) and, with skip_bad_images, the bad ones left out and
    listed in `bad_images`."""

    def __init__(self, image_ids, data_root, dataset, *, train, batch_size, resize_size=256, crop_size=224,
                 seed=0, shard_id=0, num_shards=1, skip_bad_images=False, device=None, drop_last=None,
                 check_images=True):
        if resize_size < crop_size and train:
            raise ValueError(f"resize_size ({resize_size}) must be >= crop_size ({crop_size})")
        self.image_ids = list(image_ids)
        self.paths = [os.path.join(data_root, dataset, i) for i in self.image_ids]
        self.train, self.batch_size = train, batch_size
        self.resize_size, self.crop_size, self.seed = resize_size, crop_size, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.drop_last = train if drop_last is None else drop_last
        self.skip_bad_images = skip_bad_images
        self.device = resolve_device(device)
        bad = images.scan(self.paths, skip_bad_images) if check_images else []
        dropped = set(bad)
        self._keep = [k for k in range(len(self.paths)) if k not in dropped]   # positions of readable images
        self.bad_images = [self.image_ids[k] for k in bad]
        if train:
            self.sampler = TrainSampler(len(self._keep), seed=seed, rank=shard_id, world_size=num_shards)
        else:
            self.sampler = ShardSampler(len(self._keep), rank=shard_id, world_size=num_shards)
        self.epoch, self.start = 0, 0

    def check_sizes(self, sizes) -> dict[str, tuple]:
        """Both loaders' one check of image_sizes.txt (sizes: its (w, h) per image, or None): id -> (decoded
        (w, h), listed (w, h)) for every readable image whose size differs. The decoded size is the header's
        (images.read_header: the decoders ignore EXIF orientation, so they decode exactly that size), read
        once here for both loaders, before any pass; the trainer warns (runlog.DataIssues)."""
        if not sizes:
            return {}
        return images.size_mismatches([self.paths[k] for k in self._keep], [self.image_ids[k] for k in self._keep],
                                      [sizes[k] for k in self._keep])

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`, skipping the first `start` samples of this shard's share (for resuming)."""
        self.epoch, self.start = epoch, start
        if self.train:
            self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> list[int]:
        """Positions in the split, in this pass's order."""
        return [self._keep[i] for i in self.sampler]
