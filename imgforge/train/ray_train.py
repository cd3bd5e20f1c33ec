"""`--engine ray --workers N`: the same run on N Ray Train workers (ray.train.torch.TorchTrainer), which make
the process group themselves (gloo on CPUs, nccl on GPUs); each worker runs trainer.run_process, exactly as a
torchrun process does. The run folder must be one that every worker's node sees (rank 0 writes it; on a
cluster: a shared file system)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ImgforgeError
from .trainer import TrainResult, TrainSettings, run_process

_IMGFORGE_ERROR = re.compile(r"imgforge\.errors\.\w+: ([^\n]+)")
FORWARDED_PREFIXES = ("IMGFORGE_", "HF_", "AWS_")


def run_on_ray(method_class: type, options: Any, settings: TrainSettings) -> TrainResult:
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise ImgforgeError("--engine ray needs Ray Train: pip install 'imgforge[ray]'") from None
    if not ray.is_initialized():
        address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False if address is None else None,
                     runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}})
        except ConnectionError as exc:
            raise ImgforgeError(f"cannot connect to the Ray cluster at {address}: {' '.join(str(exc).split())}") \
                from None
    gpus = settings.gpus_per_worker
    worker_settings = dataclasses.replace(settings, engine="local", run_dir=os.path.abspath(settings.run_dir))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"method_class": method_class, "options": options, "settings": worker_settings},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})}),
        run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="imgforge-ray-train-"), name="imgforge"),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps the worker's exception; its one-line message is in the text
        found = _IMGFORGE_ERROR.search(str(exc))
        raise ImgforgeError(found.group(1) if found else f"the Ray Train run failed: {' '.join(str(exc).split())[:300]}") \
            from None
    metrics = result.metrics or {}
    return TrainResult(Path(worker_settings.run_dir), int(metrics.get("step", 0)), int(metrics.get("total_steps", 0)),
                       metrics.get("epoch"), dict(metrics.get("losses", {})), bool(metrics.get("interrupted", False)))


def _worker(config: dict) -> None:
    import ray.train

    result = run_process(config["method_class"], config["options"], config["settings"])
    ray.train.report({"step": result.step, "total_steps": result.total_steps, "epoch": result.epoch,
                      "losses": result.losses, "interrupted": result.interrupted})
