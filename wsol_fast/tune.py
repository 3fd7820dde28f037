"""python -m wsol_fast.tune --method icl --backbone resnet50 --dataset builtin-parts --trials 30

The protocol's hyper-parameter search (wsolevaluation: every method gets the same budget of full
supervision to choose its hyper-parameters, searched on train-fullsup = our val, reported once on test),
on Optuna. Each trial is one `python -m wsol_fast.train` run (a subprocess, or `torchrun` with
--nproc-per-node) in OUTPUT/trial-<n>, with the space file's draws and every flag tune does not know passed
to train; trials run with train's --no-test, so test is never seen during the search. The objective is the
trial's val MaxBoxAccV2 (PxAP on mask datasets; --objective gt_known / top1_cls) of the checkpoint that
would be tested (--eval-checkpoint: the last epoch's by default). A trial that fails (refused flag,
non-finite loss, crash) is recorded with its reason and the study goes on.

The study lives in Optuna's storage: an SQLite file OUTPUT/study.db by default, or --storage URL
(postgresql://..., mysql://..., or journal:FILE for Optuna's journal on a shared filesystem). Several
processes or machines running the same command on one study share its trials: exactly --trials finish
(complete or pruned). A killed worker's trial is failed (Optuna's heartbeat on RDB storages; a dead process
on the same host for any storage) and retried with its parameters. Rerunning the command continues the
study up to --trials. After the budget, the best trial's checkpoint is scored on test once (train --resume
--test), and OUTPUT gets trials.csv, best.json, best_config.json (rerun with `train --config`), tune.md and
the figures (optimization_history.png, param_importances.png, val_vs_top_params.png). docs/tune.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import warnings

from . import errors, tuning
from .files import atomic_write
from .tuning import TuneError

OBJECTIVES = {"auto": None, "gt_known": "val_gt_known_loc", "top1_cls": "val_top1_cls"}


class TrialFailed(Exception):
    """A trial's train run failed; the message is its reason (recorded in the study)."""


def parse_args(argv=None):
    doc = __doc__.split("\n\n")
    # No abbreviations: a train flag passed through must never be read as one of ours.
    p = argparse.ArgumentParser(prog="python -m wsol_fast.tune", description="\n\n".join(doc[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                epilog="Every other flag is passed to each trial's train run (e.g. --backbone, "
                                       "--dataset, --epochs, --init-from CKPT --fork-weights-only, --device). "
                                       "Watch a study: optuna-dashboard sqlite:///OUTPUT/study.db (pip install "
                                       "optuna-dashboard).")
    p.add_argument("--method", default="icl", choices=["icl", "adl", "cam"],
                   help="the method tuned, passed to train; picks the default space file (default: icl)")
    p.add_argument("--space", default=None, metavar="FILE",
                   help="search space (YAML: train flag -> {type: float|int|categorical, low, high, log, step, "
                        "choices}); default: the method's file in wsol_fast/tune_spaces/ (copy it to edit)")
    p.add_argument("--trials", type=int, default=30, help="the budget: trials that finish (complete or pruned) "
                                                          "in the study, all workers together (default: 30)")
    p.add_argument("--output", default=None, help="tune folder (default runs/tune-<method>)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: sqlite:///FILE, postgresql://USER@HOST/DB, mysql://..., or journal:FILE "
                        "(Optuna's JournalStorage on a shared filesystem). Default: sqlite:///OUTPUT/study.db")
    p.add_argument("--study-name", default=None, help="default tune-<method>")
    p.add_argument("--sampler", default="random", choices=["random", "tpe"],
                   help="random search (the protocol's, default) or Optuna's TPE")
    p.add_argument("--sampler-seed", type=int, default=0,
                   help="trial n's draws depend on (this seed, n) only (default: 0)")
    p.add_argument("--prune", default="none", choices=["none", "median"],
                   help="stop a trial whose per-epoch val score is below the median of earlier trials at that "
                        "epoch (Optuna's MedianPruner); default none")
    p.add_argument("--objective", default="auto", choices=list(OBJECTIVES),
                   help="auto: val MaxBoxAccV2 (PxAP on mask datasets); gt_known: val GT-known loc at val's own "
                        "threshold; top1_cls: val top-1 classification")
    p.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="run each trial as `torchrun --standalone --nproc_per_node N` (DDP; rank 0 owns the "
                        "trial)")
    p.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="RDB storages: Optuna's heartbeat interval; a trial silent for twice as long is failed "
                        "and retried (default: 60)")
    p.add_argument("--max-retry", type=int, default=2, help="retries of a killed worker's trial (default: 2)")
    p.add_argument("--max-failed", type=int, default=None,
                   help="stop when the study holds more failed trials than this (default: --trials)")
    p.add_argument("--keep-checkpoints", default="all", choices=["all", "best"],
                   help="all: every trial folder keeps its checkpoints (*.pt, about 200 MB each for InceptionV3); "
                        "best: after each trial, the checkpoints of finished trials that score below the study's "
                        "best so far (and of pruned and failed ones) are deleted; their metrics, config and logs "
                        "stay (default: all)")
    p.add_argument("--report", action="store_true",
                   help="run no trial: write the outputs and score the best trial so far on test (once)")
    p.add_argument("--search-only", action="store_true",
                   help="after the budget, write the outputs but do not score the best trial on test")
    a, passthrough = p.parse_known_args(argv)
    if a.trials < 1:
        p.error(f"--trials must be >= 1, got {a.trials}")
    if a.heartbeat < 1 or a.max_retry < 0:
        p.error("--heartbeat must be >= 1 and --max-retry >= 0")
    if a.report and a.search_only:
        p.error("--report scores the best trial on test, --search-only does not: give one of them")
    if a.nproc_per_node is not None and a.nproc_per_node < 1:
        p.error(f"--nproc-per-node must be >= 1, got {a.nproc_per_node}")
    for flag in ("--method",):
        if flag in passthrough:
            p.error(f"{flag} is given twice")
    a.output = a.output or os.path.join("runs", f"tune-{a.method}")
    a.study_name = a.study_name or f"tune-{a.method}"
    a.max_failed = a.trials if a.max_failed is None else a.max_failed
    return a, passthrough


def main(argv=None) -> int:
    return errors.run_command(lambda: _main(argv), errors.debug_requested(argv))


def _main(argv) -> int:
    import optuna

    a, passthrough = parse_args(argv)
    space = tuning.load_space(a.space or tuning.default_space(a.method), a.method)
    train_args = ["--method", a.method, *passthrough]
    tuning.check_passthrough(train_args, space)
    os.makedirs(a.output, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)   # tune prints each failure's reason itself
    url = tuning.storage_url(a.storage, a.output)
    study = _open_study(a, url, space, train_args)
    if a.report:   # the study's own setup and budget, whatever this command line says
        setup = study.user_attrs["setup"]
        a.method, a.objective, train_args = setup["method"], setup["objective"], setup["train_args"]
        a.trials = study.user_attrs.get("budget", a.trials)
    else:
        study.set_user_attr("budget", a.trials)
        _search(a, study, space, train_args)
    return _report(a, study, url, train_args)


def _open_study(a, url, space, train_args):
    import optuna

    setup = {"method": a.method, "space": {k: p.as_dict() for k, p in space.items()}, "train_args": train_args,
             "objective": a.objective}
    for attempt in range(4):   # several workers creating one storage at once: a lost race is retried
        try:
            storage = tuning.open_storage(url, a.heartbeat, a.max_retry)
            pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if a.prune == "median" \
                else optuna.pruners.NopPruner()
            study = optuna.create_study(storage=storage, study_name=a.study_name, direction="maximize",
                                        load_if_exists=True, pruner=pruner,
                                        sampler=tuning.make_sampler(a.sampler, a.sampler_seed))
            break
        except Exception:   # e.g. the storage's tables created by another worker at the same moment
            if attempt == 3:
                raise
            time.sleep(0.5 + attempt)
    known = study.user_attrs.get("setup")
    if known is None:
        study.set_user_attr("setup", setup)
    elif a.report:
        return study
    elif known != setup:
        diff = [k for k in setup if known.get(k) != setup[k]]
        raise TuneError(f"--study-name {a.study_name} in {url} was started with another {', '.join(diff)} "
                        f"({'; '.join(f'{k}: {known.get(k)!r}' for k in diff)}); give the same settings or "
                        "another --study-name")
    return study


def _counts(study) -> tuple[int, int, int]:
    """(finished: complete or pruned, running, failed) trials of the study."""
    from optuna.trial import TrialState as S

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (sum(s in (S.COMPLETE, S.PRUNED) for s in states), states.count(S.RUNNING), states.count(S.FAIL))


def _fail_dead_trials(study, max_retry: int) -> None:
    """Fail and retry the running trials of dead workers: Optuna's heartbeat check (RDB storages), and any
    storage's trials whose worker process on this host is gone (the journal storage has no heartbeat)."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        if not tuning.dead_here(t.user_attrs.get("worker")):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "reason", "its worker process died")
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue   # another worker failed it first
        print(f"trial {t.number}: its worker {t.user_attrs['worker']} is gone; failed and retried", file=sys.stderr)
        t.user_attrs["reason"] = ""
        tuning.retry_callback(max_retry)(study, t)


def _search(a, study, space, train_args) -> None:
    waiting = False
    while True:
        _fail_dead_trials(study, a.max_retry)
        finished, running, failed = _counts(study)
        if failed > a.max_failed:
            last = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"][-1]
            raise TuneError(f"{failed} trials failed (over --max-failed {a.max_failed}); the last, trial "
                            f"{last.number}: {last.user_attrs.get('reason', '?')} (see {a.output}/trials.csv)")
        if finished >= a.trials:
            return
        if finished + running >= a.trials:   # other workers hold the last slots: wait for them
            if not waiting:
                print(f"{finished} of {a.trials} trials finished, {running} running elsewhere: waiting for them",
                      file=sys.stderr)
            waiting = True
            time.sleep(2)
            continue
        waiting = False
        study.optimize(lambda trial: _objective(trial, a, space, train_args), n_trials=1, catch=(TrialFailed,))
        if a.keep_checkpoints == "best":
            _drop_checkpoints(study)


def _drop_checkpoints(study) -> list[str]:
    """--keep-checkpoints best: delete the *.pt files of the finished trials that cannot be the best (a complete
    trial strictly below the best value, a pruned or failed one). The best never goes: no trial is above it,
    and ties are kept, so workers doing this at once never delete a checkpoint the report needs. Returns the
    deleted paths."""
    from optuna.trial import TrialState as S

    trials = study.get_trials(deepcopy=False)
    values = [t.value for t in trials if t.state == S.COMPLETE and t.value is not None]
    if not values:
        return []
    best, gone = max(values), []
    for t in trials:
        worse = t.state == S.COMPLETE and t.value is not None and t.value < best
        if not (worse or t.state in (S.PRUNED, S.FAIL)) or "folder" not in t.user_attrs:
            continue
        folder = t.user_attrs["folder"]
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".pt"):
                try:
                    os.remove(os.path.join(folder, name))
                    gone.append(os.path.join(folder, name))
                except FileNotFoundError:   # another worker deleted it first
                    pass
    return gone


def _objective(trial, a, space, train_args) -> float:
    import optuna
    from optuna.trial import TrialState as S

    folder = os.path.join(a.output, f"trial-{trial.number}")
    trial.set_user_attr("worker", tuning.worker_id())
    trial.set_user_attr("folder", folder)
    trial.set_user_attr("reason", "")
    # Over the budget (two workers took the last slot at once): the later trial gives way.
    before = [t for t in trial.study.get_trials(deepcopy=False) if t.state in (S.COMPLETE, S.PRUNED)
              or (t.state == S.RUNNING and t.number < trial.number)]
    if len(before) >= a.trials:
        _fail(trial, "over the budget: another worker took the last trial at the same moment")
    params = {name: p.suggest(trial) for name, p in space.items()}
    argv = [*train_args, *(x for k, v in params.items() for x in (f"--{k}", str(v))),
            "--output", folder, "--no-test", "--overwrite"]
    os.makedirs(folder, exist_ok=True)
    cmd = [sys.executable, "-m", "wsol_fast.train"] if a.nproc_per_node is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc_per_node}",
         "-m", "wsol_fast.train"]
    print(f"trial {trial.number}: {' '.join(cmd[2:])} {' '.join(argv)}", file=sys.stderr)
    log_path = os.path.join(folder, "train.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd, *argv], stdout=log,
                                stderr=subprocess.STDOUT)
        reported = 0
        try:
            while True:
                rc = proc.poll()
                rows = _metrics(folder)
                for row in rows[reported:]:   # the per-epoch val score, for the pruner
                    trial.report(_value(row, a.objective), int(row["epoch"]))
                    reported += 1
                    if a.prune != "none" and trial.should_prune():
                        proc.terminate()
                        proc.wait()
                        trial.set_user_attr("reason", f"pruned after epoch {row['epoch']} (--prune {a.prune})")
                        raise optuna.TrialPruned()
                if rc is not None:
                    break
                time.sleep(1)
        finally:
            if proc.poll() is None:   # an exception here (Ctrl-C): the run stops and saves
                proc.terminate()
                proc.wait()
    if rc != 0:
        _fail(trial, f"train exited with {rc}: {_last_error(log_path)}")
    rows = _metrics(folder)
    if not rows:
        _fail(trial, "train wrote no metrics.csv row")
    value = _value(_tested_row(folder, rows), a.objective)
    if value != value:   # NaN
        _fail(trial, "the val score is NaN")
    return value


def _fail(trial, reason: str):
    trial.set_user_attr("reason", reason)
    print(f"trial {trial.number} failed: {reason}", file=sys.stderr)
    raise TrialFailed(reason)


# The trial's train run gets SIGTERM (it saves, then stops) when its worker dies, even by SIGKILL: Linux's
# PR_SET_PDEATHSIG, set in a small launcher that then execs the command (the setting survives exec), not in a
# preexec_fn (unsafe beside the heartbeat thread). Elsewhere the launcher just execs.
_DIE_WITH_PARENT = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execv(sys.argv[2], sys.argv[2:])"""


def _metrics(folder: str) -> list[dict]:
    try:
        with open(os.path.join(folder, "metrics.csv")) as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def _value(row: dict, objective: str) -> float:
    key = OBJECTIVES[objective] or ("val_pxap" if row.get("val_pxap") else "val_maxboxacc_v2")
    if not row.get(key):
        raise TuneError(f"--objective {objective}: the trials' metrics.csv has no {key} (a mask dataset has no "
                        "GT-known loc)")
    return float(row[key])


def _tested_row(folder: str, rows: list[dict]) -> dict:
    """The epoch whose checkpoint the test would score: the last (train's default) or, with --eval-checkpoint
    best, the best by val localization (train's best.pt)."""
    with open(os.path.join(folder, "config.json")) as fh:
        which = json.load(fh)["runtime"]["eval_checkpoint"]
    if which != "best":
        return rows[-1]
    return max(rows, key=lambda r: _value(r, "auto"))


def _last_error(log_path: str) -> str:
    with open(log_path, errors="replace") as fh:
        lines = [ln.strip() for ln in fh if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith("error:")]
    return (error_lines or lines or ["(no output)"])[-1]


# ----------------------------------------------------------------------------------------------- report

def _report(a, study, url: str, train_args: list[str]) -> int:
    import fcntl

    finished, running, failed = _counts(study)
    rows = tuning.trial_rows(study)
    tuning.write_csv(rows, os.path.join(a.output, "trials.csv"))
    try:
        best = study.best_trial
    except ValueError:
        raise TuneError(f"the study {a.study_name} in {url} has no complete trial yet") from None
    folder = best.user_attrs["folder"]
    test, results = None, os.path.join(folder, "results.json")
    if not a.search_only:
        # Test, once: the first worker to get here scores the best trial; the others read its results.
        with open(os.path.join(a.output, ".report.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.isfile(results):
                print(f"scoring the best trial ({best.number}, val {best.value:.2f}) on test, once", file=sys.stderr)
                cmd = [sys.executable, "-m", "wsol_fast.train", "--resume", os.path.join(folder, "last.pt"), "--test",
                       "--output", folder]
                with open(os.path.join(folder, "test.log"), "w") as log:
                    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
                if rc != 0:
                    raise TuneError(f"the test evaluation of trial {best.number} failed (exit {rc}): "
                                    f"{_last_error(os.path.join(folder, 'test.log'))}")
        with open(results) as fh:
            r = json.load(fh)
        test = {k: r[k] for k in ("maxboxacc_v2", "pxap", "top1_loc", "gt_known_loc", "top1_cls", "maxboxacc",
                                  "eval_checkpoint") if k in r}
    config = tuning.best_config(folder)
    atomic_write(json.dumps(config, indent=2), os.path.join(a.output, "best_config.json"))
    summary = {"study": a.study_name, "storage": url, "method": a.method, "objective": a.objective,
               "sampler": a.sampler, "sampler_seed": a.sampler_seed, "prune": a.prune, "budget": a.trials,
               "finished": finished, "running": running, "failed": failed,
               "best": {"number": best.number, "val": best.value, "params": best.params, "folder": folder},
               "test": test, "train_args": train_args}
    atomic_write(json.dumps(summary, indent=2), os.path.join(a.output, "best.json"))
    figures = tuning.write_figures(study, a.output)
    atomic_write(_markdown(summary, rows, list(best.params), figures), os.path.join(a.output, "tune.md"))
    print(_markdown(summary, rows, list(best.params), figures))
    print(f"written: {a.output}/trials.csv, best.json, best_config.json, tune.md"
          + "".join(f", {f}" for f in figures))
    return 0


def _markdown(s: dict, rows: list[dict], params: list[str], figures: list[str]) -> str:
    b, test = s["best"], s["test"]
    objective = {"auto": "val MaxBoxAccV2 (PxAP on mask datasets)", "gt_known": "val GT-known loc",
                 "top1_cls": "val top-1 cls"}[s["objective"]]
    lines = [f"# tune: {s['method']} ({s['study']})", "",
             f"- budget: {s['finished']} of {s['budget']} trials finished ({s['failed']} failed, {s['running']} "
             f"running); sampler {s['sampler']} (seed {s['sampler_seed']}); pruning: "
             + ("off" if s["prune"] == "none" else f"on ({s['prune']}: pruned trials count in the budget)"),
             f"- objective: {objective}, of the checkpoint the test would score; test unseen during the search",
             f"- train flags of every trial: `{' '.join(s['train_args'])}`",
             f"- best: trial {b['number']}, val {b['val']:.2f}, "
             + ", ".join(f"{k}={tuning._fmt(v)}" for k, v in b["params"].items()), ""]
    if test is None:
        lines.append("Test: not scored (--search-only); `python -m wsol_fast.tune --report` scores it once.")
    else:
        head = f"PxAP {test['pxap']:.2f}" if "pxap" in test else \
            f"MaxBoxAccV2 {test['maxboxacc_v2']:.2f}, top-1 loc {test.get('top1_loc', float('nan')):.2f}, " \
            f"GT-known {test.get('gt_known_loc', float('nan')):.2f}"
        lines.append(f"Test (scored once, after the search, on the best trial's {test.get('eval_checkpoint', 'last')} "
                     f"checkpoint): {head}, top-1 cls {test['top1_cls']:.2f}.")
    lines += ["", "Complete trials, best first:", "", tuning.markdown_table(rows, params), ""]
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
