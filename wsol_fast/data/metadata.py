# Longer than 450 lines: the format and all its checks (errors name file:line) in one place, so both readers agree.
"""The wsolevaluation metadata format (docs/spec.md §3), read and validated before anything trains.

    <metadata_root>/<DATASET>/<split>/image_ids.txt      one image path per line
                                      class_labels.txt   path,label
                                      image_sizes.txt    path,w,h
                                      localization.txt   path,x0,y0,x1,y1   (several lines per image allowed)
                                      part_boxes.txt     path,x0,y0,x1,y1   (optional; builtin-parts' heads)

Images live at `<data_root>/<DATASET>/<image_id>`. For OpenImages, `localization.txt` holds
`path,mask_path,ignore_path` lines (masks for PxAP), read as wsolevaluation's `get_mask_paths` reads
them: one line per instance mask, several lines per image, the ignore mask named on the image's first
line and left empty on the others; its `image_sizes.txt` is shipped empty (masks are resized to the
score map, no size is needed). Masks live at `<mask_root>/<DATASET>/<mask_path>` (wsolevaluation's
`mask_root/OpenImages/...`), and their paths get the same escape checks as image paths.

How the protocol's real files are read (wsolevaluation's `metadata/` folder):
* An empty file is a file that is not there: ILSVRC's and OpenImages' train splits ship empty
  `image_sizes.txt` and `localization.txt`, OpenImages every empty `image_sizes.txt`.
* A duplicate box or mask line is a warning (`DuplicateLinesWarning`) that counts the duplicates and
  names the first; the duplicate is dropped. A duplicate cannot change a best IoU or a union of masks,
  and ILSVRC's test split has 4 of them.

Every problem is a `MetadataError` whose message starts with `file:line:`, so a user with a broken
file is sent to the exact line. Files without a final newline, CRLF line ends and blank lines are
accepted: the real CUB metadata of the protocol is read as is.

Which files are required [choice]: `class_labels.txt` always; `localization.txt` for the `val` and
`test` splits (they are scored); `image_sizes.txt` whenever boxes are given (boxes are rescaled from
it). When a file exists and is not empty, every image must appear in it. A box is inside the image when
0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h (edge-inclusive, so annotations in continuous coordinates
that reach the right/bottom edge pass).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import WsolError

SCORED_SPLITS = ("val", "test")


class MetadataError(WsolError, ValueError):
    """A malformed metadata file; the message names the file and line."""


class DuplicateLinesWarning(UserWarning):
    """Repeated box or mask lines (harmless: dropped); the message counts them and names the first."""


def _warn_duplicates(path: str, duplicates: list) -> None:
    """duplicates: (line number, text, first line number) of each repeated line."""
    if duplicates:
        number, text, first = duplicates[0]
        warnings.warn(f"{path}: {len(duplicates)} duplicate line(s) ignored, the first at line {number}: "
                      f"{text!r} (same as line {first})", DuplicateLinesWarning, stacklevel=3)


@dataclass
class SplitMetadata:
    """One split of one dataset. Boxes are in original-image pixels, [k, 4] as x0, y0, x1, y1
    (int64 when every coordinate in the file is integral, as in CUB/ILSVRC; float64 otherwise)."""

    dataset: str
    split: str
    image_ids: list[str]
    labels: dict[str, int]
    num_classes: int
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)       # id -> (w, h)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    # id -> (mask paths, ignore path or "" for none), paths relative to <mask_root>/<dataset>
    masks: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    mask_root: str | None = None    # where the masks were found (prepare_data sets it), for the evaluator
    # id -> [k, 4] boxes of a discriminative part (builtin-parts' heads: part_boxes.txt, optional), for the
    # evaluator's part-versus-rest coverage
    part_boxes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_masks(self) -> bool:
        """Scored by PxAP (OpenImages-style masks) rather than by boxes."""
        return bool(self.masks)

    @property
    def class_labels(self) -> dict[str, int]:
        """Same dict as `labels` (named after the file)."""
        return self.labels

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, image_ids) -> "SplitMetadata":
        """The same split restricted to `image_ids` (e.g. after dropping unreadable images)."""
        keep = list(image_ids)
        pick = lambda d: {i: d[i] for i in keep if i in d}  # noqa: E731
        return SplitMetadata(self.dataset, self.split, keep, pick(self.labels), self.num_classes,
                             pick(self.sizes), pick(self.boxes), pick(self.masks), self.mask_root,
                             pick(self.part_boxes))


def check_relative_path(path: str, where: str) -> None:
    """Reject a path that would leave the data root: absolute, drive-qualified, or through `..`."""
    parts = path.replace("\\", "/").split("/")
    if os.path.isabs(path) or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise MetadataError(f"{where}: path {path!r} is absolute; paths must be relative to the data root")
    if ".." in parts:
        raise MetadataError(f"{where}: path {path!r} escapes the data root through '..'")
    if path.strip() == "" or any(p == "" for p in parts):
        raise MetadataError(f"{where}: path {path!r} is empty or has an empty component")


def _lines(path: str):
    """(line number, stripped text) for each non-blank line; the last line may lack a newline. A UTF-8 BOM
    is dropped (utf-8-sig); text that is not UTF-8 is a MetadataError naming the file and line."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise MetadataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start}); save the file as UTF-8") from None
    for number, text in enumerate(content.splitlines(), start=1):
        text = text.strip()
        if "\ufeff" in text:   # after the start: files joined together, each with its BOM
            raise MetadataError(f"{path}:{number}: a byte-order mark (U+FEFF) inside the file, not at its start "
                                "(were files joined together?); remove it")
        if text:
            yield number, text


def _fields(path: str, number: int, text: str, count: int, names: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count:
        raise MetadataError(f"{path}:{number}: expected {count} comma-separated columns ({names}), "
                            f"got {len(parts)}: {text!r}")
    if any(p == "" for p in parts):
        raise MetadataError(f"{path}:{number}: empty column in {text!r} (expected {names})")
    return parts


def _int(path: str, number: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MetadataError(f"{path}:{number}: {what} {value!r} is not an integer") from None


def _known(path: str, number: int, image_id: str, known: dict) -> None:
    if image_id not in known:
        raise MetadataError(f"{path}:{number}: unknown image id {image_id!r} (not listed in image_ids.txt)")


# Large splits (ILSVRC train: 1.28 million lines) are read in bulk: each reader first parses and
# validates the whole file with C-speed string and dict operations, and only when a check fails reads
# it again line by line, the careful way, so that the error names the exact line. Both ways accept
# the same files; the bulk way just declines anything unusual (spaces, blank lines, odd paths).

def _bulk_columns(path: str, count: int, paths: bool = False):
    """The file's columns [count lists of str] when every line is non-blank, has exactly count - 1
    commas and no whitespace around anything (and, with `paths`, every line is a plainly relative
    path); else None (read it line by line)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw or b"\xef\xbb\xbf" in raw or any(
            c in raw for c in (b" ", b"\t", b"\r", b"\v", b"\f", b"\n\n", b"\x1c", b"\x1d", b"\x1e")):
        return None   # a BOM (dropped) or odd whitespace: the line-by-line reader handles and names it
    # The separators, in order, must read (count - 1) commas then a newline, line after line.
    codes = np.frombuffer(raw, np.uint8)
    seps = codes[np.flatnonzero((codes == 10) | (codes == 44))]
    if (len(seps) + 1) % count:
        return None
    seps = np.append(seps, 10).reshape(-1, count)
    if not ((seps[:, :-1] == 44).all() and (seps[:, -1] == 10).all()):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None   # the line-by-line reader names the file and line
    if any(c in text for c in ("\x85", "\u2028", "\u2029", "\xa0")):   # other line breaks or spaces
        return None
    if paths and not _plain_paths(text):
        return None
    flat = text.replace("\n", ",").split(",")
    return [flat[k::count] for k in range(count)]


def _plain_paths(text: str) -> bool:
    """Every line of `text` is a plainly relative path: no absolute or drive path, no '..', no empty
    component, no backslash or comma (a few scans; False just means 'check line by line')."""
    text = "\n" + text + "\n"
    return not any(bad in text for bad in ("\n/", "/\n", "//", "..", ":", "\\", ","))


def _read_image_ids(path: str) -> dict[str, int]:
    cols = _bulk_columns(path, 1, paths=True)
    if cols is not None:
        ids = dict(zip(cols[0], range(1, len(cols[0]) + 1)))
        if len(ids) == len(cols[0]):
            return ids
    return _read_image_ids_by_line(path)


def _read_labels(path: str, known: dict, num_classes: int | None) -> dict[str, int]:
    cols = _bulk_columns(path, 2)
    try:
        if cols is not None:
            labels = dict(zip(cols[0], map(int, cols[1])))
            if (len(labels) == len(cols[0]) and labels.keys() <= known.keys() and min(labels.values()) >= 0
                    and (num_classes is None or max(labels.values()) < num_classes)):
                return labels
    except ValueError:
        pass
    return _read_labels_by_line(path, known, num_classes)


def _read_sizes(path: str, known: dict) -> dict[str, tuple[int, int]]:
    cols = _bulk_columns(path, 3)
    try:
        if cols is not None:
            w, h = list(map(int, cols[1])), list(map(int, cols[2]))
            sizes = dict(zip(cols[0], zip(w, h)))
            if len(sizes) == len(cols[0]) and sizes.keys() <= known.keys() and min(w) > 0 and min(h) > 0:
                return sizes
    except ValueError:
        pass
    return _read_sizes_by_line(path, known)


def _read_image_ids_by_line(path: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    for number, text in _lines(path):
        if "," in text:
            raise MetadataError(f"{path}:{number}: expected one image path per line, got {text!r}")
        check_relative_path(text, f"{path}:{number}")
        if text in ids:
            raise MetadataError(f"{path}:{number}: duplicate line {text!r} (first at line {ids[text]})")
        ids[text] = number
    if not ids:
        raise MetadataError(f"{path}: no image ids")
    return ids


def _read_labels_by_line(path: str, known: dict, num_classes: int | None) -> dict[str, int]:
    labels, seen = {}, {}
    for number, text in _lines(path):
        image_id, value = _fields(path, number, text, 2, "path,label")
        _known(path, number, image_id, known)
        if image_id in seen:
            raise MetadataError(f"{path}:{number}: duplicate line for image {image_id!r} "
                                f"(first at line {seen[image_id]})")
        label = _int(path, number, value, "class label")
        if label < 0:
            raise MetadataError(f"{path}:{number}: bad class label {label} (labels are non-negative)")
        if num_classes is not None and label >= num_classes:
            raise MetadataError(f"{path}:{number}: bad class label {label}: out of range for "
                                f"{num_classes} classes (0..{num_classes - 1}; the train split's count "
                                "unless --num-classes is given)")
        labels[image_id], seen[image_id] = label, number
    return labels


def _read_sizes_by_line(path: str, known: dict) -> dict[str, tuple[int, int]]:
    sizes, seen = {}, {}
    for number, text in _lines(path):
        image_id, w, h = _fields(path, number, text, 3, "path,w,h")
        _known(path, number, image_id, known)
        if image_id in seen:
            raise MetadataError(f"{path}:{number}: duplicate line for image {image_id!r} "
                                f"(first at line {seen[image_id]})")
        w, h = _int(path, number, w, "width"), _int(path, number, h, "height")
        if w <= 0 or h <= 0:
            raise MetadataError(f"{path}:{number}: image size {w}x{h} is not positive")
        sizes[image_id], seen[image_id] = (w, h), number
    return sizes


def _read_boxes(path: str, known: dict, sizes: dict) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {}
    seen: dict[tuple, int] = {}
    duplicates = []
    integral = True
    for number, text in _lines(path):
        parts = _fields(path, number, text, 5, "path,x0,y0,x1,y1")
        image_id = parts[0]
        _known(path, number, image_id, known)
        try:
            x0, y0, x1, y1 = (float(v) for v in parts[1:])
        except ValueError:
            raise MetadataError(f"{path}:{number}: box coordinates must be numbers, got {text!r}") from None
        key = (image_id, x0, y0, x1, y1)
        if key in seen:                    # checked when first seen; it adds nothing to a best IoU
            duplicates.append((number, text, seen[key]))
            continue
        seen[key] = number
        if not all(np.isfinite([x0, y0, x1, y1])):
            raise MetadataError(f"{path}:{number}: box coordinates must be finite, got {text!r}")
        if x0 > x1 or y0 > y1:
            raise MetadataError(f"{path}:{number}: box ({x0:g},{y0:g},{x1:g},{y1:g}) is not x0<=x1, y0<=y1")
        if image_id not in sizes:
            raise MetadataError(f"{path}:{number}: image {image_id!r} has a box but no line in image_sizes.txt")
        w, h = sizes[image_id]
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise MetadataError(f"{path}:{number}: box ({x0:g},{y0:g},{x1:g},{y1:g}) lies outside the "
                                f"{w}x{h} image {image_id!r}")
        integral &= all(v.lstrip("-").isdigit() for v in parts[1:])
        rows.setdefault(image_id, []).append((x0, y0, x1, y1))
    _warn_duplicates(path, duplicates)
    dtype = np.int64 if integral else np.float64
    return {i: np.asarray(r, dtype=np.float64).astype(dtype).reshape(-1, 4) for i, r in rows.items()}


def _read_masks(path: str, known: dict) -> dict[str, tuple[list[str], str]]:
    """OpenImages: `image_id,mask_path,ignore_path`, one line per instance mask. As wsolevaluation's
    get_mask_paths: an image's first line names its ignore mask, its later lines leave the column
    empty (they may repeat the same path here; another path is an error: one ignore mask per image).
    An empty ignore path on the first line means no ignore region (wsolevaluation would fail to read
    the mask root as an image there)."""
    masks: dict[str, tuple[list[str], str]] = {}
    first_line: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    duplicates = []
    for number, text in _lines(path):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise MetadataError(f"{path}:{number}: expected 3 comma-separated columns "
                                f"(path,mask_path,ignore_path), got {len(parts)}: {text!r}")
        image_id, mask, ignore = parts
        if image_id == "" or mask == "":
            raise MetadataError(f"{path}:{number}: empty image or mask path in {text!r} "
                                "(only ignore_path may be empty)")
        _known(path, number, image_id, known)
        check_relative_path(mask, f"{path}:{number}")
        if ignore:
            check_relative_path(ignore, f"{path}:{number}")
        if (image_id, mask) in seen:       # the same instance twice: its union is unchanged
            duplicates.append((number, text, seen[image_id, mask]))
            continue
        seen[image_id, mask] = number
        if image_id not in masks:
            masks[image_id], first_line[image_id] = ([mask], ignore), number
            continue
        first_ignore = masks[image_id][1]
        if ignore and ignore != first_ignore:
            raise MetadataError(f"{path}:{number}: image {image_id!r} has a second ignore mask {ignore!r} "
                                f"(line {first_line[image_id]} gave {first_ignore!r}); an image has one "
                                "ignore mask, on its first line")
        masks[image_id][0].append(mask)
    _warn_duplicates(path, duplicates)
    return masks


def mask_paths(meta: "SplitMetadata", mask_root: str, image_id: str) -> tuple[list[str], str | None]:
    """(instance mask files, ignore mask file or None) of one image: `<mask_root>/<dataset>/<path>`."""
    folder = os.path.join(mask_root, meta.dataset)
    masks, ignore = meta.masks[image_id]
    return [os.path.join(folder, m) for m in masks], (os.path.join(folder, ignore) if ignore else None)


def check_mask_files(meta: "SplitMetadata", mask_root: str) -> None:
    """A MetadataError listing (up to 10) mask files that do not exist, before anything is scored."""
    missing = []
    for image_id in meta.masks:
        files, ignore = mask_paths(meta, mask_root, image_id)
        missing += [f for f in files + ([ignore] if ignore else []) if not os.path.isfile(f)]
    if missing:
        shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise MetadataError(f"{len(missing)} mask file(s) of the {meta.dataset} {meta.split} split are missing "
                            f"under the mask root {mask_root!r} (masks are read at "
                            f"<mask_root>/{meta.dataset}/<mask_path>; see --mask-root):\n  {shown}")


def _is_mask_file(path: str) -> bool:
    """OpenImages-style localization.txt has 3 columns; box files have 5."""
    for _, text in _lines(path):
        return text.count(",") == 2
    return False


def _has_lines(path: str) -> bool:
    """The file exists and has a non-blank line (the protocol ships some files empty)."""
    return os.path.isfile(path) and next(_lines(path), None) is not None


def _require_all(path: str, ids: dict, present: dict) -> None:
    if ids.keys() <= present.keys():
        return
    for image_id, number in ids.items():
        if image_id not in present:
            raise MetadataError(f"{path}: image {image_id!r} (image_ids.txt line {number}) has no line here")


def load_metadata(metadata_root: str, dataset: str, split: str, num_classes: int | None = None) -> SplitMetadata:
    """Read and validate `<metadata_root>/<dataset>/<split>/`; num_classes defaults to max label + 1."""
    folder = os.path.join(metadata_root, dataset, split)
    if not os.path.isdir(folder):
        raise MetadataError(f"{folder}: metadata folder not found (expected <metadata_root>/<dataset>/<split>)")
    file = lambda name: os.path.join(folder, name)  # noqa: E731
    for name in ("image_ids.txt", "class_labels.txt"):
        if not os.path.isfile(file(name)):
            raise MetadataError(f"{file(name)}: required metadata file is missing")
    ids = _read_image_ids(file("image_ids.txt"))
    labels = _read_labels(file("class_labels.txt"), ids, num_classes)
    _require_all(file("class_labels.txt"), ids, labels)

    sizes, boxes, masks = {}, {}, {}
    has_loc = _has_lines(file("localization.txt"))
    if split in SCORED_SPLITS and not has_loc:
        state = "is empty" if os.path.isfile(file("localization.txt")) else "is missing"
        raise MetadataError(f"{file('localization.txt')}: {state}; it is required for the {split!r} split "
                            "(it is scored)")
    mask_style = has_loc and _is_mask_file(file("localization.txt"))
    if _has_lines(file("image_sizes.txt")):
        sizes = _read_sizes(file("image_sizes.txt"), ids)
        _require_all(file("image_sizes.txt"), ids, sizes)
    elif has_loc and not mask_style:
        raise MetadataError(f"{file('image_sizes.txt')}: missing or empty; it is required to rescale the boxes "
                            "of localization.txt")
    if mask_style:
        masks = _read_masks(file("localization.txt"), ids)
        _require_all(file("localization.txt"), ids, masks)
    elif has_loc:
        boxes = _read_boxes(file("localization.txt"), ids, sizes)
        _require_all(file("localization.txt"), ids, boxes)

    parts = {}
    if boxes and _has_lines(file("part_boxes.txt")):
        parts = _read_boxes(file("part_boxes.txt"), ids, sizes)
        _require_all(file("part_boxes.txt"), ids, parts)
    inferred = max(labels.values()) + 1
    return SplitMetadata(dataset, split, list(ids), labels, num_classes if num_classes is not None else inferred,
                         sizes, boxes, masks, part_boxes=parts)


def load_splits(metadata_root: str, dataset: str, splits=("train", "val", "test"),
                num_classes: int | None = None) -> dict[str, SplitMetadata]:
    """Several splits with one class count: `num_classes` when given, else the train split's (every label
    of the other splits must be below it: a label the model never saw is an error naming file and line),
    else, without a train split, the largest inferred one."""
    metas = {}
    if num_classes is None and "train" in splits:
        metas["train"] = load_metadata(metadata_root, dataset, "train")
        num_classes = _train_class_count(metas["train"], os.path.join(metadata_root, dataset, "train"))
    for s in splits:
        if s not in metas:
            metas[s] = load_metadata(metadata_root, dataset, s, num_classes)
    metas = {s: metas[s] for s in splits}
    n = num_classes if num_classes is not None else max(m.num_classes for m in metas.values())
    for m in metas.values():
        m.num_classes = n
    return metas


def _train_class_count(meta: SplitMetadata, folder: str) -> int:
    """max label + 1 of the train split, refused when some of those classes have no training image
    (a typo such as 999 among labels 0..9 would otherwise train a 1000-class model)."""
    present = set(meta.labels.values())
    if len(present) < meta.num_classes:
        top = max(present)
        path = os.path.join(folder, "class_labels.txt")
        line = next(n for n, t in _lines(path) if t.rsplit(",", 1)[-1].strip() == str(top))
        absent = meta.num_classes - len(present)
        raise MetadataError(f"{path}:{line}: class label {top} implies {meta.num_classes} classes, but {absent} "
                            f"of labels 0..{top} have no training image; fix the label, or pass "
                            f"--num-classes if those classes really are absent from train")
    return meta.num_classes


# The name other modules (DALI loader, benchmarks) first used; one reader behind both.
load_split = load_metadata
