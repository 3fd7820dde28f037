"""The expected errors: the ground floor of the package (it imports nothing from it).

Every failure a user can cause and fix (a bad flag, metadata line, image, checkpoint, weights file, score
map, folder, full disk) is a `WsolError`. Every command catches exactly this base class (plus the few
foreign types in `guard.expected_errors`) and prints one `error: ...` line naming the flag, file (and
line) or image, with exit code 2; anything else is a bug and keeps its traceback (exit code 1).

The subclasses live where they are raised (and stay importable from there): `runtime.UserError` (and
`ConfigError`, `UnavailableError`), `checkpoint.CheckpointError` / `DiskFullError`,
`data.metadata.MetadataError`, `data.images.BadImageError`, `models.pretrained.PretrainedMismatchError`,
`scoremaps.ScoremapError`, `predict.PredictError`. Those that were ValueError / RuntimeError before keep
that base too, so code that catches the builtin type still catches them.
"""
from __future__ import annotations

EXIT_CODE = 2


class WsolError(Exception):
    """An expected failure: one `error: <message>` line and exit code 2. The message names the flag,
    file (and line) or image."""


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
