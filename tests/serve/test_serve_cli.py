"""`captionlab serve` flags: help on every flag, one-line errors before anything loads."""

from __future__ import annotations

import pytest

from captionlab import cli
from captionlab.cli.serve_cmd import _url


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--models", "--device", "--max-upload-mb", "--max-pixels",
                 "--max-queue", "--json"):  # fmt: skip
        assert flag in out
    assert "127.0.0.1" in out and "demo_out/runs" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
        (["--max-pixels", "0"], "--max-pixels must be >= 1"),
        (["--max-queue", "0"], "--max-queue must be >= 1"),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid'"),
        (["--models", "/nonexistent/runs"], "--models /nonexistent/runs: no such folder"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, argv, words):
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_printed_url():
    assert _url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert _url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert _url("::1", 8000) == "http://[::1]:8000/"
    assert _url("::", 8000) == "http://[::1]:8000/"
    assert _url("localhost", 1) == "http://localhost:1/"
