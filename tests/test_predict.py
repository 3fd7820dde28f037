"""`python -m wsol_fast.predict` on a tiny trained model: its boxes are the evaluation's boxes at the same
threshold, mapped back to the original image sizes; odd inputs work or are skipped and counted."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from test_train import TINY, _args, tiny_root  # noqa: F401  (the module-scoped tiny built-in set)
from wsol_fast import cam, checkpoint, evaluation, metrics, predict, runtime, train
from wsol_fast.config import TrainConfig, resolve
from wsol_fast.data import builtin
from wsol_fast.data import prepare_data
from wsol_fast.models import create_model


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("predict_run") / "run"
    assert train.main(_args(tiny_root, out, "--epochs", "1", "--no-tensorboard", "--num-overlays", "0")) == 0
    return out


def _read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_boxes_equal_the_evaluation_boxes_mapped_to_the_original_sizes(trained, tmp_path):
    """Same checkpoint, same threshold: the evaluation's GT-class score maps (evaluate_model, as the protocol
    scores them) give, through boxes_at_threshold and the protocol's box scaling back to each image's size,
    exactly the boxes predict reports for that class; top-1 accuracy and score maps agree as well."""
    ckpt = str(trained / "best.pt")
    state = checkpoint.load_checkpoint(ckpt)
    threshold = state["best"]["threshold"]
    cfg = resolve(TrainConfig.from_dict(state["config"]), "cpu")
    data = prepare_data(cfg.data, runtime.DistInfo(), torch.device("cpu"), batch_size=cfg.optim.batch_size,
                        splits=("test",))
    test_folder = os.path.join(data.image_root, "test")
    scoremaps = tmp_path / "scoremaps"
    out = tmp_path / "pred"
    assert predict.main([test_folder, "--checkpoint", ckpt, "--output", str(out), "--top-k", "10",
                         "--workers", "0", "--batch-size", "5", "--save-scoremaps", str(scoremaps),
                         "--device", "cpu"]) == 0
    records = {"test/" + r["id"]: r for r in _read_jsonl(out / "predictions.jsonl")}
    assert set(records) == set(data.test_meta.image_ids)
    other = 0.2 if abs(threshold - 0.2) > 0.05 else 0.45     # --threshold overrides the stored one
    assert predict.main([test_folder, "--checkpoint", ckpt, "--output", str(tmp_path / "other"), "--top-k", "10",
                         "--workers", "0", "--no-overlays", "--threshold", str(other)]) == 0
    overridden = {"test/" + r["id"]: r for r in _read_jsonl(tmp_path / "other" / "predictions.jsonl")}

    model = create_model(cfg.model.backbone, state["num_classes"], method=cfg.model.method, pretrained=None,
                         **cfg.model.overrides())
    model.load_state_dict(state["model"])
    cpu = torch.device("cpu")
    autocast = runtime.autocast_context(cpu, runtime.resolve_amp(cfg.runtime.amp, cpu))
    results = evaluation.evaluate_model(model, data.test_loader, data.test_meta, torch.device("cpu"), autocast, cfg,
                                      loc_threshold=threshold, overlays=TINY["num_test"])
    assert len(results["_samples"]) == TINY["num_test"]
    distinct = set()
    for image_id, gt_map, _ in results["_samples"]:
        rec = records[image_id]
        w, h = data.test_meta.sizes[image_id]
        assert (rec["width"], rec["height"], rec["threshold"]) == (w, h, threshold)
        label = data.test_meta.class_labels[image_id]
        expected = metrics.rescale_boxes(metrics.boxes_at_threshold(gt_map, threshold), cam.CAM_SIZE, (w, h))
        entry = next(e for e in rec["top_k"] if e["class"] == label)
        assert entry["boxes"] == expected.tolist(), image_id
        distinct.add(json.dumps(entry["boxes"]))
        expected = metrics.rescale_boxes(metrics.boxes_at_threshold(gt_map, other), cam.CAM_SIZE, (w, h))
        entry = next(e for e in overridden[image_id]["top_k"] if e["class"] == label)
        assert entry["boxes"] == expected.tolist() and overridden[image_id]["threshold"] == other
        if rec["class"] == label:   # the saved map is the top-1 class's, float32
            saved = np.load(scoremaps / (image_id[len("test/"):] + ".npy"))
            assert saved.shape == (224, 224) and saved.dtype == np.float32
            np.testing.assert_array_equal(saved, gt_map.astype(np.float32))
        assert rec["top_k"][0]["boxes"] == rec["boxes"]
        probs = [e["prob"] for e in rec["top_k"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert len(distinct) > 1          # not one trivial box for every image
    top1 = 100.0 * sum(r["class"] == data.test_meta.class_labels[i] for i, r in records.items()) / len(records)
    assert top1 == pytest.approx(results["top1_cls"])
    assert len(list((out / "overlays").rglob("*.png"))) == TINY["num_test"]


def _write_odd_images(folder, source):
    rgb = cv2.cvtColor(cv2.imread(source), cv2.COLOR_BGR2RGB)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    os.makedirs(folder / "sub", exist_ok=True)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(folder / "gray_as_rgb.png")
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "sub" / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "sub" / "cmyk.jpg")
    Image.fromarray(cv2.resize(rgb, (301, 37))).save(folder / "wide.JPG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")


def test_odd_images_work_and_unreadable_ones_are_skipped_and_counted(trained, tiny_root, tmp_path,  # noqa: F811
                                                                   capsys):
    source = os.path.join(builtin.data_root(tiny_root), "builtin", "test", "3")
    images = tmp_path / "mine"
    _write_odd_images(images, os.path.join(source, sorted(os.listdir(source))[0]))
    out = tmp_path / "pred"
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"{k + 1} {k + 1:03d}.digit_{k}\n" for k in range(10)))   # CUB's format
    code = predict.main([str(images), "--checkpoint", str(trained / "best.pt"), "--output", str(out),
                         "--class-names", str(names), "--workers", "1", "--batch-size", "2", "--top-k", "3"])
    assert code == 0
    err = capsys.readouterr()
    assert "broken.jpg" in err.err and "5 image(s) predicted, 1 skipped" in err.out
    recs = {r["id"]: r for r in _read_jsonl(out / "predictions.jsonl")}
    assert set(recs) == {"gray.png", "gray_as_rgb.png", "sub/rgba.png", "sub/cmyk.jpg", "wide.JPG"}
    assert (recs["wide.JPG"]["width"], recs["wide.JPG"]["height"]) == (301, 37)
    for r in recs.values():
        assert r["name"] == f"digit_{r['class']}" and len(r["top_k"]) == 3
        boxes = np.asarray(r["boxes"])
        assert (boxes >= 0).all() and (boxes[:, 2] < r["width"]).all() and (boxes[:, 3] < r["height"]).all()
        overlay = cv2.imread(r["overlay"])     # small images are drawn enlarged to a 320-pixel long side
        scale = 320 / max(r["width"], r["height"])
        assert overlay.shape[:2] == (round(r["height"] * scale), round(r["width"] * scale))
    # a grayscale file is decoded to the same RGB as its three-channel copy: the same prediction
    for key in ("class", "prob", "boxes", "top_k"):
        assert recs["gray.png"][key] == recs["gray_as_rgb.png"][key]
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers


def test_bad_arguments_are_errors_naming_them(trained, tmp_path, capsys):
    ckpt = str(trained / "best.pt")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    assert predict.main([str(tmp_path / "nothing_here"), "--checkpoint", ckpt]) == 2
    assert "nothing_here: no such file or folder" in capsys.readouterr().err
    assert predict.main([str(folder / "*.gif"), "--checkpoint", ckpt]) == 2
    assert "no .jpg/.jpeg/.png image found" in capsys.readouterr().err
    bad_names = tmp_path / "names.txt"
    bad_names.write_text("cat\ndog\n")
    assert predict.main([str(folder), "--checkpoint", ckpt, "--class-names", str(bad_names),
                         "--output", str(tmp_path / "o2")]) == 2
    assert "2 names for a model of 10 classes" in capsys.readouterr().err
    assert predict.main([str(folder), "--checkpoint", ckpt, "--threshold", "1.5",
                         "--output", str(tmp_path / "o3")]) == 2
    assert "--threshold must lie in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "o3" / "predictions.jsonl").exists()


def test_the_stored_threshold_is_the_checkpoints_epochs():
    """best.pt: the best dict's threshold; a last.pt of a later epoch: that epoch's val choice."""
    history = [{"epoch": 1, "val_threshold": 0.3}, {"epoch": 2, "val_threshold": 0.42}]
    best = {"epoch": 1, "threshold": 0.3, "maxboxacc_v2": 50.0}
    assert predict.checkpoint_threshold({"epoch": 1, "best": best, "history": history[:1]}, "b.pt") == 0.3
    assert predict.checkpoint_threshold({"epoch": 2, "best": best, "history": history}, "l.pt") == 0.42
    with pytest.raises(predict.PredictError, match="give --threshold"):
        predict.checkpoint_threshold({"epoch": 3, "best": best, "history": history}, "x.pt")


def test_top_k_below_one_is_an_error_naming_the_flag(trained, tmp_path, capsys):
    for k in ("0", "-1"):
        with pytest.raises(SystemExit) as exit_:
            predict.main([str(tmp_path), "--checkpoint", str(trained / "best.pt"), "--top-k", k])
        assert exit_.value.code == 2
        assert f"argument --top-k: must be >= 1, got {k}" in capsys.readouterr().err


def test_bombs_are_skipped_naming_them_at_bounded_memory(trained, tiny_root, tmp_path):  # noqa: F811
    """A WebP, PNG, TIFF and JPEG decompression bomb (tests/bomb_files.py), each named .jpg, beside one
    real image: each is skipped with a message naming it, refused from its header; the peak memory is
    within 200 MB of predicting the real image alone (one undefended decode of a bomb peaks at ~1.5 GB)."""
    from bomb_files import FORMATS, write_bomb
    from peak_rss import run_measured

    source = os.path.join(builtin.data_root(tiny_root), "builtin", "test", "3")
    real = os.path.join(source, sorted(os.listdir(source))[0])
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    for folder in (alone, mixed):
        folder.mkdir()
        (folder / "real.jpg").write_bytes(open(real, "rb").read())
    bombs = [write_bomb(fmt, mixed / f"bomb_{fmt}.jpg") for fmt in FORMATS]
    common = ["--checkpoint", trained / "best.pt", "--workers", "0", "--no-overlays", "--device", "cpu"]
    code, out, err, base = run_measured("wsol_fast.predict", [alone, *common, "--output", tmp_path / "o1"], tmp_path)
    assert code == 0, err
    code, out, err, peak = run_measured("wsol_fast.predict", [mixed, *common, "--output", tmp_path / "o2"], tmp_path)
    assert code == 0 and "1 image(s) predicted, 4 skipped" in out, out + err
    for path in bombs:
        line = next(line for line in err.splitlines() if path in line)
        assert "refusing to decode image" in line and "above the cap of 64 MP" in line, line
    assert "Traceback" not in err
    assert peak <= base + 200, f"predict: {peak:.0f} MiB with the bombs, {base:.0f} MiB without"


@pytest.mark.parametrize("content", [None, b"not a checkpoint"], ids=["missing", "garbage"])
def test_a_bad_checkpoint_is_one_error_line_and_exit_2(tmp_path, capsys, content):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    assert predict.main(["--checkpoint", str(path), str(image), "--output", str(tmp_path / "out"),
                         "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {path}"), err
