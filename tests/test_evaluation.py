"""wsol_fast.evaluation on hand-made inputs: a stand-in model whose class maps are known, so the protocol's
numbers are known too (a map on the object scores 100, a map in the wrong corner 0), every image counted
exactly once, the coverage of a box and the headline number of a results dict."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wsol_fast import cam, evaluation


class MapModel(torch.nn.Module):
    """Logits pick class `label`; the class map of every class is 1 on rows/cols lo:hi of an 8 x 8 grid."""

    def __init__(self, lo, hi, num_classes=3):
        super().__init__()
        self.lo, self.hi, self.num_classes = lo, hi, num_classes

    def forward_features(self, images, use_blocks=True):
        return images, []

    def logits(self, features):
        return torch.nn.functional.one_hot(features[:, 0, 0, 0].long(), self.num_classes).float()

    def class_map(self, features, labels):
        maps = torch.zeros(features.shape[0], 8, 8)
        maps[:, self.lo:self.hi, self.lo:self.hi] = 1.0
        return maps


def _split(n=2):
    # 80 x 80 images, the object at pixels 20..59: 2..5 of the 8 x 8 grid (10 pixels per cell).
    ids = [f"im{k}.jpg" for k in range(n)]
    return SimpleNamespace(has_masks=False, image_ids=ids, split="test", sizes={i: (80, 80) for i in ids},
                           boxes={i: np.array([[20, 20, 59, 59]]) for i in ids})


def _batches(meta, labels):
    images = torch.zeros(len(labels), 1, 1, 1)
    images[:, 0, 0, 0] = torch.tensor(labels, dtype=torch.float32)   # the stand-in's predicted class
    return [(images, torch.tensor(labels), list(meta.image_ids))]


CFG = SimpleNamespace(runtime=SimpleNamespace(cam_curve_interval=0.01, channels_last=False), data=SimpleNamespace())


def test_a_map_on_the_object_scores_100_and_one_in_the_corner_0():
    meta = _split()
    on = evaluation.evaluate_model(MapModel(2, 6), _batches(meta, [1, 2]), meta, "cpu", None, CFG, loc_threshold=0.5)
    assert on["num_images"] == 2 and on["top1_cls"] == 100.0
    assert on["maxboxacc"][30] == on["maxboxacc"][50] == 100.0
    assert on["top1_loc"] == on["gt_known_loc"] == 100.0
    off = evaluation.evaluate_model(MapModel(6, 8), _batches(meta, [1, 2]), meta, "cpu", None, CFG, loc_threshold=0.5)
    assert off["maxboxacc"][50] == 0.0 and off["gt_known_loc"] == 0.0 and off["top1_loc"] == 0.0


def test_every_image_is_scored_exactly_once():
    meta = _split(3)
    twice = _batches(meta, [0, 0, 0])
    twice[0][2][2] = meta.image_ids[0]                  # im0 seen twice, im2 never
    with pytest.raises(RuntimeError, match="exactly once"):
        evaluation.evaluate_model(MapModel(2, 6), twice, meta, "cpu", None, CFG)


def test_box_coverage():
    # B = 10 x 10 pixels at the origin; G1 = 20 x 10 holds all of it; G2 = 5 x 5 inside it.
    assert evaluation.box_coverage((0, 0, 9, 9), [(0, 0, 19, 9)]) == (0.5, 1.0, 0.5)
    assert evaluation.box_coverage((0, 0, 9, 9), [(0, 0, 4, 4), (0, 0, 19, 9)]) == (1.0, 0.25, 4.0)


def test_part_coverage_hand_computed():
    # G = 20 x 10 at the origin, its part P = the left 5 x 10 (50 px, a quarter of G); B = the left 10 x 10.
    scoremap = np.zeros((10, 20))
    scoremap[4, 2] = 1.0                                           # the peak, inside P
    assert evaluation.part_coverage((0, 0, 9, 9), (0, 0, 19, 9), (0, 0, 4, 9), scoremap) == (1.0, 50 / 150, 1.0, 0.25)
    scoremap[4, 2], scoremap[4, 12] = 0.0, 1.0                     # the peak on the rest: not on the part
    cov = evaluation.part_coverage((10, 0, 19, 9), (0, 0, 19, 9), (0, 0, 4, 9), scoremap)
    assert cov == (0.0, 100 / 150, 0.0, 0.25)
    # A part that sticks out of G counts only where it lies in G.
    assert evaluation.part_coverage((0, 0, 19, 9), (0, 0, 19, 9), (15, 0, 24, 9), scoremap)[0::3] == (1.0, 0.25)


def test_part_numbers_come_out_when_the_split_has_part_boxes():
    """builtin-parts' part_boxes.txt: the box of a map on the whole object covers the part and the rest."""
    meta = _split()
    meta.part_boxes = {i: np.array([[20, 20, 39, 39]]) for i in meta.image_ids}   # a quarter of the GT box
    out = evaluation.evaluate_model(MapModel(2, 6), _batches(meta, [1, 2]), meta, "cpu", None, CFG,
                                  loc_threshold=0.5)
    # At 224 x 224: G = 56..165 (110 px a side), P = 56..109 (54 px), wsolevaluation's truncating rescale.
    assert out["part_area_share"] == pytest.approx(100 * 54 ** 2 / 110 ** 2)
    assert out["part_coverage"] == 100.0 and out["rest_coverage"] > 95.0 and out["box_coverage"] > 95.0
    assert "part_coverage" not in evaluation.evaluate_model(MapModel(2, 6), _batches(_split(), [1, 2]), _split(),
                                                          "cpu", None, CFG, loc_threshold=0.5)


def test_localization_score_picks_the_protocols_headline():
    assert evaluation.localization_score({"pxap": 61.5, "pxap_best_threshold": 0.3}) == ("pxap", 61.5, 0.3)
    # Box datasets: the top-1 loc / GT-known threshold is the one-box rule's, not the all-contours curve's.
    boxes = {"maxboxacc_v2": 55.0, "best_threshold_iou50": 0.25, "loc_best_threshold": 0.4}
    assert evaluation.localization_score(boxes) == ("maxboxacc_v2", 55.0, 0.4)


class FixedMapModel(MapModel):
    """Class maps given at 224 x 224 (the protocol's size: its bicubic resize is then the identity)."""

    def __init__(self, cam):
        super().__init__(0, 0)
        self.cam = torch.as_tensor(cam, dtype=torch.float32)

    def class_map(self, features, labels):
        return self.cam.expand(features.shape[0], -1, -1).clone()


def test_top1_loc_threshold_follows_the_one_box_rule_of_its_box():
    """The threshold top-1 loc and GT-known use is chosen on the curve of the box they score: the largest
    contour's (wsolevaluation's multi_contour_eval=False, evaluation.py lines 148-149) at IoU 50, the curve of
    its MaxBoxAcc V1 (config.py lines 42-50, box_v2_metric False), first argmax as np.argmax picks it.

    The object (GT 20..69) scores 1.0; a larger blob off the object (120..219) scores 0.4. All contours: the
    object's box is among them at every t, so that curve is 100 from t = 0 and its first argmax is 0.0. One
    box: below t = 0.40 (cv2 threshold int(t * 255) < 102) the larger blob is the largest contour and misses
    the object; from 0.40 on only the object is left, so the rule picks 0.40."""
    cam = np.zeros((224, 224), np.float32)
    cam[120:220, 120:220] = 0.4
    cam[20:70, 20:70] = 1.0
    ids = ["a.jpg"]
    meta = SimpleNamespace(has_masks=False, image_ids=ids, split="val", sizes={"a.jpg": (224, 224)},
                           boxes={"a.jpg": np.array([[20, 20, 69, 69]])})
    model = FixedMapModel(cam)
    val = evaluation.evaluate_model(model, _batches(meta, [1]), meta, "cpu", None, CFG)
    thresholds = np.arange(0, 1, 0.01)
    assert val["best_threshold_iou50"] == 0.0 and val["maxboxacc"][50] == 100.0        # all contours
    assert val["loc_best_threshold"] == thresholds[40] == pytest.approx(0.40)           # one box
    assert val["maxboxacc_v1"] == 100.0
    assert val["box_acc_curve"][50][0] == 100.0                                         # V2 untouched
    key, score, threshold = evaluation.localization_score(val)
    assert (key, score, threshold) == ("maxboxacc_v2", val["maxboxacc_v2"], thresholds[40])
    # At that threshold the one box is the object's (IoU 2500 / 2601); at the all-contours' 0.0 it was the
    # blob's, and GT-known would have been 0.
    test = evaluation.evaluate_model(model, _batches(meta, [1]), meta, "cpu", None, CFG, loc_threshold=threshold)
    assert test["gt_known_loc"] == test["top1_loc"] == 100.0
    old = evaluation.evaluate_model(model, _batches(meta, [1]), meta, "cpu", None, CFG, loc_threshold=0.0)
    assert old["gt_known_loc"] == old["top1_loc"] == 0.0


class FlagSpy(MapModel):
    """Records TF32's two flags when the CAM forward runs."""

    def __init__(self):
        super().__init__(2, 6)
        self.seen = []

    def forward_features(self, images, use_blocks=True):
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return images, []


@pytest.fixture
def tf32_on():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_cams_are_computed_with_tf32_off_and_the_flags_are_restored(tf32_on):
    """wsolevaluation computes CAMs in fp32 (inference.py's CAMComputer: no autocast); on CUDA, fp32 without
    TF32. Inside the evaluation both flags are off; after it, and after an error inside, they are as before."""
    meta = _split()
    model = FlagSpy()
    evaluation.evaluate_model(model, _batches(meta, [1, 2]), meta, "cpu", None, CFG, loc_threshold=0.5)
    assert model.seen == [(False, False)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    torch.backends.cudnn.allow_tf32 = False            # each flag is restored to its own value
    with pytest.raises(RuntimeError, match="inside"):
        with cam.true_fp32():
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
            raise RuntimeError("inside")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, False)


class ConvCam(torch.nn.Module):
    """One 3x3 convolution (cuDNN) and a 1x1 class map (a matmul): the parts of a CAM that TF32 would round."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(64, 256, 3, padding=1)
        self.fc = torch.nn.Linear(256, 3)

    def forward_features(self, images, use_blocks=True):
        return self.conv(images), []

    def logits(self, features):
        return self.fc(features.mean(dim=(2, 3)))

    def class_map(self, features, labels):
        return torch.einsum("bc,bchw->bhw", self.fc.weight[labels], features)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: TF32 exists only on CUDA devices")
def test_cuda_cams_match_a_float64_reference_as_fp32_does(tf32_on, monkeypatch):
    """With TF32 allowed outside, the CAMs evaluate_model computes on CUDA are true fp32: within 1e-5 (relative
    to the map's range) of the same network in float64 on the CPU, where TF32's 10-bit products would be ~1e-3."""
    torch.manual_seed(0)
    model = ConvCam().cuda().eval()
    images = torch.randn(2, 64, 28, 28)
    labels = torch.tensor([0, 2])
    captured = []
    real = cam.to_scoremap
    monkeypatch.setattr(cam, "to_scoremap", lambda m: captured.append(m.copy()) or real(m))
    meta = _split()
    evaluation.evaluate_model(model, [(images, labels, list(meta.image_ids))], meta, torch.device("cuda"), None, CFG)
    reference = ConvCam().double()
    reference.load_state_dict({k: v.double().cpu() for k, v in model.state_dict().items()})
    with torch.no_grad():
        expected = reference.class_map(reference.forward_features(images.double())[0], labels).numpy()
    got = np.stack(captured)
    span = expected.max() - expected.min()
    assert np.abs(got - expected).max() / span < 1e-5
