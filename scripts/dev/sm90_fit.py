#!/usr/bin/env python3
"""Compile the Triton kernels offline for sm_90 (no GPU) and check that every config the pruners keep
fits an H100/H200 block: shared memory <= 232,448 B (227 KiB).

    python scripts/dev/sm90_fit.py [--cases ci|gpu] [--all] [--json out.json] [--workers 2]

Each case calls a launcher (kernels/nonlocal_attention.py, kernels/masked_gap.py) with CPU tensors of
the GPU run's shapes under `wsol_fast.kernels.offline.offline_target()`: the launch is recorded, not run,
the autotuner's own pruning picks the configs (for the attention kernels that prune itself compiles the
candidates and reads their shared memory), and every kept config is compiled through the launch's
specialisation (`Launch.compile`, i.e. `fn.warmup`) down to the cubin. `--all` compiles the configs
the pruners drop too (the numbers of docs/kernels.md). Prints one line per (case, config) and, with
--json, writes them; exit status 1 if a kept config does not fit or a case keeps none.

Run by tests/ops/test_kernels_sm90_fit.py with the installed triton (3.8 here); for the GPU machine's
triton 3.6 run it from a venv that has it (docs/kernels.md, "Offline sm_90 compiles"):
    python -m venv --system-site-packages /work/venv-t36 && /work/venv-t36/bin/pip install triton==3.6.0
    /work/venv-t36/bin/python scripts/dev/sm90_fit.py --cases gpu --all --json t36.json
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"   # compiled kernel modules, whatever the caller's environment says
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

MAX_SHARED = 232448
# (op, dtype, B, N, C): attention C is C', masked GAP C is channels. N 784 = 28 x 28 (the ICL map at
# 224 px), B 32: the benchmarks' and a training step's shapes (N, B and strides divisible by 16, as there).
CI_CASES = [
    ("attention", "bfloat16", 32, 784, 512),          # the widest unrolled forward and full-C' backward;
                                                      # atomic: its 64 x 64 tiles compile to 385 KiB
    ("attention-fused", "bfloat16", 32, 784, 1024),   # past MAX_STATIC_D: runtime chunk loop, split backward
    ("attention-fused", "float32", 32, 784, 128),     # fp32 (tf32x3): the widest full-C' fp32 backward
    ("attention-fused", "float32", 32, 784, 512),     # fp32 runtime chunk loop, split backward
    ("attention-bmm", "bfloat16", 32, 784, 512),
    ("masked_gap", "bfloat16", 32, 1024, 784),
]
# Every benchmark shape, fp16 (the bytes of bf16), the GPU tests' odd shapes.
GPU_CASES = CI_CASES + [
    *[("attention", dtype, 32, 784, c) for dtype in ("bfloat16", "float32") for c in (128, 256)],
    ("attention", "bfloat16", 32, 784, 1024), ("attention", "float32", 32, 784, 512),
    ("attention", "float32", 32, 784, 1024), ("attention", "float16", 32, 784, 512),
    ("attention", "bfloat16", 32, 3136, 512), ("attention", "float32", 32, 3136, 128),
    ("attention", "bfloat16", 1, 21, 512), ("attention", "float16", 1, 21, 512),
    ("attention", "float32", 2, 221, 64), ("attention", "bfloat16", 2, 221, 160),   # test_attention_every_gpu_config
    ("attention", "float32", 2, 37, 144), ("attention", "bfloat16", 2, 37, 144),
    ("attention-bmm", "bfloat16", 2, 21, 512), ("attention-bmm", "float32", 32, 784, 512),
    ("masked_gap", "float32", 32, 1024, 784),
]


def _launches(op, dtype_name, batch, n, c):
    """The launches of one case's forward and backward (recorded, not run)."""
    from wsol_fast.kernels.offline import record_launches

    return [(launch.name, launch) for launch in record_launches(op, dtype_name, batch, n, c)]


def _config_name(config) -> str:
    blocks = "x".join(str(v) for v in config.kwargs.values())
    return f"{blocks}/w{config.num_warps}/s{config.num_stages}"


def _lower_bound(launch, config) -> int | None:
    """The attention pruners' shared-memory lower bound of this config (None for the other kernels)."""
    from wsol_fast.kernels import nonlocal_attention as att

    kernel = {"_attention_forward_kernel": "forward", "_attention_backward_kernel": "backward"}.get(
        launch.name.split("[")[0])
    return None if kernel is None else att.shared_lower_bound(kernel, config, {**launch.named_args(), **launch.kwargs})


def _upper_estimate(launch, config) -> int | None:
    """The attention pruners' conservative estimate (used while torch.compile traces)."""
    from wsol_fast.kernels import nonlocal_attention as att

    kernel = {"_attention_forward_kernel": "forward", "_attention_backward_kernel": "backward"}.get(
        launch.name.split("[")[0])
    return None if kernel is None else att.shared_upper_estimate(kernel, config, {**launch.named_args(), **launch.kwargs})


def _line(r: dict) -> str:
    return (f"{r['case']:28s} {r['kernel']:44s} {r['config']:16s} {'kept' if r['kept'] else 'drop'} "
            f"shared {r.get('shared', '-')!s:>7} bound {r.get('lower_bound') or '-'!s:>7} regs {r.get('regs', '-')!s:>4} local {r.get('local', '-')!s:>5} "
            f"{'fits' if r['fits'] else 'OVER'} {r['compile_s']}s {r.get('error', '')}")


def run_case(case, compile_all: bool, stop_after: str | None = None) -> list[dict]:
    from wsol_fast.kernels.offline import offline_target

    rows = []
    with offline_target(stop_after=stop_after):
        for kernel, launch in _launches(*case):
            t0 = time.time()
            kept = launch.kept_configs()
            prune_s = time.time() - t0
            configs = launch.autotuner.configs if compile_all else kept
            for config in configs:
                t0 = time.time()
                try:
                    res = launch.resources(config)
                except Exception as exc:   # a config that does not compile at all: reported, and a failure if kept
                    res = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                row = {"case": "/".join(map(str, case)), "kernel": kernel, "config": _config_name(config),
                       "kept": config in kept, **res, "fits": res.get("shared", MAX_SHARED + 1) <= MAX_SHARED,
                       "lower_bound": _lower_bound(launch, config), "upper_estimate": _upper_estimate(launch, config),
                       "compile_s": round(time.time() - t0, 1), "prune_s": round(prune_s, 1)}
                print(_line(row), flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=("ci", "gpu"), default="ci")
    parser.add_argument("--all", action="store_true", help="compile the pruned-away configs too")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--workers", type=int, default=1, help="cases compiled in parallel processes")
    parser.add_argument("--llir", action="store_true",
                        help="stop each compile after the LLVM IR: shared memory exact, no registers, about 2x faster")
    args = parser.parse_args(argv)
    import triton

    cases = CI_CASES if args.cases == "ci" else GPU_CASES
    rows = []
    if args.workers > 1:
        with futures.ProcessPoolExecutor(args.workers) as pool:
            stop = ["llir" if args.llir else None] * len(cases)
            for case_rows in pool.map(run_case, cases, [args.all] * len(cases), stop):
                rows += case_rows
    else:
        for case in cases:
            rows += run_case(case, args.all, "llir" if args.llir else None)
    bad = [r for r in rows if r["kept"] and not r["fits"]]
    kernels_without_kept = sorted({(r["case"], r["kernel"]) for r in rows}
                                  - {(r["case"], r["kernel"]) for r in rows if r["kept"]})
    print(f"triton {triton.__version__}: {len(rows)} compiles, {sum(r['kept'] for r in rows)} kept, "
          f"{len(bad)} kept over {MAX_SHARED} B, {len(kernels_without_kept)} launches with no config kept")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"triton": triton.__version__, "target": "cuda sm_90", "max_shared": MAX_SHARED,
                       "rows": rows}, handle, indent=1)
    return 1 if bad or kernels_without_kept else 0


if __name__ == "__main__":
    sys.exit(main())
