"""The run plan: the options every command shares (where and how networks run, where weights come from, how much
is said), resolved once from the user's options and checked before anything is fetched or loaded, then handed
as one object to pipelines, tasks, workers and engines.

    plan = RunPlan.resolve(device="cpu", precision="bf16", backend="torch")
    plan.check_networks([registry.get_family("oldphoto_vae"), ...])   # before any download
    device, dtype = plan.torch_device(), plan.dtype()                         # in each worker
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from . import device as devices
from .errors import UsageError
from .onnx.session import require_onnx

BACKENDS = ("torch", "onnx")
ONNX_PRECISIONS = ("fp32", "fp16")  # graphs are exported in these; bf16 has no ONNX Runtime CPU kernels


@dataclass(frozen=True)
class RunPlan:
    """device: the --device spec ("auto", "cpu", "cuda:1", ...), resolved where the networks run (a Ray worker
    may have a GPU the driver lacks); precision: fp32, bf16, fp16 or auto (bf16 where it is native, see
    imgforge.device); backend: torch or onnx; threads: intra-op threads of every worker (None: torch's
    default); offline: never touch the network (None: HF_HUB_OFFLINE decides); weights_dirs: folders looked in
    before the cache (empty: IMGFORGE_WEIGHTS_DIR); quiet: errors only."""

    device: str = "auto"
    precision: str = "fp32"
    backend: str = "torch"
    threads: int | None = None
    offline: bool | None = None
    weights_dirs: tuple[Path, ...] = field(default=())
    quiet: bool = False

    @classmethod
    def resolve(cls, *, device: str = "auto", precision: str = "fp32", backend: str = "torch",
                threads: int | None = None, offline: bool | None = None,
                weights_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                quiet: bool = False) -> RunPlan:
        """The plan of a command's options, each checked, and their combinations: a UsageError names both
        options of a pair that cannot run together."""
        spec = (device or "auto").strip().lower()
        if spec != "auto":
            devices.parse_device(spec)
        name = devices.precision_name(precision)
        backend = (backend or "torch").strip().lower()
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}: use torch or onnx")
        if threads is not None and threads < 1:
            raise UsageError(f"--threads must be at least 1, not {threads}")
        if backend == "onnx" and name not in (*ONNX_PRECISIONS, "auto"):
            raise UsageError(f"--backend onnx runs fp32 or fp16 (GPU) graphs, so it cannot run --precision {name}: "
                             "drop --precision or use --backend torch")
        if name == "fp16" and spec == "cpu":
            raise UsageError("--precision fp16 with --device cpu: fp16 is not supported on the CPU; use fp32 or bf16 "
                             "there")
        if backend == "onnx":
            require_onnx()
        folders = () if weights_dir is None else tuple(
            Path(folder).expanduser() for folder in ([weights_dir] if isinstance(weights_dir, (str, os.PathLike))
                                                     else weights_dir))
        return cls(spec, name, backend, threads, offline, folders, quiet)

    @property
    def weights_dir(self) -> list[Path] | None:
        """The weights folders as imgforge.hub takes them (None: IMGFORGE_WEIGHTS_DIR decides)."""
        return list(self.weights_dirs) or None

    def check_networks(self, families: Iterable) -> None:
        """UsageError when a network of the run cannot run in this plan's backend or precision; `families` are
        the networks' registry families, whose RunPolicy is known before any weights are read."""
        for family in families:
            policy = family.policy
            if self.backend not in policy.backends:
                raise UsageError(f"--backend {self.backend}: the {family.summary} has no {self.backend} form; "
                                 f"use --backend {' or '.join(policy.backends)}")
            if self.precision not in (*policy.precisions, "auto"):
                raise UsageError(f"--precision {self.precision}: the {family.summary} runs in "
                                 f"{', '.join(policy.precisions)} only")

    def torch_device(self) -> torch.device:
        """The device of this machine the spec names (auto: CUDA, then MPS, then the CPU)."""
        return devices.select_device(self.device)

    def dtype(self, device: torch.device | None = None) -> torch.dtype:
        """The reduced or full precision networks run in on `device` (default: this plan's), before each
        network's own policy (a float32-only network stays float32)."""
        dtype = devices.select_dtype(self.precision, device or self.torch_device())
        if self.backend == "onnx" and dtype == torch.bfloat16:  # auto on a native-bf16 CPU
            return torch.float32
        return dtype
