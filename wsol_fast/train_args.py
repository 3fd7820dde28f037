"""The train command's flags: argparse over the config dataclasses (each flag's dest is its field's name),
--config FILE's values as defaults, and the settings of a --resume (the run's own, with the few flags a
resume may change)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields

from . import elastic, errors, flags, options
from .config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig
from .config_file import ConfigFileError, apply_to_parser, output_in_use
from .data import generated
from .models import check_icl_blocks, default_blocks, insertion_points, list_models

# The smallest --crop-size per backbone: the smallest crop whose class activation map is still 2 x 2
# (measured with create_model(..., method="icl") in train and eval mode; smaller crops either fail in the
# network or leave a 1 x 1 map, which localises nothing). tests/test_reliability.py re-measures it.
MIN_CROP = {"inceptionv3": 15, "resnet50": 9, "vgg16": 32}
# Settings a --resume may change: they do not alter what the run computes (or, for --epochs, extend it).
RESUME_MAY_CHANGE = {"epochs", "output", "device", "workers", "loader", "data_root", "metadata_root",
                     "num_overlays", "skip_bad_images", "compile", "max_image_pixels", "test",
                     "checkpoint_every"}


def check_crop(parser: argparse.ArgumentParser, backbone: str, crop: int | None, resize: int | None) -> None:
    low = MIN_CROP.get(backbone, 1)
    if crop is not None and crop < low:
        parser.error(f"argument --crop-size: {backbone} needs at least {low} (its class map is 2 x 2 "
                     f"there), got {crop}")
    if resize is not None and resize < 1:
        parser.error(f"argument --resize-size: must be >= 1, got {resize}")


def given_dests(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The `dest`s of the options written on the command line (not left at their defaults)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    options = {o: act.dest for act in parser._actions for o in act.option_strings}
    given = set()
    for word in words:
        if word in options:
            given.add(options[word])
        else:   # argparse accepts a unique prefix (--epoch for --epochs)
            dests = {d for o, d in options.items() if o.startswith(word)}
            given |= dests if len(dests) == 1 else set()
    return given


def resume_conflicts(cli: dict, saved: dict, given: set[str]) -> list[str]:
    """`--flag: run X, now Y` for every given flag whose value differs from the resumed run's and that
    may not change (RESUME_MAY_CHANGE). cli / saved: TrainConfig.to_dict()s."""
    out = []
    for section, fields in cli.items():
        for key, value in fields.items():
            if key not in given or key in RESUME_MAY_CHANGE or key in ("resume", "init_from"):
                continue
            old = saved.get(section, {}).get(key)
            if value != old:
                out.append(f"--{key.replace('_', '-')}: run {old!r}, now {value!r}")
    return out


DESCRIPTION = ("Trains a WSOL model (ICL, ADL or plain CAM) on wsolevaluation-format data, or on the built-in dataset\n"
               "when no data flags are given, evaluates every epoch on val, and ends with the test evaluation, a\n"
               "results table, results.json and CAM overlays. Works under `torchrun --nproc_per_node=N`.")


def parse_args(argv=None) -> TrainConfig:
    """The command line (over --config FILE's values) as a TrainConfig; cfg.cli says how it was given."""
    p = argparse.ArgumentParser(prog="python -m wsol_fast.train", description=DESCRIPTION,
                                formatter_class=flags.DefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="inceptionv3", choices=list_models())
    m.add_argument("--method", default="icl", choices=["icl", "adl", "cam"])
    m.add_argument("--pretrained", default=None,
                   help="PATH to a torchvision ImageNet state dict, 'imagenet' (torchvision's hub cache) or "
                        "'none'. Default: imagenet on real data, none on the built-in dataset")
    m.add_argument("--preset", default=None, choices=["paper"],
                   help="paper: every element of ICL as the paper writes it (the literal Eq. 5 map, thresholds "
                        "on the raw map, L_fc the plain sum of Eq. 4, Table 1's values; lr 1e-3 on real data); "
                        "flags given explicitly still override it. Default: the project's measured choices "
                        "(README, 'The paper and the default')")
    options.add_flags(m)   # --drop-rate .. --attention-scale: the option table's (options.py), defined once there
    m.add_argument("--icl-blocks", nargs="+", default=None, metavar="POINT",
                   help="where the attention blocks (ICL's or ADL's) sit: insertion points of the backbone, the "
                        "last one L_fc's reference (a single point needs --no-fc). vgg16: "
                        + ", ".join(insertion_points("vgg16")) + "; inceptionv3: Mixed_5b .. Mixed_6e, "
                        "SPG_A3_1b, SPG_A3_2b; resnet50: layer1.0 .. layer4.2 (after each bottleneck). Default: "
                        "the paper's three (vgg16 " + " ".join(default_blocks("vgg16")) + ", inceptionv3 "
                        + " ".join(default_blocks("inceptionv3")) + ", resnet50 "
                        + " ".join(default_blocks("resnet50")) + ")")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None,
                   help="dataset name under the metadata root (CUB, ILSVRC, OpenImages), or a generated one: "
                        + generated.help_text() + "; default: builtin")
    d.add_argument("--data-root", default=None, help="images at DATA_ROOT/DATASET/<image_id>")
    d.add_argument("--metadata-root", default=None, help="metadata at METADATA_ROOT/DATASET/<split>/")
    d.add_argument("--resize-size", type=flags.positive_int, default=None,
                   help="train resize (default 256; built-in profile 73)")
    d.add_argument("--crop-size", type=flags.positive_int, default=None,
                   help="train crop / eval size (default 224; built-in profile 64); at least "
                        + ", ".join(f"{v} for {k}" for k, v in MIN_CROP.items()))
    d.add_argument("--workers", type=flags.nonneg_int, default=None)
    d.add_argument("--loader", default="auto", choices=["auto", "dali", "opencv"])
    d.add_argument("--skip-bad-images", action="store_true",
                   help="skip and count corrupt/missing images (listed in RUN/skipped_images.txt)")
    d.add_argument("--num-classes", type=flags.positive_int, default=None,
                   help="class count (default: the train split's, max label + 1, every label present)")
    d.add_argument("--max-image-pixels", type=flags.positive_int, default=None,
                   help="refuse images whose header claims more pixels (default 64,000,000)")
    d.add_argument("--builtin-seed", type=int, default=0)
    d.add_argument("--mask-root", default=None,
                   help="masks at MASK_ROOT/DATASET/<mask_path> (OpenImages, PxAP); default: the data root")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=flags.positive_int, default=None,
                   help="total epochs; on --resume, a larger value extends the run")
    o.add_argument("--batch-size", type=flags.positive_int, default=32)
    o.add_argument("--allow-partial-batches", dest="partial_batches", action="store_const", const=True,
                   default=None,
                   help="train on the last incomplete batch too (needed when the train split is smaller "
                        "than --batch-size). Default: kept on real data (wsolevaluation's), dropped on the "
                        "built-in profile")
    o.add_argument("--drop-partial-batches", dest="partial_batches", action="store_const", const=False,
                   help="drop the last incomplete train batch (the built-in profile's default)")
    o.add_argument("--lr", type=flags.nonneg_float, default=None,
                   help="default 1e-3 (paper); 0.02 on the built-in from-scratch profile (0 freezes the weights: "
                        "every SGD update, weight decay included, is scaled by it)")
    o.add_argument("--lr-decay-every", type=flags.positive_int, default=None)
    o.add_argument("--block-warmup-epochs", type=flags.nonneg_int, default=None,
                   help="epochs trained with the attention blocks (ICL / ADL) off, i.e. identities, and the "
                        "classification loss alone, before the method's blocks and losses come on (default 0 "
                        "on real data, the paper's; the built-in from-scratch profile's otherwise)")
    o.add_argument("--new-layer-lr-mult", type=flags.nonneg_float, default=None,
                   help="lr multiplier of new layers (default 10 on real data, 0.1 on the built-in profile)")
    o.add_argument("--weight-decay", type=flags.nonneg_float, default=1e-4)
    options.add_flags(o, options.LOSS_OPTIONS)   # --lambda-ca, --lambda-fc, --margin, --fc-norm, --fc-reduction
    r = p.add_argument_group("run")
    r.add_argument("--output", default=None, help="run folder (default runs/<backbone>-<method>-<time>); one "
                                                   "run at a time (RUN/.lock)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the finished or interrupted run in --output (default: refuse)")
    r.add_argument("--resume", default=None, help="RUN/last.pt to continue from, with that run's settings")
    r.add_argument("--init-from", default=None, metavar="CKPT",
                   help="fork a run: start from CKPT's weights, optimizer state and epoch (an epoch-end "
                        "RUN/best.pt or RUN/last.pt) with this command's settings, e.g. an ablation of the "
                        "last epochs or a new schedule; --epochs counts from 0, so it must exceed "
                        "CKPT's epoch. The lr is this command's schedule at that epoch")
    r.add_argument("--fork-weights-only", action="store_true",
                   help="with --init-from: take only the checkpoint's weights (fresh optimizer momentum); "
                        "implied when the checkpoint's method differs (e.g. ICL, ADL and CAM rows forked from one "
                        "CAM warm-up, as `python -m wsol_fast.ablate` does)")
    r.add_argument("--eval-checkpoint", default="last", choices=["last", "best"],
                   help="which checkpoint the final test scores: the last epoch's (wsolevaluation's default) or "
                        "the best by val MaxBoxAccV2")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    r.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    r.add_argument("--compile", nargs="?", const="default", default=None,
                   help="torch.compile the model (optionally a mode: default, reduce-overhead, max-autotune). "
                        "Default: on where the training-step benchmark measured it faster (resnet50 on CPU)")
    r.add_argument("--no-compile", dest="compile", action="store_const", const="off")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    r.add_argument("--cam-curve-interval", type=flags.open_interval, default=0.01,
                   help="in (0, 1); 0.001 for the paper protocol")
    r.add_argument("--num-overlays", type=flags.nonneg_int, default=16)
    r.add_argument("--max-steps-per-epoch", type=flags.positive_int, default=None,
                   help="cap steps per epoch (smoke runs)")
    r.add_argument("--checkpoint-every", type=flags.positive_int, default=None, metavar="STEPS",
                   help="also write RUN/last.pt every STEPS steps of an epoch (rank 0, atomically), so that a "
                        "torchrun --max-restarts restart or a kill loses at most STEPS steps (docs/distributed.md)")
    r.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    r.add_argument("--save-scoremaps", default=None, metavar="DIR",
                   help="write the final test's GT-class CAMs as DIR/<image_id>.npy (224 x 224 float64, min-max "
                        "normalised: wsolevaluation's layout, for `evaluate --scoremap-root` or its evaluate_wsol)")
    r.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="no TensorBoard events in the run folder (without this flag: tensorboard=%(default)s)")
    r.add_argument("--no-test", dest="test", action="store_false",
                   help="end after the last epoch's val pass: no test evaluation, no results.json (a tuning "
                        "trial); `--resume RUN/last.pt --test` scores the finished run on test later")
    r.add_argument("--test", dest="test", action="store_true", default=argparse.SUPPRESS,
                   help="score test at the end (the default; with --resume, a --no-test run)")
    r.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a JSON or YAML file (a run's config.json reruns it); flags given on "
                        "the command line override them")
    # --config: the file's values become the defaults, then the command line is parsed again over them.
    config_file, without_flag = p.parse_known_args(argv)[0].config, {}
    if config_file:
        try:
            without_flag = apply_to_parser(p, config_file)
        except ConfigFileError as exc:
            p.error(str(exc))
    a = p.parse_args(argv)
    check_crop(p, a.backbone, a.crop_size, a.resize_size)
    if config_file and a.icl_blocks is not None and a.backbone != p.get_default("backbone") \
            and "icl_blocks" not in given_dests(p, argv) \
            and list(a.icl_blocks) == default_blocks(p.get_default("backbone")):
        a.icl_blocks = None   # the file's backbone's default points: the new --backbone's default ones instead
    if a.icl_blocks is not None:   # checked and put in network order (config.json records that order)
        try:
            a.icl_blocks = check_icl_blocks(a.backbone, a.icl_blocks, a.method, a.use_fc)
        except ValueError as exc:
            p.error(str(exc) + (f" (the points of --config {config_file}; give --icl-blocks)"
                                if config_file and "icl_blocks" not in given_dests(p, argv) else ""))
    if config_file and a.output == p.get_default("output") and output_in_use(a.output):
        p.error(f"--config {config_file}: its output folder {a.output} already holds a run; give --output")
    if a.resume and a.init_from:
        p.error("--resume continues a run with its own settings, --init-from forks it with new ones: "
                "give one of them")

    a.dataset = a.dataset or ("builtin" if a.data_root is None and a.metadata_root is None else "CUB")
    if not generated.is_generated(a.dataset) and (a.data_root is None or a.metadata_root is None):
        p.error(f"--dataset {a.dataset} needs both --data-root and --metadata-root")
    # Every flag's dest is its config field's name (config_file relies on it too); fields without a flag
    # keep their dataclass default, or the value --config FILE gives them.
    cfg = TrainConfig(*(cls(**{f.name: getattr(a, f.name) for f in fields(cls) if hasattr(a, f.name)})
                        for cls in (DataConfig, ModelConfig, OptimConfig, RuntimeConfig)))
    for (section, name), value in without_flag.items():   # e.g. optim.momentum: no flag, only the file
        setattr(getattr(cfg, section), name, value)
    # How the command was given (not part of the run's settings): flags written, --overwrite, --debug.
    cfg.cli = {"given": given_dests(p, argv), "overwrite": a.overwrite, "debug": a.debug}
    return cfg


def run_dir(cfg: TrainConfig) -> str:
    if cfg.runtime.output:
        return cfg.runtime.output
    stamp = elastic.run_name() or time.strftime("%Y%m%d-%H%M%S")   # torchrun: one name for every rank, attempt
    return os.path.join("runs", f"{cfg.model.backbone}-{cfg.model.method}-{cfg.data.dataset}-{stamp}")


def resumed_config(cfg: TrainConfig, state: dict) -> TrainConfig:
    """The run's own settings, with the flags that may change on a resume (RESUME_MAY_CHANGE, e.g.
    --epochs to extend it) taken from this command; any other flag that differs is an error listing them."""
    given = cfg.cli["given"]
    conflicts = resume_conflicts(cfg.to_dict(), state["config"], given)
    if conflicts:
        raise errors.UserError(
            f"--resume {cfg.runtime.resume}: these settings differ from the run's and cannot change on a "
            f"resume: {'; '.join(conflicts)}. Drop them to continue the run as it was, or fork it with "
            "--init-from to train on with new settings")
    saved = TrainConfig.from_dict(state["config"])
    for section in ("data", "model", "optim", "runtime"):
        mine, theirs = getattr(cfg, section), getattr(saved, section)
        for key in given & RESUME_MAY_CHANGE:
            if hasattr(theirs, key):
                setattr(theirs, key, getattr(mine, key))
    if saved.optim.epochs < state["epoch"] + (state["step"] > 0):
        raise errors.UserError(f"--epochs {saved.optim.epochs}: the run in {cfg.runtime.resume} has already "
                                f"trained {state['epoch']} epoch(s){' and part of the next' if state['step'] else ''}")
    saved.runtime.resume = cfg.runtime.resume
    saved.runtime.output = cfg.runtime.output or os.path.dirname(os.path.abspath(cfg.runtime.resume))
    saved.cli = cfg.cli
    return saved
