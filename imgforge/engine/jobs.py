"""What every engine shares below the driver: the task/worker contract, running jobs on one worker with
per-job failure handling, the record each job yields, jobs as plain rows for workers in other processes, and
the intra-op thread count a worker applies."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, ContextManager, Hashable, Iterator, Protocol, Sequence

from .. import storage
from ..batch import Job
from ..errors import ImgforgeError, RunWideError


class Worker(Protocol):
    """The loaded side of a task: what run_jobs calls for each job."""

    def load(self, job: Job) -> Any: ...

    def group_key(self, item: Any) -> Hashable: ...

    def compute(self, items: list[Any]) -> list[Any]: ...

    def save(self, job: Job, item: Any, result: Any) -> dict | None: ...


class Task(Protocol):
    """The run's options, picklable; `setup()` loads the networks (once per worker process)."""

    label: str  # what the progress bar says, e.g. "translating"
    batch_size: int  # images per computation, and per batch handed to a worker

    def setup(self) -> Worker: ...


def run_jobs(worker: Worker, jobs: Sequence[Job], batch_size: int,
             within: Callable[[int], ContextManager] = lambda size: contextlib.nullcontext()
             ) -> Iterator[tuple[Job, dict]]:
    """Process jobs on one worker, yielding (job, record) as each finishes (input order, except that a failed
    load can overtake the group still being filled): consecutive loaded items that share `worker.group_key`
    are computed together, at most batch_size of them; a failing file fails alone, a failing computation
    fails its group. A RunWideError is raised, not recorded. `within(size)` wraps each computation of `size`
    items (the local engine moves its bar inside it)."""
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


def describe(exc: Exception) -> str:
    """The reason a job failed. Errors the user can cause carry their message; anything else is a bug,
    re-raised with IMGFORGE_DEBUG=1 so that its traceback can be seen. imgforge's own messages keep their
    control characters (a newline in a file name they quote): the driver escapes them in the `failed:` line,
    as it does in the name before it; other messages are folded onto one line."""
    if isinstance(exc, ImgforgeError):
        return str(exc).strip() or type(exc).__name__
    if os.environ.get("IMGFORGE_DEBUG") == "1":
        raise exc
    message = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --batch-size or image"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` while the block runs (None: left as it is)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def job_to_row(job: Job) -> dict:
    """A job as plain data for a worker in another process: local paths made absolute, since a worker need
    not share the driver's working folder."""
    def name(path):
        return None if path is None else str(path) if storage.is_url(path) else os.path.abspath(path)

    return {"source": name(job.source), "target": name(job.target), "seed": job.seed, "options": job.options,
            "side_outputs": [[suffix, name(path)] for suffix, path in job.side_outputs]}


def job_from_row(row: dict) -> Job:
    return Job(source=None if row["source"] is None else storage.location(row["source"]),
               target=None if row["target"] is None else storage.location(row["target"]), seed=row["seed"],
               options=row["options"],
               side_outputs=tuple((suffix, storage.location(path)) for suffix, path in row["side_outputs"]))


def as_planned(record: dict, job: Job) -> dict:
    """A worker's record with the names as the driver planned them (job_to_row made them absolute)."""
    for key, path in (("input", job.source), ("output", job.target)):
        if path is not None and not storage.is_url(path):
            absolute, given = os.path.abspath(path), str(path)
            record[key] = given
            if "error" in record:
                record["error"] = record["error"].replace(absolute, given)
    return record
