"""scripts/dev/gpu_check.sh --dry-run on this CPU: the GPU pass's environment checks run for real and every
step's command is checked (its -k selections still pick tests, its scripts still parse their flags), so
the script cannot rot between the rare GPU runs."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_gpu_check_script_dry_runs_clean():
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", "scripts/dev/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "dry-run check: ok" in out, out[-4000:]
