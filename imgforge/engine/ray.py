"""The Ray engine: the planned jobs become a Ray Data dataset, `map_batches` runs them on a fixed pool of
actors (each sets the task up once, i.e. loads the networks once, and writes its outputs itself), and the
records stream back to the driver, which reports them as the local engine does.

Written against the `compute=ray.data.ActorPoolStrategy(size=N)` form that the pinned range (imgforge[ray],
pyproject.toml) documents. A killed actor is restarted by Ray and its batch retried; an output is written
whole or not at all, so a retried or re-run job never leaves a damaged file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Iterator, Sequence

from .. import storage
from ..batch import Job
from .. import errors
from ..errors import ImgforgeError
from . import EngineOptions, Task, run_jobs

JOB_COLUMN = "job"
RECORD_COLUMN = "record"
INDEX_COLUMN = "index"
FORWARDED_PREFIXES = ("IMGFORGE_", "HF_", "AWS_")
_IMGFORGE_ERROR = re.compile(r"imgforge\.errors\.(\w+): ([^\n]+)")


def prepare(task: Task, options: EngineOptions):
    """Connect to the cluster (--ray-address, else RAY_ADDRESS, else a Ray started here), once per process."""
    try:
        import ray
    except ImportError:
        raise ImgforgeError("--engine ray needs Ray: pip install 'imgforge[ray]'") from None
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     include_dashboard=False if address is None else None)
        except ConnectionError as exc:
            raise ImgforgeError(f"cannot connect to the Ray cluster at {address}: {' '.join(str(exc).split())}") \
                from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows imgforge's own bar
    for handler in logging.getLogger("ray.data").handlers:  # its log file in the Ray session keeps everything
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)  # failures reach the user as imgforge's own one-line messages
    return ray


def run(ray, task: Task, jobs: Sequence[Job], options: EngineOptions, within=None) -> Iterator[dict]:
    """The records of `jobs` run on the actor pool, as they arrive (`within`: the local engine's in-item
    progress, which cannot reach across processes)."""
    if not jobs:
        return
    blocks = max(1, min(len(jobs), math.ceil(len(jobs) / task.batch_size)))
    rows = [{JOB_COLUMN: json.dumps(dict(job_to_row(job), index=index))} for index, job in enumerate(jobs)]
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    gpus = {"num_gpus": options.gpus_per_worker} if options.gpus_per_worker else {}
    results = dataset.map_batches(
        ActorWorker, fn_constructor_args=(task,), compute=ray.data.ActorPoolStrategy(size=options.workers),
        batch_size=task.batch_size, batch_format="numpy", runtime_env={"env_vars": forwarded_environment()},
        **gpus,
    )
    try:
        for row in results.iter_rows():
            yield _as_planned(json.loads(row[RECORD_COLUMN]), jobs[row[INDEX_COLUMN]])
    except ray.exceptions.RayError as exc:
        raise _user_error(exc) from None


def forwarded_environment() -> dict[str, str]:
    """The driver's settings that decide where weights, caches and objects are (IMGFORGE_*, HF_*, AWS_*):
    actors on a cluster, or in a Ray started before they were set, would not see them otherwise."""
    return {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_PREFIXES)}


class ActorWorker:
    """One actor of the pool: the task set up once, then batch after batch of jobs."""

    def __init__(self, task: Task):
        self.task = task
        self.worker = task.setup()

    def __call__(self, batch: dict) -> dict:
        rows = [json.loads(text) for text in batch[JOB_COLUMN]]
        jobs = [job_from_row(row) for row in rows]
        index = {id(job): row[INDEX_COLUMN] for job, row in zip(jobs, rows)}
        done = list(run_jobs(self.worker, jobs, self.task.batch_size))
        return {INDEX_COLUMN: [index[id(job)] for job, _ in done],
                RECORD_COLUMN: [json.dumps(record, default=str) for _, record in done]}


def job_to_row(job: Job) -> dict:
    """A job as a dataset row: local paths made absolute, since a worker need not share the driver's cwd."""
    def name(path):
        return None if path is None else str(path) if storage.is_url(path) else os.path.abspath(path)

    return {"source": name(job.source), "target": name(job.target), "seed": job.seed, "options": job.options,
            "side_outputs": [[suffix, name(path)] for suffix, path in job.side_outputs]}


def _as_planned(record: dict, job: Job) -> dict:
    """A worker's record with the names as the driver planned them (workers see absolute paths)."""
    for key, path in (("input", job.source), ("output", job.target)):
        if path is not None and not storage.is_url(path):
            absolute, given = os.path.abspath(path), str(path)
            record[key] = given
            if "error" in record:
                record["error"] = record["error"].replace(absolute, given)
    return record


def job_from_row(row: dict) -> Job:
    return Job(source=None if row["source"] is None else storage.location(row["source"]),
               target=None if row["target"] is None else storage.location(row["target"]), seed=row["seed"],
               options=row["options"],
               side_outputs=tuple((suffix, storage.location(path)) for suffix, path in row["side_outputs"]))


def _user_error(exc: Exception) -> ImgforgeError:
    """The error a user can act on inside a failed Ray run (e.g. weights missing where an actor sets up), with
    its exit code, else one line naming Ray's. An actor that dies in its constructor reaches the driver as an
    ActorDiedError that carries the original error only as text, hence the match on the traceback's last
    line."""
    found = _IMGFORGE_ERROR.findall(str(exc))
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, ImgforgeError)
        return kind(message) if isinstance(kind, type) and issubclass(kind, ImgforgeError) else ImgforgeError(message)
    first = " ".join(str(exc).split())[:300]
    return ImgforgeError(f"the Ray run failed: {type(exc).__name__}: {first}")
