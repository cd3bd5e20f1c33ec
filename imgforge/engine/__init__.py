"""The job engines: translate, restore and sample plan jobs once and run them on this machine or on a Ray
cluster, through engines picked by name from a registry.

The contract (docs/architecture.md):

- A pipeline *plans* serialisable jobs (imgforge.batch.Job) and builds a *task* (engine.jobs.Task): a small
  picklable object holding the run's options, never loaded networks. `task.setup()` runs once per worker
  process and returns a *worker* that holds the loaded networks; engine.jobs.run_jobs runs jobs on a worker
  and yields one record per job (a failing file fails alone).
- An *engine* (a class registered in ENGINES) decides where workers run: it takes its own settings (a
  dataclass, `Engine.Settings`; e.g. Ray's address and pool size) and the intra-op thread count every worker
  applies, is started once per run (`started(task)`: networks loaded or a cluster joined, before the bar), and
  `run(task, jobs, within)` yields the records as jobs finish. An engine whose workers run in other processes
  (`in_process = False`) hands results back only through the records (JSON-able dicts).
- `execute(task, jobs, ...)` is the same for every engine: outputs that exist are found at plan time
  (--skip-existing), records are reported on the driver (engine.report), Ctrl-C and SIGTERM end with a count of
  the outputs actually written.

A third engine is one module with its Engine class and one line in ENGINES.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Mapping, Protocol, Sequence

from .. import storage
from ..batch import Job, output_exists
from ..errors import ImgforgeError, OutputError, UsageError
from ..progress import make_progress
from .jobs import Task, Worker, job_record, run_jobs  # noqa: F401  (the contract, importable from here)
from .report import BatchReport, Reporter

# name -> "module:class" inside imgforge.engine, imported only when chosen (Ray is an optional extra)
ENGINES = {
    "local": "local:LocalEngine",
    "ray": "ray:RayEngine",
}


class Engine(Protocol):
    """Where workers run. Settings: the dataclass of this engine's own options (fields may carry a "flag"
    metadata entry, the command-line option that sets them)."""

    name: ClassVar[str]
    in_process: ClassVar[bool]  # workers run in this process, so results may stay in memory
    Settings: ClassVar[type]

    def __init__(self, settings: Any, threads: int | None): ...

    @property
    def threads(self) -> int | None: ...  # the intra-op threads each worker runs with, for the report

    def started(self, task: Task) -> ContextManager[None]: ...

    def run(self, task: Task, jobs: Sequence[Job], within: Callable[[int], ContextManager]) -> Iterator[dict]: ...


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs the jobs, and its own settings. name: a key of ENGINES (None: IMGFORGE_ENGINE, else
    local); settings: keyword arguments of that engine's Settings (e.g. {"workers": 2} for ray)."""

    name: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def engine(self) -> str:
        name = (self.name or os.environ.get("IMGFORGE_ENGINE") or "local").strip().lower()
        if name not in ENGINES:
            raise UsageError(f"unknown engine {name!r}: use {' or '.join(ENGINES)}")
        return name

    def engine_class(self) -> type[Engine]:
        module, _, name = ENGINES[self.engine].partition(":")
        return getattr(importlib.import_module(f".{module}", __name__), name)

    def engine_settings(self) -> Any:
        """The chosen engine's Settings; a setting it does not have is a usage error naming its option."""
        engine = self.engine_class()
        known = {f.name: f.metadata.get("flag", f.name) for f in fields(engine.Settings)}
        for key in self.settings:
            if key not in known:
                flag = _flag_of(key)
                raise UsageError(f"{flag} is not an option of --engine {self.engine}")
        return engine.Settings(**self.settings)

    def require_in_process(self, reason: str) -> None:
        """A usage error, saying `reason`, if the chosen engine's workers run in other processes: for a run whose
        results must reach this process otherwise than through the records (e.g. images kept in memory)."""
        if not self.engine_class().in_process:
            raise UsageError(f"--engine {self.engine} runs its workers in other processes: {reason}")


def _flag_of(setting: str) -> str:
    """The command-line option of a setting of any registered engine (for messages)."""
    for name in ENGINES:
        for each in fields(EngineOptions(name).engine_class().Settings):
            if each.name == setting:
                return each.metadata.get("flag", setting)
    return setting


def engine_options(engine: EngineOptions | str | None) -> EngineOptions:
    """`engine` as EngineOptions, checked (name and settings) before any work."""
    options = engine if isinstance(engine, EngineOptions) else EngineOptions(name=engine)
    options.engine_settings()
    return options


def check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be a whole number of at least 1, not {threads!r}")


def execute(task: Task, jobs: Sequence[Job], *, engine: EngineOptions | str | None = None,
            threads: int | None = None, skip_existing: bool = False, quiet: bool = False,
            json_lines: bool = False, report: BatchReport | None = None) -> BatchReport:
    """Run `jobs` with `task` on the chosen engine and return the report. `threads`: torch's intra-op threads
    in every worker (None: each engine's default, see docs/scale.md). Which outputs exist is decided here, at
    plan time (one listing per output folder on object storage): with skip_existing those jobs are skipped,
    so that running the same command again resumes a killed run on any engine; a job whose output is a folder
    fails. A RunWideError stops the run. Ctrl-C (or SIGTERM) raises KeyboardInterrupt("N done, ..."), the
    summary for the one "interrupted" line, counting the outputs written by then."""
    options = engine_options(engine)
    check_threads(threads)
    runner = options.engine_class()(options.engine_settings(), threads)
    report = report if report is not None else BatchReport()
    report.engine = options.engine
    planned = _plan(jobs)
    reporter = Reporter(report, quiet=quiet, json_lines=json_lines)
    with runner.started(task):  # loads the networks (local) or joins a cluster, before the bar
        report.threads = runner.threads
        with make_progress(quiet=quiet) as progress, _sigterm_interrupts():
            reporter.attach(progress, progress.add_task(task.label, total=len(jobs)), task.label)
            todo: list[Job] = []
            try:
                for job, existed, error in planned:
                    if error is not None:
                        reporter.add(job_record(job, "failed", error))
                    elif skip_existing and existed:
                        reporter.add(job_record(job, "skipped"))
                    else:
                        todo.append(job)
                for record in runner.run(task, todo, reporter.within):
                    reporter.add(record)
            except KeyboardInterrupt:
                progress.stop()
                existed = {str(job.target) for job, found, _ in planned if found}
                raise _interrupted(reporter, todo, existed, len(jobs)) from None
    return report


def _plan(jobs: Sequence[Job]) -> list[tuple[Job, bool, str | None]]:
    """(job, whether its main output exists, why it cannot run) for each job. Local outputs go through
    batch.output_exists (a folder in the way fails the job; a temp file left by a killed overwrite of an
    existing output is removed); object-storage ones are looked up in one listing per folder, after checking
    that their buckets exist (a RunWideError otherwise)."""
    remote = [path for job in jobs for path in job.outputs if not isinstance(path, Path)]
    storage.check_buckets(remote)
    found = storage.existing(remote)
    planned = []
    for job in jobs:
        try:
            existed = [output_exists(path) if isinstance(path, Path) else str(path) in found
                       for path in job.outputs]
        except OutputError as exc:
            planned.append((job, False, str(exc)))
            continue
        planned.append((job, bool(existed) and existed[0] and job.target is not None, None))
    return planned


def _interrupted(reporter: Reporter, todo: list[Job], existed: set[str], total: int) -> KeyboardInterrupt:
    """The summary of an interrupted run. Workers in other processes may have written outputs whose records
    never reached the driver: those (absent at plan time, present now) count as done."""
    report = reporter.report
    reported = {record["output"] for record in report.records}
    unreported = [job for job in todo if job.target is not None and str(job.target) not in reported | existed]
    written = len(storage.existing([job.target for job in unreported])) if unreported else 0
    report.done += written
    not_run = total - len(report.records) - written
    if reporter.json_lines:
        reporter.write_json({"summary": dict(report.summary(), interrupted=True)})
    return KeyboardInterrupt(f"{report.done} done, {report.skipped} skipped, {len(report.failed)} failed, "
                             f"{not_run} not run; outputs written so far are complete")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (e.g. `ray job stop`) ends the run as Ctrl-C does, with the one `interrupted:` line, instead
    of whatever handler a library installed (Ray's prints a stack dump)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
