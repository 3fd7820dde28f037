"""Timing of the CUDA rows of the op benchmarks: device time beside host-inclusive time, never confused.

For one row, `measure_cuda(benchmark, record_peak_memory, run)` (run enqueues one call's work and does
not synchronise) records in extra_info:

  device_ms         the GPU's own time for one call: the call captured once in a CUDA graph, then
                    replayed (an L2 flush before each replay, outside the timed events); the median
                    over GRAPH_REPLAYS. Launch gaps of the host cannot enter it. Where capture fails
                    (an op that cannot be captured), the sum of the call's kernel times from
                    torch.profiler instead; `device_method` says which ("cuda-graph" or "profiler").
  eager_events_ms   CUDA events around the eager call (triton.testing.do_bench style, L2 flushed): the
                    stream's time, which includes the gaps while the host launches (the old device_ms).
  peak_mb, gpu, torch, triton
and pytest-benchmark's own median is the host-inclusive time: the eager call plus a synchronisation.
"""
from __future__ import annotations

import statistics

import torch

GRAPH_REPLAYS = 20
EAGER_ROUNDS = 20
HOST_ROUNDS = 20
PROFILED_CALLS = 5
_FLUSH_BYTES = 256 * 2**20   # larger than any GPU's L2 (H100 50 MB, H200 60 MB)


def _flush_buffer() -> torch.Tensor:
    return torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")


def _timed(fn, rounds: int, flush: torch.Tensor) -> float:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rounds)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rounds)]
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def graph_device_ms(run, flush: torch.Tensor) -> float:
    """Median device time of run() replayed from a CUDA graph (raises if run cannot be captured)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    torch.cuda.synchronize()
    try:
        return _timed(graph.replay, GRAPH_REPLAYS, flush)
    finally:
        del graph


def profiler_device_ms(run) -> float:
    """Sum of the device time of every kernel, copy and memset of one call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_CALLS):
            run()
        torch.cuda.synchronize()
    total_us = sum(event.self_device_time_total for event in prof.key_averages())
    return total_us / 1e3 / PROFILED_CALLS


def measure_cuda(benchmark, record_peak_memory, run) -> None:
    """The protocol of the module docstring for one benchmark row."""
    def call():
        run()
        torch.cuda.synchronize()

    for _ in range(2):   # autotuning and compilation happen here, not in the measurements below
        call()
    record_peak_memory(call, "cuda")
    flush = _flush_buffer()
    extra = benchmark.extra_info
    try:
        extra["device_ms"] = round(graph_device_ms(run, flush), 5)
        extra["device_method"] = "cuda-graph"
    except Exception as exc:   # not capturable: fall back to the profiler's kernel times
        torch.cuda.synchronize()
        extra["device_ms"] = round(profiler_device_ms(run), 5)
        extra["device_method"] = "profiler"
        extra["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    extra["eager_events_ms"] = round(_timed(run, EAGER_ROUNDS, flush), 5)
    del flush
    extra["gpu"] = torch.cuda.get_device_name()
    extra["torch"] = torch.__version__
    try:
        import triton
        extra["triton"] = triton.__version__
    except ImportError:
        pass
    benchmark.pedantic(call, rounds=HOST_ROUNDS, iterations=1, warmup_rounds=2)
