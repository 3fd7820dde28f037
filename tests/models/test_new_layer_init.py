"""Each backbone's new layers are initialised as wsolevaluation initialises them (its `initialize_weights`,
wsol/util.py lines 44-61: Conv2d He (kaiming normal, fan_out, relu) for init_mode 'he' or xavier uniform for
'xavier', biases 0; Linear normal(0, 0.01), bias 0):

* VGG16: VggCam (also its ADL variant) calls initialize_weights(self.modules(), init_mode='he'), wsol/vgg.py
  lines 56-60: conv6 He, fc normal(0, 0.01).
* ResNet50: ResNetAdl / ResNetCam call it with init_mode='xavier' (wsol/resnet.py lines 364-366 and 87-89):
  fc, a Linear, normal(0, 0.01).
* InceptionV3: InceptionAdl / InceptionCam call it with init_mode='xavier' (wsol/inception.py lines 434-447 and
  156-167): SPG_A3_1b, SPG_A3_2b and SPG_A4, all Conv2d, xavier uniform.

The init calls are recorded per tensor (a spy around torch.nn.init), and the values checked against each rule."""
import math

import pytest
import torch
from torch import nn

from wsol_fast.models import create_model


@pytest.fixture
def init_calls(monkeypatch):
    """{id(tensor): [(init name, kwargs)]} of every nn.init call made while building a model."""
    calls = {}
    for name in ("kaiming_normal_", "xavier_uniform_", "normal_", "zeros_", "constant_", "ones_"):
        real = getattr(nn.init, name)

        def spy(tensor, *args, _real=real, _name=name, **kwargs):
            calls.setdefault(id(tensor), []).append((_name, args, kwargs))
            return _real(tensor, *args, **kwargs)
        monkeypatch.setattr(nn.init, name, spy)
    return calls


def _last(calls, tensor):
    return calls[id(tensor)][-1]


def test_vgg16_conv6_he_and_fc_normal(init_calls):
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=7, method="cam")
    assert _last(init_calls, model.conv6.weight) == ("kaiming_normal_", (), {"mode": "fan_out",
                                                                              "nonlinearity": "relu"})
    assert _last(init_calls, model.fc.weight) == ("normal_", (0.0, 0.01), {})
    for bias in (model.conv6.bias, model.fc.bias):
        assert _last(init_calls, bias)[0] == "zeros_" and torch.count_nonzero(bias) == 0
    # He, fan_out = 1024 * 3 * 3: std sqrt(2 / 9216); fc std 0.01 (9.4 M and 7 K samples).
    assert model.conv6.weight.std().item() == pytest.approx(math.sqrt(2 / 9216), rel=0.01)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_resnet50_fc_normal(init_calls):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=7, method="cam")
    assert _last(init_calls, model.fc.weight) == ("normal_", (0.0, 0.01), {})
    assert _last(init_calls, model.fc.bias)[0] == "zeros_" and torch.count_nonzero(model.fc.bias) == 0
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_inceptionv3_head_xavier_uniform(init_calls):
    torch.manual_seed(0)
    model = create_model("inceptionv3", num_classes=7, method="cam")
    for conv, fan_in, fan_out in ((model.SPG_A3_1b[0], 768 * 9, 1024 * 9), (model.SPG_A3_2b[0], 1024 * 9, 1024 * 9),
                                  (model.SPG_A4, 1024, 7)):
        assert _last(init_calls, conv.weight) == ("xavier_uniform_", (), {})
        assert _last(init_calls, conv.bias)[0] == "zeros_" and torch.count_nonzero(conv.bias) == 0
        bound = math.sqrt(6.0 / (fan_in + fan_out))       # U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        w = conv.weight.detach()
        assert w.abs().max().item() <= torch.tensor(bound).item()   # the bound as uniform_ gets it, in fp32
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    # The pretrained layers keep the project's from-scratch He init (models/inception.py, a measured choice).
    assert _last(init_calls, model.Mixed_6e.branch1x1.conv.weight)[0] == "kaiming_normal_"
