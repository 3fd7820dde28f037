"""python -m wsol_fast.ablate end to end on a tiny generated set: rows forked from one CAM warm-up per seed,
the Table-2 summary (mean and sample std over seeds, differences to full ICL), and resumability."""
import json
import os

import pytest

from wsol_fast import ablate, checkpoint, train
from wsol_fast.data import builtin

TINY = dict(num_train=16, num_val=8, num_test=8, min_size=72, max_size=96)


@pytest.fixture(scope="module")
def parts_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_parts"))
    builtin.generate(root, seed=0, progress=False, dataset="builtin-parts", **TINY)
    return root


def _argv(root, out, *extra):
    return ["--backbone", "vgg16", "--dataset", "builtin-parts", "--seeds", "2", "--rows", "cam", "icl", "no_ca",
            "--epochs", "2", "--warmup-epochs", "1", "--output", str(out),
            "--data-root", builtin.data_root(root), "--metadata-root", builtin.metadata_root(root),
            "--batch-size", "8", "--resize-size", "72", "--crop-size", "64", "--workers", "0", "--loader",
            "opencv", "--amp", "off", "--no-channels-last", "--lr", "0.002", "--num-overlays", "0", *extra]


def test_ablate_forks_rows_from_one_warmup_and_summarises_over_seeds(parts_root, tmp_path, monkeypatch):
    out = tmp_path / "abl"
    calls = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda argv: calls.append(list(argv)) or real_main(argv))
    assert ablate.main(_argv(parts_root, out)) == 0
    assert len(calls) == 2 * (1 + 3)                       # per seed: one warm-up, three rows
    for seed in (0, 1):
        warm = checkpoint.load_checkpoint(out / f"seed{seed}" / "warmup" / "last.pt")
        assert warm["config"]["model"]["method"] == "cam" and warm["epoch"] == 1
        for row, method in (("cam", "cam"), ("icl", "icl"), ("no_ca", "icl")):
            cfg = json.loads((out / f"seed{seed}" / row / "config.json").read_text())
            assert cfg["model"]["method"] == method
            assert cfg["runtime"]["init_from"].endswith(os.path.join(f"seed{seed}", "warmup", "last.pt"))
            assert cfg["runtime"]["seed"] == seed and cfg["runtime"]["fork_weights_only"]
    assert json.loads((out / "seed0" / "no_ca" / "config.json").read_text())["model"]["use_contrastive"] is False

    data = json.loads((out / "ablation.json").read_text())
    for row in ("cam", "icl", "no_ca"):
        values = [json.loads((out / f"seed{s}" / row / "results.json").read_text())["maxboxacc_v2"] for s in (0, 1)]
        cell = data["table"][row]["maxboxacc_v2"]
        assert cell["values"] == pytest.approx(values)
        assert cell["mean"] == pytest.approx(sum(values) / 2)
        assert cell["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)   # sample std of two
        assert cell["diff_to_icl"] == pytest.approx(cell["mean"] - data["table"]["icl"]["maxboxacc_v2"]["mean"])
        # Paired over seeds: the sample std of the two per-seed differences to ICL.
        icl = data["table"]["icl"]["maxboxacc_v2"]["values"]
        d0, d1 = values[0] - icl[0], values[1] - icl[1]
        assert cell["diff_to_icl_std"] == pytest.approx(abs(d0 - d1) / 2 ** 0.5, abs=1e-9)
    table = (out / "ablation.md").read_text()
    assert "| CAM |" in table and "| w/o L_ca |" in table and "±" in table
    # builtin-parts: where each row's boxes lie (head versus the rest of the object), from results.json.
    assert "| method | object covered | head covered | rest covered |" in table
    for row in ("cam", "icl"):
        values = [json.loads((out / f"seed{s}" / row / "results.json").read_text())["part_coverage"] for s in (0, 1)]
        assert data["table"][row]["part_coverage"]["values"] == pytest.approx(values)
    assert (out / "ablation.csv").read_text().splitlines()[0].startswith("row,label,maxboxacc_30_mean")
    assert (out / "ablation.csv").read_text().splitlines()[0].endswith(",diff_v2_to_icl,diff_v2_to_icl_std")

    # Resumable: a second call reruns nothing and rewrites the same table.
    calls.clear()
    assert ablate.main(_argv(parts_root, out)) == 0
    assert calls == []
    assert json.loads((out / "ablation.json").read_text())["table"] == data["table"]


def test_ablate_refuses_flags_it_sets_itself(capsys):
    with pytest.raises(SystemExit):
        ablate.main(["--seeds", "1", "--seed", "3"])
    assert "--seed is set by the ablation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.main(["--seeds", "0"])


def test_only_seeds_runs_a_subset_and_defers_the_table(parts_root, tmp_path, monkeypatch):
    """--only-seeds: one process per seed; the table waits for every seed, then a plain call writes it."""
    out = tmp_path / "abl"
    argv = _argv(parts_root, out)
    argv[argv.index("--rows") + 1: argv.index("--rows") + 4] = ["cam"]
    calls = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda a: calls.append(list(a)) or real_main(a))
    assert ablate.main(argv + ["--only-seeds", "1"]) == 0
    assert len(calls) == 2 and all(a[a.index("--seed") + 1] == "1" for a in calls)
    assert not (out / "ablation.json").exists()
    # --table-only trains nothing and summarises the seeds that finished every row, saying which.
    calls.clear()
    assert ablate.main(argv + ["--table-only"]) == 0
    assert calls == []
    partial = json.loads((out / "ablation.json").read_text())
    md = (out / "ablation.md").read_text()
    assert partial["meta"]["seeds"] == [1] and "\n\nOnly seeds [1] of 0..1" in md   # a paragraph of its own,
    assert not any("Only seeds" in line for line in md.splitlines() if line.startswith("|"))   # not in a table row
    assert ablate.main(argv + ["--only-seeds", "0"]) == 0
    whole = json.loads((out / "ablation.json").read_text())    # every seed's rows exist now
    assert whole["meta"]["seeds"] == [0, 1] and len(whole["table"]["cam"]["maxboxacc_v2"]["values"]) == 2


def _location_argv(root, out, *extra):
    return ["--study", "location", "--backbone", "vgg16", "--dataset", "builtin-parts", "--seeds", "1",
            "--epochs", "2", "--warmup-epochs", "1", "--row-steps-per-epoch", "1", "--output", str(out),
            "--data-root", builtin.data_root(root), "--metadata-root", builtin.metadata_root(root),
            "--batch-size", "8", "--resize-size", "72", "--crop-size", "64", "--workers", "0", "--loader",
            "opencv", "--amp", "off", "--no-channels-last", "--lr", "0.002", "--num-overlays", "0", *extra]


def test_location_study_runs_table3_rows_cumulatively_and_prints_its_columns(parts_root, tmp_path, monkeypatch,
                                                                              capsys):
    """--study location: the paper's Table 3 (section 4.3) on VGG16. conv_5_3 is the fixed reference and is
    left empty ('-': L_fc needs two blocks), then + pool_4, + pool_3, + pool_2, + pool_1 are added one by one
    from later to earlier; the paper's ADL-VGG16 pool_4 is the block in front of pool4 (wsolevaluation's
    configs_dict['adl']['14x14'] in wsol/vgg.py, lines 42-44: 'A' after conv4_3, then 'M'), our conv4_3."""
    out = tmp_path / "loc"
    calls = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda argv: calls.append(list(argv)) or real_main(argv))
    assert ablate.main(_location_argv(parts_root, out)) == 0
    assert len(calls) == 1 + 4                      # the CAM warm-up, then four rows (the reference is not trained)
    expected = {"blocks2": ["conv4_3", "conv5_3"], "blocks3": ["pool3", "conv4_3", "conv5_3"],
                "blocks4": ["pool2", "pool3", "conv4_3", "conv5_3"],
                "blocks5": ["pool1", "pool2", "pool3", "conv4_3", "conv5_3"]}
    for row, points in expected.items():
        cfg = json.loads((out / "seed0" / row / "config.json").read_text())
        assert cfg["model"]["icl_blocks"] == points and cfg["model"]["method"] == "icl"
        assert cfg["runtime"]["init_from"].endswith(os.path.join("seed0", "warmup", "last.pt"))
        state = checkpoint.load_checkpoint(out / "seed0" / row / "last.pt")
        assert state["model_config"]["use_fc"] is True      # L_fc on in every trained row
        assert state["model_config"]["icl_blocks"] == points
        assert len({k.split(".")[1] for k in state["model"] if k.startswith("attention_blocks.")}) == len(points)
    assert not (out / "seed0" / "blocks1").exists()

    printed = capsys.readouterr().out
    table = printed[printed.index("| Location |"):].splitlines()
    assert table[0] == "| Location | Top-1 classification | MaxBoxAccV2 |"
    assert [line.split(" | ")[0] for line in table[2:7]] == [
        "| conv_5_3", "| + pool_4 (conv4_3)", "| + pool_3", "| + pool_2", "| + pool_1"]
    assert table[2] == "| conv_5_3 | - | - |"
    for line, row in zip(table[3:7], expected):
        r = json.loads((out / "seed0" / row / "results.json").read_text())
        # one seed: mean = the run's number, std 0
        assert line.split(" | ")[1:] == [f"{r['top1_cls']:.2f} ± 0.00", f"{r['maxboxacc_v2']:.2f} ± 0.00 |"]
    assert (out / "location.md").read_text().count("\n| ") == 6
    csv_lines = (out / "location.csv").read_text().splitlines()
    assert csv_lines[0] == "row,label,icl_blocks,top1_cls_mean,top1_cls_std,maxboxacc_v2_mean,maxboxacc_v2_std"
    assert csv_lines[1] == 'blocks1,"conv_5_3",conv5_3,,,,'


def test_location_study_refuses_rows_and_icl_blocks(capsys):
    with pytest.raises(SystemExit):
        ablate.main(["--study", "location", "--rows", "cam"])
    assert "--study location runs its own rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.main(["--study", "location", "--icl-blocks", "pool3", "conv5_3"])
    assert "--icl-blocks is set by --study location" in capsys.readouterr().err
