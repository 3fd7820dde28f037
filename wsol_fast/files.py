"""Atomic file writes and safe torch loads: the ground floor of the package, with errors.py (it imports
nothing else of it).

Every file the package writes (checkpoints, results, score maps, overlays, metrics.csv, the generated
datasets, figures, the ablation table) goes through `atomic_open`: a temp file in the same folder, flushed
and fsynced, then renamed, so a crash never leaves a torn file. Every torch file it reads (checkpoints,
pretrained weights) goes through `torch_load`: weights_only, so a file can never run code.
"""
from __future__ import annotations

import contextlib
import errno
import os

import torch

from .errors import UserError, one_line, scrub_torch_advice


class DiskFullError(UserError):
    """A write that failed for want of space (or quota); the partial file has been removed."""


def _write_all(fh, data) -> None:
    """The one place checkpoint bytes reach the disk (a seam the full-disk drill replaces)."""
    fh.write(data)


def _temp_path(path: str) -> str:
    """The temp name a write of `path` goes through (remove_stale_temp_files knows its pattern)."""
    return f"{path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", fsync: bool = True, **open_kwargs):
    """Write `path` through `path.tmp-PID` in the same folder, flushed (and fsynced), then renamed over
    `path`: a crash never leaves a torn file. Any failure removes the temp file, so nothing partial is
    left; a full disk (ENOSPC, EDQUOT) is a DiskFullError that says so and names the path.

    fsync=False for the many small per-image files of evaluate and predict (score maps, overlays), where
    a sync per file would cost more than the file."""
    tmp = _temp_path(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left on device writing {path} (nothing partial was left; "
                                f"the previous {os.path.basename(path)}, if any, is intact)") from exc
        raise


def atomic_write(data, path: str, fsync: bool = True) -> None:
    """Write bytes (or a str, as UTF-8) to `path` atomically (atomic_open)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path, "wb", fsync=fsync) as fh:
        _write_all(fh, data)


def atomic_link(src: str, path: str) -> None:
    """Make `path` hold `src`'s bytes, atomically, without writing them again: a hard link made under a temp
    name, then renamed over `path`. Every write of this package replaces a file (a new inode), so a later
    write of `src` leaves `path` as it was. Where the filesystem has no hard links, a copy through
    atomic_write."""
    tmp = _temp_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as fh:
            atomic_write(fh.read(), path)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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


# ----------------------------------------------------------------------------- safe loads

def load_failure(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) failed, in one line, without torch's advice to retry with
    weights_only=False (that would run whatever code a malicious file holds; never do it)."""
    import re

    text = str(exc).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return (f"it refers to {found.group(1)}, which a file of tensors and plain values never does; it "
                    "is not loaded (loading it could run code)")
        found = re.search(r"Unsupported (operand \d+|class [\w.]+)", text)
        what = f" (unsupported {found.group(1)})" if found else ""
        return f"its bytes are not a file of tensors and plain values{what}; it is not loaded"
    return one_line(scrub_torch_advice(text)) or type(exc).__name__


def torch_load(path: str):
    """torch.load(path, weights_only=True) on the CPU, without torch's warnings about the pickle protocol
    of a foreign file (the failure, if any, is the message)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
