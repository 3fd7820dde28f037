"""Image files: decoding, the cheap checks every image gets before a pass, and the ImageNet normalisation
constants. Below both loaders (OpenCV and DALI) and the predict command; needs neither.

Decoding: `read_image_rgb` turns JPEG/PNG, grayscale, CMYK JPEG (Adobe-inverted, as Photoshop writes
it) and RGBA (alpha dropped) into uint8 RGB. EXIF orientation is ignored, as in wsolevaluation (PIL), so
the decoded size is the one in image_sizes.txt that the boxes refer to.

The check (`image_problem`, `scan`): JPEG start and end markers (two small reads; other formats are
decoded) and the header's pixel count against the cap: about 10 us per file, against 0.13 ms for a full
decode of a built-in image and 1 ms for a 500 x 375 photo (measured on one core; CUB's 11,788 images
would take ~12 s to decode, ~0.1 s to check). A failure is a `BadImageError` naming the file, or, when
bad images are skipped, the image is left out and listed. `python -m wsol_fast.data check` decodes
every image to find the files that pass the check but do not decode.
"""
from __future__ import annotations

import os

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImageError(RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


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


def looks_like_image(path: str) -> bool:
    """The pre-scan's check of one file (`image_problem` finds nothing): JPEGs must start with SOI and end
    with EOI, which catches the common truncated download; no header may claim more than the pixel cap;
    other formats are decoded with OpenCV. A seam the tests replace to reach a loader's own failure."""
    return image_problem(path) is None


def find_bad_images(paths) -> list[int]:
    """Positions of the files that fail the cheap pre-scan (`looks_like_image`)."""
    return [k for k, path in enumerate(paths) if not looks_like_image(path)]


def scan(paths, skip: bool, what: str = "the split", use: str = "load") -> list[int]:
    """The one pre-scan of a split (prepare_data's, or a loader's own): positions of the files that fail
    the check. Unless `skip`, any is a BadImageError listing the first ten with their reasons; with `skip`,
    a split left with nothing to `use` is one too."""
    bad = find_bad_images(paths)
    if bad and not skip:
        shown = "\n  ".join(f"{paths[k]}: {image_problem(paths[k]) or 'unreadable'}" for k in bad[:10])
        raise BadImageError(
            f"{len(bad)} unreadable image(s) in {what} (missing, truncated or not an image):\n"
            f"  {shown}{chr(10) + '  ...' if len(bad) > 10 else ''}\nfix or remove them, or pass "
            "--skip-bad-images to leave them out")
    if bad and len(bad) == len(paths):
        raise BadImageError(f"every image of {what} ({len(paths)}) is unreadable (first: {paths[0]}); "
                            f"nothing is left to {use}")
    return bad


def _cv2_decodes(path: str) -> bool:
    import cv2
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return False
    return data.size > 0 and cv2.imdecode(data, cv2.IMREAD_COLOR) is not None


def read_image_rgb(path: str) -> np.ndarray:
    """Decode an image file to uint8 H x W x 3 RGB; a missing, truncated or undecodable file raises
    BadImageError naming it."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BadImageError(f"cannot read image {path!r}: {exc.strerror or exc}") from None
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8 and not (data[-2] == 0xFF and data[-1] == 0xD9):
        # libjpeg decodes a truncated JPEG with a grey bottom and only a warning: refuse it instead.
        raise BadImageError(f"cannot decode image {path!r}: truncated JPEG (no end-of-image marker)")
    big = too_many_pixels(path)   # from the header, before a decompression bomb is decoded
    if big:
        raise BadImageError(f"refusing to decode image {path!r}: {big}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise BadImageError(f"cannot decode image {path!r}: empty, not an image, or an unsupported format")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
