"""Training-input throughput: the DALI CPU pipeline against the OpenCV loader
(wsol_fast.data.opencv.OpenCVLoader), with the same transforms (resize, random crop, flip, normalise)
and the same 2 threads / 2 worker processes; and the resize alone, per image.

Resize rows (`test_resize_per_image`): the loaders' resize (wsolevaluation's: torchvision Resize on a PIL
image) by this package's C++ path (`cpp`, wsol_fast._resize) and by Pillow itself (`pillow`, what
torchvision runs), against the loaders' earlier non-antialiased cv2.INTER_LINEAR (`cv2-old`, not the
protocol's pixels), on a 500 x 375 photo (-> 256 and its 224 crop, the training transform; -> 224, the
evaluation one) and on built-in-set-sized images (150 x 183 and 120 x 200 -> 73 and its 64 crop; -> 64).
The epoch rows run with `resize=exact` (today's loaders), `exact-pillow` (the same pixels by Pillow) and
`cv2-old` (the earlier transforms, patched in), side by side.

Two image sets: (a) the built-in dataset (at its CPU profile's resize and crop) and (b) 400 photo-like
JPEGs of 500 x 375, CUB's typical size (resize 256, crop 224). The OpenCV loader runs twice: with
workers started per epoch (`opencv`) and with persistent workers, as the trainer runs it
(`opencv-persistent`). Each round is one epoch; extra_info holds images/s and CPU milliseconds per image
(this process, with DALI's threads, plus its worker processes: reaped ones from getrusage, live ones
from /proc), so the DataLoader's decoding counts. The `dali-gpu` row (mixed decoding) skips without CUDA.

    pytest benchmarks/test_bench_loaders.py --benchmark-only
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from wsol_fast.data import dali, transforms  # noqa: E402

THREADS = 2
BATCH = 32
CUB_LIKE = (400, 375, 500)  # count, height, width


def _live_children_cpu_seconds() -> float:
    """CPU seconds of this process's live child processes (persistent DataLoader workers), from /proc."""
    total, me, tick = 0.0, os.getpid(), os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields[1] = ppid; [11], [12] = utime, stime
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_seconds() -> float:
    """This process (DALI's threads) + reaped children (per-epoch workers) + live ones (persistent)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    live = _live_children_cpu_seconds() if os.path.isdir("/proc") else 0.0
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + live


def _photo_like_jpegs(root: str, count: int, h: int, w: int) -> list[str]:
    """Smooth colour fields plus grain: compresses and decodes like a photo (noise alone decodes slower)."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "CUBLIKE"), exist_ok=True)
    base = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    ids = []
    for k in range(count):
        img = cv2.add(np.roll(base, 7 * k, axis=1), rng.integers(0, 24, base.shape, dtype=np.uint8))
        ids.append(f"{k:04d}.jpg")
        cv2.imwrite(os.path.join(root, "CUBLIKE", ids[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return ids


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    """name -> (image ids, labels, data_root, dataset, resize_size, crop_size)."""
    root = str(tmp_path_factory.mktemp("bench_loaders"))
    sets = {"cub-like-500x375": (_photo_like_jpegs(root, *CUB_LIKE), None, root, "CUBLIKE", 256, 224)}
    from wsol_fast.config import BUILTIN_PROFILE
    from wsol_fast.data import builtin
    from wsol_fast.data.metadata import load_split
    meta_root = builtin.generate(root, progress=False)
    meta = load_split(meta_root, "builtin", "train")
    sets["builtin"] = (meta.image_ids, [meta.class_labels[i] for i in meta.image_ids],
                       builtin.data_root(root), "builtin", BUILTIN_PROFILE["resize_size"],
                       BUILTIN_PROFILE["crop_size"])
    return {k: (ids, labels or [0] * len(ids), *rest) for k, (ids, labels, *rest) in sets.items()}


def _cv2_train_crop(image, resize_size, crop_size, y, x):
    """The loaders' transform before wsolevaluation's resize was matched: cv2.INTER_LINEAR, no antialias."""
    image = cv2.resize(image, (resize_size, resize_size), interpolation=cv2.INTER_LINEAR)
    return image[y:y + crop_size, x:x + crop_size]


def _cv2_eval_resize(image, size):
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(params=["exact", "exact-pillow", "cv2-old"])
def resize(request, monkeypatch):
    """The loaders' resize for an epoch row: today's exact one (C++ backend), the same pixels by Pillow
    itself, or the earlier cv2 one patched in (the OpenCV loader's forked workers and DALI's
    python_function both look these names up at call time)."""
    if request.param == "exact-pillow":
        monkeypatch.setattr(transforms, "BACKEND", "pillow")
    if request.param == "cv2-old":
        from wsol_fast.data import opencv
        for module in (transforms, opencv):
            monkeypatch.setattr(module, "train_crop", _cv2_train_crop)
            monkeypatch.setattr(module, "eval_resize", _cv2_eval_resize)
    return request.param


def _photo(h: int, w: int) -> np.ndarray:
    from PIL import Image
    skdata = pytest.importorskip("skimage.data")
    return np.asarray(Image.fromarray(skdata.chelsea()).resize((w, h), Image.BOX))


# case -> (source images' (h, w), resize size, crop size or None)
RESIZE_CASES = {
    "500x375->256,crop224": ([(375, 500)], 256, 224),
    "500x375->256": ([(375, 500)], 256, None),
    "500x375->224": ([(375, 500)], 224, None),
    "builtin-150x183,120x200->73,crop64": ([(150, 183), (200, 120)], 73, 64),
    "builtin-150x183,120x200->64": ([(150, 183), (200, 120)], 64, None),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
@pytest.mark.parametrize("method", ["cpp", "pillow", "cv2-old"])
def test_resize_per_image(benchmark, case, method):
    if method == "cpp" and transforms.BACKEND != "cpp":
        pytest.skip("wsol_fast._resize is not built")
    sizes, size, crop = RESIZE_CASES[case]
    images = [_photo(h, w) for h, w in sizes]
    if method == "cv2-old":
        def one(im):
            return _cv2_train_crop(im, size, crop, 1, 2) if crop else _cv2_eval_resize(im, size)
    else:
        def one(im):
            box = (1, 2, crop, crop) if crop else None
            return transforms.resize(im, size, size, box, backend=method)

    def run():
        for im in images:
            one(im)

    benchmark.pedantic(run, rounds=200, iterations=1, warmup_rounds=5)
    benchmark.extra_info["images_per_call"] = len(images)
    benchmark.extra_info["ms_per_image"] = round(1000 * benchmark.stats.stats.median / len(images), 4)


def _make_loader(provider, ids, labels, data_root, dataset, resize_size, crop_size):
    if provider.startswith("opencv"):
        from wsol_fast.data.opencv import OpenCVLoader
        # "opencv": workers started per epoch (their start-up is timed); "opencv-persistent": as the
        # trainer runs them. Their CPU time is counted either way (reaped or read from /proc).
        return OpenCVLoader(ids, labels, data_root, dataset, train=True, batch_size=BATCH, num_workers=THREADS,
                            resize_size=resize_size, crop_size=crop_size, device="cpu",
                            persistent_workers=provider == "opencv-persistent")
    device = "cuda" if provider == "dali-gpu" else "cpu"
    return dali.DaliLoader(ids, labels, data_root, dataset, train=True, batch_size=BATCH, num_threads=THREADS,
                           resize_size=resize_size, crop_size=crop_size, device=device)


@pytest.mark.parametrize("image_set", ["builtin", "cub-like-500x375"])
@pytest.mark.parametrize("provider", ["opencv", "opencv-persistent", "dali-cpu", "dali-gpu"])
def test_train_epoch_throughput(benchmark, image_sets, image_set, provider, resize):
    if provider.startswith("dali") and not dali.dali_available():
        pytest.skip("nvidia.dali is not installed")
    if provider == "dali-gpu" and not torch.cuda.is_available():
        pytest.skip("mixed (GPU) decoding needs CUDA")
    loader = _make_loader(provider, *image_sets[image_set])
    totals = {"images": 0, "wall": 0.0, "cpu": 0.0}

    def one_epoch():
        t0, c0, n = time.perf_counter(), _cpu_seconds(), 0
        for batch in loader:
            n += batch[0].shape[0]
        if provider == "dali-gpu":
            torch.cuda.synchronize()
        totals["images"] += n
        totals["wall"] += time.perf_counter() - t0
        totals["cpu"] += _cpu_seconds() - c0

    one_epoch()  # warm-up: page cache, worker start-up code paths, DALI allocations
    totals.update(images=0, wall=0.0, cpu=0.0)
    benchmark.pedantic(one_epoch, rounds=5, iterations=1)
    n = max(totals["images"], 1)
    benchmark.extra_info.update({
        "images_per_s": round(n / totals["wall"], 1),
        "cpu_ms_per_image": round(1000 * totals["cpu"] / n, 3),
        "wall_ms_per_image": round(1000 * totals["wall"] / n, 3),
        "threads_or_workers": THREADS, "batch": BATCH, "resize": resize,
    })
