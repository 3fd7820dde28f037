#!/usr/bin/env python3
"""Fill Triton's on-disk kernel cache in parallel before the GPU benchmarks (scripts/dev/gpu_check.sh).

The autotuner compiles each config of each kernel serially, the first time a shape is seen (the attention
pruners compile their candidates to read their shared memory): on a fresh machine that is minutes. This
compiles every (kernel, dtype, C', config) that the op benchmarks may tune, each once, in its own process
(several at a time), so that the benchmarks find the binaries in the cache and only time them. Each job
records the launch the benchmark makes (meta tensors of its shape; `wsol_fast.kernels.offline`) and
compiles one config through that launch's specialisation (`Launch.compile`: the autotuner's fn.warmup),
so the cache keys are the launch's own; nothing runs. Optional "step" jobs run one ICL training step per
backbone (their own shapes, autotuned in that process: the compiles land in the cache too).

    python scripts/dev/gpu_precompile.py [--workers 8] [--steps] [--deadline 150] [--dry-run]

--dry-run lists the jobs (built from launches recorded with CPU tensors) and compiles nothing: no GPU.
Failures are reported and counted, never fatal: the benchmarks compile whatever is missing.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "0")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The op benchmarks' shapes (benchmarks/test_bench_*.py): B 32, N 784 and 3136; masked GAP C 1024.
HEAD_DIMS = (128, 256, 512, 1024)
ATTENTION_SHAPES = [(784, c) for c in HEAD_DIMS] + [(3136, 128), (3136, 512)]
BATCH = 32
GAP_SHAPE = (32, 1024, 784)
DTYPES = ("bfloat16", "float32")


def _cases():
    for dtype_name in DTYPES:
        for n, head_dim in ATTENTION_SHAPES:
            yield ("attention", dtype_name, BATCH, n, head_dim)
            if head_dim >= 384:
                yield ("attention-bmm", dtype_name, BATCH, n, head_dim)
        yield ("masked_gap", dtype_name, GAP_SHAPE[0], GAP_SHAPE[2], GAP_SHAPE[1])


def _candidates(launch):
    """(index, config) of the configs this launch's autotuner may compile: the attention pruners'
    candidates (before their compile check), every config of the other kernels."""
    from wsol_fast.kernels import nonlocal_attention as att

    configs = launch.autotuner.configs
    base = launch.name.split("[")[0]
    if base in ("_attention_forward_kernel", "_attention_backward_kernel"):
        kernel = "forward" if base == "_attention_forward_kernel" else "backward"
        kept = att.candidate_configs(kernel, configs, {**launch.named_args(), **launch.kwargs}, 232448)
        return [(configs.index(c), c) for c in kept]
    return list(enumerate(configs))


def _jobs(include_steps: bool):
    from wsol_fast.kernels.offline import record_launches

    jobs = []
    for case in _cases():
        for position, launch in enumerate(record_launches(*case)):
            for index, _ in _candidates(launch):
                jobs.append(("compile", case, position, launch.name, index))
    if include_steps:
        jobs += [("step", backbone, 0, "", 0) for backbone in ("vgg16", "inceptionv3", "resnet50")]
    # Slowest first (wide C' first), so the pool's tail is short.
    return sorted(jobs, key=lambda j: (j[0] != "step", -(j[1][4] if j[0] == "compile" else 0)))


def _describe(job) -> str:
    kind, case, _, name, index = job
    if kind == "step":
        return f"step {case}"
    return f"{'/'.join(map(str, case)):28s} {name:44s} config {index}"


def _run(job) -> tuple[tuple, float, str]:
    kind, case, position, name, index = job
    start = time.time()
    try:
        os.environ["TRITON_INTERPRET"] = "0"
        import torch

        if kind == "step":
            sys.path.insert(0, os.path.join(REPO, "benchmarks"))
            from test_bench_icl_step_cuda import make_step
            make_step(case, "icl", None)()
            torch.cuda.synchronize()
            return job, time.time() - start, "ok"
        from wsol_fast.kernels.offline import record_launches

        launch = record_launches(*case)[position]   # meta tensors: the launch's specialisation, no memory
        assert launch.name == name, (launch.name, name)
        compiled = launch.compile(launch.autotuner.configs[index])
        return job, time.time() - start, f"ok, shared {compiled.metadata.shared} B"
    except Exception as exc:  # reported, not fatal
        return job, time.time() - start, f"FAILED {type(exc).__name__}: {str(exc)[:300]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--steps", action="store_true", help="also one ICL training step per backbone")
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds; unfinished jobs are abandoned")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs, compile nothing (no GPU needed)")
    args = parser.parse_args(argv)
    jobs = _jobs(args.steps)
    if args.dry_run:
        for job in jobs:
            print("  " + _describe(job))
        print(f"gpu_precompile --dry-run: {len(jobs)} jobs", flush=True)
        return 0 if jobs else 1
    print(f"gpu_precompile: {len(jobs)} jobs on {args.workers} workers", flush=True)
    start, failed = time.time(), 0
    pool = futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    pending = {pool.submit(_run, job) for job in jobs}
    try:
        for done in futures.as_completed(pending, timeout=args.deadline):
            job, took, status = done.result()
            failed += status != "ok"
            print(f"  {_describe(job)} {took:6.1f}s {status}", flush=True)
    except futures.TimeoutError:
        print(f"gpu_precompile: deadline of {args.deadline:.0f}s reached; the rest compiles on first use", flush=True)
    for process in list(getattr(pool, "_processes", {}).values()):   # our workers: stop unfinished compiles
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    print(f"gpu_precompile: {time.time() - start:.0f}s, {failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
