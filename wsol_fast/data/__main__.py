"""Data tools.

    python -m wsol_fast.data check --metadata-root M --data-root D [--dataset CUB] [--splits train val test]
    python -m wsol_fast.data builtin [--dataset NAME] [--root R] [--seed S]

`check` validates the metadata exactly as training does (errors name file and line), then decodes every
image (refusing, from the header, any above the pixel cap or whose size the header does not give) and
compares its size with image_sizes.txt; a JPEG that decodes with libjpeg's warnings (damaged data, e.g.
cut short and closed with an end marker) is a finding too. It prints counts per split, the class count
and every bad image with its reason, and exits 1 on any problem (malformed metadata: one `error:` line,
exit 2).
`builtin` generates one of the generated datasets (data/generated.py: builtin, the digits, by default) unless
it is already there, and prints where it is and the flags that read it.
"""
from __future__ import annotations

import argparse
import os
import sys
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from .. import errors, flags
from . import builtin, generated, images
from .images import BadImageError, read_image_rgb
from .metadata import load_splits


# libjpeg's warnings (it prints them on stderr and decodes on, filling what is missing with grey): a JPEG
# cut short and closed with an end-of-image marker passes every other check. `check` decodes in worker
# processes whose stderr is a file of their own, so each warning is tied to the one image being decoded.
LIBJPEG_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters",
                    "Inconsistent progression sequence")
_warnings_file = None


def _init_worker(max_pixels: int) -> None:
    """A decoding process: one OpenCV thread, the parent's pixel cap, stderr into a private file."""
    global _warnings_file
    import tempfile

    import cv2

    cv2.setNumThreads(1)
    images.MAX_IMAGE_PIXELS = max_pixels
    _warnings_file = tempfile.TemporaryFile()
    os.dup2(_warnings_file.fileno(), 2)


def _decoder_warning() -> str | None:
    """What the decoder printed (libjpeg's warnings) since the last call, or None."""
    if _warnings_file is None:
        return None
    _warnings_file.seek(0)
    text = _warnings_file.read().decode("utf-8", "replace")
    _warnings_file.seek(0)
    _warnings_file.truncate()
    found = [line.strip() for line in text.splitlines() if line.strip().startswith(LIBJPEG_WARNINGS)]
    return "; ".join(dict.fromkeys(found)) or None


def _inspect(path: str, size) -> str | None:
    """Why an image is bad, or None: refused before decoding (missing, above the pixel cap, a format
    whose size its header does not give), undecodable, decoded with libjpeg warnings (damaged data,
    e.g. cut short), or of a size other than image_sizes.txt's."""
    _decoder_warning()
    try:
        image = read_image_rgb(path)
    except BadImageError as exc:
        return str(exc)
    warning = _decoder_warning()
    if warning:
        return f"{path!r}: damaged JPEG data (libjpeg: {warning}); it decodes only in part"
    h, w = image.shape[:2]
    return images.size_mismatch(repr(path), (w, h), size)


def check(metadata_root: str, data_root: str, dataset: str, splits, workers: int = 4,
          progress: bool = True, out=None) -> int:
    """0 when metadata and images are all good, 1 on bad images; malformed metadata is a MetadataError
    (one `error:` line and exit code 2 through errors.run_command)."""
    import cv2
    from tqdm.auto import tqdm

    out = out or sys.stdout
    metas = load_splits(metadata_root, dataset, splits)   # a MetadataError: one `error:` line, exit 2
    cv2.setNumThreads(1)  # parallel over files instead
    problems = 0
    num_classes = next(iter(metas.values())).num_classes
    print(f"{dataset}: {num_classes} classes; metadata {metadata_root}, images {data_root}", file=out)
    for split, meta in metas.items():
        paths = [os.path.join(data_root, dataset, i) for i in meta.image_ids]
        sizes = [meta.sizes.get(i) for i in meta.image_ids]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context, initializer=_init_worker,
                                 initargs=(images.MAX_IMAGE_PIXELS,)) as pool:
            reasons = list(tqdm(pool.map(_inspect, paths, sizes, chunksize=16), total=len(paths),
                                desc=f"check {split}", unit="img", disable=not progress, file=sys.stderr,
                                dynamic_ncols=True))
        bad = [r for r in reasons if r is not None]
        present = len(set(meta.labels.values()))
        boxes = sum(len(b) for b in meta.boxes.values())
        extra = (f", {boxes} boxes" if meta.boxes else
                 f", {len(meta.masks)} images with masks" if meta.masks else "")
        print(f"  {split:<6}{len(meta):>8} images, {present} classes present{extra}: "
              f"{'ok' if not bad else f'{len(bad)} bad'}", file=out)
        for reason in bad:
            print(f"    {reason}", file=out)
        problems += len(bad)
    print(f"{problems} bad image(s)" if problems else "all images decode and match their sizes", file=out)
    return 1 if problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate metadata and decode every image")
    c.add_argument("--metadata-root", required=True, help="metadata at METADATA_ROOT/DATASET/<split>/")
    c.add_argument("--data-root", required=True, help="images at DATA_ROOT/DATASET/<image_id>")
    c.add_argument("--dataset", default="CUB")
    c.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    c.add_argument("--workers", type=flags.positive_int, default=4, help="decoding threads")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--max-image-pixels", type=flags.positive_int, default=None,
                   help="report images whose header claims more pixels (default 64,000,000)")
    b = sub.add_parser("builtin", help="generate a built-in dataset and print where it is")
    b.add_argument("--dataset", default=builtin.DATASET, choices=list(generated.GENERATED),
                   help=generated.help_text())
    b.add_argument("--root", default=None, help="default: $WSOL_FAST_CACHE/DATASET, else ./.wsol_fast_cache/DATASET")
    b.add_argument("--seed", type=int, default=0)
    for key, value in builtin.DEFAULTS.items():   # every generated set takes these sizes
        b.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    for sp in (c, b):
        sp.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    a = p.parse_args(argv)
    return errors.run_command(lambda: _command(a), a.debug)


def _command(a) -> int:
    if a.command == "check":
        images.set_max_image_pixels(a.max_image_pixels)
        return check(a.metadata_root, a.data_root, a.dataset, a.splits, a.workers, not a.no_progress)
    entry = generated.GENERATED[a.dataset]
    root = os.path.abspath(a.root or entry.default_root())
    sizes = {k: getattr(a, k) for k in entry.defaults}
    entry.generate(root, seed=a.seed, **sizes)
    print(f"{entry.name} dataset (seed {a.seed}): {sizes['num_train']} train / {sizes['num_val']} val / "
          f"{sizes['num_test']} test images, {entry.num_classes} classes, scored on {entry.annotation}\n"
          f"  --metadata-root {entry.metadata_root(root)} --data-root {entry.data_root(root)} "
          f"--dataset {entry.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
