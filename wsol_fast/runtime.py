"""Run-time plumbing shared by train and evaluate: devices, mixed precision, torch.distributed,
atomic checkpoints, RNG state, and peak-memory telemetry."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import resource
import sys
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
    """--amp {auto,off,bf16,fp16} -> autocast dtype (None = fp32). `auto` follows measurement (SPEC 6):
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
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
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


# ----------------------------------------------------------------------------- checkpoints and RNG

class UserError(Exception):
    """An expected failure (a bad flag, file or folder): the commands print its message, one clear line
    naming the file, line or flag, and exit with code 2 (--debug shows the traceback)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, of another kind, or does not fit the model."""


class ConfigError(UserError, ValueError):
    """Settings that do not fit together, or do not fit the data or checkpoint."""


class UnavailableError(UserError, RuntimeError):
    """Something the settings ask for is not installed here (e.g. --loader dali without DALI)."""


class DiskFullError(UserError):
    """A write that failed for want of space (or quota); the partial file has been removed."""


CHECKPOINT_KEYS = ("model", "epoch", "step", "config", "num_classes")


def _write_all(fh, data) -> None:
    """The one place checkpoint bytes reach the disk (a seam the full-disk drill replaces)."""
    fh.write(data)


def atomic_write_bytes(data, path: str) -> None:
    """Write to `path.tmp-PID` in the same folder, fsync, then rename: a crash never leaves a torn file.
    Any failure removes the temp file, so nothing partial is left; a full disk (ENOSPC, EDQUOT) is a
    DiskFullError that says so and names the path."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left on device writing {path} (nothing partial was left; "
                                f"the previous {os.path.basename(path)}, if any, is intact)") from exc
        raise


def atomic_write_text(text: str, path: str) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_save(obj, path: str) -> None:
    """torch.save into memory, then one atomic write. Serialising to a buffer first makes a full disk an
    ordinary OSError (ENOSPC) instead of torch's zip writer's "enforce fail" without the reason."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getbuffer(), path)


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove `*.tmp-*` / `*.tmp` files that an earlier crash left in a run folder (call it holding the
    folder's lock, so no live writer owns them). Returns the names removed."""
    removed = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            if ".tmp-" in name or name.endswith(".tmp"):
                path = os.path.join(folder, name)
                if os.path.isfile(path):
                    with contextlib.suppress(OSError):
                        os.remove(path)
                        removed.append(name)
    return removed


def load_checkpoint(path: str, require=CHECKPOINT_KEYS) -> dict:
    """Checkpoints hold only tensors and plain Python values, so weights_only=True loads them. A missing,
    truncated or foreign file, or one without the `require`d keys (e.g. a bare state dict), is a
    CheckpointError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise CheckpointError(f"checkpoint {path}: {what}")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated, corrupt or not a PyTorch "
                              f"checkpoint): {reason}") from exc
    if not isinstance(st, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(st).__name__}, not a wsol_fast checkpoint")
    missing = [k for k in require if k not in st]
    if missing:
        bare = all(isinstance(v, torch.Tensor) for v in st.values())
        kind = "a bare state dict" if bare and st else "not a checkpoint written by wsol_fast.train"
        raise CheckpointError(f"checkpoint {path} is {kind} (no {', '.join(repr(k) for k in missing)}); "
                              "pass the last.pt or best.pt of a run folder")
    return st


def load_weights(model: torch.nn.Module, weights: dict, path: str, what: str = "the model") -> None:
    """model.load_state_dict(weights), with a short CheckpointError (counts and the first few keys)
    instead of PyTorch's dump of every mismatched tensor."""
    target = model.state_dict()
    missing = [k for k in target if k not in weights]
    unexpected = [k for k in weights if k not in target]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in weights and hasattr(weights[k], "shape") and weights[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {name} (first: {x[0]})" for x, name in
                 ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if x]
        raise CheckpointError(f"the weights in {path} do not fit {what}: " + "; ".join(parts))
    model.load_state_dict(weights)


def rng_state() -> dict:
    """All RNG states as weights_only-loadable values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


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
