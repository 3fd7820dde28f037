"""The fuzzers' findings through a real process (a few representative cases; the properties themselves
are checked in-process by test_fuzz_metadata.py and test_fuzz_images.py): `python -m wsol_fast.data
check` on a mutated metadata line prints exactly one `error:` line naming file and line and exits 2; on
images with forged headers of every accepted format, it lists each (exit 1); never a traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from test_fuzz_images import FORMATS, _forge  # noqa: F401  (the sources fixture too)
from test_fuzz_images import sources  # noqa: F401
from wsol_fast.data import builtin

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(root):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "wsol_fast.data", "check", "--metadata-root",
                           builtin.metadata_root(root), "--data-root", builtin.data_root(root), "--dataset",
                           "builtin", "--no-progress", "--workers", "2"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_a_mutated_metadata_line_is_one_error_line_from_a_real_process(fuzz_root, tmp_path):
    root = str(tmp_path / "root")
    shutil.copytree(fuzz_root, root)
    sizes = os.path.join(builtin.metadata_root(root), "builtin", "val", "image_sizes.txt")
    lines = open(sizes, encoding="utf-8").read().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",-4"
    open(sizes, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    done = _check(root)
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(err) == 1 and err[0].startswith(f"error: {sizes}:3: "), done.stderr
    assert "Traceback" not in done.stderr


def test_forged_headers_of_every_format_are_each_listed_from_a_real_process(fuzz_root, sources, tmp_path):  # noqa: F811
    root = str(tmp_path / "root")
    shutil.copytree(fuzz_root, root)
    ids = open(os.path.join(builtin.metadata_root(root), "builtin", "train", "image_ids.txt")).read().split()
    victims = {}
    for fmt, image_id in zip(FORMATS, ids):
        victims[fmt] = os.path.join(builtin.data_root(root), "builtin", image_id)
        open(victims[fmt], "wb").write(_forge(fmt, sources[fmt], 16000, 16000))
    done = _check(root)
    assert done.returncode == 1 and f"{len(FORMATS)} bad image(s)" in done.stdout, done.stdout + done.stderr
    for fmt, path in victims.items():
        line = next(line for line in done.stdout.splitlines() if path in line)
        assert "16000x16000 = 256 MP, above the cap of 64 MP" in line, (fmt, line)
    assert "Traceback" not in done.stderr
