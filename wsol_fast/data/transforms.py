"""The geometric transforms of the wsolevaluation protocol on uint8 HWC images.

wsolevaluation (data_loaders.py) loads images with PIL and resizes them with torchvision's
`transforms.Resize((h, w))`, which on a PIL image is Pillow's `Image.resize((w, h), Image.BILINEAR)`: a
bilinear (triangle) filter whose support widens with the shrink factor, i.e. antialiased when shrinking,
in Pillow's 22-bit fixed point with a uint8 intermediate between its two passes. Every resize here gives
exactly those pixels (bit-identical; tests/data/test_transforms.py), by one of two backends:

* "cpp": `wsol_fast._resize` (csrc/resize.cpp), Pillow's arithmetic re-derived on 3-channel HWC arrays,
  computing only the crop's outputs: 2.6-3.7x less CPU time than Pillow per image, 2.4-4x more than the
  old cv2.INTER_LINEAR (benchmarks/test_bench_loaders.py; docs/operators.md "Input pipeline");
* "pillow": Pillow itself, when the extension is not built (WSOL_FAST_SKIP_CPP=1 or no compiler).

OpenCV's `cv2.INTER_LINEAR`, used here before, is not that resize: no antialiasing, so on photos shrunk to
224 it differs by 1.3-2.9 grey levels on average and by up to 103 at single pixels (to 64: up to 10 and 145).

One implementation for both CPU loaders: the OpenCV DataLoader's workers call it per image, and the DALI
pipeline calls it from a `python_function` node between DALI's JPEG decoder and its
crop/mirror/normalise, so the two loaders give bit-identical pixels.

Flips are not done here: the OpenCV loader flips the crop view, DALI flips inside crop_mirror_normalize.
Their random draws are: `augment_draws` gives both loaders the same crop offsets and flips.
"""
from __future__ import annotations

import numpy as np


def _pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


# Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the
# width; earlier Pillows always run the horizontal pass first. The orders round the intermediate image
# differently (a level apart at some pixels), so the C++ path follows the Pillow installed with torchvision.
PILLOW13 = _pillow_major() >= 13

try:
    from .. import _resize as _cpp
except ImportError:  # the extension is not built: Pillow itself (exact too, ~3x the CPU time)
    _cpp = None

BACKEND = "cpp" if _cpp is not None else "pillow"


def augment_draws(seed: int, epoch: int, shard_id: int, count: int, resize_size: int, crop_size: int):
    """(off_y, off_x, flip) int arrays for the `count` samples of a shard's epoch share: the crop's top
    left corner in the resize_size image and the flip. Both loaders draw here, so they crop alike."""
    gen = np.random.default_rng([seed, epoch, shard_id, 0xDA11])
    span = resize_size - crop_size
    off_x = gen.integers(0, span + 1, count)
    off_y = gen.integers(0, span + 1, count)
    flip = gen.integers(0, 2, count)
    return off_y, off_x, flip


def shard_draws(seed: int, epoch: int, size: int, rank: int, world_size: int, resize_size: int, crop_size: int):
    """augment_draws for rank `rank`'s share of an epoch of `size` samples: the draws belong to the sample's
    place in the epoch's order (the TrainSampler's, padded to an even split), not to the rank, so a sample
    gets the same crop and flip whatever the world size: W ranks at batch B train on exactly the crops of
    one process at batch W x B (docs/distributed.md). One rank: augment_draws(seed, epoch, 0, size, ...)."""
    off_y, off_x, flip = augment_draws(seed, epoch, 0, size, resize_size, crop_size)
    per_rank = -(-size // world_size)
    place = (np.arange(per_rank * world_size) % size)[rank::world_size]   # a padded place reuses its sample's
    return off_y[place], off_x[place], flip[place]


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 numpy array, got {getattr(image, 'dtype', type(image).__name__)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"image must be H x W x 3 (RGB), H x W x 1 or H x W, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    return image


def resize(image: np.ndarray, height: int, width: int, box: tuple[int, int, int, int] | None = None,
           backend: str | None = None) -> np.ndarray:
    """`image` (uint8 H x W x 3, H x W x 1 or H x W) resized to height x width exactly as torchvision's
    `Resize((height, width))` resizes `PIL.Image.fromarray(image)`; with box = (y, x, h, w), only that
    window of the resized image (the same pixels, computed alone). backend: "cpp", "pillow" or None
    (BACKEND). Returns a new contiguous array shaped like the input (h, w[, channels])."""
    image = _check_image(image)
    for name, value in (("height", height), ("width", width)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    height, width = int(height), int(width)
    y, x, h, w = (0, 0, height, width) if box is None else (int(v) for v in box)
    if h < 1 or w < 1 or y < 0 or x < 0 or y + h > height or x + w > width:
        raise ValueError(f"box (y {y}, x {x}, {h} x {w}) is not inside the {height} x {width} resized image")
    backend = backend or BACKEND
    if backend == "pillow":
        return _pillow_resize(image, height, width)[y:y + h, x:x + w].copy()
    if backend != "cpp":
        raise ValueError(f"backend must be 'cpp' or 'pillow', got {backend!r}")
    if _cpp is None:
        raise RuntimeError("backend='cpp': wsol_fast._resize is not built (python setup.py build_ext --inplace)")
    src = np.ascontiguousarray(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    out = np.empty((h, w) + image.shape[2:], np.uint8)
    _cpp.resize_crop(src, src.shape[0], src.shape[1], channels, height, width, y, x, h, w, PILLOW13, out)
    return out


def _pillow_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's Resize on a PIL image: Image.resize((width, height), BILINEAR), reducing_gap=None."""
    from PIL import Image

    squeeze = image.ndim == 3 and image.shape[2] == 1
    out = np.asarray(Image.fromarray(image[..., 0] if squeeze else image).resize((width, height), Image.BILINEAR))
    return out[..., None] if squeeze else out


def train_crop(image: np.ndarray, resize_size: int, crop_size: int, y: int, x: int) -> np.ndarray:
    """Resize to resize_size x resize_size (wsolevaluation's resize, see the module doc), then the
    crop_size x crop_size crop whose top-left corner is (y, x). Only the crop is computed."""
    return resize(image, resize_size, resize_size, (y, x, crop_size, crop_size))


def eval_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (wsolevaluation's resize, see the module doc)."""
    return resize(image, size, size)


def train_crop_batch(images, offsets, *, resize_size: int, crop_size: int) -> list[np.ndarray]:
    """`train_crop` over a batch: images, and (y, x) int offsets per sample (DALI's batch form)."""
    return [train_crop(im, resize_size, crop_size, int(o[0]), int(o[1])) for im, o in zip(images, offsets)]


def eval_resize_batch(images, *, size: int) -> list[np.ndarray]:
    """`eval_resize` over a batch (DALI's batch form)."""
    return [eval_resize(im, size) for im in images]
