"""The protocol's metadata files as clovaai/wsolevaluation ships them, in generated copies of their exact
shapes: ILSVRC-style duplicate box lines, empty files on train splits, and OpenImages' mask lines
(several masks per image, the ignore path only on an image's first line, empty `image_sizes.txt`).
Also: the bulk reader and the line-by-line reader accept and reject the same files."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from test_metadata import assert_load_error  # noqa: E402
from wsol_fast.data.metadata import (DuplicateLinesWarning, MetadataError, check_mask_files, load_metadata,
                                     mask_paths)


def _write(root, dataset, split, files, final_newline=True):
    folder = os.path.join(root, dataset, split)
    os.makedirs(folder, exist_ok=True)
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w", newline="") as fh:
            fh.write("\n".join(lines) + ("\n" if final_newline and lines else ""))
    return folder


# --------------------------------------------------------------------------------------------- ILSVRC

def _ilsvrc_test(dup_lines):
    ids = [f"val/ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 7)]
    loc = [f"{i},{10 + k},{20 + k},{300 + k},{200 + k}" for k, i in enumerate(ids)]
    loc.insert(2, f"{ids[1]},0,104,499,248")          # a second box of image 2
    for line in dup_lines:                            # repeated lines, as ILSVRC test ships 4 of them
        loc.insert(len(loc) - 1, loc[line])
    return {"image_ids.txt": ids, "class_labels.txt": [f"{i},{k % 3}" for k, i in enumerate(ids)],
            "image_sizes.txt": [f"{i},500,375" for i in ids], "localization.txt": loc}


def test_duplicate_box_lines_are_one_warning_that_counts_them(tmp_path):
    """wsolevaluation's get_bounding_boxes appends every line, duplicates included; a duplicate box
    cannot change a best IoU (a max over boxes), so here it is counted in one warning and dropped."""
    files = _ilsvrc_test(dup_lines=[2, 2, 0])
    folder = _write(tmp_path, "ILSVRC", "test", files)
    with pytest.warns(DuplicateLinesWarning) as record:
        meta = load_metadata(str(tmp_path), "ILSVRC", "test")
    assert len(record) == 1
    message = str(record[0].message)
    path = os.path.join(folder, "localization.txt")
    # lines 7 and 8 repeat line 3 (image 2's second box), line 9 repeats line 1
    assert message.startswith(f"{path}: 3 duplicate line(s) ignored, the first at line 7: ")
    assert "(same as line 3)" in message
    clean = load_metadata(str(_write_clean(tmp_path, files)), "ILSVRC", "test")
    assert meta.image_ids == clean.image_ids
    for image_id in meta.image_ids:
        np.testing.assert_array_equal(meta.boxes[image_id], clean.boxes[image_id])
    assert meta.boxes["val/ILSVRC2012_val_00000002.JPEG"].tolist() == [[11, 21, 301, 201], [0, 104, 499, 248]]


def _write_clean(tmp_path, files):
    root = tmp_path / "clean"
    seen, loc = set(), []
    for line in files["localization.txt"]:
        if line not in seen:
            seen.add(line)
            loc.append(line)
    _write(root, "ILSVRC", "test", {**files, "localization.txt": loc})
    return root


def test_no_warning_without_duplicates(tmp_path):
    _write(tmp_path, "ILSVRC", "test", _ilsvrc_test(dup_lines=[]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_metadata(str(tmp_path), "ILSVRC", "test")


def test_train_split_with_empty_sizes_and_localization_loads(tmp_path):
    """ILSVRC's and OpenImages' train splits ship image_sizes.txt and localization.txt as empty files
    (wsolevaluation never reads them for training): an empty file is a file that is not there."""
    ids = [f"train/n0144{c}/n0144{c}_{k}.JPEG" for c in range(3) for k in range(4)]
    _write(tmp_path, "ILSVRC", "train", {"image_ids.txt": ids,
                                         "class_labels.txt": [f"{i},{n // 4}" for n, i in enumerate(ids)],
                                         "image_sizes.txt": [], "localization.txt": []})
    meta = load_metadata(str(tmp_path), "ILSVRC", "train")
    assert meta.image_ids == ids and meta.num_classes == 3
    assert meta.sizes == {} and meta.boxes == {} and meta.masks == {}


def test_a_scored_split_with_an_empty_localization_file_is_an_error(tmp_path):
    files = _ilsvrc_test(dup_lines=[])
    folder = _write(tmp_path, "ILSVRC", "val", {**files, "localization.txt": []})
    with pytest.raises(MetadataError, match="is empty; it is required for the 'val' split") as err:
        load_metadata(str(tmp_path), "ILSVRC", "val")
    assert str(err.value).startswith(os.path.join(folder, "localization.txt"))


# ----------------------------------------------------------------------------------------- OpenImages

OI_IDS = ["test/01226z/7af766bd43da900b.jpg", "test/01226z/973645e9516726b3.jpg", "test/0by6g/3abbd19d3b51179f.jpg"]
OI_LOC = [
    # image, instance mask, ignore mask (first line of each image only), as OpenImages' localization.txt
    "test/01226z/7af766bd43da900b.jpg,test/01226z/7af766bd43da900b_m01226z_6554d965.png,"
    "test/01226z/7af766bd43da900b_ignore.png",
    "test/01226z/7af766bd43da900b.jpg,test/01226z/7af766bd43da900b_m01226z_8856c605.png,",
    "test/01226z/973645e9516726b3.jpg,test/01226z/973645e9516726b3_m01226z_9ad378d4.png,"
    "test/01226z/973645e9516726b3_ignore.png",
    "test/0by6g/3abbd19d3b51179f.jpg,test/0by6g/3abbd19d3b51179f_m0by6g_5372dbc3.png,"
    "test/0by6g/3abbd19d3b51179f_ignore.png",
    "test/01226z/7af766bd43da900b.jpg,test/01226z/7af766bd43da900b_m01226z_0000aaaa.png,",
]


def _openimages(tmp_path, loc=OI_LOC, split="test"):
    return _write(tmp_path, "OpenImages", split,
                  {"image_ids.txt": OI_IDS, "class_labels.txt": [f"{i},{k % 2}" for k, i in enumerate(OI_IDS)],
                   "image_sizes.txt": [], "localization.txt": loc}, final_newline=False)


def test_openimages_masks_are_read_as_get_mask_paths_reads_them(tmp_path):
    """wsolevaluation's get_mask_paths: one line per instance mask, in file order; the ignore path
    comes from the image's first line and later lines leave it empty. OpenImages' image_sizes.txt is
    empty, and its files end without a newline."""
    _openimages(tmp_path)
    meta = load_metadata(str(tmp_path), "OpenImages", "test")
    assert meta.has_masks and meta.boxes == {} and meta.sizes == {}
    first = "test/01226z/7af766bd43da900b"
    assert meta.masks[OI_IDS[0]] == ([f"{first}_m01226z_6554d965.png", f"{first}_m01226z_8856c605.png",
                                      f"{first}_m01226z_0000aaaa.png"], f"{first}_ignore.png")
    assert meta.masks[OI_IDS[2]] == (["test/0by6g/3abbd19d3b51179f_m0by6g_5372dbc3.png"],
                                     "test/0by6g/3abbd19d3b51179f_ignore.png")


def test_masks_resolve_under_the_mask_root_and_missing_ones_are_named(tmp_path):
    """wsolevaluation reads masks at mask_root/OpenImages/<mask_path>."""
    _openimages(tmp_path)
    meta = load_metadata(str(tmp_path), "OpenImages", "test")
    root = str(tmp_path / "masks")
    files, ignore = mask_paths(meta, root, OI_IDS[1])
    assert files == [os.path.join(root, "OpenImages", "test/01226z/973645e9516726b3_m01226z_9ad378d4.png")]
    assert ignore == os.path.join(root, "OpenImages", "test/01226z/973645e9516726b3_ignore.png")
    for image_id in OI_IDS:
        files, ignore = mask_paths(meta, root, image_id)
        for f in files + [ignore]:
            os.makedirs(os.path.dirname(f), exist_ok=True)
            open(f, "wb").close()
    check_mask_files(meta, root)                     # all there: no error
    os.remove(ignore)
    with pytest.raises(MetadataError, match="1 mask file") as err:
        check_mask_files(meta, root)
    assert ignore in str(err.value) and "--mask-root" in str(err.value)


def test_an_empty_ignore_path_on_the_first_line_means_no_ignore_region(tmp_path):
    loc = list(OI_LOC)
    loc[2] = loc[2].rsplit(",", 1)[0] + ","
    _openimages(tmp_path, loc)
    meta = load_metadata(str(tmp_path), "OpenImages", "test")
    assert meta.masks[OI_IDS[1]][1] == ""
    assert mask_paths(meta, "R", OI_IDS[1])[1] is None


MASK_ERRORS = {
    # a mask path that leaves the mask root: the same checks as image paths
    "mask through ..": (1, f"{OI_IDS[0]},../../etc/passwd.png,", "escapes the data root through '..'"),
    "absolute mask": (1, f"{OI_IDS[0]},/abs/m.png,", "is absolute"),
    "ignore through ..": (0, f"{OI_IDS[0]},a.png,test/../../x_ignore.png", "escapes the data root through '..'"),
    # wsolevaluation asserts that only the first line of an image names an ignore mask
    "second ignore mask": (1, f"{OI_IDS[0]},test/01226z/other.png,test/01226z/other_ignore.png",
                           "has a second ignore mask"),
    "empty mask path": (1, f"{OI_IDS[0]},,", "empty image or mask path"),
    "four columns": (1, f"{OI_IDS[0]},a.png,,x", "expected 3 comma-separated columns"),
    "unknown image": (1, "test/zzz.jpg,a.png,", "unknown image id 'test/zzz.jpg'"),
}


@pytest.mark.parametrize("case", list(MASK_ERRORS))
def test_bad_mask_lines_name_file_and_line(tmp_path, case):
    index, text, message = MASK_ERRORS[case]
    loc = list(OI_LOC)
    loc[index] = text
    folder = _openimages(tmp_path, loc)
    assert_load_error(str(tmp_path), "OpenImages", "test", os.path.join(folder, "localization.txt"), index + 1,
                      message)


def test_duplicate_mask_lines_warn(tmp_path):
    """The same instance mask twice leaves the union of instance masks unchanged."""
    _openimages(tmp_path, OI_LOC + [OI_LOC[1]])
    with pytest.warns(DuplicateLinesWarning, match="1 duplicate line"):
        meta = load_metadata(str(tmp_path), "OpenImages", "test")
    assert len(meta.masks[OI_IDS[0]][0]) == 3


def test_openimages_train_split_with_empty_files(tmp_path):
    _write(tmp_path, "OpenImages", "train", {"image_ids.txt": OI_IDS,
                                             "class_labels.txt": [f"{i},0" for i in OI_IDS],
                                             "image_sizes.txt": [], "localization.txt": []})
    assert not load_metadata(str(tmp_path), "OpenImages", "train").has_masks


# ------------------------------------------------------------------------------ bulk vs line by line

def test_bulk_and_line_by_line_reading_agree(tmp_path):
    """A clean file takes the bulk path; the same content with CRLF, blank lines and spaces takes the
    line-by-line path. Both give the same metadata."""
    files = _ilsvrc_test(dup_lines=[])
    _write(tmp_path / "bulk", "ILSVRC", "val", files)
    messy = {name: [" " + line.replace(",", " , ") for line in lines] + [""] for name, lines in files.items()}
    folder = _write(tmp_path / "messy", "ILSVRC", "val", messy)
    for name in messy:   # CRLF line ends
        path = os.path.join(folder, name)
        data = open(path, "rb").read().replace(b"\n", b"\r\n")
        open(path, "wb").write(data)
    a = load_metadata(str(tmp_path / "bulk"), "ILSVRC", "val")
    b = load_metadata(str(tmp_path / "messy"), "ILSVRC", "val")
    assert a.image_ids == b.image_ids and a.labels == b.labels and a.sizes == b.sizes
    assert a.boxes.keys() == b.boxes.keys()


@pytest.mark.parametrize("name, lines, line, message", [
    # commas that balance out over two lines must not be read as two good lines
    ("class_labels.txt", ["a.jpg,0,b.jpg", "1", "c.jpg,2"], 1, "expected 2 comma-separated columns"),
    ("image_sizes.txt", ["a.jpg,10,10", "b.jpg,10,10,c.jpg", "10"], 2, "expected 3 comma-separated columns"),
    ("image_ids.txt", ["a.jpg", "b.jpg", "a.jpg"], 3, "duplicate line 'a.jpg' (first at line 1)"),
    ("image_ids.txt", ["a.jpg", "x/../b.jpg", "c.jpg"], 2, "escapes the data root"),
    ("class_labels.txt", ["a.jpg,0", "b.jpg,1", "b.jpg,2"], 3, "duplicate line for image 'b.jpg'"),
    ("image_sizes.txt", ["a.jpg,10,10", "b.jpg,0,10", "c.jpg,10,10"], 2, "is not positive"),
])
def test_bulk_path_rejects_what_the_line_reader_rejects(tmp_path, name, lines, line, message):
    files = {"image_ids.txt": ["a.jpg", "b.jpg", "c.jpg"], "class_labels.txt": ["a.jpg,0", "b.jpg,1", "c.jpg,2"],
             "image_sizes.txt": ["a.jpg,10,10", "b.jpg,10,10", "c.jpg,10,10"], name: lines}
    folder = _write(tmp_path, "DS", "train", files)
    with pytest.raises(MetadataError) as err:
        load_metadata(str(tmp_path), "DS", "train")
    assert str(err.value).startswith(f"{os.path.join(folder, name)}:{line}: ")
    assert message in str(err.value)
