"""Shared helpers of the benchmarks: peak memory of one call, device synchronisation.

Peak memory (recorded in `benchmark.extra_info["peak_mb"]`): CPU tensors are invisible to tracemalloc,
so one extra, untimed call runs under torch.profiler with profile_memory=True and the running sum of
its allocation/free events gives the peak bytes allocated *during the call* (outputs and gradients
included, tensors that existed before the call excluded). Allocations made on ATen's worker threads
are not seen by the profiler; in our kernels those are per-thread scratch tiles of <= 256 KiB. On
CUDA the same number comes from torch.cuda.max_memory_allocated.

CUDA rows are timed by `benchmarks/cuda_timing.py` (`measure_cuda`: device time from CUDA-graph replay
or the profiler beside the host-inclusive time).

`pytest benchmarks --benchmark-only` runs the quick set: every file, but rows marked `full` skip. Those are
the training-step ladder of VGG16 and ResNet50 and InceptionV3's channels_last and compile steps, and the
old contour-search path over the whole CUB test split. About 5 minutes on 2 cores; `--bench-full` adds
them, for about 13.
"""
from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true",
                     help="also run the benchmark rows marked `full` (about 13 minutes on 2 cores instead of 5)")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: a long benchmark row, run only with --bench-full")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench-full"):
        return
    skip = pytest.mark.skip(reason="a long row of the full set: run with --bench-full")
    for item in items:
        if item.get_closest_marker("full") is not None:
            item.add_marker(skip)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory_bytes(fn, device: str = "cpu") -> int:
    """Peak bytes allocated while `fn()` runs, relative to the memory in use before it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


@pytest.fixture
def record_peak_memory(benchmark):
    """record_peak_memory(fn, device) measures one untimed call of fn and stores peak_mb in extra_info."""
    def record(fn, device: str = "cpu") -> int:
        peak = peak_memory_bytes(fn, device)
        benchmark.extra_info["peak_mb"] = round(peak / 2**20, 2)
        return peak
    return record
