"""The Ray engine: the planned jobs become a Ray Data dataset, `map_batches` runs them on a pool of actors
(each sets the task up once, i.e. loads the networks once, and writes its outputs itself), and the records
stream back to the driver.

Written against the `compute=ray.data.ActorPoolStrategy(...)` form that the pinned range (imgforge[ray],
pyproject.toml) documents. A killed actor is restarted by Ray and its batch retried; an output is written
whole or not at all, so a retried or re-run job never leaves a damaged file. `connect` and `user_error` are
the pieces other Ray users of imgforge (training, evaluation) share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Sequence

from .. import errors
from ..batch import Job
from ..errors import ImgforgeError, UsageError
from .jobs import Task, as_planned, job_from_row, job_to_row, run_jobs

JOB_COLUMN = "job"
RECORD_COLUMN = "record"
INDEX_COLUMN = "index"
FORWARDED_PREFIXES = ("IMGFORGE_", "HF_", "AWS_")
CONNECT_TIMEOUT_S = 5.0
_IMGFORGE_ERROR = re.compile(r"imgforge\.errors\.(\w+): ([^\n]+)")
# the last line of a Python traceback: "ImportError: cannot import name ..." (possibly module-qualified)
_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): (.+)$", re.MULTILINE)
_SHADOWED = re.compile(r"from 'imgforge' \(unknown location\)|No module named 'imgforge[.']")


@dataclass(frozen=True)
class RaySettings:
    """address: the cluster (None: RAY_ADDRESS, else a Ray started on this machine); workers: actors in the
    pool; gpus_per_worker: GPUs each actor reserves (0.5 lets two share one)."""

    address: str | None = field(default=None, metadata={"flag": "--ray-address"})
    workers: int = field(default=1, metadata={"flag": "--workers"})
    gpus_per_worker: float = field(default=0.0, metadata={"flag": "--gpus-per-worker"})

    def __post_init__(self):
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be 0 or more, not {self.gpus_per_worker}")
        if self.address is not None:
            check_address(self.address)


class RayEngine:
    name = "ray"
    in_process = False
    Settings = RaySettings

    def __init__(self, settings: RaySettings, threads: int | None):
        self.settings = settings
        self._threads = threads
        self.ray = None  # the ray module, once connected
        self.pool: dict = {}  # ActorPoolStrategy's arguments

    @property
    def threads(self) -> int:
        """Each actor reserves this many CPUs and runs torch with as many threads (default 1)."""
        return self._threads or 1

    @contextlib.contextmanager
    def started(self, task: Task) -> Iterator[None]:
        self.ray = connect(self.settings.address)
        self.pool = pool_size(self.ray, self.settings.workers, self.threads, self.settings.gpus_per_worker)
        yield

    def run(self, task: Task, jobs: Sequence[Job], within: Callable[[int], ContextManager] | None = None
            ) -> Iterator[dict]:
        """The records of `jobs` run on the actor pool, as they arrive (`within`: in-item progress, which
        cannot reach across processes, is not reported)."""
        if not jobs:
            return
        ray = self.ray
        blocks = max(1, min(len(jobs), math.ceil(len(jobs) / task.batch_size)))
        rows = [{JOB_COLUMN: json.dumps(dict(job_to_row(job), index=index))} for index, job in enumerate(jobs)]
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        gpus = {"num_gpus": self.settings.gpus_per_worker} if self.settings.gpus_per_worker else {}
        results = dataset.map_batches(
            ActorWorker, fn_constructor_args=(task, self.threads), compute=ray.data.ActorPoolStrategy(**self.pool),
            batch_size=task.batch_size, batch_format="numpy", num_cpus=self.threads,
            runtime_env={"env_vars": forwarded_environment()}, **gpus,
        )
        try:
            for row in results.iter_rows():
                yield as_planned(json.loads(row[RECORD_COLUMN]), jobs[row[INDEX_COLUMN]])
        except ray.exceptions.RayError as exc:
            raise user_error(exc) from None


class ActorWorker:
    """One actor of the pool: torch's threads set, the task set up once, then batch after batch of jobs."""

    def __init__(self, task: Task, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.task = task
        self.worker = task.setup()

    def __call__(self, batch: dict) -> dict:
        rows = [json.loads(text) for text in batch[JOB_COLUMN]]
        jobs = [job_from_row(row) for row in rows]
        index = {id(job): row[INDEX_COLUMN] for job, row in zip(jobs, rows)}
        done = list(run_jobs(self.worker, jobs, self.task.batch_size))
        return {INDEX_COLUMN: [index[id(job)] for job, _ in done],
                RECORD_COLUMN: [json.dumps(record, default=str) for _, record in done]}


def check_address(address: str) -> None:
    """A usage error unless `address` is a form ray.init takes for a cluster: host:port (the GCS), ray://host:port
    (Ray Client), auto or local. The dashboard's http:// address is for `ray job submit`, not for drivers."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise UsageError(f"--ray-address {address}: give the cluster's address as host:port (e.g. 127.0.0.1:6379, "
                         "what `ray start --head` prints), ray://host:10001 or auto; an http:// address is the "
                         "dashboard's, for `ray job submit`")


def connect(address: str | None = None):
    """Join the Ray cluster at `address` (else RAY_ADDRESS, else start a Ray on this machine), once per process,
    and return the ray module. An address where nothing answers fails within seconds with one line (ray.init
    itself retries for minutes)."""
    try:
        import ray
    except ImportError:
        raise ImgforgeError("--engine ray needs Ray: pip install 'imgforge[ray]'") from None
    _quiet_cluster_errors()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            check_address(address)
            _check_listening(address)
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


def _check_listening(address: str) -> None:
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ImgforgeError(f"cannot connect to the Ray cluster at {address}: {reason.lower()} (is a Ray head "
                            "running there? `ray start --head` prints its address)") from None


def _quiet_cluster_errors() -> None:
    """Ray's driver prints the errors it hears from the cluster ("(raylet) A worker died ...", with the worker's
    traceback) on sys.stdout, where --json records go. imgforge reports every failure itself, in one line per
    image or run, and the Ray session's logs keep Ray's copy: drop those lines, and send the driver's other
    relayed lines to stderr. Ray has no setting for this, hence the wrapper around the function its listener
    calls (left alone if a Ray version names it otherwise)."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "imgforge_quiet", False):
        return

    def quiet(data, *args, **kwargs):
        if data.get("pid") != "raylet":
            original(dict(data, is_err=True), *args, **kwargs)

    quiet.imgforge_quiet = True
    worker.print_to_stdstream = quiet


def pool_size(ray, workers: int, cpus: float, gpus: float) -> dict:
    """ActorPoolStrategy's arguments for `workers` actors of `cpus` CPUs and `gpus` GPUs each. An actor that
    fits on no node of the cluster would wait forever: that is an error; a pool larger than the cluster holds
    starts with the actors that fit and grows when it can."""
    fits = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        have_cpus, have_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        fits += min(int(have_cpus // cpus), int(have_gpus // gpus) if gpus else workers)
    if fits == 0:
        most_gpus = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if gpus and most_gpus < gpus:
            have = "no GPUs" if not most_gpus else f"at most {most_gpus:g} GPUs on a node"
            raise ImgforgeError(f"--gpus-per-worker {gpus:g}: the Ray cluster has {have}; use --gpus-per-worker 0 "
                                "to run on CPUs")
        raise ImgforgeError(f"--threads {cpus:g}: each Ray worker reserves that many CPUs, more than any node of "
                            "the cluster has")
    if fits >= workers:
        return {"size": workers}
    return {"min_size": fits, "max_size": workers}


def forwarded_environment() -> dict[str, str]:
    """The driver's settings that decide where weights, caches and objects are (IMGFORGE_*, HF_*, AWS_*):
    actors on a cluster, or in a Ray started before they were set, would not see them otherwise."""
    return {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_PREFIXES)}


def user_error(exc: Exception) -> ImgforgeError:
    """One line for a failed Ray run, with its root cause. An error a user can act on (e.g. weights missing
    where an actor sets up) keeps its kind and exit code; an actor that died in its constructor reaches the
    driver as an ActorDiedError that carries the original error only as traceback text, hence the matching
    on that text."""
    text = str(exc)
    found = _IMGFORGE_ERROR.findall(text)
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, ImgforgeError)
        if not (isinstance(kind, type) and issubclass(kind, ImgforgeError)):
            kind = ImgforgeError
        return kind(message)
    raised = _RAISED.findall(text)
    cause = f"{raised[-1][0].rpartition('.')[2]}: {raised[-1][1].strip()}" if raised else \
        f"{type(exc).__name__}: {' '.join(text.split())}"
    message = f"a Ray worker failed: {cause}"
    if _SHADOWED.search(text):
        message += (" (a folder named imgforge in the working folder of Ray shadows the installed package: start "
                    "Ray, or submit the job, from another folder)")
    return ImgforgeError(message)

