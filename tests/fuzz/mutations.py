"""What the fuzzers share: byte flips drawn by Hypothesis, applied to a file's bytes."""
from __future__ import annotations

from hypothesis import strategies as st


def byte_flips(draw, max_size: int):
    """Draw 1..max_size (relative position, new byte value) pairs and return the function applying them."""
    flips = draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1,
                          max_size=max_size))

    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        for where, value in flips:
            out[int(where * len(out))] = value
        return bytes(out)
    return flips, mutate
