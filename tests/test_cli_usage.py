"""Usage errors (a mistyped command, an unknown option, a missing required option) on every command: click's
usage message with its hint, exit status 2, never a traceback."""

import pytest
import typer

from boomerang.cli.app import app, run

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_is_covered():
    assert {"build", "demo", "distill", "eval", "init", "sweep"} <= set(COMMANDS)


def _run(capsys, argv):
    code = run(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.err


def test_mistyped_command_suggests_the_right_one(capsys):
    code, err = _run(capsys, ["buidl"])
    assert code == 2
    assert "No such command 'buidl'" in err and "Did you mean 'build'" in err
    assert "Usage: boomerang" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option_is_a_usage_error(capsys, command):
    code, err = _run(capsys, [command, "--nonsense"])
    assert code == 2
    assert "No such option: --nonsense" in err
    assert f"Usage: boomerang {command}" in err and f"boomerang {command} --help" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_zero(capsys, command):
    assert run([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_close_option_names_get_a_hint(capsys):
    code, err = _run(capsys, ["build", "--teacher", "t", "--studnet", "s"])
    assert code == 2 and "--studnet" in err and "Possible options: --student" in err


def test_missing_required_option(capsys):
    for command in COMMANDS:
        params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
        if any(p.required for p in params):
            code, err = _run(capsys, [command])
            assert code == 2, command
            assert "Missing" in err, (command, err)


def test_bad_option_value(capsys):
    code, err = _run(capsys, ["init", "--teacher", "t", "--out", "o", "--every", "abc"])
    assert code == 2 and "Invalid value for '--every'" in err


def test_no_arguments_shows_help_and_exits_2(capsys):
    code = run([])
    out = capsys.readouterr()
    assert code == 2 and "Commands" in out.out + out.err
