"""Fuzzing the image checks and the decoder (issue 27): real image files of every accepted format
(JPEG from the built-in dataset; PNG, WebP, BMP, TIFF, GIF and PPM encodings of it), truncated, with
bytes flipped, under a wrong extension, or with a forged header claiming any size. For each file:

* the pre-scan (`image_problem`) answers (a reason or None) and never raises;
* `read_image_rgb` (every command's decoder) returns uint8 H x W x 3 within the pixel cap, of exactly
  the size its header gives (the size check of both loaders relies on it), or raises a BadImageError
  whose one-line message names the file;
* `data check`'s inspection gives a reason naming the file, or None;
* memory stays bounded: the process's peak RSS grows by less than 200 MB over all examples (a single
  forged header of 65535 x 65535 would need 12 GB if it were decoded).

Hypothesis profiles: tests/conftest.py (`ci` by default)."""
from __future__ import annotations

import io
import os
import resource
import tempfile
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutations import byte_flips
from PIL import Image

from wsol_fast import errors
from wsol_fast.data import __main__ as data_cli
from wsol_fast.data import builtin, images

CAP = 2_000_000   # pixels: low, so that a forged size above it is common and one below it is cheap
FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "gif", "ppm")


@pytest.fixture(scope="module")
def sources(fuzz_root):
    """format -> bytes of one real image (the built-in dataset's first val JPEG, re-encoded)."""
    folder = os.path.join(builtin.data_root(fuzz_root), "builtin")
    first = open(os.path.join(builtin.metadata_root(fuzz_root), "builtin", "val", "image_ids.txt")).readline().strip()
    jpeg = open(os.path.join(folder, first), "rb").read()
    rgb = Image.open(io.BytesIO(jpeg)).convert("RGB")
    out = {"jpeg": jpeg}
    for fmt, pil in (("png", "PNG"), ("webp", "WEBP"), ("bmp", "BMP"), ("tiff", "TIFF"), ("gif", "GIF"),
                     ("ppm", "PPM")):
        buf = io.BytesIO()
        rgb.save(buf, pil, **({"lossless": True} if fmt == "webp" else {}))
        out[fmt] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def rss_budget():
    """The peak RSS (MiB) before the examples; checked after the last one (see the module doc)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    yield before
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert after - before < 200, f"peak RSS grew by {after - before:.0f} MiB over the fuzzed images"


# ----------------------------------------------------------------------------- forged headers

def _forge(fmt: str, data: bytes, w: int, h: int) -> bytes:
    """`data` (an image of format `fmt`) with its header claiming w x h (checksums kept valid)."""
    b = bytearray(data)
    if fmt == "jpeg":
        k = b.index(b"\xff\xc0")
        b[k + 5:k + 9] = (h % 65536).to_bytes(2, "big") + (w % 65536).to_bytes(2, "big")
    elif fmt == "png":
        b[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
        b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    elif fmt == "webp":   # lossless: VP8L after RIFF, size and "WEBP" + chunk header
        assert b[12:16] == b"VP8L"
        bits = int.from_bytes(b[21:25], "little")
        bits = (bits & ~((1 << 28) - 1)) | ((w - 1) % 16384) | (((h - 1) % 16384) << 14)
        b[21:25] = bits.to_bytes(4, "little")
    elif fmt == "bmp":
        b[18:26] = (w % 2**31).to_bytes(4, "little") + (h % 2**31).to_bytes(4, "little", signed=False)
    elif fmt == "tiff":
        ifd = int.from_bytes(b[4:8], "little")
        for k in range(int.from_bytes(b[ifd:ifd + 2], "little")):
            e = ifd + 2 + 12 * k
            tag, typ = int.from_bytes(b[e:e + 2], "little"), int.from_bytes(b[e + 2:e + 4], "little")
            if tag in (256, 257):
                value = w if tag == 256 else h
                size = 2 if typ == 3 else 4
                b[e + 8:e + 8 + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
    elif fmt == "gif":
        b[6:10] = (w % 65536).to_bytes(2, "little") + (h % 65536).to_bytes(2, "little")
        k = b.index(b"\x2c")   # the image descriptor
        b[k + 5:k + 9] = (w % 65536).to_bytes(2, "little") + (h % 65536).to_bytes(2, "little")
    elif fmt == "ppm":
        magic, rest = bytes(b).split(b"\n", 1)
        _, rest = rest.split(b"\n", 1)
        return magic + f"\n{w} {h}\n".encode() + rest
    return bytes(b)


@st.composite
def files(draw, sources_fixture_formats=FORMATS):
    """(format, mutation name, function (bytes) -> bytes, extension)."""
    fmt = draw(st.sampled_from(sources_fixture_formats))
    kind = draw(st.sampled_from(["forge", "forge", "truncate", "flip", "truncate_eoi", "as_is"]))
    ext = draw(st.sampled_from([".jpg", ".png", ".webp", ".JPEG", ".txt", ""]))
    if kind == "forge":
        w = draw(st.integers(1, 65535) | st.sampled_from([1, 2000, 2001, 4000, 16000, 65535]))
        h = draw(st.integers(1, 65535) | st.sampled_from([1, 1000, 999, 16000, 65535]))
        return fmt, f"forge {w}x{h}", lambda data: _forge(fmt, data, w, h), ext
    if kind == "truncate":
        cut = draw(st.floats(0, 1, exclude_max=True))
        return fmt, f"truncate {cut:.3f}", lambda data: data[: int(len(data) * cut)], ext
    if kind == "truncate_eoi":
        cut = draw(st.floats(0.05, 0.95))
        return fmt, f"truncate {cut:.3f} + EOI", lambda data: data[: int(len(data) * cut)] + b"\xff\xd9", ext
    if kind == "flip":
        flips, mutate = byte_flips(draw, 6)
        return fmt, f"flip {flips}", mutate, ext
    return fmt, "as is", lambda data: data, ext


@given(case=files())
def test_a_mutated_image_decodes_within_the_cap_at_its_header_size_or_is_one_error_naming_it(sources, rss_budget,
                                                                                            case):
    fmt, what, mutate, ext = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image" + ext)
        open(path, "wb").write(mutate(sources[fmt]))
        images.set_max_image_pixels(CAP)
        try:
            problem = images.image_problem(path)
            assert problem is None or isinstance(problem, str)
            try:
                image = images.read_image_rgb(path)
            except images.BadImageError as exc:
                line = errors.error_line(exc)
                assert "\n" not in line and repr(path) in line, (fmt, what, line)
                return
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (fmt, what, image.shape)
            h, w = image.shape[:2]
            assert w * h <= CAP, (fmt, what, image.shape)
            assert images.header_size(path) == (w, h), (fmt, what)   # the loaders' size check reads this
            reason = data_cli._inspect(path, (w, h))
            assert reason is None or repr(path) in reason, (fmt, what, reason)
        finally:
            images.set_max_image_pixels(None)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_forged_header_above_the_cap_is_refused_from_the_header_for_every_format(sources, fmt, tmp_path):
    """Each accepted format, claiming 16000 x 16000 (or 16384 x 16384 for WebP's 14-bit sizes): the
    pre-scan and the decoder refuse it naming the size; nothing is decoded."""
    path = str(tmp_path / "forged.jpg")
    open(path, "wb").write(_forge(fmt, sources[fmt], 16000, 16000))
    claimed = images.header_size(path)
    assert claimed == (16000, 16000), (fmt, claimed)
    assert "above the cap of 64 MP" in images.image_problem(path)
    with pytest.raises(images.BadImageError, match="16000x16000 = 256 MP, above the cap of 64 MP"):
        images.read_image_rgb(path)


def test_a_format_whose_size_is_unknown_is_refused_by_name(tmp_path):
    """A file no header reader knows (here OpenCV's Radiance HDR, which it would decode) is refused
    before decoding, as is PIL's own bomb refusal (an ICO claims nothing we read: refused by format)."""
    hdr = str(tmp_path / "x.jpg")
    ok, data = cv2.imencode(".hdr", np.zeros((8, 8, 3), np.float32))
    data.tofile(hdr)
    assert cv2.imdecode(np.fromfile(hdr, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(images.BadImageError, match="not an image of an accepted format"):
        images.read_image_rgb(hdr)
    ico = str(tmp_path / "y.jpg")
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    assert "a ICO file, a format the loaders do not accept" in images.image_problem(ico)
