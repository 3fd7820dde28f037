"""wsol_fast.data.generated, the one registry of the generated datasets, and what derives from it: the
entries themselves, each generated through `python -m wsol_fast.data builtin --dataset NAME` and holding what
its entry says (boxes or masks, part boxes, classes), prepare_data's roots, the CPU profile and the partial-batch
rule (config.resolve), train's --dataset check and ablate's warm-up sets. The sets' content: tests/data/
test_builtin.py, test_builtin_parts.py, test_builtin_masks.py."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("cv2")

from wsol_fast.config import BUILTIN_PROFILE, PAPER_PROFILE, TrainConfig, resolve  # noqa: E402
from wsol_fast.data import builtin, builtin_masks, builtin_parts, generated, pipeline  # noqa: E402
from wsol_fast.data.__main__ import main as data_main  # noqa: E402
from wsol_fast.data.metadata import load_splits  # noqa: E402
from wsol_fast.runtime import DistInfo  # noqa: E402
from wsol_fast.train_args import parse_args  # noqa: E402

GENERATED = generated.GENERATED
TINY = ["--num-train", "10", "--num-val", "5", "--num-test", "5"]


def test_the_registry_holds_the_three_sets():
    assert list(GENERATED) == [builtin.DATASET, builtin_parts.DATASET, builtin_masks.DATASET] \
        == ["builtin", "builtin-parts", "builtin-masks"]
    assert [g.name for g in GENERATED.values()] == list(GENERATED)
    assert [g.annotation for g in GENERATED.values()] == ["boxes", "boxes", "masks"]
    assert [g.has_masks for g in GENERATED.values()] == [False, False, True]
    assert [g.part_boxes for g in GENERATED.values()] == [False, True, False]
    assert [g.num_classes for g in GENERATED.values()] == [10, 10, 10]
    assert [g.defaults for g in GENERATED.values()] == [builtin.DEFAULTS] * 3
    assert generated.box_sets() == ("builtin", "builtin-parts") == builtin.DATASETS   # builtin.py draws both
    assert [generated.is_generated(n) for n in ("builtin", "builtin-masks", "builtin-typo", "CUB")] == \
        [True, True, False, False]


def test_help_text():
    assert generated.help_text() == (
        "builtin (digits), builtin-parts (a small discriminative head on a weakly informative body) or "
        "builtin-masks (digits with instance masks in OpenImages' layout, scored by PxAP)")


def test_roots_are_the_cache_folder_named_after_the_set(monkeypatch, tmp_path):
    monkeypatch.setenv("WSOL_FAST_CACHE", str(tmp_path))
    assert [g.default_root() for g in GENERATED.values()] == [str(tmp_path / n) for n in GENERATED]
    monkeypatch.delenv("WSOL_FAST_CACHE")
    assert GENERATED["builtin-masks"].default_root() == os.path.join(".wsol_fast_cache", "builtin-masks") \
        == builtin_masks.default_root()
    for g in GENERATED.values():
        assert (g.metadata_root("R"), g.data_root("R")) == (os.path.join("R", "metadata"), os.path.join("R", "images"))


@pytest.mark.parametrize("name", list(GENERATED))
def test_each_set_is_generated_by_the_command_and_holds_what_its_entry_says(tmp_path, capsys, name):
    g, root = GENERATED[name], str(tmp_path / "set")
    assert data_main(["builtin", "--dataset", name, "--root", root, *TINY]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{name} dataset (seed 0): 10 train / 5 val / 5 test images, 10 classes, scored on {g.annotation}",
        f"  --metadata-root {root}/metadata --data-root {root}/images --dataset {name}"]
    metas = load_splits(g.metadata_root(root), name)
    assert metas["train"].num_classes == g.num_classes
    assert [(m.has_masks, bool(m.boxes), bool(m.part_boxes)) for m in (metas["val"], metas["test"])] == \
        [(g.has_masks, not g.has_masks, g.part_boxes)] * 2
    image_id = metas["val"].image_ids[0]
    assert os.path.isfile(os.path.join(g.data_root(root), name, image_id))


def test_the_command_refuses_an_unknown_set(capsys):
    with pytest.raises(SystemExit):
        data_main(["builtin", "--dataset", "CUB"])
    assert "invalid choice: 'CUB'" in capsys.readouterr().err


def test_prepare_data_generates_each_set_through_its_entry(monkeypatch, tmp_path):
    """Only the roots are given (or none): the entry's generator, into the set's cache folder; both roots
    given: a copy, used as is; a real dataset without roots: an error."""
    calls = []
    monkeypatch.setattr(builtin, "generate", lambda root, **k: calls.append((root, k["dataset"], k["seed"])))
    monkeypatch.setattr(builtin_masks, "generate", lambda root, **k: calls.append((root, "masks", k["seed"])))
    monkeypatch.setattr(pipeline.runtime, "barrier", lambda info: None)
    monkeypatch.setenv("WSOL_FAST_CACHE", str(tmp_path))
    for name in GENERATED:
        d = TrainConfig().data
        d.dataset, d.builtin_seed = name, 4
        root = str(tmp_path / name)
        assert pipeline.resolve_roots(d, DistInfo()) == (os.path.join(root, "metadata"), os.path.join(root, "images"))
    assert calls == [(str(tmp_path / "builtin"), "builtin", 4), (str(tmp_path / "builtin-parts"), "builtin-parts", 4),
                     (str(tmp_path / "builtin-masks"), "masks", 4)]
    d = TrainConfig().data
    d.dataset, d.metadata_root, d.data_root = "builtin-masks", "M", "D"
    assert pipeline.resolve_roots(d, DistInfo()) == ("M", "D") and len(calls) == 3
    d.dataset, d.metadata_root, d.data_root = "builtin-typo", None, None
    with pytest.raises(ValueError, match="needs both a metadata root and a data root"):
        pipeline.resolve_roots(d, DistInfo())


@pytest.mark.parametrize("name,generated_set", [(n, True) for n in GENERATED] + [("CUB", False),
                                                                                 ("builtin-typo", False)])
def test_the_cpu_profile_and_the_partial_batch_rule_follow_the_registry(name, generated_set):
    cfg = TrainConfig()
    cfg.data.dataset, cfg.model.backbone = name, "vgg16"
    assert pipeline.partial_batches(cfg.data) is not generated_set            # unresolved: the loader's rule
    resolve(cfg, "cpu")
    profile = BUILTIN_PROFILE if generated_set else PAPER_PROFILE
    assert (cfg.data.crop_size, cfg.optim.lr, cfg.data.partial_batches) == \
        (profile["crop_size"], profile["lr"], not generated_set)
    assert cfg.model.pretrained == (None if generated_set else "imagenet")


def test_train_needs_roots_for_any_other_dataset(capsys):
    assert [parse_args(["--dataset", n]).data.dataset for n in GENERATED] == list(GENERATED)
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "builtin-typo"])
    assert "--dataset builtin-typo needs both --data-root and --metadata-root" in capsys.readouterr().err


def test_ablate_shares_a_warm_up_on_the_generated_box_sets():
    from wsol_fast import ablate

    assert ablate.BUILTIN == ("builtin", "builtin-parts")
