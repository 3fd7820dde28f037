"""`python -m wsol_fast.train --config FILE`: a run's config.json (or a YAML file) sets every option, flags
on the command line override it, unknown keys and bad values are errors naming the key."""
from __future__ import annotations

import json

import pytest
import torch

from test_train import _args, tiny_root  # noqa: F401  (the module-scoped tiny built-in set)
from wsol_fast import train
from wsol_fast.config import resolve


def _resolved(argv) -> dict:
    return resolve(train.parse_args(argv), "cpu").to_dict()


def test_a_run_started_from_config_json_resolves_to_the_same_config(tiny_root, tmp_path):  # noqa: F811
    first = tmp_path / "first"
    assert train.main(_args(tiny_root, first, "--epochs", "1", "--max-steps-per-epoch", "1",
                            "--no-fc", "--lambda-ca", "0.5", "--no-tensorboard")) == 0
    saved = json.loads((first / "config.json").read_text())
    again = tmp_path / "again"
    # the folder the file names holds a run: a rerun must not write over it unless told where to go
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(first / "config.json")])
    assert train.main(["--config", str(first / "config.json"), "--output", str(again)]) == 0
    rerun = json.loads((again / "config.json").read_text())
    assert rerun["runtime"].pop("output") == str(again)
    assert saved["runtime"].pop("output") == str(first)
    assert rerun == saved   # every other key, including flags without a default of their own (use_fc)
    assert saved["runtime"]["tensorboard"] is False
    assert not list(first.glob("events.out.tfevents.*")) and not list(again.glob("events.out.tfevents.*"))


def test_command_line_flags_override_the_file_and_fields_without_flags_are_set(tmp_path):
    base = _resolved(["--backbone", "vgg16", "--lr", "0.005", "--no-fc", "--output", str(tmp_path / "x")])
    base["optim"]["momentum"] = 0.8          # no flag: only a file can set it
    path = tmp_path / "config.json"
    path.write_text(json.dumps(base))
    assert _resolved(["--config", str(path)]) == base
    over = _resolved(["--config", str(path), "--lr", "0.1", "--batch-size", "4", "--backbone", "resnet50"])
    assert (over["optim"]["lr"], over["optim"]["batch_size"], over["model"]["backbone"]) == (0.1, 4, "resnet50")
    for section in ("optim", "model"):
        for key in set(base[section]) - {"lr", "batch_size", "backbone", "icl_blocks"}:
            assert over[section][key] == base[section][key], (section, key)
    # The block points are per backbone: the file's (vgg16's default three) give way to resnet50's default.
    assert base["model"]["icl_blocks"] == ["pool3", "conv4_3", "conv5_3"]
    assert over["model"]["icl_blocks"] == ["layer3.0", "layer4.0", "layer4.2"]
    # Points the file chose itself do not carry over to another backbone: an error naming the flag.
    chosen = dict(base, model=dict(base["model"], icl_blocks=["pool2", "conv5_3"]))
    path.write_text(json.dumps(chosen))
    assert _resolved(["--config", str(path)])["model"]["icl_blocks"] == ["pool2", "conv5_3"]
    with pytest.raises(SystemExit):
        _resolved(["--config", str(path), "--backbone", "resnet50"])


def test_yaml_file_nested_or_flat(tmp_path):
    path = tmp_path / "run.yaml"
    # YAML 1.1 reads 1e-3 (no dot) as a string: the flag's type converts it, as on the command line
    path.write_text("backbone: resnet50\nbatch-size: 3\noptim:\n  lr: 1e-3\n  momentum: 0.5\n"
                    "runtime:\n  tensorboard: false\n")
    cfg = train.parse_args(["--config", str(path)])
    assert (cfg.model.backbone, cfg.optim.batch_size, cfg.optim.lr) == ("resnet50", 3, 1e-3)
    assert cfg.optim.momentum == 0.5
    assert cfg.runtime.tensorboard is False
    assert train.parse_args(["--config", str(path), "--batch-size", "7"]).optim.batch_size == 7


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lrr: 0.1\n", "unknown key 'optim.lrr'"),
    ("backbnoe: vgg16\n", "unknown key 'backbnoe'"),
    ("nonsense:\n  lr: 0.1\n", "unknown key 'nonsense'"),
    ("backbone: resnet5\n", "model.backbone must be one of"),
    ("epochs: two\n", "optim.epochs must be int"),
    ("epochs: 2.5\n", "optim.epochs must be int"),
    ("optim: [1, 2]\n", "section 'optim' must be a mapping"),
    ("optim:\n\tlr: 0.1\n", "line 2: not valid YAML"),   # a tab may not indent YAML
])
def test_bad_files_are_errors_naming_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--config", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_json_syntax_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "model": {"backbone": "vgg16",}\n}\n')
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(path)])
    assert f"{path}, line 2" in capsys.readouterr().err


def test_a_paper_preset_run_records_what_ran_and_its_config_reruns_it(tiny_root, tmp_path, capsys):  # noqa: F811
    first = tmp_path / "paper"
    assert train.main(_args(tiny_root, first, "--preset", "paper", "--backbone", "resnet50", "--no-compile",
                            "--epochs", "1", "--max-steps-per-epoch", "2", "--no-tensorboard")) == 0
    assert "ICL form: paper (--preset paper" in capsys.readouterr().out
    saved = json.loads((first / "config.json").read_text())
    m, o = saved["model"], saved["optim"]
    assert (m["preset"], m["attention_form"], m["mask_norm"], m["attention_scale"]) == ("paper", "paper", "none", "1")
    assert (o["fc_norm"], o["fc_reduction"]) == ("none", "sum")
    assert (m["gamma_bg"], m["gamma_fg"], m["drop_rate"]) == (1.2, 0.95, 0.85)
    assert None not in [m[k] for k in ("use_contrastive", "use_fc", "nonlocal_attention", "use_dfg_mask")]
    again = tmp_path / "again"
    assert train.main(["--config", str(first / "config.json"), "--output", str(again)]) == 0
    results = [json.loads((run / "results.json").read_text()) for run in (first, again)]
    for key in ("maxboxacc_v2", "top1_cls", "gt_known_loc", "top1_loc"):
        assert results[0][key] == results[1][key], key
    weights = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (first, again)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
