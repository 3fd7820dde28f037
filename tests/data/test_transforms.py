"""The loaders' resize is wsolevaluation's: torchvision's `transforms.Resize((h, w))` on a PIL image
(wsolevaluation data_loaders.py: `Image.open(path).convert('RGB')`, then `transforms.Resize((224, 224))` to
test, `Resize((256, 256))` + `RandomCrop(224)` + `RandomHorizontalFlip()` to train). Checked bit for bit on
scikit-image's sample photos (RGB and grayscale, square and not, shrunk and enlarged), for both backends
of wsol_fast.data.transforms (the C++ one and Pillow itself), and end to end through both loaders."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from resize_reference import pil_normalised, pil_resized  # noqa: E402
from torchvision import transforms as T

from wsol_fast.data import transforms

skdata = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")

BACKENDS = [pytest.param("cpp", marks=pytest.mark.skipif(transforms._cpp is None,
                                                         reason="wsol_fast._resize is not built")), "pillow"]
# Output sizes: the paper's 224 / 256, the built-in set's 73 / 64 (CPU profile), non-square, enlarging, 1 x 1.
SIZES = [(224, 224), (256, 256), (73, 73), (64, 64), (300, 200), (37, 410), (700, 900), (1, 1)]


def _photos() -> dict[str, np.ndarray]:
    photos = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea(),
              "rocket": skdata.rocket(), "camera-gray": skdata.camera()}
    photos["coffee-portrait"] = np.ascontiguousarray(photos["coffee"].transpose(1, 0, 2))   # 600 x 400
    # The built-in set's size range (120-200 px), and a tiny one.
    photos["chelsea-150x183"] = np.asarray(Image.fromarray(photos["chelsea"]).resize((183, 150), Image.BOX))
    photos["astronaut-13x17"] = np.ascontiguousarray(photos["astronaut"][200:213, 250:267])
    return photos


PHOTOS = _photos()


def _torchvision(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """The reference: torchvision's Resize((h, w)) applied to PIL.Image.fromarray(image)."""
    return np.asarray(T.Resize((h, w))(Image.fromarray(image)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(PHOTOS))
def test_resize_is_torchvision_resize_on_a_pil_image(name, backend):
    image = PHOTOS[name]
    for h, w in SIZES:
        want = _torchvision(image, h, w)
        got = transforms.resize(image, h, w, backend=backend)
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.array_equal(got, want), (name, h, w, np.abs(got.astype(int) - want).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_inputs(backend):
    """A grayscale image converted to RGB upstream (images.read_image_rgb, PIL's convert('RGB')) resizes
    like PIL's 'L' image, channel by channel; H x W and H x W x 1 inputs keep their shape."""
    gray = PHOTOS["camera-gray"]
    want = _torchvision(gray, 224, 224)
    assert np.array_equal(transforms.resize(gray, 224, 224, backend=backend), want)
    assert np.array_equal(transforms.resize(gray[..., None], 224, 224, backend=backend), want[..., None])
    rgb = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(transforms.eval_resize(rgb, 224), np.repeat(want[..., None], 3, axis=2))
    assert np.array_equal(transforms.resize(rgb, 224, 224, backend=backend), _torchvision(rgb, 224, 224))


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_crop_is_the_crop_of_the_pil_resize(backend):
    for name in ("astronaut", "coffee-portrait", "chelsea-150x183"):
        image = PHOTOS[name]
        for resize_size, crop_size in ((256, 224), (73, 64)):
            full = _torchvision(image, resize_size, resize_size)
            span = resize_size - crop_size
            for y, x in ((0, 0), (span, span), (0, span), (span // 2, 3)):
                got = transforms.resize(image, resize_size, resize_size, (y, x, crop_size, crop_size), backend)
                assert np.array_equal(got, full[y:y + crop_size, x:x + crop_size]), (name, resize_size, y, x)
                if backend == transforms.BACKEND:
                    assert np.array_equal(transforms.train_crop(image, resize_size, crop_size, y, x), got)


def test_hand_computed_shrink_4x4_to_2x2():
    """PIL's bilinear filter shrinking by 2: a triangle of support 2 (1 widened by the factor). Output
    column 0 is centred on source 1.0: sources 0, 1, 2 at distances 0.5, 0.5, 1.5, weights
    (1 - d/2) = 3/4, 3/4, 1/4, normalised to 3/7, 3/7, 1/7; column 1 (centre 3.0) weighs 1, 2, 3 by
    1/7, 3/7, 3/7. On rows [0, 70, 140, 210]: (0*3 + 70*3 + 140) / 7 = 50 and (70 + 140*3 + 210*3) / 7 =
    160 (constant columns keep their value through the vertical pass). cv2.INTER_LINEAR averages the two
    middle samples instead: 35 and 175."""
    image = np.repeat(np.array([[0, 70, 140, 210]], np.uint8), 4, axis=0)
    want = np.array([[50, 160], [50, 160]], np.uint8)
    assert np.array_equal(_torchvision(image, 2, 2), want)
    for backend in ("cpp", "pillow") if transforms._cpp is not None else ("pillow",):
        assert np.array_equal(transforms.resize(image, 2, 2, backend=backend), want)
    assert np.array_equal(cv2.resize(image, (2, 2), interpolation=cv2.INTER_LINEAR), [[35, 175], [35, 175]])


def test_batch_forms_are_the_single_ones():
    images = [PHOTOS["astronaut"], PHOTOS["chelsea-150x183"]]
    offsets = np.array([[3, 30], [32, 0]], np.int32)
    crops = transforms.train_crop_batch(images, offsets, resize_size=256, crop_size=224)
    for image, (y, x), crop in zip(images, offsets, crops):
        assert crop.flags.c_contiguous
        assert np.array_equal(crop, _torchvision(image, 256, 256)[y:y + 224, x:x + 224])
    for image, out in zip(images, transforms.eval_resize_batch(images, size=224)):
        assert np.array_equal(out, _torchvision(image, 224, 224))


def test_a_non_contiguous_view_resizes_like_its_copy():
    view = PHOTOS["astronaut"][::2, 10:300]
    assert np.array_equal(transforms.eval_resize(view, 64), _torchvision(np.ascontiguousarray(view), 64, 64))


def test_bad_arguments_name_themselves():
    image = PHOTOS["astronaut"]
    with pytest.raises(TypeError, match="uint8"):
        transforms.eval_resize(image.astype(np.float32), 64)
    with pytest.raises(ValueError, match="H x W x 3"):
        transforms.eval_resize(np.zeros((8, 8, 4), np.uint8), 4)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        transforms.resize(image, 0, 5)
    with pytest.raises(ValueError, match="box .* is not inside the 256 x 256"):
        transforms.train_crop(image, 256, 224, 40, 0)
    with pytest.raises(ValueError, match="backend must be"):
        transforms.resize(image, 5, 5, backend="cv2")


# ------------------------------------------------------------------------- both loaders, end to end

def _write_sources(root) -> list[str]:
    """The photos as JPEG (RGB and grayscale) and as PNG (grayscale, RGBA, palette) under root/DS."""
    os.makedirs(os.path.join(root, "DS"), exist_ok=True)
    files = {"astronaut.jpg": PHOTOS["astronaut"], "coffee-portrait.jpg": PHOTOS["coffee-portrait"],
             "chelsea-150x183.jpg": PHOTOS["chelsea-150x183"], "camera-gray.jpg": PHOTOS["camera-gray"][::2, ::2],
             "camera-gray.png": PHOTOS["camera-gray"][100:300, 50:400]}
    for name, image in files.items():
        Image.fromarray(image).save(os.path.join(root, "DS", name), quality=90)
    rgba = np.dstack([PHOTOS["rocket"][::3, ::3], np.full(PHOTOS["rocket"][::3, ::3].shape[:2], 120, np.uint8)])
    Image.fromarray(rgba).save(os.path.join(root, "DS", "rocket-rgba.png"))
    Image.fromarray(PHOTOS["chelsea"]).quantize(64).save(os.path.join(root, "DS", "chelsea-palette.png"))
    return sorted(os.listdir(os.path.join(root, "DS")))


def _make(kind, root, ids, **kw):
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
        from wsol_fast.data.dali import DaliLoader
        return DaliLoader(ids, list(range(len(ids))), str(root), "DS", num_threads=2, device="cpu", **kw)
    from wsol_fast.data.opencv import OpenCVLoader
    return OpenCVLoader(ids, list(range(len(ids))), str(root), "DS", num_workers=0, device="cpu", **kw)


@pytest.mark.parametrize("kind", ["opencv", "dali"])
def test_loaders_give_wsolevaluations_pixels(tmp_path, kind):
    """Eval (224) and train (256 -> crop 224 -> flip) batches of both loaders equal wsolevaluation's PIL +
    torchvision transform of the same file to float rounding (1e-5; one grey level is 0.017)."""
    ids = _write_sources(tmp_path)
    loader = _make(kind, tmp_path, ids, train=False, batch_size=3, crop_size=224)
    got = {i: x for images, _, batch in loader for i, x in zip(batch, images)}
    assert sorted(got) == ids
    for image_id in ids:
        want = pil_normalised(str(tmp_path / "DS" / image_id), 224)
        torch.testing.assert_close(got[image_id], want, atol=1e-5, rtol=0, msg=image_id)

    loader = _make(kind, tmp_path, ids, train=True, batch_size=2, resize_size=256, crop_size=224, seed=4)
    loader.set_epoch(2)
    off_y, off_x, flip = transforms.augment_draws(4, 2, 0, loader.sampler.per_rank, 256, 224)
    seen = 0
    for j, (x, image_id) in enumerate(pair for images, _, batch in loader for pair in zip(images, batch)):
        want = pil_normalised(str(tmp_path / "DS" / image_id), 256, ((off_y[j], off_x[j]), 224), bool(flip[j]))
        torch.testing.assert_close(x, want, atol=1e-5, rtol=0, msg=image_id)
        seen += 1
    assert seen == len(loader) * 2 and len(set(flip[:seen].tolist())) == 2


def test_pil_reference_is_wsolevaluations_uint8_resize(tmp_path):
    """The tests' reference (resize_reference.pil_resized) is the transform under test's definition."""
    ids = _write_sources(tmp_path)
    for image_id in ids:
        with Image.open(tmp_path / "DS" / image_id) as im:
            rgb = np.asarray(im.convert("RGB"))
        assert np.array_equal(pil_resized(str(tmp_path / "DS" / image_id), 224), transforms.eval_resize(rgb, 224))
