"""wsol_fast.errors: one `error:` line and exit code 2 for what a user can cause, a traceback for the rest."""
from __future__ import annotations

import pytest

from wsol_fast import errors


def test_an_expected_error_is_one_line_and_exit_2(capsys):
    def fails():
        raise errors.ConfigError("--lr: must be > 0\nsee --help")

    assert errors.run_command(fails, debug=False) == errors.EXIT_CODE == 2
    assert capsys.readouterr().err == "error: --lr: must be > 0; see --help\n"


def test_debug_adds_the_traceback(capsys):
    def fails():
        raise FileNotFoundError("no such file: x.pt")

    assert errors.run_command(fails, debug=True) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: no such file: x.pt\n")


def test_a_bug_keeps_its_traceback():
    def fails():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        errors.run_command(fails, debug=False)
    assert errors.run_command(lambda: 0, debug=False) == 0


def test_every_user_error_kind_is_a_wsol_error():
    assert issubclass(errors.UserError, errors.WsolError)
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.UnavailableError, RuntimeError)
    assert errors.WsolError in errors.expected_errors() and FileNotFoundError in errors.expected_errors()
    assert errors.error_line(errors.WsolError("")) == "error: WsolError"
    assert errors.debug_requested(["--epochs", "1", "--debug"]) and not errors.debug_requested([])
