"""The one place progress bars and human-readable messages are made: rich, on stderr, so that stdout stays
free for --json output."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, highlight=False)


def make_progress(*, quiet: bool = False, transient: bool = False, transfer: bool = False) -> Progress:
    """A progress bar with counts (bytes and speed with `transfer`), elapsed time and ETA; off with --quiet."""
    counts = (DownloadColumn(), TransferSpeedColumn()) if transfer else (MofNCompleteColumn(),)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=transient,
    )
