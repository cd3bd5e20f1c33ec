"""The Typer application and the entry point that turns errors into one-line messages and exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import ImgforgeError
from ..progress import console, print_error, printable

app = typer.Typer(
    name="imgforge",
    help="Run pix2pix/CycleGAN, old-photo restoration and DDPM on your own images, from the official weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain Click help: paragraphs re-wrapped to the terminal (up to 120 columns), no type placeholders, no markup
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imgforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    lock: Annotated[
        Optional[Path],
        typer.Option("--lock", metavar="FILE", show_default=False,
                     help="Check every weights file against this lock file (also IMGFORGE_LOCK; default: "
                     "imgforge.lock in the working folder, if there is one)."),
    ] = None,
) -> None:
    """imgforge: pix2pix/CycleGAN translation, old-photo restoration and DDPM sampling."""
    if lock is not None:  # the one place the lock is read from (imgforge.lock.lock_path), for this process
        os.environ["IMGFORGE_LOCK"] = str(lock)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and leave with `code`."""
    print_error(message)
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code. Click handles usage errors itself (exit 2); our
    errors become one line on stderr, and no traceback reaches the user (IMGFORGE_DEBUG=1 re-raises)."""
    debug = os.environ.get("IMGFORGE_DEBUG") == "1"
    lock = os.environ.get("IMGFORGE_LOCK")
    try:
        app(args=argv, prog_name="imgforge")
    except SystemExit as exc:
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:
            return _interrupted(interrupt)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except ImgforgeError as exc:
        if debug:
            raise
        print_error(_one_line(exc))
        return exc.exit_code
    except Exception as exc:  # a bug: still one line, with the way to see the traceback
        if debug:
            raise
        if _out_of_memory(exc):
            print_error("out of memory; try a smaller --batch-size, a smaller image or --device cpu")
        else:
            print_error(f"internal error: {type(exc).__name__}: {_one_line(exc)} (set IMGFORGE_DEBUG=1 for the "
                        "traceback)")
        return 1
    finally:  # --lock holds for this run only (main may run several times in one process, e.g. in tests)
        if lock is None:
            os.environ.pop("IMGFORGE_LOCK", None)
        else:
            os.environ["IMGFORGE_LOCK"] = lock
    return 0


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """Typer turns Ctrl-C into Exit(130) inside the command; the KeyboardInterrupt is still in the chain."""
    seen = exc
    while seen is not None and not isinstance(seen, KeyboardInterrupt):
        seen = seen.__cause__ or seen.__context__
    return seen


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Every command's Ctrl-C ends with one line; a command that knows what was done says so."""
    detail = _one_line(exc) if exc.args else ""
    console.print(f"interrupted: {printable(detail)}" if detail else "interrupted", soft_wrap=True, markup=False)
    return 130


def _out_of_memory(exc: Exception) -> bool:
    """MemoryError, or torch's allocator failing (a RuntimeError on the CPU, OutOfMemoryError on a GPU)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run() -> None:
    sys.exit(main())
