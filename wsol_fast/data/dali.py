"""NVIDIA DALI input pipeline: the OpenCV loader's batches, decoded and transformed by DALI.

The sample order, sharding and augmentation draws come from Python (the same samplers as the OpenCV
loader), so both loaders see the same images in the same order and a run resumed mid-epoch continues
with exactly the crops and flips it would have drawn. DALI does the file reading, JPEG decoding
(`mixed` = nvJPEG on a GPU, libjpeg-turbo on the CPU with `device_id=None`), the resize, and
crop/flip/normalise.

    loader = build_dali_loader(meta, data_root, "CUB", train=True, batch_size=32, num_threads=2,
                               resize_size=256, crop_size=224, seed=0)
    loader.set_epoch(epoch, start)            # like the OpenCV loader
    for images, labels, ids in loader: ...    # float32 (N,3,H,W), int64 (N,), list[str]

The resize (`resize=`): on a GPU, DALI's `fn.resize` ("dali"). On the CPU ("auto" picks "opencv"), a
`python_function` node runs OpenCV's resize (`wsol_fast.data.transforms`, the OpenCV loader's own code)
between DALI's decoder and its crop_mirror_normalize: measured on 500 x 375 JPEGs with 2 threads, DALI's
CPU linear resize cost 0.8 ms per image, as much as the JPEG decode, against 0.08 ms for cv2.resize
(which releases the GIL; the node runs once per batch).

Alignment with the OpenCV loader (eval and train, measured on generated JPEGs): the decoded pixels are
identical (both use libjpeg-turbo's default islow IDCT here; other builds or nvJPEG on a GPU may differ
by a few levels). With resize="opencv" the resized pixels are then identical too, and the normalised
tensors agree to float rounding (1e-6). With resize="dali" the geometry is the same (half-pixel centres,
no antialias), but cv2 resizes uint8 with 11-bit fixed-point weights while DALI rounds a float result, so
about 9% of pixels differ by one level: max |diff| = 1/255/0.224 = 0.0175 after normalisation, mean
~0.0016.
"""
from __future__ import annotations

import functools
import math
import os
import re

import numpy as np
import torch

from . import transforms
from .sampler import ShardSampler, TrainSampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImageError(RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


def dali_available() -> bool:
    """True when nvidia.dali and its PyTorch plugin import."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def looks_like_image(path: str) -> bool:
    """The pre-scan's check of one file (a seam the tests replace to reach DALI's own failure)."""
    return _intact(path)


# Decoded pixels are capped: a small file whose header claims a huge image (a "decompression bomb") is
# refused from its header, before anything is decoded. The default is far above any real dataset image
# (ILSVRC's largest are ~10 MP); the trainer and `data check` set it from --max-image-pixels.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """Set the cap for this process and the loader workers it forks afterwards."""
    global MAX_IMAGE_PIXELS
    MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS if limit is None else int(limit)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding: PNG's IHDR, JPEG's frame (SOF) marker,
    other formats through PIL's lazy open; None when it cannot tell."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
                return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                while True:
                    marker = f.read(2)
                    if len(marker) < 2 or marker[0] != 0xFF:
                        return None
                    if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7 or marker[1] == 0xFF:
                        if marker[1] == 0xFF:
                            f.seek(-1, os.SEEK_CUR)
                        continue
                    length = int.from_bytes(f.read(2), "big")
                    if marker[1] in _SOF:
                        seg = f.read(5)
                        return (int.from_bytes(seg[3:5], "big"), int.from_bytes(seg[1:3], "big")) \
                            if len(seg) == 5 else None
                    if length < 2:
                        return None
                    f.seek(length - 2, os.SEEK_CUR)
    except OSError:
        return None
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    except Exception:
        return None


def too_many_pixels(path: str, limit: int | None = None) -> str | None:
    """Why the header's size exceeds the pixel cap, or None."""
    limit = MAX_IMAGE_PIXELS if limit is None else limit
    size = header_size(path)
    if size is not None and size[0] * size[1] > limit:
        return (f"its header claims {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} MP, above the cap of "
                f"{limit / 1e6:g} MP (--max-image-pixels)")
    return None


def image_problem(path: str) -> str | None:
    """Why the pre-scan refuses a file (missing, truncated JPEG, too many pixels, not an image), or None."""
    try:
        with open(path, "rb") as f:
            jpeg = f.read(3)[:2] == b"\xff\xd8"
            if jpeg:
                f.seek(-2, os.SEEK_END)
                if f.read(2) != b"\xff\xd9":
                    return "truncated JPEG (no end-of-image marker)"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    big = too_many_pixels(path)
    if big:
        return big
    if not jpeg and not _cv2_decodes(path):
        return "empty, not an image, or an unsupported format"
    return None


def find_bad_images(paths) -> list[int]:
    """Positions of the files that fail the cheap pre-scan (`looks_like_image`)."""
    return [k for k, path in enumerate(paths) if not looks_like_image(path)]


def readable_positions(paths, image_ids, skip: bool) -> tuple[list[int], list[str]]:
    """(positions of the readable images, ids of the unreadable ones), for both loaders. An unreadable
    image is a BadImageError naming it, unless `skip` (then it is left out and listed)."""
    bad = find_bad_images(paths)
    if bad and not skip:
        raise BadImageError(f"cannot read image {paths[bad[0]]!r} (missing, truncated or not an image); "
                            "fix or remove it, or pass skip_bad_images=True to leave it out")
    if len(bad) == len(paths):
        raise ValueError(f"no readable images among {len(paths)} (first: {paths[:1]})")
    dropped = set(bad)
    return [k for k in range(len(paths)) if k not in dropped], [image_ids[k] for k in bad]


def _intact(path: str) -> bool:
    """Cheap integrity check (small reads, no decode for JPEGs): JPEGs must start with SOI and end with EOI,
    which catches the common truncated download; no header may claim more than the pixel cap; other
    formats are decoded with OpenCV."""
    return image_problem(path) is None


def _cv2_decodes(path: str) -> bool:
    import cv2
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return False
    return data.size > 0 and cv2.imdecode(data, cv2.IMREAD_COLOR) is not None


def resolve_device(device) -> torch.device:
    """`device`, or CUDA when it is available and `device` is None, else the CPU (both loaders)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def plan_split(paths, image_ids, *, train, seed, shard_id, num_shards, skip_bad_images, check_images):
    """(positions of the readable images, ids of the unreadable ones, the sampler over the readable ones)
    for both loaders. check_images=False: the caller (data.pipeline) has already checked every image."""
    keep, bad = (readable_positions(paths, image_ids, skip_bad_images) if check_images
                 else (list(range(len(paths))), []))
    if train:
        sampler = TrainSampler(len(keep), seed=seed, rank=shard_id, world_size=num_shards)
    else:
        sampler = ShardSampler(len(keep), rank=shard_id, world_size=num_shards)
    return keep, bad, sampler


def _build_pipeline(files, indices, aug_source, *, train, batch_size, num_threads, resize_size, crop_size,
                    device_id, fp16, seed, resize):
    """The DALI graph. `indices` (positions in the split) travel as the reader's labels, so every output
    sample names its image; `aug_source(iteration)` feeds per-sample crop regions, crop offsets and flips.
    resize: "dali" (fn.resize) or "opencv" (a python_function running wsol_fast.data.transforms; CPU)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def wsol_pipeline():
        # pad_last_batch repeats the last file instead of wrapping into the next epoch; the iterator
        # trims the padding (LastBatchPolicy.PARTIAL), so each sample appears exactly once.
        jpegs, index = fn.readers.file(files=files, labels=indices, random_shuffle=False,
                                       pad_last_batch=True, name="reader")
        # adjust_orientation=False: ignore EXIF rotation, as OpenCV's loader and wsolevaluation's PIL
        # loading do, so decoded sizes match image_sizes.txt and the boxes.
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                   adjust_orientation=False)
        linear = dict(interp_type=types.INTERP_LINEAR, antialias=False)  # = cv2.INTER_LINEAR
        normalise = dict(dtype=types.FLOAT16 if (fp16 and gpu) else types.FLOAT, output_layout="CHW",
                         mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD])
        if train:
            if resize == "opencv":
                offsets, flip = fn.external_source(source=aug_source, num_outputs=2, batch=True)
                images = fn.python_function(images, offsets, batch_processing=True, function=functools.partial(
                    transforms.train_crop_batch, resize_size=resize_size, crop_size=crop_size))
            else:
                # Resize to resize_size then crop = one resize of the crop's input region (relative ROI):
                # the same sampling positions, ~25% fewer pixels to interpolate.
                roi_start, roi_end, flip = fn.external_source(source=aug_source, num_outputs=3, batch=True)
                images = fn.resize(images, size=(crop_size, crop_size), roi_start=roi_start, roi_end=roi_end,
                                   roi_relative=True, **linear)
            images = fn.crop_mirror_normalize(images, mirror=flip, **normalise)
        else:
            if resize == "opencv":
                images = fn.python_function(images, batch_processing=True, function=functools.partial(
                    transforms.eval_resize_batch, size=crop_size))
            else:
                images = fn.resize(images, resize_x=crop_size, resize_y=crop_size, **linear)
            images = fn.crop_mirror_normalize(images, **normalise)
        return images, index

    return wsol_pipeline()


class DaliLoader:
    """Iterable of (images, labels, ids) batches over one split, one DALI pipeline per pass.

    Train: the TrainSampler order for (seed, epoch, shard), resize to resize_size, random crop_size crop
    (uniform integer offsets) and horizontal flip drawn from (seed, epoch, shard); the last incomplete
    batch is dropped. Eval: the ShardSampler order (shard r sees r, r+W, ...), resize to crop_size, every
    image exactly once per pass, the last batch partial.
    """

    def __init__(self, image_ids, labels, data_root, dataset, *, train, batch_size, num_threads=2,
                 resize_size=256, crop_size=224, seed=0, shard_id=0, num_shards=1, skip_bad_images=False,
                 device=None, fp16=False, drop_last=None, check_images=True, resize="auto"):
        if resize_size < crop_size and train:
            raise ValueError(f"resize_size ({resize_size}) must be >= crop_size ({crop_size})")
        self.image_ids = list(image_ids)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.paths = [os.path.join(data_root, dataset, i) for i in self.image_ids]
        self.train, self.batch_size, self.num_threads = train, batch_size, num_threads
        self.resize_size, self.crop_size, self.seed, self.fp16 = resize_size, crop_size, seed, fp16
        self.shard_id, self.num_shards = shard_id, num_shards
        self.drop_last = train if drop_last is None else drop_last
        self.device = resolve_device(device)
        if resize not in ("auto", "dali", "opencv"):
            raise ValueError(f"resize must be 'auto', 'dali' or 'opencv', got {resize!r}")
        if resize == "opencv" and self.device.type == "cuda":
            raise ValueError("resize='opencv' is the CPU path; on a GPU DALI resizes (resize='dali')")
        self.resize = resize if resize != "auto" else ("dali" if self.device.type == "cuda" else "opencv")
        self._keep, self.bad_images, self.sampler = plan_split(
            self.paths, self.image_ids, train=train, seed=seed, shard_id=shard_id, num_shards=num_shards,
            skip_bad_images=skip_bad_images, check_images=check_images)
        self.epoch, self.start = 0, 0

    # ------------------------------------------------------------------ set-up
    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`, skipping the first `start` samples of this shard's share (for resuming)."""
        self.epoch, self.start = epoch, start
        if self.train:
            self.sampler.set_epoch(epoch, start)

    def _order(self) -> list[int]:
        """Positions in the split, in this pass's order."""
        return [self._keep[i] for i in self.sampler]

    def _augment_draws(self, count: int):
        """Per-sample crop offsets and flips for the whole share of this epoch, so skipping `start`
        samples keeps the draws of the rest (exact resume)."""
        off_y, off_x, flip = transforms.augment_draws(self.seed, self.epoch, self.shard_id, self.sampler.per_rank,
                                                      self.resize_size, self.crop_size)
        keep = slice(self.start, self.start + count)
        # ROI (y, x) of the crop within the resize_size x resize_size image, relative to its sides.
        offsets = np.stack([off_y[keep], off_x[keep]], axis=1)
        start = offsets / self.resize_size
        end = start + self.crop_size / self.resize_size
        return (start.astype(np.float32), end.astype(np.float32), offsets.astype(np.int32),
                flip[keep].astype(np.int32))

    def _device_id(self):
        """None = DALI's CPU-only mode; else the CUDA device (the current one under DDP)."""
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        order = self._order()
        steps = len(self)
        if steps == 0:
            return
        draws = self._augment_draws(len(order)) if self.train else None
        if draws is not None:  # the inputs the graph takes: (offsets, flip) or (roi_start, roi_end, flip)
            draws = draws[2:] if self.resize == "opencv" else (draws[0], draws[1], draws[3])
        bs = self.batch_size

        def aug_source(iteration: int):
            # Called once per pipeline iteration; the padded tail batch repeats the last draw.
            picks = np.minimum(np.arange(iteration * bs, (iteration + 1) * bs), len(order) - 1)
            return [d[picks] for d in draws]

        pipe = _build_pipeline([self.paths[k] for k in order], order, aug_source, train=self.train,
                               batch_size=bs, num_threads=self.num_threads, resize_size=self.resize_size,
                               crop_size=self.crop_size, seed=(self.seed * 1000003 + self.epoch) % 2**31,
                               device_id=self._device_id(), fp16=self.fp16, resize=self.resize)
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        step = 0
        try:
            it = DALIGenericIterator(pipe, ["images", "index"], reader_name="reader", last_batch_policy=policy,
                                     auto_reset=False)
            for step in range(steps):
                out = next(it)[0]
                index = out["index"].view(-1).long().cpu()
                yield out["images"], self.labels[index], [self.image_ids[k] for k in index.tolist()]
        except RuntimeError as err:
            if isinstance(err, BadImageError):
                raise
            raise BadImageError(self._explain(err, order[step * bs:(step + 3) * bs])) from err
        finally:
            del pipe

    def _explain(self, err: RuntimeError, window: list[int]) -> str:
        """Name the file behind a DALI failure: the path DALI quotes (it does for truncated JPEGs), else
        the first file of the failing batch or the prefetched ones after it that fails our own check."""
        text = str(err)
        culprit = next((self.paths[k] for k in window if self.paths[k] in text), None)
        if culprit is None:
            culprit = next((self.paths[k] for k in window if not _intact(self.paths[k])), None)
        reason = text.split("encountered:")[-1].replace("Current pipeline object is no longer valid.", "")
        reason = re.sub(r"\s+", " ", reason).strip()[:300]
        where = f"image {culprit!r}" if culprit else f"one of {[self.paths[k] for k in window]}"
        return (f"DALI failed to decode {where}: {reason} (it passed the pre-scan; fix or remove it: DALI "
                "cannot leave out an image mid-pass, --loader opencv --skip-bad-images can)")


def build_dali_loader(meta, data_root, dataset, train, batch_size, num_threads=2, resize_size=256,
                      crop_size=224, seed=0, shard_id=0, num_shards=1, skip_bad_images=False, device=None,
                      fp16=False, check_images=True, **kwargs) -> DaliLoader:
    """The trainer's entry point: a DaliLoader over the split `meta` describes."""
    image_ids, labels = _split_items(meta)
    return DaliLoader(image_ids, labels, data_root, dataset, train=train, batch_size=batch_size,
                      num_threads=num_threads, resize_size=resize_size, crop_size=crop_size, seed=seed,
                      shard_id=shard_id, num_shards=num_shards, skip_bad_images=skip_bad_images,
                      device=device, fp16=fp16, check_images=check_images, **kwargs)


def _split_items(meta):
    """(image ids, class labels) of a split's metadata."""
    return list(meta.image_ids), [meta.class_labels[i] for i in meta.image_ids]
