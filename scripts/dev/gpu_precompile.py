#!/usr/bin/env python3
"""Fill Triton's on-disk kernel cache in parallel before the GPU benchmarks (scripts/dev/gpu_check.sh).

The autotuner compiles each config of each kernel serially, the first time a shape is seen: on a fresh
machine that is minutes. This launches every (kernel, dtype, C', config) that the op benchmarks will
autotune, each once, in its own process (several at a time), so that the benchmarks find the binaries
in the cache and only time them. Optional "step" jobs run one ICL training step per backbone (their
own shapes, autotuned in that process: the compiles land in the cache too).

    python scripts/dev/gpu_precompile.py [--workers 8] [--steps] [--deadline 150]

Failures are reported and counted, never fatal: the benchmarks compile whatever is missing.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import sys
import time

# The op benchmarks' shapes (benchmarks/test_bench_*.py): N divisible by 16 as there, so the binaries
# carry the same specialisations; B = 16 is divisible by 16 as B = 32 is.
HEAD_DIMS = (128, 256, 512, 1024)
ATTENTION_N = 784
GAP_SHAPE = (16, 1024, 784)
DTYPES = ("bfloat16", "float32")


def _jobs(include_steps: bool):
    import torch

    os.environ.setdefault("TRITON_INTERPRET", "0")
    from wsol_fast.kernels import masked_gap as gap
    from wsol_fast.kernels import nonlocal_attention as att

    jobs = []
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        probe = torch.empty(1, dtype=dtype)
        for head_dim in HEAD_DIMS:
            block_d, static = att._head_block(head_dim), att._static_chunks(dtype, head_dim)
            for cfg in att._prune_forward(att.FORWARD_GPU_CONFIGS, {"f_ptr": probe}, D=head_dim, BLOCK_D=block_d,
                                          STATIC_CHUNKS=static):
                jobs.append(("forward", dtype_name, head_dim, att.FORWARD_GPU_CONFIGS.index(cfg), None))
            bd, bdo, split = att._backward_blocks(head_dim, dtype)
            for variant in ("fused", "atomic"):
                for cfg in att._prune_backward(att.BACKWARD_GPU_CONFIGS, {"f_ptr": probe}, D=head_dim, BLOCK_D=bd,
                                               BLOCK_DO=bdo, SPLIT_D=split, STATIC_CHUNKS=static):
                    jobs.append(("backward", dtype_name, head_dim, att.BACKWARD_GPU_CONFIGS.index(cfg), variant))
            if head_dim >= att.BMM_MIN_HEAD_DIM:
                for index in range(len(att.SOFTMAX_GRAD_GPU_CONFIGS)):
                    jobs.append(("softmax_grad", dtype_name, head_dim, index, "bmm"))
        for index in range(len(gap.GPU_CONFIGS)):
            jobs.append(("masked_gap", dtype_name, 0, index, None))
    if include_steps:
        jobs += [("step", backbone, 0, 0, None) for backbone in ("vgg16", "inceptionv3", "resnet50")]
    # Slowest first (wide fp32 and 16-bit C' 512 backward compiles), so the pool's tail is short.
    return sorted(jobs, key=lambda j: (j[0] != "step", -j[2], j[0] != "backward"))


def _run(job) -> tuple[tuple, float, str]:
    kind, dtype_name, head_dim, index, variant = job
    start = time.time()
    try:
        os.environ["TRITON_INTERPRET"] = "0"
        import torch

        if kind == "step":
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
            from test_bench_icl_step_cuda import make_step
            make_step(dtype_name, "icl", None)()
            return job, time.time() - start, "ok"
        from wsol_fast.kernels import masked_gap as gap
        from wsol_fast.kernels import nonlocal_attention as att

        dtype = getattr(torch, dtype_name)
        if kind == "masked_gap":
            for kernel in (gap._masked_gap_forward_kernel, gap._masked_gap_backward_kernel):
                kernel.configs = [gap.GPU_CONFIGS[index]]
            b, c, n = GAP_SHAPE
            x = torch.randn(b, c, n, device="cuda", dtype=dtype)
            a = torch.rand(b, n, device="cuda", dtype=dtype)
            pooled, counts, _ = gap.masked_gap_forward(x, a, 0.72, 1.2)
            gap.masked_gap_backward(torch.ones_like(pooled), x, a, counts, 0.72, 1.2)
        else:
            if kind == "forward":
                forward_config = att.FORWARD_GPU_CONFIGS[index]
            else:   # the backward needs A and lse: any forward config that fits (compiled by its own job)
                forward_config = att._prune_forward(
                    att.FORWARD_GPU_CONFIGS, {"f_ptr": torch.empty(1, dtype=dtype)}, D=head_dim,
                    BLOCK_D=att._head_block(head_dim), STATIC_CHUNKS=att._static_chunks(dtype, head_dim))[0]
            att._attention_forward_kernel.configs = [forward_config]
            if kind == "backward":
                att._attention_backward_kernel.configs = [att.BACKWARD_GPU_CONFIGS[index]]
            if kind == "softmax_grad":
                att._attention_softmax_grad_kernel.configs = [att.SOFTMAX_GRAD_GPU_CONFIGS[index]]
            f, g = (torch.randn(16, ATTENTION_N, head_dim, device="cuda", dtype=dtype) for _ in range(2))
            zbar = torch.randn(16, ATTENTION_N, device="cuda", dtype=dtype)
            a, lse = att.nonlocal_attention_forward(f, g, zbar, 1.0)
            if kind != "forward":
                att.nonlocal_attention_backward(torch.ones_like(a), f, g, zbar, a, lse, 1.0, variant=variant)
        torch.cuda.synchronize()
        return job, time.time() - start, "ok"
    except Exception as exc:  # reported, not fatal
        return job, time.time() - start, f"FAILED {type(exc).__name__}: {str(exc)[:300]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--steps", action="store_true", help="also one ICL training step per backbone")
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds; unfinished jobs are abandoned")
    args = parser.parse_args(argv)
    jobs = _jobs(args.steps)
    print(f"gpu_precompile: {len(jobs)} jobs on {args.workers} workers", flush=True)
    start, failed = time.time(), 0
    pool = futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    pending = {pool.submit(_run, job) for job in jobs}
    try:
        for done in futures.as_completed(pending, timeout=args.deadline):
            job, took, status = done.result()
            failed += status != "ok"
            print(f"  {job[0]:12s} {job[1]:11s} C'{job[2]:<5d} config {job[3]} {job[4] or '':6s} {took:6.1f}s {status}",
                  flush=True)
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
