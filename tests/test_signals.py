"""wsol_fast.signals: a stop signal is recorded, not raised, and restored handlers afterwards."""
from __future__ import annotations

import os
import signal

import pytest

from wsol_fast import signals


def test_sigterm_is_recorded_and_the_handler_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with signals.StopSignals() as stop:
        assert not stop.stop
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)          # a second one is reported, never raised
        assert stop.stop and stop.count == 2 and stop.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    err = capsys.readouterr().err
    assert "SIGTERM: finishing the current step" in err and "SIGTERM again" in err


def test_immediate_exits_at_once():
    with pytest.raises(SystemExit) as stopped:
        with signals.StopSignals(immediate=True):
            os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.code == 128 + signal.SIGINT


def test_disabled_installs_nothing():
    before = signal.getsignal(signal.SIGINT)
    with signals.StopSignals(enabled=False):
        assert signal.getsignal(signal.SIGINT) == before
    assert signals.Stopped(7).step == 7
