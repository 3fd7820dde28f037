"""Every ICL / ADL option, defined once: its name, the methods that use it, its default (per method,
and per backbone where the paper gives one value per backbone), its range (a flags.py validator or a list
of choices), its train flag and help, and the paper's value (`--preset paper`). Two tables: `OPTIONS`, the
model's (create_model's options, config.json's model section), and `LOSS_OPTIONS`, the objective's
(WSOLLoss's options, config.json's optim section).

Everything else is derived from them: the model registry's defaults and the options each method accepts
(models/base.py), the blocks' and the loss's constructor defaults (models/icl.py, models/adl.py,
losses.py), the config dataclasses' fields and config.json (config.py), the paper preset, and the train
flags (train_args.py). Change a default here and it changes everywhere. Light on purpose: no torch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from . import flags

# The paper's Table 1, one value per backbone. ICL's defaults and --preset paper alike.
TABLE1 = {
    "drop_rate": {"vgg16": 0.33, "inceptionv3": 0.69, "resnet50": 0.85},
    "gamma_fg": {"vgg16": 0.72, "inceptionv3": 0.86, "resnet50": 0.95},
    "gamma_bg": {"vgg16": 1.2, "inceptionv3": 1.2, "resnet50": 1.2},
}


@dataclass(frozen=True)
class Option:
    name: str
    # method -> default; a dict value is per backbone (a backbone without an entry brings its own, through
    # register_model's method_defaults). A method not named here does not use the option.
    default: dict
    help: str = ""
    check: Callable | None = None      # a flags.py validator (argparse type): the flag's and config's range
    choices: tuple | None = None
    kind: type = float                 # the value's type in config.json (bool options are on/off switches)
    flag: str | None = None            # the train flag; None: create_model only
    paper: object = None               # --preset paper's value (a dict: per backbone); None: not part of it
    to_block: bool = True              # passed to the method's block constructor (use_fc is the model's own)
    # Methods that accept the option without using it (no warning): impl, which a trainer passes to any.
    accepted_by: tuple = ()
    section: str = "model"             # config.json's section: "model" (OPTIONS) or "optim" (LOSS_OPTIONS)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.default)

    @property
    def in_config(self) -> bool:
        """A ModelConfig field (config.json, --config): every option with a train flag."""
        return self.flag is not None


_FORM_HELP = ("ICL's attention map: the paper's literal signed form, a ReLU value, or the channel mean plus the "
              "non-local term (docs/method.md)")
OPTIONS: tuple[Option, ...] = (
    Option("impl", {"icl": None}, "the ops' implementation (None: the fastest for the device)", kind=str,
           accepted_by=("cam", "adl")),
    Option("drop_rate", {"adl": 0.75, "icl": TABLE1["drop_rate"]},
           "probability of the dropped-foreground mask, in [0, 1] (ADL: its drop mask)", flags.unit_interval,
           flag="--drop-rate", paper=TABLE1["drop_rate"]),
    Option("gamma_fg", {"icl": TABLE1["gamma_fg"]}, "theta_fg = gamma_fg * max A, in (0, 1]",
           flags.fraction_of_max, flag="--gamma-fg", paper=TABLE1["gamma_fg"]),
    Option("gamma_bg", {"icl": TABLE1["gamma_bg"]}, "theta_bg = gamma_bg * mean A, > 0", flags.positive_float,
           flag="--gamma-bg", paper=TABLE1["gamma_bg"]),
    Option("use_contrastive", {"icl": True}, "ablation: no contrastive attention loss", kind=bool,
           flag="--no-contrastive"),
    Option("use_fc", {"icl": True}, "ablation: no foreground consistency loss", kind=bool, flag="--no-fc",
           to_block=False),
    Option("nonlocal_attention", {"icl": True}, "ablation: channel-mean attention instead of the non-local block",
           kind=bool, flag="--no-nonlocal"),
    Option("use_dfg_mask", {"icl": True}, "ablation: ADL's drop mask instead of the dropped-foreground mask",
           kind=bool, flag="--no-dfg-mask"),
    # The map the masks see (models/icl.py, docs/method.md). The paper's literal form ("paper", s = 1, raw
    # thresholds) is signed, and collapses to a constant map on VGG16: measured at init on images with one
    # clear object, its masks were empty or full on 5 of the 9 blocks of the three backbones. "residual" +
    # thresholds on the min-max normalised map gave every block an M_fg of 31-40% covering 85-100% of the
    # object; s = 1/sqrt(C') keeps the logits of post-ReLU features from saturating the softmax. The
    # ablation (README) measures the choice on val.
    Option("attention_form", {"icl": "residual"}, _FORM_HELP, choices=("paper", "relu", "residual"), kind=str,
           flag="--attention-form", paper="paper"),
    Option("mask_norm", {"icl": "minmax"}, "thresholds of Eq. 1-2 on the raw map (none: the paper's) or the "
           "per-sample min-max normalised map", choices=("none", "minmax"), kind=str, flag="--mask-norm",
           paper="none"),
    Option("attention_scale", {"icl": "inv_sqrt"}, "logit scale s of softmax(f g^T s): a positive number or "
           "inv_sqrt (1/sqrt(C'))", flags.attention_scale, kind=str, flag="--attention-scale",
           paper="1"),
    # ADL (Choe & Shim, CVPR 2019): drop threshold 0.9 of the per-sample max. ICL uses it only with
    # use_dfg_mask=False (ADL's drop mask [A < t * max]); None means t = gamma_fg, so that ablation differs
    # from full ICL only by not dropping the background.
    Option("drop_threshold", {"adl": 0.9, "icl": None}, "ADL's erasing threshold t: its drop mask removes where "
           "A > t * max A, t in [0, 1] (ICL: only with --no-dfg-mask; unset there, t = gamma_fg)", flags.unit_interval,
           flag="--drop-threshold"),
    Option("per_sample_drop", {"adl": False, "icl": False}, "draw the drop mask per sample (else per batch)",
           kind=bool),
    Option("inner_channels_ratio", {"icl": 0.5}, "C' / C of the non-local block's f and g", flags.positive_float),
    Option("embed_dim", {"icl": 128}, "the contrastive embeddings' dimension", flags.positive_int, kind=int),
)
# The objective's options (losses.WSOLLoss; config.json's optim section, recorded by every run, used by ICL's
# loss: CAM's and ADL's are the cross-entropy alone).
LOSS_OPTIONS: tuple[Option, ...] = (
    Option("lambda_ca", {"icl": 1.0}, "weight of L_ca in L = L_cls + lambda_ca L_ca + lambda_fc L_fc (Eq. 6)",
           flags.nonneg_float, flag="--lambda-ca", paper=1.0, section="optim"),
    Option("lambda_fc", {"icl": 1.0}, "weight of L_fc (Eq. 6)", flags.nonneg_float, flag="--lambda-fc", paper=1.0,
           section="optim"),
    Option("margin", {"icl": 1.0}, "L_ca's margin m (Eq. 3)", flags.nonneg_float, flag="--margin", paper=1.0,
           section="optim"),
    # "max" (each signed map divided by its max) diverged from scratch: with fresh ICL blocks that max is often
    # ~0, the first step's L_fc was ~190 and the loss reached 4e12 within 6 steps at lr 0.02 (and diverged at
    # 0.002 too); "minmax", the masks' own normalisation, trained stably. It is the default everywhere.
    Option("fc_norm", {"icl": "minmax"}, "L_fc's map normalisation: per-sample min-max, max, or none (Eq. 4 as "
           "written)", choices=("max", "minmax", "none"), kind=str, flag="--fc-norm", paper="none",
           section="optim"),
    Option("fc_reduction", {"icl": "mean"}, "L_fc over positions: mean, or sum (Eq. 4's ||A_i - A_j||^2)",
           choices=("mean", "sum"), kind=str, flag="--fc-reduction", paper="sum", section="optim"),
)
BY_NAME = {o.name: o for o in OPTIONS}
LOSS_BY_NAME = {o.name: o for o in LOSS_OPTIONS}
METHODS = ("cam", "adl", "icl")
# Options each method accepts (create_model overrides); options of another method are warned about.
METHOD_OPTIONS = {m: tuple(o.name for o in OPTIONS if m in o.methods or m in o.accepted_by) for m in METHODS}
ALL_OPTIONS = tuple(sorted(BY_NAME))
# The options a method's block constructor takes (models/base.py build_attention_blocks).
BLOCK_OPTIONS = {m: tuple(o.name for o in OPTIONS if m in o.methods and o.to_block) for m in METHODS}
# The ModelConfig fields that are model options, in config.json's order.
CONFIG_OPTIONS = tuple(o.name for o in OPTIONS if o.in_config)


def defaults(method: str, backbone: str | None = None) -> dict:
    """{option: default} of `method`'s options on `backbone` (None: the values shared by every backbone;
    a per-backbone option is then left out, as for a backbone the table does not know)."""
    out = {}
    for o in OPTIONS:
        if method in o.accepted_by:
            out[o.name] = None
        if method not in o.default:
            continue
        value = o.default[method]
        if isinstance(value, dict):
            if backbone not in value:
                continue
            value = value[backbone]
        out[o.name] = value
    return out


def paper_values(backbone: str | None = None) -> dict:
    """--preset paper's model options on `backbone`: the paper's text and Table 1's values (None: the text
    alone, e.g. `ICLBlock(c, drop_rate, gamma_fg, gamma_bg, **paper_values())` is Eq. 1-5 as written)."""
    out = {}
    for o in OPTIONS:
        value = o.paper
        if isinstance(value, dict):
            value = value.get(backbone)
        if value is not None:
            out[o.name] = value
    return out


def loss_defaults() -> dict:
    """{option: default} of the objective's options (losses.WSOLLoss's keyword defaults)."""
    return {o.name: o.default["icl"] for o in LOSS_OPTIONS}


def loss_paper_values() -> dict:
    """--preset paper's objective: Eq. 3, 4 and 6 as written."""
    return {o.name: o.paper for o in LOSS_OPTIONS}


def check(name: str, value, label: str | None = None) -> None:
    """ValueError ("<label> must be ..., got ...", label: the name, or e.g. the flag) where `value` is outside
    the option's range; None passes (the default of an option that has none, e.g. ICL's drop_threshold)."""
    o = BY_NAME[name] if name in BY_NAME else LOSS_BY_NAME[name]
    label = label or name
    if value is None:
        return
    if o.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be true or false, got {value!r}")
        return
    if o.choices is not None and value not in o.choices:
        raise ValueError(f"{label} must be one of {o.choices}, got {value!r}")
    if o.check is not None:
        try:
            if isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
            o.check(str(value))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{label} {exc}") from None


def default_help(o: Option) -> str:
    """The default, as a flag's help says it: per method and per backbone where it differs."""
    parts = []
    for method, value in o.default.items():
        text = ", ".join(f"{b} {v}" for b, v in value.items()) if isinstance(value, dict) else str(value)
        parts.append(text if len(o.default) == 1 else f"{method}: {text}")
    table1 = " (the paper's Table 1)" if any(o.default[m] is TABLE1.get(o.name) for m in o.methods) else ""
    paper = f"; the paper's: {o.paper}" if o.paper is not None and not isinstance(o.paper, dict) else ""
    return f"{'model default' if o.section == 'model' else 'default'}: {'; '.join(parts)}{table1}{paper}"


def add_flags(group, table: tuple[Option, ...] | None = None) -> None:
    """The train flags of the options that have one (dest: the option's name, default None: the model's
    own default per backbone and method, or --preset's; an on/off option's flag turns it off). `table`:
    OPTIONS (None) or LOSS_OPTIONS."""
    for o in OPTIONS if table is None else table:
        if o.flag is None:
            continue
        if o.kind is bool:
            group.add_argument(o.flag, dest=o.name, action="store_const", const=False, default=None,
                               help=f"{o.help} (sets {o.name}=False)")
        else:
            group.add_argument(o.flag, dest=o.name, type=o.check, choices=o.choices, default=None,
                               help=f"{o.help} ({default_help(o)})")
