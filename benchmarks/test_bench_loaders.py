"""Training-input throughput: the DALI CPU pipeline against the OpenCV loader
(wsol_fast.data.opencv.OpenCVLoader), with the same transforms (resize, random crop, flip, normalise)
and the same 2 threads / 2 worker processes.

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

from wsol_fast.data import dali  # noqa: E402

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
def test_train_epoch_throughput(benchmark, image_sets, image_set, provider):
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
        "threads_or_workers": THREADS, "batch": BATCH,
    })
