"""Config resolution: the built-in CPU profile against the paper's defaults on real data."""
from __future__ import annotations

import pytest

from wsol_fast.config import BUILTIN_PROFILE, PAPER_PROFILE, TrainConfig, resolve


def _resolved(dataset: str, **optim) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.dataset = dataset
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return resolve(cfg, "cpu")


def test_real_data_gets_the_papers_settings():
    o = _resolved("CUB").optim
    assert (o.lr, o.new_layer_lr_mult, o.block_warmup_epochs, o.fc_norm) == (1e-3, 10.0, 0, "minmax")   # max diverged from scratch
    assert (o.epochs, o.lr_decay_every) == (50, 15)
    assert _resolved("CUB").model.pretrained == "imagenet"


def test_builtin_gets_its_cpu_profile():
    cfg = _resolved("builtin")
    assert cfg.optim.block_warmup_epochs == BUILTIN_PROFILE["block_warmup_epochs"] == 5
    # wsolevaluation's decay rule (start of 1-based epoch 6): the one ICL epoch, 6, runs at the decayed lr
    assert cfg.optim.epochs == 6 and cfg.optim.lr_decay_every == 6
    assert (cfg.data.resize_size, cfg.data.crop_size) == (73, 64)
    assert cfg.model.pretrained is None


def test_flags_override_the_profile():
    assert _resolved("builtin", block_warmup_epochs=0).optim.block_warmup_epochs == 0
    assert _resolved("CUB", block_warmup_epochs=2).optim.block_warmup_epochs == 2
    with pytest.raises(ValueError, match="block-warmup-epochs"):
        _resolved("CUB", block_warmup_epochs=-1)
    assert set(PAPER_PROFILE) <= set(BUILTIN_PROFILE)  # every key the resolver reads, in both


# --- --preset paper and the flag ranges (issue: the paper exactly) --------------------------------------------

from wsol_fast import train  # noqa: E402
from wsol_fast.config import PAPER_TABLE1, icl_form  # noqa: E402


def _parsed(*argv) -> TrainConfig:
    return resolve(train.parse_args(list(argv)), "cpu")


def test_the_paper_preset_sets_each_element_and_explicit_flags_win():
    cfg = _parsed("--preset", "paper", "--backbone", "resnet50", "--dataset", "CUB", "--data-root", "d",
                  "--metadata-root", "m")
    m, o = cfg.model, cfg.optim
    assert m.preset == "paper"
    assert (m.attention_form, m.mask_norm, m.attention_scale) == ("paper", "none", "1")
    assert (m.drop_rate, m.gamma_fg, m.gamma_bg) == (0.85, 0.95, 1.2)
    assert (o.fc_norm, o.fc_reduction, o.margin, o.lambda_ca, o.lambda_fc) == ("none", "sum", 1.0, 1.0, 1.0)
    assert (o.lr, o.batch_size) == (1e-3, 32)
    assert icl_form(cfg).startswith("paper (--preset paper")
    over = _parsed("--preset", "paper", "--fc-norm", "minmax", "--gamma-bg", "1.5", "--attention-scale", "inv_sqrt")
    assert (over.optim.fc_norm, over.model.gamma_bg, over.model.attention_scale) == ("minmax", 1.5, "inv_sqrt")
    assert (over.optim.fc_reduction, over.model.attention_form, over.model.mask_norm) == ("sum", "paper", "none")
    assert icl_form(over) == ("paper except attention_scale inv_sqrt, fc_norm minmax, gamma_bg 1.5 (see README, "
                              "'The paper and the default')")
    # the built-in set keeps its from-scratch schedule under the preset; the method is the paper's
    builtin = _parsed("--preset", "paper")
    assert builtin.optim.lr == BUILTIN_PROFILE["lr"] and builtin.optim.fc_reduction == "sum"


def test_the_default_records_every_option_it_resolves_and_says_it_is_the_projects():
    cfg = _parsed("--backbone", "vgg16")
    m = cfg.model
    assert (m.drop_rate, m.gamma_fg, m.gamma_bg) == tuple(PAPER_TABLE1["vgg16"].values())
    assert (m.attention_form, m.mask_norm, m.attention_scale) == ("residual", "minmax", "inv_sqrt")
    assert (m.use_contrastive, m.use_fc, m.nonlocal_attention, m.use_dfg_mask) == (True, True, True, True)
    assert (cfg.optim.fc_norm, cfg.optim.fc_reduction) == ("minmax", "mean")
    assert icl_form(cfg).startswith("project default (see README")
    adl = _parsed("--method", "adl").model
    assert adl.drop_rate == 0.75 and adl.gamma_fg is None and adl.attention_form is None   # ICL's don't apply
    cam = _parsed("--method", "cam").model
    assert cam.drop_rate is None and cam.attention_form is None


@pytest.mark.parametrize("backbone", sorted(PAPER_TABLE1))
def test_every_value_of_table_1_is_accepted(backbone):
    v = PAPER_TABLE1[backbone]
    cfg = _parsed("--backbone", backbone, "--drop-rate", str(v["drop_rate"]), "--gamma-fg", str(v["gamma_fg"]),
                  "--gamma-bg", str(v["gamma_bg"]))
    assert (cfg.model.drop_rate, cfg.model.gamma_fg, cfg.model.gamma_bg) == (v["drop_rate"], v["gamma_fg"], 1.2)


@pytest.mark.parametrize("flag, value", [("--gamma-bg", "0"), ("--gamma-bg", "-1.2"), ("--gamma-bg", "nan"),
                                         ("--gamma-bg", "inf"), ("--gamma-fg", "0"), ("--gamma-fg", "1.01"),
                                         ("--drop-rate", "1.5"), ("--drop-rate", "-0.1"),
                                         ("--attention-scale", "0"), ("--attention-scale", "-1"),
                                         ("--attention-scale", "sqrt"), ("--margin", "-1")])
def test_values_outside_their_meaning_are_refused_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args([flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_the_edges_of_each_range_are_accepted():
    cfg = _parsed("--gamma-fg", "1", "--gamma-bg", "3.5", "--drop-rate", "0", "--attention-scale", "0.25",
                  "--margin", "0")
    assert (cfg.model.gamma_fg, cfg.model.gamma_bg, cfg.model.drop_rate) == (1.0, 3.5, 0.0)
    assert (cfg.model.attention_scale, cfg.optim.margin) == ("0.25", 0.0)


def test_the_block_itself_refuses_gammas_outside_their_meaning():
    from wsol_fast.models.icl import ICLBlock

    with pytest.raises(ValueError, match="gamma_fg"):
        ICLBlock(8, drop_rate=0.5, gamma_fg=0.0, gamma_bg=1.2)
    with pytest.raises(ValueError, match="gamma_bg"):
        ICLBlock(8, drop_rate=0.5, gamma_fg=0.9, gamma_bg=0.0)
    assert ICLBlock(8, drop_rate=0.5, gamma_fg=0.9, gamma_bg=1.2).gamma_bg == 1.2
