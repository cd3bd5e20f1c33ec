"""The one place progress bars and human-readable messages are made: rich, on stderr, so that stdout stays
free for --json output. Messages carry file names, globs and other people's text, so nothing printed is read
as Rich markup: the console has markup off, and colour comes from styled Text."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

from rich.console import Console
from rich.text import Text
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

console = Console(stderr=True, highlight=False, markup=False)


def make_progress(*, quiet: bool = False, transient: bool = False, transfer: bool = False) -> Progress:
    """A progress bar with counts (bytes and speed with `transfer`), elapsed time and ETA; off with --quiet."""
    counts = (DownloadColumn(), TransferSpeedColumn()) if transfer else (MofNCompleteColumn(),)
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
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


class StagedProgress:
    """How far one item has got through stages of known relative cost (`costs`: stage -> seconds or any
    consistent measure), reported with report_within_item: `begin(stage)` when a stage starts, `within(fraction,
    detail)` as it goes. Costs measured as time make the bar, and so the ETA, move at a steady rate."""

    def __init__(self, costs: dict[str, float]):
        total = sum(costs.values()) or 1.0
        self.shares = {stage: cost / total for stage, cost in costs.items()}
        self.done, self.current = 0.0, None

    def begin(self, stage: str) -> None:
        if self.current is not None:
            self.done += self.shares.get(self.current, 0.0)
        self.current = stage
        report_within_item(self.done, stage)

    def within(self, fraction: float, detail: str = "") -> None:
        """`fraction` (0 to 1) of the current stage is done; `detail` is shown after the stage's name."""
        report_within_item(self.done + self.shares.get(self.current, 0.0) * min(max(fraction, 0.0), 1.0),
                           f"{self.current} {detail}" if detail else self.current)


def printable(text: object) -> str:
    """`text` on one line: control characters (a newline in a file name) shown as escapes, not obeyed."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def print_error(message: object) -> None:
    """`error: <message>` on one line of stderr, the message printed as it is."""
    console.print(Text.assemble(("error:", "red"), " ", printable(message)), soft_wrap=True)
