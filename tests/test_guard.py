"""wsol_fast.guard.RunGuard: a stop at a step boundary saves a resumable checkpoint and exits 128 + signum;
a failure keeps the steps done (unless the loss went non-finite)."""
from __future__ import annotations

import pytest

from wsol_fast import guard, signals


def _guard(tmp_path, saved):
    return guard.RunGuard(lambda name, epoch, step: saved.append((name, epoch, step)), str(tmp_path), is_main=False)


def test_a_stop_saves_the_step_and_exits(tmp_path):
    saved = []
    with _guard(tmp_path, saved) as g:
        with pytest.raises(SystemExit) as stopped:
            with g.epoch(2, 0):
                raise signals.Stopped(5)
    assert saved == [("last.pt", 2, 5)] and stopped.value.code == 130


def test_a_failure_keeps_the_steps_done_but_not_non_finite_ones(tmp_path, capsys):
    saved = []
    with _guard(tmp_path, saved) as g:
        g.progress = (2, 7, None)
        with pytest.raises(RuntimeError, match="bad image"):
            with g.epoch(2, 3):
                raise RuntimeError("bad image")
        assert saved == [("last.pt", 2, 7)]
        with pytest.raises(guard.NonFiniteLoss):
            with g.epoch(2, 3):
                raise g.nonfinite(2, 8)
        assert saved == [("last.pt", 2, 7)]                # nothing saved for a non-finite loss
        with pytest.raises(ValueError):
            with g.saved_on_failure("last.pt", 3, "epoch 3's training"):
                raise ValueError("validation failed")
    assert saved[-1] == ("last.pt", 3, 0)
    assert "no checkpoint was written yet" in str(g.nonfinite(0, 1))
