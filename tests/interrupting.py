"""A train-loader wrapper that delivers a real SIGINT while the n-th batch of the run is being trained,
for the Ctrl-C drills of test_train.py and test_reliability.py."""
from __future__ import annotations

import os
import signal


class InterruptingLoader:
    """Wraps a train loader; `calls["batches"]` counts the batches handed out (over all epochs), and the
    `at_batch`-th is followed by os.kill(SIGINT) before it is yielded."""

    def __init__(self, inner, at_batch: int, calls: dict):
        self.inner, self.at_batch, self.calls = inner, at_batch, calls

    def set_epoch(self, *args):
        self.inner.set_epoch(*args)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            self.calls["batches"] += 1
            if self.calls["batches"] == self.at_batch:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch
