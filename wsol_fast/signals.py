"""Stop signals: SIGINT / SIGTERM become a request the training loop honours at a step boundary
(a resumable checkpoint, exit 128 + signum), never an exception in the middle of a save."""
from __future__ import annotations

import signal
import sys


class StopSignals:
    """SIGINT and SIGTERM only set `signum`: the training loop finishes its step, writes a resumable
    checkpoint and exits 128 + signum. Signals that arrive later (during that save) are recorded and
    reported, never raised, so a save is never torn by a second Ctrl-C."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True, immediate: bool = False, announce: bool = True, shared: bool = False):
        """immediate: exit at once (SystemExit 128 + signum), for phases that leave nothing partial.
        announce: print what happens (rank 0 only under torchrun). shared: `stop` is what every rank agreed
        on (`agreed`, set by elastic.StepHooks.agree_stop), so all ranks stop after the same step."""
        self.enabled, self.immediate, self.signum, self.count, self._prev = enabled, immediate, None, 0, {}
        self.announce, self.shared, self.agreed = announce, shared, None

    def __enter__(self) -> "StopSignals":
        if self.enabled:
            for s in self.SIGNALS:
                self._prev[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, prev in self._prev.items():
            signal.signal(s, prev)
        self._prev = {}

    def _handler(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.immediate:
            print(f"\n{name}: stopped; the checkpoints written so far are kept", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        if self.signum is None:
            self.signum = signum
            if not self.announce:
                return
            print(f"\n{name}: finishing the current step, then writing a resumable checkpoint ...",
                  file=sys.stderr, flush=True)
        elif self.announce:
            print(f"\n{name} again: the checkpoint is being written; exiting as soon as it is complete",
                  file=sys.stderr, flush=True)

    @property
    def stop(self) -> bool:
        return (self.agreed if self.shared else self.signum) is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


class Stopped(Exception):
    """Raised by the training loop at a step boundary after a stop signal; carries the steps done."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step
