"""wsol_fast.runlock: one run per folder (the lock itself is exercised in test_reliability), and the claim
of a run folder: a finished run is refused unless --overwrite, an earlier crash's temp files removed."""
from __future__ import annotations

import pytest

from wsol_fast import errors, runlock


def test_a_finished_run_is_refused_then_overwritten(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "best.pt.tmp-1").write_text("x")
    with pytest.raises(errors.UserError, match="holds a finished run"):
        runlock.claim_run_folder(str(tmp_path), resume=False, overwrite=False)
    lock = runlock.claim_run_folder(str(tmp_path), resume=False, overwrite=True)
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [runlock.LOCK_NAME]
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().err


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(errors.UserError, match="is not a folder"):
        runlock.claim_run_folder(str(tmp_path / "x"), resume=False, overwrite=False)
