"""`--engine ray --workers N`: the same run on N Ray Train workers (ray.train.torch.TorchTrainer), which make
the process group themselves (gloo on CPUs, nccl on GPUs); each worker runs trainer.run_process, exactly as a
torchrun process does. The run folder must be one that every worker's node sees (rank 0 writes it; on a
cluster: a shared file system)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from ..engine import ray as ray_engine
from ..errors import ImgforgeError
from ..progress import make_progress
from .runlog import LOG_FILE
from .state import load_training_state
from .trainer import TrainResult, TrainSettings, run_process


def run_on_ray(method_class: type, options: Any, settings: TrainSettings) -> TrainResult:
    ray_engine.connect(settings.ray_address)
    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise ImgforgeError("--engine ray needs Ray Train: pip install 'imgforge[ray]'") from None
    gpus = settings.gpus_per_worker or 0.0
    # the workers write the log; the driver shows it (--json lines or a bar) while they train
    worker_settings = dataclasses.replace(settings, engine="local", run_dir=os.path.abspath(settings.run_dir),
                                          json=False, quiet=True)
    # Ray Train's own records (no checkpoints: the run folder holds those) go to a folder removed afterwards
    with tempfile.TemporaryDirectory(prefix="imgforge-ray-train-") as storage:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"method_class": method_class, "options": options, "settings": worker_settings,
                               "environment": ray_engine.forwarded_environment()},
            scaling_config=ScalingConfig(
                num_workers=settings.workers, use_gpu=gpus > 0,
                resources_per_worker={"CPU": settings.threads or 1, **({"GPU": gpus} if gpus else {})}),
            run_config=RunConfig(storage_path=storage, name="imgforge"),
        )
        try:
            with _following(Path(worker_settings.run_dir) / LOG_FILE, json_lines=settings.json, quiet=settings.quiet):
                trainer.fit()
        except Exception as exc:  # Ray wraps the worker's exception; its one-line message is in the text
            raise ray_engine.user_error(exc) from None
    return finished_run(worker_settings.run_dir)


def finished_run(run_dir: str) -> TrainResult:
    """What the workers reached, read from the run folder rank 0 wrote (its state and its last loss record)."""
    state = load_training_state(Path(run_dir))
    records = [json.loads(line) for line in (Path(run_dir) / LOG_FILE).read_text().splitlines() if line.strip()]
    losses = next((r["losses"] for r in reversed(records) if "losses" in r), {})
    return TrainResult(Path(run_dir), int(state["step"]), int(state["total_steps"]), state.get("epoch"), losses)


@contextlib.contextmanager
def _following(log: Path, *, json_lines: bool, quiet: bool) -> Iterator[None]:
    """While the block runs, rank 0's new log records are shown on the driver: printed on stdout with --json,
    else as a bar of steps with the current losses."""
    stop = threading.Event()
    start = log.stat().st_size if log.exists() else 0
    thread = threading.Thread(target=_follow, args=(log, start, stop, json_lines, quiet), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _follow(log: Path, position: int, stop: threading.Event, json_lines: bool, quiet: bool) -> None:
    with make_progress(quiet=quiet or json_lines) as progress:
        task = progress.add_task("training on Ray", total=None)
        while True:
            finished = stop.wait(0.5)
            size = log.stat().st_size if log.exists() else 0
            position = min(position, size)  # a resumed run rewrites the log without its redone records
            if size > position:
                with open(log, "rb") as file:
                    file.seek(position)
                    chunk = file.read(size - position)
                chunk = chunk[:chunk.rfind(b"\n") + 1]  # whole lines only
                position += len(chunk)
                for line in chunk.decode("utf-8").splitlines():
                    if json_lines:
                        print(line, flush=True)
                    record = json.loads(line)
                    if "losses" in record:
                        losses = "  ".join(f"{k} {v:.4g}" for k, v in record["losses"].items())
                        epoch = f" (epoch {record['epoch']})" if record.get("epoch") is not None else ""
                        progress.update(task, description=f"step {record['step']}{epoch}  {losses}")
            if finished:
                return


def _worker(config: dict) -> None:
    # workers of a Ray started before the driver's settings were made would not see them otherwise
    os.environ.update(config["environment"])
    run_process(config["method_class"], config["options"], config["settings"])
