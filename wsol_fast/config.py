"""Run configuration: one dataclass per concern, filled from the command line, then resolved.

Fields left at None are resolved from the dataset and the device: the paper's settings (docs/spec.md §1.4) for
real data, and a measured CPU profile for the built-in dataset, so that the default command finishes
in about ten minutes on a 2-core laptop CPU. The resolved config is written to the run folder.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, make_dataclass

from . import options

# Per-dataset schedule defaults (wsolevaluation's): epochs and lr step.
DATASET_SCHEDULES = {
    "CUB": {"epochs": 50, "lr_decay_every": 15},
    "ILSVRC": {"epochs": 10, "lr_decay_every": 3},
    "OpenImages": {"epochs": 10, "lr_decay_every": 3},
}

# The built-in dataset is trained from scratch on a CPU (no weights can be downloaded here); these were
# chosen by measurement on a 2-core CPU so generation + training + test evaluation fit in ten minutes.
BUILTIN_PROFILE = {
    # Measured on the 2-core Intel Xeon of 2026-11-30 (bf16 with AMX, channels_last): 0.71 s per step of 32
    # images at 64 x 64, so 6 epochs of the 3,000 training images (558 steps) plus generation, val every
    # epoch and test took 7 min 35 s, and 9 min 41 s (0.93 s per step) in a second run on a slower moment of the
    # same VM (test MaxBoxAccV2 35.7 vs the centre prior's 24.3 both times). The earlier 8-epoch
    # profile (3 ICL epochs) took about 17 minutes there, and its last two epochs lowered val localization;
    # 48 x 48 fell below the prior and 56 x 56 was not faster per step (docs/experiments.md).
    "epochs": 6,
    "resize_size": 73,
    "crop_size": 64,
    # The first 5 epochs train the plain classifier (ICL blocks off, CE only), the last one turns ICL's
    # blocks and losses on at a tenth of the lr: from scratch, the blocks' feature modulation kept the
    # classifier at chance (measured: CE 2.30 after 300 steps with the blocks on, 2.09 without; switching
    # them on at full lr after 4 epochs threw a learning classifier back to chance). The warm-up stands in
    # for the ImageNet pre-training the paper fine-tunes from, which cannot be downloaded here.
    "block_warmup_epochs": 5,
    # wsolevaluation's rule (decay at the start of each 1-based epoch that is a multiple): epochs 1-5 at lr,
    # 6 at 0.1 lr.
    "lr_decay_every": 6,
    "lr": 0.02,
    # From scratch every layer is new, and InceptionV3's head (two 3 x 3 convs of 1,024 channels, ReLU,
    # no normalisation) is what dies first: wsolevaluation's 10x lr for new layers made it diverge, and at
    # 1x (SGD 0.01) the live fraction of its first conv's units fell from 49% to 36% in 60 steps. At 0.1x
    # of lr 0.02, 44% were live after 300 steps (AdamW at 1e-3: 1% after 5 steps).
    "new_layer_lr_mult": 0.1,
}
# Where torch.compile measured faster per training step (benchmarks/test_bench_train_step.py, 2-core AMD
# EPYC, bf16 + channels_last): resnet50 11.2 vs 9.9 img/s; vgg16 lost (18.1 vs 21.6), inceptionv3 tied.
# Not measured on GPUs, so compile stays off there unless asked for.
COMPILE_FASTER = {("cpu", "resnet50")}

# --preset paper: every element of the method set to the paper's text (docs/method.md, "The paper's text and
# the default"). Flags given explicitly (or by --config FILE) still override it. The model options' paper
# values are the option table's (options.py: `paper`), so they meet the same definitions and validators.
PAPER_TABLE1 = {   # paper Table 1: drop_rate, gamma_fg, gamma_bg per backbone
    backbone: {name: values[backbone] for name, values in options.TABLE1.items()}
    for backbone in options.TABLE1["drop_rate"]}
PRESETS = {
    "paper": {
        # Eq. 5 literally: A = E_C[softmax(f^T g) z] (signed zbar, logit scale 1); Eq. 1-2's thresholds
        # gamma_fg * max A and gamma_bg * mean A on A itself.
        "model": options.paper_values(),
        # Eq. 4: the plain ||A_i - A_j||_2^2 per sample (a sum over positions, no normalisation), the
        # reference detached (always, losses.py); Eq. 3 with m = 1 and Eq. 6's unit weights.
        "optim": options.loss_paper_values(),
        # Section 4.1 on real data: SGD lr 1e-3, batch 32 (the built-in set keeps its from-scratch profile).
        "real_data": {"lr": 1e-3, "batch_size": 32},
    },
}
# What the default run uses instead of the paper's text (the ICL elements only; the option tables' defaults).
PROJECT_DEFAULT = {**{k: options.defaults("icl")[k] for k in PRESETS["paper"]["model"]},
                   **options.loss_defaults()}

PAPER_PROFILE = {"lr": 1e-3, "block_warmup_epochs": 0, "resize_size": 256, "crop_size": 224,
                 "new_layer_lr_mult": 10.0}


# ModelConfig fields that are model options (create_model overrides), in config.json's order: the option
# table's options that have a train flag (options.py).
MODEL_OPTION_FIELDS = options.CONFIG_OPTIONS


@dataclass
class DataConfig:
    dataset: str = "builtin"
    data_root: str | None = None
    metadata_root: str | None = None
    resize_size: int | None = None
    crop_size: int | None = None
    workers: int | None = None
    loader: str = "auto"
    skip_bad_images: bool = False
    builtin_seed: int = 0
    num_classes: int | None = None          # None: the train split's (max label + 1)
    max_image_pixels: int | None = None     # None: data.images.DEFAULT_MAX_IMAGE_PIXELS
    # Keep the last incomplete train batch. None: kept on real data (wsolevaluation's DataLoader, drop_last
    # False), dropped on the built-in profile (its measured numbers were made so); resolve() records which.
    partial_batches: bool | None = None
    mask_root: str | None = None      # masks at <mask_root>/<dataset>/<mask_path>; None: the data root


def _model_overrides(self) -> dict:
    keys = (*MODEL_OPTION_FIELDS, "icl_blocks")   # icl_blocks: create_model's own argument
    return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


# The model section: preset, backbone, method, pretrained, then one field per model option of the table
# (options.py), each None until resolve() writes the value used (the preset's, else the model's own default
# per backbone), so config.json says what ran; then icl_blocks (the attention blocks' insertion points, the
# last L_fc's reference; None: the backbone's default three, recorded by resolve()).
ModelConfig = make_dataclass("ModelConfig", [
    ("preset", "str | None", field(default=None)),   # "paper": the paper's text (PRESETS); None: the project's
    ("backbone", str, field(default="inceptionv3")),
    ("method", str, field(default="icl")),
    ("pretrained", "str | None", field(default=None)),
    *((name, f"{options.BY_NAME[name].kind.__name__} | None", field(default=None)) for name in MODEL_OPTION_FIELDS),
    ("icl_blocks", "list[str] | None", field(default=None)),
], namespace={"overrides": _model_overrides, "__doc__": "The model's settings (config.json's model section)."})
ModelConfig.__module__ = __name__   # pickle finds it here (make_dataclass's `module` is Python 3.12's)


@dataclass
class _OptimSchedule:
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    lr_decay_every: int | None = None
    lr_decay: float = 0.1
    block_warmup_epochs: int | None = None   # None: the profile's (0 on real data: the paper's)
    new_layer_lr_mult: float | None = None   # None: the profile's (10x on real data, docs/spec.md §1.4)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4


# The optim section: the schedule above, then one field per option of the objective's table (options.py:
# lambda_ca, lambda_fc, margin, fc_norm, fc_reduction), each None until resolve() writes the value used (the
# preset's, else the table's default).
OptimConfig = make_dataclass("OptimConfig", [
    (o.name, f"{o.kind.__name__} | None", field(default=None)) for o in options.LOSS_OPTIONS],
    bases=(_OptimSchedule,), namespace={"__doc__": "The optimiser's and the objective's settings (config.json's "
                                                   "optim section)."})
OptimConfig.__module__ = __name__


@dataclass
class RuntimeConfig:
    output: str | None = None
    seed: int = 0
    device: str | None = None
    amp: str = "auto"
    channels_last: bool | None = None
    compile: str | None = None   # None: measured default (COMPILE_FASTER); "off"; or a torch.compile mode
    sync_bn: bool = False
    resume: str | None = None
    init_from: str | None = None   # fork: a checkpoint's weights and epoch, this config's settings
    fork_weights_only: bool = False   # with init_from: weights only, fresh optimizer momentum
    eval_checkpoint: str = "last"    # test scores the last epoch (wsolevaluation's default) or "best" on val
    cam_curve_interval: float = 0.01
    num_overlays: int = 16
    max_steps_per_epoch: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = None   # also save last.pt every N steps of an epoch (elastic.py)
    save_scoremaps: str | None = None   # the final test's GT-class CAMs as <dir>/<image_id>.npy
    tensorboard: bool = True   # TensorBoard events in the run folder (rank 0)
    test: bool = True   # False (--no-test): stop after the last val, test unseen (python -m wsol_fast.tune's trials)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(DataConfig(**d["data"]), ModelConfig(**d["model"]), OptimConfig(**d["optim"]),
                   RuntimeConfig(**d["runtime"]))


def resolve(cfg: TrainConfig, device_type: str) -> TrainConfig:
    """Fill the None fields from the dataset and device. Returns the same object, resolved."""
    from .data.generated import is_generated   # on use: a plain `import wsol_fast.config` stays light
    builtin = is_generated(cfg.data.dataset)   # a generated set (builtin, builtin-parts, ...): the CPU profile
    profile = BUILTIN_PROFILE if builtin else PAPER_PROFILE
    schedule = BUILTIN_PROFILE if builtin else DATASET_SCHEDULES.get(cfg.data.dataset, {"epochs": 10,
                                                                                         "lr_decay_every": 3})
    d, o, r, m = cfg.data, cfg.optim, cfg.runtime, cfg.model
    if m.preset is not None:
        _apply_preset(cfg, builtin)
    if d.resize_size is None:
        d.resize_size = profile["resize_size"]
    if d.crop_size is None:
        d.crop_size = profile["crop_size"]
    if d.workers is None:
        d.workers = 2 if device_type == "cpu" else 8
    if o.epochs is None:
        o.epochs = schedule["epochs"]
    if o.lr_decay_every is None:
        o.lr_decay_every = schedule["lr_decay_every"]
    if o.block_warmup_epochs is None:
        o.block_warmup_epochs = profile["block_warmup_epochs"]
    if o.block_warmup_epochs < 0:
        raise ValueError(f"--block-warmup-epochs must be >= 0, got {o.block_warmup_epochs}")
    if o.lr is None:
        o.lr = profile["lr"]
    for name, value in options.loss_defaults().items():
        if getattr(o, name) is None:
            setattr(o, name, value)
        options.check(name, getattr(o, name), label=options.LOSS_BY_NAME[name].flag)
    if o.new_layer_lr_mult is None:
        o.new_layer_lr_mult = profile["new_layer_lr_mult"]
    if r.compile is None:
        r.compile = "default" if (device_type, m.backbone) in COMPILE_FASTER else "off"
    if r.channels_last is None:
        r.channels_last = True  # measured faster on CPU (docs/spec.md §6) and standard on GPUs with AMP
    if m.pretrained is None and not builtin:
        m.pretrained = "imagenet"  # the paper starts from ImageNet weights
    if d.resize_size < d.crop_size:
        raise ValueError(f"--resize-size ({d.resize_size}) must be >= --crop-size ({d.crop_size})")
    if d.partial_batches is None:   # the loader's own rule: kept on real data (wsolevaluation), dropped on built-in
        from .data.pipeline import partial_batches
        d.partial_batches = partial_batches(d)
    if m.icl_blocks is None:
        from .models import default_blocks
        m.icl_blocks = default_blocks(m.backbone)
    _resolve_model_options(m)
    return cfg


def _apply_preset(cfg: TrainConfig, builtin: bool) -> None:
    """Fill the fields a preset sets and the command left unset (None); the ICL options only for ICL."""
    if cfg.model.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {cfg.model.preset!r}")
    preset = PRESETS[cfg.model.preset]
    m, o = cfg.model, cfg.optim
    if m.method == "icl":
        for key, value in {**preset["model"], **PAPER_TABLE1.get(m.backbone, {})}.items():
            if getattr(m, key) is None:
                setattr(m, key, value)
    for key, value in preset["optim"].items():
        if getattr(o, key) is None:
            setattr(o, key, value)
    if not builtin:
        for key, value in preset["real_data"].items():
            if getattr(o, key) is None:
                setattr(o, key, value)


def _resolve_model_options(m: ModelConfig) -> None:
    """Write the model's own defaults (per backbone and method) into the options left unset, so that
    config.json records every value the model uses. Options of another method stay None."""
    # On use: a plain `import wsol_fast.config` stays light. model_defaults: the table's, with a registered
    # backbone's own values on top.
    from .models import model_defaults

    defaults = model_defaults(m.backbone, m.method)
    for key in MODEL_OPTION_FIELDS:
        if key in options.METHOD_OPTIONS[m.method] and getattr(m, key) is None:
            setattr(m, key, defaults[key])
    check_model_options(m)


def check_model_options(m: ModelConfig) -> None:
    """The ranges the options' meaning allows, checked by the option table's validators (options.py, the same
    as their flags'), so a config file's value meets the flag's range (ValueError naming the flag)."""
    for name in MODEL_OPTION_FIELDS:
        o = options.BY_NAME[name]
        options.check(name, getattr(m, name), label=o.name if o.kind is bool else o.flag)


def icl_form(cfg: TrainConfig) -> str:
    """One line naming the ICL form a resolved config trains: the paper's text (--preset paper), the project
    default, or the nearer of the two with the elements that differ from it."""
    m, o = cfg.model, cfg.optim
    values = {"attention_form": m.attention_form, "mask_norm": m.mask_norm, "attention_scale": m.attention_scale,
              "fc_norm": o.fc_norm, "fc_reduction": o.fc_reduction}
    paper = {**PRESETS["paper"]["model"], **{k: PRESETS["paper"]["optim"][k] for k in ("fc_norm", "fc_reduction")}}
    weights = ("margin", "lambda_ca", "lambda_fc")   # the same in the paper and the default
    paper_values = {**PAPER_TABLE1.get(m.backbone, {}), **{k: PRESETS["paper"]["optim"][k] for k in weights}}
    actual = {**{k: getattr(m, k) for k in options.TABLE1}, **{k: getattr(o, k) for k in weights}}
    off_paper = [f"{k} {v}" for k, v in values.items() if v != paper[k]] + \
                [f"{k} {actual[k]}" for k, v in paper_values.items() if actual[k] != v]
    off_default = [f"{k} {v}" for k, v in values.items() if v != PROJECT_DEFAULT[k]]
    if not off_paper:
        return "paper (--preset paper: Eq. 1-5 as written, Table 1's values)"
    if not off_default:
        return "project default (see README, 'The paper and the default')"
    if m.preset == "paper" or len(off_paper) < len(off_default):
        return f"paper except {', '.join(off_paper)} (see README, 'The paper and the default')"
    return f"project default except {', '.join(off_default)} (see README, 'The paper and the default')"
