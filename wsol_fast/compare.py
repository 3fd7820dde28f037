"""python -m wsol_fast.compare OUT [--seeds N]

The fair comparison's table (scripts/fair_comparison.sh, docs/tune.md): for each method, its search (trials
finished, the best val score and parameters, from OUT/tune-<method>/best.json) and its best config's final
runs over the seeds (OUT/final/<method>/seed<S>: results.json on test, metrics.csv), as mean ± sample std;
then each method's difference to ICL paired by seed (a seed's final runs all fork from that seed's CAM
warm-up, so the spread of the per-seed differences is what a difference must exceed), and one plain line
per method saying whether ICL's difference exceeds that spread. Writes OUT/comparison.md,
OUT/comparison.json and OUT/comparison.png (each seed's test MaxBoxAccV2 per method, a seed's runs joined).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import errors, figures, flags, seed_table, tuning
from .files import atomic_write

METHODS = ("cam", "adl", "icl")
LABELS = {"cam": "CAM", "adl": "ADL", "icl": "ICL"}
FIGURE = "comparison.png"   # test MaxBoxAccV2 per seed, a seed's runs joined


class CompareError(errors.UserError):
    """A piece of the comparison is missing or unreadable; the message names the file."""


def _missing(path: str) -> CompareError:
    return CompareError(f"{path}: missing (has scripts/fair_comparison.sh finished this piece?)")


def _read_json(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise _missing(path) from None
    except json.JSONDecodeError as e:
        raise CompareError(f"{path}: not valid JSON ({e})") from None


def _run_numbers(folder: str) -> dict:
    """seed_table.row_numbers of one final run, its failures as one error naming the file."""
    try:
        return seed_table.row_numbers(folder)
    except FileNotFoundError as e:
        raise _missing(e.filename) from None
    except json.JSONDecodeError as e:
        raise CompareError(f"{os.path.join(folder, 'results.json')}: not valid JSON ({e})") from None
    except (KeyError, IndexError, ValueError) as e:
        raise CompareError(f"{folder}: results.json or metrics.csv lacks a number of a finished run "
                           f"({type(e).__name__}: {e})") from None


def setting(out: str, methods=METHODS) -> str:
    """'<backbone> on <dataset>', from the first method's seed-0 final run's config.json."""
    c = _read_json(os.path.join(out, "final", methods[0], "seed0", "config.json"))
    return f"{c['model']['backbone']} on {c['data']['dataset']}"


def collect(out: str, seeds: int, methods=METHODS) -> tuple[dict, dict]:
    """({method: the search's best.json}, {method: [the final run's numbers per seed]})."""
    searches, per_seed = {}, {}
    for m in methods:
        searches[m] = _read_json(os.path.join(out, f"tune-{m}", "best.json"))
        runs = []
        for s in range(seeds):
            runs.append(_run_numbers(os.path.join(out, "final", m, f"seed{s}")))
        per_seed[m] = runs
    return searches, per_seed


def verdicts(table: dict, methods=METHODS) -> list[str]:
    """One line per method against ICL: ICL's mean paired difference in test MaxBoxAccV2 and whether it is
    larger than the std of the per-seed differences (a difference smaller than the spread is not a result)."""
    lines = []
    for m in methods:
        if m == "icl":
            continue
        cell = table[m]["maxboxacc_v2"]
        d, s, n = 0.0 - cell["diff_to_icl"], cell["diff_to_icl_std"], len(cell["values"])
        above = sum(x < 0 for x in cell["diffs_to_icl"])   # row - ICL < 0: ICL above
        if n < 2:
            word = "one seed: no spread to compare with"
        elif abs(d) > s:
            word = f"larger than its spread (ICL above {m.upper()} on {above} of {n} seeds)"
        else:
            word = f"smaller than its spread: not a result (ICL above {m.upper()} on {above} of {n} seeds)"
        lines.append(f"- ICL − {m.upper()}: {d:+.2f} ± {s:.2f} test MaxBoxAccV2 points, mean ± std of the "
                     f"per-seed differences over {n} seed(s); {word}.")
    return lines


def render(searches: dict, table: dict, seeds: int, methods=METHODS, setting: str = "") -> str:
    first = searches[methods[0]]
    budgets = sorted({s.get("budget") for s in searches.values()})
    head = (f"{setting}: each method tuned with "
            f"{' / '.join(str(b) for b in budgets)} trials ({first.get('sampler', '?')} search on val, "
            f"objective {first.get('objective', '?')}), its best config then trained over {seeds} seed(s), each "
            "forked from its own seed's CAM warm-up, and scored on test once.")
    lines = [head, "", "The searches (val; test unseen):", "",
             "| method | trials finished | failed | best val | best trial's parameters |", "|---|---|---|---|---|"]
    for m in methods:
        b = searches[m]
        params = ", ".join(f"{k}={tuning._fmt(v)}" for k, v in b["best"]["params"].items())
        lines.append(f"| {LABELS[m]} | {b['finished']} of {b['budget']} | {b.get('failed', 0)} | "
                     f"{b['best']['val']:.2f} | {params} |")
    lines += ["", "The best configs on test:", "", seed_table.render_table(table, list(methods), seeds, LABELS)]
    if "icl" in methods:
        lines += ["", "ICL against each method, paired by seed:", "", *verdicts(table, methods)]
    return "\n".join(lines) + "\n"


def write(out: str, seeds: int, methods=METHODS) -> str:
    searches, per_seed = collect(out, seeds, methods)
    table = seed_table.summarise(per_seed, list(methods))
    where = setting(out, methods)
    text = render(searches, table, seeds, methods, where)
    text += f"\n![test MaxBoxAccV2 per seed]({FIGURE})\n"
    figures.seeds_figure(table, list(methods), LABELS, os.path.join(out, FIGURE),
                         title=f"{where}, tuned; lines join a seed's runs")
    atomic_write(text, os.path.join(out, "comparison.md"))
    atomic_write(json.dumps({"seeds": seeds, "searches": searches, "table": table, "per_seed": per_seed},
                            indent=2), os.path.join(out, "comparison.json"))
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsol_fast.compare", description=__doc__.split("\n\n")[1],
                                formatter_class=flags.DefaultsHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the comparison's folder (scripts/fair_comparison.sh's OUT)")
    p.add_argument("--seeds", type=int, default=3, help="final runs per method: OUT/final/<method>/seed0..N-1")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error(f"--seeds must be >= 1, got {a.seeds}")

    def run():
        text = write(a.out, a.seeds, tuple(a.methods))
        print(text)
        print(f"written: {a.out}/comparison.md, comparison.json, {FIGURE}")
        return 0

    return errors.run_command(run, False)


if __name__ == "__main__":
    sys.exit(main())
