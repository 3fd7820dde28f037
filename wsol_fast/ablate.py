"""python -m wsol_fast.ablate --backbone inceptionv3 --dataset builtin-parts --seeds 3

The paper's Table 2 in one command: CAM, ADL, ICL (full) and ICL without each of its parts, for one
backbone, over several seeds, as a table of mean +- std with each row's difference to the full method.

On a built-in dataset each seed trains one shared CAM warm-up (`--warmup-epochs`, the stand-in for the
ImageNet pre-training that cannot be downloaded here) and forks every row from it (`train --init-from
--fork-weights-only`: the warm-up's weights, fresh optimizer momentum, fresh block parameters), so the rows
differ only in what the method does in the last `--epochs - --warmup-epochs` epochs. On real data every row
starts from the pretrained weights (`--pretrained`, default imagenet) and trains the whole schedule.

`--study location` runs the paper's Table 3 instead (where the attention blocks sit, docs/location.md): the
last block fixed as L_fc's reference, earlier blocks added one by one from later to earlier (vgg16: conv_5_3,
+ pool_4, + pool_3, + pool_2, + pool_1), each row a full ICL run with `--icl-blocks`, printed as Table 3's
columns (location, top-1 classification, MaxBoxAccV2). The reference alone is '-' as in the paper (L_fc needs
two blocks) and is not trained.

Every run is a `python -m wsol_fast.train` run in its own folder, OUTPUT/seed<S>/<row>; the job is
resumable: a row with results.json is not rerun, an interrupted one is resumed from its last.pt. Test
numbers are of the last epoch's checkpoint (wsolevaluation's default) and the CAM threshold is chosen on
val; val MaxBoxAccV2 is reported beside them, for choosing options. Outputs: ablation.json, ablation.csv and
ablation.md (the table) in OUTPUT. Options the ablation does not know (e.g. --batch-size, --crop-size,
--amp) are passed to every train run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import flags, seed_table, train
from .data import generated
from .files import atomic_write

# Row name -> (label in the table, train flags). Table 2 of the paper, plus ICL exactly as the paper writes it
# (`--preset paper`: for measuring the project's default form against it on val).
ROWS = {
    "cam": ("CAM", ["--method", "cam"]),
    "adl": ("ADL", ["--method", "adl"]),
    "icl": ("ICL (full)", ["--method", "icl"]),
    "no_ca": ("w/o L_ca", ["--method", "icl", "--no-contrastive"]),
    "no_fc": ("w/o L_fc", ["--method", "icl", "--no-fc"]),
    "no_nonlocal": ("w/o non-local", ["--method", "icl", "--no-nonlocal"]),
    "no_dfg": ("w/o M_dfg", ["--method", "icl", "--no-dfg-mask"]),
    "icl_paper": ("ICL, --preset paper", ["--method", "icl", "--preset", "paper"]),
}
TABLE2 = ("cam", "adl", "icl", "no_ca", "no_fc", "no_nonlocal", "no_dfg")
# The generated box sets (data/generated.py): a shared CAM warm-up per seed; the table is of box metrics.
BUILTIN = generated.box_sets()


def parse_args(argv=None):
    # No abbreviations: a train flag passed through (e.g. --seed) must never be read as one of ours (--seeds).
    p = argparse.ArgumentParser(prog="python -m wsol_fast.ablate", description=__doc__.split("\n\n")[1],
                                formatter_class=flags.DefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--backbone", default="inceptionv3", choices=["vgg16", "inceptionv3", "resnet50"])
    p.add_argument("--dataset", default="builtin",
                   help=", ".join(BUILTIN) + ", or a real dataset (CUB, ILSVRC, OpenImages: give --data-root "
                        "and --metadata-root, passed to train)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--rows", nargs="+", default=list(TABLE2), choices=list(ROWS),
                   help="which rows (default: the paper's Table 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of each row in all, warm-up included (default: the dataset profile's)")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="built-in data: epochs of the shared CAM warm-up (default: the profile's block warm-up)")
    p.add_argument("--shared-warmup", action="store_true",
                   help="built-in data: one warm-up (seed 0) for all seeds, so the seeds vary only the forked "
                        "epochs (block init, data order; the drop draws follow the warm-up's saved RNG "
                        "state); cheaper, and says so in the table")
    p.add_argument("--row-steps-per-epoch", type=int, default=None,
                   help="cap each forked row's steps per epoch (the warm-up trains whole epochs)")
    p.add_argument("--only-seeds", type=int, nargs="+", default=None, metavar="S",
                   help="run only these seeds' jobs (e.g. one process per seed on a machine with the cores for "
                        "it); the table is written by the call that finds every seed's rows finished")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: write the table from the seeds whose rows are all finished (e.g. after "
                        "--only-seeds processes, some of them stopped)")
    p.add_argument("--output", default=None, help="default runs/ablate-<backbone>-<dataset> (--study location: "
                                                  "runs/ablate-location-<backbone>-<dataset>)")
    p.add_argument("--study", default="table2", choices=["table2", "location"],
                   help="table2: the rows of --rows (the paper's Table 2); location: where the blocks sit (the "
                        "paper's Table 3, cumulative from the reference block back; --rows does not apply)")
    a, passthrough = p.parse_known_args(argv)
    if a.seeds < 1:
        p.error(f"--seeds must be >= 1, got {a.seeds}")
    if a.study == "location":
        if any(x == "--rows" or x.startswith("--rows=") for x in (argv if argv is not None else sys.argv[1:])):
            p.error("--rows picks Table 2's rows; --study location runs its own rows (one per block count)")
        if any(x == "--icl-blocks" or x.startswith("--icl-blocks=") for x in passthrough):
            p.error("--icl-blocks is set by --study location for each row; remove it")
    for flag in ("--method", "--seed", "--output", "--init-from", "--resume", "--backbone", "--dataset"):
        if any(x == flag or x.startswith(flag + "=") for x in passthrough):
            p.error(f"{flag} is set by the ablation for each run; remove it")
    return a, passthrough


def _profile(a) -> tuple[int, int]:
    """(epochs, warm-up epochs) of the job, from the flags or the train profile of the dataset."""
    from .config import TrainConfig, resolve

    cfg = TrainConfig()
    cfg.data.dataset = a.dataset
    cfg.model.backbone = a.backbone
    resolve(cfg, "cpu")
    epochs = a.epochs if a.epochs is not None else cfg.optim.epochs
    warmup = 0 if a.dataset not in BUILTIN else (
        a.warmup_epochs if a.warmup_epochs is not None else cfg.optim.block_warmup_epochs)
    if a.dataset in BUILTIN and not 0 < warmup < epochs:
        raise SystemExit(f"error: need 0 < --warmup-epochs ({warmup}) < --epochs ({epochs})")
    return epochs, warmup


def _row_argv(flags: list[str], epochs: int, seed: int, folder: str, warmup_folder: str | None,
              row_steps: int | None) -> list[str]:
    """One row's train command: its flags, forked from the seed's CAM warm-up where there is one (built-in
    data: its weights only, the blocks on from the first forked epoch), optionally capped in steps."""
    argv = [*flags, "--epochs", str(epochs), "--seed", str(seed), "--output", folder]
    if warmup_folder is not None:
        argv += ["--init-from", os.path.join(warmup_folder, "last.pt"), "--fork-weights-only",
                 "--block-warmup-epochs", "0"]
    if row_steps:
        argv += ["--max-steps-per-epoch", str(row_steps)]
    return argv


def _run(argv: list[str], folder: str) -> None:
    """One train run in `folder`: skipped when finished, resumed when interrupted."""
    if os.path.isfile(os.path.join(folder, "results.json")):
        return
    last = os.path.join(folder, "last.pt")
    rc = train.main(["--resume", last] if os.path.isfile(last) else argv)
    if rc != 0:
        raise SystemExit(f"error: the run in {folder} failed (exit {rc}); rerun the same command to resume")


def main(argv=None) -> int:
    a, passthrough = parse_args(argv)
    if a.study == "location":
        return location_study(a, passthrough)
    out = a.output or os.path.join("runs", f"ablate-{a.backbone}-{a.dataset}")
    epochs, warmup = _profile(a)
    os.makedirs(out, exist_ok=True)
    common = ["--backbone", a.backbone, "--dataset", a.dataset, *passthrough]
    from tqdm.auto import tqdm

    builtin = a.dataset in BUILTIN
    jobs = []   # (description, folder, argv)
    for seed in range(a.seeds):
        if a.only_seeds is not None and seed not in a.only_seeds:
            continue
        base = os.path.join(out, f"seed{seed}")
        wfolder = os.path.join(out, "seed0" if a.shared_warmup else f"seed{seed}", "warmup")
        if builtin and (seed == 0 or not a.shared_warmup):
            jobs.append((f"seed {seed} CAM warm-up", wfolder,
                         [*common, "--method", "cam", "--epochs", str(warmup), "--seed", str(seed),
                          "--output", wfolder, "--num-overlays", "0"]))
        for row in a.rows:
            folder = os.path.join(base, row)
            jobs.append((f"seed {seed} {ROWS[row][0]}", folder,
                         _row_argv([*common, *ROWS[row][1]], epochs, seed, folder, wfolder if builtin else None,
                                   a.row_steps_per_epoch)))
    t0 = time.perf_counter()
    done = sum(os.path.isfile(os.path.join(f, "results.json")) for _, f, _ in jobs)
    with tqdm(total=len(jobs), initial=done, desc="ablation", unit="run", file=sys.stderr,
              dynamic_ncols=True, disable=a.table_only) as bar:
        for desc, folder, argv_run in ([] if a.table_only else jobs):
            if os.path.isfile(os.path.join(folder, "results.json")):
                continue
            bar.set_postfix_str(desc)
            print(f"\n== {desc}: python -m wsol_fast.train {' '.join(argv_run)}", file=sys.stderr)
            _run(argv_run, folder)
            bar.update(1)
    missing = [(s, row) for s in range(a.seeds) for row in a.rows
               if not os.path.isfile(os.path.join(out, f"seed{s}", row, "results.json"))]
    seeds = sorted(set(range(a.seeds)) - {s for s, _ in missing})   # the seeds with every row finished
    if missing and not (a.table_only and seeds):
        shown = ", ".join(f"seed{s}/{row}" for s, row in missing[:4])
        print(f"\n{len(missing)} row run(s) not finished yet ({shown}...): the table is written when every seed's "
              "rows are done")
        return 0
    per_seed = {row: [seed_table.row_numbers(os.path.join(out, f"seed{s}", row)) for s in seeds] for row in a.rows}
    table = seed_table.summarise(per_seed, a.rows)
    text = seed_table.render_table(table, a.rows, len(seeds), {r: ROWS[r][0] for r in a.rows})
    notes = ([f"Only seeds {seeds} of 0..{a.seeds - 1} had finished every row (--table-only)."]
             if len(seeds) < a.seeds else [])
    if a.shared_warmup:
        notes.append("One shared CAM warm-up (seed 0): the spread covers the forked epochs only.")
    if notes:   # a paragraph of its own: the text may end in a table (builtin-parts' coverage table)
        text = text.rstrip("\n") + "\n\n" + " ".join(notes)
    meta = {"backbone": a.backbone, "dataset": a.dataset, "seeds": seeds, "epochs": epochs,
            "warmup_epochs": warmup, "rows": a.rows, "train_args": passthrough,
            "shared_warmup": a.shared_warmup, "row_steps_per_epoch": a.row_steps_per_epoch,
            "wall_seconds_this_call": time.perf_counter() - t0}
    _write(os.path.join(out, "ablation.json"), json.dumps({"meta": meta, "table": table, "per_seed": per_seed},
                                                          indent=2))
    fields = ["row", "label", *(f"{k}_{s}" for k, _ in seed_table.METRICS for s in ("mean", "std")), "diff_v2_to_icl",
              "diff_v2_to_icl_std"]
    lines = [",".join(fields)]
    for row in a.rows:
        vals = [f"{table[row][k][s]:.4f}" for k, _ in seed_table.METRICS for s in ("mean", "std")]
        cell = table[row]["maxboxacc_v2"]
        diffs = [f"{cell[k]:.4f}" if k in cell else "" for k in ("diff_to_icl", "diff_to_icl_std")]
        lines.append(",".join([row, f'"{ROWS[row][0]}"', *vals, *diffs]))
    _write(os.path.join(out, "ablation.csv"), "\n".join(lines) + "\n")
    _write(os.path.join(out, "ablation.md"), f"{a.backbone} on {a.dataset}\n\n{text}\n")
    print(f"\n{a.backbone} on {a.dataset}\n\n{text}\n\nwritten: {out}/ablation.json, ablation.csv, ablation.md")
    return 0


# ---------------------------------------------------------------------------------------- Table 3

def location_rows(backbone: str) -> dict:
    """The cumulative study of where the blocks sit: {row: (label, points)} from the reference block alone to
    all the study's points, in that order. vgg16 follows the paper's Table 3 (its ADL-VGG16 names mapped to
    this project's points, models/vgg.py); the other backbones, which Table 3 does not cover, take their
    default three from later to earlier, then the ends of the two stages before (docs/location.md)."""
    from .models import vgg

    if backbone == "vgg16":
        study = [(f"{label} ({point})" if label.replace("_", "") != point.replace("_", "") else label, point)
                 for label, point in vgg.TABLE3_POINTS]
    else:
        study = [(point, point) for point in LOCATION_POINTS[backbone]]
    rows = {}
    for n in range(1, len(study) + 1):
        label = study[n - 1][0] if n == 1 else f"+ {study[n - 1][0]}"
        rows[f"blocks{n}"] = (label, [point for _, point in study[:n]][::-1])
    return rows


# Table 3's study on the backbones it does not cover: the reference (the default last block), the default's
# earlier blocks, then the end of the stage before each (the study adds them from later to earlier).
LOCATION_POINTS = {"resnet50": ("layer4.2", "layer4.0", "layer3.0", "layer2.3", "layer1.2"),
                   "inceptionv3": ("SPG_A3_2b", "Mixed_6e", "Mixed_5d", "Mixed_5c", "Mixed_5b")}
LOCATION_METRICS = (("top1_cls", "Top-1 classification"), ("maxboxacc_v2", "MaxBoxAccV2"))


def render_location_table(table: dict, rows: dict, seeds: int) -> str:
    """Table 3's columns: location, top-1 classification, MaxBoxAccV2 (mean ± std over seeds); the reference
    alone is '-', as in the paper (L_fc needs two blocks)."""
    lines = ["| Location | " + " | ".join(label for _, label in LOCATION_METRICS) + " |",
             "|" + "---|" * (len(LOCATION_METRICS) + 1)]
    for row, (label, _) in rows.items():
        cells = ["-" if row not in table else f"{table[row][k]['mean']:.2f} ± {table[row][k]['std']:.2f}"
                 for k, _ in LOCATION_METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nmean ± std over {seeds} seed(s); test split (last epoch, CAM threshold chosen on val). Each row "
                 "adds one block in front of the previous row's, L_fc's reference staying the last; the first row "
                 "(the reference alone) is left empty as in the paper: L_fc needs two blocks.")
    return "\n".join(lines)


def location_study(a, passthrough: list[str]) -> int:
    """--study location: one ICL run per row of location_rows (the first, one block, is not trained), each
    forked from the seed's CAM warm-up on built-in data like the Table 2 rows; writes location.json,
    location.csv and location.md in OUTPUT and prints the table."""
    rows = location_rows(a.backbone)
    trained = [row for row, (_, points) in rows.items() if len(points) >= 2]
    out = a.output or os.path.join("runs", f"ablate-location-{a.backbone}-{a.dataset}")
    epochs, warmup = _profile(a)
    os.makedirs(out, exist_ok=True)
    common = ["--backbone", a.backbone, "--dataset", a.dataset, *passthrough]
    builtin = a.dataset in BUILTIN
    jobs = []
    for seed in range(a.seeds):
        if a.only_seeds is not None and seed not in a.only_seeds:
            continue
        wfolder = os.path.join(out, "seed0" if a.shared_warmup else f"seed{seed}", "warmup")
        if builtin and (seed == 0 or not a.shared_warmup):
            jobs.append((f"seed {seed} CAM warm-up", wfolder,
                         [*common, "--method", "cam", "--epochs", str(warmup), "--seed", str(seed),
                          "--output", wfolder, "--num-overlays", "0"]))
        for row in trained:
            folder = os.path.join(out, f"seed{seed}", row)
            jobs.append((f"seed {seed} {rows[row][0]}", folder,
                         _row_argv([*common, "--method", "icl", "--icl-blocks", *rows[row][1]], epochs, seed,
                                   folder, wfolder if builtin else None, a.row_steps_per_epoch)))
    t0 = time.perf_counter()
    for desc, folder, argv_run in ([] if a.table_only else jobs):
        if os.path.isfile(os.path.join(folder, "results.json")):
            continue
        print(f"\n== {desc}: python -m wsol_fast.train {' '.join(argv_run)}", file=sys.stderr)
        _run(argv_run, folder)
    seeds = [s for s in range(a.seeds)
             if all(os.path.isfile(os.path.join(out, f"seed{s}", row, "results.json")) for row in trained)]
    if len(seeds) < a.seeds and not (a.table_only and seeds):
        print(f"\n{a.seeds - len(seeds)} seed(s) have unfinished rows: the table is written when every seed's rows "
              "are done")
        return 0
    per_seed = {row: [seed_table.row_numbers(os.path.join(out, f"seed{s}", row)) for s in seeds] for row in trained}
    table = seed_table.summarise(per_seed, trained)
    text = render_location_table(table, rows, len(seeds))
    if len(seeds) < a.seeds:
        text += f" Only seeds {seeds} of 0..{a.seeds - 1} had finished every row (--table-only)."
    meta = {"study": "location", "backbone": a.backbone, "dataset": a.dataset, "seeds": seeds, "epochs": epochs,
            "warmup_epochs": warmup, "rows": {row: {"label": label, "icl_blocks": points}
                                              for row, (label, points) in rows.items()},
            "train_args": passthrough, "shared_warmup": a.shared_warmup,
            "row_steps_per_epoch": a.row_steps_per_epoch, "wall_seconds_this_call": time.perf_counter() - t0}
    _write(os.path.join(out, "location.json"), json.dumps({"meta": meta, "table": table, "per_seed": per_seed},
                                                           indent=2))
    lines = ["row,label,icl_blocks," + ",".join(f"{k}_{s}" for k, _ in LOCATION_METRICS for s in ("mean", "std"))]
    for row, (label, points) in rows.items():
        vals = [f"{table[row][k][s]:.4f}" if row in table else "" for k, _ in LOCATION_METRICS
                for s in ("mean", "std")]
        lines.append(",".join([row, f'"{label}"', " ".join(points), *vals]))
    _write(os.path.join(out, "location.csv"), "\n".join(lines) + "\n")
    _write(os.path.join(out, "location.md"), f"{a.backbone} on {a.dataset}: where the blocks sit\n\n{text}\n")
    print(f"\n{a.backbone} on {a.dataset}: where the blocks sit\n\n{text}\n\n"
          f"written: {out}/location.json, location.csv, location.md")
    return 0


def _write(path: str, text: str) -> None:
    atomic_write(text, path)


if __name__ == "__main__":
    sys.exit(main())
