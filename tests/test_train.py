"""The train and evaluate commands end to end on a tiny generated built-in set: outputs, resume, guards.

Every run here is a real `python -m wsol_fast.train` (called in-process through `main`): tiny images
(64 x 64 crops), batch 8, the OpenCV loader with no worker processes, so each run takes seconds.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from wsol_fast import checkpoint, evaluate, train
from wsol_fast.data import builtin, pipeline
from interrupting import InterruptingLoader

TINY = dict(num_train=32, num_val=12, num_test=12, min_size=72, max_size=96)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_builtin"))
    builtin.generate(root, seed=0, progress=False, **TINY)
    return root


def _args(root, out, *extra):
    return ["--backbone", "vgg16", "--dataset", "builtin", "--data-root", builtin.data_root(root),
            "--metadata-root", builtin.metadata_root(root), "--batch-size", "8", "--resize-size", "72",
            "--crop-size", "64", "--workers", "0", "--loader", "opencv", "--amp", "off", "--no-channels-last",
            "--lr", "0.002", "--output", str(out), "--num-overlays", "3", "--seed", "1",
            # The method from the first step (the built-in profile's warm-up would make short runs CE-only);
            # a test's own --block-warmup-epochs comes later and wins.
            "--block-warmup-epochs", "0", *extra]


def _weights(path):
    return checkpoint.load_checkpoint(path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_then_evaluate_writes_everything(tiny_root, tmp_path):
    out = tmp_path / "run"
    assert train.main(_args(tiny_root, out, "--epochs", "2")) == 0
    for name in ("config.json", "results.json", "metrics.csv", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    for key in ("top1_cls", "top1_loc", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "best_threshold"):
        assert key in results, key
    assert set(results["maxboxacc"]) == {"30", "50", "70"}
    assert results["num_images"] == TINY["num_test"]
    prior = results["baselines"]["centre_prior"]
    assert 0 <= prior["maxboxacc_v2"] <= 100
    assert len(list((out / "overlays").glob("*.png"))) == 3
    # the checkpoint loads with weights_only=True and holds everything a resume needs
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "rng"} <= set(state)
    assert state["epoch"] == 2
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3   # header + 2 epochs
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    # mask diagnostics per block and epoch (3 ICL blocks), fractions in [0, 1]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for k in range(3):
        for name in ("fg", "dfg", "bg", "empty", "dropped", "hinge"):
            assert f"diag_b{k}_{name}" in header
    row = (out / "metrics.csv").read_text().splitlines()[1].split(",")
    assert all(0.0 <= float(row[header.index(f"diag_b{k}_fg")]) <= 1.0 for k in range(3))
    # wsolevaluation's --eval_checkpoint_type defaults to 'last': the test split scores the last epoch
    assert results["eval_checkpoint"] == "last"

    # evaluate on the saved checkpoint: same metrics, fresh output folder
    ev_out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--output", str(ev_out),
                          "--num-overlays", "2"]) == 0
    again = json.loads((ev_out / "results.json").read_text())
    assert again["num_images"] == TINY["num_test"]
    assert again["maxboxacc_v2"] == pytest.approx(results["maxboxacc_v2"])
    assert again["top1_cls"] == pytest.approx(results["top1_cls"])
    assert len(list((ev_out / "overlays").glob("*.png"))) == 2


def test_a_finished_run_leaves_no_loader_workers_behind(tiny_root, tmp_path):
    """Several runs in one process (python -m wsol_fast.ablate): each stops its persistent loader workers when
    it ends. Left to the interpreter's exit, multiprocessing would SIGTERM them, which they ignore, and wait
    for them forever (seen: every ablate process hung after writing its table)."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    for k in range(2):
        assert train.main(_args(tiny_root, tmp_path / f"run{k}", "--epochs", "1", "--workers", "1",
                                "--max-steps-per-epoch", "2", "--num-overlays", "0")) == 0
        assert set(multiprocessing.active_children()) == before


def test_resume_after_a_crash_at_an_epoch_boundary_equals_the_uninterrupted_run(tiny_root, tmp_path,
                                                                                 monkeypatch):
    full = tmp_path / "full"
    assert train.main(_args(tiny_root, full, "--epochs", "2")) == 0

    crashed = tmp_path / "crashed"
    real_save = train.Trainer.save_epoch

    def save_then_crash(self, epoch, best):   # the epoch-end checkpoints (last.pt, best.pt) are on disk
        real_save(self, epoch, best)
        if epoch == 1:
            raise RuntimeError("simulated crash after epoch 1")

    monkeypatch.setattr(train.Trainer, "save_epoch", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(_args(tiny_root, crashed, "--epochs", "2"))
    monkeypatch.setattr(train.Trainer, "save_epoch", real_save)
    assert checkpoint.load_checkpoint(str(crashed / "last.pt"))["epoch"] == 1
    assert train.main(["--resume", str(crashed / "last.pt")]) == 0
    _assert_same_weights(_weights(str(full / "last.pt")), _weights(str(crashed / "last.pt")))


def test_ctrl_c_mid_epoch_saves_and_resumes_to_the_same_weights(tiny_root, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert train.main(_args(tiny_root, full, "--epochs", "2")) == 0

    stopped = tmp_path / "stopped"
    real_make = pipeline.make_train_loader
    calls = {"batches": 0}

    # a real SIGINT while the 6th batch (epoch 2, step 2) is being trained
    monkeypatch.setattr(pipeline, "make_train_loader",
                        lambda *a, **k: InterruptingLoader(real_make(*a, **k), 6, calls))
    with pytest.raises(SystemExit) as exit_info:
        train.main(_args(tiny_root, stopped, "--epochs", "2"))
    assert exit_info.value.code == 130
    state = checkpoint.load_checkpoint(str(stopped / "last.pt"))
    assert (state["epoch"], state["step"]) == (1, 2)     # in epoch 2 (index 1), 2 steps done
    monkeypatch.setattr(pipeline, "make_train_loader", real_make)
    assert train.main(["--resume", str(stopped / "last.pt")]) == 0
    _assert_same_weights(_weights(str(full / "last.pt")), _weights(str(stopped / "last.pt")))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    real_call = train.WSOLLoss.__call__
    state = {"calls": 0}

    def poisoned(self, output, labels):
        terms = real_call(self, output, labels)
        state["calls"] += 1
        if state["calls"] > 4:            # epoch 2 (4 steps per epoch)
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(train.WSOLLoss, "__call__", poisoned)
    assert train.main(_args(tiny_root, out, "--epochs", "3")) == 3
    assert checkpoint.load_checkpoint(str(out / "last.pt"))["epoch"] == 1   # epoch 1's, not overwritten
    assert not (out / "results.json").exists()


def test_bad_arguments_are_clear_errors(tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--dataset", "CUB", "--data-root", str(tmp_path)])
    assert "--metadata-root" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "nothing.pt")]) == 2
    assert "nothing.pt: not found" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_ranks_with_gloo(tiny_root, tmp_path):
    """torchrun with 2 CPU ranks (gloo): identical weights on both ranks, every test image counted once,
    only rank 0 writes."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "wsol_fast.train", *_args(tiny_root, out, "--epochs", "2", "--device", "cpu")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    sums = results["ddp"]["replica_checksums"]
    assert results["ddp"]["world_size"] == 2 and len(sums) == 2 and sums[0] == sums[1]
    assert results["num_images"] == TINY["num_test"]        # gathered: each test image exactly once
    assert done.stdout.count("run folder:") == 1            # only rank 0 reports and writes
    # 32 train images over 2 ranks at batch 8: 2 steps per rank per epoch
    import csv
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(r["steps"]) for r in rows] == [2, 2]


def _copy_with_a_corrupt_train_image(tiny_root, dest):
    import shutil

    shutil.copytree(tiny_root, dest)
    first = open(os.path.join(builtin.metadata_root(dest), "builtin", "train", "image_ids.txt")).readline().strip()
    path = os.path.join(builtin.data_root(dest), "builtin", first)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 3])          # a truncated download
    return first


def test_corrupt_jpeg_stops_before_training_or_is_skipped_and_counted(tiny_root, tmp_path, capsys):
    root = str(tmp_path / "data")
    bad = _copy_with_a_corrupt_train_image(tiny_root, root)
    out = tmp_path / "run"
    assert train.main(_args(root, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and bad in err
    assert not (out / "last.pt").exists()
    assert train.main(_args(root, out, "--epochs", "1", "--skip-bad-images")) == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    assert (out / "results.json").is_file()


def test_one_epoch_with_the_dali_loader(tiny_root, tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "dali"
    args = _args(tiny_root, out, "--epochs", "1")
    args[args.index("--loader") + 1] = "dali"
    assert train.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_images"] == TINY["num_test"]
    assert json.loads((out / "config.json").read_text())["data"]["loader"] == "dali"


@pytest.mark.slow
def test_compile_trains_and_saves_uncompiled_keys(tiny_root, tmp_path, capsys):
    out = tmp_path / "compiled"
    assert train.main(_args(tiny_root, out, "--epochs", "1", "--compile")) == 0
    assert "torch.compile: first step took" in capsys.readouterr().err
    state = checkpoint.load_checkpoint(str(out / "last.pt"))
    assert state["model"] and not any(k.startswith("_orig_mod.") for k in state["model"])
    results = json.loads((out / "results.json").read_text())
    assert results["telemetry"]["compile_seconds"] > 0


def test_block_warmup_epochs_train_without_the_blocks_then_with_them(tiny_root, tmp_path):
    """--block-warmup-epochs 1: epoch 1 trains the plain classifier (no block records, so L_ca = L_fc = 0
    and the blocks' weights stay as initialised), epoch 2 the full method."""
    import csv

    out = tmp_path / "warm"
    args = _args(tiny_root, out, "--epochs", "2", "--block-warmup-epochs", "1", "--method", "icl")
    assert train.main(args) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[0]["loss_ca"]) == 0.0 and float(rows[0]["loss_fc"]) == 0.0
    assert float(rows[0]["loss"]) == float(rows[0]["loss_cls"])
    assert float(rows[1]["loss_ca"]) > 0.0 and float(rows[1]["loss"]) > float(rows[1]["loss_cls"])
    assert json.loads((out / "config.json").read_text())["optim"]["block_warmup_epochs"] == 1


def test_block_warmup_leaves_the_blocks_untouched(tiny_root, tmp_path):
    """Two warm-up runs of 1 and 3 steps: the backbones differ, the blocks are still the initial ones."""
    runs = {}
    for steps in (1, 3):
        out = tmp_path / f"warm{steps}"
        assert train.main(_args(tiny_root, out, "--epochs", "1", "--block-warmup-epochs", "1",
                                "--max-steps-per-epoch", str(steps))) == 0
        runs[steps] = _weights(out / "last.pt")
    blocks = [k for k in runs[1] if k.startswith("attention_blocks.")]
    others = [k for k in runs[1] if k not in blocks and runs[1][k].is_floating_point()]
    assert blocks and others
    for k in blocks:
        assert torch.equal(runs[1][k], runs[3][k]), k
    assert not all(torch.equal(runs[1][k], runs[3][k]) for k in others)


def test_init_from_forks_a_run_with_new_settings(tiny_root, tmp_path, capsys):
    """--init-from: the parent's weights and epoch, this command's settings (here: L_ca off, a new lr
    schedule); the fork writes its own metrics.csv (epochs numbered on) and best.pt."""
    import csv

    parent = tmp_path / "parent"
    common = ("--method", "icl", "--block-warmup-epochs", "1")
    assert train.main(_args(tiny_root, parent, "--epochs", "2", *common)) == 0

    fork = tmp_path / "fork"
    assert train.main(_args(tiny_root, fork, "--epochs", "3", *common, "--init-from", str(parent / "last.pt"),
                            "--lambda-ca", "0", "--lr", "0.004", "--lr-decay-every", "2")) == 0
    rows = list(csv.DictReader(open(fork / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [3]
    assert float(rows[0]["loss_ca"]) == 0.0 and float(rows[0]["loss_fc"]) > 0.0
    assert float(rows[0]["lr"]) == pytest.approx(0.004 * 0.1)   # this schedule at epoch 2: one decay
    config = json.loads((fork / "config.json").read_text())
    assert config["optim"]["lambda_ca"] == 0.0 and config["runtime"]["init_from"] == str(parent / "last.pt")
    assert checkpoint.load_checkpoint(fork / "best.pt")["epoch"] == 3

    # The weights really come from the parent: with lr 1e-30 (0 is refused: lr must be > 0) the fork's
    # parameters end where the parent's did, to within 1e-20.
    still = tmp_path / "still"
    assert train.main(_args(tiny_root, still, "--epochs", "3", *common, "--init-from", str(parent / "last.pt"),
                            "--lr", "1e-30")) == 0
    parent_state, still_state = _weights(parent / "last.pt"), _weights(still / "last.pt")
    params = [k for k in parent_state if "running_" not in k and "num_batches" not in k]
    assert params
    for k in params:
        assert torch.allclose(parent_state[k].double(), still_state[k].double(), rtol=0, atol=1e-20), k


def test_init_from_refuses_what_it_cannot_fork(tiny_root, tmp_path, capsys):
    parent = tmp_path / "parent"
    assert train.main(_args(tiny_root, parent, "--epochs", "1", "--max-steps-per-epoch", "1")) == 0
    ckpt = str(parent / "last.pt")
    assert train.main(_args(tiny_root, tmp_path / "a", "--epochs", "2", "--init-from", ckpt,
                            "--backbone", "resnet50")) == 2
    assert "vgg16 / icl run, this command trains resnet50 / icl" in capsys.readouterr().err
    assert train.main(_args(tiny_root, tmp_path / "b", "--epochs", "1", "--init-from", ckpt)) == 2
    assert "--epochs must be larger" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(_args(tiny_root, tmp_path / "c", "--init-from", ckpt, "--resume", ckpt))
    assert "give one of them" in capsys.readouterr().err
    assert train.main(_args(tiny_root, tmp_path / "d", "--init-from", str(tmp_path / "nothing.pt"))) == 2
    assert "nothing.pt: not found" in capsys.readouterr().err
