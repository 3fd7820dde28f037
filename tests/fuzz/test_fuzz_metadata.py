"""Fuzzing the metadata reader (issue 27): real metadata files of the built-in dataset, mutated field by
field, in their encoding, BOMs, line endings and paths. For every mutation, `load_splits` (what train,
evaluate and `data check` call) either gives a correct result or raises a MetadataError whose one-line
message names the file (and the line, for a line's fault); never another exception (a traceback).

Benign mutations (CRLF or CR line endings, a BOM at the start, blank lines, spaces around fields) must
give exactly the original result. Hypothesis profiles: tests/conftest.py (`ci` by default)."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutations import byte_flips

from wsol_fast import errors
from wsol_fast.data import builtin
from wsol_fast.data.metadata import MetadataError, load_splits

SPLITS = ("train", "val")
FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")

# Field values that have broken readers before: numbers out of range, not numbers, paths that escape
# or are absolute, separators and invisible characters.
ODD_VALUES = ["", " ", "-1", "0", "10", "999999999999", "1e3", "nan", "inf", "0x10", "1.5", "+3", "٣",
              "/abs/x.jpg", "../x.jpg", "a/../../x.jpg", "a\\b.jpg", "a//b.jpg", "C:/x.jpg", "a,b", "\t", "\ufeff",
              "\u00a0", "\u2028", "\x00", "é.jpg", "val/1/val_00000.jpg", "train/0/train_00001.jpg"]


@pytest.fixture(scope="module")
def original(fuzz_root):
    """(metadata root, the splits as read)."""
    meta_root = builtin.metadata_root(fuzz_root)
    return meta_root, load_splits(meta_root, "builtin", SPLITS)


def _snapshot(metas) -> dict:
    return {s: (m.image_ids, m.labels, m.num_classes, m.sizes, {k: v.tolist() for k, v in m.boxes.items()})
            for s, m in metas.items()}


@st.composite
def mutations(draw):
    """(split, file, mutate(bytes) -> bytes, benign)."""
    split, name = draw(st.sampled_from(SPLITS)), draw(st.sampled_from(FILES))
    kind = draw(st.sampled_from(["field", "drop", "duplicate", "swap", "truncate", "endings", "bom_start",
                                 "bom_inside", "blank_lines", "spaces", "encoding", "bytes", "path", "empty"]))
    if kind == "field":
        line, col = draw(st.integers(0, 30)), draw(st.integers(0, 5))
        value = draw(st.sampled_from(ODD_VALUES) | st.text(max_size=6))

        def mutate(data):
            lines = data.decode("utf-8").split("\n")
            k = line % max(1, len(lines) - 1)
            fields = lines[k].split(",")
            fields[col % len(fields)] = value
            lines[k] = ",".join(fields)
            return "\n".join(lines).encode("utf-8", "surrogatepass")
        return split, name, mutate, False
    if kind in ("drop", "duplicate", "swap"):
        a, b = draw(st.integers(0, 30)), draw(st.integers(0, 30))

        def mutate(data):
            lines = data.split(b"\n")[:-1]
            i, j = a % len(lines), b % len(lines)
            if kind == "drop":
                del lines[i]
            elif kind == "duplicate":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            return b"\n".join(lines) + b"\n"
        return split, name, mutate, False
    if kind == "truncate":
        cut = draw(st.floats(0, 1))
        return split, name, lambda data: data[: int(len(data) * cut)], False
    if kind == "endings":
        ending = draw(st.sampled_from([b"\r\n", b"\r", b"mixed"]))

        def mutate(data):
            lines = data.split(b"\n")
            if ending == b"mixed":
                return b"".join(line + (b"\r\n" if k % 2 else b"\n") for k, line in enumerate(lines[:-1]))
            return ending.join(lines)
        return split, name, mutate, True
    if kind == "bom_start":
        return split, name, lambda data: b"\xef\xbb\xbf" + data, True
    if kind == "bom_inside":
        at = draw(st.integers(1, 30))

        def mutate(data):
            lines = data.split(b"\n")
            k = 1 + at % max(1, len(lines) - 2)
            lines[k] = b"\xef\xbb\xbf" + lines[k]
            return b"\n".join(lines)
        return split, name, mutate, False
    if kind == "blank_lines":
        at = draw(st.integers(0, 30))

        def mutate(data):
            lines = data.split(b"\n")
            lines.insert(at % len(lines), b"   ")
            return b"\n".join(lines) + b"\n\n"
        return split, name, mutate, True
    if kind == "spaces":
        return split, name, lambda data: data.replace(b",", b" , ").replace(b"\n", b" \n"), True
    if kind == "encoding":
        codec = draw(st.sampled_from(["utf-16", "utf-32", "cp1252-accent"]))

        def mutate(data):
            if codec == "cp1252-accent":
                return data.replace(b"val_", b"v\xe9l_", 1).replace(b"train_", b"tr\xe9in_", 1)
            return data.decode("utf-8").encode(codec)
        return split, name, mutate, False
    if kind == "bytes":
        flips, mutate = byte_flips(draw, 4)
        return split, name, mutate, False
    if kind == "path":
        line, value = draw(st.integers(0, 30)), draw(st.sampled_from([v for v in ODD_VALUES if "." in v or "/" in v]))

        def mutate(data):
            lines = data.decode("utf-8").split("\n")
            k = line % max(1, len(lines) - 1)
            rest = lines[k].split(",", 1)
            lines[k] = ",".join([value] + rest[1:])
            return "\n".join(lines).encode("utf-8")
        return split, name, mutate, False
    return split, name, lambda data: b"", False


def _check_error(exc: MetadataError, folder: str) -> None:
    """One line naming a file of the split's folder (and `file:line` when a line is at fault)."""
    line = errors.error_line(exc)
    assert "\n" not in line and line.startswith("error: "), line
    assert re.search(re.escape(folder) + r"[^ ]*\.txt", str(exc)) or re.search(re.escape(folder), str(exc)), str(exc)


def _check_valid(metas) -> None:
    """What a loaded split must satisfy: labels for every id in [0, num_classes), positive sizes, boxes
    inside their image (edge-inclusive)."""
    for meta in metas.values():
        assert len(set(meta.image_ids)) == len(meta.image_ids) > 0
        assert set(meta.labels) == set(meta.image_ids)
        assert all(0 <= v < meta.num_classes for v in meta.labels.values())
        for image_id, boxes in meta.boxes.items():
            w, h = meta.sizes[image_id]
            assert w > 0 and h > 0
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            assert ((0 <= b[:, 0]) & (b[:, 0] <= b[:, 2]) & (b[:, 2] <= w)).all()
            assert ((0 <= b[:, 1]) & (b[:, 1] <= b[:, 3]) & (b[:, 3] <= h)).all()


@given(mutation=mutations())
def test_a_mutated_metadata_file_loads_correctly_or_is_one_error_line_naming_it(original, mutation):
    meta_root, expected = original
    split, name, mutate, benign = mutation
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "meta")
        shutil.copytree(meta_root, root)
        path = os.path.join(root, "builtin", split, name)
        data = open(path, "rb").read()
        open(path, "wb").write(mutate(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # duplicate lines: a warning, dropped
                metas = load_splits(root, "builtin", SPLITS)
        except MetadataError as exc:
            assert not benign, f"a benign change was refused: {exc}"
            _check_error(exc, os.path.join(root, "builtin"))
            return
        _check_valid(metas)
        if benign:
            assert _snapshot(metas) == _snapshot(expected)
