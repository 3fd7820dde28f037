"""Shared helpers of the benchmarks: peak memory of one call, device synchronisation.

Peak memory (recorded in `benchmark.extra_info["peak_mb"]`): CPU tensors are invisible to tracemalloc,
so one extra, untimed call runs under torch.profiler with profile_memory=True and the running sum of
its allocation/free events gives the peak bytes allocated *during the call* (outputs and gradients
included, tensors that existed before the call excluded). Allocations made on ATen's worker threads
are not seen by the profiler; in our kernels those are per-thread scratch tiles of <= 256 KiB. On
CUDA the same number comes from torch.cuda.max_memory_allocated.

CUDA rows (`run_cuda_benchmark`): calls take micro- to milliseconds, so each row warms up first
(autotuning, compilation, cuBLAS handles), then records peak memory, the median *device* time from
CUDA events (`device_ms`: triton.testing.do_bench, L2 flushed before each call, no host sync inside),
and finally pytest-benchmark's own time over CUDA_ROUNDS rounds of a call that ends in
torch.cuda.synchronize() (host view: launch overheads included).
"""
from __future__ import annotations

import pytest
import torch


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


CUDA_ROUNDS = 20
CUDA_WARMUP_ROUNDS = 3


def cuda_device_ms(run) -> float:
    """Median device time of run() in ms from CUDA events; run must not synchronise."""
    try:
        from triton.testing import do_bench
    except ImportError:   # no triton: plain events, no L2 flush
        starts, ends = ([torch.cuda.Event(enable_timing=True) for _ in range(CUDA_ROUNDS)] for _ in range(2))
        for start, end in zip(starts, ends):
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return sorted(s.elapsed_time(e) for s, e in zip(starts, ends))[CUDA_ROUNDS // 2]
    return float(do_bench(run, warmup=10, rep=60, return_mode="median"))


@pytest.fixture
def run_cuda_benchmark(benchmark, record_peak_memory):
    """run_cuda_benchmark(run): the protocol of the CUDA rows (module docstring) for run(), which enqueues
    one call's work without synchronising. Stores device_ms, peak_mb and the GPU's name in extra_info."""
    def measure(run):
        def call():
            run()
            torch.cuda.synchronize()

        for _ in range(2):   # autotuning and compilation happen here, not in the measurements below
            call()
        record_peak_memory(call, "cuda")
        benchmark.extra_info["device_ms"] = round(cuda_device_ms(run), 5)
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
        benchmark.extra_info["torch"] = torch.__version__
        benchmark.pedantic(call, rounds=CUDA_ROUNDS, iterations=1, warmup_rounds=CUDA_WARMUP_ROUNDS)
    return measure
