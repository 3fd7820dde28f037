"""The loaders' reference transform, computed by hand with OpenCV (shared by the OpenCV and DALI tests)."""
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
