"""The pieces of `python -m wsol_fast.tune` that are not the search loop: the search-space file, the
sampler, the Optuna storage, and the outputs (trials.csv, best.json, the best config, tune.md, figures).

A space file (YAML) maps train flags (without the leading dashes) to how they are drawn:

    lr: {type: float, low: 1.0e-5, high: 1.0, log: true}
    gamma-fg: {type: float, low: 0.5, high: 1.0}
    attention-form: {type: categorical, choices: [residual, relu, paper]}

Every key must be a train flag that takes a value; every bound and choice must be a value that flag
accepts (train's own check). A wrong one is an error naming the file, the line and the key.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import socket
import warnings
from dataclasses import dataclass

from . import options
from .errors import WsolError

SPACES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tune_spaces")
# Train flags tune sets itself for every trial (a space file or the pass-through may not give them).
SET_BY_TUNE = ("output", "resume", "no-test", "test", "overwrite", "config")
# The model's and the loss's option flags (options.py), to refuse a key that the method's runs would ignore.
OPTION_OF_FLAG = {o.flag: o for o in (*options.OPTIONS, *options.LOSS_OPTIONS) if o.flag is not None}
SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
             "categorical": {"type", "choices"}}


class TuneError(WsolError):
    pass


@dataclass
class Param:
    name: str        # the train flag without "--": also the Optuna parameter's name
    kind: str        # float, int, categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def as_dict(self) -> dict:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log, "step": self.step}


def default_space(method: str) -> str:
    return os.path.join(SPACES, f"{method}.yaml")


def _train_error(argv: list[str]) -> str | None:
    """train's own parser on argv: None when accepted, else its error message (without the usage)."""
    from .train_args import parse_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            return None
        lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
        return lines[-1].split("error:", 1)[1].strip() if lines else f"refused (exit {exc.code})"
    return None


def train_flags() -> set[str]:
    """Every long option train knows (from its --help)."""
    from .train_args import parse_args

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse_args(["--help"])
    return set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", out.getvalue()))


def load_space(path: str, method: str | None = None) -> dict[str, Param]:
    """The space file as {flag: Param}; errors name the file, line and key (TuneError). With `method`, a key
    that is a model option of another method only (e.g. gamma-fg for ADL, which its runs ignore) is refused."""
    import yaml

    where = f"--space {path}"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise TuneError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TuneError(f"{where}{f', line {mark.line + 1}' if mark else ''}: not valid YAML: "
                        f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or not data:
        raise TuneError(f"{where}: expected a mapping of train flags to their ranges, e.g. "
                        "'lr: {type: float, low: 1.0e-5, high: 1.0, log: true}'")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in root.value}
    flags = train_flags()
    space = {}
    for key, spec in data.items():
        key = str(key)
        at = f"{where}, line {lines.get(key, '?')}: {key}"
        if key.startswith("-") or key not in flags:
            raise TuneError(f"{at}: unknown key: train has no flag --{key} (keys are train flags without "
                            "the dashes, e.g. lr, gamma-fg)")
        if key in SET_BY_TUNE:
            raise TuneError(f"{at}: --{key} is set by tune for every trial; it cannot be searched")
        option = OPTION_OF_FLAG.get(f"--{key}")
        if method is not None and option is not None and method not in option.methods:
            raise TuneError(f"{at}: --{key} does not apply to --method {method} (an option of "
                            f"{', '.join(option.methods)}): its trials would ignore it")
        if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
            raise TuneError(f"{at}: expected a mapping with type: float, int or categorical")
        extra = set(spec) - SPEC_KEYS[spec["type"]]
        if extra:
            raise TuneError(f"{at}: unknown field(s) {', '.join(sorted(map(str, extra)))} for type "
                            f"{spec['type']} (allowed: {', '.join(sorted(SPEC_KEYS[spec['type']]))})")
        space[key] = _param(key, spec, at)
    return space


def _param(key: str, spec: dict, at: str) -> Param:
    kind = spec["type"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{at}: choices must be a non-empty list")
        values = choices
        p = Param(key, kind, choices=tuple(choices))
    else:
        num = int if kind == "int" else (int, float)
        for field in ("low", "high"):
            v = spec.get(field)
            if isinstance(v, bool) or not isinstance(v, num):
                raise TuneError(f"{at}: {field} must be {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
        low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise TuneError(f"{at}: log must be true or false, got {log!r}")
        if not low < high:
            raise TuneError(f"{at}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise TuneError(f"{at}: log: true needs low > 0, got {low}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, num) or step <= 0 or log):
            raise TuneError(f"{at}: step must be a positive number (and not with log: true), got {step!r}")
        values = [low, high]
        p = Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                  log, step)
    for v in values:   # train's own check of the flag's value (its range, its choices)
        error = _train_error([f"--{key}", str(v)])
        if error:
            raise TuneError(f"{at}: {v!r} is refused by train: {error}")
    return p


def check_passthrough(args: list[str], space: dict[str, Param]) -> None:
    """The train flags given to tune: none that tune sets, none the space searches, all accepted by train."""
    given = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}
    for flag in SET_BY_TUNE:
        if flag in given:
            raise TuneError(f"--{flag} is set by tune for every trial; remove it")
    for flag in space:
        if flag in given:
            raise TuneError(f"--{flag} is searched by the space file; remove it (or the key from the space)")
    error = _train_error(list(args))
    if error:
        raise TuneError(f"a train flag given to tune is refused by train: {error}")


# ---------------------------------------------------------------------------------------------- sampler

def make_sampler(name: str, seed: int):
    """random (the protocol's) or tpe. The draws of trial n depend on (seed, n) only, so workers that share
    a study never repeat each other's draws and a rerun draws what an uninterrupted study would."""
    import optuna

    factory = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}[name]

    class PerTrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self._number, self._inner = None, None

        def _for(self, trial):
            if trial.number != self._number:
                self._number, self._inner = trial.number, factory(seed=(seed * 1_000_003 + trial.number) % 2 ** 32)
            return self._inner

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return PerTrialSeeded()


# ---------------------------------------------------------------------------------------------- storage

def storage_url(url: str | None, out: str) -> str:
    return url or "sqlite:///" + os.path.abspath(os.path.join(out, "study.db"))


def open_storage(url: str, heartbeat: int, max_retry: int):
    """Optuna's storage for URL: 'journal:PATH' is a JournalStorage on a file (shared filesystems), anything
    else an RDBStorage (sqlite:///FILE, postgresql://..., mysql://...) with a heartbeat, so that a killed
    worker's trial is failed and retried (retry_callback)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise TuneError(f"--storage {url}: the journal file's folder does not exist")
        return JournalStorage(JournalFileBackend(path))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # the heartbeat
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                              heartbeat_stale_trial_callback=retry_callback(max_retry))
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as exc:
        raise TuneError(f"--storage {url}: cannot open it: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None
    except Exception as exc:   # sqlalchemy's errors (bad URL, server down, no driver)
        if type(exc).__module__.startswith("sqlalchemy"):
            raise TuneError(f"--storage {url}: cannot open it: {str(exc).splitlines()[0]}") from None
        raise


def retry_callback(max_retry: int):
    """Optuna's callback that enqueues a stale trial again with its parameters (RetryHeartbeatStaleTrialCallback
    since Optuna 4.9, RetryFailedTrialCallback before)."""
    import optuna.storages as st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # experimental in Optuna 5
        return getattr(st, "RetryHeartbeatStaleTrialCallback", st.RetryFailedTrialCallback)(
            max_retry=max_retry)


def worker_id() -> str:
    """host:pid:start time of this process (the start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def dead_here(worker: str | None) -> bool:
    """Whether `worker` (a worker_id) ran on this host and its process is gone."""
    if not worker or worker.count(":") < 2:
        return False
    host, pid, start = worker.rsplit(":", 2)
    return host == socket.gethostname() and start != "?" and _start_time(int(pid)) != start


# ---------------------------------------------------------------------------------------------- outputs

# A failed trial without a reason of tune's own: Optuna's heartbeat check failed it (its worker was killed or
# stopped on another host, or stopped sending heartbeats), or its worker was interrupted mid-trial.
NO_REASON = "no reason recorded: its worker was killed, stopped or interrupted mid-trial"


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        wall = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        reason = t.user_attrs.get("reason", "")
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "wall_seconds": None if wall is None else round(wall, 1),
                     "folder": t.user_attrs.get("folder", ""),
                     "reason": reason or (NO_REASON if t.state.name == "FAIL" else ""),
                     "retry_of": t.system_attrs.get("failed_trial", "")})
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    from .files import atomic_write

    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["number"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write(buf.getvalue(), path)


def write_figures(study, out: str) -> list[str]:
    """optimisation history, parameter importances and the val score against the (up to) two most
    important parameters, as PNGs; returns the files written (none with fewer than 2 complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return []
    written = []

    def save(ax, name):
        fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
        fig.set_size_inches(10, 5)
        fig.savefig(os.path.join(out, name), dpi=100, bbox_inches="tight")   # (the slice plot's colour bar
        # does not take tight_layout)
        plt.close(fig)
        written.append(name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)   # e.g. "importances will be equal" (too few trials)
        save(ovm.plot_optimization_history(study, target_name="val score"), "optimization_history.png")
        varied = [k for k in complete[0].params if len({t.params.get(k) for t in complete}) > 1]
        if varied:
            importances = optuna.importance.get_param_importances(study, params=varied)
            save(ovm.plot_param_importances(study, params=varied, target_name="val score"), "param_importances.png")
            top = list(importances)[:2]
            save(ovm.plot_slice(study, params=top, target_name="val score"), "val_vs_top_params.png")
    return written


def markdown_table(rows: list[dict], params: list[str], limit: int = 20) -> str:
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -r["value"])
    lines = ["| trial | val score | " + " | ".join(params) + " | wall (s) |", "|" + "---|" * (len(params) + 3)]
    for r in done[:limit]:
        cells = [_fmt(r.get(f"param_{p}")) for p in params]
        lines.append(f"| {r['number']} | {r['value']:.2f} | " + " | ".join(cells) + f" | {_fmt(r['wall_seconds'])} |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def best_config(trial_folder: str) -> dict:
    """The best trial's config.json, made a fresh run's: no output folder, not a resume, test scored at the
    end."""
    with open(os.path.join(trial_folder, "config.json")) as fh:
        cfg = json.load(fh)
    cfg["runtime"].update(output=None, test=True, resume=None)   # (the test scoring resumed the trial)
    return cfg
