"""argparse types that check a flag's range at parse time (a bad value is argparse's usage error, exit 2).
Every command's flags use them, and the --config reader checks a file's values with the same functions
(each has a `base_type`)."""
from __future__ import annotations

import argparse
import math


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
    """The logit scale of the attention softmax: a positive number, or inv_sqrt (1 / sqrt(C')); kept as text."""
    if text != "inv_sqrt":
        try:
            positive_float(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be a positive number or inv_sqrt, got {text}") from None
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


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each flag's help, except where the default is None: such a flag is
    resolved later (per dataset, backbone or preset), and its help says how."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
