"""The one place progress bars and human-readable messages are made: rich, on stderr, so that stdout stays
free for --json output."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)


def make_progress(*, quiet: bool = False, transient: bool = False) -> Progress:
    """A progress bar with counts, elapsed time and ETA; disabled with --quiet."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=transient,
    )
