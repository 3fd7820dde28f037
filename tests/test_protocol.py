"""Baselines and schedule as wsolevaluation runs them (clovaai/wsolevaluation main.py, wsol/resnet.py).
Each test names the wsolevaluation behaviour it matches."""
import pytest
import torch

from wsol_fast.config import PAPER_PROFILE, TrainConfig, resolve
from wsol_fast.models import create_model
from wsol_fast.optim import build_optimizer, lr_factor


def _wsolevaluation_lrs(lr, every, epochs):
    """wsolevaluation main(): before 1-based epoch e it calls adjust_learning_rate(e), which multiplies
    every group's lr by 0.1 when e != 0 and e % lr_decay_frequency == 0. Returns the lr of each epoch."""
    out = []
    for e in range(1, epochs + 1):
        if e % every == 0:
            lr *= 0.1
        out.append(lr)
    return out


@pytest.mark.parametrize("every, epochs", [(15, 50), (3, 10), (1, 4), (6, 8)])
def test_step_decay_happens_at_wsolevaluations_epoch(every, epochs):
    ours = [1e-3 * lr_factor(i, every, 0.1) for i in range(epochs)]
    assert ours == pytest.approx(_wsolevaluation_lrs(1e-3, every, epochs), rel=1e-12)


def test_trainer_scheduler_follows_the_same_rule():
    cfg = TrainConfig()
    cfg.data.dataset = "CUB"
    cfg.model.backbone = "vgg16"
    resolve(cfg, "cpu")
    cfg.optim.lr_decay_every = 3
    model = create_model("vgg16", 4, method="cam")
    opt, sched = build_optimizer(model, cfg)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    assert seen == pytest.approx(_wsolevaluation_lrs(cfg.optim.lr, 3, 7), rel=1e-12)


def test_resnet50_layer4_and_fc_train_at_the_classifier_lr():
    """wsolevaluation's _set_optimizer: for resnet50, parameters whose names contain 'layer4.' or 'fc.' go to
    the lr * lr_classifier_ratio group; the rest of the trunk at lr. Our attention blocks are new layers."""
    model = create_model("resnet50", 5, method="icl")
    groups = model.parameter_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    fast = {names[id(p)] for p in groups["new"]}
    slow = {names[id(p)] for p in groups["pretrained"]}
    assert all(n.startswith(("layer4.", "fc.", "attention_blocks.")) for n in fast)
    assert {n for n in names.values() if n.startswith(("layer4.", "fc."))} <= fast
    assert all(n.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")) for n in slow)


def test_vgg16_and_inception_groups_unchanged():
    """wsolevaluation: vgg16 'features.' and inception 'Mixed'/'Conv2d_1..4' at lr, everything else at 10x."""
    for backbone, slow_prefixes in (("vgg16", ("features.",)), ("inceptionv3", ("Mixed", "Conv2d_"))):
        model = create_model(backbone, 5, method="cam")
        names = {id(p): n for n, p in model.named_parameters()}
        assert all(names[id(p)].startswith(slow_prefixes) for p in model.parameter_groups()["pretrained"])
        assert not any(names[id(p)].startswith(slow_prefixes) for p in model.parameter_groups()["new"])


def test_ilsvrc_keeps_the_pretrained_fc(tmp_path):
    """wsolevaluation's resnet50 load_pretrained_model removes 'fc' from the ImageNet state dict unless the
    dataset is ILSVRC (for CAM / ADL): on ImageNet the pretrained 1000-way classifier is kept."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    source = torch.load(path, weights_only=True)
    kept = create_model("resnet50", 1000, method="cam", pretrained=str(path), keep_classifier=True)
    assert torch.equal(kept.fc.weight, source["fc.weight"]) and torch.equal(kept.fc.bias, source["fc.bias"])
    assert "fc.weight" in kept.pretrained_report.loaded
    dropped = create_model("resnet50", 1000, method="cam", pretrained=str(path))
    assert not torch.equal(dropped.fc.weight, source["fc.weight"])
    other = create_model("resnet50", 200, method="cam", pretrained=str(path), keep_classifier=True)
    assert "fc.weight" not in other.pretrained_report.loaded     # 200 classes: the shape does not fit


def test_real_data_fc_norm_default_is_the_one_that_does_not_diverge():
    assert "fc_norm" not in PAPER_PROFILE   # one default for every dataset: the option table's (options.py)
    cfg = TrainConfig()
    cfg.data.dataset = "CUB"
    assert resolve(cfg, "cpu").optim.fc_norm == "minmax"


def test_box_coverage_hand_computed():
    """The largest-component box of a 20 x 50 blob is wsolevaluation's (x, y, x + w, y + h) = (60, 50, 80, 100);
    with the +1 pixel convention it has 21 x 51 = 1,071 pixels, 1,050 of them inside the 80 x 50 GT box."""
    import numpy as np

    from wsol_fast.evaluation import box_coverage
    from wsol_fast.metrics import boxes_at_threshold

    m = np.zeros((224, 224), np.float32)
    m[50:100, 60:80] = 1.0
    box = boxes_at_threshold(m, 0.5, multi_contour=False)[0]
    cov, prec, ratio = box_coverage(box, np.array([[40, 50, 119, 99]]))
    assert cov == pytest.approx(1050 / 4000) and prec == pytest.approx(1050 / 1071)
    assert ratio == pytest.approx(1071 / 4000)
    empty = boxes_at_threshold(np.zeros((224, 224), np.float32), 0.5, multi_contour=False)[0]
    assert box_coverage(empty, np.array([[0, 0, 9, 9]]))[0] <= 1 / 100
