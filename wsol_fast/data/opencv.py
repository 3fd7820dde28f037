"""The default input pipeline: OpenCV decoding and transforms in torch DataLoader worker processes.

    loader = OpenCVLoader(image_ids, labels, data_root, "CUB", train=True, batch_size=32, num_workers=2,
                          resize_size=256, crop_size=224, seed=0)

Order, sharding, resume and augmentation draws: data/base.py (the same as dali.DaliLoader's).

Transforms (the wsolevaluation ones): train = resize to resize_size x resize_size (wsolevaluation's resize:
torchvision's Resize on a PIL image, bilinear and antialiased, bit for bit; `transforms.py`), random
crop_size crop, horizontal flip with p = 0.5, ImageNet normalisation; eval = resize to crop_size x
crop_size. Workers decode (OpenCV, `images.read_image_rgb`) and resize, and send uint8 HWC crops (4x
less inter-process traffic than float); the batch is normalised in the consuming process, on the GPU when
`device` is CUDA (pinned memory, non-blocking copy). The output is NCHW; `channels_last=True` keeps the
channels-last strides the uint8 batch already has (no copy), for a model that runs channels-last.

Bad images: the pre-scan (images.scan) before the first pass. A file that passes it but does not decode
during a pass is a `BadImageError` naming it in the consuming process, or, with skip_bad_images, dropped
from its batch and listed in `skipped` (id -> reason). A decoded size other than image_sizes.txt's is
recorded in `size_mismatches` (the trainer warns).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .base import SplitLoader
from .images import IMAGENET_MEAN, IMAGENET_STD, BadImageError, read_image_rgb
from .transforms import augment_draws, eval_resize, shard_draws, train_crop  # noqa: F401 (re-exported)


@contextmanager
def cv2_single_threaded():
    """OpenCV at one thread while DataLoader workers are forked, so they start with one thread and no
    thread pool. Calling cv2.setNumThreads(1) inside a forked worker instead deadlocks when this process
    had already used OpenCV's pthreads pool (it waits for pool threads that fork did not copy)."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def worker_init(_worker_id: int) -> None:
    import signal

    import cv2

    # Ctrl-C and SIGTERM reach the whole process group; the main process handles them (it finishes the
    # step and saves) and ends the workers itself, so a worker must neither die nor run a forked copy of
    # the main process's handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    # One decode per worker process (OpenCV's own pool would oversubscribe the cores). Forked workers
    # already have one thread (see cv2_single_threaded); spawned ones start fresh and are set here.
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class _ImageSet(torch.utils.data.Dataset):
    """Item (k, off_y, off_x, flip) -> (uint8 HWC numpy crop, label, image id, note). Eval items: no crop.

    note: None; ("bad", message) for a file that passed the pre-scan but does not decode (the image is
    None: the consuming process raises or, with skip_bad_images, drops it); ("size", decoded (w, h),
    image_sizes.txt's (w, h)) when they differ."""

    def __init__(self, paths, labels, image_ids, train, resize_size, crop_size, sizes=None):
        self.paths, self.labels, self.image_ids = paths, labels, image_ids
        self.train, self.resize_size, self.crop_size = train, resize_size, crop_size
        self.sizes = sizes or [None] * len(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        k, y, x, flip = item
        try:
            image = read_image_rgb(self.paths[k])
        except BadImageError as exc:
            return None, self.labels[k], self.image_ids[k], ("bad", str(exc))
        note = None
        if self.sizes[k] is not None and (image.shape[1], image.shape[0]) != tuple(self.sizes[k]):
            note = ("size", (image.shape[1], image.shape[0]), tuple(self.sizes[k]))
        if self.train:
            image = train_crop(image, self.resize_size, self.crop_size, y, x)
            if flip:
                image = image[:, ::-1]
        else:
            image = eval_resize(image, self.crop_size)
        return image, self.labels[k], self.image_ids[k], note


def _collate(items):
    """(uint8 N x H x W x 3, int64 labels, ids). Copies through numpy into one preallocated tensor (in
    shared memory inside a worker, as default_collate does): torch.stack of uint8 CPU tensors is a slow
    kernel (measured ~200 ms for 32 x 128 x 128 x 3 with torch 2.14, against 0.05 ms this way)."""
    notes = [(i, n) for _, _, i, n in items if n is not None]
    items = [it for it in items if it[0] is not None]     # undecodable: reported through the notes
    if not items:
        return None, None, [], notes
    images, labels, ids, _ = zip(*items)
    out = torch.empty((len(images), *images[0].shape), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()
    array = out.numpy()
    for k, image in enumerate(images):
        array[k] = image
    return out, torch.tensor(labels, dtype=torch.long), list(ids), notes


class _Plan(torch.utils.data.Sampler):
    """This pass's items, in order: the sampler's positions with their crop and flip draws.

    It holds what it needs itself, not the loader: a loader <-> DataLoader reference cycle would leave
    the persistent workers' iterator to the cyclic garbage collector, which finalizes its queues before
    the iterator's shutdown can use them (each worker then waits out a 5 s join timeout)."""

    def __init__(self, keep, sampler, train, seed, shard_id, resize_size, crop_size):
        self.keep, self.sampler, self.train = keep, sampler, train
        self.seed, self.shard_id, self.resize_size, self.crop_size = seed, shard_id, resize_size, crop_size
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        order = [self.keep[i] for i in self.sampler]
        if not self.train:
            return iter([(k, 0, 0, 0) for k in order])
        sp = self.sampler
        off_y, off_x, flip = shard_draws(self.seed, self.epoch, sp.size, sp.rank, sp.world_size, self.resize_size,
                                         self.crop_size)
        s = self.start
        return iter([(k, int(off_y[s + j]), int(off_x[s + j]), int(flip[s + j])) for j, k in enumerate(order)])


class OpenCVLoader(SplitLoader):
    """Iterable of (images, labels, ids) batches over one split (data/base.py: order and batches)."""

    def __init__(self, image_ids, labels, data_root, dataset, *, train, batch_size, num_workers=2,
                 resize_size=256, crop_size=224, seed=0, shard_id=0, num_shards=1, skip_bad_images=False,
                 device=None, fp16=False, drop_last=None, check_images=True, persistent_workers=None,
                 channels_last=False, sizes=None):
        super().__init__(image_ids, data_root, dataset, train=train, batch_size=batch_size,
                         resize_size=resize_size, crop_size=crop_size, seed=seed, shard_id=shard_id,
                         num_shards=num_shards, skip_bad_images=skip_bad_images, device=device,
                         drop_last=drop_last, check_images=check_images)
        self.labels = [int(v) for v in labels]
        self.num_workers, self.sizes = num_workers, sizes
        self.skipped: dict[str, str] = {}                # id -> why, images that failed to decode in a pass
        self.size_mismatches = self.check_sizes(sizes)   # id -> (decoded (w, h), image_sizes.txt (w, h))
        self.dtype = torch.float16 if (fp16 and self.device.type == "cuda") else torch.float32
        self.channels_last = channels_last
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self._plan = _Plan(self._keep, self.sampler, train, seed, shard_id, resize_size, crop_size)
        self._dataloader = None
        mean = torch.tensor(IMAGENET_MEAN) * 255
        scale = 1.0 / (torch.tensor(IMAGENET_STD) * 255)
        self._mean = mean.view(1, 3, 1, 1).to(self.device, self.dtype)
        self._scale = scale.view(1, 3, 1, 1).to(self.device, self.dtype)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch, start)
        self._plan.epoch, self._plan.start = epoch, start

    def _loader(self):
        if self._dataloader is None:  # built once: persistent workers survive from pass to pass
            dataset = _ImageSet(self.paths, self.labels, self.image_ids, self.train, self.resize_size,
                                self.crop_size, self.sizes)
            self._dataloader = torch.utils.data.DataLoader(
                dataset, batch_size=self.batch_size, sampler=self._plan, drop_last=self.drop_last,
                collate_fn=_collate, num_workers=self.num_workers,
                worker_init_fn=worker_init if self.num_workers else None,
                persistent_workers=self.persistent_workers and self.num_workers > 0,
                pin_memory=self.device.type == "cuda",
                # A private generator: each pass's worker seed would otherwise be drawn from the global
                # torch RNG, and a run resumed mid-epoch would then draw the model's dropout-like
                # choices (ICL's drop branch) differently from the uninterrupted run.
                generator=torch.Generator().manual_seed(self.seed))
        return self._dataloader

    def close(self) -> None:
        """Stop the worker processes now. Garbage collection would stop them too, but a loader caught in a
        reference cycle lives until the interpreter's exit, where multiprocessing ends its children with
        SIGTERM, which the workers ignore (worker_init): the process would then wait for them forever (seen
        with several train runs in one process, as `python -m wsol_fast.ablate` makes)."""
        loader, self._dataloader = self._dataloader, None
        workers = getattr(loader, "_iterator", None)     # the persistent workers' iterator, if started
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> normalised N x 3 x H x W on self.device, in self.dtype."""
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)   # NCHW view, channels-last strides
        x = x.to(self.dtype).sub_(self._mean).mul_(self._scale)
        return x if self.channels_last else x.contiguous()

    def __iter__(self):
        if len(self) == 0:
            return
        loader = self._loader()
        if self.num_workers:
            with cv2_single_threaded():
                batches = iter(loader)  # forks the workers (the first time, when they persist)
        else:
            batches = iter(loader)
        for images, labels, ids, notes in batches:
            for image_id, note in notes:
                if note[0] == "size":
                    self.size_mismatches[image_id] = note[1:]
                elif not self.skip_bad_images:
                    raise BadImageError(f"{note[1]} (it passed the pre-scan but does not decode; fix or remove "
                                        "it, or pass --skip-bad-images to leave it out)")
                else:
                    self.skipped[image_id] = note[1]
            if images is not None:
                yield self.normalise(images), labels, list(ids)
