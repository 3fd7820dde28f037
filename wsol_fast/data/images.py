"""Image files: decoding, the cheap checks every image gets before a pass, and the ImageNet normalisation
constants. Below both loaders (OpenCV and DALI) and the predict command; needs neither.

Decoding: `read_image_rgb` turns JPEG/PNG, grayscale, CMYK JPEG (Adobe-inverted, as Photoshop writes
it) and RGBA (alpha dropped) into uint8 RGB. EXIF orientation is ignored, as in wsolevaluation (PIL), so
the decoded size is the one in image_sizes.txt that the boxes refer to.

Nothing is decoded that is not bounded: `read_header` reads every file's size from its header (JPEG,
PNG and WebP here; BMP, TIFF, GIF and PPM through PIL's lazy open), telling the format from the bytes,
never the name; a file whose size cannot be read that way is refused by name, and one whose header
claims more pixels than the cap is refused before it is read or decoded (`too_many_pixels`). The pre-scan,
both loaders (DALI too: it gets only files the pre-scan passed), evaluate, predict and `data check` all
go through it. The header size is also the decoded size (EXIF orientation is ignored), which is how both
loaders check image_sizes.txt (`size_mismatches`, base.SplitLoader.check_sizes).

The check (`image_problem`, `scan`): JPEG start and end markers (two small reads; other formats are
decoded) and the header's pixel count against the cap: about 10 us per file, against 0.13 ms for a full
decode of a built-in image and 1 ms for a 500 x 375 photo (measured on one core; CUB's 11,788 images
would take ~12 s to decode, ~0.1 s to check). A failure is a `BadImageError` naming the file, or, when
bad images are skipped, the image is left out and listed. `python -m wsol_fast.data check` decodes
every image to find the files that pass the check but do not decode or decode with libjpeg's warnings.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from ..errors import WsolError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImageError(WsolError, RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


# Decoded pixels are capped: a small file whose header claims a huge image (a "decompression bomb") is
# refused from its header, before anything is decoded. The default is far above any real dataset image
# (ILSVRC's largest are ~10 MP); the trainer and `data check` set it from --max-image-pixels.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """Set the cap for this process and the loader workers it forks afterwards."""
    global MAX_IMAGE_PIXELS
    MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS if limit is None else int(limit)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

# The formats the loaders accept (OpenCV decodes them, DALI the common ones) and whose header gives the
# size: JPEG and PNG read here, the others through PIL's lazy open (which reads the header only). Any other
# file, including one whose header cannot be read, is refused by name before it is decoded: a format
# whose size is unknown cannot be held to the pixel cap.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")


class HeaderError(ValueError):
    """Why a file's size cannot be read from its header (so it is not decoded)."""


def _jpeg_size(f) -> tuple[int, int]:
    """(width, height) from the first frame (SOF) marker of a JPEG whose SOI has been read."""
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise HeaderError("JPEG without a readable frame header (no SOF marker before the data)")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7 or marker[1] == 0xFF:
            if marker[1] == 0xFF:
                f.seek(-1, os.SEEK_CUR)
            continue
        if marker[1] in (0xD9, 0xDA):   # end of image, or the scan data, before any frame header
            raise HeaderError("JPEG without a frame header (SOF) before its data")
        length = int.from_bytes(f.read(2), "big")
        if marker[1] in _SOF:
            seg = f.read(5)
            if len(seg) < 5:
                raise HeaderError("JPEG whose frame header is cut off")
            return int.from_bytes(seg[3:5], "big"), int.from_bytes(seg[1:3], "big")
        if length < 2:
            raise HeaderError(f"JPEG with a malformed segment (marker 0x{marker[1]:02X}, length {length})")
        f.seek(length - 2, os.SEEK_CUR)


def _webp_size(chunk: bytes) -> tuple[int, int]:
    """(width, height) of a WebP from its first chunk (VP8X canvas, VP8L or VP8 frame header)."""
    kind, data = chunk[:4], chunk[8:]
    if kind == b"VP8X" and len(data) >= 10:
        return 1 + int.from_bytes(data[4:7], "little"), 1 + int.from_bytes(data[7:10], "little")
    if kind == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:
        bits = int.from_bytes(data[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF
    raise HeaderError("WebP whose header (VP8X, VP8L or VP8 chunk) is cut off or damaged")


_PIL_OPEN = threading.Lock()   # PIL's own cap is lifted while a header is read (read_header)


def read_header(path: str) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the file's header, without decoding: JPEG's frame (SOF) marker and
    PNG's IHDR read here, the other ACCEPTED_FORMATS through PIL's lazy open. The format is found from the
    bytes, never the file name. A file whose size cannot be read this way (not an image, cut off, another
    format, or one PIL itself refuses as a decompression bomb) is a HeaderError saying why; OSError if it
    cannot be read at all."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise HeaderError("PNG whose header (IHDR) is cut off or missing")
            return "PNG", (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            return "JPEG", _jpeg_size(f)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            f.seek(12)
            return "WEBP", _webp_size(f.read(18))
    if not head:
        raise HeaderError("empty file")
    import warnings

    from PIL import Image
    try:
        with _PIL_OPEN, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None   # our cap decides, naming the size
            try:
                with Image.open(path) as im:   # lazy: reads the header only
                    fmt, size = im.format, im.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Image.DecompressionBombError as exc:   # PIL's own cap (2 x its MAX_IMAGE_PIXELS): a refusal too
        import re

        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(claimed.group(1)) if claimed else None
        above = (f" and above the cap of {MAX_IMAGE_PIXELS / 1e6:g} MP (--max-image-pixels)"
                 if pixels is None or pixels > MAX_IMAGE_PIXELS else "")
        raise HeaderError(f"its header claims {f'{pixels / 1e6:.0f} MP' if pixels else 'a huge image'}, "
                          f"refused as a decompression bomb by PIL{above}") from None
    except OSError as exc:
        if not os.path.isfile(path):
            raise
        raise HeaderError("not an image of an accepted format (JPEG, PNG, WebP, BMP, TIFF, GIF, PPM/PGM/PBM), "
                          "or its header is damaged") from None
    except Exception as exc:   # PIL's plugins raise ValueError, SyntaxError, struct.error ... on bad headers
        raise HeaderError(f"its header is damaged ({type(exc).__name__}: {exc})") from None
    if fmt not in ACCEPTED_FORMATS:
        raise HeaderError(f"a {fmt} file, a format the loaders do not accept")
    return fmt, size


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding (read_header), or None when it cannot tell."""
    try:
        return read_header(path)[1]
    except (HeaderError, OSError):
        return None


def too_many_pixels(path: str, limit: int | None = None) -> str | None:
    """Why the file may not be decoded, or None: its header claims more pixels than the cap, or its size
    cannot be read from its header at all (read_header: such a file is never decoded). A file that
    cannot be read is left to the decoder's own message."""
    limit = MAX_IMAGE_PIXELS if limit is None else limit
    try:
        fmt, (w, h) = read_header(path)
    except HeaderError as exc:
        return str(exc)
    except OSError:
        return None
    if w * h > limit:
        return (f"its {fmt} header claims {w}x{h} = {w * h / 1e6:.0f} MP, above the cap of "
                f"{limit / 1e6:g} MP (--max-image-pixels)")
    return None


def size_mismatches(paths, image_ids, sizes) -> dict[str, tuple]:
    """image id -> (decoded (w, h), listed (w, h)) for each file whose header size (the decoded size) is not
    its listed size (None: not listed; a file whose header is unreadable is the pre-scan's to report)."""
    out = {}
    for path, image_id, listed in zip(paths, image_ids, sizes):
        decoded = header_size(path) if listed is not None else None
        if decoded is not None and tuple(decoded) != tuple(listed):
            out[image_id] = (tuple(decoded), tuple(listed))
    return out


def size_mismatch(image_id: str, decoded, listed) -> str | None:
    """The one message of both loaders (and `data check`) for an image whose decoded (w, h) is not the
    (w, h) of image_sizes.txt, or None when they agree (or no size is listed)."""
    if listed is None or tuple(decoded) == tuple(listed):
        return None
    return (f"{image_id}: decoded size {decoded[0]}x{decoded[1]} differs from image_sizes.txt "
            f"({listed[0]}x{listed[1]})")


def image_problem(path: str) -> str | None:
    """Why the pre-scan refuses a file (missing, truncated JPEG, too many pixels, not an image), or None."""
    try:
        with open(path, "rb") as f:
            jpeg = f.read(3)[:2] == b"\xff\xd8"
            if jpeg:
                f.seek(-2, os.SEEK_END)
                if f.read(2) != b"\xff\xd9":
                    return "truncated JPEG (no end-of-image marker)"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    big = too_many_pixels(path)
    if big:
        return big
    if not jpeg and not _cv2_decodes(path):
        return "empty, not an image, or an unsupported format"
    return None


def looks_like_image(path: str) -> bool:
    """The pre-scan's check of one file (`image_problem` finds nothing): JPEGs must start with SOI and end
    with EOI, which catches the common truncated download; no header may claim more than the pixel cap;
    other formats are decoded with OpenCV. A seam the tests replace to reach a loader's own failure."""
    return image_problem(path) is None


def find_bad_images(paths) -> list[int]:
    """Positions of the files that fail the cheap pre-scan (`looks_like_image`)."""
    return [k for k, path in enumerate(paths) if not looks_like_image(path)]


def scan(paths, skip: bool, what: str = "the split", use: str = "load") -> list[int]:
    """The one pre-scan of a split (prepare_data's, or a loader's own): positions of the files that fail
    the check. Unless `skip`, any is a BadImageError listing the first ten with their reasons; with `skip`,
    a split left with nothing to `use` is one too."""
    bad = find_bad_images(paths)
    if bad and not skip:   # one line, naming the first file; `data check` lists them all
        first = paths[bad[0]]
        more = (f" ({len(bad) - 1} more unreadable image(s) in {what}, e.g. {paths[bad[1]]}; "
                "`python -m wsol_fast.data check` lists them all)" if len(bad) > 1 else "")
        raise BadImageError(f"image {first}: {image_problem(first) or 'unreadable'}{more}; fix or remove it, "
                            "or pass --skip-bad-images to leave it out")
    if bad and len(bad) == len(paths):
        raise BadImageError(f"every image of {what} ({len(paths)}) is unreadable (first: {paths[0]}); "
                            f"nothing is left to {use}")
    return bad


def _cv2_decodes(path: str) -> bool:
    import cv2
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return False
    return data.size > 0 and cv2.imdecode(data, cv2.IMREAD_COLOR) is not None


def read_image_rgb(path: str) -> np.ndarray:
    """Decode an image file to uint8 H x W x 3 RGB; a missing, truncated or undecodable file raises
    BadImageError naming it."""
    import cv2

    big = too_many_pixels(path)   # from the header, before a decompression bomb is read or decoded
    if big:
        raise BadImageError(f"refusing to decode image {path!r}: {big}")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BadImageError(f"cannot read image {path!r}: {exc.strerror or exc}") from None
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8 and not (data[-2] == 0xFF and data[-1] == 0xD9):
        # libjpeg decodes a truncated JPEG with a grey bottom and only a warning: refuse it instead.
        raise BadImageError(f"cannot decode image {path!r}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise BadImageError(f"cannot decode image {path!r}: empty, not an image, or an unsupported format")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def warn_escaping_symlinks(paths, image_root: str, limit: int = 3) -> list[str]:
    """Files (or their folders) under image_root that are symlinks resolving outside it: a warning naming
    them (data mounted elsewhere through a link is legitimate, but should not go unnoticed)."""
    root = os.path.realpath(image_root) + os.sep
    escaping, seen_dirs = [], {}
    for path in paths:
        parent = os.path.dirname(path)
        if parent not in seen_dirs:
            seen_dirs[parent] = not (os.path.realpath(parent) + os.sep).startswith(root)
        if seen_dirs[parent] or (os.path.islink(path) and not os.path.realpath(path).startswith(root)):
            escaping.append(path)
    if escaping:
        shown = ", ".join(f"{p} -> {os.path.realpath(p)}" for p in escaping[:limit])
        print(f"warning: {len(escaping)} image path(s) lead outside the data root {image_root} through a "
              f"symlink: {shown}{' ...' if len(escaping) > limit else ''}", file=sys.stderr)
    return escaping
