"""wsol_fast.flags: each range-checked argparse type accepts its range, refuses the rest, and names its base
type for the --config reader."""
from __future__ import annotations

import argparse

import pytest

from wsol_fast import flags

CASES = [   # (type, accepted, refused)
    (flags.positive_int, {"1": 1, "32": 32}, ["0", "-1", "1.5", "x"]),
    (flags.nonneg_int, {"0": 0, "7": 7}, ["-1", "x"]),
    (flags.nonneg_float, {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "inf"]),
    (flags.positive_float, {"0.5": 0.5}, ["0", "-1", "nan"]),
    (flags.unit_interval, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["-0.01", "1.01"]),
    (flags.open_interval, {"0.01": 0.01}, ["0", "1", "1.5"]),
]


@pytest.mark.parametrize("kind, accepted, refused", CASES, ids=[c[0].__name__ for c in CASES])
def test_ranges(kind, accepted, refused):
    for text, value in accepted.items():
        assert kind(text) == value
    for text in refused:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


def test_base_types_for_the_config_reader():
    assert flags.positive_int.base_type is int and flags.unit_interval.base_type is float
    assert flags.open_interval.base_type is float
