"""The loaders' reference transform, computed by hand with OpenCV (shared by the OpenCV and DALI tests)."""
import os

import cv2
import numpy as np
import torch

MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)


def cv2_normalised(path, size, crop=None, flip=False):
    """cv2 decode, INTER_LINEAR resize to size x size, crop ((y, x), c), flip, (x / 255 - mean) / std, CHW."""
    img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    if crop is not None:
        (y, x), c = crop
        img = img[y:y + c, x:x + c]
    if flip:
        img = img[:, ::-1]
    return torch.from_numpy(((img.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1).copy())


def write_jpegs(root, sizes, seed=0, dataset="DS"):
    """Smooth colour JPEGs of the given (h, w) under root/dataset (photo-like content); returns their ids."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, dataset), exist_ok=True)
    ids = []
    for k, (h, w) in enumerate(sizes):
        ids.append(f"img_{k:03d}.jpg")
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(os.path.join(root, dataset, ids[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return ids


def break_image(path, how):
    """Make an image file bad: truncated, garbage, empty, missing, or a JPEG whose markers and frame
    header (size) are intact but whose inside is broken (it passes the pre-scan and fails to decode)."""
    data = open(path, "rb").read()
    if how == "missing":
        os.remove(path)
        return
    with open(path, "wb") as fh:
        fh.write({"truncated": data[: len(data) // 3], "garbage": b"definitely not a JPEG " * 20,
                  "empty": b"", "bad-inside": broken_inside(data)}[how])


def broken_inside(jpeg: bytes) -> bytes:
    """The JPEG with its frame header's sample precision set to 7 bits: the size still reads from the
    header (the pre-scan passes) and libjpeg refuses to decode it ("Unsupported JPEG data precision 7")."""
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    data[sof + 4] = 7
    return bytes(data)
