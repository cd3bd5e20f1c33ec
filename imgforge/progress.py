"""The one place progress bars and human-readable messages are made: rich, on stderr, so that stdout stays
free for --json output."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

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


# Who listens to progress within one item (a photo that takes minutes): set by the loop that owns the bar.
_within_item: ContextVar[Callable[[float, str], None] | None] = ContextVar("within_item", default=None)


@contextlib.contextmanager
def listening_within_item(listener: Callable[[float, str], None]) -> Iterator[None]:
    """While the block runs, report_within_item(fraction, stage) calls `listener` (e.g. to move the bar)."""
    token = _within_item.set(listener)
    try:
        yield
    finally:
        _within_item.reset(token)


def report_within_item(fraction: float, stage: str) -> None:
    """How far the item being computed has got (0 to 1) and what it is doing; nothing when no bar listens."""
    listener = _within_item.get()
    if listener is not None:
        listener(min(max(fraction, 0.0), 1.0), stage)
