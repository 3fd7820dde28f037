"""--icl-blocks in the run's settings: config.json records the points (the default three when not given),
`train --config` of that file reruns them, and `--resume` refuses a change of them (train_args.RESUME_MAY_CHANGE
does not list icl_blocks). Also the partial-batch default: kept on real data, as wsolevaluation's train
DataLoader keeps it (data_loaders.py lines 228-240: DataLoader(..., batch_size=batch_size, shuffle=split ==
'train', num_workers=workers), so drop_last is False), dropped on the built-in profile (its numbers were measured
so); --drop-partial-batches / --allow-partial-batches override, and config.json records the resolved value."""
import copy
import json

import pytest

from wsol_fast import errors
from wsol_fast.config import resolve
from wsol_fast.data.pipeline import partial_batches
from wsol_fast.train_args import parse_args, resumed_config

REAL = ["--dataset", "CUB", "--data-root", "/d", "--metadata-root", "/m"]


def test_resolve_records_the_default_points_and_a_config_file_reruns_given_ones(tmp_path):
    cfg = resolve(parse_args(["--backbone", "resnet50"]), "cpu")
    assert cfg.model.icl_blocks == ["layer3.0", "layer4.0", "layer4.2"]
    given = resolve(parse_args(["--backbone", "vgg16", "--icl-blocks", "conv5_3", "pool2", "pool3"]), "cpu")
    assert given.model.icl_blocks == ["pool2", "pool3", "conv5_3"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(given.to_dict()))
    again = resolve(parse_args(["--config", str(path), "--output", str(tmp_path / "again")]), "cpu")
    assert again.model.icl_blocks == ["pool2", "pool3", "conv5_3"]
    assert again.model.overrides()["icl_blocks"] == ["pool2", "pool3", "conv5_3"]


def test_resume_refuses_a_change_of_the_points_and_keeps_the_runs():
    saved = resolve(parse_args(["--backbone", "vgg16", "--icl-blocks", "pool2", "conv5_3"]), "cpu").to_dict()
    state = {"config": saved, "epoch": 1, "step": 0}
    cli = parse_args(["--resume", "run/last.pt", "--icl-blocks", "pool3", "conv5_3", "--backbone", "vgg16"])
    with pytest.raises(errors.UserError, match=r"--icl-blocks: run \['pool2', 'conv5_3'\], now \['pool3', 'conv5_3'\]"):
        resumed_config(cli, state)
    same = parse_args(["--resume", "run/last.pt", "--icl-blocks", "conv5_3", "pool2", "--backbone", "vgg16"])
    assert resumed_config(same, copy.deepcopy(state)).model.icl_blocks == ["pool2", "conv5_3"]
    plain = parse_args(["--resume", "run/last.pt"])
    assert resumed_config(plain, copy.deepcopy(state)).model.icl_blocks == ["pool2", "conv5_3"]


@pytest.mark.parametrize("argv,expected", [
    ([], False),                                          # built-in profile: dropped, as its numbers were made
    (["--allow-partial-batches"], True),
    (REAL, True),                                         # real data: kept, as wsolevaluation keeps it
    (REAL + ["--drop-partial-batches"], False),
    (REAL + ["--allow-partial-batches"], True),
])
def test_partial_batches_default_and_flags(argv, expected):
    cfg = parse_args(argv)
    assert partial_batches(cfg.data) is expected          # what the train loader does, even unresolved
    resolved = resolve(cfg, "cpu")
    assert resolved.data.partial_batches is expected and resolved.to_dict()["data"]["partial_batches"] is expected
