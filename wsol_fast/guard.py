"""The training loop's safety net (issue 17): a stop signal becomes a resumable checkpoint at a step
boundary, a failure keeps the steps done, a non-finite loss stops the run with its last good checkpoint.
(Flag ranges: flags.py; one run per folder: runlock.py; the signals: signals.py; one `error:` line
instead of a traceback: errors.run_command.)

Exit codes of the commands (README, "When things go wrong"): 0 done; 2 an expected error (bad flag,
file, line, image, checkpoint, folder, full disk), printed as one `error: ...` message; 3 a non-finite
loss; 130 / 143 stopped by SIGINT / SIGTERM after writing a resumable checkpoint; 1 anything
unexpected (a traceback: a bug).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

from .signals import StopSignals, Stopped


class NonFiniteLoss(RuntimeError):
    """The loss went inf or nan: the run stops (exit code 3) and keeps its last good checkpoint."""


class RunGuard:
    """How a training run stops or fails without losing work, kept out of the loop itself.

    `with RunGuard(save, out, is_main) as g:` catches SIGINT / SIGTERM (g.signals: the loop finishes its
    step, raises Stopped; signals during a save wait for it). `with g.epoch(epoch, start_step):` turns a
    Stopped into a resumable last.pt and exit 128 + signum, and keeps the steps done before a failure
    (g.progress = (epoch, steps done, non-finite flag) is the loop's to update). `save(name, epoch, step)`
    writes a checkpoint."""

    def __init__(self, save, out: str, is_main: bool):
        self.save, self.out, self.is_main = save, out, is_main
        self.signals = StopSignals(enabled=False)
        self.progress = (0, 0, None)
        self.every_rank = False   # under torchrun: every rank catches the signals, and they agree (elastic.py)

    def __enter__(self) -> "RunGuard":
        self.signals = StopSignals(enabled=self.is_main or self.every_rank, announce=self.is_main,
                                   shared=self.every_rank).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.signals.__exit__(*exc)

    @contextlib.contextmanager
    def epoch(self, epoch: int, start_step: int):
        try:
            yield
        except Stopped as stopped:
            self.save("last.pt", epoch, stopped.step)
            self.exit_stopped(f"epoch {epoch + 1}, step {stopped.step}")
        except Exception as exc:
            self._save_progress_before_failing(exc, epoch, start_step)
            if self.signals.stop:   # e.g. a loader worker that the signal reached too
                self.exit_stopped(f"epoch {epoch + 1}, step {self.progress[1]} ({exc})")
            raise

    @contextlib.contextmanager
    def saved_on_failure(self, name: str, epoch: int, what: str):
        """A failure inside (e.g. validation) first saves `name` at (epoch, step 0)."""
        try:
            yield
        except Exception:
            self._save_quietly(name, epoch, 0, what)
            raise

    def exit_stopped(self, where: str):
        if self.is_main:
            name = signal.Signals(self.signals.signum).name
            print(f"\n{name}: stopped at {where}; resumable checkpoint written to {self.out}/last.pt "
                  f"(resume with --resume {self.out}/last.pt)", file=sys.stderr)
        raise SystemExit(self.signals.exit_code)

    def nonfinite(self, epoch: int, step: int) -> NonFiniteLoss:
        last = os.path.join(self.out, "last.pt")
        kept = (f"the last good checkpoint ({last}) is kept" if os.path.isfile(last) else
                "no checkpoint was written yet (it fails before the first epoch-end save)")
        return NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, step {step}; {kept}. Lower --lr, or check "
                             "the data")

    def _save_quietly(self, name: str, epoch: int, step: int, what: str) -> None:
        """Save before a failure propagates; a failing save (e.g. a full disk) must not hide the failure."""
        try:
            self.save(name, epoch, step)
        except Exception as exc:   # the original error is what the user needs to see first
            print(f"could not save {what} before failing: {exc}", file=sys.stderr)
            return
        if self.is_main:
            print(f"{what} is kept: {os.path.join(self.out, name)} (epoch {epoch + (step == 0)}"
                  f"{f', step {step}' if step else ''}); after fixing the cause, --resume it", file=sys.stderr)

    def _save_progress_before_failing(self, exc: Exception, epoch: int, start_step: int) -> None:
        """A failure mid-epoch (e.g. an image that does not decode): keep the steps done, unless the loss
        had gone non-finite (those weights are not worth keeping) or nothing new was trained."""
        p_epoch, done, nonfinite = self.progress
        if isinstance(exc, NonFiniteLoss) or p_epoch != epoch or done <= start_step:
            return
        if nonfinite is not None and bool(nonfinite):
            return
        self._save_quietly("last.pt", epoch, done, f"the {done} step(s) trained in epoch {epoch + 1}")
