"""The one training loop of imgforge: every method (pix2pix, CycleGAN, DDPM) supplies its networks, data and
step; the loop, run folder, checkpoints, exact resume, logging, progress, Ctrl-C and the distributed setup
live here once.

The Method protocol
-------------------
A method is a class (see `Method` below for the defaults) built as `MethodClass(options, context)` in every
process, where `options` is its own frozen dataclass of JSON-able fields (saved as the run's options.json)
and `context` a `Context` (device, precision, processes, seed, and the helpers the step calls). It supplies:

- `name` (class attribute, e.g. "pix2pix") and `length`: `Length(epochs=N)` for an epoch-based method (the
  loop steps through the data N times; `end_epoch` is called after each pass) or `Length(steps=N)` for a
  step-based one (the data is one stream; DDPM);
- `dataset`: a map-style torch Dataset indexed by `(index, sample)` pairs, `index` the item and `sample` the
  run-wide sample number: every random choice about the item (crop, flip, noise, timestep) must come from
  `plan.sample_rng(context.seed, sample)`, so that data does not depend on the number of processes or loader
  workers and a resumed run sees the same batches (imgforge/train/plan.py). Items are dicts of tensors;
- networks and optimizers, built in `__init__` from the options (fresh networks through the registry's
  families; `context.prepare(net)` moves a network to the device, synchronises its BatchNorm and wraps it
  for DistributedDataParallel: call the wrapped module in the step, keep the plain one for saving);
- `modules()`, `optimizers()`, `schedulers()`: dicts of name -> object with state_dict/load_state_dict,
  saved and restored by the loop (plain modules, never the DDP wrappers, so keys have no `module.`);
- `step(batch) -> dict[str, Tensor]`: one optimisation step on this process's share of the global batch
  (already on the device), returning the detached losses to log. Forward passes run under
  `context.autocast()`; backward and optimizer steps go through `context.backward(loss)` and
  `context.step(optimizer)` (the fp16 gradient scaler; the loop updates it after each step);
- `end_epoch(epoch) -> dict` (epoch-based: learning-rate schedulers step here; returns values to log),
  `extra_state()` / `load_extra_state(state)` (what else resume needs, per process: an image pool),
- `write_outputs(run_dir, epoch, step, final)`: the method's own files in the run folder, called on rank 0 at
  every save (the official `latest_net_G.pth` and `{epoch}_net_G.pth`, or a diffusers folder), written with
  `state.atomic_save`;
- `preview() -> rows of uint8 H x W x 3 images | None`: a sample grid (e.g. input | output | target), saved as
  samples/epoch_NNN.png at each epoch end (step-based: samples/step_NNNNNNN.png every `sample_every` steps);
- `evaluate(epoch, step) -> dict[str, float]`: the hook for validation metrics (e.g. eval's `--val DATAROOT`
  pairwise metrics, FID): called on rank 0 with the preview, its values logged as {"eval": {...}}.

The run folder
--------------
`options.json` (method, its options, the run settings), `log.jsonl` (one JSON object per logged step: step,
epoch, losses, lr, iterations/s; plus epoch and eval records), `tensorboard/` (event files when TensorBoard is
installed), `samples/`, the method's outputs, and `train_state/latest.pt`: the resumable state (weights,
optimizers, schedulers, gradient scaler, each process's RNG states and method state, the step), replaced
atomically at every save (every `save_every` steps, at each epoch end, on Ctrl-C and at the end). `--resume`
reloads it and continues with the exact batches and random draws the uninterrupted run would have made.

Entry points: imgforge/train/api.py (`run`: here, under torchrun, or on Ray Train through ray_train.py);
the processes of a distributed run: imgforge/train/distributed.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ImgforgeError
from ..device import select_device, select_dtype
from . import distributed
from .distributed import Processes
from .plan import BatchPlan
from .runlog import RunLog
from .state import atomic_save, cpu_state, load_training_state, rng_state, set_rng_state, state_path


@dataclass(frozen=True)
class Length:
    """How long a method trains: `epochs` passes over the data, or `steps` optimisation steps."""

    epochs: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class TrainSettings:
    """How a run is carried out, whatever the method: the same for `train pix2pix`, `cyclegan` and `ddpm`."""

    run_dir: str
    seed: int = 0
    batch_size: int = 1  # the global batch, split among the processes
    device: str = "auto"
    precision: str = "fp32"  # bf16 / fp16: autocast (weights, optimizer state and losses stay float32)
    resume: bool = False
    save_every: int = 5000  # steps between saves of the resumable state and the method's latest outputs
    log_every: int = 100  # steps between log records (and the last step of every epoch)
    sample_every: int | None = None  # step-based methods: steps between previews (None: at the end only)
    loader_workers: int | None = None  # DataLoader worker processes (None: up to 4, by the CPU count)
    threads: int | None = None  # torch's intra-op threads in every process (None: torch's default)
    json: bool = False  # one JSON object per logged step on stdout, instead of the progress bar
    quiet: bool = False
    engine: str = "local"  # local (this process, or torchrun's) or ray (Ray Train workers)
    workers: int = 1  # Ray Train workers
    gpus_per_worker: float = 0.0
    ray_address: str | None = None


class Context:
    """What a method's step needs of the run: device, precision, its process's place, the seed; and the
    helpers that apply them (prepare a network, autocast, backward and optimizer steps with fp16 scaling)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, processes: Processes, settings: TrainSettings):
        self.device = device
        self.dtype = dtype
        self.processes = processes
        self.seed = settings.seed
        self.batch_size = settings.batch_size  # global
        self.local_batch_size = settings.batch_size // processes.world
        self.settings = settings
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    @property
    def is_main(self) -> bool:
        return self.processes.is_main

    def prepare(self, module: nn.Module) -> nn.Module:
        """`module` on the device in train mode (in place), BatchNorm over the global batch when several
        processes train; returns what the step should call (DistributedDataParallel when distributed)."""
        module.to(self.device).train()
        if self.processes.distributed and distributed.has_batch_norm(module):
            distributed.synchronise_batch_norm(module, self.device)
        return distributed.wrap(module, self.processes, self.device)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)


class Method(ABC):
    """Defaults of the Method protocol (module docstring); a method overrides what it has."""

    name: ClassVar[str] = "method"
    length: Length
    dataset: Any

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def schedulers(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One update of every network from `batch`; the losses to log."""

    def end_epoch(self, epoch: int) -> dict:
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def write_outputs(self, run_dir: Path, *, epoch: int | None, step: int, final: bool) -> None:
        pass

    def preview(self) -> list[list[np.ndarray]] | None:
        return None

    def evaluate(self, *, epoch: int | None, step: int) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or interrupted) run reached."""

    run_dir: Path
    step: int
    total_steps: int
    epoch: int | None
    losses: dict[str, float]
    interrupted: bool = False
    main_process: bool = True  # false in the other processes of a distributed run, which report nothing


def run_process(method_class: type, options: Any, settings: TrainSettings) -> TrainResult:
    """One process's part of a run (all of it when alone; under torchrun and Ray Train, each process's)."""
    _check_settings(settings)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = select_device(settings.device)
    dtype = select_dtype(settings.precision, device)
    processes = distributed.join(device.type)
    try:
        device = distributed.process_device(device, processes)
        torch.manual_seed(settings.seed)  # the same initial weights in every process
        context = Context(device, dtype, processes, settings)
        method = method_class(options, context)
        torch.manual_seed(settings.seed + processes.rank)  # then each process draws its own dropout etc.
        return _Loop(method, options, settings, context).run()
    finally:
        distributed.leave(processes)


def _check_settings(settings: TrainSettings) -> None:
    for name in ("batch_size", "save_every", "log_every", "threads"):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise ImgforgeError(f"--{name.replace('_', '-')} must be at least 1")
    if settings.sample_every is not None and settings.sample_every < 1:
        raise ImgforgeError("--sample-every must be at least 1")


class _Loop:
    def __init__(self, method: Method, options: Any, settings: TrainSettings, context: Context):
        self.method, self.options, self.settings, self.context = method, options, settings, context
        self.processes = context.processes
        self.run_dir = Path(settings.run_dir)
        length = method.length
        self.plan = BatchPlan(len(method.dataset), settings.batch_size, settings.seed, epochs=length.epochs,
                              steps=length.steps, world=self.processes.world, rank=self.processes.rank)
        self.step = 0

    # --- the run -----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        if self.settings.resume:
            self._resume()
        else:
            self._start_folder()
        log = RunLog(self.run_dir, total=self.plan.total_steps, steps_per_epoch=self.plan.steps_per_epoch,
                     epoch_based=self.plan.epoch_based, enabled=self.processes.is_main, json_lines=self.settings.json,
                     quiet=self.settings.quiet, resumed_at=self.step)
        losses: dict[str, float] = {}
        interrupted = False
        with log, _CtrlC() as ctrl_c:
            for step, batch in zip(range(self.step, self.plan.total_steps), self._batches()):
                values = self.method.step(_to_device(batch, self.context.device))
                self.context.scaler.update()
                self.step = step + 1
                epoch = self.plan.epoch_of(step) if self.plan.epoch_based else None
                ends_epoch = self.plan.ends_epoch(step)
                log.advance(self.step, epoch)
                if self.step % self.settings.log_every == 0 or ends_epoch or self.step == self.plan.total_steps:
                    losses = distributed.average(values, self.processes)
                    finite_or_fail(losses, self.step)
                    log.record(self.step, epoch, losses, self._learning_rates())
                if ends_epoch:
                    log.event({"step": self.step, "epoch": epoch, **self.method.end_epoch(epoch)})
                    self._preview_and_evaluate(log, epoch)
                elif self.settings.sample_every and self.step % self.settings.sample_every == 0:
                    self._preview_and_evaluate(log, None)
                last = self.step == self.plan.total_steps
                if last or ends_epoch or self.step % self.settings.save_every == 0:
                    self._save(epoch, final=last)
                if distributed.any_process(ctrl_c.pressed, self.processes):
                    interrupted = True
                    if not last and not (ends_epoch or self.step % self.settings.save_every == 0):
                        self._save(epoch, final=False)
                    break
        if not self.plan.epoch_based and self.settings.sample_every is None and not interrupted:
            self._preview_and_evaluate(log, None)
        epoch = self.plan.epoch_of(self.step - 1) if self.plan.epoch_based and self.step else None
        result = TrainResult(self.run_dir, self.step, self.plan.total_steps, epoch, losses, interrupted,
                             self.processes.is_main)
        if interrupted:
            where = f"epoch {epoch}, " if epoch is not None else ""
            raise KeyboardInterrupt(f"saved the run at step {self.step} of {self.plan.total_steps} ({where}"
                                    f"{self.run_dir}); continue it with --resume")
        return result

    def _batches(self) -> Iterator[dict]:
        workers = self.settings.loader_workers
        if workers is None:
            workers = min(4, max(0, (os.cpu_count() or 1) // self.processes.world - 1))
        loader = torch.utils.data.DataLoader(
            self.method.dataset, batch_sampler=_Steps(self.plan, self.step), num_workers=workers,
            pin_memory=self.context.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None,
            # its own generator: making the iterator must not draw from the global RNG a resume restores
            generator=torch.Generator().manual_seed(self.settings.seed),
        )
        return iter(loader)

    def _learning_rates(self) -> dict[str, float]:
        return {name: optimizer.param_groups[0]["lr"] for name, optimizer in self.method.optimizers().items()}

    def _preview_and_evaluate(self, log: RunLog, epoch: int | None) -> None:
        if not self.processes.is_main:
            return
        rows = self.method.preview()
        if rows:
            name = f"epoch_{epoch:03d}.png" if epoch is not None else f"step_{self.step:07d}.png"
            log.write_grid(self.run_dir / "samples" / name, rows)
        metrics = self.method.evaluate(epoch=epoch, step=self.step)
        if metrics:
            log.event({"step": self.step, "epoch": epoch, "eval": metrics})

    # --- the run folder and its state --------------------------------------------------------------------
    def _options_record(self) -> dict:
        settings = {k: v for k, v in dataclasses.asdict(self.settings).items() if k in _RECORDED_SETTINGS}
        return {"method": self.method.name, "imgforge": __version__, "options": _jsonable(self.options),
                "settings": settings, "processes": self.processes.world}

    def _start_folder(self) -> None:
        """Every process checks (so that all stop together); rank 0 writes."""
        if state_path(self.run_dir).exists():
            raise ImgforgeError(f"{self.run_dir} already holds a training run: continue it with --resume, or "
                                "choose another output folder")
        if not self.processes.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        text = json.dumps(self._options_record(), indent=1) + "\n"
        (self.run_dir / "options.json").write_text(text)

    def _resume(self) -> None:
        path = state_path(self.run_dir)
        if not path.is_file():
            raise ImgforgeError(f"nothing to resume: {path} does not exist (start the run without --resume)")
        saved_options = json.loads((self.run_dir / "options.json").read_text())
        record = self._options_record()
        if saved_options.get("method") != record["method"] or saved_options.get("options") != record["options"]:
            changed = sorted(k for k in set(saved_options.get("options", {})) | set(record["options"])
                             if saved_options.get("options", {}).get(k) != record["options"].get(k))
            raise ImgforgeError(f"--resume needs the options the run was started with; these differ: "
                                f"{', '.join(changed) or saved_options.get('method')} (see {self.run_dir}/options.json)")
        for key in ("seed", "batch_size"):
            if saved_options["settings"].get(key) != getattr(self.settings, key):
                raise ImgforgeError(f"--resume needs the --{key.replace('_', '-')} the run was started with "
                                    f"({saved_options['settings'].get(key)})")
        state = load_training_state(self.run_dir)
        if len(state["processes"]) != self.processes.world:
            raise ImgforgeError(f"the run was saved by {len(state['processes'])} process(es); resume it with as many "
                                f"(not {self.processes.world})")
        for group, objects in (("modules", self.method.modules()), ("optimizers", self.method.optimizers()),
                               ("schedulers", self.method.schedulers())):
            for name, obj in objects.items():
                obj.load_state_dict(state[group][name])
        if state.get("scaler"):
            self.context.scaler.load_state_dict(state["scaler"])
        own = state["processes"][self.processes.rank]
        self.method.load_extra_state(own["method"])
        set_rng_state(own["rng"])
        self.step = int(state["step"])

    def _save(self, epoch: int | None, *, final: bool) -> None:
        per_process = distributed.gather({"rng": rng_state(), "method": cpu_state(self.method.extra_state())},
                                         self.processes)
        if not self.processes.is_main:
            return
        self.method.write_outputs(self.run_dir, epoch=epoch, step=self.step, final=final)
        state = {
            "step": self.step,
            "total_steps": self.plan.total_steps,
            "epoch": epoch,
            "modules": {k: cpu_state(m.state_dict()) for k, m in self.method.modules().items()},
            "optimizers": {k: cpu_state(o.state_dict()) for k, o in self.method.optimizers().items()},
            "schedulers": {k: cpu_state(s.state_dict()) for k, s in self.method.schedulers().items()},
            "scaler": self.context.scaler.state_dict() if self.context.scaler.is_enabled() else {},
            "processes": per_process,
        }
        atomic_save(state, state_path(self.run_dir))


# settings that describe the run (the others say how this invocation shows or places it)
_RECORDED_SETTINGS = ("seed", "batch_size", "precision", "save_every", "log_every", "sample_every")


class _Steps:
    """The plan's batches from a step on, as a DataLoader batch_sampler."""

    def __init__(self, plan: BatchPlan, start: int):
        self.plan, self.start = plan, start

    def __iter__(self):
        return self.plan.batches(self.start)

    def __len__(self) -> int:
        return self.plan.total_steps - self.start


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _jsonable(options: Any) -> dict:
    record = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    return json.loads(json.dumps(record, default=str))


class _CtrlC:
    """The first Ctrl-C asks the loop to save and stop after the current step; a second one stops at once."""

    def __init__(self):
        self.pressed = False
        self._previous = None

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt("stopped without saving the current step")
        self.pressed = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def finite_or_fail(losses: dict[str, float], step: int) -> None:
    """A diverged run (a loss that is NaN or infinite) stops with a clear message instead of saving garbage."""
    bad = [name for name, value in losses.items() if not math.isfinite(value)]
    if bad:
        raise ImgforgeError(f"training diverged at step {step}: {', '.join(bad)} is not finite; lower --lr or "
                            "use --precision fp32")

