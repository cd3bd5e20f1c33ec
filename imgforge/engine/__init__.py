"""One job engine for translate, restore and sample, on this machine or on a Ray cluster.

The contract (docs/architecture.md):

- A pipeline *plans* serialisable jobs (imgforge.batch.Job: input path or URL, output path or URL, per-job
  seed and options) and builds a *task*: a small picklable object holding the run's options, never loaded
  networks.
- `task.setup()` runs once per worker process (the driver itself for the local engine, each actor of the
  pool for Ray) and returns a *worker* that holds the loaded networks.
- `run_jobs(worker, jobs, batch_size)` processes jobs on a worker: each is loaded, consecutive loaded items
  that share `worker.group_key` are computed together (at most batch_size of them), and each result is saved
  by the worker with imgforge.imageio's atomic writer. It yields one record (a JSON-able dict) per job; a
  failing file fails alone, a failing computation fails its group.
- `execute(task, jobs, ...)` decides --skip-existing at plan time, runs the rest on the chosen engine and
  gathers the records into one BatchReport on the driver (progress bar, `failed:` lines, --json lines).

Records come in the order jobs finish; outputs depend only on each job (seeds are per job), so both engines
write the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Hashable, Iterator, Protocol, Sequence

from .. import storage
from ..batch import Job, output_exists
from ..errors import ImgforgeError, OutputError, RunWideError
from ..progress import console, listening_within_item, make_progress, printable

ENGINES = ("local", "ray")


class Worker(Protocol):
    """The loaded side of a task: what run_jobs calls for each job."""

    def load(self, job: Job) -> Any: ...

    def group_key(self, item: Any) -> Hashable: ...

    def compute(self, items: list[Any]) -> list[Any]: ...

    def save(self, job: Job, item: Any, result: Any) -> dict | None: ...


class Task(Protocol):
    """The run's options, picklable; `setup()` loads the networks (once per worker process)."""

    label: str  # what the progress bar says, e.g. "translating"
    batch_size: int  # images per computation, and per Ray batch

    def setup(self) -> Worker: ...


@dataclass(frozen=True)
class EngineOptions:
    """Where jobs run. name: "local" or "ray" (None: IMGFORGE_ENGINE, else local); address: the Ray cluster
    (None: RAY_ADDRESS, else a Ray started on this machine); workers: actors in the pool; gpus_per_worker:
    GPUs each actor reserves (0.5 lets two share one)."""

    name: str | None = None
    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0

    @property
    def engine(self) -> str:
        name = (self.name or os.environ.get("IMGFORGE_ENGINE") or "local").strip().lower()
        if name not in ENGINES:
            raise ImgforgeError(f"unknown engine {name!r}: use local or ray")
        return name

    def check(self) -> None:
        self.engine  # noqa: B018 (validates the name)
        if self.workers < 1:
            raise ImgforgeError(f"--workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0:
            raise ImgforgeError(f"--gpus-per-worker must be 0 or more, not {self.gpus_per_worker}")


def engine_options(engine: EngineOptions | str | None) -> EngineOptions:
    options = engine if isinstance(engine, EngineOptions) else EngineOptions(name=engine)
    options.check()
    return options


@dataclass
class BatchReport:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def execute(task: Task, jobs: Sequence[Job], *, engine: EngineOptions | str | None = None,
            skip_existing: bool = False, quiet: bool = False, json_lines: bool = False,
            report: BatchReport | None = None) -> BatchReport:
    """Run `jobs` with `task` on the chosen engine and return the report. Which outputs exist is decided here,
    at plan time (one listing per output folder on object storage): with skip_existing those jobs are
    skipped, so that running the same command again resumes a killed run on either engine; a job whose output
    is a folder fails. A RunWideError stops the run. Ctrl-C raises KeyboardInterrupt("N done, ..."), the
    summary for the one "interrupted" line."""
    options = engine_options(engine)
    report = report if report is not None else BatchReport()
    planned = _plan(jobs)
    if options.engine == "ray":
        from . import ray as runner
    else:
        from . import local as runner
    prepared = runner.prepare(task, options)  # loads the networks (local) or connects to Ray, before the bar
    reporter = Reporter(report, quiet=quiet, json_lines=json_lines)
    with make_progress(quiet=quiet) as progress:
        reporter.attach(progress, progress.add_task(task.label, total=len(jobs)), task.label)
        try:
            todo = []
            for job, existed, error in planned:
                if error is not None:
                    reporter.add(job_record(job, "failed", error))
                elif skip_existing and existed:
                    reporter.add(job_record(job, "skipped"))
                else:
                    todo.append(job)
            for record in runner.run(prepared, task, todo, options, reporter.within):
                reporter.add(record)
        except KeyboardInterrupt:
            progress.stop()
            raise KeyboardInterrupt(
                f"{report.done} done, {report.skipped} skipped, {len(report.failed)} failed, "
                f"{len(jobs) - len(report.records)} not run; outputs written so far are complete"
            ) from None
    return report


def _plan(jobs: Sequence[Job]) -> list[tuple[Job, bool, str | None]]:
    """(job, whether its main output exists, why it cannot run) for each job. Local outputs go through
    batch.output_exists (a folder in the way fails the job; a temp file left by a killed overwrite of an
    existing output is removed); object-storage ones are looked up in one listing per folder."""
    remote = storage.existing([path for job in jobs for path in job.outputs if not isinstance(path, Path)])
    planned = []
    for job in jobs:
        try:
            existed = [output_exists(path) if isinstance(path, Path) else str(path) in remote
                       for path in job.outputs]
        except OutputError as exc:
            planned.append((job, False, str(exc)))
            continue
        planned.append((job, bool(existed) and existed[0] and job.target is not None, None))
    return planned


def run_jobs(worker: Worker, jobs: Sequence[Job], batch_size: int,
             within: Callable[[int], ContextManager] = lambda size: contextlib.nullcontext()
             ) -> Iterator[tuple[Job, dict]]:
    """Process jobs on one worker, yielding (job, record) as each finishes (input order, except that a failed
    load can overtake the group still being filled). A RunWideError is raised, not recorded. `within(size)`
    wraps each computation of `size` items (the local engine moves its bar inside it)."""
    pending: list[tuple[Job, Any]] = []
    pending_key: Hashable = None

    def flush() -> Iterator[tuple[Job, dict]]:
        group = pending[:]
        pending.clear()
        try:
            with within(len(group)):
                results = worker.compute([item for _, item in group])
            if len(results) != len(group):
                raise RuntimeError(f"compute returned {len(results)} results for {len(group)} inputs")
        except RunWideError:
            raise
        except Exception as exc:
            error = describe(exc)
            for job, _ in group:
                yield job, job_record(job, "failed", error)
            return
        for (job, item), result in zip(group, results):
            try:
                extra = worker.save(job, item, result)
            except RunWideError:
                raise
            except Exception as exc:
                yield job, job_record(job, "failed", describe(exc))
            else:
                yield job, job_record(job, "done", extra=extra)

    for job in jobs:
        try:
            item = worker.load(job)
        except RunWideError:
            raise
        except Exception as exc:
            yield job, job_record(job, "failed", describe(exc))
            continue
        key = worker.group_key(item)
        if pending and pending_key != key:
            yield from flush()
        pending.append((job, item))
        pending_key = key
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def job_record(job: Job, status: str, error: str | None = None, extra: dict | None = None) -> dict:
    """What --json prints for a job: input (when it has one), output, seed (when it has one), status, error,
    and the worker's own fields."""
    record: dict[str, Any] = {"input": str(job.source)} if job.source is not None else {}
    record["output"] = None if job.target is None else str(job.target)
    if job.seed is not None:
        record["seed"] = job.seed
    record["status"] = status
    if error is not None:
        record["error"] = error
    record.update(extra or {})
    return record


class Reporter:
    """Gathers records on the driver: counts, `failed:` lines on stderr, --json lines on stdout, progress."""

    def __init__(self, report: BatchReport, *, quiet: bool, json_lines: bool):
        self.report, self.quiet, self.json_lines = report, quiet, json_lines
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
            sys.stdout.write(json.dumps(record, default=str) + "\n")
            sys.stdout.flush()
        if self.progress is not None:
            self.progress.advance(self.task_id)


def describe(exc: Exception) -> str:
    """One line for the report. Errors the user can cause carry their message; anything else is a bug,
    re-raised with IMGFORGE_DEBUG=1 so that its traceback can be seen."""
    message = " ".join(str(exc).split())
    if isinstance(exc, ImgforgeError):
        return message or type(exc).__name__
    if os.environ.get("IMGFORGE_DEBUG") == "1":
        raise exc
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --batch-size or image"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
