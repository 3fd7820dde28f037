"""Dispatch by measurement on CUDA: per op, dtype and shape, the implementation that measured fastest.

`dispatch_table.json` (beside this file) holds device times (forward+backward) of each implementation
at a few shapes, with the GPU and the date of the measurement. For a call with impl=None on CUDA,
`choose(op, dtype, shape)` takes the measured shape nearest to the call's (in log space over the shape
key: (N, C') for the attention map, (C, N) for the masked GAP; ties go to the earlier row) and returns
that shape's fastest implementation: "reference", "triton", or a Triton attention backward variant
("triton-fused", "triton-atomic", "triton-bmm", the cuBLAS-bmm hybrid). float16 uses the bfloat16 rows
where it has none (same bytes, same kernels); a dtype with no rows at all (float64) gets None, and the
caller's default. `wsol_fast.backends()["dispatch"]` reports the table and each measured shape's choice.

The table is regenerated from a GPU run by `python scripts/bench_table.py --dispatch gpu_results.json`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import torch

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dispatch_table.json")
OPS = ("nonlocal_attention_map", "masked_gap")
# Table implementation name -> (wsol_fast.ops impl, attention backward variant or None).
IMPLEMENTATIONS = {
    "reference": ("reference", None),
    "triton": ("triton", None),
    "triton-fused": ("triton", "fused"),
    "triton-atomic": ("triton", "atomic"),
    "triton-bmm": ("triton", "bmm"),
}
# A dtype without rows of its own takes those of this one.
DTYPE_FALLBACK = {"float16": "bfloat16"}


@dataclasses.dataclass(frozen=True)
class Choice:
    impl: str                   # "reference" or "triton"
    variant: str | None         # the attention backward variant, where the table names one
    measured: tuple             # the measured shape the choice comes from
    measured_dtype: str
    exact: bool                 # the call's shape (and dtype) was measured itself


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else str(dtype)


def validate(table: dict) -> dict:
    """Check a table's structure (clear errors for a hand-edited or truncated file); return it."""
    for key in ("gpu", "date", "source", "rows"):
        if key not in table:
            raise ValueError(f"dispatch table: missing {key!r}")
    for i, row in enumerate(table["rows"]):
        if row.get("op") not in OPS:
            raise ValueError(f"dispatch table row {i}: op must be one of {OPS}, got {row.get('op')!r}")
        if not (isinstance(row.get("shape"), list) and len(row["shape"]) == 2 and all(v > 0 for v in row["shape"])):
            raise ValueError(f"dispatch table row {i}: shape must be two positive sizes, got {row.get('shape')!r}")
        unknown = set(row.get("ms") or {}) - set(IMPLEMENTATIONS)
        if not row.get("ms") or unknown:
            raise ValueError(f"dispatch table row {i}: ms must time implementations among {sorted(IMPLEMENTATIONS)}, "
                             f"got {row.get('ms')!r}")
    return table


def load_table(path: str = TABLE_PATH) -> dict:
    with open(path) as handle:
        return validate(json.load(handle))


def _load_or_empty() -> dict:
    """The committed table; an empty one, with a warning, where the file is missing or malformed (an
    install without package data): then every call takes the device default, as before this table."""
    try:
        return load_table(TABLE_PATH)
    except (OSError, ValueError) as exc:
        import warnings

        warnings.warn(f"wsol_fast: no CUDA dispatch table ({exc}); CUDA calls take the Triton kernels",
                      RuntimeWarning, stacklevel=2)
        return {"gpu": "none", "date": "none", "source": f"missing: {TABLE_PATH}", "rows": []}


# Read once at import: under torch.compile `choose` then runs on constants (no file access in a trace).
TABLE: dict = _load_or_empty()


def fastest(row: dict) -> str:
    """The table implementation with the least time in one row (ties: the first listed)."""
    best = None
    for name, ms in row["ms"].items():
        if best is None or ms < row["ms"][best]:
            best = name
    return best


def choose(op: str, dtype, shape, table: dict | None = None) -> Choice | None:
    """The measured choice for one call, or None where the table has no row for the op and dtype."""
    table = TABLE if table is None else table
    name = _dtype_name(dtype)
    for candidate in (name, DTYPE_FALLBACK.get(name)):
        rows = [r for r in table["rows"] if r["op"] == op and r["dtype"] == candidate]
        if rows:
            break
    else:
        return None
    shape = tuple(int(v) for v in shape)
    row, best = None, math.inf
    for candidate_row in rows:      # a plain loop (torch.compile traces it); the first of equal distances wins
        distance = sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(candidate_row["shape"], shape))
        if distance < best:
            row, best = candidate_row, distance
    impl, variant = IMPLEMENTATIONS[fastest(row)]
    return Choice(impl, variant, tuple(row["shape"]), candidate, tuple(row["shape"]) == shape and candidate == name)


def summary(table: dict | None = None) -> dict:
    """What backends() reports: the table's provenance and, per op and dtype, each measured shape's choice."""
    table = TABLE if table is None else table
    paths: dict = {}
    for row in table["rows"]:
        impl = fastest(row)
        paths.setdefault(row["op"], {}).setdefault(row["dtype"], []).append(
            {"shape": dict(zip(table.get("shape_key", {}).get(row["op"], ("0", "1")), row["shape"])), "impl": impl})
    return {"gpu": table["gpu"], "date": table["date"], "source": table["source"],
            "kernels": table.get("kernels"), "unmeasured": "the nearest measured shape's choice (log-space distance)",
            "cuda": paths}
