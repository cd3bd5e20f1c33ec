"""The command-line entry point: help (wrapped to the terminal), version, commands, usage errors, error lines,
Ctrl-C, and the torch requirement a CPU-only install meets."""

import subprocess
import sys
import tomllib

import pytest
import torch
from packaging.requirements import Requirement

from helpers import REPO_ROOT, make_image, stderr_lines
from imgforge import __version__
from imgforge.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"imgforge {__version__}"


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


def test_a_glob_with_markup_is_printed_as_it_is(here, capfd):
    assert main(["translate", "nomatch[/b].png", "-o", "out", "--model", "x"]) == 1
    assert stderr_lines(capfd) == ["error: no images match nomatch[/b].png"]
    assert main(["translate", "scans/[a-z].png", "-o", "out", "--model", "x"]) == 1
    assert stderr_lines(capfd) == ["error: no images match scans/[a-z].png"]


def test_ctrl_c_in_a_batch_prints_one_interrupted_line(here, capfd, monkeypatch):
    import imgforge.pipelines.translate as pipeline

    make_image(here / "a.png")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_generator", interrupted)
    assert main(["translate", "a.png", "-o", "out", "--model", "x", "-q"]) == 130
    assert stderr_lines(capfd) == ["interrupted"]


# ---- --help reads well at 80 and 120 columns ------------------------------------------------------------------

COMMANDS = [[], ["translate"], ["restore"], ["sample"], ["export"], ["models"], ["models", "list"],
            ["models", "pull"], ["models", "verify"], ["models", "path"], ["models", "inspect"], ["models", "lock"]]


def help_text(command: list[str], columns: int, capsys, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out.splitlines()


def paragraphs(lines: list[str]) -> list[list[str]]:
    """The description paragraphs: the lines between the usage line and the first section heading."""
    found, current = [], []
    for line in lines[1:]:
        if line.endswith(":") and not line.startswith(" "):
            break
        if line.strip():
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found + ([current] if current else [])


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "imgforge")
def test_help_is_wrapped_to_the_terminal_without_placeholders(command, columns, capsys, monkeypatch):
    lines = help_text(command, columns, capsys, monkeypatch)
    width = min(columns, 120) - 2  # Click's margin
    assert all(len(line) <= width for line in lines)
    for paragraph in paragraphs(lines):  # a line ends early only where the next word would not fit
        for line, following in zip(paragraph, paragraph[1:]):
            assert len(line) + 1 + len(following.split()[0]) > width, (line, following)
    options = [line for line in lines if line.lstrip().startswith("-")]
    assert options and not any(placeholder in line for line in options
                               for placeholder in ("<bool>", "<str>", "<int", "<path>", "<float"))


def test_the_command_list_gives_whole_first_sentences(capsys, monkeypatch):
    lines = help_text([], 120, capsys, monkeypatch)
    commands = {line.split()[0]: line.split(None, 1)[1] for line in lines[lines.index("Commands:") + 1:] if line}
    assert {"restore", "sample", "translate", "models"} <= set(commands)
    for command, summary in commands.items():  # a whole sentence, not cut at "et al." nor shortened with "..."
        assert summary.endswith(".") and not summary.endswith("..."), (command, summary)
    assert commands["sample"] == "Generate images with DDPM, from the official checkpoints or your own diffusers model."


# ---- a CPU-only install -----------------------------------------------------------------------------------------


def test_the_cpu_build_of_torch_meets_the_requirement_and_the_readme_says_how():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    (torch_requirement,) = [r for r in requirements if r.name == "torch"]
    # pip keeps an installed CPU build (a +cpu local version) only if the requirement accepts it
    for version in ("2.4.0+cpu", "2.6.0+cpu", torch.__version__):
        assert torch_requirement.specifier.contains(version), version
    assert not [r.name for r in requirements if r.name.startswith(("nvidia", "triton", "cuda"))]
    readme = (REPO_ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
