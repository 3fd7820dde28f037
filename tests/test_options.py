"""wsol_fast/options.py: every ICL / ADL model option defined once. The defaults a run resolves to are
pinned (tests/options_baseline.json, recorded from b9a6df8 before the table existed)."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from wsol_fast.config import TrainConfig, resolve
from wsol_fast.models import create_model, model_defaults
from wsol_fast.train_args import parse_args

BASELINE = json.load(open(os.path.join(os.path.dirname(__file__), "options_baseline.json")))
BACKBONES = ("vgg16", "inceptionv3", "resnet50")
METHODS = ("cam", "adl", "icl")


def _json(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_defaults_resolve_as_before(backbone, method):
    from dataclasses import asdict
    for preset in (None, "paper"):
        cfg = TrainConfig()
        cfg.model.backbone, cfg.model.method, cfg.model.preset = backbone, method, preset
        resolve(cfg, "cpu")
        assert _json({"model": asdict(cfg.model), "optim": asdict(cfg.optim)}) == \
            BASELINE[f"{backbone}/{method}/resolve/{preset}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model(backbone, 4, method)
    assert _json({"config": model.config, "default_config": model.default_config}) == \
        BASELINE[f"{backbone}/{method}/create_model"]
    assert _json(model_defaults(backbone, method)) == BASELINE[f"{backbone}/{method}/model_defaults"]


@pytest.mark.parametrize("argv", [[], ["--backbone", "vgg16", "--method", "adl"],
                                  ["--preset", "paper", "--backbone", "resnet50"]])
def test_flags_parse_as_before(argv):
    c = parse_args(argv).to_dict()
    assert _json({"model": c["model"], "optim": c["optim"]}) == BASELINE["parse_args/" + " ".join(argv)]
