"""wsolevaluation's input transform, written out with PIL and torchvision (data_loaders.py: the image opened
with PIL and converted to RGB, then transforms.Resize((size, size)), for training RandomCrop and
RandomHorizontalFlip, then ToTensor and Normalize). The loaders' tests compare against it."""
import numpy as np
import torch
from PIL import Image
from torchvision import transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def pil_resized(path, size, crop=None, flip=False) -> np.ndarray:
    """uint8 H x W x 3: PIL decode + convert('RGB'), transforms.Resize((size, size)) on the PIL image, the crop
    ((y, x), c) of it, the horizontal flip."""
    with Image.open(path) as im:
        img = np.asarray(transforms.Resize((size, size))(im.convert("RGB")))
    if crop is not None:
        (y, x), c = crop
        img = img[y:y + c, x:x + c]
    return img[:, ::-1] if flip else img


def pil_normalised(path, size, crop=None, flip=False) -> torch.Tensor:
    """`pil_resized` through ToTensor and Normalize: float32 3 x H x W."""
    img = np.array(pil_resized(path, size, crop, flip))  # a writable copy for ToTensor
    return transforms.Normalize(MEAN, STD)(transforms.ToTensor()(img))
