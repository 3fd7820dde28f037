"""python -m wsol_fast.evaluate: the command's own checks (the scoring is tests/test_evaluation.py; saved
maps, tests/test_scoremaps.py)."""
from __future__ import annotations

import pytest

from wsol_fast import evaluate


def test_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err == f"error: checkpoint {tmp_path / 'missing.pt'}: not found\n"


@pytest.mark.parametrize("argv, message", [
    ([], "give either --checkpoint"),
    (["--metadata-root", "m", "--dataset", "CUB"], "give either --checkpoint"),
    (["--checkpoint", "a.pt", "--scoremap-root", "maps"], "give either --checkpoint"),
    (["--scoremap-root", "maps", "--dataset", "CUB"], "--scoremap-root needs --metadata-root and --dataset"),
    (["--checkpoint", "a.pt", "--cam-curve-interval", "1"], "must be in (0, 1)"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
