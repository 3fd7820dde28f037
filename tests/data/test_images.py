"""wsol_fast.data.images: decoding to RGB and the warning about images that lead outside the data root
(the decoders' checks on broken files are in test_bombs.py and tests/fuzz)."""
from __future__ import annotations

import os

import cv2
import numpy as np

from wsol_fast.data import images


def test_read_image_rgb_returns_rgb(tmp_path):
    bgr = np.zeros((3, 5, 3), np.uint8)
    bgr[..., 2] = 255                                        # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = images.read_image_rgb(str(tmp_path / "red.png"))
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8 and rgb[0, 0].tolist() == [255, 0, 0]


def test_symlinks_leading_outside_the_root_are_named(tmp_path, capsys):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "inside.jpg").write_bytes(b"x")
    (elsewhere / "outside.jpg").write_bytes(b"x")
    os.symlink(elsewhere / "outside.jpg", root / "link.jpg")
    paths = [str(root / "inside.jpg"), str(root / "link.jpg")]
    assert images.warn_escaping_symlinks(paths, str(root)) == [str(root / "link.jpg")]
    assert "1 image path(s) lead outside the data root" in capsys.readouterr().err
    assert images.warn_escaping_symlinks(paths[:1], str(root)) == []
