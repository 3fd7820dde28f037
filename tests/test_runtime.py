"""wsol_fast.runtime: the precision choice, the autocast context, the single-process distributed
defaults, the compiled model's first-step timer and the training wrapper without DDP."""
from __future__ import annotations

import contextlib

import pytest
import torch

from wsol_fast import runtime


@pytest.mark.parametrize("amp, dtype", [("off", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_resolve_amp_explicit_choices(amp, dtype):
    assert runtime.resolve_amp(amp, torch.device("cpu")) is dtype


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, None)])
def test_resolve_amp_auto_on_cpu_follows_native_bf16(monkeypatch, native, dtype):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.resolve_amp("auto", torch.device("cpu")) is dtype


def test_resolve_amp_refuses_other_values():
    with pytest.raises(ValueError, match="auto, off, bf16, fp16"):
        runtime.resolve_amp("fp8", torch.device("cpu"))


def test_autocast_context():
    assert isinstance(runtime.autocast_context(torch.device("cpu"), None), contextlib.nullcontext)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast_context(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = runtime.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert device == torch.device("cpu")
    assert runtime.all_gather_objects({"n": 3}, info) == [{"n": 3}]
    assert runtime.replica_checksums(torch.nn.Linear(2, 2), info) is None
    assert runtime.DistInfo(rank=1, world_size=2).is_main is False


def test_wrap_for_training_without_ddp_or_compile_is_the_model():
    model = torch.nn.Linear(2, 2)
    for mode in (None, "off"):
        assert runtime.wrap_for_training(model, runtime.DistInfo(), torch.device("cpu"), mode, False) is model


def test_first_step_timer_times_only_the_first_completed_step(capsys):
    timer = runtime.FirstStepTimer(True, torch.device("cpu"), report=True)
    with pytest.raises(RuntimeError):
        with timer:                      # a failing first step is not the one timed
            raise RuntimeError("step failed")
    assert timer.pending and timer.seconds == 0.0
    with timer:
        sum(range(1000))
    first = timer.seconds
    assert first > 0 and not timer.pending
    with timer:
        sum(range(1000))
    assert timer.seconds == first
    assert capsys.readouterr().err.count("torch.compile: first step took") == 1
    off = runtime.FirstStepTimer(False, torch.device("cpu"), report=True)
    with off:
        pass
    assert off.seconds == 0.0


def test_seed_everything_repeats_the_draws():
    import random

    import numpy as np

    runtime.seed_everything(5)
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    runtime.seed_everything(5)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first


def test_peak_memory_is_the_peak_rss_in_mib():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB -> MiB
    peak = runtime.peak_memory_mb(torch.device("cpu"))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert before <= peak <= after                              # the peak only grows
