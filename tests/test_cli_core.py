"""The command's frame: help, version, one-line user errors."""

import argparse

import pytest

from captionlab import cli
from captionlab.errors import UserError


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "captionlab" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(monkeypatch, capsys):
    def boom(args):
        raise UserError("data/x.json: field 'images' must be a list, got dict")

    def fake_parser():
        parser = argparse.ArgumentParser(prog="captionlab")
        sub = parser.add_subparsers(dest="command")
        p = sub.add_parser("boom")
        cli.add_json_flag(p)
        p.set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", fake_parser)
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "field 'images' must be a list, got dict" in err
    assert "Traceback" not in err
