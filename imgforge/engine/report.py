"""The driver's side of a run, whatever the engine: the records gathered into one BatchReport, `failed:` lines
on stderr, --json lines on stdout, and the progress bar."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from .. import storage
from ..progress import console, listening_within_item, printable


@dataclass
class BatchReport:
    """What a run did; `engine` and `threads` say where it ran and with how many intra-op threads per
    worker (both in the --json summary)."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    engine: str = "local"
    threads: int | None = None

    def summary(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": len(self.failed), "engine": self.engine,
                "threads": self.threads}


class Reporter:
    """Gathers records on the driver: counts, `failed:` lines on stderr, --json lines on `stdout` (the stream
    at the start of the run: an engine may point sys.stdout elsewhere while it runs), progress."""

    def __init__(self, report: BatchReport, *, quiet: bool, json_lines: bool, stdout: IO[str] | None = None):
        self.report, self.quiet, self.json_lines = report, quiet, json_lines
        self.stdout = stdout or sys.stdout
        self.progress = self.task_id = self.label = None

    def attach(self, progress, task_id, label: str) -> None:
        self.progress, self.task_id, self.label = progress, task_id, label

    @contextlib.contextmanager
    def within(self, size: int) -> Iterator[None]:
        """While a group of `size` items computes, progress reported within it (progress.report_within_item)
        moves the bar between the records so far and `size` more, and names the stage; afterwards the bar is
        back for the records to advance it."""
        finished, label = len(self.report.records), self.label

        def within_group(fraction: float, stage: str) -> None:
            self.progress.update(self.task_id, completed=finished + fraction * size, description=f"{label}: {stage}")

        try:
            with listening_within_item(within_group):
                yield
        finally:
            self.progress.update(self.task_id, completed=finished, description=label)

    def add(self, record: dict) -> None:
        status = record["status"]
        if status == "failed":
            name = record.get("input") or record["output"]
            self.report.failed.append((storage.location(name), record["error"]))
            reason = record["error"].removeprefix(f"cannot read {name}: ")  # read_image names the file too
            console.print(f"failed: {printable(name)}: {printable(reason)}", markup=False, highlight=False,
                          soft_wrap=True)
        elif status == "done":
            self.report.done += 1
        else:
            self.report.skipped += 1
        self.report.records.append(record)
        if self.json_lines:
            self.write_json(record)
        if self.progress is not None:
            self.progress.advance(self.task_id)

    def write_json(self, line: dict) -> None:
        self.stdout.write(json.dumps(line, default=str) + "\n")
        self.stdout.flush()
