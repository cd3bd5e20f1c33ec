"""The local engine: one worker, set up in this process, runs every job in order."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Sequence

from ..batch import Job
from .jobs import Task, Worker, intra_op_threads, run_jobs


@dataclass(frozen=True)
class LocalSettings:
    """The local engine has no settings of its own."""


class LocalEngine:
    name = "local"
    in_process = True
    Settings = LocalSettings

    def __init__(self, settings: LocalSettings, threads: int | None):
        self._threads = threads
        self.worker: Worker | None = None

    @property
    def threads(self) -> int:
        import torch

        return torch.get_num_threads()  # inside started(): the count set, or torch's default for this machine

    @contextlib.contextmanager
    def started(self, task: Task) -> Iterator[None]:
        with intra_op_threads(self._threads):
            self.worker = task.setup()
            try:
                yield
            finally:
                self.worker = None

    def run(self, task: Task, jobs: Sequence[Job], within: Callable[[int], ContextManager]) -> Iterator[dict]:
        return (record for _, record in run_jobs(self.worker, jobs, task.batch_size, within))
