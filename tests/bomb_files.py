"""Decompression bombs: small files that decode to 16000 x 16000 (256 MP; 768 MB as RGB, ~1.5 GB of peak
memory through cv2.imdecode, measured) or, for the JPEG made here, 8200 x 8200 (67 MP, above the
default cap of 64 MP).

tests/fuzz/bombs/ holds real ones, written once with Pillow: bomb.webp (38 bytes: lossless WebP of one
colour, `Image.new("RGB", (16000, 16000), (120, 30, 200)).save(path, lossless=True, quality=0,
method=0)`), bomb.tiff (16 KB: a one-bit image, `Image.new("1", (16000, 16000), 1).save(path,
compression="group4")`) and bomb.png (51 KB: the same one-bit image, `.save(path, optimize=True)`).
The JPEG is encoded here (a JPEG cannot be that small: ~0.8 MB), in about 0.3 s."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np

BOMBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz", "bombs")
FORMATS = ("webp", "png", "tiff", "jpeg")


def write_bomb(fmt: str, path) -> str:
    """A bomb of format `fmt` at `path` (any name: the loaders tell the format from the bytes)."""
    if fmt == "jpeg":
        gray = np.full((8200, 8200), 128, np.uint8)
        ok, data = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 1])
        assert ok
        data.tofile(str(path))
    else:
        shutil.copyfile(os.path.join(BOMBS, f"bomb.{fmt}"), str(path))
    return str(path)
