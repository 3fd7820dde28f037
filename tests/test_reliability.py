"""The failure drills of issue 17: each case provokes one failure the way a user meets it and asserts the
exit code and a phrase of the message (and what is left on disk), so none of them regresses.

Runs are tiny (the built-in generator at 16 train / 4 val / 4 test images, VGG16 at its minimum crop
of 32, batch 8, so 2 steps per epoch, no worker processes) and called in-process through `main`; a
subprocess only where the exit status of a real process is the point (SIGTERM).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from wsol_fast import checkpoint, errors, evaluate, files, runlock, runtime, train, train_args
from wsol_fast.data import __main__ as data_cli
from wsol_fast.data import builtin, dali, images, opencv, pipeline
from wsol_fast.data.metadata import MetadataError, load_splits
from image_reference import broken_inside
from interrupting import InterruptingLoader

TINY = dict(num_train=16, num_val=4, num_test=4, min_size=40, max_size=48)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_builtin"))
    builtin.generate(root, seed=0, progress=False, **TINY)
    return root


def _args(root, out, *extra):
    return ["--backbone", "vgg16", "--method", "icl", "--dataset", "builtin",
            "--data-root", builtin.data_root(root), "--metadata-root", builtin.metadata_root(root),
            "--batch-size", "8", "--resize-size", "36", "--crop-size", "32", "--workers", "0",
            "--loader", "opencv", "--amp", "off", "--no-channels-last", "--no-compile", "--lr", "0.002",
            "--output", str(out), "--num-overlays", "0", "--seed", "1", "--block-warmup-epochs", "0", *extra]


@pytest.fixture(scope="module")
def full_run(tiny_root, tmp_path_factory):
    """The uninterrupted 2-epoch run (2 steps per epoch) that interrupted runs must end up equal to."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert train.main(_args(tiny_root, out, "--epochs", "2")) == 0
    return out


def _copy_data(tiny_root, dest) -> str:
    shutil.copytree(tiny_root, dest)
    return str(dest)


def _meta_file(root, split, name):
    return os.path.join(builtin.metadata_root(root), "builtin", split, name)


def _image_path(root, image_id):
    return os.path.join(builtin.data_root(root), "builtin", image_id)


def _first_id(root, split):
    return open(_meta_file(root, split, "image_ids.txt")).readline().strip()


def _garbage_jpeg(path):
    """The JPEG at `path` with intact markers and size but a broken inside: passes the pre-scan (its
    header gives its size), fails to decode."""
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(broken_inside(data))


def _same_weights(a, b):
    wa, wb = checkpoint.load_checkpoint(a)["model"], checkpoint.load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _no_temp_files(folder):
    return [n for n in os.listdir(folder) if ".tmp" in n]


# ----------------------------------------------------------------------------- 1. signals

def test_sigterm_mid_epoch_exits_143_then_resume_equals_the_uninterrupted_run(tiny_root, full_run, tmp_path):
    """A real process gets SIGTERM during epoch 2's first step: it finishes the step, writes last.pt at
    (epoch index 1, 1 step) and exits 143; a stale temp file of an earlier crash is removed at start-up of
    the resume, which ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "from wsol_fast import train\n"
        "from wsol_fast.data import pipeline\n"
        "real = pipeline.make_train_loader\n"
        "class Wrap:\n"
        "    def __init__(self, inner): self.inner, self.n = inner, 0\n"
        "    def set_epoch(self, *a): self.inner.set_epoch(*a)\n"
        "    def __len__(self): return len(self.inner)\n"
        "    def __iter__(self):\n"
        "        for batch in self.inner:\n"
        "            self.n += 1\n"
        "            if self.n == 3: os.kill(os.getpid(), signal.SIGTERM)\n"
        "            yield batch\n"
        "pipeline.make_train_loader = lambda *a, **k: Wrap(real(*a, **k))\n"
        "sys.exit(train.main(sys.argv[1:]))\n")
    # The same thread count as this process, which trains the reference and the resume: bit-equal sums.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", script, *_args(tiny_root, out, "--epochs", "2")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "SIGTERM: stopped at epoch 2, step 1" in done.stderr
    state = checkpoint.load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 1)
    (out / "last.pt.tmp-99999").write_bytes(b"half a checkpoint")   # as a kill -9 mid-save leaves it
    assert state["partial"]["steps"] == 1            # epoch 2's metrics row so far travels with it
    assert train.main(["--resume", str(out / "last.pt")]) == 0
    assert _no_temp_files(out) == []
    _same_weights(full_run / "last.pt", out / "last.pt")
    # the resumed epoch's metrics.csv row counts both of its steps, as the uninterrupted run's (issue 27)
    import csv
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    full = list(csv.DictReader(open(full_run / "metrics.csv")))
    assert [r["steps"] for r in rows] == [r["steps"] for r in full] == ["2", "2"]
    for key in ("loss", "loss_cls", "loss_ca", "loss_fc"):
        assert float(rows[1][key]) == pytest.approx(float(full[1][key]), rel=1e-6), key


def test_double_sigint_waits_for_the_save_and_the_checkpoint_holds_its_step(tiny_root, full_run, tmp_path,
                                                                            monkeypatch, capsys):
    """Ctrl-C during epoch 2's first step and a second one in the middle of writing the checkpoint: the
    save completes (no temp file), exit 130, and the checkpoint records the step whose weights it holds
    (a resume ends with the uninterrupted run's weights)."""
    out = tmp_path / "run"
    real_make, real_write = pipeline.make_train_loader, files._write_all
    calls = {"batches": 0, "writes": 0}

    def write_with_a_signal(fh, data):
        if calls["batches"] >= 3 and fh.name.endswith(f"last.pt.tmp-{os.getpid()}"):
            calls["writes"] += 1
            fh.write(bytes(data)[:100])
            os.kill(os.getpid(), signal.SIGINT)       # arrives while the file is half written
            fh.write(bytes(data)[100:])
        else:
            real_write(fh, data)

    monkeypatch.setattr(pipeline, "make_train_loader",
                        lambda *a, **k: InterruptingLoader(real_make(*a, **k), 3, calls))
    monkeypatch.setattr(files, "_write_all", write_with_a_signal)
    with pytest.raises(SystemExit) as stop:
        train.main(_args(tiny_root, out, "--epochs", "2"))
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT again: the checkpoint is being written" in err
    assert "SIGINT: stopped at epoch 2, step 1" in err
    assert calls["writes"] == 1                       # the save after the first Ctrl-C
    assert _no_temp_files(out) == []
    state = checkpoint.load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 1)
    monkeypatch.setattr(pipeline, "make_train_loader", real_make)
    monkeypatch.setattr(files, "_write_all", real_write)
    assert train.main(["--resume", str(out / "last.pt")]) == 0
    _same_weights(full_run / "last.pt", out / "last.pt")


# ----------------------------------------------------------------------------- 2. fail before training

@pytest.mark.parametrize("flag,value,phrase", [
    ("--cam-curve-interval", "0", "must be in (0, 1)"),
    ("--cam-curve-interval", "2", "must be in (0, 1)"),
    ("--cam-curve-interval", "-0.1", "must be in (0, 1)"),
    ("--epochs", "0", "must be >= 1"),
    ("--batch-size", "0", "must be >= 1"),
    ("--lr", "-1", "must be finite and >= 0"),
    ("--lr", "nan", "must be finite and >= 0"),
    ("--lr", "inf", "must be finite and >= 0"),
    ("--crop-size", "7", "vgg16 needs at least 32"),
    ("--drop-rate", "2", "must be in [0, 1]"),
    ("--gamma-fg", "-1", "must be in (0, 1]"),
    ("--gamma-bg", "0", "must be finite and > 0"),   # > 0: Table 1's 1.2 is a valid value
    ("--workers", "-3", "must be >= 0"),
    ("--max-steps-per-epoch", "0", "must be >= 1"),
])
def test_flag_ranges_are_checked_at_parse_time_naming_the_flag(tiny_root, tmp_path, capsys, flag, value, phrase):
    with pytest.raises(SystemExit) as exit_info:
        train.main(_args(tiny_root, tmp_path / "run", flag, value))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and phrase in err
    assert not (tmp_path / "run").exists()


def test_minimum_crop_table_is_what_the_networks_need():
    """train_args.MIN_CROP: at the minimum the class map is 2 x 2; one pixel less it is smaller or fails."""
    from wsol_fast.models import create_model

    for backbone, low in train_args.MIN_CROP.items():
        model = create_model(backbone, 3, method="icl", pretrained=None).eval()
        with torch.no_grad():
            def cam_side(size):
                try:
                    feats, _ = model.forward_features(torch.zeros(1, 3, size, size), use_blocks=False)
                    return min(model.class_map(feats, torch.tensor([0])).shape[-2:])
                except RuntimeError:
                    return 0
            assert cam_side(low) >= 2 and cam_side(low - 1) < 2, backbone


def test_batch_larger_than_the_split_is_an_error_unless_partial_batches_are_allowed(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(_args(tiny_root, out, "--epochs", "1", "--batch-size", "20")) == 2
    assert "--batch-size 20 is larger than the train split (16 images)" in capsys.readouterr().err
    assert not (out / "last.pt").exists()
    assert train.main(_args(tiny_root, out, "--epochs", "1", "--batch-size", "20", "--allow-partial-batches")) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[rows[0].split(",").index("steps")] == "1"    # one batch of 16


def test_an_image_failing_to_decode_in_val_keeps_the_trained_epoch_or_is_skipped_and_listed(tiny_root, tmp_path,
                                                                                             capsys):
    """A JPEG with intact markers but a garbage body passes the pre-scan and fails in the val pass after
    epoch 1 trained: exit 2 naming it, epoch 1's last.pt kept; with --skip-bad-images the run finishes,
    the id is in skipped_images.txt and val/test counts stay consistent."""
    root = _copy_data(tiny_root, tmp_path / "data")
    bad = _first_id(root, "val")
    _garbage_jpeg(_image_path(root, bad))
    out = tmp_path / "run"
    assert train.main(_args(root, out, "--epochs", "1", "--max-steps-per-epoch", "1")) == 2
    err = capsys.readouterr().err
    assert "error: cannot decode image" in err and bad in err and "--skip-bad-images" in err
    assert "epoch 1's training is kept" in err
    assert checkpoint.load_checkpoint(out / "last.pt")["epoch"] == 1
    out2 = tmp_path / "skip"
    assert train.main(_args(root, out2, "--epochs", "1", "--max-steps-per-epoch", "1", "--skip-bad-images")) == 0
    assert "did not decode" in capsys.readouterr().err
    assert (out2 / "skipped_images.txt").read_text().split() == [bad]
    assert json.loads((out2 / "results.json").read_text())["num_images"] == TINY["num_test"]


def test_a_train_image_failing_mid_epoch_keeps_the_steps_done(tiny_root, tmp_path, capsys):
    """The failing batch is not trained; the steps before it are saved (epoch 1, step k) and resumable."""
    root = _copy_data(tiny_root, tmp_path / "data")
    ids = open(_meta_file(root, "train", "image_ids.txt")).read().split()
    loader = opencv.OpenCVLoader(ids, [0] * len(ids), builtin.data_root(root), "builtin", train=True,
                                 batch_size=8, num_workers=0, resize_size=36, crop_size=32, seed=1,
                                 check_images=False)
    loader.set_epoch(0)
    second_batch = [ids[item[0]] for item in list(loader._plan)[8:16]]   # epoch 1's sample order
    victim = second_batch[0]
    _garbage_jpeg(_image_path(root, victim))
    out = tmp_path / "run"
    assert train.main(_args(root, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert victim in err and "passed the pre-scan but does not decode" in err
    state = checkpoint.load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 1)


def test_every_test_image_skipped_is_an_error_after_training_that_keeps_the_checkpoints(tiny_root, tmp_path,
                                                                                         capsys):
    root = _copy_data(tiny_root, tmp_path / "data")
    for image_id in open(_meta_file(root, "test", "image_ids.txt")).read().split():
        _garbage_jpeg(_image_path(root, image_id))
    out = tmp_path / "run"
    assert train.main(_args(root, out, "--epochs", "1", "--max-steps-per-epoch", "1", "--skip-bad-images")) == 2
    err = capsys.readouterr().err
    assert "every image of the test split (4) failed to decode" in err
    assert checkpoint.load_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "best.pt").is_file()
    assert os.path.samefile(out / "best.pt", out / "last.pt")   # epoch 1 is the best: one file, linked
    assert len((out / "skipped_images.txt").read_text().split()) == 4
    assert not (out / "results.json").exists()


# ----------------------------------------------------------------------------- 3. resource limits

def _png_header_claiming(path, width, height):
    """A small PNG whose IHDR claims width x height (valid CRC; the pixel data does not follow)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    chunk = b"IHDR" + ihdr
    body = len(ihdr).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    idat = zlib.compress(b"\0" * 4096)
    body += len(idat).to_bytes(4, "big") + b"IDAT" + idat + zlib.crc32(b"IDAT" + idat).to_bytes(4, "big")
    body += (0).to_bytes(4, "big") + b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big")
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + body)


def test_decoded_pixels_are_capped_from_the_header_before_decoding(tiny_root, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    _png_header_claiming(bomb, 30000, 30000)
    assert images.header_size(str(bomb)) == (30000, 30000)
    with pytest.raises(images.BadImageError, match="claims 30000x30000 = 900 MP, above the cap of 64 MP"):
        images.read_image_rgb(str(bomb))
    assert "above the cap" in images.image_problem(str(bomb))
    # settable: a real 40 x 40-ish image is refused under a cap of 100 pixels
    root = _copy_data(tiny_root, tmp_path / "data")
    victim = _first_id(root, "val")
    shutil.copy(bomb, _image_path(root, victim))
    assert data_cli.main(["check", "--metadata-root", builtin.metadata_root(root), "--data-root",
                          builtin.data_root(root), "--dataset", "builtin", "--no-progress"]) == 1
    assert "30000x30000 = 900 MP" in capsys.readouterr().out
    assert train.main(_args(root, tmp_path / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert victim in err and "above the cap of 64 MP (--max-image-pixels)" in err
    try:
        images.set_max_image_pixels(100)
        with pytest.raises(images.BadImageError, match="above the cap of 0.0001 MP"):
            images.read_image_rgb(_image_path(root, _first_id(root, "test")))
    finally:
        images.set_max_image_pixels(None)


def test_size_mismatch_is_a_check_error_and_a_training_warning_and_symlinks_out_of_root_are_named(
        tiny_root, tmp_path, capsys):
    root = _copy_data(tiny_root, tmp_path / "data")
    sizes_file = _meta_file(root, "val", "image_sizes.txt")
    lines = open(sizes_file).read().splitlines()
    image_id, w, h = lines[0].split(",")
    lines[0] = f"{image_id},{int(w) + 10},{h}"                 # boxes stay inside the listed size
    open(sizes_file, "w").write("\n".join(lines) + "\n")
    outside = tmp_path / "elsewhere.jpg"
    linked = _first_id(root, "test")
    shutil.move(_image_path(root, linked), outside)
    os.symlink(outside, _image_path(root, linked))
    assert data_cli.main(["check", "--metadata-root", builtin.metadata_root(root), "--data-root",
                          builtin.data_root(root), "--dataset", "builtin", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"decoded size {w}x{h} differs from image_sizes.txt ({int(w) + 10}x{h})" in out
    assert train.main(_args(root, tmp_path / "run", "--epochs", "1", "--max-steps-per-epoch", "1")) == 0
    err = capsys.readouterr().err
    assert "warning: 1 image(s) decode to a size other than image_sizes.txt's" in err and image_id in err
    assert "lead outside the data root" in err and linked in err


def test_a_full_disk_says_so_names_the_file_and_leaves_nothing_partial(tiny_root, tmp_path, monkeypatch, capsys):
    """Checkpoint bytes go to /dev/full (a real ENOSPC); the run stops with exit 2 naming the file."""
    real_write = files._write_all

    def full_for_checkpoints(fh, data):
        if ".pt.tmp-" in fh.name:
            fh.write(bytes(data)[:1000])
            with open("/dev/full", "wb") as full:
                full.write(bytes(data))
                full.flush()
        real_write(fh, data)

    monkeypatch.setattr(files, "_write_all", full_for_checkpoints)
    out = tmp_path / "run"
    assert train.main(_args(tiny_root, out, "--epochs", "1", "--max-steps-per-epoch", "1")) == 2
    err = capsys.readouterr().err
    assert f"no space left on device writing {out / 'best.pt'}" in err
    assert _no_temp_files(out) == [] and not (out / "best.pt").exists()
    with pytest.raises(files.DiskFullError):
        checkpoint.atomic_save({"x": torch.zeros(3)}, str(tmp_path / "x.pt"))
    assert not os.path.exists(tmp_path / "x.pt") and _no_temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- 4. one run per folder

def test_one_run_per_folder(tiny_root, full_run, tmp_path, capsys):
    # a live run: another process holds the lock
    live = tmp_path / "live"
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               f"fh = open({str(live / '.lock')!r}, 'w'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
                               "fh.write(str(os.getpid())); fh.flush(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train.main(_args(tiny_root, live, "--epochs", "1")) == 2
        assert f"another run (pid {holder.pid}) is writing to this folder" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # a finished run is refused without --resume / --overwrite
    done = tmp_path / "done"
    shutil.copytree(full_run, done)
    assert train.main(_args(tiny_root, done, "--epochs", "1")) == 2
    assert "holds a finished run (results.json, last.pt, best.pt)" in capsys.readouterr().err
    # an interrupted one too
    os.remove(done / "results.json")
    assert train.main(_args(tiny_root, done, "--epochs", "1")) == 2
    assert "holds an interrupted run" in capsys.readouterr().err
    # --output naming a file
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert train.main(_args(tiny_root, afile, "--epochs", "1")) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    # --overwrite replaces it
    assert train.main(_args(tiny_root, done, "--epochs", "1", "--max-steps-per-epoch", "1", "--overwrite")) == 0
    assert checkpoint.load_checkpoint(done / "last.pt")["epoch"] == 1


# ----------------------------------------------------------------------------- 5. messages, not tracebacks

def test_bad_checkpoints_are_one_message_with_exit_2(full_run, tmp_path, capsys):
    ckpt = full_run / "best.pt"
    data = ckpt.read_bytes()
    truncated, rand, bare, misfit = (tmp_path / n for n in ("truncated.pt", "random.pt", "bare.pt", "misfit.pt"))
    truncated.write_bytes(data[: len(data) // 2])
    rand.write_bytes(np.random.default_rng(0).bytes(5000))
    state = checkpoint.load_checkpoint(ckpt)
    torch.save(state["model"], bare)
    key = next(k for k, v in state["model"].items() if v.dim() == 4)     # a conv weight
    state["model"][key] = torch.zeros(3, 3)
    torch.save(state, misfit)
    cases = [(tmp_path / "missing.pt", "missing.pt: not found"),
             (truncated, "cannot be read (truncated, corrupt or not a PyTorch checkpoint)"),
             (rand, "cannot be read"),
             (bare, "is a bare state dict"),
             (misfit, "do not fit a vgg16 / icl model with 10 classes")]
    for path, phrase in cases:
        assert evaluate.main(["--checkpoint", str(path), "--output", str(tmp_path / "ev")]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("error:") and phrase in err and "Traceback" not in err, err
    assert train.main(["--resume", str(rand)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert train.main(["--resume", str(misfit)]) == 2
    err = capsys.readouterr().err
    assert f"do not fit a vgg16 / icl model with 10 classes: 1 of another shape (first: {key} (3, 3) vs" in err
    # --debug shows the traceback as well
    assert evaluate.main(["--checkpoint", str(bare), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "is a bare state dict" in err


def test_pretrained_of_another_backbone_is_a_message(tiny_root, tmp_path, capsys):
    other = tmp_path / "resnet_like.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    assert train.main(_args(tiny_root, tmp_path / "run", "--epochs", "1", "--pretrained", str(other))) == 2
    err = capsys.readouterr().err
    assert "is not a torchvision vgg16 checkpoint" in err and "Traceback" not in err


def test_metadata_encoding_bom_and_label_ranges(tiny_root, tmp_path, capsys):
    root = _copy_data(tiny_root, tmp_path / "data")
    meta_root = builtin.metadata_root(root)
    labels = _meta_file(root, "train", "class_labels.txt")
    original = open(labels, "rb").read()
    # a UTF-8 BOM is dropped, the ids read as they are
    ids_file = _meta_file(root, "train", "image_ids.txt")
    ids = open(ids_file).read().split()
    open(ids_file, "wb").write(b"\xef\xbb\xbf" + "\n".join(ids).encode() + b"\n")
    assert load_splits(meta_root, "builtin", ("train",))["train"].image_ids == ids
    # a file that is not UTF-8 names the file and line
    lines = original.split(b"\n")
    open(labels, "wb").write(b"\n".join(lines[:2] + [lines[2].replace(b"train", b"tr\xe9in")] + lines[3:]))
    assert train.main(_args(root, tmp_path / "a", "--epochs", "1")) == 2
    assert f"{labels}:3: not UTF-8 text" in capsys.readouterr().err
    # a test label the model never saw (train has 10 classes): file and line
    open(labels, "wb").write(original)
    test_labels = _meta_file(root, "test", "class_labels.txt")
    tl = open(test_labels).read().splitlines()
    tl[2] = tl[2].rsplit(",", 1)[0] + ",10"
    open(test_labels, "w").write("\n".join(tl) + "\n")
    assert train.main(_args(root, tmp_path / "b", "--epochs", "1")) == 2
    assert f"{test_labels}:3: bad class label 10: out of range for 10 classes" in capsys.readouterr().err
    with pytest.raises(MetadataError, match="out of range for 10 classes"):
        load_splits(meta_root, "builtin", ("val", "test"), num_classes=10)   # evaluate's path
    # a typo in train (999) would make a 1000-class model: refused unless --num-classes says so
    tr = original.decode().splitlines()
    tr[6] = tr[6].rsplit(",", 1)[0] + ",999"
    open(labels, "w").write("\n".join(tr) + "\n")
    with pytest.raises(MetadataError, match=r"class_labels.txt:7: class label 999 implies 1000 classes"):
        load_splits(meta_root, "builtin", ("train",))
    assert load_splits(meta_root, "builtin", ("train",), num_classes=1000)["train"].num_classes == 1000


def test_resume_refuses_changed_settings_but_extends_with_epochs(tiny_root, full_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "4", "--lr", "0.5", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "cannot change on a resume: --batch-size: run 8, now 4; --lr: run 0.002, now 0.5" in err
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "3", "--max-steps-per-epoch", "4"]) == 2
    assert "--max-steps-per-epoch: run None, now 4" in capsys.readouterr().err
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "3"]) == 0
    state = checkpoint.load_checkpoint(run / "last.pt")
    assert state["epoch"] == 3 and state["config"]["optim"]["epochs"] == 3
    assert len((run / "metrics.csv").read_text().splitlines()) == 4     # header + 3 epochs


def test_nan_message_names_only_a_checkpoint_that_exists(tiny_root, tmp_path, monkeypatch, capsys):
    real_call = train.WSOLLoss.__call__

    def poisoned(self, output, labels):
        terms = real_call(self, output, labels)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(train.WSOLLoss, "__call__", poisoned)
    out = tmp_path / "nan"
    assert train.main(_args(tiny_root, out, "--epochs", "1")) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 1" in err and "no checkpoint was written yet" in err
    assert not (out / "last.pt").exists()


def test_evaluate_flags_and_data_check_errors_are_messages(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", "x.pt", "--cam-curve-interval", "0"])
    assert exit_info.value.code == 2 and "argument --cam-curve-interval" in capsys.readouterr().err
    bad = tmp_path / "meta" / "CUB" / "train"
    bad.mkdir(parents=True)
    (bad / "image_ids.txt").write_bytes(b"a.jpg\n\xff\xfe.jpg\n")
    (bad / "class_labels.txt").write_text("a.jpg,0\n")
    assert data_cli.main(["check", "--metadata-root", str(tmp_path / "meta"), "--data-root", str(tmp_path),
                          "--splits", "train", "--no-progress"]) == 2
    assert f"error: {bad / 'image_ids.txt'}:2: not UTF-8 text" in capsys.readouterr().err


def test_atomic_write_failure_of_another_kind_also_leaves_nothing(tmp_path, monkeypatch):
    def broken(fh, data):
        fh.write(b"partial")
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, "_write_all", broken)
    with pytest.raises(OSError, match="I/O error"):
        files.atomic_write("hello", str(tmp_path / "a.txt"))
    assert os.listdir(tmp_path) == []


def test_lock_is_dropped_when_the_holder_ends(tmp_path):
    lock = runlock.RunLock(str(tmp_path)).acquire()
    with pytest.raises(errors.UserError, match=f"pid {os.getpid()}"):
        runlock.RunLock(str(tmp_path)).acquire()
    lock.release()
    runlock.RunLock(str(tmp_path)).acquire().release()
    with open(tmp_path / ".lock") as fh:                 # released: anyone can take it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_settings_that_clash_once_resolved_are_messages(tiny_root, tmp_path, capsys):
    """--crop-size above the profile's resize."""
    args = _args(tiny_root, tmp_path / "a", "--epochs", "1")
    args.remove("--resize-size")
    args.remove("36")                               # the built-in profile's resize is 73
    assert train.main([*args, "--crop-size", "100"]) == 2
    assert "--resize-size (73) must be >= --crop-size (100)" in capsys.readouterr().err


def test_loader_dali_without_dali_is_a_message(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dali, "dali_available", lambda: False)   # as where nvidia.dali is not installed
    args = _args(tiny_root, tmp_path / "b", "--epochs", "1")
    args[args.index("--loader") + 1] = "dali"
    assert train.main(args) == 2
    assert "--loader dali: nvidia.dali is not installed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 27: every command, one line

def _one_error_line(err: str) -> str:
    """The single stderr line of an expected failure (and nothing else), never quoting torch's advice."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "weights_only" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def bad_checkpoints(full_run, tmp_path_factory):
    """name -> (path, phrase): the checkpoint drills of issue 27 (missing, truncated, random bytes, a
    malicious pickle, weights that do not fit, a bare state dict)."""
    folder = tmp_path_factory.mktemp("bad_ckpts")
    data = (full_run / "best.pt").read_bytes()
    state = checkpoint.load_checkpoint(full_run / "best.pt")

    class Evil:   # unpickling it would run a shell command: a weights-only load refuses it
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save({**state, "model": Evil()}, folder / "malicious.pt")
    misfit = dict(state, model=dict(state["model"]))
    key = next(k for k, v in misfit["model"].items() if v.dim() == 4)
    misfit["model"][key] = torch.zeros(3, 3)
    torch.save(misfit, folder / "misfit.pt")
    torch.save(state["model"], folder / "bare.pt")
    return {"missing": (folder / "missing.pt", "missing.pt: not found"),
            "truncated": (folder / "truncated.pt", "cannot be read (truncated, corrupt or not a PyTorch checkpoint)"),
            "random": (folder / "random.pt", "its bytes are not a file of tensors and plain values"),
            "malicious": (folder / "malicious.pt", "refers to posix.system, which a file of tensors and plain "
                                                   "values never does; it is not loaded"),
            "misfit": (folder / "misfit.pt", "do not fit a vgg16 / icl model with 10 classes"),
            "bare": (folder / "bare.pt", "is a bare state dict")}


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume", "init-from"])
def test_every_bad_checkpoint_is_one_error_line_and_exit_2_on_every_command(tiny_root, bad_checkpoints, command,
                                                                            tmp_path, capsys):
    from wsol_fast import predict

    image = _image_path(tiny_root, _first_id(tiny_root, "test"))
    for name, (path, phrase) in bad_checkpoints.items():
        if command == "evaluate":
            code = evaluate.main(["--checkpoint", str(path), "--output", str(tmp_path / "ev")])
        elif command == "predict":
            code = predict.main([image, "--checkpoint", str(path), "--output", str(tmp_path / "pr"), "--workers", "0"])
        elif command == "resume":
            code = train.main(["--resume", str(path)])
        else:
            code = train.main(_args(tiny_root, tmp_path / f"fork-{name}", "--epochs", "3", "--init-from", str(path)))
        line = _one_error_line(capsys.readouterr().err)
        assert code == 2, (command, name, line)
        if command == "init-from" and name == "misfit":
            phrase = "do not fit"
        assert phrase in line and str(path) in line, (command, name, line)


def test_pretrained_files_that_are_not_weights_are_one_error_line(tiny_root, bad_checkpoints, tmp_path, capsys):
    for name in ("malicious", "random", "truncated"):
        path, _ = bad_checkpoints[name]
        assert train.main(_args(tiny_root, tmp_path / name, "--epochs", "1", "--pretrained", str(path))) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"pretrained weights {path} cannot be read" in line, line


def test_init_from_weights_of_another_backbone_into_another_method_is_one_error_line(full_run, tiny_root, tmp_path,
                                                                                      capsys):
    """The checkpoint says vgg16 but holds a resnet50's weights; forking into CAM loads only the backbone
    (checkpoint.fork_weights): a CheckpointError, as forking into ICL (load_weights) is."""
    from wsol_fast.models import create_model

    state = checkpoint.load_checkpoint(full_run / "last.pt")
    state["model"] = create_model("resnet50", 10, method="icl", pretrained=None).state_dict()
    forged = tmp_path / "forged.pt"
    torch.save(state, forged)
    for method in ("cam", "icl"):
        args = _args(tiny_root, tmp_path / method, "--epochs", "3", "--init-from", str(forged))
        args[args.index("--method") + 1] = method
        assert train.main(args) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert str(forged) in line and "do not" in line, line


def test_lr_zero_freezes_the_weights(tiny_root):
    """--help says 0 freezes the weights: `--lr 0` parses, and training steps of the optimizer it builds
    (weight decay and momentum included) change no parameter."""
    from wsol_fast.config import resolve
    from wsol_fast.losses import WSOLLoss
    from wsol_fast.models import create_model
    from wsol_fast.optim import build_optimizer
    from wsol_fast.train_args import parse_args

    cfg = resolve(parse_args(_args(tiny_root, "unused", "--lr", "0", "--epochs", "1")), "cpu")
    assert cfg.optim.lr == 0 and cfg.optim.weight_decay > 0 and cfg.optim.momentum > 0
    model = create_model("vgg16", 10, method="icl", pretrained=None).train()
    optimizer, _ = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    criterion = WSOLLoss(lambda_ca=cfg.optim.lambda_ca, lambda_fc=cfg.optim.lambda_fc, margin=cfg.optim.margin,
                         fc_norm=cfg.optim.fc_norm, fc_reduction=cfg.optim.fc_reduction)
    for _ in range(2):   # the second step has a momentum buffer
        loss = criterion(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))["total"]
        optimizer.zero_grad()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_bom_inside_image_ids_is_blamed_on_its_own_file_and_line(tiny_root, tmp_path):
    root = _copy_data(tiny_root, tmp_path / "data")
    ids_file = _meta_file(root, "train", "image_ids.txt")
    lines = open(ids_file, encoding="utf-8").read().splitlines()
    lines[3] = "\ufeff" + lines[3]
    open(ids_file, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    with pytest.raises(MetadataError, match=rf"{ids_file}:4: a byte-order mark \(U\+FEFF\) inside the file"):
        load_splits(builtin.metadata_root(root), "builtin", ("train",))


def test_a_cut_jpeg_closed_with_an_end_marker_is_a_data_check_finding(tiny_root, tmp_path, capsys):
    root = _copy_data(tiny_root, tmp_path / "data")
    victim = _image_path(root, _first_id(root, "train"))
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2] + b"\xff\xd9")
    assert data_cli.main(["check", "--metadata-root", builtin.metadata_root(root), "--data-root",
                          builtin.data_root(root), "--dataset", "builtin", "--no-progress", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if victim in line)
    assert "damaged JPEG data (libjpeg: Corrupt JPEG data: premature end of data segment)" in line
    assert "1 bad image(s)" in out


def test_data_check_metadata_error_is_the_common_error_line(tiny_root, tmp_path, capsys):
    root = _copy_data(tiny_root, tmp_path / "data")
    labels = _meta_file(root, "val", "class_labels.txt")
    open(labels, "a").write("val/nowhere.jpg,1\n")
    assert data_cli.main(["check", "--metadata-root", builtin.metadata_root(root), "--data-root",
                          builtin.data_root(root), "--dataset", "builtin", "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{labels}:5: unknown image id 'val/nowhere.jpg'" in line


@pytest.mark.parametrize("loader", ["opencv", "dali"])
def test_a_size_mismatch_warns_on_both_loaders(tiny_root, tmp_path, capsys, loader):
    """Both loaders, as prepare_data builds them, find the image whose size differs from image_sizes.txt
    before any pass, and the run's data-issue report (runlog.DataIssues) warns naming it. (A whole
    training run with the OpenCV loader: test_size_mismatch_is_a_check_error_and_a_training_warning...)"""
    from wsol_fast import runlog
    from wsol_fast.config import resolve
    from wsol_fast.train_args import parse_args

    if loader == "dali" and not dali.dali_available():
        pytest.skip("nvidia.dali is not installed")
    root = _copy_data(tiny_root, tmp_path / "data")
    sizes_file = _meta_file(root, "train", "image_sizes.txt")
    lines = open(sizes_file).read().splitlines()
    image_id, w, h = lines[0].split(",")
    lines[0] = f"{image_id},{int(w) + 10},{h}"
    open(sizes_file, "w").write("\n".join(lines) + "\n")
    args = _args(root, tmp_path / "run", "--epochs", "1")
    args[args.index("--loader") + 1] = loader
    cfg = resolve(parse_args(args), "cpu")
    data = pipeline.prepare_data(cfg.data, runtime.DistInfo(), torch.device("cpu"), batch_size=8)
    try:
        assert data.loader_name == loader
        assert data.train_loader.size_mismatches == {image_id: ((int(w), int(h)), (int(w) + 10, int(h)))}
        runlog.DataIssues(str(tmp_path), [], True).record([data.train_loader, data.val_loader])
    finally:
        data.close()
    assert (f"warning: 1 image(s) decode to a size other than image_sizes.txt's (e.g. {image_id}: {w}x{h}, listed "
            f"as {int(w) + 10}x{h})") in capsys.readouterr().err


def test_multiple_iou_refuses_boxes_against_the_convention():
    from wsol_fast import metrics

    ok = metrics.multiple_iou([[0, 0, 3, 3]], [[0, 0, 3, 3], [2, 2, 5, 5]])
    assert ok.tolist() == [[1.0, 4 / 28]]
    for box in ([3, 0, 2, 3], [0, 3, 3, 2], [-1, 0, 3, 3]):
        with pytest.raises(ValueError, match="does not follow the x0y0x1y1 convention"):
            metrics.multiple_iou([box], [[0, 0, 3, 3]])
        with pytest.raises(ValueError, match=r"boxes_b\[0\]"):
            metrics.multiple_iou([[0, 0, 3, 3]], [box])
