"""Small tasks for the engine tests (importable by Ray workers: the session's Ray gets tests/ on PYTHONPATH).

CallbackTask wraps plain functions, for the local engine's failure/grouping rules; InvertTask inverts images,
slowly, writes the input as it was to a side output when the job has one, and can SIGKILL the worker process
that runs a chosen image (once, marked by a file), to test what a killed Ray actor leaves behind;
BrokenSetupTask fails where a worker sets up, as a bug would."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imgforge.engine import BatchReport, execute
from imgforge.imageio import read_image, write_image


class CallbackTask:
    def __init__(self, load: Callable, compute: Callable, save: Callable, batch_size: int = 1,
                 group_key: Callable | None = None, label: str = "test"):
        self.load, self.compute, self.save, self.batch_size = load, compute, save, batch_size
        self._group_key, self.label = group_key, label

    def setup(self) -> CallbackTask:
        return self

    def group_key(self, item):
        return self._group_key(item) if self._group_key else None


def run(jobs, *, load, compute, save, batch_size=1, group_key=None, label="test", **options) -> BatchReport:
    return execute(CallbackTask(load, compute, save, batch_size, group_key, label), jobs, **options)


@dataclass(frozen=True)
class InvertTask:
    seconds_per_image: float = 0.2
    kill_at: str | None = None  # the input file name whose worker is killed ...
    kill_marker: str | None = None  # ... unless this file exists (it is created just before the kill)
    batch_size: int = 1
    label: str = "inverting"

    def setup(self) -> InvertWorker:
        return InvertWorker(self)


class InvertWorker:
    def __init__(self, task: InvertTask):
        self.task = task

    def load(self, job):
        return job.source.name, read_image(job.source)

    def group_key(self, item) -> None:
        return None

    def compute(self, items):
        time.sleep(self.task.seconds_per_image * len(items))
        marker = Path(self.task.kill_marker) if self.task.kill_marker else None
        if marker is not None and not marker.exists() and any(name == self.task.kill_at for name, _ in items):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return [255 - picture.pixels for _, picture in items]

    def save(self, job, item, inverted) -> None:
        write_image(job.target, inverted, like=item[1])
        for _, path in job.side_outputs:
            write_image(path, item[1].pixels, like=item[1])


@dataclass(frozen=True)
class BrokenSetupTask:
    message: str = "the setup broke"
    batch_size: int = 1
    label: str = "breaking"

    def setup(self):
        raise RuntimeError(self.message)
