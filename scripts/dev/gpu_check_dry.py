#!/usr/bin/env python3
"""The check behind `bash scripts/dev/gpu_check.sh --dry-run`: the commands the GPU pass would run,
checked in one process on a machine without a GPU.

    python scripts/dev/gpu_check_dry.py STEP_FILE [STEP_FILE ...]

Each STEP_FILE holds one recorded step, NUL-separated: its name, then its command line ("$PY" and
arguments). Checks:
  * every pytest command: one `pytest --collect-only` session over all their files with the union of
    their options (so a file, a plugin's option or a marker that no longer exists fails it), then each
    command's own -k expression, evaluated by pytest's matcher on the collected items, must select at
    least one test of its files;
  * scripts/dev/gpu_precompile.py: its job list is built (--dry-run: shapes, configs, no compile);
  * any other command: its program exists.
Exit 1 if a check fails.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pytest options that take a value as the next argument, in the commands of gpu_check.sh.
VALUE_OPTIONS = {"-k", "-m", "-n", "-p", "--timeout", "--session-timeout", "--junitxml", "--benchmark-json",
                 "--durations", "--benchmark-columns", "--benchmark-sort"}
# Per-command options left out of the shared collection: the selection (applied per command afterwards),
# workers (no xdist for a collection) and output files.
PER_COMMAND = {"-k", "-n", "--junitxml", "--benchmark-json"}


def read_step(path: str) -> tuple[str, list[str]]:
    with open(path, "rb") as handle:
        fields = handle.read().split(b"\0")
    fields = [f.decode() for f in fields if f]
    return fields[0], fields[1:]


def split_pytest(args: list[str]) -> tuple[list[str], list[str], str | None]:
    """(files, shared options, -k expression) of the arguments after `-m pytest`."""
    files, options, keyword = [], [], None
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        takes_value = name in VALUE_OPTIONS and "=" not in arg
        value = args[i + 1] if takes_value else None
        if not arg.startswith("-"):
            files.append(arg)
        elif name == "-k":
            keyword = value if takes_value else arg.split("=", 1)[1]
        elif name not in PER_COMMAND:
            options += [arg, value] if takes_value else [arg]
        i += 2 if takes_value else 1
    return files, options, keyword


class Selection:
    """pytest plugin: after collection, count each command's selection; deselect everything (nothing runs)."""

    def __init__(self, commands):
        self.commands = commands          # [(name, files, keyword)]
        self.counts: dict[str, int] = {}

    def pytest_collection_modifyitems(self, session, config, items):
        from _pytest.mark import KeywordMatcher
        from _pytest.mark.expression import Expression

        for name, files, keyword in self.commands:
            expr = Expression.compile(keyword) if keyword else None
            chosen = [item for item in items
                      if any(item.nodeid.split("::")[0] == os.path.normpath(f) for f in files)
                      and (expr is None or expr.evaluate(KeywordMatcher.from_item(item)))]
            self.counts[name] = len(chosen)


def check_pytest(steps) -> list[str]:
    import pytest

    commands, files, options = [], [], []
    for name, argv in steps:
        step_files, step_options, keyword = split_pytest(argv[argv.index("pytest") + 1:])
        commands.append((name, step_files, keyword))
        files += [f for f in step_files if f not in files]
        i = 0
        while i < len(step_options):   # union, keeping an option with its value
            pair = step_options[i:i + 2] if (i + 1 < len(step_options) and not step_options[i + 1].startswith("-")
                                              and step_options[i].split("=")[0] in VALUE_OPTIONS) else step_options[i:i + 1]
            joined = " ".join(pair)
            if joined not in {" ".join(options[j:j + len(pair)]) for j in range(len(options))}:
                options += pair
            i += len(pair)
    missing = [f for f in files if not os.path.exists(os.path.join(REPO, f))]
    if missing:
        return [f"missing test files: {missing}"]
    plugin = Selection(commands)
    args = [*options, "--collect-only", "-q", *files]
    print("pytest", shlex.join(args), flush=True)
    code = pytest.main(args, plugins=[plugin])
    problems = [] if code == 0 else [f"pytest --collect-only exited {int(code)}"]
    for name, step_files, keyword in commands:
        count = plugin.counts.get(name, 0)
        print(f"  [{name}] {count} tests selected from {' '.join(step_files)}" + (f" -k {keyword!r}" if keyword else ""))
        if count == 0:
            problems.append(f"[{name}] selects no test")
    return problems


def main(paths: list[str]) -> int:
    os.chdir(REPO)
    steps = [read_step(p) for p in sorted(paths)]
    problems = []
    if not steps:
        problems.append("no recorded steps")
    pytest_steps = [(n, a) for n, a in steps if "pytest" in a[1:3]]
    if pytest_steps:
        problems += check_pytest(pytest_steps)
    for name, argv in steps:
        if (name, argv) in pytest_steps:
            continue
        script = next((a for a in argv[1:] if a.endswith(".py")), None)
        if script and script.endswith("gpu_precompile.py"):   # its job list, in this process (no second torch import)
            spec = importlib.util.spec_from_file_location("gpu_precompile", os.path.join(REPO, script))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            code = module.main([*argv[argv.index(script) + 1:], "--dry-run"])
            if code != 0:
                problems.append(f"[{name}] {script} --dry-run exited {code}")
        elif script and not os.path.exists(script):
            problems.append(f"[{name}] missing {script}")
    for problem in problems:
        print("dry-run problem:", problem)
    print(f"dry-run: {len(steps)} steps checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
