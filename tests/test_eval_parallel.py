"""`evaluate --checkpoint` spread over processes (issue 26): the box search in --workers processes, and
under torchrun the CAMs over the ranks, give results.json byte for byte as one process writes it (every
evaluator is a sum of counts; wsol_fast/eval_parallel.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from wsol_fast import evaluate, train
from wsol_fast.data import builtin

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One step of CAM on vgg16 on a tiny built-in set (13 test images: 5 batches of 3, the last short)."""
    root = str(tmp_path_factory.mktemp("tiny"))
    builtin.generate(root, seed=0, progress=False, num_train=16, num_val=8, num_test=13, min_size=72, max_size=96)
    out = tmp_path_factory.mktemp("run") / "run"
    assert train.main(["--backbone", "vgg16", "--method", "cam", "--dataset", "builtin", "--data-root",
                       builtin.data_root(root), "--metadata-root", builtin.metadata_root(root), "--batch-size", "3",
                       "--resize-size", "72", "--crop-size", "64", "--workers", "0", "--loader", "opencv", "--amp",
                       "off", "--no-channels-last", "--epochs", "1", "--max-steps-per-epoch", "1",
                       "--num-overlays", "0", "--no-tensorboard",
                       "--device", "cpu", "--block-warmup-epochs", "0", "--output", str(out)]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def one_process(trained, tmp_path_factory):
    """results.json of one process, one worker, and the folder it wrote (scores maps saved too)."""
    out = tmp_path_factory.mktemp("one")
    return _evaluate(trained, out / "one", "--save-scoremaps", str(out / "maps")), out


def _evaluate(ckpt, out, *extra):
    assert evaluate.main(["--checkpoint", str(ckpt), "--output", str(out), "--num-overlays", "4",
                          "--device", "cpu", *extra]) == 0
    return (out / "results.json").read_text()


def test_two_workers_write_one_processs_results_byte_for_byte(trained, one_process, tmp_path):
    one, first = one_process
    two = _evaluate(trained, tmp_path / "two", "--workers", "2", "--save-scoremaps", str(tmp_path / "maps"))
    assert '"num_images": 13' in one and '"top1_loc"' in one
    assert two == one
    assert sorted(os.listdir(tmp_path / "two" / "overlays")) == sorted(os.listdir(first / "one" / "overlays"))
    assert len(os.listdir(first / "one" / "overlays")) == 4
    maps = sorted(p.relative_to(first / "maps") for p in (first / "maps").rglob("*.npy"))
    assert len(maps) == 13
    assert maps == sorted(p.relative_to(tmp_path / "maps") for p in (tmp_path / "maps").rglob("*.npy"))
    for name in maps:
        assert np.array_equal(np.load(first / "maps" / name), np.load(tmp_path / "maps" / name))


@pytest.mark.slow
def test_two_ranks_with_two_workers_each_write_one_processs_results(trained, one_process, tmp_path):
    one = one_process[0]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "wsol_fast.evaluate", "--checkpoint", str(trained), "--output", str(tmp_path / "ddp"),
                           "--num-overlays", "4", "--device", "cpu", "--workers", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "ddp" / "results.json").read_text() == one
    assert done.stdout.count("results written to") == 1     # rank 0 alone writes
