"""The wsolevaluation metadata format (SPEC 3), read and validated before anything trains.

    <metadata_root>/<DATASET>/<split>/image_ids.txt      one image path per line
                                      class_labels.txt   path,label
                                      image_sizes.txt    path,w,h
                                      localization.txt   path,x0,y0,x1,y1   (several lines per image allowed)

Images live at `<data_root>/<DATASET>/<image_id>`. For OpenImages, `localization.txt` holds
`path,mask_path,ignore_path` lines (masks for PxAP) and there is no `image_sizes.txt`.

Every problem is a `MetadataError` whose message starts with `file:line:`, so a user with a broken
file is sent to the exact line. Files without a final newline, CRLF line ends and blank lines are
accepted: the real CUB metadata of the protocol is read as is.

Which files are required [choice]: `class_labels.txt` always; `localization.txt` for the `val` and
`test` splits (they are scored); `image_sizes.txt` whenever boxes are given (boxes are rescaled from
it). When a file exists, every image must appear in it. A box is inside the image when
0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h (edge-inclusive, so annotations in continuous coordinates
that reach the right/bottom edge pass).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

SCORED_SPLITS = ("val", "test")


class MetadataError(ValueError):
    """A malformed metadata file; the message names the file and line."""


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
    masks: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # id -> (mask paths, ignore)

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
                             pick(self.sizes), pick(self.boxes), pick(self.masks))


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


def _read_image_ids(path: str) -> dict[str, int]:
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


def _read_labels(path: str, known: dict, num_classes: int | None) -> dict[str, int]:
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


def _read_sizes(path: str, known: dict) -> dict[str, tuple[int, int]]:
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
    integral = True
    for number, text in _lines(path):
        parts = _fields(path, number, text, 5, "path,x0,y0,x1,y1")
        image_id = parts[0]
        _known(path, number, image_id, known)
        key = (image_id, *parts[1:])
        if key in seen:
            raise MetadataError(f"{path}:{number}: duplicate line {text!r} (first at line {seen[key]})")
        seen[key] = number
        try:
            x0, y0, x1, y1 = (float(v) for v in parts[1:])
        except ValueError:
            raise MetadataError(f"{path}:{number}: box coordinates must be numbers, got {text!r}") from None
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
    dtype = np.int64 if integral else np.float64
    return {i: np.asarray(r, dtype=np.float64).astype(dtype).reshape(-1, 4) for i, r in rows.items()}


def _read_masks(path: str, known: dict) -> dict[str, tuple[list[str], str]]:
    """OpenImages: `image_id,mask_path,ignore_path`; several masks per image, one ignore mask."""
    masks: dict[str, tuple[list[str], str]] = {}
    seen: dict[tuple, int] = {}
    for number, text in _lines(path):
        image_id, mask, ignore = _fields(path, number, text, 3, "path,mask_path,ignore_path")
        _known(path, number, image_id, known)
        if (image_id, mask) in seen:
            raise MetadataError(f"{path}:{number}: duplicate line {text!r} (first at line {seen[image_id, mask]})")
        seen[image_id, mask] = number
        for p in (mask, ignore):
            check_relative_path(p, f"{path}:{number}")
        masks.setdefault(image_id, ([], ignore))[0].append(mask)
    return masks


def _is_mask_file(path: str) -> bool:
    """OpenImages-style localization.txt has 3 columns; box files have 5."""
    for _, text in _lines(path):
        return text.count(",") == 2
    return False


def _require_all(path: str, ids: dict, present: dict) -> None:
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
    has_loc = os.path.isfile(file("localization.txt"))
    if split in SCORED_SPLITS and not has_loc:
        raise MetadataError(f"{file('localization.txt')}: required for the {split!r} split (it is scored)")
    mask_style = has_loc and _is_mask_file(file("localization.txt"))
    if os.path.isfile(file("image_sizes.txt")):
        sizes = _read_sizes(file("image_sizes.txt"), ids)
        _require_all(file("image_sizes.txt"), ids, sizes)
    elif has_loc and not mask_style:
        raise MetadataError(f"{file('image_sizes.txt')}: required to rescale the boxes of localization.txt")
    if mask_style:
        masks = _read_masks(file("localization.txt"), ids)
        _require_all(file("localization.txt"), ids, masks)
    elif has_loc:
        boxes = _read_boxes(file("localization.txt"), ids, sizes)
        _require_all(file("localization.txt"), ids, boxes)

    inferred = max(labels.values()) + 1
    return SplitMetadata(dataset, split, list(ids), labels, num_classes if num_classes is not None else inferred,
                         sizes, boxes, masks)


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
