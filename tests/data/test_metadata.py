"""The wsolevaluation metadata files as read for a run: each error names file:line, and the real CUB
metadata is accepted as is."""
from __future__ import annotations

import os

import pytest

from wsol_fast.data.metadata import MetadataError, load_metadata, load_splits


# ------------------------------------------------------------------------------------------- metadata

GOOD = {
    "image_ids.txt": ["a.jpg", "b.jpg", "c.jpg"],
    "class_labels.txt": ["a.jpg,0", "b.jpg,1", "c.jpg,2"],
    "image_sizes.txt": ["a.jpg,100,80", "b.jpg,100,80", "c.jpg,100,80"],
    "localization.txt": ["a.jpg,10,10,50,60", "b.jpg,0,0,100,80", "c.jpg,5,6,7,8"],
}


def _write_split(root, files, dataset="DS", split="val"):
    folder = os.path.join(root, dataset, split)
    os.makedirs(folder, exist_ok=True)
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return folder


# (file, line number, new text, what the message must say). Each is its own, clear error.
MALFORMED = {
    "missing column": ("class_labels.txt", 2, "b.jpg", "expected 2 comma-separated columns"),
    "box outside the image": ("localization.txt", 3, "c.jpg,5,6,101,8", "lies outside the 100x80 image"),
    "unknown image id": ("class_labels.txt", 2, "zzz.jpg,1", "unknown image id 'zzz.jpg'"),
    "negative label": ("class_labels.txt", 2, "b.jpg,-1", "bad class label -1"),
    "non-integer label": ("class_labels.txt", 2, "b.jpg,one", "class label 'one' is not an integer"),
    "fractional label": ("class_labels.txt", 3, "c.jpg,1.5", "class label '1.5' is not an integer"),
    "duplicate id": ("image_ids.txt", 3, "b.jpg", "duplicate line 'b.jpg' (first at line 2)"),
    "absolute path": ("image_ids.txt", 1, "/data/a.jpg", "is absolute"),
    "dot-dot path": ("image_ids.txt", 1, "../a.jpg", "escapes the data root through '..'"),
    "x0 > x1": ("localization.txt", 1, "a.jpg,50,10,40,60", "is not x0<=x1, y0<=y1"),
    "non-numeric box": ("localization.txt", 1, "a.jpg,1,2,three,4", "must be numbers"),
}


def assert_load_error(root, dataset, split, path, line, message):
    """Reading the split fails with a MetadataError that starts with path:line: and says `message`."""
    with pytest.raises(MetadataError) as err:
        load_metadata(root, dataset, split)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_names_file_and_line(tmp_path, case):
    name, line, text, message = MALFORMED[case]
    files = {k: list(v) for k, v in GOOD.items()}
    files[name][line - 1] = text
    folder = _write_split(tmp_path, files)
    assert_load_error(str(tmp_path), "DS", "val", os.path.join(folder, name), line, message)


def test_label_out_of_range_names_file_and_line(tmp_path):
    folder = _write_split(tmp_path, GOOD)
    with pytest.raises(MetadataError, match="out of range for 2 classes") as err:
        load_metadata(str(tmp_path), "DS", "val", num_classes=2)
    assert str(err.value).startswith(f"{os.path.join(folder, 'class_labels.txt')}:3: ")


def test_good_metadata_reads_back(tmp_path):
    _write_split(tmp_path, GOOD)
    meta = load_metadata(str(tmp_path), "DS", "val")
    assert meta.image_ids == GOOD["image_ids.txt"] and meta.num_classes == 3
    assert meta.sizes["a.jpg"] == (100, 80) and meta.boxes["c.jpg"].tolist() == [[5, 6, 7, 8]]


def test_real_cub_metadata_is_accepted_as_is(cub_metadata_root):
    metas = load_splits(cub_metadata_root, "CUB")
    assert {s: len(m) for s, m in metas.items()} == {"train": 5994, "val": 1000, "test": 5794}
    assert {m.num_classes for m in metas.values()} == {200}
    assert all(len(metas[s].boxes) == len(metas[s]) for s in ("val", "test"))
