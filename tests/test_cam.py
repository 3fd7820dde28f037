"""wsol_fast.cam: the one CAM path that train, evaluate and predict share, on hand-made inputs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wsol_fast import cam, metrics
from wsol_fast.data.images import IMAGENET_MEAN, IMAGENET_STD


def test_to_scoremap_is_resize_then_minmax():
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = cam.to_scoremap(m)
    assert got.shape == (224, 224) and got.dtype == np.float64
    np.testing.assert_array_equal(got, metrics.normalize_scoremap(metrics.resize_scoremap(m, (224, 224))))
    assert got.min() == 0.0 and got.max() == 1.0


def test_gt_boxes_at_224_truncate_as_the_protocol():
    meta = SimpleNamespace(sizes={"a.jpg": (448, 112)}, boxes={"a.jpg": np.array([[0, 0, 447, 111]])})
    # 447 * 224 / 448 = 223.5 -> 223; 111 * 224 / 112 = 222
    assert cam.gt_boxes_224(meta, "a.jpg").tolist() == [[0, 0, 223, 222]]


def test_normalise_is_the_loaders_arithmetic():
    batch = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    batch[0, 0, 0] = torch.tensor([255, 128, 0], dtype=torch.uint8)
    x = cam.normalise(batch, "cpu", channels_last=False)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    want = [(v - 255 * m) / (255 * s) for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    assert x[0, :, 0, 0].tolist() == pytest.approx(want, rel=1e-6)
    assert cam.normalise(batch, "cpu", channels_last=True).is_contiguous(memory_format=torch.channels_last)


class MapModel(torch.nn.Module):
    """Class k's map is k + a ramp, so the maps of different labels differ."""

    def forward_features(self, x, use_blocks=True):
        return x, None

    def logits(self, features):
        return torch.tensor([[0.0, 1.0, 3.0]]).expand(features.shape[0], 3)

    def class_map(self, features, labels):
        ramp = torch.arange(16.0).view(1, 4, 4)
        return ramp * (labels.view(-1, 1, 1).float() + 1)


def test_label_and_class_scoremaps_use_the_same_path():
    model, x = MapModel(), torch.zeros(2, 3, 4, 4)
    maps = cam.label_scoremaps(model, x, torch.no_grad(), torch.tensor([0, 2]))
    assert len(maps) == 2 and all(m.shape == (224, 224) for m in maps)
    np.testing.assert_array_equal(maps[1], cam.to_scoremap(np.arange(16.0).reshape(4, 4) * 3))
    probs, classes, top = cam.class_scoremaps(model, x, torch.no_grad(), top_k=2)
    assert classes.tolist() == [[2, 1], [2, 1]] and probs.shape == (2, 2)
    np.testing.assert_array_equal(top[1][0], maps[1])         # class 2's map either way
