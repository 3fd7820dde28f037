"""Reading the metadata of an ILSVRC-sized train split: 1,281,167 lines, shaped as wsolevaluation ships
ILSVRC's train metadata (`train/<wnid>/<wnid>_<n>.JPEG` ids, labels 0..999, `image_sizes.txt` and
`localization.txt` empty), generated once into a temporary folder.

Providers:
  wsol_fast   load_metadata: every check (paths, duplicates, labels, every image labelled)
  plain       the least any reader does: read both files, split the lines, one dict of int labels,
              no check at all (what wsolevaluation's get_image_ids / get_class_labels amount to)

One round each (the split is big, and the number is seconds, not microseconds).

    pytest benchmarks/test_bench_metadata.py --benchmark-only
"""
from __future__ import annotations

import os

import pytest

from wsol_fast.data.metadata import load_metadata

NUM_IMAGES = 1_281_167
NUM_CLASSES = 1000


@pytest.fixture(scope="module")
def ilsvrc_train(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc_meta")
    folder = root / "ILSVRC" / "train"
    folder.mkdir(parents=True)
    ids = []
    for n in range(NUM_IMAGES):
        wnid = f"n{1440764 + n % NUM_CLASSES:08d}"
        ids.append(f"train/{wnid}/{wnid}_{n:d}.JPEG")
    (folder / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (folder / "class_labels.txt").write_text("\n".join(f"{i},{n % NUM_CLASSES}" for n, i in enumerate(ids)) + "\n")
    (folder / "image_sizes.txt").write_text("")
    (folder / "localization.txt").write_text("")
    return str(root)


def _plain(root):
    folder = os.path.join(root, "ILSVRC", "train")
    with open(os.path.join(folder, "image_ids.txt")) as fh:
        ids = fh.read().splitlines()
    labels = {}
    with open(os.path.join(folder, "class_labels.txt")) as fh:
        for line in fh.read().splitlines():
            image_id, label = line.split(",")
            labels[image_id] = int(label)
    return ids, labels


@pytest.mark.parametrize("provider", ["wsol_fast", "plain"])
def test_ilsvrc_train_metadata(benchmark, ilsvrc_train, provider):
    fn = {"wsol_fast": lambda: load_metadata(ilsvrc_train, "ILSVRC", "train"),
          "plain": lambda: _plain(ilsvrc_train)}[provider]
    result = benchmark.pedantic(fn, rounds=1, iterations=1)
    count = len(result) if provider == "wsol_fast" else len(result[0])
    assert count == NUM_IMAGES
    benchmark.extra_info["lines"] = NUM_IMAGES
    benchmark.extra_info["seconds"] = round(benchmark.stats.stats.max, 2)
