"""The command-line entry point: help, version, commands, usage errors, error lines."""

import subprocess
import sys

import pytest

from imgforge import __version__
from imgforge.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"imgforge {__version__}"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("translate", "restore", "sample", "models"):
        assert command in out


@pytest.mark.parametrize("command", ["translate", "restore", "sample", "models"])
def test_each_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_usage_errors_exit_2(capfd):
    assert main(["no-such-command"]) == 2
    assert main(["translate", "--no-such-option", "x.png"]) == 2
    assert "Traceback" not in capfd.readouterr().err


def test_console_script_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "imgforge", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and __version__ in done.stdout


def test_a_missing_input_is_one_line_and_exit_1(tmp_path, capfd):
    rc = main(["translate", str(tmp_path / "nope.png"), "--checkpoint", str(tmp_path / "g.pth")])
    err = capfd.readouterr().err
    assert rc == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
