"""One run per folder: an exclusive lock on RUN/.lock, and the claim of a run folder (refuse a finished or
interrupted run unless resuming it or --overwrite; remove an earlier crash's temp files)."""
from __future__ import annotations

import contextlib
import os
import sys

from .errors import UserError

# What a run writes into its folder (removed by --overwrite).
RUN_FILES = ("config.json", "last.pt", "best.pt", "results.json", "metrics.csv", "skipped_images.txt")
LOCK_NAME = ".lock"


class RunLock:
    """An exclusive flock on RUN/.lock, holding the owner's pid. The kernel drops the lock when the process
    ends however it ends, so a crash never leaves a folder locked; the file itself stays."""

    def __init__(self, folder: str):
        self.folder, self.path, self.fh = folder, os.path.join(folder, LOCK_NAME), None

    def acquire(self) -> "RunLock":
        import fcntl

        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):   # a file system without locks: warn, run unlocked
                print(f"warning: cannot lock {self.path} ({exc.strerror or exc}); make sure no other run "
                      "writes to this folder", file=sys.stderr)
                self.fh = fh
                return self
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise UserError(f"--output {self.folder}: another run (pid {holder}) is writing to this folder; "
                            "wait for it, stop it, or choose another --output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()   # closing drops the flock
            self.fh = None


def claim_run_folder(folder: str, resume: bool, overwrite: bool) -> RunLock:
    """Create and lock `folder` for this run. A folder holding a finished or interrupted run is refused
    unless resuming it or --overwrite (which removes that run's files). Stale temp files from an earlier
    crash are removed."""
    from .files import remove_stale_temp_files

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--output {folder}: exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {folder}: cannot create the run folder: {exc.strerror or exc}") from None
    lock = RunLock(folder).acquire()
    try:
        if not resume:
            previous = [n for n in ("results.json", "last.pt", "best.pt") if os.path.exists(os.path.join(folder, n))]
            if previous and not overwrite:
                state = "a finished run" if "results.json" in previous else "an interrupted run"
                raise UserError(f"--output {folder} holds {state} ({', '.join(previous)}); continue it with "
                                f"--resume {os.path.join(folder, 'last.pt')}, replace it with --overwrite, "
                                "or choose another --output")
            if overwrite:
                for name in RUN_FILES + tuple(n for n in os.listdir(folder) if n.startswith("results_")):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
                import shutil
                shutil.rmtree(os.path.join(folder, "overlays"), ignore_errors=True)
        removed = remove_stale_temp_files(folder)
        if removed:
            print(f"removed {len(removed)} stale temporary file(s) from an earlier crash in {folder}: "
                  f"{', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}", file=sys.stderr)
    except BaseException:
        lock.release()
        raise
    return lock
