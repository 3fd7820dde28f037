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
        expected = json.loads(json.dumps(BASELINE[f"{backbone}/{method}/resolve/{preset}"]))
        # Since --drop-threshold became a flag, config.json records it: ADL's 0.9, None for ICL (gamma_fg
        # stands in) and CAM.
        expected["model"]["drop_threshold"] = 0.9 if method == "adl" else None
        assert _json({"model": asdict(cfg.model), "optim": asdict(cfg.optim)}) == expected
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
    expected = json.loads(json.dumps(BASELINE["parse_args/" + " ".join(argv)]))
    # Since the objective's option table, the loss weights are None until resolve() too, as fc_norm was
    # (their resolved values are pinned by test_defaults_resolve_as_before).
    assert [expected["optim"][k] for k in ("lambda_ca", "lambda_fc", "margin")] == [1.0, 1.0, 1.0]
    expected["optim"].update(lambda_ca=None, lambda_fc=None, margin=None)
    expected["model"]["drop_threshold"] = None   # a flag since the ADL search space needed it
    assert _json({"model": c["model"], "optim": c["optim"]}) == expected


# --- the table is the one definition ------------------------------------------------------------------

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import inspect  # noqa: E402

from wsol_fast import options  # noqa: E402
from wsol_fast.config import PAPER_TABLE1, PRESETS, ModelConfig  # noqa: E402
from wsol_fast.models import METHOD_OPTIONS  # noqa: E402
from wsol_fast.models.adl import ADLBlock  # noqa: E402
from wsol_fast.models.icl import ICLBlock  # noqa: E402
from wsol_fast.train_args import parse_args as _parse  # noqa: E402


def _flag_actions():
    p = argparse.ArgumentParser()
    options.add_flags(p)
    return {a.dest: a for a in p._actions if a.dest != "help"}


def test_every_option_is_a_flag_a_config_field_a_registry_default_and_in_a_models_config():
    actions, fields = _flag_actions(), [f.name for f in dataclasses.fields(ModelConfig)]
    assert [f for f in fields if f in options.BY_NAME] == list(options.CONFIG_OPTIONS)
    for o in options.OPTIONS:
        if o.flag is not None:
            assert actions[o.name].option_strings == [o.flag] and actions[o.name].default is None
            assert actions[o.name].type is (None if o.kind is bool else o.check)
            assert ModelConfig.__dataclass_fields__[o.name].default is None   # None: the table's default
        for backbone in BACKBONES:
            for method in METHODS:
                if method not in o.methods and method not in o.accepted_by:
                    assert o.name not in model_defaults(backbone, method)
                    continue
                value = options.defaults(method, backbone)[o.name]
                assert model_defaults(backbone, method)[o.name] == value
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    assert create_model(backbone, 4, method).config[o.name] == value
                if o.in_config:
                    cfg = parse_args(["--backbone", backbone, "--method", method])
                    assert getattr(resolve(cfg, "cpu").model, o.name) == value


def test_the_blocks_defaults_are_the_tables():
    for block, method in ((ICLBlock, "icl"), (ADLBlock, "adl")):
        params = inspect.signature(block.__init__).parameters
        shared = options.defaults(method)
        for name in options.BLOCK_OPTIONS[method]:
            if name in shared:
                assert params[name].default == shared[name], (method, name)
            else:   # a per-backbone option: no default to disagree with
                assert params[name].default is inspect.Parameter.empty, (method, name)
        assert set(params) - {"self", "channels"} == set(options.BLOCK_OPTIONS[method])
    assert METHOD_OPTIONS == options.METHOD_OPTIONS


def test_changing_a_default_in_the_table_changes_it_everywhere(monkeypatch):
    old = options.BY_NAME["attention_form"]
    new = dataclasses.replace(old, default={"icl": "relu"})
    monkeypatch.setitem(options.BY_NAME, "attention_form", new)
    monkeypatch.setattr(options, "OPTIONS", tuple(new if o is old else o for o in options.OPTIONS))
    assert "model default: relu" in _flag_actions()["attention_form"].help
    assert resolve(_parse([]), "cpu").model.attention_form == "relu"
    assert model_defaults("vgg16", "icl")["attention_form"] == "relu"
    model = create_model("vgg16", 4, "icl")
    assert model.config["attention_form"] == "relu"
    assert {b.attention_form for b in model.attention_blocks} == {"relu"}


def test_every_preset_value_passes_its_options_validator():
    for backbone in BACKBONES:
        values = {**PRESETS["paper"]["model"], **PAPER_TABLE1[backbone]}
        assert values == options.paper_values(backbone)
        for name, value in values.items():
            options.check(name, value)
            if options.BY_NAME[name].check is not None:
                options.BY_NAME[name].check(str(value))
    for name, value in options.paper_values().items():
        assert value in (options.BY_NAME[name].choices or (value,))


def test_check_names_the_option_or_the_flag():
    with pytest.raises(ValueError, match=r"^--gamma-fg must be in \(0, 1\]"):
        options.check("gamma_fg", 0.0, label="--gamma-fg")
    with pytest.raises(ValueError, match="attention_form must be one of"):
        options.check("attention_form", "signed")
    with pytest.raises(ValueError, match="use_fc must be true or false"):
        options.check("use_fc", "no")
    options.check("drop_threshold", None)


# --- the objective's options: one table too ---------------------------------------------------------------

from wsol_fast import losses  # noqa: E402
from wsol_fast.config import OptimConfig, PROJECT_DEFAULT  # noqa: E402


def _loss_flag_actions():
    p = argparse.ArgumentParser()
    options.add_flags(p, options.LOSS_OPTIONS)
    return {a.dest: a for a in p._actions if a.dest != "help"}


def test_every_loss_option_is_a_flag_a_config_field_and_the_losss_default():
    actions = _loss_flag_actions()
    fields = [f.name for f in dataclasses.fields(OptimConfig)]
    assert fields[-len(options.LOSS_OPTIONS):] == [o.name for o in options.LOSS_OPTIONS]
    loss_params = inspect.signature(losses.WSOLLoss.__init__).parameters
    for o in options.LOSS_OPTIONS:
        assert actions[o.name].option_strings == [o.flag] and actions[o.name].default is None
        assert (actions[o.name].type, actions[o.name].choices) == (o.check, o.choices)
        assert OptimConfig.__dataclass_fields__[o.name].default is None   # None: the preset's or the table's
        assert loss_params[o.name].default == o.default["icl"], o.name
        # the train parser has the same flag, and a run resolves to the table's default (or the paper's)
        assert getattr(resolve(_parse([]), "cpu").optim, o.name) == o.default["icl"]
        assert getattr(resolve(_parse(["--preset", "paper"]), "cpu").optim, o.name) == o.paper
    assert (losses.FC_NORMS, losses.FC_REDUCTIONS) == (options.LOSS_BY_NAME["fc_norm"].choices,
                                                     options.LOSS_BY_NAME["fc_reduction"].choices)
    # the low-level terms default to the same values as the loss
    assert inspect.signature(losses.foreground_consistency_loss).parameters["norm"].default == "minmax"
    assert inspect.signature(losses.normalize_attention).parameters["mode"].default == "minmax"
    assert inspect.signature(losses.contrastive_attention_loss).parameters["margin"].default == 1.0
    assert {k: PROJECT_DEFAULT[k] for k in options.LOSS_BY_NAME} == options.loss_defaults()
    assert PRESETS["paper"]["optim"] == options.loss_paper_values() == {
        "lambda_ca": 1.0, "lambda_fc": 1.0, "margin": 1.0, "fc_norm": "none", "fc_reduction": "sum"}


def test_changing_a_loss_default_in_the_table_changes_the_flag_and_the_run(monkeypatch):
    old = options.LOSS_BY_NAME["fc_reduction"]
    new = dataclasses.replace(old, default={"icl": "sum"})
    monkeypatch.setitem(options.LOSS_BY_NAME, "fc_reduction", new)
    monkeypatch.setattr(options, "LOSS_OPTIONS", tuple(new if o is old else o for o in options.LOSS_OPTIONS))
    help_text = _loss_flag_actions()["fc_reduction"].help
    assert "default: sum" in help_text and "model default" not in help_text
    assert resolve(_parse([]), "cpu").optim.fc_reduction == "sum"
    assert resolve(_parse(["--fc-reduction", "mean"]), "cpu").optim.fc_reduction == "mean"


def test_a_loss_options_range_is_checked_for_a_config_file_too():
    cfg = _parse([])
    cfg.optim.margin = -1.0   # as a --config file could give it: the flag's validator is not on that path
    with pytest.raises(ValueError, match=r"^--margin must be"):
        resolve(cfg, "cpu")
    with pytest.raises(SystemExit):
        _parse(["--fc-norm", "l2"])
