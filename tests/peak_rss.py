"""Run a command (`python -m MODULE ARGS`) in a fresh process and measure its peak resident memory: the
larger of the process's own high-water mark (/proc/self/status VmHWM, which exec resets, unlike
ru_maxrss) and that of its waited-for children (loader workers, `data check`'s decoding processes),
read when it exits. Linux only (where the project runs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WRAPPER = r"""
import atexit, json, resource, runpy, sys
out, module = sys.argv[1], sys.argv[2]

def report():
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    json.dump({"self_kb": hwm, "children_kb": children}, open(out, "w"))

atexit.register(report)
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_measured(module: str, args, tmp_path, timeout: int = 300):
    """(exit code, stdout, stderr, peak RSS in MiB) of `python -m module args` run from the repository."""
    report = os.path.join(str(tmp_path), f"peak-{os.getpid()}-{len(os.listdir(str(tmp_path)))}.json")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, report, module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    peak = json.load(open(report))
    return proc.returncode, proc.stdout, proc.stderr, max(peak["self_kb"], peak["children_kb"]) / 1024
