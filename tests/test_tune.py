"""python -m wsol_fast.tune end to end on a tiny generated builtin-parts set: every trial is a real train
subprocess (CAM, vgg16 at 32 x 32, one step), every study lives in a real Optuna storage (SQLite, the journal
file, a PostgreSQL server started here), and the workers are real `python -m wsol_fast.tune` processes."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import optuna
import pytest

from wsol_fast import tune, tuning
from wsol_fast.data import builtin

TINY = dict(num_train=8, num_val=4, num_test=4, min_size=72, max_size=96)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"


@pytest.fixture(scope="module")
def parts_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tune_parts"))
    builtin.generate(root, seed=0, progress=False, dataset="builtin-parts", **TINY)
    return root


def _argv(root, out, *extra, trials=3, space=None):
    if space is None:
        space = os.path.join(str(out) + "-space.yaml")
        with open(space, "w") as fh:
            fh.write(SPACE)
    return ["--method", "cam", "--space", space, "--trials", str(trials), "--output", str(out),
            "--backbone", "vgg16", "--dataset", "builtin-parts", "--data-root", builtin.data_root(root),
            "--metadata-root", builtin.metadata_root(root), "--batch-size", "4", "--resize-size", "36",
            "--crop-size", "32", "--workers", "0", "--loader", "opencv", "--amp", "off", "--no-channels-last",
            "--no-compile", "--num-overlays", "0", "--epochs", "1", "--max-steps-per-epoch", "1",
            "--no-tensorboard", *extra]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _worker(argv):
    return subprocess.Popen([sys.executable, "-m", "wsol_fast.tune", *argv], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(storage, name="tune-cam"):
    """The study's trials, read back through Optuna's own storage classes."""
    if storage.startswith("journal:"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage[8:]))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _two_workers_finish_exactly(root, out, storage, trials=3):
    argv = _argv(root, out, "--storage", storage, "--search-only", trials=trials)
    workers = [_worker(argv) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    done = [t for t in _trials(storage) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials
    assert len({t.number for t in done}) == trials
    assert len({t.params["lr"] for t in done}) == trials           # no two workers drew the same trial
    folders = {t.user_attrs["folder"] for t in done}
    assert len(folders) == trials and all(os.path.isfile(os.path.join(f, "last.pt")) for f in folders)
    assert not any(os.path.isfile(os.path.join(f, "results.json")) for f in folders)   # test never seen
    # the outputs, written by whichever worker finished last, hold every trial
    with open(os.path.join(out, "trials.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["number"]) for r in rows if r["state"] == "COMPLETE") == sorted(t.number for t in done)
    with open(os.path.join(out, "best.json")) as fh:
        assert json.load(fh)["finished"] == trials
    for figure in ("optimization_history.png", "param_importances.png", "val_vs_top_params.png"):
        assert os.path.getsize(os.path.join(out, figure)) > 0, figure


@pytest.mark.slow
def test_a_three_trial_study_writes_its_outputs_scores_test_once_and_the_best_config_reruns(parts_root, tmp_path):
    out = tmp_path / "study"
    assert tune.main(_argv(parts_root, out, "--keep-checkpoints", "best")) == 0
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    # --keep-checkpoints best: only the best (and ties) keep their checkpoints. At this size the trials tie,
    # so this checks that nothing the report needs is deleted; the deleting is tested on its own below.
    top = max(float(r["value"]) for r in rows)
    assert {r["folder"] for r in rows if os.path.isfile(os.path.join(r["folder"], "last.pt"))} \
        == {r["folder"] for r in rows if float(r["value"]) == top}
    assert all(os.path.isfile(os.path.join(r["folder"], "metrics.csv")) for r in rows)
    for r in rows:   # each trial's value is its val MaxBoxAccV2 of the last epoch, from its metrics.csv
        with open(os.path.join(r["folder"], "metrics.csv")) as fh:
            assert float(r["value"]) == float(list(csv.DictReader(fh))[-1]["val_maxboxacc_v2"])
    best = json.loads((out / "best.json").read_text())
    assert best["finished"] == 3 and best["budget"] == 3 and best["prune"] == "none"
    assert best["best"]["val"] == max(float(r["value"]) for r in rows)
    tested = [r["folder"] for r in rows if os.path.isfile(os.path.join(r["folder"], "results.json"))]
    assert tested == [best["best"]["folder"]]                 # test: the best trial only
    results = json.loads(open(os.path.join(tested[0], "results.json")).read())
    assert best["test"]["maxboxacc_v2"] == results["maxboxacc_v2"]
    for name in ("optimization_history.png", "param_importances.png", "val_vs_top_params.png"):
        assert (out / name).stat().st_size > 1000
    md = (out / "tune.md").read_text()
    assert "scored once, after the search" in md and "pruning: off" in md

    # Rerunning the command continues the same study: the budget is reached, nothing more is trained.
    assert tune.main(_argv(parts_root, out)) == 0
    assert len(_trials(f"sqlite:///{out}/study.db")) == 3

    # The best config reruns with `train --config` (same seed, same machine) to the trial's val score.
    cfg = json.loads((out / "best_config.json").read_text())
    assert cfg["runtime"]["output"] is None and cfg["optim"]["lr"] == best["best"]["params"]["lr"]
    rerun = tmp_path / "rerun"
    subprocess.run([sys.executable, "-m", "wsol_fast.train", "--config", str(out / "best_config.json"),
                    "--output", str(rerun), "--no-test"], env=_env(), cwd=ROOT, check=True, capture_output=True)
    with open(rerun / "metrics.csv") as fh:
        assert float(list(csv.DictReader(fh))[-1]["val_maxboxacc_v2"]) == best["best"]["val"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_on_one_study_finish_exactly_n_distinct_trials(parts_root, tmp_path, kind):
    storage = f"sqlite:///{tmp_path}/shared.db" if kind == "sqlite" else f"journal:{tmp_path}/shared.journal"
    # SQLite: the check, a 4-trial study on two processes
    _two_workers_finish_exactly(parts_root, tmp_path / kind, storage, trials=4 if kind == "sqlite" else 2)


def _start_postgres():
    """A PostgreSQL server of this machine's binaries in a temporary folder, on a unix socket; run as an
    unprivileged user when we are root (initdb refuses root). Returns (url, stop) or skips."""
    import glob

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = next((os.path.join(b, "initdb") for b in bins if os.path.isfile(os.path.join(b, "initdb"))),
                  shutil.which("initdb"))
    if initdb is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine: apt-get install postgresql")
    pg_ctl = os.path.join(os.path.dirname(initdb), "pg_ctl")
    folder = tempfile.mkdtemp(prefix="wsol-pg-", dir="/tmp")
    as_user = []
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)   # nobody
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    data = os.path.join(folder, "data")
    env = {**os.environ, "HOME": folder}
    steps = [[*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"],
             [*as_user, pg_ctl, "-D", data, "-w", "-l", os.path.join(folder, "log"), "-o",
              f"-k {folder} -c listen_addresses='' -c fsync=off", "start"]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
        if r.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"could not start a PostgreSQL server ({' '.join(cmd[len(as_user):][:1])}): "
                        f"{(r.stderr or r.stdout).strip()[-300:]}")

    def stop():
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True,
                       env=env, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)

    return f"postgresql+psycopg2://postgres@/postgres?host={folder}", stop


@pytest.mark.slow
def test_a_postgresql_server_serves_a_two_worker_study(parts_root, tmp_path):
    url, stop = _start_postgres()
    try:
        _two_workers_finish_exactly(parts_root, tmp_path / "pg", url, trials=2)
    finally:
        stop()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_a_resumable_study(parts_root, tmp_path):
    out = tmp_path / "killed"
    storage = f"sqlite:///{tmp_path}/killed.db"
    argv = _argv(parts_root, out, "--storage", storage, "--search-only", trials=1)
    worker = _worker(argv)
    log = out / "trial-0" / "train.log"
    deadline = time.monotonic() + 300
    while not log.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.poll() is None and log.exists()              # trial 0 is running
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    running = _trials(storage)
    assert [t.state for t in running] == [optuna.trial.TrialState.RUNNING]
    lost_lr = running[0].params["lr"]

    again = _worker(argv)
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0, text
    trials = _trials(storage)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["reason"] == "its worker process died"
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and len(trials) == 2
    assert done[0].system_attrs.get("failed_trial") == 0 and done[0].params["lr"] == lost_lr   # retried as it was


def test_keep_checkpoints_best_deletes_only_what_cannot_be_the_best(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState as S

    study = optuna.create_study(direction="maximize")
    cases = {"best": (S.COMPLETE, 50.0), "tie": (S.COMPLETE, 50.0), "worse": (S.COMPLETE, 49.9),
             "pruned": (S.PRUNED, None), "failed": (S.FAIL, None), "running": (S.RUNNING, None)}
    for name, (state, value) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for f in ("last.pt", "best.pt", "metrics.csv", "config.json"):
            (folder / f).write_text("x")
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1.0)},
            user_attrs={"folder": str(folder)}))
    gone = tune._drop_checkpoints(study)
    assert sorted(gone) == sorted(str(tmp_path / n / f) for n in ("worse", "pruned", "failed")
                                  for f in ("best.pt", "last.pt"))
    for name in cases:
        assert sorted(os.listdir(tmp_path / name)) == sorted(
            ["config.json", "metrics.csv"] + ([] if name in ("worse", "pruned", "failed") else ["best.pt", "last.pt"]))
    assert tune._drop_checkpoints(study) == []   # nothing left to delete; a second worker's call is harmless


def test_a_failed_trial_without_a_reason_says_so_in_trials_csv():
    """Optuna's heartbeat check fails a silent worker's trial without tune's reason (as two ICL trials of the
    fair comparison were, when the session running them ended): trials.csv says what that means."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState as S

    study = optuna.create_study(direction="maximize")
    dist = {"lr": FloatDistribution(1e-4, 1.0)}
    study.add_trial(optuna.trial.create_trial(state=S.FAIL, params={"lr": 0.1}, distributions=dist,
                                              user_attrs={"reason": ""}))
    study.add_trial(optuna.trial.create_trial(state=S.FAIL, params={"lr": 0.2}, distributions=dist,
                                              user_attrs={"reason": "train exited with 2: error: bad"}))
    study.add_trial(optuna.trial.create_trial(state=S.COMPLETE, value=1.0, params={"lr": 0.1}, distributions=dist,
                                              user_attrs={"reason": ""}, system_attrs={"failed_trial": 0}))
    rows = tuning.trial_rows(study)
    assert [r["reason"] for r in rows] == [tuning.NO_REASON, "train exited with 2: error: bad", ""]
    assert rows[2]["retry_of"] == 0


@pytest.mark.parametrize("text, where", [
    ("lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\nbogus-flag: {type: float, low: 0, high: 1}\n",
     "line 2: bogus-flag: unknown key"),
    ("lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n\ngamma-fg: {type: float, low: 0.5, high: 1.5}\n",
     "line 3: gamma-fg: 1.5 is refused by train"),
    ("lr: {type: float, low: 0.1, high: 0.01}\n", "line 1: lr: low (0.1) must be below high (0.01)"),
    ("lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "line 1: lr: log: true needs low > 0"),
    ("attention-form: {type: categorical, choices: [residual, spiral]}\n",
     "line 1: attention-form: 'spiral' is refused by train"),
    ("lr: {type: float, low: 0.001, high: 0.1, lgo: true}\n", "line 1: lr: unknown field(s) lgo"),
    ("output: {type: categorical, choices: [a, b]}\n", "line 1: output: --output is set by tune"),
    ("lr: [1, 2\n", "not valid YAML"),
])
def test_a_bad_space_file_is_one_error_naming_the_key_and_line(tmp_path, capsys, text, where):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    assert tune.main(["--space", str(space), "--output", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --space {space}") and where in err[0], err
    assert not (tmp_path / "never").exists()


def test_a_key_the_methods_runs_would_ignore_is_refused(tmp_path, capsys):
    # ICL's --gamma-fg in an ADL space: ADL's runs ignore it (a warning), so a search over it searches nothing.
    space = tmp_path / "adl.yaml"
    space.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "gamma-fg: {type: float, low: 0.01, high: 1.0}\n")
    assert tune.main(["--method", "adl", "--space", str(space), "--output", str(tmp_path / "never")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --space {space}, line 2: gamma-fg: --gamma-fg does not apply to --method adl (an option of "
        "icl): its trials would ignore it")
    space.write_text("lambda-ca: {type: float, low: 0.1, high: 10.0, log: true}\n")   # ICL's loss only
    assert tune.main(["--method", "cam", "--space", str(space), "--output", str(tmp_path / "never")]) == 2
    assert "line 1: lambda-ca: --lambda-ca does not apply to --method cam" in capsys.readouterr().err
    # ADL's own erasing threshold is a train flag, and it reaches the blocks.
    from wsol_fast.config import resolve
    from wsol_fast.models import create_model
    from wsol_fast.train_args import parse_args
    cfg = resolve(parse_args(["--method", "adl", "--backbone", "vgg16", "--drop-threshold", "0.6"]), "cpu")
    assert cfg.model.drop_threshold == 0.6
    model = create_model("vgg16", 4, "adl", **{"drop_threshold": cfg.model.drop_threshold})
    assert {b.drop_threshold for b in model.attention_blocks} == {0.6}


def test_the_shipped_spaces_load_and_flags_tune_sets_are_refused(tmp_path, capsys):
    assert set(tuning.load_space(tuning.default_space("icl"))) >= {"lr", "gamma-fg", "gamma-bg", "drop-rate",
                                                                   "lambda-ca", "lambda-fc", "margin", "attention-form"}
    assert set(tuning.load_space(tuning.default_space("adl"), "adl")) == {"lr", "drop-rate", "drop-threshold"}
    assert set(tuning.load_space(tuning.default_space("cam"))) == {"lr"}
    assert tune.main(["--method", "cam", "--output", str(tmp_path / "o"), "--lr", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --lr is searched by the space file; remove it (or the key " \
                                              "from the space)"
    assert tune.main(["--method", "cam", "--output", str(tmp_path / "o"), "--crop-size", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: a train flag given to tune is refused by train:")
