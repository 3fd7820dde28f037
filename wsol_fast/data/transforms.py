"""The geometric transforms of the wsolevaluation protocol on uint8 HWC images, with OpenCV.

One implementation for both CPU loaders: the OpenCV DataLoader's workers call it per image, and the DALI
pipeline's CPU path calls it from a `python_function` node between DALI's JPEG decoder and its
crop/mirror/normalise, so the two loaders give bit-identical pixels on the CPU.

Flips are not done here: the OpenCV loader flips the crop view, DALI flips inside crop_mirror_normalize.
Their random draws are: `augment_draws` gives both loaders the same crop offsets and flips.
"""
from __future__ import annotations

import numpy as np


def augment_draws(seed: int, epoch: int, shard_id: int, count: int, resize_size: int, crop_size: int):
    """(off_y, off_x, flip) int arrays for the `count` samples of a shard's epoch share: the crop's top
    left corner in the resize_size image and the flip. Both loaders draw here, so they crop alike."""
    gen = np.random.default_rng([seed, epoch, shard_id, 0xDA11])
    span = resize_size - crop_size
    off_x = gen.integers(0, span + 1, count)
    off_y = gen.integers(0, span + 1, count)
    flip = gen.integers(0, 2, count)
    return off_y, off_x, flip


def train_crop(image: np.ndarray, resize_size: int, crop_size: int, y: int, x: int) -> np.ndarray:
    """Resize to resize_size x resize_size (cv2.INTER_LINEAR: half-pixel centres, no antialias), then
    the crop_size x crop_size crop whose top-left corner is (y, x). Returns a view of the resized image."""
    import cv2

    image = cv2.resize(image, (resize_size, resize_size), interpolation=cv2.INTER_LINEAR)
    return image[y:y + crop_size, x:x + crop_size]


def eval_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (cv2.INTER_LINEAR)."""
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def train_crop_batch(images, offsets, *, resize_size: int, crop_size: int) -> list[np.ndarray]:
    """`train_crop` over a batch: images, and (y, x) int offsets per sample (DALI's batch form)."""
    return [np.ascontiguousarray(train_crop(im, resize_size, crop_size, int(o[0]), int(o[1])))
            for im, o in zip(images, offsets)]


def eval_resize_batch(images, *, size: int) -> list[np.ndarray]:
    """`eval_resize` over a batch (DALI's batch form)."""
    return [eval_resize(im, size) for im in images]
