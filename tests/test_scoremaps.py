"""`evaluate --scoremap-root`: any method's saved score maps, scored with no model, must give exactly the
numbers of clovaai/wsolevaluation's `evaluate_wsol` for the same flags.

The reference here is a literal port of evaluate_wsol's reading, written from wsolevaluation's
data_loaders.py (not copied), over the literal metrics of tests/wsolevaluation_oracle.py: `evaluate_wsol` reads the metadata files
(get_image_ids / get_image_sizes / get_bounding_boxes / get_mask_paths), loads each map as
`np.load(<root>/<image_id>.npy)` cast to float64 (CamDataset + t2n), and accumulates it, in file
order, into BoxEvaluator (compute_bboxes_from_scoremaps per threshold, calculate_multiple_iou,
num_correct per IoU threshold, max over thresholds; multi_iou_eval averages the IoU thresholds, else
the IoU-50 entry) or MaskEvaluator (get_mask: nearest resize, > 0.5, union of instances, ignore box
minus foreground; np.histogram over thresholds + [1, 2, 3] in float; PR-curve area). Cases: generated
maps (float64 and float32 files, smooth and noisy), boxes (several per image, a duplicate line) and
masks (several instances, the ignore mask on the first line only)."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from wsol_fast import evaluate, evaluation, metrics, scoremaps
from wsol_fast.config import TrainConfig
from wsol_fast.data.metadata import SplitMetadata, load_metadata
import wsolevaluation_oracle as oracle

R = 224
# the box case repeats one box line on purpose (evaluate_wsol keeps it; it changes no number here)
pytestmark = pytest.mark.filterwarnings("ignore::wsol_fast.data.metadata.DuplicateLinesWarning")


# ---------------------------------------------------------------- literal port of evaluate_wsol

def _read(path):
    with open(path) as fh:
        return [line.strip("\n") for line in fh.readlines()]


def port_evaluate_wsol_boxes(scoremap_root, split_dir, interval, iou_list, multi_contour, multi_iou):
    ids = _read(os.path.join(split_dir, "image_ids.txt"))
    sizes = {}
    for line in _read(os.path.join(split_dir, "image_sizes.txt")):
        i, w, h = line.split(",")
        sizes[i] = (int(w), int(h))
    boxes = {}
    for line in _read(os.path.join(split_dir, "localization.txt")):
        i, *v = line.split(",")
        boxes.setdefault(i, []).append(tuple(int(x) for x in v))
    gt = {i: np.array([[int(float(c) * float(R) / float(sizes[i][k % 2])) for k, c in enumerate(b)]
                       for b in boxes[i]]) for i in ids}
    thresholds = list(np.arange(0, 1, interval))
    best = [oracle.best_ious(np.load(os.path.join(scoremap_root, i + ".npy")).astype(np.float64), gt[i], thresholds,
                             multi_contour) for i in ids]
    accs = oracle.maxboxacc(best, thresholds, iou_list)
    return accs, (np.average(accs) if multi_iou else accs[iou_list.index(50)])


def _port_mask(mask_root, paths, ignore_path):
    load = lambda f: cv2.resize(np.float32(cv2.imread(f, cv2.IMREAD_GRAYSCALE)), (R, R),  # noqa: E731
                                interpolation=cv2.INTER_NEAREST)
    fg = np.stack([load(os.path.join(mask_root, p)) > 0.5 for p in paths]).any(axis=0)
    ignore = load(os.path.join(mask_root, ignore_path)) > 0.5
    return oracle.label_map(fg, ignore)


def port_evaluate_wsol_masks(scoremap_root, split_dir, mask_root, interval):
    ids = _read(os.path.join(split_dir, "image_ids.txt"))
    paths, ignores = {}, {}
    for line in _read(os.path.join(split_dir, "localization.txt")):
        i, m, ig = line.split(",")
        if i in paths:
            paths[i].append(m)
            assert ig == ""
        else:
            paths[i], ignores[i] = [m], ig
    maps = [np.load(os.path.join(scoremap_root, i + ".npy")).astype(np.float64) for i in ids]
    labels = [_port_mask(os.path.join(mask_root, "OpenImages"), paths[i], ignores[i]) for i in ids]
    return oracle.pxap(maps, labels, interval)


# ---------------------------------------------------------------- generated cases

def _map(rng, noisy):
    yy, xx = np.mgrid[:R, :R]
    m = np.zeros((R, R))
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, R, 2)
        sx, sy = rng.uniform(8, 60, 2)
        m += rng.uniform(0.3, 1) * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    if noisy:   # textured: noise before the normalisation, blurred so the literal loop at 0.001 stays quick
        m += cv2.GaussianBlur(rng.uniform(0, 0.3, (R, R)), (0, 0), 2)
    return metrics.normalize_scoremap(m)


def _write(folder, name, lines):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as fh:
        fh.write("\n".join(lines) + ("\n" if lines else ""))


@pytest.fixture(scope="module")
def box_case(tmp_path_factory):
    """CUB-shaped test split: 7 images, 1-3 boxes each (one duplicated line), maps as .npy files."""
    root = tmp_path_factory.mktemp("box_case")
    rng = np.random.default_rng(3)
    ids, sizes, loc = [], [], []
    for k in range(7):
        image_id = f"test/{k % 3:03d}.Bird/img_{k}.jpg"
        w, h = int(rng.integers(120, 500)), int(rng.integers(120, 500))
        ids.append(image_id)
        sizes.append(f"{image_id},{w},{h}")
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            loc.append(f"{image_id},{x0},{y0},{int(rng.integers(x0 + 5, w))},{int(rng.integers(y0 + 5, h))}")
        m = _map(rng, noisy=k % 2 == 1)
        path = scoremaps.scoremap_path(str(root / "maps"), image_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, m.astype(np.float32) if k % 3 == 0 else m)     # float32 files are cast like t2n
    loc.append(loc[1])                                                # a duplicate line, as ILSVRC has
    split = root / "meta" / "CUB" / "test"
    _write(split, "image_ids.txt", ids)
    _write(split, "class_labels.txt", [f"{i},{n % 3}" for n, i in enumerate(ids)])
    _write(split, "image_sizes.txt", sizes)
    _write(split, "localization.txt", loc)
    return root


@pytest.fixture(scope="module")
def mask_case(tmp_path_factory):
    """OpenImages-shaped test split: 5 images, 1-2 instance masks of odd sizes, ignore on first lines."""
    root = tmp_path_factory.mktemp("mask_case")
    rng = np.random.default_rng(4)
    ids, loc = [], []
    mask_dir = root / "masks" / "OpenImages"
    for k in range(5):
        stem = f"test/0cls{k % 2}/{k:016x}"
        ids.append(stem + ".jpg")
        w, h = int(rng.integers(150, 400)), int(rng.integers(150, 400))
        for j in range(1 + k % 2):
            mask = np.zeros((h, w), np.uint8)
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            cv2.ellipse(mask, (x0 + 30, y0 + 30), (int(rng.integers(10, 60)), int(rng.integers(10, 60))),
                        0, 0, 360, 255, -1)
            name = f"{stem}_m0cls{k % 2}_{j:08x}.png"
            os.makedirs(os.path.dirname(mask_dir / name), exist_ok=True)
            cv2.imwrite(str(mask_dir / name), mask)
            loc.append(f"{stem}.jpg,{name}," + (f"{stem}_ignore.png" if j == 0 else ""))
        ignore = np.zeros((h, w), np.uint8)
        ignore[: h // 3, w // 2:] = 255
        cv2.imwrite(str(mask_dir / f"{stem}_ignore.png"), ignore)
        m = _map(rng, noisy=k % 2 == 0)
        if k == 0:
            m[:20, :20] = 1.0                                    # exact 1.0 values: the [1, 2) bin
        path = scoremaps.scoremap_path(str(root / "maps"), stem + ".jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, m)
    split = root / "meta" / "OpenImages" / "test"
    _write(split, "image_ids.txt", ids)
    _write(split, "class_labels.txt", [f"{i},{n % 2}" for n, i in enumerate(ids)])
    _write(split, "image_sizes.txt", [])
    _write(split, "localization.txt", loc)
    return root


def _run(capsys, root, dataset, *flags):
    out = root / ("out_" + "_".join(f.strip("-") for f in flags))
    rc = evaluate.main(["--scoremap-root", str(root / "maps"), "--metadata-root", str(root / "meta"),
                        "--dataset", dataset, "--split", "test", "--output", str(out), *flags])
    assert rc == 0, capsys.readouterr().err
    return json.loads((out / "results.json").read_text())


# ---------------------------------------------------------------- equality with the port

@pytest.mark.parametrize("interval", [0.01, 0.001])
@pytest.mark.parametrize("multi_contour", [True, False], ids=["V2", "V1"])
def test_box_scoring_equals_evaluate_wsol(box_case, capsys, interval, multi_contour):
    flags = ["--cam-curve-interval", str(interval)] + ([] if multi_contour else ["--no-multi-contour"])
    got = _run(capsys, box_case, "CUB", *flags, *(["--workers", "2"] if interval == 0.001 else []))
    split = str(box_case / "meta" / "CUB" / "test")
    accs, v2 = port_evaluate_wsol_boxes(str(box_case / "maps"), split, interval, [30, 50, 70], multi_contour,
                                        multi_iou=True)
    _, at50 = port_evaluate_wsol_boxes(str(box_case / "maps"), split, interval, [30, 50, 70], multi_contour,
                                       multi_iou=False)
    assert [got["maxboxacc"][k] for k in ("30", "50", "70")] == accs
    assert got["maxboxacc_v2"] == v2                 # evaluate_wsol(multi_iou_eval=True)
    assert got["maxboxacc"]["50"] == at50            # evaluate_wsol(multi_iou_eval=False)
    if not multi_contour:
        assert got["maxboxacc_v1"] == at50
    assert 0 < v2 < 100 and got["num_images"] == 7


def test_other_iou_thresholds(box_case, capsys):
    got = _run(capsys, box_case, "CUB", "--iou-thresholds", "10", "50", "90")
    accs, v2 = port_evaluate_wsol_boxes(str(box_case / "maps"), str(box_case / "meta" / "CUB" / "test"), 0.01,
                                        [10, 50, 90], True, multi_iou=True)
    assert [got["maxboxacc"][k] for k in ("10", "50", "90")] == accs and got["maxboxacc_v2"] == v2


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_pxap_scoring_equals_evaluate_wsol(mask_case, capsys, interval):
    flags = ["--mask-root", str(mask_case / "masks"), "--cam-curve-interval", str(interval)]
    got = _run(capsys, mask_case, "OpenImages", *flags)
    want = port_evaluate_wsol_masks(str(mask_case / "maps"), str(mask_case / "meta" / "OpenImages" / "test"),
                                    str(mask_case / "masks"), interval)
    assert got["pxap"] == want and 0 < want < 100
    two = _run(capsys, mask_case, "OpenImages", *flags, "--workers", "2")
    assert two["pxap"] == want
    assert 0 <= two["pxap_best_threshold"] <= 1


# ---------------------------------------------------------------- bad maps are clear errors

@pytest.mark.parametrize("how, message", [
    ("missing", "score map not found"),
    ("size", "has shape (100, 120); expected 224 x 224"),
    ("nan", "contains NaN"),
    ("range", "must lie in [0, 1]; min 0, max 1.5"),
    ("3d", "has shape (224, 224, 1)"),
    ("text", "cannot read the score map"),
])
def test_bad_map_is_an_error_naming_the_file(box_case, tmp_path, capsys, how, message):
    maps = tmp_path / "maps"
    meta = load_metadata(str(box_case / "meta"), "CUB", "test")
    for image_id in meta.image_ids:
        scoremaps.save_scoremap(str(maps), image_id, np.zeros((R, R)))
    victim = scoremaps.scoremap_path(str(maps), meta.image_ids[3])
    bad = {"size": np.zeros((100, 120)), "nan": np.full((R, R), np.nan), "3d": np.zeros((R, R, 1)),
           "range": np.concatenate([np.zeros((R - 1, R)), np.full((1, R), 1.5)])}
    if how == "missing":
        os.remove(victim)
    elif how == "text":
        with open(victim, "w") as fh:
            fh.write("not a numpy file")
    else:
        np.save(victim, bad[how])
    rc = evaluate.main(["--scoremap-root", str(maps), "--metadata-root", str(box_case / "meta"),
                        "--dataset", "CUB", "--split", "test"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"error: {victim}: ") and message in err


def test_missing_mask_root_and_missing_masks_are_errors(mask_case, capsys, tmp_path):
    args = ["--scoremap-root", str(mask_case / "maps"), "--metadata-root", str(mask_case / "meta"),
            "--dataset", "OpenImages", "--split", "test"]
    assert evaluate.main(args) == 2
    assert "give --mask-root" in capsys.readouterr().err
    assert evaluate.main(args + ["--mask-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mask file(s)" in err and os.path.join(str(tmp_path), "OpenImages", "test/0cls0/") in err


# ---------------------------------------------------------------- saving, fp32 CAMs, round trip

class _TinyCAM(torch.nn.Module):
    """A conv net with the model interface evaluate_model uses (forward_features, logits, class_map)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Conv2d(16, 3, 1)

    def forward_features(self, x, use_blocks=False):
        return self.conv(x), None

    def logits(self, features):
        return self.fc(features).mean((2, 3))

    def class_map(self, features, labels):
        cams = self.fc(features)
        return cams[torch.arange(len(labels)), labels]


def test_eval_cams_are_fp32_and_saved_maps_score_the_same(box_case, tmp_path):
    """wsolevaluation's CAMComputer computes the CAMs with a plain forward (no autocast) and saves the
    GT-class map, bicubic-resized to 224 and min-max normalised, as <log>/scoremaps/<image_id>.npy
    (np.save appends .npy to the id, extension included). evaluate_model must do the same under the
    trainer's bf16 autocast, and `--scoremap-root` on the saved maps must give its numbers back."""
    meta = load_metadata(str(box_case / "meta"), "CUB", "test")
    model = _TinyCAM()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(len(meta.image_ids), 3, 28, 28, generator=g)
    labels = torch.tensor([meta.labels[i] for i in meta.image_ids])
    loader = [(images[:4], labels[:4], meta.image_ids[:4]), (images[4:], labels[4:], meta.image_ids[4:])]
    cfg = TrainConfig()
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    saved = str(tmp_path / "maps")
    results = evaluation.evaluate_model(model, loader, meta, torch.device("cpu"), bf16, cfg, save_scoremaps=saved)
    with torch.no_grad():
        fp32 = model.class_map(model.forward_features(images)[0], labels).numpy()
        with bf16:
            low = model.class_map(model.forward_features(images)[0], labels).float().numpy()
    assert not np.array_equal(fp32, low)          # bf16 would change the maps: the test can tell
    for k, image_id in enumerate(meta.image_ids):
        path = scoremaps.scoremap_path(saved, image_id)
        assert path == os.path.join(saved, image_id + ".npy")
        m = np.load(path)
        assert m.dtype == np.float64 and m.shape == (R, R) and m.min() == 0.0 and m.max() == 1.0
        want = metrics.normalize_scoremap(cv2.resize(fp32[k].astype(np.float64), (R, R),
                                                     interpolation=cv2.INTER_CUBIC))
        np.testing.assert_array_equal(m, want)
    again = scoremaps.evaluate_scoremaps(saved, meta, cam_curve_interval=cfg.runtime.cam_curve_interval)
    assert again["maxboxacc"] == results["maxboxacc"] and again["maxboxacc_v2"] == results["maxboxacc_v2"]


def test_workers_merge_exactly(box_case):
    meta = load_metadata(str(box_case / "meta"), "CUB", "test")
    one = scoremaps.evaluate_scoremaps(str(box_case / "maps"), meta, workers=1)
    three = scoremaps.evaluate_scoremaps(str(box_case / "maps"), meta, workers=3)
    assert one["maxboxacc"] == three["maxboxacc"] and one["best_threshold"] == three["best_threshold"]


def test_a_split_without_boxes_or_masks_cannot_be_scored():
    meta = SplitMetadata("ILSVRC", "train", ["a.jpg"], {"a.jpg": 0}, 1)
    with pytest.raises(ValueError, match="neither boxes nor masks"):
        scoremaps.evaluate_scoremaps("maps", meta)
