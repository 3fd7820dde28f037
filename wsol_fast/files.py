"""Atomic file writes: the ground floor of the package, with errors.py (it imports nothing else of it).

Every file the package writes (checkpoints, results, score maps, overlays, metrics.csv, the generated
datasets, figures, the ablation table) goes through `atomic_open`: a temp file in the same folder, flushed
and fsynced, then renamed, so a crash never leaves a torn file.
"""
from __future__ import annotations

import contextlib
import errno
import os

from .errors import UserError


class DiskFullError(UserError):
    """A write that failed for want of space (or quota); the partial file has been removed."""


def _write_all(fh, data) -> None:
    """The one place checkpoint bytes reach the disk (a seam the full-disk drill replaces)."""
    fh.write(data)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", fsync: bool = True, **open_kwargs):
    """Write `path` through `path.tmp-PID` in the same folder, flushed (and fsynced), then renamed over
    `path`: a crash never leaves a torn file. Any failure removes the temp file, so nothing partial is
    left; a full disk (ENOSPC, EDQUOT) is a DiskFullError that says so and names the path.

    fsync=False for the many small per-image files of evaluate and predict (score maps, overlays), where
    a sync per file would cost more than the file."""
    tmp = f"{path}.tmp-{os.getpid()}"
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
