"""NVIDIA DALI input pipeline: the OpenCV loader's batches, decoded and transformed by DALI.

The sample order, sharding and augmentation draws come from Python (the same samplers as the OpenCV
loader), so both loaders see the same images in the same order and a run resumed mid-epoch continues
with exactly the crops and flips it would have drawn. DALI does the file reading, JPEG decoding
(libjpeg-turbo on the CPU; nvJPEG, `mixed`, on a GPU with resize="dali"), the resize, and
crop/flip/normalise.

    loader = DaliLoader(image_ids, labels, data_root, "CUB", train=True, batch_size=32, num_threads=2,
                        resize_size=256, crop_size=224, seed=0)
    loader.set_epoch(epoch, start)            # like the OpenCV loader (data/base.py)
    for images, labels, ids in loader: ...    # float32 (N,3,H,W), int64 (N,), list[str]

The resize (`resize=`): "exact" (the default, "auto") is wsolevaluation's resize, torchvision's `Resize`
on a PIL image, bit for bit: a `python_function` node runs `wsol_fast.data.transforms` (the OpenCV
loader's own code: C++ `wsol_fast._resize`, or Pillow) once per batch between DALI's decoder and its
crop_mirror_normalize. It needs host pixels, so with "exact" the JPEGs are decoded on the CPU (libjpeg-turbo)
even on a GPU, and only crop/flip/normalise run there. "dali" is DALI's own `fn.resize` (linear,
antialias=True) after nvJPEG (`mixed`) decoding on a GPU: meant to be faster there (not measured), but not
wsolevaluation's pixels. Measured on scikit-image photos (seven, 150 x 183 to 427 x 640, RGB and gray)
resized to 224, 256, 73, 64, 300 x 200 and 700 x 900, DALI's CPU fn.resize against Pillow: mean |diff|
0.003-0.22 levels but single pixels up to 14 levels off (target: mean <= 0.5, max <= 3;
benchmarks/results/cpu_resize.md), so it is not the default anywhere. (Before this, both paths
used a non-antialiased linear resize, cv2.INTER_LINEAR and fn.resize antialias=False.)

Alignment with the OpenCV loader (eval and train): the decoded pixels are identical on the CPU (both use
libjpeg-turbo's default islow IDCT here; other builds or nvJPEG on a GPU may differ by a few levels), the
resized pixels are identical with resize="exact" (the same function), and the normalised tensors agree to
float rounding (1e-6). The GPU paths ("exact" with device="cuda", and "dali") are not tested here: DALI was
not installed on the GPU machine lent to this project.
"""
from __future__ import annotations

import functools
import re

import numpy as np
import torch

from . import transforms
from .base import SplitLoader
from .images import IMAGENET_MEAN, IMAGENET_STD, BadImageError, image_problem


def dali_available() -> bool:
    """True when nvidia.dali and its PyTorch plugin import."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _build_pipeline(files, indices, aug_source, *, train, batch_size, num_threads, resize_size, crop_size,
                    device_id, fp16, seed, resize):
    """The DALI graph. `indices` (positions in the split) travel as the reader's labels, so every output
    sample names its image; `aug_source(iteration)` feeds per-sample crop regions, crop offsets and flips.
    resize: "exact" (a python_function running wsol_fast.data.transforms on CPU-decoded images) or "dali"
    (fn.resize, after GPU decoding on a GPU)."""
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
        images = fn.decoders.image(jpegs, device="mixed" if (gpu and resize == "dali") else "cpu",
                                   output_type=types.RGB, adjust_orientation=False)
        # DALI's own antialiased linear resize: close to Pillow's, not equal (see the module doc).
        linear = dict(interp_type=types.INTERP_LINEAR, antialias=True)
        normalise = dict(dtype=types.FLOAT16 if (fp16 and gpu) else types.FLOAT, output_layout="CHW",
                         mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD])
        if train:
            if resize == "exact":
                offsets, flip = fn.external_source(source=aug_source, num_outputs=2, batch=True)
                images = fn.python_function(images, offsets, batch_processing=True, function=functools.partial(
                    transforms.train_crop_batch, resize_size=resize_size, crop_size=crop_size))
                images = images.gpu() if gpu else images
            else:
                # Resize to resize_size then crop = one resize of the crop's input region (relative ROI):
                # the same sampling positions, ~25% fewer pixels to interpolate.
                roi_start, roi_end, flip = fn.external_source(source=aug_source, num_outputs=3, batch=True)
                images = fn.resize(images, size=(crop_size, crop_size), roi_start=roi_start, roi_end=roi_end,
                                   roi_relative=True, **linear)
            images = fn.crop_mirror_normalize(images, mirror=flip, **normalise)
        else:
            if resize == "exact":
                images = fn.python_function(images, batch_processing=True, function=functools.partial(
                    transforms.eval_resize_batch, size=crop_size))
                images = images.gpu() if gpu else images
            else:
                images = fn.resize(images, resize_x=crop_size, resize_y=crop_size, **linear)
            images = fn.crop_mirror_normalize(images, **normalise)
        return images, index

    return wsol_pipeline()


class DaliLoader(SplitLoader):
    """Iterable of (images, labels, ids) batches over one split, one DALI pipeline per pass (data/base.py:
    order and batches). Train: resize to resize_size, random crop_size crop (uniform integer offsets) and
    horizontal flip drawn from (seed, epoch, shard). Eval: resize to crop_size."""

    def __init__(self, image_ids, labels, data_root, dataset, *, train, batch_size, num_threads=2,
                 resize_size=256, crop_size=224, seed=0, shard_id=0, num_shards=1, skip_bad_images=False,
                 device=None, fp16=False, drop_last=None, check_images=True, resize="auto", sizes=None):
        super().__init__(image_ids, data_root, dataset, train=train, batch_size=batch_size,
                         resize_size=resize_size, crop_size=crop_size, seed=seed, shard_id=shard_id,
                         num_shards=num_shards, skip_bad_images=skip_bad_images, device=device,
                         drop_last=drop_last, check_images=check_images)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.size_mismatches = self.check_sizes(sizes)   # id -> (decoded (w, h), image_sizes.txt (w, h))
        self.num_threads, self.fp16 = num_threads, fp16
        if resize not in ("auto", "exact", "dali"):
            raise ValueError(f"resize must be 'auto', 'exact' or 'dali', got {resize!r}")
        # "auto" = "exact" on the CPU and on a GPU: the protocol's pixels (docs/spec.md §1.4) before DALI's speed.
        self.resize = "exact" if resize == "auto" else resize

    def _augment_draws(self, count: int):
        """Per-sample crop offsets and flips for the whole share of this epoch, so skipping `start`
        samples keeps the draws of the rest (exact resume)."""
        sp = self.sampler
        off_y, off_x, flip = transforms.shard_draws(self.seed, self.epoch, sp.size, sp.rank, sp.world_size,
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

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        order = self._order()
        steps = len(self)
        if steps == 0:
            return
        draws = self._augment_draws(len(order)) if self.train else None
        if draws is not None:  # the inputs the graph takes: (offsets, flip) or (roi_start, roi_end, flip)
            draws = draws[2:] if self.resize == "exact" else (draws[0], draws[1], draws[3])
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
            culprit = next((self.paths[k] for k in window if image_problem(self.paths[k])), None)
        reason = text.split("encountered:")[-1].replace("Current pipeline object is no longer valid.", "")
        reason = re.sub(r"\s+", " ", reason).strip()[:300]
        where = f"image {culprit!r}" if culprit else f"one of {[self.paths[k] for k in window]}"
        return (f"DALI failed to decode {where}: {reason} (it passed the pre-scan; fix or remove it: DALI "
                "cannot leave out an image mid-pass, --loader opencv --skip-bad-images can)")
