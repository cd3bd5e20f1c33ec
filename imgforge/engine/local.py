"""The local engine: one worker, set up in this process, runs every job in order."""

from __future__ import annotations

from typing import Callable, ContextManager, Iterator, Sequence

from ..batch import Job
from . import EngineOptions, Task, Worker, run_jobs


def prepare(task: Task, options: EngineOptions) -> Worker:
    return task.setup()


def run(worker: Worker, task: Task, jobs: Sequence[Job], options: EngineOptions,
        within: Callable[[int], ContextManager]) -> Iterator[dict]:
    return (record for _, record in run_jobs(worker, jobs, task.batch_size, within))
