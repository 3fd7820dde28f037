"""The expected errors: the ground floor of the package (it imports nothing from it).

Every failure a user can cause and fix (a bad flag, metadata line, image, checkpoint, weights file, score
map, folder, full disk) is a `WsolError`. Every command catches exactly this base class (plus the few
foreign types in `expected_errors`) and prints one `error: ...` line naming the flag, file (and
line) or image, with exit code 2; anything else is a bug and keeps its traceback (exit code 1).

The general kinds live here (`UserError`, `ConfigError`, `UnavailableError`; importable from runtime too);
the specific ones live where they are raised: `files.DiskFullError`, `checkpoint.CheckpointError`,
`config_file.ConfigFileError`, `data.metadata.MetadataError`, `data.images.BadImageError`,
`models.pretrained.PretrainedMismatchError`, `scoremaps.ScoremapError`, `predict.PredictError`. Those that
were ValueError / RuntimeError before keep that base too, so code that catches the builtin type still
catches them.
"""
from __future__ import annotations

import sys
import traceback

EXIT_CODE = 2


class WsolError(Exception):
    """An expected failure: one `error: <message>` line and exit code 2. The message names the flag,
    file (and line) or image."""


class UserError(WsolError):
    """An expected failure (a bad flag, file or folder): the commands print its message, one clear line
    naming the file, line or flag, and exit with code 2 (--debug shows the traceback)."""


class ConfigError(UserError, ValueError):
    """Settings that do not fit together, or do not fit the data or checkpoint."""


class UnavailableError(UserError, RuntimeError):
    """Something the settings ask for is not installed here (e.g. --loader dali without DALI)."""


def one_line(text: str) -> str:
    """`text` as the single line an `error:` message is: line breaks become '; ' (nothing is cut)."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts)


def scrub_torch_advice(text: str) -> str:
    """torch.load's message without its advice to load with weights_only=False (which would run any code a
    malicious file holds; this project never suggests it): the sentences that mention it are dropped."""
    import re

    sentences = re.split(r"(?<=[.!?])\s+|\n+", str(text))
    kept = [s.strip() for s in sentences if s.strip() and "weights_only" not in s
            and "safe_globals" not in s and "add_safe_globals" not in s and "unpickler" not in s.lower()]
    return " ".join(kept)


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
