"""wsol_fast.train_args: the checks beside train's flags (which flags were given, what a resume may
change, the smallest crop)."""
from __future__ import annotations

import argparse

import pytest

from wsol_fast import train_args


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-decay", type=float)
    return p


def test_given_dests_include_unique_prefixes():
    p = _parser()
    assert train_args.given_dests(p, ["--epoch", "3", "--lr=0.1"]) == {"epochs", "lr"}
    assert train_args.given_dests(p, ["--lr-d", "0.5"]) == {"lr_decay"}
    assert train_args.given_dests(p, []) == set()


def test_resume_conflicts_name_what_may_not_change():
    cli = {"optim": {"lr": 0.1, "epochs": 9}, "runtime": {"output": "b"}}
    saved = {"optim": {"lr": 0.01, "epochs": 3}, "runtime": {"output": "a"}}
    assert "epochs" in train_args.RESUME_MAY_CHANGE and "output" in train_args.RESUME_MAY_CHANGE
    assert train_args.resume_conflicts(cli, saved, {"lr", "epochs", "output"}) == ["--lr: run 0.01, now 0.1"]
    assert train_args.resume_conflicts(cli, saved, set()) == []


def test_check_crop_refuses_a_crop_below_the_backbones_minimum(capsys):
    p = _parser()
    train_args.check_crop(p, "vgg16", train_args.MIN_CROP["vgg16"], None)
    with pytest.raises(SystemExit):
        train_args.check_crop(p, "vgg16", train_args.MIN_CROP["vgg16"] - 1, None)
    assert "vgg16 needs at least 32" in capsys.readouterr().err
