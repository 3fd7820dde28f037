"""What keeps a run from losing work or failing silently (issue 17): flag ranges checked at parse time,
one run per folder (a lock), signals turned into a checkpoint at a step boundary, --resume settings
compared with the run's, and one clear message instead of a traceback for every expected failure.

Exit codes of the commands (README, "When things go wrong"): 0 done; 2 an expected error (bad flag,
file, line, image, checkpoint, folder, full disk), printed as one `error: ...` message; 3 a non-finite
loss; 130 / 143 stopped by SIGINT / SIGTERM after writing a resumable checkpoint; 1 anything
unexpected (a traceback: a bug).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import traceback

from .errors import EXIT_CODE, WsolError, one_line
from .runtime import UserError

# The smallest --crop-size per backbone: the smallest crop whose class activation map is still 2 x 2
# (measured with create_model(..., method="icl") in train and eval mode; smaller crops either fail in the
# network or leave a 1 x 1 map, which localises nothing). tests/test_reliability.py re-measures it.
MIN_CROP = {"inceptionv3": 15, "resnet50": 9, "vgg16": 32}

# Settings a --resume may change: they do not alter what the run computes (or, for --epochs, extend it).
RESUME_MAY_CHANGE = {"epochs", "output", "device", "workers", "loader", "data_root", "metadata_root",
                     "num_overlays", "skip_bad_images", "compile", "max_image_pixels", "checkpoint_every"}

# What a run writes into its folder (removed by --overwrite).
RUN_FILES = ("config.json", "last.pt", "best.pt", "results.json", "metrics.csv", "skipped_images.txt")
LOCK_NAME = ".lock"


# ----------------------------------------------------------------------------- argparse types

def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


def positive_int(text: str) -> int:
    v = _number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    v = _number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def nonneg_float(text: str) -> float:
    v = _number(float, text)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return v


def positive_float(text: str) -> float:
    v = _number(float, text)
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return v


def unit_interval(text: str) -> float:
    """[0, 1]: a probability or a fraction of the attention map's max."""
    v = _number(float, text)
    if not 0.0 <= v <= 1.0:   # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def fraction_of_max(text: str) -> float:
    """(0, 1]: a threshold as a fraction of a map's max (gamma_fg: 0 would make M_dfg empty)."""
    v = _number(float, text)
    if not 0.0 < v <= 1.0:   # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a fraction of max A), got {text}")
    return v


def attention_scale(text: str) -> str:
    """The logit scale of the attention softmax: a positive number, or inv_sqrt (1 / sqrt(C'))."""
    if text == "inv_sqrt":
        return text
    v = _number(float, text)
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or inv_sqrt, got {text}")
    return text


def open_interval(text: str) -> float:
    """(0, 1): a CAM threshold step."""
    v = _number(float, text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), e.g. 0.01 or 0.001, got {text}")
    return v


# The plain type each range-checked flag type converts to (the --config reader checks file values with it).
for _fn, _base in ((positive_int, int), (nonneg_int, int), (nonneg_float, float), (positive_float, float),
                   (unit_interval, float), (fraction_of_max, float), (open_interval, float)):
    _fn.base_type = _base


def check_crop(parser: argparse.ArgumentParser, backbone: str, crop: int | None, resize: int | None) -> None:
    low = MIN_CROP.get(backbone, 1)
    if crop is not None and crop < low:
        parser.error(f"argument --crop-size: {backbone} needs at least {low} (its class map is 2 x 2 "
                     f"there), got {crop}")
    if resize is not None and resize < 1:
        parser.error(f"argument --resize-size: must be >= 1, got {resize}")


def given_dests(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The `dest`s of the options written on the command line (not left at their defaults)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    options = {o: act.dest for act in parser._actions for o in act.option_strings}
    given = set()
    for word in words:
        if word in options:
            given.add(options[word])
        else:   # argparse accepts a unique prefix (--epoch for --epochs)
            dests = {d for o, d in options.items() if o.startswith(word)}
            given |= dests if len(dests) == 1 else set()
    return given


def resume_conflicts(cli: dict, saved: dict, given: set[str]) -> list[str]:
    """`--flag: run X, now Y` for every given flag whose value differs from the resumed run's and that
    may not change (RESUME_MAY_CHANGE). cli / saved: TrainConfig.to_dict()s."""
    out = []
    for section, fields in cli.items():
        for key, value in fields.items():
            if key not in given or key in RESUME_MAY_CHANGE or key in ("resume", "init_from"):
                continue
            old = saved.get(section, {}).get(key)
            if value != old:
                out.append(f"--{key.replace('_', '-')}: run {old!r}, now {value!r}")
    return out


# ----------------------------------------------------------------------------- one run per folder

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
    from .checkpoint import remove_stale_temp_files

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


# ----------------------------------------------------------------------------- signals

class StopSignals:
    """SIGINT and SIGTERM only set `signum`: the training loop finishes its step, writes a resumable
    checkpoint and exits 128 + signum. Signals that arrive later (during that save) are recorded and
    reported, never raised, so a save is never torn by a second Ctrl-C."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True, immediate: bool = False, announce: bool = True, shared: bool = False):
        """immediate: exit at once (SystemExit 128 + signum), for phases that leave nothing partial.
        announce: print what happens (rank 0 only under torchrun). shared: `stop` is what every rank agreed
        on (`agreed`, set by elastic.StepHooks.agree_stop), so all ranks stop after the same step."""
        self.enabled, self.immediate, self.signum, self.count, self._prev = enabled, immediate, None, 0, {}
        self.announce, self.shared, self.agreed = announce, shared, None

    def __enter__(self) -> "StopSignals":
        if self.enabled:
            for s in self.SIGNALS:
                self._prev[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, prev in self._prev.items():
            signal.signal(s, prev)
        self._prev = {}

    def _handler(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.immediate:
            print(f"\n{name}: stopped; the checkpoints written so far are kept", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        if self.signum is None:
            self.signum = signum
            if not self.announce:
                return
            print(f"\n{name}: finishing the current step, then writing a resumable checkpoint ...",
                  file=sys.stderr, flush=True)
        elif self.announce:
            print(f"\n{name} again: the checkpoint is being written; exiting as soon as it is complete",
                  file=sys.stderr, flush=True)

    @property
    def stop(self) -> bool:
        return (self.agreed if self.shared else self.signum) is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


class Stopped(Exception):
    """Raised by the training loop at a step boundary after a stop signal; carries the steps done."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


# ----------------------------------------------------------------------------- messages, not tracebacks

def expected_errors() -> tuple[type, ...]:
    """What the commands turn into one `error:` line: WsolError (every error of this package that a user
    can cause and fix), and the few foreign types that a missing or unreadable path raises from code we do
    not own (their messages name the path)."""
    return (WsolError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            UnicodeDecodeError)


def error_line(exc: BaseException) -> str:
    """The one `error: ...` line of an expected error (a multi-line message is joined with '; ')."""
    return f"error: {one_line(str(exc)) or type(exc).__name__}"


def run_command(fn, debug: bool) -> int:
    """fn() -> exit code; an expected error is one `error: ...` line and exit code 2 (with --debug,
    the traceback too)."""
    try:
        return fn()
    except expected_errors() as exc:
        if debug:
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        return EXIT_CODE


def debug_requested(argv) -> bool:
    return "--debug" in (sys.argv[1:] if argv is None else argv)


def warn_escaping_symlinks(paths, image_root: str, limit: int = 3) -> list[str]:
    """Files (or their folders) under image_root that are symlinks resolving outside it: a warning naming
    them (data mounted elsewhere through a link is legitimate, but should not go unnoticed)."""
    root = os.path.realpath(image_root) + os.sep
    escaping, seen_dirs = [], {}
    for path in paths:
        parent = os.path.dirname(path)
        if parent not in seen_dirs:
            seen_dirs[parent] = not (os.path.realpath(parent) + os.sep).startswith(root)
        if seen_dirs[parent] or (os.path.islink(path) and not os.path.realpath(path).startswith(root)):
            escaping.append(path)
    if escaping:
        shown = ", ".join(f"{p} -> {os.path.realpath(p)}" for p in escaping[:limit])
        print(f"warning: {len(escaping)} image path(s) lead outside the data root {image_root} through a "
              f"symlink: {shown}{' ...' if len(escaping) > limit else ''}", file=sys.stderr)
    return escaping


# ----------------------------------------------------------------------------- the training loop's safety net

class NonFiniteLoss(RuntimeError):
    """The loss went inf or nan: the run stops (exit code 3) and keeps its last good checkpoint."""


class RunGuard:
    """How a training run stops or fails without losing work, kept out of the loop itself.

    `with RunGuard(save, out, is_main) as g:` catches SIGINT / SIGTERM (g.signals: the loop finishes its
    step, raises Stopped; signals during a save wait for it). `with g.epoch(epoch, start_step):` turns a
    Stopped into a resumable last.pt and exit 128 + signum, and keeps the steps done before a failure
    (g.progress = (epoch, steps done, non-finite flag) is the loop's to update). `save(name, epoch, step)`
    writes a checkpoint."""

    def __init__(self, save, out: str, is_main: bool):
        self.save, self.out, self.is_main = save, out, is_main
        self.signals = StopSignals(enabled=False)
        self.progress = (0, 0, None)
        self.every_rank = False   # under torchrun: every rank catches the signals, and they agree (elastic.py)

    def __enter__(self) -> "RunGuard":
        self.signals = StopSignals(enabled=self.is_main or self.every_rank, announce=self.is_main,
                                   shared=self.every_rank).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.signals.__exit__(*exc)

    @contextlib.contextmanager
    def epoch(self, epoch: int, start_step: int):
        try:
            yield
        except Stopped as stopped:
            self.save("last.pt", epoch, stopped.step)
            self.exit_stopped(f"epoch {epoch + 1}, step {stopped.step}")
        except Exception as exc:
            self._save_progress_before_failing(exc, epoch, start_step)
            if self.signals.stop:   # e.g. a loader worker that the signal reached too
                self.exit_stopped(f"epoch {epoch + 1}, step {self.progress[1]} ({exc})")
            raise

    @contextlib.contextmanager
    def saved_on_failure(self, name: str, epoch: int, what: str):
        """A failure inside (e.g. validation) first saves `name` at (epoch, step 0)."""
        try:
            yield
        except Exception:
            self._save_quietly(name, epoch, 0, what)
            raise

    def exit_stopped(self, where: str):
        if self.is_main:
            name = signal.Signals(self.signals.signum).name
            print(f"\n{name}: stopped at {where}; resumable checkpoint written to {self.out}/last.pt "
                  f"(resume with --resume {self.out}/last.pt)", file=sys.stderr)
        raise SystemExit(self.signals.exit_code)

    def nonfinite(self, epoch: int, step: int) -> NonFiniteLoss:
        last = os.path.join(self.out, "last.pt")
        kept = (f"the last good checkpoint ({last}) is kept" if os.path.isfile(last) else
                "no checkpoint was written yet (it fails before the first epoch-end save)")
        return NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, step {step}; {kept}. Lower --lr, or check "
                             "the data")

    def _save_quietly(self, name: str, epoch: int, step: int, what: str) -> None:
        """Save before a failure propagates; a failing save (e.g. a full disk) must not hide the failure."""
        try:
            self.save(name, epoch, step)
        except Exception as exc:   # the original error is what the user needs to see first
            print(f"could not save {what} before failing: {exc}", file=sys.stderr)
            return
        if self.is_main:
            print(f"{what} is kept: {os.path.join(self.out, name)} (epoch {epoch + (step == 0)}"
                  f"{f', step {step}' if step else ''}); after fixing the cause, --resume it", file=sys.stderr)

    def _save_progress_before_failing(self, exc: Exception, epoch: int, start_step: int) -> None:
        """A failure mid-epoch (e.g. an image that does not decode): keep the steps done, unless the loss
        had gone non-finite (those weights are not worth keeping) or nothing new was trained."""
        p_epoch, done, nonfinite = self.progress
        if isinstance(exc, NonFiniteLoss) or p_epoch != epoch or done <= start_step:
            return
        if nonfinite is not None and bool(nonfinite):
            return
        self._save_quietly("last.pt", epoch, done, f"the {done} step(s) trained in epoch {epoch + 1}")
