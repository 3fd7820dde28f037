"""Run-time plumbing shared by train and evaluate: devices, mixed precision, torch.distributed, seeds,
and peak-memory telemetry (checkpoints: checkpoint.py; atomic writes: files.py; error types: errors.py)."""
from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist



# ----------------------------------------------------------------------------- devices and precision

def cpu_has_native_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), read at run time."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """--amp {auto,off,bf16,fp16} -> autocast dtype (None = fp32). `auto` follows measurement (docs/spec.md §6):
    bf16 where the hardware does it natively, fp32 elsewhere."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"--amp must be one of auto, off, bf16, fp16; got {amp!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Built once per run (nanoGPT style) and entered every step."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- distributed

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_arg: str | None) -> tuple[DistInfo, torch.device]:
    """Set up torch.distributed when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_arg:
        device = torch.device(device_arg)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    from .elastic import init_process_group   # one store prefix per torchrun attempt

    init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def replica_checksums(model: torch.nn.Module, info: DistInfo) -> dict | None:
    """Under DDP, replicas must end training with identical weights: one exact checksum per rank (take it
    before anything replaces the weights), gathered, then a barrier. None without DDP."""
    if not info.enabled:
        return None
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in model.parameters())
    out = {"world_size": info.world_size, "replica_checksums": all_gather_objects(checksum, info)}
    barrier(info)
    return out


def wrap_for_training(model: torch.nn.Module, info: DistInfo, device: torch.device, compile_mode: str | None,
                      find_unused_parameters: bool) -> torch.nn.Module:
    """The model the training step calls: DDP under torchrun, then torch.compile unless compile_mode is
    None or "off". find_unused_parameters: epochs that leave some parameters without gradients (the
    blocks during a warm-up)."""
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                          find_unused_parameters=find_unused_parameters)
    if compile_mode not in (None, "off"):
        # fullgraph: the whole model, ICL blocks and wsol_fast ops included, is one graph (the ops have
        # fake kernels). Under DDP, Dynamo splits the graph at gradient buckets, so no fullgraph there.
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode,
                              fullgraph=not info.enabled)
    return model


# ----------------------------------------------------------------------------- seeds

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- telemetry

def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 1024 if sys.platform.startswith("linux") else rss_kb / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FirstStepTimer:
    """`with timer:` around each training step: the first one of a compiled model pays for tracing and
    code generation; it is timed (synchronised) into `seconds` and reported once on stderr."""

    def __init__(self, enabled: bool, device: torch.device, report: bool):
        self.pending, self.device, self.report, self.seconds = enabled, device, report, 0.0

    def __enter__(self):
        self._t = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self.pending or exc_type is not None:
            return
        synchronize(self.device)
        self.seconds, self.pending = time.perf_counter() - self._t, False
        if self.report:
            print(f"torch.compile: first step took {self.seconds:.1f} s (compilation included)", file=sys.stderr)
